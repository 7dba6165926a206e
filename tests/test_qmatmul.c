/* tests/test_qmatmul.c: the tiled quantized matmul against dequantize-whole-W-then-matmul and a
 * double-precision loop, for every quantized dtype this build has; tiling edges, batching,
 * thread-count independence, scratch release and bad input. */
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/dequant_cuda.h"
#include "quant/kernels_ggml.h"

/* Formats a quantized base weight may have. Each one this build's traits table has a row for is
 * tested; F16 and BF16 are always there. */
static const lq_dtype weight_dtypes[] = {LQ_DTYPE_F16,  LQ_DTYPE_BF16, LQ_DTYPE_NF4,  LQ_DTYPE_FP4, LQ_DTYPE_Q8_0,
                                         LQ_DTYPE_Q4_0, LQ_DTYPE_Q4_K, LQ_DTYPE_Q6_K, LQ_DTYPE_I8,  LQ_DTYPE_I4};
static const char *const weight_names[] = {"f16", "bf16", "nf4", "fp4", "q8_0", "q4_0", "q4_k", "q6_k", "i8", "i4"};
#define N_WEIGHT_DTYPES (sizeof weight_dtypes / sizeof weight_dtypes[0])

/* Elements per scale where a format keeps its scales in an lq_qstate. */
#define STATE_BLOCK 64

static float *fbuf(int64_t n) {
    float *p = calloc((size_t)(n > 0 ? n : 1), sizeof *p);
    assert_non_null(p);
    return p;
}

static void free_weight(lq_tensor *w) {
    if (!w) return;
    lq_qstate_free(w->qs);
    lq_tensor_free(w);
}

/* ggml has no encoder for the k-quants (nor does loquat): random codes and sub-block scales with
 * small f16 super-block scales are weights as real as any to the decoder under test. */
static void random_kquant_blocks(lq_dtype t, void *dst, int64_t nblk, uint64_t seed) {
    lq_rng rng;
    lq_rng_seed(&rng, seed);
    size_t bytes = lq_dtype_bytes(t, nblk * LQ_GGML_QK_K);
    unsigned char *p = dst;
    for (size_t i = 0; i < bytes; i++) p[i] = (unsigned char)lq_rng_int(&rng, 0, 255);
    for (int64_t b = 0; b < nblk; b++) {
        uint16_t d = lq_f32_to_f16(0.0005f + 0.0035f * lq_rng_uniform(&rng));
        uint16_t dmin = lq_f32_to_f16(0.0005f + 0.0035f * lq_rng_uniform(&rng));
        if (t == LQ_DTYPE_Q4_K) {
            lq_block_q4_k *blk = (lq_block_q4_k *)dst + b;
            blk->d = d;
            blk->dmin = dmin;
        } else {
            lq_block_q6_k *blk = (lq_block_q6_k *)dst + b;
            blk->d = d;
        }
    }
}

/* Symmetric scales max|x| / qmax per block: the affine encoders use the scales in the state (the
 * bnb encoders compute their own absmax). */
static void set_scales(lq_qstate *qs, const float *src, int64_t n) {
    float qmax = (float)((1 << (qs->bits - 1)) - 1);
    for (int64_t b = 0; b * qs->block < n; b++) {
        float m = 0.0f;
        for (int64_t i = b * qs->block; i < (b + 1) * qs->block && i < n; i++) m = fmaxf(m, fabsf(src[i]));
        qs->absmax[b] = m > 0.0f ? m / qmax : 1.0f;
    }
}

/* A heap weight (N, K) of dtype t from normal floats (std 0.05, a few outliers), through the
 * format's encoder; NULL when this build has no row (or no way to make one) for t. */
