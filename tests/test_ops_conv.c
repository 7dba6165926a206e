/* tests/test_ops_conv.c: relu, gelu, swiglu, conv2d and 2D pooling against straightforward
 * double-precision references written here, thread-count independence, bad geometry, and
 * targeted gradient checks of the paths random cases may miss. */
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/autograd_impl.h"

/* --- helpers --------------------------------------------------------------------------------- */

static lq_tensor *rand_leaf(lq_ctx *ctx, lq_rng *rng, int ndim, const int64_t *shape, bool rg, float lo, float hi) {
    lq_tensor *t = lq_new_leaf(ctx, ndim, shape, rg);
    assert_non_null(t);
    lq_fill_uniform(t, rng, lo, hi);
    return t;
}

/* Upstream gradient of out's shape, uniform in [-1, 1). */
static lq_tensor *rand_like(lq_ctx *ctx, lq_rng *rng, const lq_tensor *t) {
    lq_tensor *g = lq_new(ctx, LQ_DTYPE_F32, t->ndim, t->ne);
    assert_non_null(g);
    lq_fill_uniform(g, rng, -1, 1);
    return g;
}

static float *to_f32(const double *d, int64_t n) {
    float *f = malloc((size_t)n * sizeof *f);
    assert_non_null(f);
    for (int64_t i = 0; i < n; i++) f[i] = (float)d[i];
    return f;
}

static void assert_close_d(const float *got, const double *want, int64_t n, double rtol, double atol,
                           const char *what) {
    float *w = to_f32(want, n);
    assert_allclose(got, w, n, rtol, atol, what);
    free(w);
}

/* result must be NULL with status want and a message naming both strings (NULL: not checked). */
static void expect_error(lq_ctx *ctx, lq_tensor *result, lq_status want, const char *has1, const char *has2) {
    const lq_err *e = lq_ctx_error(ctx);
    bool ok = !result && e->status == want && (!has1 || strstr(e->msg, has1)) && (!has2 || strstr(e->msg, has2));
    if (!ok)
        print_error("expected %s naming '%s' and '%s', got %s: %s\n", lq_status_name(want), has1 ? has1 : "",
                    has2 ? has2 : "", lq_status_name(e->status), e->msg);
    assert_true(ok);
    lq_ctx_clear_error(ctx);
}

/* --- references ------------------------------------------------------------------------------ */

static double ref_gelu_exact(double x) { return 0.5 * x * (1.0 + erf(x / sqrt(2.0))); }
static double ref_gelu_tanh(double x) {
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}
static double ref_silu(double x) { return x / (1.0 + exp(-x)); }

typedef struct conv_geo {
    int64_t N, C, H, W, O, KH, KW, sh, sw, ph, pw, OH, OW;
} conv_geo;

static conv_geo conv_geo_make(int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t KH, int64_t KW,
                              int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
    conv_geo g = {N, C, H, W, O, KH, KW, sh, sw, ph, pw, 0, 0};
    g.OH = (H + 2 * ph - KH) / sh + 1;
    g.OW = (W + 2 * pw - KW) / sw + 1;
    return g;
}

/* Direct convolution: y[n, o, oh, ow] = b[o] + sum_{c, kh, kw} x[n, c, oh sh - ph + kh, ow sw - pw + kw]
 * w[o, c, kh, kw]. With dy given, the same loops give dx, dw, db by the chain rule. */
static void conv_ref(const conv_geo *g, const float *x, const float *w, const float *b, double *y) {
    for (int64_t n = 0; n < g->N; n++)
        for (int64_t o = 0; o < g->O; o++)
            for (int64_t oh = 0; oh < g->OH; oh++)
                for (int64_t ow = 0; ow < g->OW; ow++) {
                    double acc = b ? b[o] : 0.0;
                    for (int64_t c = 0; c < g->C; c++)
                        for (int64_t kh = 0; kh < g->KH; kh++)
                            for (int64_t kw = 0; kw < g->KW; kw++) {
                                int64_t ih = oh * g->sh - g->ph + kh, iw = ow * g->sw - g->pw + kw;
                                if (ih < 0 || ih >= g->H || iw < 0 || iw >= g->W) continue;
                                acc += (double)x[((n * g->C + c) * g->H + ih) * g->W + iw] *
                                       w[((o * g->C + c) * g->KH + kh) * g->KW + kw];
                            }
                    y[((n * g->O + o) * g->OH + oh) * g->OW + ow] = acc;
                }
}

