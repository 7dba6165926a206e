/* tests/test_ops_norm.c: rmsnorm, layernorm, softmax, log_softmax, cross_entropy and dropout against
 * straightforward double-precision references written here, plus their error paths and
 * thread-count independence. (Gradients are checked by tests/test_gradcheck.c.) */
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static lq_tensor *leaf(lq_ctx *ctx, int ndim, const int64_t *shape, bool rg, lq_rng *rng, float std, float shift) {
    lq_tensor *t = lq_new_leaf(ctx, ndim, shape, rg);
    assert_non_null(t);
    lq_fill_normal(t, rng, std);
    float *d = t->data;
    for (int64_t i = 0; i < lq_numel(t); i++) d[i] += shift;
    return t;
}

static float *fbuf(int64_t n) {
    float *p = calloc((size_t)(n > 0 ? n : 1), sizeof *p);
    assert_non_null(p);
    return p;
}

/* --- rmsnorm ------------------------------------------------------------------------------- */

static void ref_rmsnorm(const float *x, const float *w, int64_t R, int64_t C, double eps, float *y) {
    for (int64_t r = 0; r < R; r++) {
        double ss = 0;
        for (int64_t j = 0; j < C; j++) ss += (double)x[r * C + j] * x[r * C + j];
        double inv = 1.0 / sqrt(ss / C + eps);
        for (int64_t j = 0; j < C; j++) y[r * C + j] = (float)(x[r * C + j] * inv * (w ? w[j] : 1.0));
    }
}

static void test_rmsnorm_forward(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(2);
    lq_rng rng;
    lq_rng_seed(&rng, 11);
    int64_t shape[3] = {3, 5, 16};
    lq_tensor *x = leaf(ctx, 3, shape, false, &rng, 1.5f, 0.3f);
    lq_tensor *w = leaf(ctx, 1, (int64_t[]){16}, false, &rng, 0.5f, 1.0f);
    float *want = fbuf(lq_numel(x));
    for (int with_w = 0; with_w < 2; with_w++) {
        lq_tensor *y = lq_rmsnorm(ctx, x, with_w ? w : NULL, 1e-6f);
        assert_ctx_ok(ctx);
        assert_int_equal(y->ndim, 3);
        assert_true(lq_same_shape(x, y));
        ref_rmsnorm(x->data, with_w ? w->data : NULL, 15, 16, 1e-6, want);
        assert_allclose(y->data, want, lq_numel(x), 1e-5, 1e-6, with_w ? "rmsnorm with weight" : "rmsnorm");
    }
    /* eps matters when the row is small */
    float *xd = x->data;
    for (int64_t j = 0; j < 16; j++) xd[j] = 1e-3f * (float)(j - 8);
    lq_tensor *y = lq_rmsnorm(ctx, x, w, 1e-5f);
    assert_ctx_ok(ctx);
    ref_rmsnorm(x->data, w->data, 15, 16, 1e-5, want);
    assert_allclose(y->data, want, lq_numel(x), 1e-5, 1e-6, "rmsnorm eps");
    /* weight of the wrong length */
    lq_tensor *bad = leaf(ctx, 1, (int64_t[]){15}, false, &rng, 1.0f, 0.0f);
    assert_null(lq_rmsnorm(ctx, x, bad, 1e-5f));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_SHAPE);
    assert_non_null(strstr(lq_ctx_error(ctx)->msg, "(3, 5, 16)"));
    assert_non_null(strstr(lq_ctx_error(ctx)->msg, "(15,)"));
    free(want);
    lq_ctx_free(ctx);
}

/* --- layernorm ----------------------------------------------------------------------------- */

static void ref_layernorm(const float *x, const float *w, const float *b, int64_t R, int64_t C, double eps, float *y) {
    for (int64_t r = 0; r < R; r++) {
        double mu = 0, var = 0;
        for (int64_t j = 0; j < C; j++) mu += x[r * C + j];
        mu /= C;
        for (int64_t j = 0; j < C; j++) var += (x[r * C + j] - mu) * (x[r * C + j] - mu);
        var /= C; /* biased, as torch.nn.functional.layer_norm */
        for (int64_t j = 0; j < C; j++) {
            double v = (x[r * C + j] - mu) / sqrt(var + eps);
            if (w) v *= w[j];
            if (b) v += b[j];
            y[r * C + j] = (float)v;
        }
    }
}