static lq_tensor *make_weight(lq_dtype t, int64_t N, int64_t K, uint64_t seed) {
    const lq_dtype_traits *tr = lq_dtype_info(t);
    bool kquant = t == LQ_DTYPE_Q4_K || t == LQ_DTYPE_Q6_K;
    if (!tr || !tr->to_f32 || (!tr->from_f32 && !kquant)) return NULL;
    lq_err err = {0};
    lq_tensor *w = lq_tensor_alloc(t, 2, (int64_t[]){N, K}, "w", &err);
    if (!w) fail_msg("lq_tensor_alloc(%s, %lld x %lld): %s", tr->name, (long long)N, (long long)K, err.msg);
    if (!tr->from_f32) {
        random_kquant_blocks(t, w->data, N * K / LQ_GGML_QK_K, seed);
        return w;
    }
    if (tr->needs_qstate) {
        w->qs = lq_qstate_alloc((N * K + STATE_BLOCK - 1) / STATE_BLOCK, STATE_BLOCK, false, false, 0);
        assert_non_null(w->qs);
        w->qs->bits = t == LQ_DTYPE_I4 ? 4 : 8;
    }
    lq_rng rng;
    lq_rng_seed(&rng, seed);
    float *src = fbuf(N * K);
    for (int64_t i = 0; i < N * K; i++) src[i] = 0.05f * lq_rng_normal(&rng) * (i % 97 == 0 ? 8.0f : 1.0f);
    if (w->qs) set_scales(w->qs, src, N * K);
    if (tr->from_f32(src, w->data, N * K, w->qs, 0, &err) != LQ_OK)
        fail_msg("%s from_f32 failed: %s", tr->name, err.msg);
    free(src);
    return w;
}

/* deq(w) as a whole (N, K) f32 tensor in the arena: the reference the tiles must reproduce. */
static lq_tensor *dequant_whole(lq_ctx *ctx, const lq_tensor *w) {
    lq_tensor *f = lq_new(ctx, LQ_DTYPE_F32, 2, w->ne);
    assert_non_null(f);
    lq_dtype_info(w->dtype)->to_f32(w->data, f->data, lq_numel(w), w->qs, 0);
    return f;
}

static float max_abs(const float *a, int64_t n) {
    float m = 0;
    for (int64_t i = 0; i < n; i++) m = fmaxf(m, fabsf(a[i]));
    return m;
}

/* max |a - b| / max |b|, to report how far the tiled result is from the reference */
static double rel_diff(const float *a, const float *b, int64_t n) {
    double d = 0;
    for (int64_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - (double)b[i]));
    double s = max_abs(b, n);
    return s > 0 ? d / s : d;
}
static double worst_y, worst_dx; /* over test_against_dequant_matmul's checks, for its report line */

/* y = qmatmul(x, w) and dX under upstream gradient G, against dequantize-then-matmul_t on the
 * same x and G. Both are sgemm over the same floats; the forward differs at most in sgemm's
 * blocking of N (per-element sums run over k in the same way), and the backward sums over n in
 * tile order instead of in one sgemm, so the sums may round differently: a few float ulps of
 * the largest value. Tolerance: atol 1e-5 of the largest reference value (K <= 2048), rtol 1e-5. */
static void check_against_reference(lq_ctx *ctx, lq_tensor *w, int ndim, const int64_t *xshape,
                                    const lq_qmatmul_tiles *tiles, const char *what) {
    lq_rng rng;
    lq_rng_seed(&rng, 77);
    lq_ctx_mark m = lq_ctx_get_mark(ctx);
    lq_tensor *x = lq_new_leaf(ctx, ndim, xshape, true);
    assert_non_null(x);
    lq_fill_normal(x, &rng, 1.0f);
    lq_tensor *y = lq_qmatmul_tiled(ctx, x, w, tiles);
    assert_ctx_ok(ctx);
    assert_int_equal(y->ndim, ndim);
    for (int d = 0; d < ndim - 1; d++) assert_int_equal(y->ne[d], xshape[d]);
    assert_int_equal(y->ne[ndim - 1], w->ne[0]);
    lq_tensor *G = lq_new(ctx, LQ_DTYPE_F32, y->ndim, y->ne);
    assert_non_null(G);
    lq_fill_normal(G, &rng, 1.0f);
    assert_int_equal(lq_backward_from(ctx, y, G), LQ_OK);
    float *dx = fbuf(lq_numel(x));
    memcpy(dx, x->grad->data, (size_t)lq_numel(x) * sizeof(float));
    float *yq = fbuf(lq_numel(y));
    memcpy(yq, y->data, (size_t)lq_numel(y) * sizeof(float));

    x->grad = NULL;
    lq_tensor *wf = dequant_whole(ctx, w);
    /* matmul_t wants 2 dims: a vector x goes through as one row */
    lq_tensor *xr = ndim > 1 ? x : lq_reshape(ctx, x, 2, (int64_t[]){1, xshape[0]});
    lq_tensor *yr = lq_matmul_t(ctx, xr, wf, false, true);
    if (ndim == 1) yr = lq_reshape(ctx, yr, 1, y->ne);
    assert_ctx_ok(ctx);
    assert_int_equal(lq_backward_from(ctx, yr, G), LQ_OK);
    char msg[160], tdesc[64] = "default tiles";
    if (tiles)
        snprintf(tdesc, sizeof tdesc, "tiles %lldx%lld / %lld", (long long)tiles->fwd_rows, (long long)tiles->fwd_cols,
                 (long long)tiles->bwd_rows);
    worst_y = fmax(worst_y, rel_diff(yq, yr->data, lq_numel(y)));
    worst_dx = fmax(worst_dx, rel_diff(dx, x->grad->data, lq_numel(x)));
    snprintf(msg, sizeof msg, "%s y (%s, %s)", what, lq_dtype_name(w->dtype), tdesc);
    assert_allclose(yq, yr->data, lq_numel(y), 1e-5, 1e-5 * max_abs(yr->data, lq_numel(y)), msg);
    snprintf(msg, sizeof msg, "%s dX (%s, %s)", what, lq_dtype_name(w->dtype), tdesc);
    float *dxr = x->grad->data;
    assert_allclose(dx, dxr, lq_numel(x), 1e-5, 1e-5 * max_abs(dxr, lq_numel(x)), msg);
    free(dx);
    free(yq);
    x->grad = NULL;
    lq_ctx_reset_to(ctx, m);
}

