/* autograd/ops/op_conv2d.c: 2D convolution (cross-correlation, as torch) by im2col + cblas_sgemm. */
#include <cblas.h>
#include <stdio.h>
#include <string.h>

#include "autograd/autograd_impl.h"

/* Work per parallel loop below which threads cost more than they save. */
#define CONV_PAR_MIN (1 << 15)

/* x (N, C, H, W), weight (O, C, KH, KW), y (N, O, OH, OW); K = C KH KW rows of the column
 * matrix, P = OH OW positions. */
typedef struct geom {
    int64_t N, C, H, W, O, KH, KW, OH, OW, sh, sw, ph, pw, K, P;
} geom;

static geom geom_of(const lq_node *n) {
    const lq_tensor *x = n->in[0], *w = n->in[1], *y = n->out;
    geom g = {.N = x->ne[0], .C = x->ne[1], .H = x->ne[2], .W = x->ne[3], .O = w->ne[0], .KH = w->ne[2],
              .KW = w->ne[3], .OH = y->ne[2], .OW = y->ne[3], .sh = n->ip[0], .sw = n->ip[1], .ph = n->ip[2],
              .pw = n->ip[3]};
    g.K = g.C * g.KH * g.KW;
    g.P = g.OH * g.OW;
    return g;
}

/* A 1x1 kernel with stride 1 and no padding needs no im2col: x_n (C, H W) is its own column matrix. */
static bool is_pointwise(const geom *g) {
    return g->KH == 1 && g->KW == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0;
}

/* col (K, P): col[(c, kh, kw), (oh, ow)] = x[c, oh sh - ph + kh, ow sw - pw + kw], 0 in the padding.
 * Each row is written by one iteration. */
static void im2col(const float *x, float *col, const geom *g, int n_threads) {
    int64_t KH = g->KH, KW = g->KW, H = g->H, W = g->W, OH = g->OH, OW = g->OW, P = g->P;
#pragma omp parallel for num_threads(n_threads) if (g->K * g->P >= CONV_PAR_MIN)
    for (int64_t k = 0; k < g->K; k++) {
        int64_t c = k / (KH * KW), kh = (k / KW) % KH, kw = k % KW;
        const float *xc = x + c * H * W;
        float *row = col + k * P;
        for (int64_t oh = 0; oh < OH; oh++) {
            int64_t ih = oh * g->sh - g->ph + kh;
            float *r = row + oh * OW;
            if (ih < 0 || ih >= H) {
                memset(r, 0, (size_t)OW * sizeof *r);
                continue;
            }
            const float *xr = xc + ih * W;
            for (int64_t ow = 0; ow < OW; ow++) {
                int64_t iw = ow * g->sw - g->pw + kw;
                r[ow] = (iw >= 0 && iw < W) ? xr[iw] : 0.0f;
            }
        }
    }
}

/* The adjoint of im2col: dx[c, ih, iw] += sum of dcol over every (kh, kw, oh, ow) that read it.
 * Gathered per input row (c, ih), so each dx row is written by one iteration and its sum runs in
 * a fixed order (kh, kw, ow) whatever the thread count. */
static void col2im_add(const float *dcol, float *dx, const geom *g, int n_threads) {
    int64_t KH = g->KH, KW = g->KW, H = g->H, W = g->W, OH = g->OH, OW = g->OW, P = g->P;
#pragma omp parallel for num_threads(n_threads) if (g->K * g->P >= CONV_PAR_MIN)
    for (int64_t r = 0; r < g->C * H; r++) {
        int64_t c = r / H, ih = r % H;
        float *dxr = dx + r * W;
        for (int64_t kh = 0; kh < KH; kh++) {
            int64_t t = ih + g->ph - kh; /* = oh sh */
            if (t < 0 || t % g->sh != 0 || t / g->sh >= OH) continue;
            int64_t oh = t / g->sh;
            for (int64_t kw = 0; kw < KW; kw++) {
                const float *drow = dcol + ((c * KH + kh) * KW + kw) * P + oh * OW;
                for (int64_t ow = 0; ow < OW; ow++) {
                    int64_t iw = ow * g->sw - g->pw + kw;
                    if (iw >= 0 && iw < W) dxr[iw] += drow[ow];
                }
            }
        }
    }
}

/* y_n (O, P) = W (O, K) col_n (K, P) (+ bias[o] on row o), one sample at a time so the column
 * buffer is K P floats whatever N is. */