static void test_layernorm_forward(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(2);
    lq_rng rng;
    lq_rng_seed(&rng, 12);
    int64_t shape[3] = {4, 7, 12};
    lq_tensor *x = leaf(ctx, 3, shape, false, &rng, 3.0f, 5.0f); /* an offset: the mean must go */
    lq_tensor *w = leaf(ctx, 1, (int64_t[]){12}, false, &rng, 0.5f, 1.0f);
    lq_tensor *b = leaf(ctx, 1, (int64_t[]){12}, false, &rng, 1.0f, 0.0f);
    float *want = fbuf(lq_numel(x));
    const char *names[4] = {"layernorm", "layernorm weight", "layernorm bias", "layernorm weight bias"};
    for (int which = 0; which < 4; which++) {
        lq_tensor *wt = (which & 1) ? w : NULL, *bt = (which & 2) ? b : NULL;
        lq_tensor *y = lq_layernorm(ctx, x, wt, bt, 1e-5f);
        assert_ctx_ok(ctx);
        assert_true(lq_same_shape(x, y));
        ref_layernorm(x->data, wt ? wt->data : NULL, bt ? bt->data : NULL, 28, 12, 1e-5, want);
        assert_allclose(y->data, want, lq_numel(x), 1e-5, 1e-5, names[which]);
    }
    /* a constant row normalises to zeros (then the bias), not NaN */
    float *xd = x->data;
    for (int64_t j = 0; j < 12; j++) xd[j] = 2.5f;
    lq_tensor *y = lq_layernorm(ctx, x, w, b, 1e-5f);
    assert_ctx_ok(ctx);
    ref_layernorm(x->data, w->data, b->data, 28, 12, 1e-5, want);
    assert_allclose(y->data, want, lq_numel(x), 1e-5, 1e-5, "layernorm constant row");
    lq_tensor *bad = leaf(ctx, 2, (int64_t[]){1, 12}, false, &rng, 1.0f, 0.0f);
    assert_null(lq_layernorm(ctx, x, w, bad, 1e-5f));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_SHAPE);
    free(want);
    lq_ctx_free(ctx);
}

/* --- softmax and log_softmax --------------------------------------------------------------- */

/* Reference over axis a of a contiguous 3D tensor (s0, s1, s2), by explicit index arithmetic. */
static void ref_softmax3(const float *x, const int64_t *s, int a, bool log_out, float *y) {
    int64_t st[3] = {s[1] * s[2], s[2], 1};
    for (int64_t i0 = 0; i0 < (a == 0 ? 1 : s[0]); i0++)
        for (int64_t i1 = 0; i1 < (a == 1 ? 1 : s[1]); i1++)
            for (int64_t i2 = 0; i2 < (a == 2 ? 1 : s[2]); i2++) {
                int64_t base = i0 * st[0] + i1 * st[1] + i2 * st[2];
                double m = -INFINITY, z = 0;
                for (int64_t k = 0; k < s[a]; k++) m = fmax(m, x[base + k * st[a]]);
                for (int64_t k = 0; k < s[a]; k++) z += exp(x[base + k * st[a]] - m);
                for (int64_t k = 0; k < s[a]; k++) {
                    double v = x[base + k * st[a]] - m;
                    y[base + k * st[a]] = (float)(log_out ? v - log(z) : exp(v) / z);
                }
            }
}