/* Columns of a forward slab must be whole blocks (packed nibbles have blocks of 2). */
static int64_t col_unit(lq_dtype t) { return lq_dtype_info(t)->block_size; }

/* The default tiles: forward slabs 1024 columns wide (whole blocks), backward tiles of whole
 * rows, each at most 2^21 floats and a multiple of 16 rows. */
static void test_default_tiles(void **state) {
    (void)state;
    lq_qmatmul_tiles t = lq_qmatmul_default_tiles(LQ_DTYPE_NF4, 4096, 4096);
    assert_int_equal(t.fwd_rows, 2048);
    assert_int_equal(t.fwd_cols, 1024);
    assert_int_equal(t.bwd_rows, 512);
    t = lq_qmatmul_default_tiles(LQ_DTYPE_BF16, 1333, 2048);
    assert_int_equal(t.fwd_rows, 1333);
    assert_int_equal(t.fwd_cols, 1024);
    assert_int_equal(t.bwd_rows, 1024);
    t = lq_qmatmul_default_tiles(LQ_DTYPE_F16, 50000, 576); /* narrower than a slab: whole rows */
    assert_int_equal(t.fwd_cols, 576);
    assert_int_equal(t.fwd_rows, 3632);
    assert_int_equal(t.bwd_rows, 3632);
    t = lq_qmatmul_default_tiles(LQ_DTYPE_Q4_K, 7, 256);
    assert_int_equal(t.fwd_rows, 7);
    assert_int_equal(t.fwd_cols, 256);
    assert_int_equal(t.bwd_rows, 7);
    t = lq_qmatmul_default_tiles(LQ_DTYPE_Q8_0, 3000, 3200); /* 1024 is 32 blocks of 32 */
    assert_int_equal(t.fwd_cols, 1024);
    assert_int_equal(t.fwd_rows, 2048);
    assert_int_equal(t.bwd_rows, 640);
}

/* Every available dtype: batched x (B, T, K), odd N, K = 768 so that slabs of about 300
 * columns leave a partial last one, small tiles, one tile covering everything; and for a float,
 * a bnb and a ggml format the default tiles at N = 520, K = 4096 (4 forward slabs of 1024
 * columns; backward tiles of 512 + 8 rows). */
static void test_against_dequant_matmul(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(2);
    int tested = 0;
    char names[256] = "";
    for (size_t i = 0; i < N_WEIGHT_DTYPES; i++) {
        lq_dtype t = weight_dtypes[i];
        lq_tensor *w = make_weight(t, 333, 768, 100 + i);
        if (!w) {
            printf("  qmatmul: no %s (or no way to make one) in this build's traits table yet: not tested\n",
                   weight_names[i]);
            continue;
        }
        int64_t u = col_unit(t), cols = (300 + u - 1) / u * u;
        check_against_reference(ctx, w, 3, (int64_t[]){2, 5, 768}, &(lq_qmatmul_tiles){64, cols, 64}, "batched");
        check_against_reference(ctx, w, 3, (int64_t[]){2, 5, 768}, &(lq_qmatmul_tiles){7, u > 64 ? u : 64, 7},
                                "batched");
        check_against_reference(ctx, w, 2, (int64_t[]){9, 768}, &(lq_qmatmul_tiles){333, 768, 333}, "one tile");
        check_against_reference(ctx, w, 2, (int64_t[]){9, 768}, &(lq_qmatmul_tiles){1000, 4096, 1000}, "tile > W");
        check_against_reference(ctx, w, 1, (int64_t[]){768}, NULL, "vector x");
        free_weight(w);
        if (t == LQ_DTYPE_BF16 || t == LQ_DTYPE_NF4 || t == LQ_DTYPE_Q4_K) {
            w = make_weight(t, 520, 4096, 200 + i);
            check_against_reference(ctx, w, 3, (int64_t[]){3, 2, 4096}, NULL, "default tiles");
            free_weight(w);
        }
        tested++;
        snprintf(names + strlen(names), sizeof names - strlen(names), " %s", lq_dtype_name(t));
        lq_ctx_step_reset(ctx);
    }
    printf("  qmatmul checked for %d dtypes:%s; worst |diff| / max |ref|: y %.3g, dX %.3g\n", tested, names,
           worst_y, worst_dx);
    assert_true(tested >= 2);
    lq_ctx_free(ctx);
}