static void conv_ref_grad(const conv_geo *g, const float *x, const float *w, const float *dy, double *dx, double *dw,
                          double *db) {
    memset(dx, 0, (size_t)(g->N * g->C * g->H * g->W) * sizeof *dx);
    memset(dw, 0, (size_t)(g->O * g->C * g->KH * g->KW) * sizeof *dw);
    memset(db, 0, (size_t)g->O * sizeof *db);
    for (int64_t n = 0; n < g->N; n++)
        for (int64_t o = 0; o < g->O; o++)
            for (int64_t oh = 0; oh < g->OH; oh++)
                for (int64_t ow = 0; ow < g->OW; ow++) {
                    double d = dy[((n * g->O + o) * g->OH + oh) * g->OW + ow];
                    db[o] += d;
                    for (int64_t c = 0; c < g->C; c++)
                        for (int64_t kh = 0; kh < g->KH; kh++)
                            for (int64_t kw = 0; kw < g->KW; kw++) {
                                int64_t ih = oh * g->sh - g->ph + kh, iw = ow * g->sw - g->pw + kw;
                                if (ih < 0 || ih >= g->H || iw < 0 || iw >= g->W) continue;
                                int64_t xi = ((n * g->C + c) * g->H + ih) * g->W + iw;
                                int64_t wi = ((o * g->C + c) * g->KH + kh) * g->KW + kw;
                                dx[xi] += d * w[wi];
                                dw[wi] += d * x[xi];
                            }
                }
}

typedef struct pool_geo {
    int64_t N, C, H, W, kh, kw, sh, sw, ph, pw, OH, OW;
} pool_geo;

static pool_geo pool_geo_make(int64_t N, int64_t C, int64_t H, int64_t W, const lq_pool2d_params *p) {
    pool_geo g = {N, C, H, W, p->kernel_h, p->kernel_w, p->stride_h ? p->stride_h : p->kernel_h,
                  p->stride_w ? p->stride_w : p->kernel_w, p->pad_h, p->pad_w, 0, 0};
    g.OH = (H + 2 * g.ph - g.kh) / g.sh + 1;
    g.OW = (W + 2 * g.pw - g.kw) / g.sw + 1;
    return g;
}

/* Naive pooling: max takes the first largest in-bounds element in row-major window order (its
 * index goes to arg), avg divides by the number of in-bounds elements. dx (if given) receives dy
 * through the same windows. */
static void pool_ref(const pool_geo *g, bool is_max, const float *x, const float *dy, double *y, double *dx) {
    if (dx) memset(dx, 0, (size_t)(g->N * g->C * g->H * g->W) * sizeof *dx);
    for (int64_t pl = 0; pl < g->N * g->C; pl++)
        for (int64_t oh = 0; oh < g->OH; oh++)
            for (int64_t ow = 0; ow < g->OW; ow++) {
                double best = 0, sum = 0;
                int64_t arg = -1, cnt = 0;
                for (int64_t a = 0; a < g->kh; a++)
                    for (int64_t b = 0; b < g->kw; b++) {
                        int64_t ih = oh * g->sh - g->ph + a, iw = ow * g->sw - g->pw + b;
                        if (ih < 0 || ih >= g->H || iw < 0 || iw >= g->W) continue;
                        int64_t xi = (pl * g->H + ih) * g->W + iw;
                        if (arg < 0 || x[xi] > best) {
                            best = x[xi];
                            arg = xi;
                        }
                        sum += x[xi];
                        cnt++;
                    }
                int64_t yi = (pl * g->OH + oh) * g->OW + ow;
                y[yi] = is_max ? best : sum / (double)cnt;
                if (!dx) continue;
                if (is_max) {
                    dx[arg] += dy[yi];
                    continue;
                }
                for (int64_t a = 0; a < g->kh; a++)
                    for (int64_t b = 0; b < g->kw; b++) {
                        int64_t ih = oh * g->sh - g->ph + a, iw = ow * g->sw - g->pw + b;
                        if (ih < 0 || ih >= g->H || iw < 0 || iw >= g->W) continue;
                        dx[(pl * g->H + ih) * g->W + iw] += dy[yi] / (double)cnt;
                    }
            }
}

/* Each (n, c) plane a shuffled grid 0.1 apart: no ties, gaps far above a 1e-2 FD step. */
static void fill_distinct(lq_tensor *t, lq_rng *rng) {
    int64_t hw = t->ne[2] * t->ne[3];
    float *v = t->data;
    for (int64_t pl = 0; pl < t->ne[0] * t->ne[1]; pl++) {
        float *p = v + pl * hw;
        for (int64_t k = 0; k < hw; k++) p[k] = 0.1f * (float)(k - hw / 2);
        for (int64_t k = hw - 1; k > 0; k--) {
            int64_t j = lq_rng_int(rng, 0, k);
            float s = p[k];
            p[k] = p[j];
            p[j] = s;
        }
    }
}