static void test_softmax_axes(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(2);
    lq_rng rng;
    lq_rng_seed(&rng, 13);
    int64_t s[3] = {3, 4, 5};
    lq_tensor *x = leaf(ctx, 3, s, false, &rng, 2.0f, 0.0f);
    float *want = fbuf(60), *sm = fbuf(60);
    int axes[6] = {0, 1, 2, -1, -2, -3};
    for (int ai = 0; ai < 6; ai++) {
        int a = axes[ai] < 0 ? axes[ai] + 3 : axes[ai];
        char what[64];
        lq_tensor *y = lq_softmax(ctx, x, axes[ai]);
        lq_tensor *ly = lq_log_softmax(ctx, x, axes[ai]);
        assert_ctx_ok(ctx);
        assert_true(lq_same_shape(x, y) && lq_same_shape(x, ly));
        ref_softmax3(x->data, s, a, false, want);
        snprintf(what, sizeof what, "softmax axis %d", axes[ai]);
        assert_allclose(y->data, want, 60, 1e-5, 1e-7, what);
        ref_softmax3(x->data, s, a, true, want);
        snprintf(what, sizeof what, "log_softmax axis %d", axes[ai]);
        assert_allclose(ly->data, want, 60, 1e-5, 1e-6, what);
        /* every row along the axis sums to 1: the sum over the axis of a ones tensor is 1 everywhere */
        memcpy(sm, y->data, 60 * sizeof(float));
        lq_tensor *rs = lq_sum(ctx, y, axes[ai], false);
        assert_ctx_ok(ctx);
        float ones[20];
        for (int i = 0; i < 20; i++) ones[i] = 1.0f;
        assert_int_equal(lq_numel(rs), 60 / s[a]);
        snprintf(what, sizeof what, "softmax rows along axis %d sum to 1", axes[ai]);
        assert_allclose(rs->data, ones, lq_numel(rs), 0, 1e-6, what);
        /* exp(log_softmax) is softmax */
        for (int i = 0; i < 60; i++) want[i] = expf(((float *)ly->data)[i]);
        assert_allclose(want, sm, 60, 1e-5, 1e-7, "exp(log_softmax) = softmax");
    }
    assert_null(lq_softmax(ctx, x, 3));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_ARG);
    lq_ctx_clear_error(ctx);
    assert_null(lq_log_softmax(ctx, x, -4));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_ARG);
    free(want);
    free(sm);
    lq_ctx_free(ctx);
}

static void test_softmax_stability(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_rng rng;
    lq_rng_seed(&rng, 14);
    int64_t s[3] = {2, 3, 8};
    float *want = fbuf(48);
    for (int sign = -1; sign <= 1; sign += 2) {
        lq_tensor *x = leaf(ctx, 3, s, false, &rng, 0.5f, 1000.0f * (float)sign);
        for (int a = 0; a < 3; a++) {
            lq_tensor *y = lq_softmax(ctx, x, a), *ly = lq_log_softmax(ctx, x, a);
            assert_ctx_ok(ctx);
            for (int i = 0; i < 48; i++) {
                assert_true(isfinite(((float *)y->data)[i]));
                assert_true(isfinite(((float *)ly->data)[i]));
            }
            /* the same values as without the offset (up to the offset's float rounding) */
            ref_softmax3(x->data, s, a, false, want);
            assert_allclose(y->data, want, 48, 1e-5, 1e-7, "softmax of 1000 + noise");
            ref_softmax3(x->data, s, a, true, want);
            assert_allclose(ly->data, want, 48, 1e-5, 1e-5, "log_softmax of 1000 + noise");
        }
    }
    /* one huge logit: softmax one-hot, log_softmax exactly -gap elsewhere */
    lq_tensor *x = lq_new_leaf(ctx, 1, (int64_t[]){4}, false);
    float *xd = x->data;
    xd[0] = 0.0f, xd[1] = 1e4f, xd[2] = -1e4f, xd[3] = 0.0f;
    lq_tensor *y = lq_softmax(ctx, x, 0), *ly = lq_log_softmax(ctx, x, 0);
    assert_ctx_ok(ctx);
    float oh[4] = {0, 1, 0, 0}, lw[4] = {-1e4f, 0, -2e4f, -1e4f};
    assert_allclose(y->data, oh, 4, 0, 1e-30, "softmax one-hot");
    assert_allclose(ly->data, lw, 4, 1e-6, 0, "log_softmax large gap");
    free(want);
    lq_ctx_free(ctx);
}

/* --- cross-entropy ------------------------------------------------------------------------- */