/* Independent of sgemm and of the dequantizer: f16 codes of known values, and y against a
 * double-precision loop over the exact f16 values. */
static void test_against_double_loop(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    int64_t N = 37, K = 24, M = 6;
    lq_err err = {0};
    lq_tensor *w = lq_tensor_alloc(LQ_DTYPE_F16, 2, (int64_t[]){N, K}, "w16", &err);
    assert_non_null(w);
    uint16_t *h = w->data;
    double *wd = calloc((size_t)(N * K), sizeof *wd);
    assert_non_null(wd);
    for (int64_t i = 0; i < N * K; i++) {
        int v = (int)((i * 7919) % 61) - 30; /* v / 16 is exact in f16 */
        h[i] = lq_f32_to_f16((float)v / 16.0f);
        wd[i] = v / 16.0;
    }
    lq_tensor *x = lq_new_leaf(ctx, 2, (int64_t[]){M, K}, true);
    lq_rng rng;
    lq_rng_seed(&rng, 3);
    lq_fill_normal(x, &rng, 1.0f);
    lq_tensor *y = lq_qmatmul_tiled(ctx, x, w, &(lq_qmatmul_tiles){5, 8, 5});
    assert_ctx_ok(ctx);
    lq_tensor *G = lq_new(ctx, LQ_DTYPE_F32, 2, y->ne);
    lq_fill_normal(G, &rng, 1.0f);
    assert_int_equal(lq_backward_from(ctx, y, G), LQ_OK);
    float *yw = fbuf(M * N), *dxw = fbuf(M * K);
    const float *xd = x->data, *gd = G->data;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double s = 0;
            for (int64_t k = 0; k < K; k++) s += (double)xd[m * K + k] * wd[n * K + k];
            yw[m * N + n] = (float)s;
        }
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < K; k++) {
            double s = 0;
            for (int64_t n = 0; n < N; n++) s += (double)gd[m * N + n] * wd[n * K + k];
            dxw[m * K + k] = (float)s;
        }
    assert_allclose(y->data, yw, M * N, 1e-5, 1e-5, "y vs double loop");
    assert_allclose(x->grad->data, dxw, M * K, 1e-5, 1e-5, "dX vs double loop");
    free(yw);
    free(dxw);
    free(wd);
    lq_tensor_free(w);
    lq_ctx_free(ctx);
}

/* 1 and 2 threads give bit-identical y and dX (the dequant split is by whole rows). */
static void test_threads_identical(void **state) {
    (void)state;
    for (size_t i = 0; i < N_WEIGHT_DTYPES; i++) {
        lq_tensor *w = make_weight(weight_dtypes[i], 301, 512, 300 + i);
        if (!w) continue;
        float *res[2][2] = {{NULL, NULL}, {NULL, NULL}};
        int64_t xs[3] = {2, 7, 512};
        for (int th = 0; th < 2; th++) {
            lq_ctx *ctx = lq_test_ctx(th + 1);
            lq_rng rng;
            lq_rng_seed(&rng, 9);
            lq_tensor *x = lq_new_leaf(ctx, 3, xs, true);
            lq_fill_normal(x, &rng, 1.0f);
            int64_t u = col_unit(weight_dtypes[i]);
            lq_tensor *y = lq_qmatmul_tiled(ctx, x, w, &(lq_qmatmul_tiles){96, (300 + u - 1) / u * u, 96});
            assert_ctx_ok(ctx);
            lq_tensor *G = lq_new(ctx, LQ_DTYPE_F32, 3, y->ne);
            lq_fill_normal(G, &rng, 1.0f);
            assert_int_equal(lq_backward_from(ctx, y, G), LQ_OK);
            res[th][0] = fbuf(lq_numel(y));
            res[th][1] = fbuf(lq_numel(x));
            memcpy(res[th][0], y->data, (size_t)lq_numel(y) * sizeof(float));
            memcpy(res[th][1], x->grad->data, (size_t)lq_numel(x) * sizeof(float));
            lq_ctx_free(ctx);
        }
        if (memcmp(res[0][0], res[1][0], 2 * 7 * 301 * sizeof(float)) != 0)
            fail_msg("%s: y differs between 1 and 2 threads", lq_dtype_name(weight_dtypes[i]));
        if (memcmp(res[0][1], res[1][1], 2 * 7 * 512 * sizeof(float)) != 0)
            fail_msg("%s: dX differs between 1 and 2 threads", lq_dtype_name(weight_dtypes[i]));
        for (int th = 0; th < 2; th++) free(res[th][0]), free(res[th][1]);
        free_weight(w);
    }
}

