/* tests/test_lora.c: LoRA targets and scaling, lq_lora_linear against PEFT + torch (f32 and NF4 bases), its
 * gradients and dropout, and the adapter set's parameters and init (PEFT files: test_lora_peft.c). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora_testutil.h"

#include "lora/lora.h"

/* --- helpers ---------------------------------------------------------------------------------- */

/* Fixture records are packed (data possibly unaligned): read them through copies. */
static void params_of(const lq_fixture *fx, const char *cs, int32_t p[7]) {
    const lq_fx_tensor *r = needf(fx, cs, "params");
    assert_int_equal(r->dtype, 1);
    assert_int_equal(r->numel, 7);
    memcpy(p, r->data, 7 * sizeof *p);
}

static float scalar_of(const lq_fixture *fx, const char *cs, const char *field) {
    const lq_fx_tensor *r = needf(fx, cs, field);
    assert_int_equal(r->dtype, 0);
    float v;
    memcpy(&v, r->data, sizeof v);
    return v;
}

/* An arena tensor holding a copy of an f32 record, as a leaf that may require a gradient. */
static lq_tensor *leaf_from(lq_ctx *ctx, const lq_fx_tensor *r, bool grad) {
    lq_tensor *t = lq_new_leaf(ctx, r->ndim, r->shape, grad);
    assert_non_null(t);
    assert_int_equal(r->dtype, 0);
    memcpy(t->data, r->data, (size_t)r->numel * sizeof(float));
    return t;
}

/* --- targets, config, scaling ------------------------------------------------------------------ */

