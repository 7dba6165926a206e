/* tests/test_torch_parity.c: every op's output and gradients against PyTorch on the same
 * inputs, and the optimizers' parameter trajectories against torch.optim (fixtures from
 * tools/gen_torch_fixtures.py). */
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/train.h"

static lq_fixture *g_fx;

/* Fixture data sits at unaligned offsets: copy it out. */
static float *fx_floats(const lq_fx_tensor *t) {
    float *v = malloc((size_t)t->numel * sizeof(float));
    memcpy(v, t->data, (size_t)t->numel * sizeof(float));
    return v;
}

static lq_tensor *fx_tensor(lq_ctx *ctx, const lq_fx_tensor *t, bool requires_grad) {
    if (!t) return NULL;
    lq_tensor *x = lq_new(ctx, t->dtype == 1 ? LQ_DTYPE_I32 : LQ_DTYPE_F32, t->ndim, t->shape);
    assert_non_null(x);
    memcpy(x->data, t->data, (size_t)t->numel * 4);
    if (requires_grad) x->flags |= LQ_TENSOR_REQUIRES_GRAD;
    return x;
}

static double max_abs(const float *v, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs(v[i]));
    return m;
}

/* Compares t (contiguous f32) with fixture record ref: |d| <= 1e-5 |ref| + 2e-6 max|ref|. */
static void compare(const lq_tensor *t, const lq_fx_tensor *ref, const char *what, double *worst) {
    assert_non_null(ref);
    assert_int_equal(lq_numel(t), ref->numel);
    float *r = fx_floats(ref);
    double scale = fmax(max_abs(r, ref->numel), 1e-3);
    const float *a = t->data;
    for (int64_t i = 0; i < ref->numel; i++) *worst = fmax(*worst, fabs((double)a[i] - r[i]) / scale);
    assert_allclose(a, r, ref->numel, 1e-5, 2e-6 * scale, what);
    free(r);
}

/* --- op runners: build loquat's call from the fixture's inputs and parameters ---------------- */

typedef lq_tensor *(*runner)(lq_ctx *ctx, lq_tensor **in, lq_tensor **ints, const float *p);