/* The tile scratch goes back to the arena when the op returns: a layer's forward keeps its
 * output, not a tile of float weights. */
static void test_scratch_released(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(2);
    lq_tensor *w = make_weight(LQ_DTYPE_BF16, 256, 2048, 5);
    lq_tensor *x = lq_new_leaf(ctx, 2, (int64_t[]){4, 2048}, true);
    lq_rng rng;
    lq_rng_seed(&rng, 4);
    lq_fill_normal(x, &rng, 1.0f);
    size_t before = lq_ctx_arena_stats(ctx).used;
    lq_tensor *y = lq_qmatmul(ctx, x, w); /* slabs of 256 x 1024 floats, a backward tile of 256 x 2048 */
    assert_ctx_ok(ctx);
    size_t after = lq_ctx_arena_stats(ctx).used;
    size_t out_bytes = (size_t)lq_numel(y) * sizeof(float);
    if (after - before > out_bytes + 4096)
        fail_msg("arena grew by %zu bytes for a %zu-byte output: the tile scratch was kept", after - before, out_bytes);
    assert_int_equal(lq_backward(ctx, lq_sum(ctx, y, LQ_AXIS_ALL, false)), LQ_OK);
    free_weight(w);
    lq_ctx_free(ctx);
}

/* x a transposed view (not contiguous) and no-grad mode. */
static void test_strided_x_and_no_grad(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(2);
    lq_tensor *w = make_weight(LQ_DTYPE_F16, 19, 32, 8);
    lq_rng rng;
    lq_rng_seed(&rng, 5);
    lq_tensor *xt = lq_new_leaf(ctx, 2, (int64_t[]){32, 6}, false);
    lq_fill_normal(xt, &rng, 1.0f);
    lq_tensor *x = lq_transpose(ctx, xt, 0, 1); /* (6, 32), strided */
    assert_false(lq_is_contiguous(x));
    bool prev = lq_ctx_set_grad(ctx, false);
    lq_tensor *y = lq_qmatmul(ctx, x, w);
    assert_ctx_ok(ctx);
    assert_false(y->flags & LQ_TENSOR_REQUIRES_GRAD);
    lq_tensor *yr = lq_matmul_t(ctx, x, dequant_whole(ctx, w), false, true);
    assert_ctx_ok(ctx);
    assert_allclose(y->data, yr->data, 6 * 19, 1e-5, 1e-6, "strided x");
    lq_ctx_set_grad(ctx, prev);
    free_weight(w);
    lq_ctx_free(ctx);
}

/* Each bad input fails with a status and a message naming the problem. */
static void expect_error(lq_ctx *ctx, lq_tensor *y, lq_status want, const char *needle) {
    assert_null(y);
    if (lq_ctx_status(ctx) != want || !strstr(lq_ctx_error(ctx)->msg, needle))
        fail_msg("want %s containing '%s', got %s: %s", lq_status_name(want), needle, lq_status_name(lq_ctx_status(ctx)),
                 lq_ctx_error(ctx)->msg);
    lq_ctx_clear_error(ctx);
}