static void test_targets(void **state) {
    (void)state;
    static const char *const names[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    for (int t = 0; t < LQ_LORA_N_TARGETS; t++) {
        assert_string_equal(lq_lora_target_name((lq_lora_target)t), names[t]);
        assert_string_equal(lq_lora_target_parent((lq_lora_target)t), t < 4 ? "self_attn" : "mlp");
        char full[128];
        assert_int_equal(lq_lora_target_parse(names[t]), t);
        snprintf(full, sizeof full, "%s.%s", t < 4 ? "self_attn" : "mlp", names[t]);
        assert_int_equal(lq_lora_target_parse(full), t);
        snprintf(full, sizeof full, "model.layers.13.%s.%s", t < 4 ? "self_attn" : "mlp", names[t]);
        assert_int_equal(lq_lora_target_parse(full), t);
    }
    assert_int_equal(lq_lora_target_parse("mlp.q_proj"), -1); /* wrong parent */
    assert_int_equal(lq_lora_target_parse("self_attn.up_proj"), -1);
    assert_int_equal(lq_lora_target_parse("lm_head"), -1);
    assert_int_equal(lq_lora_target_parse("xq_proj"), -1);
    assert_int_equal(lq_lora_target_parse("q_proj.weight"), -1);
    assert_int_equal(lq_lora_target_parse(""), -1);
    assert_int_equal(lq_lora_target_parse(NULL), -1);
    assert_int_equal(LQ_LORA_ALL_LINEAR, 0x7f);
}

static void test_scaling_and_check(void **state) {
    (void)state;
    lq_lora_cfg c = {.r = 4, .alpha = 8, .dropout = 0.1f, .targets = LQ_LORA_ALL_LINEAR};
    assert_true(lq_lora_scaling(&c) == 2.0f);
    c.rslora = true;
    assert_true(lq_lora_scaling(&c) == 4.0f);
    c.r = 3;
    c.alpha = 5;
    assert_true(lq_lora_scaling(&c) == (float)(5.0 / sqrt(3.0)));
    c.rslora = false;
    assert_true(lq_lora_scaling(&c) == (float)(5.0 / 3.0));
    /* PEFT's own scaling of the fixture cases */
    lq_fixture *fx = load_fx();
    static const char *const cases[] = {"linear/f32_bias", "linear/f32_rslora", "linear/nf4"};
    for (int i = 0; i < 3; i++) {
        int32_t p[7];
        params_of(fx, cases[i], p);
        lq_lora_cfg k = {.r = p[3], .alpha = scalar_of(fx, cases[i], "alpha"), .rslora = p[5] != 0, .targets = 1};
        float want = scalar_of(fx, cases[i], "scaling");
        if (lq_lora_scaling(&k) != want) fail_msg("%s: scaling %.9g, PEFT %.9g", cases[i], (double)lq_lora_scaling(&k), (double)want);
    }
    lq_fixture_free(fx);

    lq_err err = {0};
    c = (lq_lora_cfg){.r = 8, .alpha = 16, .dropout = 0.05f, .targets = 1u << LQ_LORA_Q};
    assert_int_equal(lq_lora_cfg_check(&c, &err), LQ_OK);
    lq_lora_cfg bad[] = {
        {.r = 0, .alpha = 16, .targets = 1},          {.r = 8, .alpha = 0, .targets = 1},
        {.r = 8, .alpha = -1, .targets = 1},          {.r = 8, .alpha = INFINITY, .targets = 1},
        {.r = 8, .alpha = NAN, .targets = 1},         {.r = 8, .alpha = 16, .dropout = 1.0f, .targets = 1},
        {.r = 8, .alpha = 16, .dropout = -0.1f, .targets = 1}, {.r = 8, .alpha = 16, .dropout = NAN, .targets = 1},
        {.r = 8, .alpha = 16, .targets = 0},          {.r = 8, .alpha = 16, .targets = 0x80},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        lq_err_clear(&err);
        if (lq_lora_cfg_check(&bad[i], &err) != LQ_ERR_ARG) fail_msg("bad config %zu accepted", i);
        assert_true(strlen(err.msg) > 0);
    }
    lq_lora_set *s = NULL;
    lq_err_clear(&err);
    assert_int_equal(lq_lora_set_init(&s, &bad[0], &err), LQ_ERR_ARG);
    assert_null(s);
}

/* --- the adapted linear against PEFT + torch ----------------------------------------------------- */

/* The fixture's weight: f32, or NF4 quantized by loquat from the same float W (codes checked
 * byte for byte against bitsandbytes'). *qs_out gets the state to free. */
static lq_tensor *weight_of(lq_ctx *ctx, const lq_fixture *fx, const char *cs, bool nf4, lq_qstate **qs_out) {
    const lq_fx_tensor *W = needf(fx, cs, "W");
    *qs_out = NULL;
    lq_tensor *wf = leaf_from(ctx, W, false);
    if (!nf4) return wf;
    int64_t n = W->numel;
    lq_tensor *codes = lq_new(ctx, LQ_DTYPE_U8, 1, (int64_t[]){(n + 1) / 2});
    assert_non_null(codes);
    lq_err err = {0};
    if (lq_bnb4_quantize(LQ_DTYPE_NF4, wf->data, n, 64, true, codes->data, qs_out, &err) != LQ_OK) fail_msg("%s", err.msg);
    const lq_fx_tensor *packed = needf(fx, cs, "packed");
    assert_int_equal(packed->numel, (n + 1) / 2);
    assert_memory_equal(codes->data, packed->data, (size_t)packed->numel);
    lq_tensor *w = calloc(1, sizeof *w); /* freed by the caller (free_weight) */
    assert_non_null(w);
    if (lq_tensor_init(w, LQ_DTYPE_NF4, 2, W->shape, codes->data, &err) != LQ_OK) fail_msg("%s", err.msg);
    w->qs = *qs_out;
    return w;
}

/* max |got - want| / max |want| under 1e-6 (float32 rounding over sums of ~100 terms), printed. */
static void close_rel(const float *got, const float *want, int64_t n, const char *cs, const char *what) {
    double md = 0, mw = 0;
    for (int64_t i = 0; i < n; i++) {
        md = fmax(md, fabs((double)got[i] - want[i]));
        mw = fmax(mw, fabs((double)want[i]));
    }
    printf("  %-18s %-3s max |diff| %.3e, relative to max |torch| %.3e\n", cs, what, md, md / mw);
    if (!(md <= 1e-6 * mw)) fail_msg("%s %s: max |diff| %.3e is %.3e of max |torch| %.3e (over 1e-6)", cs, what, md, md / mw, mw);
    assert_allclose(got, want, n, 1e-6, 1e-6 * mw, what);
}

static void check_case(const char *cs, int n_threads) {
    lq_fixture *fx = load_fx();
    lq_ctx *ctx = lq_test_ctx(n_threads);
    int32_t p[7];
    params_of(fx, cs, p);
    bool has_bias = p[4] != 0, nf4 = p[6] != 0;
    lq_qstate *qs;
    lq_tensor *w = weight_of(ctx, fx, cs, nf4, &qs);
    lq_tensor *b = has_bias ? leaf_from(ctx, needf(fx, cs, "b"), false) : NULL;
    lq_tensor *x = leaf_from(ctx, needf(fx, cs, "x"), true);
    lq_lora lo = {.in = p[1], .out = p[2], .dropout = 0.0f};
    snprintf(lo.module, sizeof lo.module, "proj");
    lo.A = leaf_from(ctx, needf(fx, cs, "A"), true);
    lo.B = leaf_from(ctx, needf(fx, cs, "B"), true);
    lq_lora_cfg c = {.r = p[3], .alpha = scalar_of(fx, cs, "alpha"), .rslora = p[5] != 0, .targets = 1};
    lo.scaling = lq_lora_scaling(&c);
    lq_ctx_set_training(ctx, true); /* dropout 0: training mode must change nothing */
    lq_tensor *y = lq_lora_linear(ctx, x, w, b, &lo);
    assert_ctx_ok(ctx);
    const lq_fx_tensor *fy = needf(fx, cs, "y"), *fgy = needf(fx, cs, "gy");
    assert_int_equal(lq_numel(y), fy->numel);
    assert_int_equal(y->ne[0], p[0]);
    assert_int_equal(y->ne[1], p[2]);
    /* torch sums the products in another order than sgemm, so an element near a cancellation can
     * differ by a few roundings of the largest terms: compare relative to the tensor's scale. */
    close_rel(y->data, leaf_from(ctx, fy, false)->data, fy->numel, cs, "y");
    lq_tensor *gy = leaf_from(ctx, fgy, false);
    assert_int_equal(lq_backward_from(ctx, y, gy), LQ_OK);
    close_rel(x->grad->data, leaf_from(ctx, needf(fx, cs, "dx"), false)->data, lq_numel(x), cs, "dx");
    close_rel(lo.A->grad->data, leaf_from(ctx, needf(fx, cs, "dA"), false)->data, lq_numel(lo.A), cs, "dA");
    close_rel(lo.B->grad->data, leaf_from(ctx, needf(fx, cs, "dB"), false)->data, lq_numel(lo.B), cs, "dB");
    /* the frozen weight and bias got no gradient */
    assert_null(w->grad);
    if (b) assert_null(b->grad);
    if (nf4) {
        lq_qstate_free(qs);
        free(w);
    }
    lq_ctx_free(ctx);
    lq_fixture_free(fx);
}

static void test_linear_f32_bias(void **state) {
    (void)state;
    check_case("linear/f32_bias", 1);
    check_case("linear/f32_bias", 2);
}
static void test_linear_f32_rslora(void **state) {
    (void)state;
    check_case("linear/f32_rslora", 2);
}
static void test_linear_nf4(void **state) {
    (void)state;
    check_case("linear/nf4", 1);
    check_case("linear/nf4", 2);
}

/* No adapter = the plain linear; a (B, T, in) input works and a strided one is made contiguous. */
static void test_linear_shapes(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_rng rng;
    lq_rng_seed(&rng, 3);
    lq_tensor *x = lq_new_leaf(ctx, 3, (int64_t[]){2, 3, 8}, false), *w = lq_new_leaf(ctx, 2, (int64_t[]){5, 8}, false);
    lq_tensor *A = lq_new_leaf(ctx, 2, (int64_t[]){2, 8}, false), *B = lq_new_leaf(ctx, 2, (int64_t[]){5, 2}, false);
    lq_fill_uniform(x, &rng, -1, 1);
    lq_fill_uniform(w, &rng, -1, 1);
    lq_fill_uniform(A, &rng, -1, 1);
    lq_fill_uniform(B, &rng, -1, 1);
    lq_lora lo = {.in = 8, .out = 5, .A = A, .B = B, .scaling = 0.75f};
    lq_tensor *y0 = lq_lora_linear(ctx, x, w, NULL, NULL), *y = lq_lora_linear(ctx, x, w, NULL, &lo);
    lq_tensor *xt = lq_transpose(ctx, lq_contiguous(ctx, lq_transpose(ctx, x, 0, 1)), 0, 1); /* strided (2,3,8) */
    lq_tensor *ys = lq_lora_linear(ctx, xt, w, NULL, &lo);
    assert_ctx_ok(ctx);
    assert_false(lq_is_contiguous(xt));
    assert_int_equal(y->ndim, 3);
    assert_int_equal(y->ne[2], 5);
    const float *X = x->data, *W = w->data, *Av = A->data, *Bv = B->data;
    double worst = 0;
    for (int i = 0; i < 6; i++)
        for (int o = 0; o < 5; o++) {
            double base = 0, ad = 0;
            for (int k = 0; k < 8; k++) base += (double)X[i * 8 + k] * W[o * 8 + k];
            for (int j = 0; j < 2; j++) {
                double h = 0;
                for (int k = 0; k < 8; k++) h += (double)X[i * 8 + k] * Av[j * 8 + k];
                ad += h * Bv[o * 2 + j];
            }
            worst = fmax(worst, fabs(((float *)y0->data)[i * 5 + o] - base));
            worst = fmax(worst, fabs(((float *)y->data)[i * 5 + o] - (base + 0.75 * ad)));
            worst = fmax(worst, fabs(((float *)ys->data)[i * 5 + o] - (base + 0.75 * ad)));
        }
    if (worst > 1e-5) fail_msg("lora_linear vs double loop: worst %.3e", worst);
    /* a wrong adapter shape is an error in the context, not a crash */
    lq_lora bad = lo;
    bad.A = lq_new_leaf(ctx, 2, (int64_t[]){2, 7}, false);
    assert_null(lq_lora_linear(ctx, x, w, NULL, &bad));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_SHAPE);
    lq_ctx_clear_error(ctx);
    assert_null(lq_lora_linear(ctx, x, NULL, NULL, &lo)); /* no weight: an error, not a crash */
    assert_int_not_equal(lq_ctx_status(ctx), LQ_OK);
    assert_null(lq_lora_linear(NULL, x, w, NULL, &lo));
    lq_ctx_free(ctx);
}

