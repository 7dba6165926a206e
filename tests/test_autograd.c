/* tests/test_autograd.c: the tensor core (views, arena, parameter block) and the tape (grad
 * modes, accumulation, errors, gradient checkpointing). */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/autograd_impl.h"

static void fill_seq(lq_tensor *t) {
    float *d = t->data;
    for (int64_t i = 0; i < lq_numel(t); i++) d[i] = (float)i;
}

static void test_tensor_init_and_strides(void **state) {
    (void)state;
    lq_err err = {0};
    lq_tensor *t = lq_tensor_alloc(LQ_DTYPE_F32, 3, (int64_t[]){2, 3, 4}, "w", &err);
    assert_non_null(t);
    assert_int_equal(t->ndim, 3);
    assert_int_equal(t->nb[2], 4);
    assert_int_equal(t->nb[1], 16);
    assert_int_equal(t->nb[0], 48);
    assert_int_equal(t->ne[3], 1);
    assert_int_equal(lq_numel(t), 24);
    assert_null(t->grad); /* a heap tensor is frozen */
    assert_true(lq_is_contiguous(t));
    char buf[64];
    assert_string_equal(lq_shape_str(t, buf, sizeof buf), "(2, 3, 4)");
    assert_string_equal(t->name, "w");
    lq_tensor_free(t);
    /* bf16 uses 2-byte strides through the traits table */
    lq_tensor h;
    assert_int_equal(lq_tensor_init(&h, LQ_DTYPE_BF16, 2, (int64_t[]){3, 5}, NULL, &err), LQ_OK);
    assert_int_equal(h.nb[1], 2);
    assert_int_equal(h.nb[0], 10);
    assert_int_equal(lq_nbytes(&h), 30);
    /* bad shapes are refused with a message */
    assert_int_equal(lq_tensor_init(&h, LQ_DTYPE_F32, 5, (int64_t[]){1, 1, 1, 1, 1}, NULL, &err), LQ_ERR_ARG);
    assert_non_null(strstr(err.msg, "ndim"));
    lq_err_clear(&err);
    assert_int_equal(lq_tensor_init(&h, LQ_DTYPE_F32, 2, (int64_t[]){3, -1}, NULL, &err), LQ_ERR_ARG);
    lq_tensor s;
    lq_err_clear(&err);
    assert_int_equal(lq_tensor_init(&s, LQ_DTYPE_F32, 0, NULL, NULL, &err), LQ_OK);
    assert_int_equal(lq_numel(&s), 1); /* a scalar */
}

static void test_views_share_data(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_tensor *x = lq_new(ctx, LQ_DTYPE_F32, 3, (int64_t[]){2, 3, 4});
    fill_seq(x);
    lq_tensor *t = lq_transpose(ctx, x, 0, 2); /* (4, 3, 2) */
    assert_ptr_equal(t->data, x->data);
    assert_false(lq_is_contiguous(t));
    assert_int_equal(t->ne[0], 4);
    assert_true(*lq_f32_at(t, 3, 1, 0, 0) == *lq_f32_at(x, 0, 1, 3, 0));
    lq_tensor *p = lq_permute(ctx, x, (int[]){1, 2, 0}); /* (3, 4, 2) */
    assert_ptr_equal(p->data, x->data);
    assert_true(*lq_f32_at(p, 2, 3, 1, 0) == *lq_f32_at(x, 1, 2, 3, 0));
    lq_tensor *s = lq_slice(ctx, x, 1, 1, 3); /* (2, 2, 4) */
    assert_ptr_equal(s->data, (char *)x->data + x->nb[1]);
    assert_true(*lq_f32_at(s, 1, 1, 2, 0) == *lq_f32_at(x, 1, 2, 2, 0));
    lq_tensor *r = lq_reshape(ctx, x, 2, (int64_t[]){6, -1});
    assert_ptr_equal(r->data, x->data);
    assert_int_equal(r->ne[1], 4);
    /* reshape of a non-contiguous view copies, in logical order */
    lq_tensor *rt = lq_reshape(ctx, t, 1, (int64_t[]){24});
    assert_ptr_not_equal(rt->data, x->data);
    for (int64_t i = 0; i < 24; i++) {
        int64_t a = i / 6, b = (i / 2) % 3, c = i % 2;
        assert_true(((float *)rt->data)[i] == *lq_f32_at(t, a, b, c, 0));
    }
    /* contiguous() of a contiguous tensor is the tensor itself */
    assert_ptr_equal(lq_contiguous(ctx, x), x);
    lq_tensor *tc = lq_contiguous(ctx, t);
    assert_true(lq_is_contiguous(tc));
    assert_true(*lq_f32_at(tc, 3, 1, 0, 0) == *lq_f32_at(x, 0, 1, 3, 0));
    /* concat copies */
    lq_tensor *cat = lq_concat(ctx, (lq_tensor *[]){x, s}, 2, 1); /* (2, 5, 4) */
    assert_int_equal(cat->ne[1], 5);
    assert_true(*lq_f32_at(cat, 1, 4, 3, 0) == *lq_f32_at(s, 1, 1, 3, 0));
    assert_ctx_ok(ctx);
    lq_ctx_free(ctx);
}