static void test_errors(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_tensor *w = make_weight(LQ_DTYPE_F16, 8, 32, 1);
    lq_tensor *x = lq_new_leaf(ctx, 2, (int64_t[]){3, 32}, true);
    lq_tensor *x_bad = lq_new_leaf(ctx, 2, (int64_t[]){3, 31}, true);
    expect_error(ctx, lq_qmatmul(ctx, x_bad, w), LQ_ERR_SHAPE, "in-features");
    expect_error(ctx, lq_qmatmul(ctx, x, NULL), LQ_ERR_ARG, "w is NULL");
    expect_error(ctx, lq_qmatmul(ctx, NULL, w), LQ_ERR_ARG, "x is NULL");
    /* w requiring a gradient: a quantized base weight is frozen */
    w->flags |= LQ_TENSOR_REQUIRES_GRAD;
    expect_error(ctx, lq_qmatmul(ctx, x, w), LQ_ERR_ARG, "must be frozen");
    w->flags &= ~(uint32_t)LQ_TENSOR_REQUIRES_GRAD;
    /* a dtype with no conversion to f32 */
    lq_tensor bogus = *w;
    bogus.dtype = LQ_DTYPE_COUNT;
    expect_error(ctx, lq_qmatmul(ctx, x, &bogus), LQ_ERR_UNSUPPORTED, "no conversion to f32");
    /* w not 2-D, x not f32 */
    lq_tensor w3 = *w;
    w3.ndim = 3;
    w3.ne[2] = 1;
    expect_error(ctx, lq_qmatmul(ctx, x, &w3), LQ_ERR_SHAPE, "2-D");
    lq_tensor *xi = lq_new(ctx, LQ_DTYPE_I32, 2, (int64_t[]){3, 32});
    expect_error(ctx, lq_qmatmul(ctx, xi, w), LQ_ERR_ARG, "must be f32");
    expect_error(ctx, lq_qmatmul_tiled(ctx, x, w, &(lq_qmatmul_tiles){-1, 0, 0}), LQ_ERR_ARG, "sizes must be");
    lq_tensor *w40 = make_weight(LQ_DTYPE_Q4_0, 8, 32, 2);
    expect_error(ctx, lq_qmatmul_tiled(ctx, x, w40, &(lq_qmatmul_tiles){0, 16, 0}), LQ_ERR_ARG,
                 "whole q4_0 blocks of 32");
    assert_non_null(lq_qmatmul_tiled(ctx, x, w40, &(lq_qmatmul_tiles){0, 32, 0}));
    free_weight(w40);
    /* a format that keeps scales beside its codes, without them */
    for (int t = 0; t < LQ_DTYPE_COUNT; t++) {
        const lq_dtype_traits *tr = lq_dtype_info((lq_dtype)t);
        if (!tr || !tr->needs_qstate || 32 % tr->block_size) continue;
        lq_tensor *wq = lq_new(ctx, (lq_dtype)t, 2, (int64_t[]){8, 32});
        assert_non_null(wq);
        expect_error(ctx, lq_qmatmul(ctx, x, wq), LQ_ERR_ARG, "no quant state");
        break;
    }
    /* the context stays usable */
    assert_non_null(lq_qmatmul(ctx, x, w));
    assert_ctx_ok(ctx);
    free_weight(w);
    lq_ctx_free(ctx);
}

/* --- against PyTorch / bitsandbytes / gguf (tests/fixtures/qmatmul.lqfx) -------------------- */

static const struct {
    const char *name;
    lq_dtype t;
} fixture_cases[] = {
    {"f16", LQ_DTYPE_F16},   {"bf16", LQ_DTYPE_BF16}, {"nf4", LQ_DTYPE_NF4},   {"nf4_dq", LQ_DTYPE_NF4},
    {"fp4", LQ_DTYPE_FP4},   {"fp4_dq", LQ_DTYPE_FP4}, {"q8_0", LQ_DTYPE_Q8_0}, {"q4_0", LQ_DTYPE_Q4_0},
    {"q4_k", LQ_DTYPE_Q4_K}, {"q6_k", LQ_DTYPE_Q6_K}, {"i8", LQ_DTYPE_I8},
};

/* A copy of record qmatmul/<cs>/<field> in the arena: fixture data sits at any byte offset, the
 * code reads it as floats, ints and aligned blocks. *numel gets its element count. */
static void *fx_copy(lq_ctx *ctx, const lq_fixture *fx, const char *cs, const char *field, int64_t *numel) {
    const lq_fx_tensor *r = lq_fixture_find(fx, "qmatmul/%s/%s", cs, field);
    if (!r) fail_msg("fixture has no record qmatmul/%s/%s", cs, field);
    size_t bytes = (size_t)r->numel * (r->dtype == 2 ? 1 : 4);
    lq_tensor *t = lq_new(ctx, LQ_DTYPE_U8, 1, (int64_t[]){(int64_t)bytes});
    assert_non_null(t);
    memcpy(t->data, r->data, bytes);
    if (numel) *numel = r->numel;
    return t->data;
}