static lq_tensor *run_matmul(lq_ctx *c, lq_tensor **in, lq_tensor **ints, const float *p) {
    (void)ints;
    return lq_matmul_t(c, in[0], in[1], p[0] != 0, p[1] != 0);
}
static lq_tensor *run_add(lq_ctx *c, lq_tensor **in, lq_tensor **ints, const float *p) {
    (void)ints, (void)p;
    return lq_add(c, in[0], in[1]);
}
static lq_tensor *run_sub(lq_ctx *c, lq_tensor **in, lq_tensor **ints, const float *p) {
    (void)ints, (void)p;
    return lq_sub(c, in[0], in[1]);
}
static lq_tensor *run_mul(lq_ctx *c, lq_tensor **in, lq_tensor **ints, const float *p) {
    (void)ints, (void)p;
    return lq_mul(c, in[0], in[1]);
}
static lq_tensor *run_sum(lq_ctx *c, lq_tensor **in, lq_tensor **ints, const float *p) {
    (void)ints;
    return lq_sum(c, in[0], (int)p[0], p[1] != 0);
}
static lq_tensor *run_mean(lq_ctx *c, lq_tensor **in, lq_tensor **ints, const float *p) {
    (void)ints;
    return lq_mean(c, in[0], (int)p[0], p[1] != 0);
}
static lq_tensor *run_softmax(lq_ctx *c, lq_tensor **in, lq_tensor **ints, const float *p) {
    (void)ints;
    return lq_softmax(c, in[0], (int)p[0]);
}
static lq_tensor *run_log_softmax(lq_ctx *c, lq_tensor **in, lq_tensor **ints, const float *p) {
    (void)ints;
    return lq_log_softmax(c, in[0], (int)p[0]);
}
static lq_tensor *run_rmsnorm(lq_ctx *c, lq_tensor **in, lq_tensor **ints, const float *p) {
    (void)ints;
    return lq_rmsnorm(c, in[0], p[1] != 0 ? in[1] : NULL, p[0]);
}
static lq_tensor *run_layernorm(lq_ctx *c, lq_tensor **in, lq_tensor **ints, const float *p) {
    (void)ints;
    return lq_layernorm(c, in[0], p[1] != 0 ? in[1] : NULL, p[2] != 0 ? in[2] : NULL, p[0]);
}
static lq_tensor *run_silu(lq_ctx *c, lq_tensor **in, lq_tensor **ints, const float *p) {
    (void)ints, (void)p;
    return lq_silu(c, in[0]);
}
static lq_tensor *run_relu(lq_ctx *c, lq_tensor **in, lq_tensor **ints, const float *p) {
    (void)ints, (void)p;
    return lq_relu(c, in[0]);
}
static lq_tensor *run_gelu(lq_ctx *c, lq_tensor **in, lq_tensor **ints, const float *p) {
    (void)ints;
    return lq_gelu(c, in[0], p[0] != 0 ? LQ_GELU_TANH : LQ_GELU_EXACT);
}
static lq_tensor *run_swiglu(lq_ctx *c, lq_tensor **in, lq_tensor **ints, const float *p) {
    (void)ints, (void)p;
    return lq_swiglu(c, in[0], in[1]);
}
static lq_tensor *run_embedding(lq_ctx *c, lq_tensor **in, lq_tensor **ints, const float *p) {
    (void)p;
    return lq_embedding(c, in[0], ints[0]);
}
static lq_tensor *run_rope(lq_ctx *c, lq_tensor **in, lq_tensor **ints, const float *p) {
    lq_rope_params rp = {.theta = p[0], .layout = p[1] != 0 ? LQ_ROPE_INTERLEAVED : LQ_ROPE_HALF, .rot_dim = (int)p[2]};
    return lq_rope(c, in[0], ints[0], &rp);
}
static lq_tensor *run_attention(lq_ctx *c, lq_tensor **in, lq_tensor **ints, const float *p) {
    lq_attn_params ap = {.causal = p[0] != 0, .scale = p[1], .doc = p[2] != 0 ? ints[0] : NULL};
    return lq_attention(c, in[0], in[1], in[2], &ap);
}
static lq_tensor *run_cross_entropy(lq_ctx *c, lq_tensor **in, lq_tensor **ints, const float *p) {
    return lq_cross_entropy(c, in[0], ints[0], LQ_IGNORE_INDEX, p[0] != 0 ? LQ_REDUCE_SUM : LQ_REDUCE_MEAN);
}
static lq_tensor *run_conv2d(lq_ctx *c, lq_tensor **in, lq_tensor **ints, const float *p) {
    (void)ints;
    lq_conv2d_params cp = {.stride_h = (int)p[0], .stride_w = (int)p[1], .pad_h = (int)p[2], .pad_w = (int)p[3]};
    return lq_conv2d(c, in[0], in[1], p[4] != 0 ? in[2] : NULL, &cp);
}
static lq_pool2d_params pool_params(const float *p) {
    lq_pool2d_params pp = {.kernel_h = (int)p[0], .kernel_w = (int)p[1], .stride_h = (int)p[2], .stride_w = (int)p[3],
                           .pad_h = (int)p[4], .pad_w = (int)p[5]};
    return pp;
}
static lq_tensor *run_max_pool2d(lq_ctx *c, lq_tensor **in, lq_tensor **ints, const float *p) {
    (void)ints;
    lq_pool2d_params pp = pool_params(p);
    return lq_max_pool2d(c, in[0], &pp);
}
static lq_tensor *run_avg_pool2d(lq_ctx *c, lq_tensor **in, lq_tensor **ints, const float *p) {
    (void)ints;
    lq_pool2d_params pp = pool_params(p);
    return lq_avg_pool2d(c, in[0], &pp);
}

typedef struct op_spec {
    const char *op;
    const char *inputs[4]; /* differentiable, in call order; absent ones are skipped */
    const char *ints[2];
    runner run;
} op_spec;

static const op_spec specs[] = {
    {"matmul", {"a", "b"}, {0}, run_matmul},
    {"add", {"a", "b"}, {0}, run_add},
    {"sub", {"a", "b"}, {0}, run_sub},
    {"mul", {"a", "b"}, {0}, run_mul},
    {"sum", {"x"}, {0}, run_sum},
    {"mean", {"x"}, {0}, run_mean},
    {"softmax", {"x"}, {0}, run_softmax},
    {"log_softmax", {"x"}, {0}, run_log_softmax},
    {"rmsnorm", {"x", "w"}, {0}, run_rmsnorm},
    {"layernorm", {"x", "w", "b"}, {0}, run_layernorm},
    {"silu", {"x"}, {0}, run_silu},
    {"relu", {"x"}, {0}, run_relu},
    {"gelu", {"x"}, {0}, run_gelu},
    {"swiglu", {"gate", "up"}, {0}, run_swiglu},
    {"embedding", {"table"}, {"ids"}, run_embedding},
    {"rope", {"x"}, {"pos"}, run_rope},
    {"attention", {"q", "k", "v"}, {"doc"}, run_attention},
    {"cross_entropy", {"logits"}, {"targets"}, run_cross_entropy},
    {"conv2d", {"x", "w", "b"}, {0}, run_conv2d},
    {"max_pool2d", {"x"}, {0}, run_max_pool2d},
    {"avg_pool2d", {"x"}, {0}, run_avg_pool2d},
};