static void test_errors_are_sticky_and_named(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_tensor *a = lq_zeros(ctx, LQ_DTYPE_F32, 2, (int64_t[]){2, 3});
    lq_tensor *b = lq_zeros(ctx, LQ_DTYPE_F32, 2, (int64_t[]){4, 5});
    assert_null(lq_matmul(ctx, a, b));
    const lq_err *e = lq_ctx_error(ctx);
    assert_int_equal(e->status, LQ_ERR_SHAPE);
    assert_non_null(strstr(e->msg, "matmul"));
    assert_non_null(strstr(e->msg, "(2, 3)"));
    assert_non_null(strstr(e->msg, "(4, 5)"));
    /* later ops return NULL and keep the first error */
    assert_null(lq_add(ctx, a, a));
    assert_null(lq_silu(ctx, NULL));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_SHAPE);
    lq_ctx_clear_error(ctx);
    assert_null(lq_add(ctx, a, b));
    assert_non_null(strstr(lq_ctx_error(ctx)->msg, "broadcast"));
    lq_ctx_clear_error(ctx);
    assert_null(lq_silu(ctx, NULL));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_ARG);
    lq_ctx_clear_error(ctx);
    lq_tensor *ids = lq_zeros(ctx, LQ_DTYPE_I32, 1, (int64_t[]){3});
    assert_null(lq_silu(ctx, ids));
    assert_non_null(strstr(lq_ctx_error(ctx)->msg, "f32"));
    lq_ctx_clear_error(ctx);
    assert_null(lq_reshape(ctx, a, 2, (int64_t[]){4, 2}));
    assert_non_null(strstr(lq_ctx_error(ctx)->msg, "6 elements"));
    lq_ctx_free(ctx);
}

static void test_arena_reuses_memory(void **state) {
    (void)state;
    lq_ctx_opts o = {.n_threads = 1, .arena_bytes = 4096};
    lq_ctx *ctx;
    lq_err err = {0};
    assert_int_equal(lq_ctx_init(&ctx, &o, &err), LQ_OK);
    uint64_t allocs[6];
    for (int step = 0; step < 6; step++) {
        /* a step needing ~1 MB, far beyond the initial 4 KB */
        for (int i = 0; i < 16; i++) assert_non_null(lq_new(ctx, LQ_DTYPE_F32, 1, (int64_t[]){16384}));
        allocs[step] = lq_ctx_arena_stats(ctx).sys_allocs;
        lq_ctx_step_reset(ctx);
        assert_int_equal(lq_ctx_arena_stats(ctx).used, 0);
    }
    /* growth happens in the first step, one merge at its reset, then never again */
    assert_true(allocs[0] > 2);
    for (int s = 2; s < 6; s++) assert_true(allocs[s] == allocs[1]);
    assert_true(lq_ctx_arena_stats(ctx).high_water >= 16 * 16384 * sizeof(float));
    /* marks rewind */
    lq_ctx_mark m = lq_ctx_get_mark(ctx);
    size_t before = lq_ctx_arena_stats(ctx).used;
    assert_non_null(lq_new(ctx, LQ_DTYPE_F32, 1, (int64_t[]){1000}));
    assert_true(lq_ctx_arena_stats(ctx).used > before);
    lq_ctx_reset_to(ctx, m);
    assert_int_equal(lq_ctx_arena_stats(ctx).used, before);
    lq_ctx_free(ctx);
}