/* --- activations ----------------------------------------------------------------------------- */

static void test_relu(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_rng rng;
    lq_rng_seed(&rng, 11);
    lq_tensor *x = rand_leaf(ctx, &rng, 2, (int64_t[]){5, 9}, true, -3, 3);
    ((float *)x->data)[3] = 0.0f; /* at the kink: output 0, derivative 0 (torch) */
    lq_tensor *y = lq_relu(ctx, x);
    assert_ctx_ok(ctx);
    double want[45], dwant[45];
    const float *xv = x->data;
    lq_tensor *dy = rand_like(ctx, &rng, y);
    for (int i = 0; i < 45; i++) {
        want[i] = xv[i] > 0 ? xv[i] : 0.0;
        dwant[i] = xv[i] > 0 ? ((float *)dy->data)[i] : 0.0;
    }
    assert_close_d(y->data, want, 45, 0, 0, "relu forward");
    assert_int_equal(lq_backward_from(ctx, y, dy), LQ_OK);
    assert_close_d(x->grad->data, dwant, 45, 0, 0, "relu backward");
    lq_ctx_free(ctx);
}

static void test_gelu_known_points(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_tensor *x = lq_new_leaf(ctx, 1, (int64_t[]){4}, false);
    float *xv = x->data;
    xv[0] = 1.0f;
    xv[1] = -3.0f;
    xv[2] = 0.0f;
    xv[3] = 2.5f;
    lq_tensor *ye = lq_gelu(ctx, x, LQ_GELU_EXACT), *yt = lq_gelu(ctx, x, LQ_GELU_TANH);
    assert_ctx_ok(ctx);
    const float *e = ye->data, *t = yt->data;
    /* published values (torch.nn.functional.gelu at 1) */
    assert_allclose(&e[0], (float[]){0.8413447460685429f}, 1, 1e-6, 1e-7, "gelu exact(1)");
    assert_allclose(&t[0], (float[]){0.8411919906082768f}, 1, 1e-6, 1e-7, "gelu tanh(1)");
    /* -3 Phi(-3) = -3 * 0.0013498980316301 */
    assert_allclose(&e[1], (float[]){-0.0040496940948903f}, 1, 1e-4, 1e-8, "gelu exact(-3)");
    assert_true(e[1] < 0 && e[1] > -0.01f && t[1] < 0 && t[1] > -0.01f);
    assert_true(e[2] == 0.0f && t[2] == 0.0f);
    assert_allclose(&e[3], (float[]){(float)ref_gelu_exact(2.5)}, 1, 1e-6, 1e-7, "gelu exact(2.5)");
    assert_allclose(&t[3], (float[]){(float)ref_gelu_tanh(2.5)}, 1, 1e-6, 1e-7, "gelu tanh(2.5)");
    lq_ctx_free(ctx);
}

/* Forward against the double formulas; backward against a double central difference of them. */
static void test_gelu_random(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_rng rng;
    lq_rng_seed(&rng, 12);
    enum { M = 200 };
    for (int mode = 0; mode < 2; mode++) {
        double (*f)(double) = mode ? ref_gelu_tanh : ref_gelu_exact;
        lq_tensor *x = rand_leaf(ctx, &rng, 2, (int64_t[]){10, 20}, true, -6, 6);
        lq_tensor *y = lq_gelu(ctx, x, mode ? LQ_GELU_TANH : LQ_GELU_EXACT);
        assert_ctx_ok(ctx);
        lq_tensor *dy = rand_like(ctx, &rng, y);
        double want[M], dwant[M];
        const float *xv = x->data, *dyv = dy->data;
        for (int i = 0; i < M; i++) {
            double h = 1e-5;
            want[i] = f(xv[i]);
            dwant[i] = dyv[i] * (f(xv[i] + h) - f(xv[i] - h)) / (2 * h);
        }
        assert_close_d(y->data, want, M, 1e-5, 1e-6, mode ? "gelu tanh forward" : "gelu exact forward");
        assert_int_equal(lq_backward_from(ctx, y, dy), LQ_OK);
        assert_close_d(x->grad->data, dwant, M, 1e-4, 1e-5, mode ? "gelu tanh backward" : "gelu exact backward");
        lq_ctx_step_reset(ctx);
    }
    lq_ctx_free(ctx);
}