static void run_spec(const op_spec *s) {
    lq_ctx *ctx = lq_test_ctx(2);
    int cases = 0;
    double worst_out = 0, worst_grad = 0;
    for (int ci = 0;; ci++) {
        const lq_fx_tensor *out_ref = lq_fixture_find(g_fx, "%s/%d/out", s->op, ci);
        if (!out_ref) break;
        lq_tensor *in[4] = {0}, *ints[2] = {0};
        const lq_fx_tensor *grad_ref[4] = {0};
        for (int i = 0; i < 4 && s->inputs[i]; i++) {
            in[i] = fx_tensor(ctx, lq_fixture_find(g_fx, "%s/%d/%s", s->op, ci, s->inputs[i]), true);
            grad_ref[i] = lq_fixture_find(g_fx, "%s/%d/grad_%s", s->op, ci, s->inputs[i]);
        }
        for (int i = 0; i < 2 && s->ints[i]; i++)
            ints[i] = fx_tensor(ctx, lq_fixture_find(g_fx, "%s/%d/%s", s->op, ci, s->ints[i]), false);
        float *params = fx_floats(lq_fixture_find(g_fx, "%s/%d/params", s->op, ci));
        lq_tensor *out = s->run(ctx, in, ints, params);
        assert_ctx_ok(ctx);
        assert_non_null(out);
        char what[96];
        snprintf(what, sizeof what, "%s case %d output", s->op, ci);
        lq_tensor *oc = lq_contiguous(ctx, out);
        compare(oc, out_ref, what, &worst_out);
        lq_tensor *R = fx_tensor(ctx, lq_fixture_find(g_fx, "%s/%d/R", s->op, ci), false);
        R->ndim = out->ndim; /* a scalar output's R is stored with shape () as well */
        for (int d = 0; d < LQ_MAX_DIMS; d++) R->ne[d] = out->ne[d];
        assert_int_equal(lq_backward_from(ctx, out, R), LQ_OK);
        for (int i = 0; i < 4 && in[i]; i++) {
            snprintf(what, sizeof what, "%s case %d grad of %s", s->op, ci, s->inputs[i]);
            assert_non_null(in[i]->grad);
            compare(in[i]->grad, grad_ref[i], what, &worst_grad);
        }
        free(params);
        lq_ctx_step_reset(ctx);
        cases++;
    }
    printf("%-14s %d cases  max output error %.2e  max grad error %.2e (relative to max |ref|)\n", s->op, cases,
           worst_out, worst_grad);
    assert_true(cases > 0);
    lq_ctx_free(ctx);
}

static void test_ops_match_torch(void **state) {
    (void)state;
    const lq_fx_tensor *v = lq_fixture_find(g_fx, "meta/torch_version");
    assert_non_null(v);
    printf("reference: torch %.*s\n", (int)v->numel, (const char *)v->data);
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) run_spec(&specs[i]);
}

/* Optimizer trajectories: params (2, 37) where row 0 is weight-decayed and row 1 is not, six
 * steps of fixed gradients, compared after every step with torch.optim (foreach=False). */