/* --- gradcheck ------------------------------------------------------------------------------------- */

typedef struct gc_user {
    lq_tensor *w, *bias;
    float scaling;
} gc_user;

static lq_tensor *gc_fn(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    gc_user *u = user;
    lq_lora lo = {.in = in[1]->ne[1], .out = in[2]->ne[0], .A = in[1], .B = in[2], .scaling = u->scaling};
    return lq_lora_linear(ctx, in[0], u->w, u->bias, &lo);
}

static void gradcheck_with(lq_dtype wt) {
    lq_ctx *ctx = lq_test_ctx(1);
    lq_rng rng;
    lq_rng_seed(&rng, 11);
    const int64_t N = 3, IN = 64, OUT = 5, R = 3;
    lq_tensor *x = lq_new_leaf(ctx, 2, (int64_t[]){N, IN}, true);
    lq_tensor *A = lq_new_leaf(ctx, 2, (int64_t[]){R, IN}, true), *B = lq_new_leaf(ctx, 2, (int64_t[]){OUT, R}, true);
    lq_tensor *wf = lq_new_leaf(ctx, 2, (int64_t[]){OUT, IN}, false), *bias = lq_new_leaf(ctx, 1, (int64_t[]){OUT}, false);
    lq_fill_uniform(x, &rng, -1, 1);
    lq_fill_uniform(A, &rng, -0.5f, 0.5f);
    lq_fill_uniform(B, &rng, -0.5f, 0.5f);
    lq_fill_uniform(wf, &rng, -0.5f, 0.5f);
    lq_fill_uniform(bias, &rng, -0.5f, 0.5f);
    gc_user u = {.w = wf, .bias = bias, .scaling = 1.7f};
    lq_qstate *qs = NULL;
    lq_tensor wq;
    if (wt == LQ_DTYPE_NF4) {
        uint8_t *codes = malloc((size_t)(OUT * IN / 2));
        assert_non_null(codes);
        lq_err err = {0};
        assert_int_equal(lq_bnb4_quantize(LQ_DTYPE_NF4, wf->data, OUT * IN, 64, true, codes, &qs, &err), LQ_OK);
        assert_int_equal(lq_tensor_init(&wq, LQ_DTYPE_NF4, 2, (int64_t[]){OUT, IN}, codes, &err), LQ_OK);
        wq.qs = qs;
        u.w = &wq;
        u.bias = NULL;
    }
    lq_tensor *in[3] = {x, A, B};
    lq_gc_opts o = {.step = 1e-2f, .seed = 9};
    lq_gc_result r;
    assert_int_equal(lq_gradcheck(ctx, gc_fn, &u, 3, in, &o, &r), LQ_OK);
    printf("lora_linear gradcheck (%s base): %lld elements, max error %.3e (input %d [%lld]: %.6g vs %.6g)\n",
           lq_dtype_name(wt), (long long)r.n_checked, r.error, r.worst_input, (long long)r.worst_index, r.analytic,
           r.numeric);
    assert_int_equal(r.n_checked, N * IN + R * IN + OUT * R);
    assert_true(r.error < 1e-2);
    if (wt == LQ_DTYPE_NF4) {
        free(wq.data);
        lq_qstate_free(qs);
    }
    lq_ctx_free(ctx);
}