static void test_swiglu(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_rng rng;
    lq_rng_seed(&rng, 13);
    enum { M = 2 * 3 * 7 };
    int64_t shape[3] = {2, 3, 7};
    lq_tensor *g = rand_leaf(ctx, &rng, 3, shape, true, -5, 5), *u = rand_leaf(ctx, &rng, 3, shape, true, -2, 2);
    lq_tensor *y = lq_swiglu(ctx, g, u);
    assert_ctx_ok(ctx);
    lq_tensor *dy = rand_like(ctx, &rng, y);
    double want[M], dg[M], du[M];
    const float *gv = g->data, *uv = u->data, *dyv = dy->data;
    for (int i = 0; i < M; i++) {
        double h = 1e-5;
        want[i] = ref_silu(gv[i]) * uv[i];
        dg[i] = dyv[i] * uv[i] * (ref_silu(gv[i] + h) - ref_silu(gv[i] - h)) / (2 * h);
        du[i] = dyv[i] * ref_silu(gv[i]);
    }
    assert_close_d(y->data, want, M, 1e-5, 1e-6, "swiglu forward");
    assert_int_equal(lq_backward_from(ctx, y, dy), LQ_OK);
    assert_close_d(g->grad->data, dg, M, 1e-4, 1e-5, "swiglu dgate");
    assert_close_d(u->grad->data, du, M, 1e-5, 1e-6, "swiglu dup");

    lq_tensor *bad = rand_leaf(ctx, &rng, 3, (int64_t[]){2, 7, 3}, false, -1, 1);
    expect_error(ctx, lq_swiglu(ctx, g, bad), LQ_ERR_SHAPE, "(2, 3, 7)", "(2, 7, 3)");
    lq_ctx_free(ctx);
}

/* --- conv2d ---------------------------------------------------------------------------------- */

/* Forward against conv_ref, then backward against conv_ref_grad; x_grad / w_grad choose which
 * inputs require a gradient. */
static void check_conv(conv_geo g, bool with_bias, bool x_grad, bool w_grad, bool null_params, const char *what) {
    lq_ctx *ctx = lq_test_ctx(1);
    lq_rng rng;
    lq_rng_seed(&rng, 100 + (uint64_t)g.KH * 7 + (uint64_t)g.sh);
    lq_tensor *x = rand_leaf(ctx, &rng, 4, (int64_t[]){g.N, g.C, g.H, g.W}, x_grad, -1, 1);
    lq_tensor *w = rand_leaf(ctx, &rng, 4, (int64_t[]){g.O, g.C, g.KH, g.KW}, w_grad, -1, 1);
    lq_tensor *b = with_bias ? rand_leaf(ctx, &rng, 1, (int64_t[]){g.O}, true, -1, 1) : NULL;
    lq_conv2d_params p = {(int)g.sh, (int)g.sw, (int)g.ph, (int)g.pw};
    lq_tensor *y = lq_conv2d(ctx, x, w, b, null_params ? NULL : &p);
    assert_ctx_ok(ctx);
    assert_int_equal(y->ndim, 4);
    assert_true(y->ne[0] == g.N && y->ne[1] == g.O && y->ne[2] == g.OH && y->ne[3] == g.OW);
    int64_t ny = g.N * g.O * g.OH * g.OW, nx = g.N * g.C * g.H * g.W, nw = g.O * g.C * g.KH * g.KW;
    double *yr = malloc((size_t)ny * sizeof *yr), *dx = malloc((size_t)nx * sizeof *dx);
    double *dw = malloc((size_t)nw * sizeof *dw), *db = malloc((size_t)g.O * sizeof *db);
    conv_ref(&g, x->data, w->data, b ? b->data : NULL, yr);
    char msg[160];
    snprintf(msg, sizeof msg, "%s: forward", what);
    assert_close_d(y->data, yr, ny, 1e-5, 1e-5, msg);
    lq_tensor *dy = rand_like(ctx, &rng, y);
    assert_int_equal(lq_backward_from(ctx, y, dy), LQ_OK);
    conv_ref_grad(&g, x->data, w->data, dy->data, dx, dw, db);
    snprintf(msg, sizeof msg, "%s: dx", what);
    if (x_grad) assert_close_d(x->grad->data, dx, nx, 1e-5, 1e-5, msg);
    else assert_null(x->grad);
    snprintf(msg, sizeof msg, "%s: dweight", what);
    if (w_grad) assert_close_d(w->grad->data, dw, nw, 1e-5, 1e-5, msg);
    else assert_null(w->grad);
    snprintf(msg, sizeof msg, "%s: dbias", what);
    if (b) assert_close_d(b->grad->data, db, g.O, 1e-5, 1e-5, msg);
    free(yr);
    free(dx);
    free(dw);
    free(db);
    lq_ctx_free(ctx);
}