/* The fixture's codes as a loquat tensor (over a copy of the fixture's bytes) with its quant state: bnb's
 * absmax or its double quantization (absmax_q, absmax2, code2, offset), or the int8 scales. The
 * out and grad_x there come from torch's matmul, bitsandbytes' matmul_4bit and torch on gguf's
 * dequantization; loquat's sgemm sums in another order, so allow 1e-5 of the largest value. */
static void test_fixture_parity(void **state) {
    (void)state;
    char path[512];
    lq_fixture *fx = lq_fixture_load(lq_fixture_path("qmatmul.lqfx", path, sizeof path));
    lq_ctx *ctx = lq_test_ctx(2);
    int checked = 0;
    char names[256] = "";
    double worst_out = 0, worst_gx = 0;
    for (size_t c = 0; c < sizeof fixture_cases / sizeof fixture_cases[0]; c++) {
        const char *cs = fixture_cases[c].name;
        lq_dtype t = fixture_cases[c].t;
        const lq_dtype_traits *tr = lq_dtype_info(t);
        if (!tr) {
            printf("  qmatmul fixture %s: no %s row in this build's traits table yet: not checked\n", cs, cs);
            continue;
        }
        const int32_t *shape = fx_copy(ctx, fx, cs, "shape", NULL);
        int64_t N = shape[0], K = shape[1], wbytes, n_x, n_out, n_gx;
        void *wb = fx_copy(ctx, fx, cs, "w", &wbytes);
        const lq_fx_tensor *fxx = lq_fixture_find(fx, "qmatmul/%s/x", cs);
        assert_non_null(fxx);
        lq_tensor w;
        lq_err err = {0};
        if (lq_tensor_init(&w, t, 2, (int64_t[]){N, K}, wb, &err) != LQ_OK) fail_msg("%s: %s", cs, err.msg);
        assert_int_equal((int64_t)lq_nbytes(&w), wbytes);
        lq_qstate qs;
        memset(&qs, 0, sizeof qs);
        if (tr->needs_qstate) {
            const float *st = fx_copy(ctx, fx, cs, "state", NULL);
            qs.block = (int64_t)st[0];
            qs.bits = 8;
            if (lq_fixture_find(fx, "qmatmul/%s/absmax", cs)) {
                qs.absmax = fx_copy(ctx, fx, cs, "absmax", NULL);
            } else {
                qs.absmax_q = fx_copy(ctx, fx, cs, "absmax_q", NULL);
                qs.absmax2 = fx_copy(ctx, fx, cs, "absmax2", NULL);
                qs.code2 = fx_copy(ctx, fx, cs, "code2", NULL);
                qs.block2 = (int64_t)st[1];
                qs.offset = st[2];
            }
            w.qs = &qs;
        }
        lq_tensor *x = lq_new_leaf(ctx, fxx->ndim, fxx->shape, true);
        const float *xs = fx_copy(ctx, fx, cs, "x", &n_x);
        assert_int_equal(lq_numel(x), n_x);
        memcpy(x->data, xs, (size_t)n_x * sizeof(float));
        lq_tensor *y = lq_qmatmul(ctx, x, &w);
        assert_ctx_ok(ctx);
        const float *out = fx_copy(ctx, fx, cs, "out", &n_out), *gx = fx_copy(ctx, fx, cs, "grad_x", &n_gx);
        assert_int_equal(lq_numel(y), n_out);
        assert_int_equal(lq_numel(x), n_gx);
        lq_tensor *G = lq_new(ctx, LQ_DTYPE_F32, y->ndim, y->ne);
        memcpy(G->data, fx_copy(ctx, fx, cs, "R", NULL), (size_t)n_out * sizeof(float));
        assert_int_equal(lq_backward_from(ctx, y, G), LQ_OK);
        char msg[96];
        snprintf(msg, sizeof msg, "qmatmul %s: out vs reference", cs);
        assert_allclose(y->data, out, n_out, 1e-5, 1e-5 * max_abs(out, n_out), msg);
        snprintf(msg, sizeof msg, "qmatmul %s: grad_x vs reference", cs);
        assert_allclose(x->grad->data, gx, n_gx, 1e-5, 1e-5 * max_abs(gx, n_gx), msg);
        worst_out = fmax(worst_out, rel_diff(y->data, out, n_out));
        worst_gx = fmax(worst_gx, rel_diff(x->grad->data, gx, n_gx));
        checked++;
        snprintf(names + strlen(names), sizeof names - strlen(names), " %s", cs);
        lq_ctx_step_reset(ctx);
    }
    printf("  qmatmul fixtures checked: %d cases:%s; worst |diff| / max |ref|: out %.3g, grad_x %.3g\n", checked,
           names, worst_out, worst_gx);
    assert_true(checked >= 2);
    lq_ctx_free(ctx);
    lq_fixture_free(fx);
}