/* Loss and d(loss)/d(logits) in double, straight from the definition. */
static double ref_ce(const float *x, const int32_t *t, int64_t N, int64_t V, int ignore, lq_reduction red,
                     float *grad) {
    double sum = 0;
    int64_t count = 0;
    for (int64_t r = 0; r < N; r++)
        if (t[r] != ignore) count++;
    double c = red == LQ_REDUCE_SUM ? 1.0 : (count ? 1.0 / (double)count : 0.0);
    for (int64_t r = 0; r < N; r++) {
        for (int64_t k = 0; k < V; k++) grad[r * V + k] = 0;
        if (t[r] == ignore) continue;
        double m = -INFINITY, z = 0;
        for (int64_t k = 0; k < V; k++) m = fmax(m, x[r * V + k]);
        for (int64_t k = 0; k < V; k++) z += exp(x[r * V + k] - m);
        sum += m + log(z) - x[r * V + t[r]];
        for (int64_t k = 0; k < V; k++)
            grad[r * V + k] = (float)(c * (exp(x[r * V + k] - m) / z - (k == t[r] ? 1.0 : 0.0)));
    }
    if (red == LQ_REDUCE_SUM) return sum;
    return count ? sum / (double)count : 0.0;
}

static lq_tensor *ids(lq_ctx *ctx, int ndim, const int64_t *shape, const int32_t *v) {
    lq_tensor *t = lq_new(ctx, LQ_DTYPE_I32, ndim, shape);
    assert_non_null(t);
    memcpy(t->data, v, (size_t)lq_numel(t) * sizeof(int32_t));
    return t;
}

static void test_cross_entropy(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(2);
    lq_rng rng;
    lq_rng_seed(&rng, 15);
    const int64_t N = 6, V = 5;
    int32_t tv[6] = {3, LQ_IGNORE_INDEX, 0, 4, LQ_IGNORE_INDEX, 1};
    float *gref = fbuf(N * V);
    for (int red = 0; red < 2; red++) {
        lq_tensor *x = leaf(ctx, 2, (int64_t[]){N, V}, true, &rng, 2.0f, 0.0f);
        lq_tensor *t = ids(ctx, 1, (int64_t[]){N}, tv);
        lq_tensor *loss = lq_cross_entropy(ctx, x, t, LQ_IGNORE_INDEX, (lq_reduction)red);
        assert_ctx_ok(ctx);
        assert_int_equal(loss->ndim, 0);
        float want = (float)ref_ce(x->data, tv, N, V, LQ_IGNORE_INDEX, (lq_reduction)red, gref);
        assert_allclose(loss->data, &want, 1, 1e-6, 1e-6, red ? "cross_entropy sum" : "cross_entropy mean");
        assert_int_equal(lq_backward(ctx, loss), LQ_OK);
        assert_non_null(x->grad);
        assert_allclose(x->grad->data, gref, N * V, 1e-5, 1e-7, "cross_entropy dlogits");
        /* ignored rows get exactly no gradient */
        for (int64_t k = 0; k < V; k++) assert_true(((float *)x->grad->data)[1 * V + k] == 0.0f);
    }
    /* SUM is MEAN times the count of counted rows */
    lq_tensor *x = leaf(ctx, 2, (int64_t[]){N, V}, false, &rng, 2.0f, 0.0f);
    lq_tensor *t = ids(ctx, 1, (int64_t[]){N}, tv);
    float mean = *(float *)lq_cross_entropy(ctx, x, t, LQ_IGNORE_INDEX, LQ_REDUCE_MEAN)->data;
    float sum = *(float *)lq_cross_entropy(ctx, x, t, LQ_IGNORE_INDEX, LQ_REDUCE_SUM)->data;
    float mean4 = 4.0f * mean;
    assert_allclose(&sum, &mean4, 1, 1e-6, 0, "sum = 4 * mean");
    /* an ignore index that is a real class */
    int32_t tc[6] = {2, 2, 0, 4, 1, 2};
    lq_tensor *t2 = ids(ctx, 1, (int64_t[]){N}, tc);
    float got = *(float *)lq_cross_entropy(ctx, x, t2, 2, LQ_REDUCE_MEAN)->data;
    float want = (float)ref_ce(x->data, tc, N, V, 2, LQ_REDUCE_MEAN, gref);
    assert_ctx_ok(ctx);
    assert_allclose(&got, &want, 1, 1e-6, 1e-6, "cross_entropy ignore_index = 2");
    free(gref);
    lq_ctx_free(ctx);
}