static void test_conv2d(void **state) {
    (void)state;
    check_conv(conv_geo_make(2, 3, 7, 6, 4, 3, 3, 2, 2, 1, 1), true, true, true, false, "3x3 stride 2 pad 1 bias");
    check_conv(conv_geo_make(2, 3, 7, 6, 4, 3, 3, 2, 2, 1, 1), false, true, true, false, "3x3 stride 2 pad 1");
    check_conv(conv_geo_make(1, 2, 5, 8, 3, 2, 3, 1, 2, 0, 1), true, true, true, false, "2x3 stride 1x2 pad 0x1");
    check_conv(conv_geo_make(3, 4, 5, 5, 2, 1, 1, 1, 1, 0, 0), true, true, true, false, "pointwise 1x1");
    check_conv(conv_geo_make(2, 2, 6, 5, 3, 3, 2, 1, 1, 0, 0), false, true, true, true, "params NULL");
    check_conv(conv_geo_make(2, 2, 6, 6, 3, 3, 3, 3, 3, 1, 1), true, false, true, false, "weight grad only");
    check_conv(conv_geo_make(2, 2, 6, 6, 3, 3, 3, 2, 1, 1, 0), false, true, false, false, "input grad only");
    check_conv(conv_geo_make(1, 1, 3, 3, 1, 3, 3, 1, 1, 0, 0), true, true, true, false, "kernel = input");
}

/* --- pooling --------------------------------------------------------------------------------- */

static void check_pool(bool is_max, int64_t N, int64_t C, int64_t H, int64_t W, lq_pool2d_params p, const char *what) {
    lq_ctx *ctx = lq_test_ctx(1);
    lq_rng rng;
    lq_rng_seed(&rng, 200 + (uint64_t)H);
    pool_geo g = pool_geo_make(N, C, H, W, &p);
    lq_tensor *x = rand_leaf(ctx, &rng, 4, (int64_t[]){N, C, H, W}, true, -1, 1);
    /* a few exact ties, to pin the first-max rule */
    float *xv = x->data;
    for (int64_t i = 0; i + 1 < N * C * H * W; i += 5) xv[i + 1] = xv[i];
    lq_tensor *y = is_max ? lq_max_pool2d(ctx, x, &p) : lq_avg_pool2d(ctx, x, &p);
    assert_ctx_ok(ctx);
    assert_true(y->ne[0] == N && y->ne[1] == C && y->ne[2] == g.OH && y->ne[3] == g.OW);
    int64_t ny = N * C * g.OH * g.OW, nx = N * C * H * W;
    lq_tensor *dy = rand_like(ctx, &rng, y);
    double *yr = malloc((size_t)ny * sizeof *yr), *dx = malloc((size_t)nx * sizeof *dx);
    pool_ref(&g, is_max, x->data, dy->data, yr, dx);
    char msg[160];
    snprintf(msg, sizeof msg, "%s: forward", what);
    assert_close_d(y->data, yr, ny, 1e-6, 1e-7, msg);
    assert_int_equal(lq_backward_from(ctx, y, dy), LQ_OK);
    snprintf(msg, sizeof msg, "%s: backward", what);
    assert_close_d(x->grad->data, dx, nx, 1e-5, 1e-6, msg);
    free(yr);
    free(dx);
    lq_ctx_free(ctx);
}

static void test_pool(void **state) {
    (void)state;
    for (int m = 0; m < 2; m++) {
        bool mx = m == 0;
        check_pool(mx, 2, 3, 7, 6, (lq_pool2d_params){3, 3, 2, 2, 1, 1}, mx ? "max 3x3 s2 p1" : "avg 3x3 s2 p1");
        check_pool(mx, 1, 2, 5, 6, (lq_pool2d_params){3, 2, 1, 2, 1, 1}, mx ? "max 3x2 s1x2 p1" : "avg 3x2 s1x2 p1");
        check_pool(mx, 2, 2, 6, 7, (lq_pool2d_params){2, 2, 0, 0, 0, 0}, mx ? "max 2x2 default" : "avg 2x2 default");
        check_pool(mx, 1, 1, 4, 4, (lq_pool2d_params){5, 5, 1, 1, 2, 2}, mx ? "max 5x5 s1 p2" : "avg 5x5 s1 p2");
    }
}