static void test_params_block(void **state) {
    (void)state;
    lq_params *p;
    lq_err err = {0};
    assert_int_equal(lq_params_init(&p, &err), LQ_OK);
    lq_tensor *norm = lq_params_add(p, "norm", 1, (int64_t[]){5}, LQ_TENSOR_NO_DECAY, &err);
    lq_tensor *w = lq_params_add(p, "w", 2, (int64_t[]){3, 7}, 0, &err);
    lq_tensor *b = lq_params_add(p, "b", 1, (int64_t[]){3}, 0, &err);
    assert_non_null(norm);
    assert_null(lq_params_add(p, "w", 1, (int64_t[]){2}, 0, &err));
    assert_non_null(strstr(err.msg, "twice"));
    lq_err_clear(&err);
    assert_null(w->data);
    assert_int_equal(lq_params_finalize(p, &err), LQ_OK);
    assert_null(lq_params_add(p, "late", 1, (int64_t[]){2}, 0, &err));
    lq_err_clear(&err);
    float *base = lq_params_data(p);
    /* decayed tensors first (declaration order), then no-decay; 64-byte aligned */
    assert_ptr_equal(w->data, base);
    assert_ptr_equal(b->data, base + 32);
    assert_ptr_equal(norm->data, base + 48);
    assert_int_equal(lq_params_decay_numel(p), 48);
    assert_int_equal(lq_params_numel(p), 64);
    assert_int_equal(lq_params_count_elements(p), 21 + 3 + 5);
    assert_ptr_equal(w->grad->data, lq_params_grad(p));
    assert_true(w->flags & LQ_TENSOR_PARAM);
    assert_true(w->flags & LQ_TENSOR_REQUIRES_GRAD);
    assert_ptr_equal(lq_params_find(p, "b"), b);
    assert_null(lq_params_find(p, "nope"));
    assert_int_equal(lq_params_count(p), 3);
    for (int64_t i = 0; i < lq_params_numel(p); i++) assert_true(base[i] == 0.0f);
    lq_params_free(p);
}

/* Frozen weights get no gradient; params do; grads accumulate across backward passes until
 * zeroed; no-grad mode records nothing. */
static void test_grad_modes(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_err err = {0};
    lq_params *p;
    assert_int_equal(lq_params_init(&p, &err), LQ_OK);
    lq_tensor *w = lq_params_add(p, "w", 2, (int64_t[]){3, 2}, 0, &err);
    assert_int_equal(lq_params_finalize(p, &err), LQ_OK);
    lq_tensor *frozen = lq_tensor_alloc(LQ_DTYPE_F32, 2, (int64_t[]){2, 3}, "frozen", &err);
    lq_rng rng;
    lq_rng_seed(&rng, 3);
    lq_fill_normal(w, &rng, 1.0f);
    lq_fill_normal(frozen, &rng, 1.0f);

    lq_tensor *y = lq_sum(ctx, lq_matmul(ctx, frozen, w), LQ_AXIS_ALL, false);
    assert_int_equal(lq_backward(ctx, y), LQ_OK);
    assert_null(frozen->grad);
    float g1[6];
    memcpy(g1, w->grad->data, sizeof g1);
    /* d sum(F W) / dW[k][j] = sum_i F[i][k] */
    for (int k = 0; k < 3; k++)
        for (int j = 0; j < 2; j++) {
            float want = *lq_f32_at(frozen, 0, k, 0, 0) + *lq_f32_at(frozen, 1, k, 0, 0);
            assert_float_equal(g1[k * 2 + j], want, 1e-5);
        }
    lq_ctx_step_reset(ctx);
    y = lq_sum(ctx, lq_matmul(ctx, frozen, w), LQ_AXIS_ALL, false);
    assert_int_equal(lq_backward(ctx, y), LQ_OK);
    for (int i = 0; i < 6; i++) assert_float_equal(((float *)w->grad->data)[i], 2 * g1[i], 1e-5);
    /* the tape is consumed: a second backward is refused */
    assert_int_equal(lq_backward(ctx, y), LQ_ERR_STATE);
    lq_ctx_clear_error(ctx);
    lq_params_zero_grad(p);
    lq_ctx_step_reset(ctx);

    /* no-grad: nothing recorded, backward refused with a clear message */
    bool prev = lq_ctx_set_grad(ctx, false);
    assert_true(prev);
    lq_tensor *z = lq_sum(ctx, lq_matmul(ctx, frozen, w), LQ_AXIS_ALL, false);
    assert_non_null(z);
    assert_null(z->node);
    assert_false(z->flags & LQ_TENSOR_REQUIRES_GRAD);
    assert_int_equal(lq_backward(ctx, z), LQ_ERR_STATE);
    assert_non_null(strstr(lq_ctx_error(ctx)->msg, "no-grad"));
    lq_ctx_clear_error(ctx);
    lq_ctx_set_grad(ctx, true);
    /* a loss that is not a scalar is refused */
    lq_tensor *v = lq_matmul(ctx, frozen, w);
    assert_int_equal(lq_backward(ctx, v), LQ_ERR_SHAPE);
    lq_ctx_clear_error(ctx);
    /* only frozen inputs: nothing to differentiate */
    lq_tensor *f2 = lq_sum(ctx, frozen, LQ_AXIS_ALL, false);
    assert_int_equal(lq_backward(ctx, f2), LQ_ERR_STATE);
    lq_tensor_free(frozen);
    lq_params_free(p);
    lq_ctx_free(ctx);
}