static void test_gradcheck_f32(void **state) {
    (void)state;
    gradcheck_with(LQ_DTYPE_F32);
}
static void test_gradcheck_nf4(void **state) {
    (void)state;
    gradcheck_with(LQ_DTYPE_NF4);
}

/* Dropout acts on the adapter's input only: y = x W^T + s (drop(x) A^T) B^T with drop() the mask
 * lq_dropout draws for the same seed and stream; in eval mode it is off. */
static void test_dropout_adapter_only(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_rng rng;
    lq_rng_seed(&rng, 21);
    const int N = 4, IN = 16, OUT = 6, R = 2;
    const float P = 0.4f, S = 1.25f;
    lq_tensor *x = lq_new_leaf(ctx, 2, (int64_t[]){N, IN}, false), *w = lq_new_leaf(ctx, 2, (int64_t[]){OUT, IN}, false);
    lq_tensor *A = lq_new_leaf(ctx, 2, (int64_t[]){R, IN}, false), *B = lq_new_leaf(ctx, 2, (int64_t[]){OUT, R}, false);
    lq_fill_uniform(x, &rng, 0.5f, 1.5f); /* no zeros of its own: a zero in drop(x) is the mask's */
    lq_fill_uniform(w, &rng, -1, 1);
    lq_fill_uniform(A, &rng, -1, 1);
    lq_fill_uniform(B, &rng, -1, 1);
    lq_lora lo = {.in = IN, .out = OUT, .A = A, .B = B, .scaling = S, .dropout = P};
    lq_ctx_set_training(ctx, true);
    lq_ctx_set_seed(ctx, 77);
    lq_tensor *y = lq_lora_linear(ctx, x, w, NULL, &lo);
    lq_ctx_set_seed(ctx, 77);
    lq_tensor *d = lq_dropout(ctx, x, P);
    lq_ctx_set_training(ctx, false);
    lq_tensor *ye = lq_lora_linear(ctx, x, w, NULL, &lo);
    assert_ctx_ok(ctx);
    int dropped = 0;
    for (int i = 0; i < N * IN; i++) dropped += ((float *)d->data)[i] == 0.0f;
    assert_true(dropped > 0 && dropped < N * IN);
    const float *X = x->data, *D = d->data, *W = w->data, *Av = A->data, *Bv = B->data;
    double worst_train = 0, worst_eval = 0, diff = 0;
    for (int i = 0; i < N; i++)
        for (int o = 0; o < OUT; o++) {
            double base = 0, ad = 0, ade = 0;
            for (int k = 0; k < IN; k++) base += (double)X[i * IN + k] * W[o * IN + k];
            for (int j = 0; j < R; j++) {
                double h = 0, he = 0;
                for (int k = 0; k < IN; k++) {
                    h += (double)D[i * IN + k] * Av[j * IN + k];
                    he += (double)X[i * IN + k] * Av[j * IN + k];
                }
                ad += h * Bv[o * R + j];
                ade += he * Bv[o * R + j];
            }
            float yt = ((float *)y->data)[i * OUT + o], yv = ((float *)ye->data)[i * OUT + o];
            worst_train = fmax(worst_train, fabs(yt - (base + S * ad)));
            worst_eval = fmax(worst_eval, fabs(yv - (base + S * ade)));
            diff = fmax(diff, fabs(yt - yv));
        }
    if (worst_train > 1e-5 || worst_eval > 1e-5)
        fail_msg("dropout: train worst %.3e, eval worst %.3e against x W^T + s drop(x) A^T B^T", worst_train, worst_eval);
    assert_true(diff > 1e-3); /* the mask did change the adapter's output */
    lq_ctx_free(ctx);
}