/* Hand-worked values: count_include_pad = false at the borders, and ties going to the first max. */
static void test_pool_hand(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_tensor *x = lq_new_leaf(ctx, 4, (int64_t[]){1, 1, 3, 3}, true);
    for (int i = 0; i < 9; i++) ((float *)x->data)[i] = (float)(i + 1); /* 1..9 */
    lq_pool2d_params p = {3, 3, 1, 1, 1, 1};
    lq_tensor *ya = lq_avg_pool2d(ctx, x, &p);
    assert_ctx_ok(ctx);
    /* corner (0,0): (1+2+4+5)/4 = 3; edge (0,1): (1+2+3+4+5+6)/6 = 3.5; centre: 45/9 = 5 */
    float want_a[9] = {3.0f, 3.5f, 4.0f, 4.5f, 5.0f, 5.5f, 6.0f, 6.5f, 7.0f};
    assert_allclose(ya->data, want_a, 9, 1e-6, 0, "avg pool borders exclude padding");
    lq_tensor *ym = lq_max_pool2d(ctx, x, &p);
    assert_ctx_ok(ctx);
    float want_m[9] = {5, 6, 6, 8, 9, 9, 8, 9, 9};
    assert_allclose(ym->data, want_m, 9, 0, 0, "max pool 3x3 p1");

    /* ties: one 2x2 window over [[1, 5], [5, 2]] and one over all-equal values */
    lq_tensor *t = lq_new_leaf(ctx, 4, (int64_t[]){2, 1, 2, 2}, true);
    float tv[8] = {1, 5, 5, 2, 7, 7, 7, 7};
    memcpy(t->data, tv, sizeof tv);
    lq_tensor *yt = lq_max_pool2d(ctx, t, &(lq_pool2d_params){2, 2, 0, 0, 0, 0});
    assert_ctx_ok(ctx);
    assert_allclose(yt->data, ((float[]){5, 7}), 2, 0, 0, "max pool ties forward");
    assert_int_equal(lq_backward(ctx, lq_sum(ctx, yt, LQ_AXIS_ALL, false)), LQ_OK);
    float want_g[8] = {0, 1, 0, 0, 1, 0, 0, 0};
    assert_allclose(t->grad->data, want_g, 8, 0, 0, "max pool ties go to the first max");
    lq_ctx_free(ctx);
}

/* No-grad mode (no argmax saved) gives the same forward. */
static void test_pool_no_grad(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_rng rng;
    lq_rng_seed(&rng, 5);
    lq_tensor *x = rand_leaf(ctx, &rng, 4, (int64_t[]){2, 2, 6, 5}, true, -1, 1);
    lq_pool2d_params p = {3, 2, 2, 1, 1, 1};
    lq_tensor *a = lq_max_pool2d(ctx, x, &p);
    lq_ctx_set_grad(ctx, false);
    lq_tensor *b = lq_max_pool2d(ctx, x, &p);
    lq_ctx_set_grad(ctx, true);
    assert_ctx_ok(ctx);
    assert_non_null(a->node);
    assert_null(b->node);
    assert_allclose(b->data, a->data, lq_numel(a), 0, 0, "max pool no-grad forward");
    lq_ctx_free(ctx);
}

/* --- thread-count independence --------------------------------------------------------------- */

/* Runs every op of this file forward and backward on sizes past the parallel thresholds and
 * returns all outputs and grads concatenated (caller frees). */
static float *run_all(int n_threads, int64_t *n_out) {
    lq_ctx *ctx = lq_test_ctx(n_threads);
    lq_rng rng;
    lq_rng_seed(&rng, 77);
    int64_t xs[4] = {3, 8, 64, 64}; /* 98304 elements: past every parallel threshold */
    lq_tensor *x = rand_leaf(ctx, &rng, 4, xs, true, -2, 2);
    lq_tensor *u = rand_leaf(ctx, &rng, 4, xs, true, -2, 2);
    lq_tensor *w = rand_leaf(ctx, &rng, 4, (int64_t[]){16, 8, 3, 3}, true, -0.3f, 0.3f);
    lq_tensor *b = rand_leaf(ctx, &rng, 1, (int64_t[]){16}, true, -1, 1);
    lq_tensor *outs[7];
    outs[0] = lq_conv2d(ctx, x, w, b, &(lq_conv2d_params){1, 1, 1, 1});
    outs[1] = lq_max_pool2d(ctx, x, &(lq_pool2d_params){3, 3, 1, 1, 1, 1});
    outs[2] = lq_avg_pool2d(ctx, x, &(lq_pool2d_params){3, 3, 1, 1, 1, 1});
    outs[3] = lq_relu(ctx, x);
    outs[4] = lq_gelu(ctx, x, LQ_GELU_EXACT);
    outs[5] = lq_gelu(ctx, x, LQ_GELU_TANH);
    outs[6] = lq_swiglu(ctx, x, u);
    assert_ctx_ok(ctx);
    lq_tensor *loss = NULL;
    for (int i = 0; i < 7; i++) {
        lq_tensor *r = rand_like(ctx, &rng, outs[i]);
        lq_tensor *s = lq_sum(ctx, lq_mul(ctx, outs[i], r), LQ_AXIS_ALL, false);
        loss = loss ? lq_add(ctx, loss, s) : s;
    }
    assert_int_equal(lq_backward(ctx, loss), LQ_OK);
    lq_tensor *all[11] = {outs[0], outs[1], outs[2], outs[3], outs[4], outs[5], outs[6],
                          x->grad, u->grad, w->grad, b->grad};
    int64_t total = 0;
    for (int i = 0; i < 11; i++) total += lq_numel(all[i]);
    float *buf = malloc((size_t)total * sizeof *buf);
    assert_non_null(buf);
    int64_t off = 0;
    for (int i = 0; i < 11; i++) {
        memcpy(buf + off, all[i]->data, (size_t)lq_numel(all[i]) * sizeof *buf);
        off += lq_numel(all[i]);
    }
    *n_out = total;
    lq_ctx_free(ctx);
    return buf;
}