static void test_cross_entropy_btv(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(2);
    lq_rng rng;
    lq_rng_seed(&rng, 16);
    const int64_t B = 2, T = 3, V = 7;
    int32_t tv[6] = {6, 0, LQ_IGNORE_INDEX, 3, 3, 5};
    float *gref = fbuf(B * T * V);
    lq_tensor *x = leaf(ctx, 3, (int64_t[]){B, T, V}, true, &rng, 3.0f, 0.0f);
    lq_tensor *t = ids(ctx, 2, (int64_t[]){B, T}, tv);
    lq_tensor *loss = lq_cross_entropy(ctx, x, t, LQ_IGNORE_INDEX, LQ_REDUCE_MEAN);
    assert_ctx_ok(ctx);
    assert_int_equal(loss->ndim, 0);
    float want = (float)ref_ce(x->data, tv, B * T, V, LQ_IGNORE_INDEX, LQ_REDUCE_MEAN, gref);
    assert_allclose(loss->data, &want, 1, 1e-6, 1e-6, "cross_entropy (B, T, V)");
    assert_int_equal(lq_backward(ctx, loss), LQ_OK);
    assert_allclose(x->grad->data, gref, B * T * V, 1e-5, 1e-7, "cross_entropy (B, T, V) dlogits");
    /* strided logits: a transposed view of (B, V, T) gives the same loss */
    lq_tensor *xt = lq_new_leaf(ctx, 3, (int64_t[]){B, V, T}, false);
    for (int64_t b = 0; b < B; b++)
        for (int64_t v = 0; v < V; v++)
            for (int64_t s = 0; s < T; s++) *lq_f32_at(xt, b, v, s, 0) = *lq_f32_at(x, b, s, v, 0);
    lq_tensor *l2 = lq_cross_entropy(ctx, lq_transpose(ctx, xt, 1, 2), t, LQ_IGNORE_INDEX, LQ_REDUCE_MEAN);
    assert_ctx_ok(ctx);
    assert_allclose(l2->data, &want, 1, 1e-6, 1e-6, "cross_entropy of a transposed view");
    free(gref);
    lq_ctx_free(ctx);
}

static void test_cross_entropy_all_ignored(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_rng rng;
    lq_rng_seed(&rng, 17);
    int32_t tv[4] = {LQ_IGNORE_INDEX, LQ_IGNORE_INDEX, LQ_IGNORE_INDEX, LQ_IGNORE_INDEX};
    for (int red = 0; red < 2; red++) {
        lq_tensor *x = leaf(ctx, 2, (int64_t[]){4, 3}, true, &rng, 1.0f, 0.0f);
        lq_tensor *t = ids(ctx, 1, (int64_t[]){4}, tv);
        lq_tensor *loss = lq_cross_entropy(ctx, x, t, LQ_IGNORE_INDEX, (lq_reduction)red);
        assert_ctx_ok(ctx);
        assert_true(*(float *)loss->data == 0.0f);
        assert_int_equal(lq_backward(ctx, loss), LQ_OK);
        if (x->grad)
            for (int i = 0; i < 12; i++) assert_true(((float *)x->grad->data)[i] == 0.0f);
    }
    lq_ctx_free(ctx);
}