/* lq_cuda_dequant's argument checks (run before anything touches a device), and its answer in
 * a build without CUDA. Its kernels are compared with the CPU on a GPU by the CUDA suite. */
static void test_cuda_dequant_wrapper(void **state) {
    (void)state;
    lq_err err = {0};
    float dst[64];
    uint8_t src[64] = {0};
    lq_qstate qs = {.block = 64};
    if (!lq_cuda_dequant_supported(LQ_DTYPE_NF4)) { /* built without CUDA */
        assert_int_equal(lq_cuda_dequant(LQ_DTYPE_NF4, src, dst, 64, 0, &qs, NULL, &err), LQ_ERR_UNSUPPORTED);
        assert_non_null(strstr(err.msg, "without CUDA"));
        return;
    }
    for (int t = 0; t < LQ_DTYPE_COUNT; t++) /* every format with a to_f32 except i32 / u8 */
        assert_int_equal(lq_cuda_dequant_supported((lq_dtype)t), t != LQ_DTYPE_I32 && t != LQ_DTYPE_U8);
    assert_int_equal(lq_cuda_dequant(LQ_DTYPE_Q4_0, src, dst, 48, 0, NULL, NULL, &err), LQ_ERR_ARG);
    assert_non_null(strstr(err.msg, "multiples of 32"));
    lq_err_clear(&err);
    assert_int_equal(lq_cuda_dequant(LQ_DTYPE_Q4_0, src + 1, dst, 32, 0, NULL, NULL, &err), LQ_ERR_ARG);
    assert_non_null(strstr(err.msg, "aligned"));
    lq_err_clear(&err);
    assert_int_equal(lq_cuda_dequant(LQ_DTYPE_NF4, src, dst, 64, 0, NULL, NULL, &err), LQ_ERR_ARG);
    assert_non_null(strstr(err.msg, "quant state"));
    lq_err_clear(&err);
    assert_int_equal(lq_cuda_dequant(LQ_DTYPE_NF4, src, dst, 64, 0, &qs, NULL, &err), LQ_ERR_ARG);
    assert_non_null(strstr(err.msg, "neither absmax"));
    lq_err_clear(&err);
    assert_int_equal(lq_cuda_dequant(LQ_DTYPE_I32, src, dst, 4, 0, NULL, NULL, &err), LQ_ERR_UNSUPPORTED);
    lq_err_clear(&err);
    assert_int_equal(lq_cuda_dequant(LQ_DTYPE_Q8_0, NULL, dst, 32, 0, NULL, NULL, &err), LQ_ERR_ARG);
}

/* The op's gradcheck case (random dtype, shapes and tile) on more seeds than test_gradcheck. */
static void test_gradcheck_cases(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(2);
    int op = lq_op_find("qmatmul");
    assert_true(op >= 0);
    double worst = 0;
    for (uint64_t seed = 1; seed <= 16; seed++) {
        lq_gc_result r;
        char desc[128];
        if (lq_gradcheck_op(ctx, op, seed, &r, desc, sizeof desc) != LQ_OK)
            fail_msg("gradcheck seed %llu (%s): %s", (unsigned long long)seed, desc, lq_ctx_error(ctx)->msg);
        if (r.error > 1e-2) fail_msg("gradcheck seed %llu (%s): error %.3e", (unsigned long long)seed, desc, r.error);
        worst = fmax(worst, r.error);
    }
    printf("  qmatmul gradcheck: 16 cases, worst error %.3e\n", worst);
    lq_ctx_free(ctx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_tiles),          cmocka_unit_test(test_against_dequant_matmul),
        cmocka_unit_test(test_against_double_loop),
        cmocka_unit_test(test_threads_identical),      cmocka_unit_test(test_scratch_released),
        cmocka_unit_test(test_strided_x_and_no_grad),  cmocka_unit_test(test_errors),
        cmocka_unit_test(test_fixture_parity),         cmocka_unit_test(test_cuda_dequant_wrapper),
        cmocka_unit_test(test_gradcheck_cases),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