/* --- gradient checkpointing ---------------------------------------------------------------- */

typedef struct block_w {
    lq_tensor *w1, *w2;
} block_w;

/* x + silu(x W1) W2: a residual MLP block, (N, C) -> (N, C). */
static lq_tensor *block(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    block_w *b = user;
    lq_tensor *h = lq_silu(ctx, lq_matmul(ctx, in[0], b->w1));
    return lq_add(ctx, in[0], lq_matmul(ctx, h, b->w2));
}

static void run_stack(lq_ctx *ctx, lq_params *p, block_w *bw, lq_tensor *x, bool ckpt, size_t *peak) {
    lq_params_zero_grad(p);
    lq_ctx_step_reset(ctx);
    size_t hw0 = lq_ctx_arena_stats(ctx).high_water;
    (void)hw0;
    lq_tensor *h = x;
    for (int l = 0; l < 4; l++) h = ckpt ? lq_checkpoint(ctx, block, &bw[l], 1, &h) : block(ctx, &h, 1, &bw[l]);
    lq_tensor *loss = lq_mean(ctx, lq_mul(ctx, h, h), LQ_AXIS_ALL, false);
    assert_non_null(loss);
    *peak = lq_arena_used(&ctx->main);
    assert_int_equal(lq_backward(ctx, loss), LQ_OK);
    assert_ctx_ok(ctx);
}

static void test_checkpointing_same_grads_less_memory(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_err err = {0};
    lq_params *p;
    assert_int_equal(lq_params_init(&p, &err), LQ_OK);
    const int64_t N = 64, C = 32, H = 128;
    block_w bw[4];
    for (int l = 0; l < 4; l++) {
        char name[32];
        snprintf(name, sizeof name, "l%d.w1", l);
        bw[l].w1 = lq_params_add(p, name, 2, (int64_t[]){C, H}, 0, &err);
        snprintf(name, sizeof name, "l%d.w2", l);
        bw[l].w2 = lq_params_add(p, name, 2, (int64_t[]){H, C}, 0, &err);
    }
    assert_int_equal(lq_params_finalize(p, &err), LQ_OK);
    lq_rng rng;
    lq_rng_seed(&rng, 11);
    for (int l = 0; l < 4; l++) {
        lq_fill_normal(bw[l].w1, &rng, 0.2f);
        lq_fill_normal(bw[l].w2, &rng, 0.1f);
    }
    lq_tensor *x = lq_tensor_alloc(LQ_DTYPE_F32, 2, (int64_t[]){N, C}, "x", &err);
    lq_fill_normal(x, &rng, 1.0f);

    size_t peak_plain, peak_ckpt;
    run_stack(ctx, p, bw, x, false, &peak_plain);
    int64_t n = lq_params_numel(p);
    float *g_plain = malloc((size_t)n * sizeof(float));
    memcpy(g_plain, lq_params_grad(p), (size_t)n * sizeof(float));
    run_stack(ctx, p, bw, x, true, &peak_ckpt);
    /* bit-identical gradients: the re-run is the same computation */
    assert_memory_equal(g_plain, lq_params_grad(p), (size_t)n * sizeof(float));
    printf("activations kept after forward: %zu bytes plain, %zu bytes checkpointed\n", peak_plain, peak_ckpt);
    assert_true(peak_ckpt * 3 < peak_plain);
    /* and the input gets its gradient through the checkpoints too */
    lq_ctx_step_reset(ctx);
    lq_tensor *xl = lq_new_leaf(ctx, 2, (int64_t[]){N, C}, true);
    memcpy(xl->data, x->data, (size_t)(N * C) * sizeof(float));
    lq_tensor *h = xl;
    for (int l = 0; l < 4; l++) h = lq_checkpoint(ctx, block, &bw[l], 1, &h);
    assert_int_equal(lq_backward(ctx, lq_mean(ctx, lq_mul(ctx, h, h), LQ_AXIS_ALL, false)), LQ_OK);
    assert_non_null(xl->grad);
    float *gx_ckpt = malloc((size_t)(N * C) * sizeof(float));
    memcpy(gx_ckpt, xl->grad->data, (size_t)(N * C) * sizeof(float));
    lq_ctx_step_reset(ctx);
    xl = lq_new_leaf(ctx, 2, (int64_t[]){N, C}, true);
    memcpy(xl->data, x->data, (size_t)(N * C) * sizeof(float));
    h = xl;
    for (int l = 0; l < 4; l++) h = block(ctx, &h, 1, &bw[l]);
    assert_int_equal(lq_backward(ctx, lq_mean(ctx, lq_mul(ctx, h, h), LQ_AXIS_ALL, false)), LQ_OK);
    assert_memory_equal(gx_ckpt, xl->grad->data, (size_t)(N * C) * sizeof(float));
    free(gx_ckpt);
    free(g_plain);
    lq_tensor_free(x);
    lq_params_free(p);
    lq_ctx_free(ctx);
}