static void test_cross_entropy_errors(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_rng rng;
    lq_rng_seed(&rng, 18);
    lq_tensor *x = leaf(ctx, 2, (int64_t[]){4, 5}, false, &rng, 1.0f, 0.0f);
    int32_t bad[4] = {1, 7, 2, 0};
    assert_null(lq_cross_entropy(ctx, x, ids(ctx, 1, (int64_t[]){4}, bad), LQ_IGNORE_INDEX, LQ_REDUCE_MEAN));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_ARG);
    const char *msg = lq_ctx_error(ctx)->msg;
    printf("out-of-range target: %s\n", msg);
    assert_non_null(strstr(msg, "target 7"));
    assert_non_null(strstr(msg, "[1]"));
    assert_non_null(strstr(msg, "[0, 5)"));
    lq_ctx_clear_error(ctx);

    lq_tensor *x3 = leaf(ctx, 3, (int64_t[]){2, 3, 5}, false, &rng, 1.0f, 0.0f);
    int32_t neg[6] = {0, 1, 2, 3, 4, -1};
    assert_null(lq_cross_entropy(ctx, x3, ids(ctx, 2, (int64_t[]){2, 3}, neg), LQ_IGNORE_INDEX, LQ_REDUCE_SUM));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_ARG);
    msg = lq_ctx_error(ctx)->msg;
    assert_non_null(strstr(msg, "target -1"));
    assert_non_null(strstr(msg, "[1, 2]"));
    lq_ctx_clear_error(ctx);

    int32_t ok[6] = {0, 1, 2, 3, 4, 0};
    assert_null(lq_cross_entropy(ctx, x3, ids(ctx, 2, (int64_t[]){3, 2}, ok), LQ_IGNORE_INDEX, LQ_REDUCE_SUM));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_SHAPE);
    msg = lq_ctx_error(ctx)->msg;
    printf("shape mismatch: %s\n", msg);
    assert_non_null(strstr(msg, "(2, 3, 5)"));
    assert_non_null(strstr(msg, "(3, 2)"));
    lq_ctx_clear_error(ctx);

    assert_null(lq_cross_entropy(ctx, x, ids(ctx, 2, (int64_t[]){4, 1}, bad), LQ_IGNORE_INDEX, LQ_REDUCE_SUM));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_SHAPE);
    lq_ctx_clear_error(ctx);

    assert_null(lq_cross_entropy(ctx, x, x, LQ_IGNORE_INDEX, LQ_REDUCE_SUM)); /* f32 targets */
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_ARG);
    lq_ctx_clear_error(ctx);
    lq_ctx_free(ctx);
}

/* --- dropout ------------------------------------------------------------------------------- */

static void test_dropout_identity_and_args(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_rng rng;
    lq_rng_seed(&rng, 19);
    lq_tensor *x = leaf(ctx, 2, (int64_t[]){8, 9}, true, &rng, 1.0f, 0.0f);
    assert_ptr_equal(lq_dropout(ctx, x, 0.5f), x); /* not training */
    lq_ctx_set_training(ctx, true);
    assert_ptr_equal(lq_dropout(ctx, x, 0.0f), x);
    float bad[3] = {-0.1f, 1.5f, NAN};
    for (int i = 0; i < 3; i++) {
        assert_null(lq_dropout(ctx, x, bad[i]));
        assert_int_equal(lq_ctx_status(ctx), LQ_ERR_ARG);
        lq_ctx_clear_error(ctx);
    }
    lq_tensor *z = lq_dropout(ctx, x, 1.0f);
    assert_ctx_ok(ctx);
    assert_ptr_not_equal(z, x);
    for (int64_t i = 0; i < lq_numel(z); i++) assert_true(((float *)z->data)[i] == 0.0f);
    lq_ctx_free(ctx);
}

#define DN 100000

/* Dropout of x with p on a fresh context of n_threads at seed; copies the output to y. */
static void dropout_run(int n_threads, uint64_t seed, const float *x, float p, float *y, float *gx) {
    lq_ctx *ctx = lq_test_ctx(n_threads);
    lq_ctx_set_training(ctx, true);
    lq_ctx_set_seed(ctx, seed);
    lq_tensor *xt = lq_new_leaf(ctx, 2, (int64_t[]){100, DN / 100}, gx != NULL);
    memcpy(xt->data, x, DN * sizeof(float));
    lq_tensor *out = lq_dropout(ctx, xt, p);
    assert_ctx_ok(ctx);
    memcpy(y, out->data, DN * sizeof(float));
    if (gx) {
        lq_tensor *g = lq_new(ctx, LQ_DTYPE_F32, out->ndim, out->ne);
        for (int64_t i = 0; i < DN; i++) ((float *)g->data)[i] = 1.0f;
        assert_int_equal(lq_backward_from(ctx, out, g), LQ_OK);
        memcpy(gx, xt->grad->data, DN * sizeof(float));
    }
    lq_ctx_free(ctx);
}