/* --- the adapter set ------------------------------------------------------------------------------- */

static lq_lora_set *two_module_set(uint64_t seed) {
    lq_lora_cfg c = {.r = 4, .alpha = 8, .dropout = 0.05f, .targets = (1u << LQ_LORA_Q) | (1u << LQ_LORA_DOWN)};
    lq_lora_set *s = NULL;
    lq_err err = {0};
    assert_int_equal(lq_lora_set_init(&s, &c, &err), LQ_OK);
    assert_non_null(lq_lora_set_add(s, "model.layers.0.self_attn.q_proj", 40, 24, &err));
    assert_non_null(lq_lora_set_add(s, "model.layers.0.mlp.down_proj", 100, 40, &err));
    if (lq_lora_set_finalize(s, seed, &err) != LQ_OK) fail_msg("%s", err.msg);
    return s;
}

static void test_set_init(void **state) {
    (void)state;
    lq_lora_set *s = two_module_set(42);
    assert_int_equal(s->n, 2);
    assert_true(s->finalized);
    assert_int_equal(lq_params_count(s->params), 4);
    static const char *const names[] = {"model.layers.0.self_attn.q_proj.lora_A.weight",
                                        "model.layers.0.self_attn.q_proj.lora_B.weight",
                                        "model.layers.0.mlp.down_proj.lora_A.weight",
                                        "model.layers.0.mlp.down_proj.lora_B.weight"};
    for (int i = 0; i < 4; i++) {
        lq_tensor *t = lq_params_at(s->params, i);
        assert_string_equal(t->name, names[i]);
        assert_true(t->flags & LQ_TENSOR_REQUIRES_GRAD);
        assert_false(t->flags & LQ_TENSOR_NO_DECAY); /* HF decays LoRA weights */
    }
    assert_int_equal(lq_params_decay_numel(s->params), lq_params_numel(s->params));
    lq_lora *q = lq_lora_set_find(s, "model.layers.0.self_attn.q_proj"), *dn = lq_lora_set_find(s, "model.layers.0.mlp.down_proj");
    assert_ptr_equal(q, &s->mods[0]);
    assert_ptr_equal(dn, &s->mods[1]);
    assert_null(lq_lora_set_find(s, "model.layers.1.self_attn.q_proj"));
    assert_int_equal(q->A->ne[0], 4);
    assert_int_equal(q->A->ne[1], 40);
    assert_int_equal(q->B->ne[0], 24);
    assert_int_equal(q->B->ne[1], 4);
    assert_true(q->scaling == 2.0f);
    assert_true(q->dropout == 0.05f);
    /* kaiming_uniform_(a = sqrt(5)): U(-1/sqrt(in), 1/sqrt(in)); B zeros */
    const lq_lora *ms[2] = {q, dn};
    lq_rng rng;
    lq_rng_seed(&rng, 42);
    for (int m = 0; m < 2; m++) {
        double bound = 1.0 / sqrt((double)ms[m]->in), mx = 0, mean = 0;
        const float *a = ms[m]->A->data;
        int64_t n = lq_numel(ms[m]->A);
        for (int64_t i = 0; i < n; i++) {
            assert_true(fabs(a[i]) <= bound);
            mx = fmax(mx, fabs(a[i]));
            mean += a[i];
            /* the documented stream: one lq_rng(seed), modules in order, A row-major */
            float want = (float)-bound + (float)(2 * bound) * lq_rng_uniform(&rng);
            if (fabsf(a[i] - want) > 1e-7f) fail_msg("module %d A[%lld] = %g, the seeded stream gives %g", m, (long long)i, (double)a[i], (double)want);
        }
        assert_true(mx > 0.9 * bound);
        assert_true(fabs(mean / (double)n) < 0.2 * bound);
        const float *b = ms[m]->B->data;
        for (int64_t i = 0; i < lq_numel(ms[m]->B); i++) assert_true(b[i] == 0.0f);
    }
    lq_lora_set *same = two_module_set(42), *other = two_module_set(43);
    assert_memory_equal(lq_params_data(s->params), lq_params_data(same->params), (size_t)lq_params_numel(s->params) * 4);
    assert_memory_not_equal(q->A->data, other->mods[0].A->data, (size_t)lq_numel(q->A) * 4);
    /* errors: duplicate, after finalize, bad sizes */
    lq_err err = {0};
    assert_null(lq_lora_set_add(s, "model.layers.1.self_attn.q_proj", 40, 24, &err));
    assert_int_equal(err.status, LQ_ERR_STATE);
    lq_lora_set *t = NULL;
    lq_err_clear(&err);
    assert_int_equal(lq_lora_set_init(&t, &s->cfg, &err), LQ_OK);
    assert_non_null(lq_lora_set_add(t, "a.q_proj", 8, 8, &err));
    assert_null(lq_lora_set_add(t, "a.q_proj", 8, 8, &err));
    assert_int_equal(err.status, LQ_ERR_ARG);
    lq_err_clear(&err);
    assert_null(lq_lora_set_add(t, "b.q_proj", 0, 8, &err));
    assert_int_equal(err.status, LQ_ERR_ARG);
    lq_lora_set_free(t);
    lq_lora_set_free(s);
    lq_lora_set_free(same);
    lq_lora_set_free(other);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_targets),
        cmocka_unit_test(test_scaling_and_check),
        cmocka_unit_test(test_linear_f32_bias),
        cmocka_unit_test(test_linear_f32_rslora),
        cmocka_unit_test(test_linear_nf4),
        cmocka_unit_test(test_linear_shapes),
        cmocka_unit_test(test_gradcheck_f32),
        cmocka_unit_test(test_gradcheck_nf4),
        cmocka_unit_test(test_dropout_adapter_only),
        cmocka_unit_test(test_set_init),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