static void test_threads_identical(void **state) {
    (void)state;
    int64_t n1, n2;
    float *a = run_all(1, &n1), *b = run_all(2, &n2);
    assert_int_equal(n1, n2);
    int64_t diff = 0;
    for (int64_t i = 0; i < n1; i++) diff += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    if (diff) print_error("%lld of %lld values differ between 1 and 2 threads\n", (long long)diff, (long long)n1);
    assert_int_equal(diff, 0);
    free(a);
    free(b);
}

/* --- bad input ------------------------------------------------------------------------------- */

static void test_bad_geometry(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_tensor *x = lq_new_leaf(ctx, 4, (int64_t[]){1, 3, 5, 5}, true);
    lq_tensor *w4 = lq_new_leaf(ctx, 4, (int64_t[]){2, 4, 3, 3}, true);
    lq_tensor *w = lq_new_leaf(ctx, 4, (int64_t[]){2, 3, 3, 3}, true);
    lq_tensor *wbig = lq_new_leaf(ctx, 4, (int64_t[]){2, 3, 8, 3}, true);
    lq_tensor *b3 = lq_new_leaf(ctx, 1, (int64_t[]){3}, true);
    lq_tensor *x3 = lq_new_leaf(ctx, 3, (int64_t[]){3, 5, 5}, true);
    assert_ctx_ok(ctx);

    expect_error(ctx, lq_conv2d(ctx, x, w4, NULL, NULL), LQ_ERR_SHAPE, "(1, 3, 5, 5)", "(2, 4, 3, 3)");
    expect_error(ctx, lq_conv2d(ctx, x, wbig, NULL, &(lq_conv2d_params){1, 1, 1, 1}), LQ_ERR_SHAPE, "(1, 3, 5, 5)",
                 "(2, 3, 8, 3)");
    expect_error(ctx, lq_conv2d(ctx, x, w, b3, NULL), LQ_ERR_SHAPE, "(2, 3, 3, 3)", "(3,)");
    expect_error(ctx, lq_conv2d(ctx, x3, w, NULL, NULL), LQ_ERR_SHAPE, "(3, 5, 5)", "(2, 3, 3, 3)");
    expect_error(ctx, lq_conv2d(ctx, x, w, NULL, &(lq_conv2d_params){-1, 1, 0, 0}), LQ_ERR_ARG, "stride", NULL);
    expect_error(ctx, lq_conv2d(ctx, x, w, NULL, &(lq_conv2d_params){1, 1, 0, -2}), LQ_ERR_ARG, "padding", NULL);
    /* the largest valid kernel still works: 7x7 over 5x5 padded by 1 */
    lq_tensor *w7 = lq_new_leaf(ctx, 4, (int64_t[]){1, 3, 7, 7}, false);
    lq_tensor *y = lq_conv2d(ctx, x, w7, NULL, &(lq_conv2d_params){1, 1, 1, 1});
    assert_ctx_ok(ctx);
    assert_true(y->ne[2] == 1 && y->ne[3] == 1);

    expect_error(ctx, lq_max_pool2d(ctx, x, &(lq_pool2d_params){3, 3, 1, 1, 2, 0}), LQ_ERR_ARG, "padding", "3x3");
    expect_error(ctx, lq_avg_pool2d(ctx, x, &(lq_pool2d_params){2, 2, 1, 1, 0, 2}), LQ_ERR_ARG, "padding", "2x2");
    expect_error(ctx, lq_max_pool2d(ctx, x, &(lq_pool2d_params){6, 2, 1, 1, 0, 0}), LQ_ERR_SHAPE, "(1, 3, 5, 5)",
                 "6x2");
    expect_error(ctx, lq_avg_pool2d(ctx, x, &(lq_pool2d_params){0, 2, 1, 1, 0, 0}), LQ_ERR_ARG, "kernel", NULL);
    expect_error(ctx, lq_avg_pool2d(ctx, x, NULL), LQ_ERR_ARG, "avg_pool2d", NULL);
    expect_error(ctx, lq_max_pool2d(ctx, x3, &(lq_pool2d_params){2, 2, 0, 0, 0, 0}), LQ_ERR_SHAPE, "(3, 5, 5)",
                 "max_pool2d");
    expect_error(ctx, lq_gelu(ctx, x, (lq_gelu_approx)7), LQ_ERR_ARG, "gelu", NULL);
    expect_error(ctx, lq_relu(ctx, NULL), LQ_ERR_ARG, "relu", NULL);

    /* errors are sticky: the next op returns NULL and keeps the first message */
    assert_null(lq_conv2d(ctx, x, w4, NULL, NULL));
    assert_null(lq_relu(ctx, x));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_SHAPE);
    assert_non_null(strstr(lq_ctx_error(ctx)->msg, "(2, 4, 3, 3)"));
    lq_ctx_free(ctx);
}