static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    geom g = geom_of(n);
    const float *x = n->in[0]->data, *w = n->in[1]->data;
    const float *bias = n->n_in > 2 ? n->in[2]->data : NULL;
    float *y = n->out->data;
    bool pointwise = is_pointwise(&g);
    float *col = NULL;
    if (!pointwise && g.N > 0) {
        col = lq_ctx_alloc(ctx, (size_t)(g.K * g.P) * sizeof *col);
        if (!col) return ctx->err.status;
    }
    for (int64_t s = 0; s < g.N; s++) {
        const float *xs = x + s * g.C * g.H * g.W;
        float *ys = y + s * g.O * g.P;
        if (!pointwise) im2col(xs, col, &g, ctx->n_threads);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)g.O, (int)g.P, (int)g.K, 1.0f, w, (int)g.K,
                    pointwise ? xs : col, (int)g.P, 0.0f, ys, (int)g.P);
        if (bias) {
#pragma omp parallel for num_threads(ctx->n_threads) if (g.O * g.P >= CONV_PAR_MIN)
            for (int64_t o = 0; o < g.O; o++)
                for (int64_t p = 0; p < g.P; p++) ys[o * g.P + p] += bias[o];
        }
    }
    return LQ_OK;
}

/* y_n = W col_n + b 1^T, with col_n = im2col(x_n) linear in x_n. Per sample:
 *   dW (O, K)   += dY_n (O, P) col_n^T (P, K)         summed over n (sgemm with beta = 1);
 *   dcol (K, P)  = W^T (K, O) dY_n (O, P), and dx_n += col2im(dcol), col2im being im2col's adjoint
 *                  (each x element receives the sum over every column slot that copied it);
 *   db[o]       += sum over n and p of dY_n[o, p].
 * col_n is recomputed rather than saved from forward (K P floats per sample would dominate memory).
 * For a pointwise kernel col_n = x_n, so dW += dY_n x_n^T and dx_n += W^T dY_n directly. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    geom g = geom_of(n);
    float *gx, *gw, *gb = NULL;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    LQ_TRY(lq_grad_get(ctx, n->in[1], &gw));
    if (n->n_in > 2) LQ_TRY(lq_grad_get(ctx, n->in[2], &gb));
    const float *x = n->in[0]->data, *w = n->in[1]->data, *gy = n->out->grad->data;
    bool pointwise = is_pointwise(&g);
    float *col = NULL, *dcol = NULL;
    if (!pointwise && g.N > 0) {
        if (gw && !(col = lq_ctx_alloc(ctx, (size_t)(g.K * g.P) * sizeof *col))) return ctx->err.status;
        if (gx && !(dcol = lq_ctx_alloc(ctx, (size_t)(g.K * g.P) * sizeof *dcol))) return ctx->err.status;
    }
    for (int64_t s = 0; s < g.N; s++) {
        const float *xs = x + s * g.C * g.H * g.W, *dys = gy + s * g.O * g.P;
        if (gw) {
            if (!pointwise) im2col(xs, col, &g, ctx->n_threads);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)g.O, (int)g.K, (int)g.P, 1.0f, dys, (int)g.P,
                        pointwise ? xs : col, (int)g.P, 1.0f, gw, (int)g.K);
        }
        if (gx) {
            float *dxs = gx + s * g.C * g.H * g.W;
            if (pointwise) {
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)g.K, (int)g.P, (int)g.O, 1.0f, w, (int)g.K,
                            dys, (int)g.P, 1.0f, dxs, (int)g.P);
            } else {
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)g.K, (int)g.P, (int)g.O, 1.0f, w, (int)g.K,
                            dys, (int)g.P, 0.0f, dcol, (int)g.P);
                col2im_add(dcol, dxs, &g, ctx->n_threads);
            }
        }
    }
    if (gb) {
#pragma omp parallel for num_threads(ctx->n_threads) if (g.N * g.O * g.P >= CONV_PAR_MIN)
        for (int64_t o = 0; o < g.O; o++) {
            double acc = 0.0;
            for (int64_t s = 0; s < g.N; s++) {
                const float *r = gy + (s * g.O + o) * g.P;
                for (int64_t p = 0; p < g.P; p++) acc += r[p];
            }
            gb[o] += (float)acc;
        }
    }
    return LQ_OK;
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    const lq_gc_case *c = user;
    lq_conv2d_params p = {(int)c->ip[0], (int)c->ip[1], (int)c->ip[2], (int)c->ip[3]};
    return lq_conv2d(ctx, in[0], in[1], n_in > 2 ? in[2] : NULL, &p);
}

/* Small random geometry; one case in four is the pointwise (1x1, stride 1, no padding) path. */
static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t N = lq_rng_int(rng, 1, 2), C = lq_rng_int(rng, 1, 3), O = lq_rng_int(rng, 1, 3);
    int64_t H = lq_rng_int(rng, 3, 6), W = lq_rng_int(rng, 3, 6);
    int64_t KH = lq_rng_int(rng, 2, 3), KW = lq_rng_int(rng, 1, 3);
    int64_t sh = lq_rng_int(rng, 1, 2), sw = lq_rng_int(rng, 1, 2), ph = lq_rng_int(rng, 0, 1),
            pw = lq_rng_int(rng, 0, 1);
    if (lq_rng_int(rng, 0, 3) == 0) KH = KW = sh = sw = 1, ph = pw = 0;
    bool bias = lq_rng_int(rng, 0, 2) != 0;
    c->n_in = bias ? 3 : 2;
    c->in[0] = lq_gc_input(ctx, rng, 4, (int64_t[]){N, C, H, W}, -1, 1);
    c->in[1] = lq_gc_input(ctx, rng, 4, (int64_t[]){O, C, KH, KW}, -1, 1);
    if (bias) c->in[2] = lq_gc_input(ctx, rng, 1, (int64_t[]){O}, -1, 1);
    c->ip[0] = sh;
    c->ip[1] = sw;
    c->ip[2] = ph;
    c->ip[3] = pw;
    c->call = gc_call;
    snprintf(c->desc, sizeof c->desc, "x (%lld, %lld, %lld, %lld) w (%lld, %lld, %lld, %lld) s %lldx%lld p %lldx%lld%s",
             (long long)N, (long long)C, (long long)H, (long long)W, (long long)O, (long long)C, (long long)KH,
             (long long)KW, (long long)sh, (long long)sw, (long long)ph, (long long)pw, bias ? " bias" : "");
    return ctx->err.status;
}