static void test_dropout_mask(void **state) {
    (void)state;
    const float p = 0.3f;
    float *x = fbuf(DN), *y1 = fbuf(DN), *y2 = fbuf(DN), *y3 = fbuf(DN), *g = fbuf(DN);
    lq_rng rng;
    lq_rng_seed(&rng, 20);
    for (int64_t i = 0; i < DN; i++) x[i] = 0.5f + lq_rng_uniform(&rng); /* never 0: a 0 output means dropped */

    dropout_run(1, 42, x, p, y1, g);
    int64_t kept = 0;
    for (int64_t i = 0; i < DN; i++) {
        if (y1[i] != 0.0f) {
            kept++;
            assert_true(y1[i] == x[i] / (1.0f - p)); /* exactly x / (1 - p) */
            assert_true(g[i] == 1.0f / (1.0f - p)); /* backward regenerates the same mask */
        } else {
            assert_true(g[i] == 0.0f);
        }
    }
    double mu = DN * (1.0 - p), sigma = sqrt(DN * p * (1.0 - p));
    printf("dropout p %.2f: kept %lld of %d (expected %.0f +- %.0f)\n", (double)p, (long long)kept, DN, mu, sigma);
    assert_true(fabs((double)kept - mu) <= 3 * sigma);

    dropout_run(2, 42, x, p, y2, NULL); /* same seed, other thread count: bit-identical */
    assert_memory_equal(y1, y2, DN * sizeof(float));
    dropout_run(1, 43, x, p, y3, NULL); /* another seed: another mask */
    int64_t differ = 0;
    for (int64_t i = 0; i < DN; i++) differ += (y1[i] == 0.0f) != (y3[i] == 0.0f);
    assert_true(differ > DN / 10); /* about 2 p (1 - p) = 42% of positions */

    /* consecutive calls take new streams; resetting the seed replays them */
    lq_ctx *ctx = lq_test_ctx(1);
    lq_ctx_set_training(ctx, true);
    lq_ctx_set_seed(ctx, 42);
    lq_tensor *xt = lq_new_leaf(ctx, 1, (int64_t[]){1000}, false);
    memcpy(xt->data, x, 1000 * sizeof(float));
    lq_tensor *a = lq_dropout(ctx, xt, p), *b = lq_dropout(ctx, xt, p);
    lq_ctx_set_seed(ctx, 42);
    lq_tensor *a2 = lq_dropout(ctx, xt, p);
    assert_ctx_ok(ctx);
    assert_memory_equal(a->data, y1, 1000 * sizeof(float)); /* the mask is per element index, any shape */
    assert_memory_equal(a->data, a2->data, 1000 * sizeof(float));
    assert_memory_not_equal(a->data, b->data, 1000 * sizeof(float));
    lq_ctx_free(ctx);
    free(x);
    free(y1);
    free(y2);
    free(y3);
    free(g);
}

/* --- thread-count independence of the row ops and their parameter grads ------------------- */

typedef struct norm_out {
    float *ln, *ln_gx, *ln_gw, *ln_gb, *rms_gx, *rms_gw, *ce_gx;
    float ce;
} norm_out;

#define TR 64
#define TC 520 /* not a multiple of the column block, and TR * TC above the threading threshold */