/* A parameter the segments read through user that is a plain leaf (no lq_params block holding its
 * gradient): the first segment re-run to touch it makes its gradient, which must outlive that
 * re-run's scratch arena. Two checkpointed blocks share one (w1, w2); the gradients are those of
 * the same blocks without checkpointing, bit for bit. */
static void leaf_stack(lq_ctx *ctx, const lq_tensor *x, const float *w1, const float *w2, bool ckpt, float *g1, float *g2) {
    const int64_t C = x->ne[1], H = 16;
    lq_ctx_step_reset(ctx);
    block_w bw = {lq_new_leaf(ctx, 2, (int64_t[]){C, H}, true), lq_new_leaf(ctx, 2, (int64_t[]){H, C}, true)};
    lq_tensor *h = lq_new_leaf(ctx, 2, x->ne, false);
    assert_true(bw.w1 && bw.w2 && h);
    memcpy(bw.w1->data, w1, (size_t)(C * H) * sizeof(float));
    memcpy(bw.w2->data, w2, (size_t)(C * H) * sizeof(float));
    memcpy(h->data, x->data, lq_nbytes(x));
    for (int l = 0; l < 2; l++) h = ckpt ? lq_checkpoint(ctx, block, &bw, 1, &h) : block(ctx, &h, 1, &bw);
    assert_int_equal(lq_backward(ctx, lq_mean(ctx, lq_mul(ctx, h, h), LQ_AXIS_ALL, false)), LQ_OK);
    assert_true(bw.w1->grad && bw.w2->grad);
    memcpy(g1, bw.w1->grad->data, (size_t)(C * H) * sizeof(float));
    memcpy(g2, bw.w2->grad->data, (size_t)(C * H) * sizeof(float));
}

static void test_checkpointing_leaf_param(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_err err = {0};
    enum { N = 24, C = 12, H = 16 };
    lq_tensor *x = lq_tensor_alloc(LQ_DTYPE_F32, 2, (int64_t[]){N, C}, "x", &err);
    assert_non_null(x);
    float w1[C * H], w2[H * C], g[4][C * H];
    lq_rng rng;
    lq_rng_seed(&rng, 12);
    lq_fill_normal(x, &rng, 1.0f);
    for (int i = 0; i < C * H; i++) w1[i] = 0.3f * lq_rng_normal(&rng), w2[i] = 0.2f * lq_rng_normal(&rng);
    leaf_stack(ctx, x, w1, w2, false, g[0], g[1]);
    leaf_stack(ctx, x, w1, w2, true, g[2], g[3]);
    assert_memory_equal(g[0], g[2], sizeof g[0]);
    assert_memory_equal(g[1], g[3], sizeof g[1]);
    lq_tensor_free(x);
    lq_ctx_free(ctx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tensor_init_and_strides),
        cmocka_unit_test(test_views_share_data),
        cmocka_unit_test(test_errors_are_sticky_and_named),
        cmocka_unit_test(test_arena_reuses_memory),
        cmocka_unit_test(test_params_block),
        cmocka_unit_test(test_grad_modes),
        cmocka_unit_test(test_checkpointing_same_grads_less_memory),
        cmocka_unit_test(test_checkpointing_leaf_param),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