const lq_op_def lq_op_conv2d = {"conv2d", fwd, bwd, gc_make};

lq_tensor *lq_conv2d(lq_ctx *ctx, lq_tensor *x, lq_tensor *weight, lq_tensor *bias, const lq_conv2d_params *p) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!lq_check_f32(ctx, "conv2d", "x", x) || !lq_check_f32(ctx, "conv2d", "weight", weight)) return NULL;
    if (bias && !lq_check_f32(ctx, "conv2d", "bias", bias)) return NULL;
    lq_conv2d_params q = p ? *p : (lq_conv2d_params){0};
    LQ_OP_CHECK(ctx, q.stride_h >= 0 && q.stride_w >= 0 && q.pad_h >= 0 && q.pad_w >= 0, LQ_ERR_ARG,
                "conv2d: stride (%d, %d) and padding (%d, %d) must not be negative", q.stride_h, q.stride_w,
                q.pad_h, q.pad_w);
    int64_t sh = q.stride_h ? q.stride_h : 1, sw = q.stride_w ? q.stride_w : 1;
    if (x->ndim != 4 || weight->ndim != 4)
        return lq_shape_error(ctx, "conv2d", x, weight, "do not fit: x must be (N, C, H, W), weight (O, C, KH, KW)");
    int64_t N = x->ne[0], C = x->ne[1], H = x->ne[2], W = x->ne[3];
    int64_t O = weight->ne[0], KH = weight->ne[2], KW = weight->ne[3];
    char what[160];
    if (weight->ne[1] != C) {
        snprintf(what, sizeof what, "do not fit: x has %lld channels, weight expects %lld", (long long)C,
                 (long long)weight->ne[1]);
        return lq_shape_error(ctx, "conv2d", x, weight, what);
    }
    if (C < 1 || H < 1 || W < 1 || O < 1 || KH < 1 || KW < 1)
        return lq_shape_error(ctx, "conv2d", x, weight, "do not fit: channel, spatial and kernel sizes must be >= 1");
    if (H + 2 * (int64_t)q.pad_h < KH || W + 2 * (int64_t)q.pad_w < KW) {
        snprintf(what, sizeof what, "do not fit: kernel %lldx%lld is larger than the padded input %lldx%lld",
                 (long long)KH, (long long)KW, (long long)(H + 2 * (int64_t)q.pad_h),
                 (long long)(W + 2 * (int64_t)q.pad_w));
        return lq_shape_error(ctx, "conv2d", x, weight, what);
    }
    if (bias && (bias->ndim != 1 || bias->ne[0] != O))
        return lq_shape_error(ctx, "conv2d", weight, bias, "do not fit: bias must be (O) for weight (O, C, KH, KW)");
    int64_t OH = (H + 2 * (int64_t)q.pad_h - KH) / sh + 1, OW = (W + 2 * (int64_t)q.pad_w - KW) / sw + 1;
    LQ_OP_CHECK(ctx, O < INT32_MAX && C * KH * KW < INT32_MAX && OH * OW < INT32_MAX, LQ_ERR_UNSUPPORTED,
                "conv2d: dimensions beyond sgemm's int range");
    x = lq_contiguous(ctx, x);
    weight = lq_contiguous(ctx, weight);
    if (bias) bias = lq_contiguous(ctx, bias);
    lq_tensor *in[3] = {x, weight, bias};
    lq_node *n = lq_node_begin(ctx, &lq_op_conv2d, bias ? 3 : 2, in);
    if (!n) return NULL;
    n->ip[0] = sh;
    n->ip[1] = sw;
    n->ip[2] = q.pad_h;
    n->ip[3] = q.pad_w;
    if (!lq_node_output(ctx, n, 4, (int64_t[]){N, O, OH, OW})) return NULL;
    return lq_node_finish(ctx, n);
}