/* --- targeted gradient checks ---------------------------------------------------------------- */

typedef struct gc_spec {
    int kind; /* 0 conv, 1 max pool, 2 avg pool, 3 gelu */
    lq_conv2d_params cp;
    lq_pool2d_params pp;
    lq_gelu_approx approx;
} gc_spec;

static lq_tensor *spec_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    const gc_spec *s = user;
    switch (s->kind) {
    case 0: return lq_conv2d(ctx, in[0], in[1], n_in > 2 ? in[2] : NULL, &s->cp);
    case 1: return lq_max_pool2d(ctx, in[0], &s->pp);
    case 2: return lq_avg_pool2d(ctx, in[0], &s->pp);
    default: return lq_gelu(ctx, in[0], s->approx);
    }
}

static void run_gc(lq_ctx *ctx, const gc_spec *s, int n_in, lq_tensor *const *in, const char *what) {
    lq_gc_result r;
    lq_status st = lq_gradcheck(ctx, spec_call, (void *)s, n_in, in, NULL, &r);
    if (st != LQ_OK) print_error("%s: %s\n", what, lq_ctx_error(ctx)->msg);
    assert_int_equal(st, LQ_OK);
    printf("gradcheck %-28s error %.3e (%lld elements)\n", what, r.error, (long long)r.n_checked);
    assert_true(r.error < 1e-2);
}

static void test_gradcheck_targeted(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(2);
    lq_rng rng;
    lq_rng_seed(&rng, 31);
    lq_tensor *x = rand_leaf(ctx, &rng, 4, (int64_t[]){2, 2, 5, 6}, true, -1, 1);
    lq_tensor *w = rand_leaf(ctx, &rng, 4, (int64_t[]){3, 2, 3, 2}, true, -1, 1);
    lq_tensor *b = rand_leaf(ctx, &rng, 1, (int64_t[]){3}, true, -1, 1);
    gc_spec conv = {.kind = 0, .cp = {2, 1, 1, 1}};
    run_gc(ctx, &conv, 3, (lq_tensor *[]){x, w, b}, "conv2d 3x2 s2x1 p1 bias");
    lq_tensor *w1 = rand_leaf(ctx, &rng, 4, (int64_t[]){3, 2, 1, 1}, true, -1, 1);
    gc_spec pw = {.kind = 0};
    run_gc(ctx, &pw, 2, (lq_tensor *[]){x, w1}, "conv2d pointwise");

    lq_tensor *xp = lq_new_leaf(ctx, 4, (int64_t[]){2, 2, 6, 5}, true);
    fill_distinct(xp, &rng);
    gc_spec mp = {.kind = 1, .pp = {3, 3, 1, 2, 1, 1}};
    run_gc(ctx, &mp, 1, &xp, "max_pool2d 3x3 s1x2 p1");
    gc_spec ap = {.kind = 2, .pp = {3, 2, 2, 1, 1, 1}};
    run_gc(ctx, &ap, 1, &xp, "avg_pool2d 3x2 s2x1 p1");
    lq_tensor *xg = rand_leaf(ctx, &rng, 2, (int64_t[]){4, 6}, true, -4, 4);
    gc_spec ge = {.kind = 3, .approx = LQ_GELU_EXACT}, gt = {.kind = 3, .approx = LQ_GELU_TANH};
    run_gc(ctx, &ge, 1, &xg, "gelu exact");
    run_gc(ctx, &gt, 1, &xg, "gelu tanh");
    lq_ctx_free(ctx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_relu),
        cmocka_unit_test(test_gelu_known_points),
        cmocka_unit_test(test_gelu_random),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_conv2d),
        cmocka_unit_test(test_pool),
        cmocka_unit_test(test_pool_hand),
        cmocka_unit_test(test_pool_no_grad),
        cmocka_unit_test(test_threads_identical),
        cmocka_unit_test(test_bad_geometry),
        cmocka_unit_test(test_gradcheck_targeted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