static void run_optimizer(const char *kind, int ci) {
    const lq_fx_tensor *p0 = lq_fixture_find(g_fx, "%s/%d/p0", kind, ci);
    if (!p0) return;
    float *init = fx_floats(p0), *grads = fx_floats(lq_fixture_find(g_fx, "%s/%d/grads", kind, ci));
    float *hp = fx_floats(lq_fixture_find(g_fx, "%s/%d/params", kind, ci));
    const lq_fx_tensor *traj = lq_fixture_find(g_fx, "%s/%d/traj", kind, ci);
    float *want = fx_floats(traj);
    int steps = (int)traj->shape[0];
    lq_err err = {0};
    lq_params *p;
    assert_int_equal(lq_params_init(&p, &err), LQ_OK);
    lq_tensor *a = lq_params_add(p, "a", 1, (int64_t[]){37}, 0, &err);
    lq_tensor *b = lq_params_add(p, "b", 1, (int64_t[]){37}, LQ_TENSOR_NO_DECAY, &err);
    assert_int_equal(lq_params_finalize(p, &err), LQ_OK);
    memcpy(a->data, init, 37 * sizeof(float));
    memcpy(b->data, init + 37, 37 * sizeof(float));
    lq_adamw adam = {0};
    lq_sgd sgd = {0};
    bool is_adam = strcmp(kind, "adamw") == 0;
    if (is_adam) {
        lq_adamw_cfg c = {.lr = hp[0], .beta1 = hp[1], .beta2 = hp[2], .eps = hp[3], .weight_decay = hp[4], .n_threads = 2};
        assert_int_equal(lq_adamw_init(&adam, p, &c, &err), LQ_OK);
    } else {
        lq_sgd_cfg c = {.lr = hp[0], .momentum = hp[1], .dampening = hp[2], .weight_decay = hp[3],
                        .nesterov = hp[4] != 0, .n_threads = 2};
        assert_int_equal(lq_sgd_init(&sgd, p, &c, &err), LQ_OK);
    }
    double worst = 0;
    for (int s = 0; s < steps; s++) {
        memcpy(a->grad->data, grads + (s * 2) * 37, 37 * sizeof(float));
        memcpy(b->grad->data, grads + (s * 2 + 1) * 37, 37 * sizeof(float));
        assert_int_equal(is_adam ? lq_adamw_step(&adam, p, hp[0], &err) : lq_sgd_step(&sgd, p, hp[0], &err), LQ_OK);
        float got[74];
        memcpy(got, a->data, 37 * sizeof(float));
        memcpy(got + 37, b->data, 37 * sizeof(float));
        for (int i = 0; i < 74; i++) worst = fmax(worst, fabs((double)got[i] - want[s * 74 + i]) / fmax(1.0, fabs(want[s * 74 + i])));
        char what[64];
        snprintf(what, sizeof what, "%s case %d step %d", kind, ci, s + 1);
        assert_allclose(got, want + s * 74, 74, 1e-6, 1e-7, what);
    }
    printf("%-6s case %d: %d steps, max relative difference from torch %.2e\n", kind, ci, steps, worst);
    if (is_adam) lq_adamw_free(&adam);
    else lq_sgd_free(&sgd);
    lq_params_free(p);
    free(init);
    free(grads);
    free(hp);
    free(want);
}

static void test_optimizers_match_torch(void **state) {
    (void)state;
    int n = 0;
    for (int ci = 0; ci < 8; ci++) {
        const char *kind = lq_fixture_find(g_fx, "adamw/%d/p0", ci) ? "adamw" : "sgd";
        if (!lq_fixture_find(g_fx, "%s/%d/p0", kind, ci)) continue;
        run_optimizer(kind, ci);
        n++;
    }
    assert_int_equal(n, 5);
}

/* Every op in the table that has a PyTorch counterpart must be covered here. */
static void test_parity_covers_ops(void **state) {
    (void)state;
    /* views and plumbing have no numeric peer; dropout's masks come from loquat's own generator;
     * the fake-quant ops are checked against torch / bitsandbytes in test_fake_quant.c and
     * qmatmul against dequantize-then-matmul in test_qmatmul.c, and the fused lora_linear (what
     * lq_lora_linear runs with an adapter) against PEFT + torch in test_lora.c */
    const char *no_torch_peer[] = {"contiguous", "reshape", "transpose", "permute", "slice", "concat",
                                   "scale", "dropout", "checkpoint", "qmatmul", "lora_linear", "fake_quant",
                                   "fake_quant_lsq", "pact", "fake_quant_dynamic", "fake_quant_bnb4"};
    for (int i = 0; i < lq_op_count(); i++) {
        const char *name = lq_op_name(i);
        bool found = false;
        for (size_t j = 0; j < sizeof specs / sizeof specs[0]; j++) found |= strcmp(specs[j].op, name) == 0;
        for (size_t j = 0; j < sizeof no_torch_peer / sizeof no_torch_peer[0]; j++)
            found |= strcmp(no_torch_peer[j], name) == 0;
        if (!found) fail_msg("op '%s' has no PyTorch parity case", name);
    }
}

int main(void) {
    char path[512];
    g_fx = lq_fixture_load(lq_fixture_path("torch_ops.lqfx", path, sizeof path));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parity_covers_ops),
        cmocka_unit_test(test_ops_match_torch),
        cmocka_unit_test(test_optimizers_match_torch),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    lq_fixture_free(g_fx);
    return rc;
}