static void norm_run(int n_threads, norm_out *o) {
    lq_ctx *ctx = lq_test_ctx(n_threads);
    lq_rng rng;
    lq_rng_seed(&rng, 21);
    lq_tensor *x = leaf(ctx, 2, (int64_t[]){TR, TC}, true, &rng, 1.0f, 0.5f);
    lq_tensor *w = leaf(ctx, 1, (int64_t[]){TC}, true, &rng, 0.2f, 1.0f);
    lq_tensor *b = leaf(ctx, 1, (int64_t[]){TC}, true, &rng, 0.2f, 0.0f);
    lq_tensor *w2 = leaf(ctx, 1, (int64_t[]){TC}, true, &rng, 0.2f, 1.0f);
    lq_tensor *ln = lq_layernorm(ctx, x, w, b, 1e-5f);
    lq_tensor *h = lq_rmsnorm(ctx, ln, w2, 1e-6f);
    int32_t *tv = malloc(TR * sizeof *tv);
    for (int i = 0; i < TR; i++) tv[i] = i % 5 == 0 ? LQ_IGNORE_INDEX : (int32_t)((i * 37) % TC);
    lq_tensor *t = ids(ctx, 1, (int64_t[]){TR}, tv);
    free(tv);
    lq_tensor *loss = lq_cross_entropy(ctx, h, t, LQ_IGNORE_INDEX, LQ_REDUCE_MEAN);
    assert_ctx_ok(ctx);
    o->ce = *(float *)loss->data;
    memcpy(o->ln, ln->data, TR * TC * sizeof(float));
    assert_int_equal(lq_backward(ctx, loss), LQ_OK);
    memcpy(o->ln_gx, x->grad->data, TR * TC * sizeof(float));
    memcpy(o->ln_gw, w->grad->data, TC * sizeof(float));
    memcpy(o->ln_gb, b->grad->data, TC * sizeof(float));
    memcpy(o->rms_gw, w2->grad->data, TC * sizeof(float));
    memcpy(o->rms_gx, ln->grad->data, TR * TC * sizeof(float));
    memcpy(o->ce_gx, h->grad->data, TR * TC * sizeof(float));
    lq_ctx_free(ctx);
}

static void test_threads_identical(void **state) {
    (void)state;
    norm_out o[2];
    for (int k = 0; k < 2; k++) {
        o[k].ln = fbuf(TR * TC), o[k].ln_gx = fbuf(TR * TC), o[k].rms_gx = fbuf(TR * TC);
        o[k].ce_gx = fbuf(TR * TC), o[k].ln_gw = fbuf(TC), o[k].ln_gb = fbuf(TC), o[k].rms_gw = fbuf(TC);
        norm_run(k + 1, &o[k]);
    }
    assert_true(o[0].ce == o[1].ce);
    assert_memory_equal(o[0].ln, o[1].ln, TR * TC * sizeof(float));
    assert_memory_equal(o[0].ln_gx, o[1].ln_gx, TR * TC * sizeof(float));
    assert_memory_equal(o[0].rms_gx, o[1].rms_gx, TR * TC * sizeof(float));
    assert_memory_equal(o[0].ce_gx, o[1].ce_gx, TR * TC * sizeof(float));
    assert_memory_equal(o[0].ln_gw, o[1].ln_gw, TC * sizeof(float));
    assert_memory_equal(o[0].ln_gb, o[1].ln_gb, TC * sizeof(float));
    assert_memory_equal(o[0].rms_gw, o[1].rms_gw, TC * sizeof(float));
    /* the bias grad is the column sum of the grad reaching the layernorm output */
    float *want = fbuf(TC);
    for (int64_t j = 0; j < TC; j++) {
        double s = 0;
        for (int64_t r = 0; r < TR; r++) s += o[0].rms_gx[r * TC + j];
        want[j] = (float)s;
    }
    assert_allclose(o[0].ln_gb, want, TC, 1e-5, 1e-9, "layernorm dbias = column sums");
    free(want);
    for (int k = 0; k < 2; k++) {
        free(o[k].ln), free(o[k].ln_gx), free(o[k].rms_gx), free(o[k].ce_gx);
        free(o[k].ln_gw), free(o[k].ln_gb), free(o[k].rms_gw);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rmsnorm_forward),
        cmocka_unit_test(test_layernorm_forward),
        cmocka_unit_test(test_softmax_axes),
        cmocka_unit_test(test_softmax_stability),
        cmocka_unit_test(test_cross_entropy),
        cmocka_unit_test(test_cross_entropy_btv),
        cmocka_unit_test(test_cross_entropy_all_ignored),
        cmocka_unit_test(test_cross_entropy_errors),
        cmocka_unit_test(test_dropout_identity_and_args),
        cmocka_unit_test(test_dropout_mask),
        cmocka_unit_test(test_threads_identical),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
