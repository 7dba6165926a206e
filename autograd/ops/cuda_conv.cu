/* autograd/ops/cuda_conv.cu: CUDA kernels of the conv ops (forward and backward), beside their CPU files. */
#include <cmath>
#include <cstdint>

#include "autograd/cuda_impl.h"
extern "C" {
#include "autograd/pool2d.h"
}
#include "core/cuda_check.h"

/* The CPU files are the reference: op_conv2d.c (im2col + sgemm, no groups or dilation: the op has
 * neither), op_max_pool2d.c, op_avg_pool2d.c, autograd/pool2d.c. Every input is contiguous (the
 * entry functions make it so) and every gradient is contiguous in its tensor's shape. Scatters
 * of the CPU code (col2im, the pools' backward) are written here as gathers, one thread per input
 * element adding its terms in the CPU's order, so no atomics are needed and the adds round as the
 * CPU's do. */

#define FOR_EACH(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

static cudaStream_t stream_of(lq_ctx *ctx) { return (cudaStream_t)lq_cuda_stream(ctx); }

static lq_status oom(lq_ctx *ctx) { return ctx->err.status ? ctx->err.status : LQ_ERR_OOM; }

/* --- conv2d ---------------------------------------------------------------------------------------- */

/* x (N, C, H, W), weight (O, C, KH, KW), y (N, O, OH, OW); K = C KH KW rows of the column matrix,
 * P = OH OW positions (op_conv2d.c's geom). */
typedef struct conv_geom {
    int64_t N, C, H, W, O, KH, KW, OH, OW, sh, sw, ph, pw, K, P;
} conv_geom;

static conv_geom conv_geom_of(const lq_node *n) {
    const lq_tensor *x = n->in[0], *w = n->in[1], *y = n->out;
    conv_geom g;
    g.N = x->ne[0], g.C = x->ne[1], g.H = x->ne[2], g.W = x->ne[3];
    g.O = w->ne[0], g.KH = w->ne[2], g.KW = w->ne[3];
    g.OH = y->ne[2], g.OW = y->ne[3];
    g.sh = n->ip[0], g.sw = n->ip[1], g.ph = n->ip[2], g.pw = n->ip[3];
    g.K = g.C * g.KH * g.KW;
    g.P = g.OH * g.OW;
    return g;
}

/* A 1x1 kernel with stride 1 and no padding: x_n (C, H W) is its own column matrix. */
static bool is_pointwise(const conv_geom *g) {
    return g->KH == 1 && g->KW == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0;
}

/* Samples per im2col batch: the column buffer holds at most about 2^22 floats (16 MiB), or one
 * sample's K P when that is larger. It lives in the step's device arena, as the CPU's col does. */
static int64_t conv_chunk(const conv_geom *g) {
    int64_t kp = g->K * g->P > 0 ? g->K * g->P : 1;
    int64_t c = ((int64_t)1 << 22) / kp;
    if (c < 1) c = 1;
    return c < g->N ? c : g->N;
}

/* col (ns, K, P) for samples x (ns, C, H, W): col[s, (c, kh, kw), (oh, ow)] =
 * x[s, c, oh sh - ph + kh, ow sw - pw + kw], 0 in the padding. One thread per col element. */
__global__ static void k_im2col(const float *x, float *col, int64_t ns, conv_geom g) {
    const int64_t kp = g.K * g.P, total = ns * kp;
    FOR_EACH(i, total) {
        int64_t s = i / kp, r = i % kp;
        int64_t k = r / g.P, p = r % g.P;
        int64_t c = k / (g.KH * g.KW), kh = (k / g.KW) % g.KH, kw = k % g.KW;
        int64_t oh = p / g.OW, ow = p % g.OW;
        int64_t ih = oh * g.sh - g.ph + kh, iw = ow * g.sw - g.pw + kw;
        col[i] = (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) ? x[((s * g.C + c) * g.H + ih) * g.W + iw] : 0.0f;
    }
}

/* The adjoint of im2col as a gather: dx[s, c, ih, iw] += dcol[s, (c, kh, kw), (oh, ow)] over every
 * (kh, kw) whose (oh, ow) = ((ih + ph - kh) / sh, (iw + pw - kw) / sw) divides exactly and lies in
 * the output; added one by one in (kh, kw) order, as op_conv2d.c's col2im_add adds them. */
__global__ static void k_col2im_add(const float *dcol, float *dx, int64_t ns, conv_geom g) {
    const int64_t hw = g.H * g.W, total = ns * g.C * hw;
    FOR_EACH(i, total) {
        int64_t iw = i % g.W, ih = (i / g.W) % g.H, c = (i / hw) % g.C, s = i / (hw * g.C);
        const float *ds = dcol + s * g.K * g.P;
        float v = dx[i];
        for (int64_t kh = 0; kh < g.KH; kh++) {
            int64_t t = ih + g.ph - kh; /* = oh sh */
            if (t < 0 || t % g.sh != 0 || t / g.sh >= g.OH) continue;
            int64_t oh = t / g.sh;
            for (int64_t kw = 0; kw < g.KW; kw++) {
                int64_t u = iw + g.pw - kw; /* = ow sw */
                if (u < 0 || u % g.sw != 0 || u / g.sw >= g.OW) continue;
                v += ds[((c * g.KH + kh) * g.KW + kw) * g.P + oh * g.OW + u / g.sw];
            }
        }
        dx[i] = v;
    }
}

/* y[s, o, p] += bias[o] (after the product, as the CPU adds it) */
__global__ static void k_bias_add(float *y, const float *bias, int64_t total, int64_t O, int64_t P) {
    FOR_EACH(i, total) y[i] += bias[(i / P) % O];
}

/* db[o] += sum over s and p of dy[s, o, p]: one block per o, in double, a shared-memory tree. */
__global__ static void k_bias_grad(const float *gy, float *gb, int64_t N, int64_t O, int64_t P) {
    __shared__ double sh[LQ_CUDA_THREADS];
    const int tid = (int)threadIdx.x;
    for (int64_t o = blockIdx.x; o < O; o += gridDim.x) { /* uniform across the block */
        double acc = 0.0;
        for (int64_t e = tid; e < N * P; e += blockDim.x) acc += (double)gy[((e / P) * O + o) * P + e % P];
        sh[tid] = acc;
        __syncthreads();
        for (int s = LQ_CUDA_THREADS / 2; s > 0; s >>= 1) {
            if (tid < s) sh[tid] += sh[tid + s];
            __syncthreads();
        }
        if (tid == 0) gb[o] += (float)sh[0];
        __syncthreads(); /* sh[0] read before the next o overwrites sh */
    }
}

/* y_s (O, P) = W (O, K) col_s (K, P) (+ bias), a strided-batched gemm over a chunk of samples with
 * W shared (stride 0). */
static lq_status conv_fwd(lq_ctx *ctx, lq_node *n) {
    conv_geom g = conv_geom_of(n);
    if (g.N == 0) return LQ_OK;
    const float *x = (const float *)n->in[0]->data, *w = (const float *)n->in[1]->data;
    const float *bias = n->n_in > 2 ? (const float *)n->in[2]->data : NULL;
    float *y = (float *)n->out->data;
    const bool pointwise = is_pointwise(&g);
    const int64_t chunk = conv_chunk(&g), chw = g.C * g.H * g.W;
    float *col = NULL;
    if (!pointwise && !(col = (float *)lq_ctx_dalloc(ctx, (size_t)(chunk * g.K * g.P) * sizeof(float))))
        return oom(ctx);
    for (int64_t s0 = 0; s0 < g.N; s0 += chunk) {
        int64_t ns = g.N - s0 < chunk ? g.N - s0 : chunk;
        const float *xs = x + s0 * chw, *b = xs;
        if (!pointwise) {
            k_im2col<<<lq_cuda_blocks(ns * g.K * g.P), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(xs, col, ns, g);
            LQ_CUDA_LAUNCHED(ctx, "conv2d im2col");
            b = col;
        }
        LQ_TRY(lq_cuda_gemm(ctx, false, false, g.O, g.P, g.K, 1.0f, w, g.K, 0, b, g.P, g.K * g.P, 0.0f,
                            y + s0 * g.O * g.P, g.P, g.O * g.P, ns));
    }
    if (bias) {
        int64_t total = g.N * g.O * g.P;
        k_bias_add<<<lq_cuda_blocks(total), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(y, bias, total, g.O, g.P);
        LQ_CUDA_LAUNCHED(ctx, "conv2d bias");
    }
    return LQ_OK;
}

/* op_conv2d.c's derivation, per sample s:
 *   dW (O, K)  += dY_s (O, P) col_s^T (P, K)    (one gemm per sample, beta = 1, in sample order);
 *   dcol (K, P) = W^T (K, O) dY_s (O, P)        (batched over a chunk), dx_s += col2im(dcol);
 *   db[o]      += sum over s and p of dY_s[o, p].
 * Pointwise: col_s = x_s, and dx_s += W^T dY_s straight into the gradient (beta = 1). */
static lq_status conv_bwd(lq_ctx *ctx, lq_node *n) {
    conv_geom g = conv_geom_of(n);
    float *gx, *gw, *gb = NULL;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    LQ_TRY(lq_grad_get(ctx, n->in[1], &gw));
    if (n->n_in > 2) LQ_TRY(lq_grad_get(ctx, n->in[2], &gb));
    if (g.N == 0) return LQ_OK;
    const float *x = (const float *)n->in[0]->data, *w = (const float *)n->in[1]->data;
    const float *gy = (const float *)n->out->grad->data;
    const bool pointwise = is_pointwise(&g);
    const int64_t chunk = conv_chunk(&g), chw = g.C * g.H * g.W, kp = g.K * g.P;
    float *col = NULL, *dcol = NULL;
    if (!pointwise) {
        if (gw && !(col = (float *)lq_ctx_dalloc(ctx, (size_t)(chunk * kp) * sizeof(float)))) return oom(ctx);
        if (gx && !(dcol = (float *)lq_ctx_dalloc(ctx, (size_t)(chunk * kp) * sizeof(float)))) return oom(ctx);
    }
    for (int64_t s0 = 0; s0 < g.N; s0 += chunk) {
        int64_t ns = g.N - s0 < chunk ? g.N - s0 : chunk;
        const float *xs = x + s0 * chw, *dys = gy + s0 * g.O * g.P;
        if (gw) {
            const float *cs = xs;
            if (!pointwise) {
                k_im2col<<<lq_cuda_blocks(ns * kp), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(xs, col, ns, g);
                LQ_CUDA_LAUNCHED(ctx, "conv2d im2col");
                cs = col;
            }
            for (int64_t s = 0; s < ns; s++)
                LQ_TRY(lq_cuda_gemm(ctx, false, true, g.O, g.K, g.P, 1.0f, dys + s * g.O * g.P, g.P, 0, cs + s * kp,
                                    g.P, 0, 1.0f, gw, g.K, 0, 1));
        }
        if (gx) {
            float *dxs = gx + s0 * chw;
            if (pointwise) {
                LQ_TRY(lq_cuda_gemm(ctx, true, false, g.K, g.P, g.O, 1.0f, w, g.K, 0, dys, g.P, g.O * g.P, 1.0f, dxs,
                                    g.P, chw, ns));
            } else {
                LQ_TRY(lq_cuda_gemm(ctx, true, false, g.K, g.P, g.O, 1.0f, w, g.K, 0, dys, g.P, g.O * g.P, 0.0f, dcol,
                                    g.P, kp, ns));
                int64_t total = ns * chw;
                k_col2im_add<<<lq_cuda_blocks(total), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(dcol, dxs, ns, g);
                LQ_CUDA_LAUNCHED(ctx, "conv2d col2im");
            }
        }
    }
    if (gb) {
        k_bias_grad<<<(unsigned)(g.O < 65535 ? g.O : 65535), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(gy, gb, g.N, g.O,
                                                                                                     g.P);
        LQ_CUDA_LAUNCHED(ctx, "conv2d bias grad");
    }
    return LQ_OK;
}

/* --- pools ----------------------------------------------------------------------------------------- */

/* Index (ih W + iw) in its plane of the largest element of window (oh, ow): the first in
 * row-major window order on ties, a NaN wins (op_max_pool2d.c's window_argmax). Every window
 * holds at least one input element since pad <= kernel / 2. */
__device__ static int32_t window_argmax(const float *plane, const lq_pool2d_geom &g, int64_t oh, int64_t ow) {
    int64_t h0 = oh * g.sh - g.ph, w0 = ow * g.sw - g.pw;
    int64_t best = -1;
    float bv = -INFINITY;
    for (int64_t ih = h0 < 0 ? 0 : h0; ih < h0 + g.kh && ih < g.H; ih++)
        for (int64_t iw = w0 < 0 ? 0 : w0; iw < w0 + g.kw && iw < g.W; iw++) {
            float v = plane[ih * g.W + iw];
            if (best < 0 || v > bv || (isnan(v) && !isnan(bv))) {
                best = ih * g.W + iw;
                bv = v;
            }
        }
    return (int32_t)best;
}

/* The windows covering input row ih: oh in [lo, hi] with oh sh - ph <= ih < oh sh - ph + kh,
 * clipped to [0, OH). Empty when lo > hi. */
__device__ static void covering(int64_t i, int64_t pad, int64_t k, int64_t stride, int64_t nout, int64_t *lo,
                                int64_t *hi) {
    int64_t t = i + pad; /* >= 0 */
    int64_t h = t / stride, l = t - k + 1;
    *lo = l <= 0 ? 0 : (l + stride - 1) / stride;
    *hi = h < nout - 1 ? h : nout - 1;
}

/* The in-bounds part [h0, h1) x [w0, w1) of window (oh, ow) (op_avg_pool2d.c's window_of). */
__device__ static void window_of(const lq_pool2d_geom &g, int64_t oh, int64_t ow, int64_t *h0, int64_t *h1,
                                 int64_t *w0, int64_t *w1) {
    *h0 = oh * g.sh - g.ph;
    *w0 = ow * g.sw - g.pw;
    *h1 = *h0 + g.kh < g.H ? *h0 + g.kh : g.H;
    *w1 = *w0 + g.kw < g.W ? *w0 + g.kw : g.W;
    if (*h0 < 0) *h0 = 0;
    if (*w0 < 0) *w0 = 0;
}

/* one thread per output element; arg (optional) keeps the argmax for backward */
__global__ static void k_max_pool(const float *x, float *y, int32_t *arg, lq_pool2d_geom g) {
    const int64_t per = g.OH * g.OW, total = g.N * g.C * per;
    FOR_EACH(i, total) {
        int64_t pl = i / per, o = i % per;
        const float *plane = x + pl * g.H * g.W;
        int32_t a = window_argmax(plane, g, o / g.OW, o % g.OW);
        y[i] = plane[a];
        if (arg) arg[i] = a;
    }
}

/* dx[argmax(o)] += dy[o], as a gather: one thread per input element adds dy of every covering
 * window whose argmax it is, windows in increasing o (the CPU's order). arg NULL: recomputed. */
__global__ static void k_max_pool_bwd(const float *x, const float *gy, const int32_t *arg, float *gx,
                                      lq_pool2d_geom g) {
    const int64_t per = g.OH * g.OW, hw = g.H * g.W, total = g.N * g.C * hw;
    FOR_EACH(i, total) {
        int64_t pl = i / hw, r = i % hw, ih = r / g.W, iw = r % g.W;
        int64_t oh0, oh1, ow0, ow1;
        covering(ih, g.ph, g.kh, g.sh, g.OH, &oh0, &oh1);
        covering(iw, g.pw, g.kw, g.sw, g.OW, &ow0, &ow1);
        const float *dy = gy + pl * per;
        float v = gx[i];
        for (int64_t oh = oh0; oh <= oh1; oh++)
            for (int64_t ow = ow0; ow <= ow1; ow++) {
                int64_t o = oh * g.OW + ow;
                int32_t a = arg ? arg[pl * per + o] : window_argmax(x + pl * hw, g, oh, ow);
                if (a == (int32_t)r) v += dy[o];
            }
        gx[i] = v;
    }
}

static lq_status max_pool_fwd(lq_ctx *ctx, lq_node *n) {
    lq_pool2d_geom g = lq_pool2d_geom_of(n);
    int64_t total = g.N * g.C * g.OH * g.OW;
    int32_t *arg = NULL;
    if (n->recorded) {
        arg = (int32_t *)lq_ctx_dalloc(ctx, (size_t)(total > 0 ? total : 1) * sizeof(int32_t));
        if (!arg) return oom(ctx);
        n->saved[0] = arg; /* device memory */
    }
    if (total == 0) return LQ_OK;
    k_max_pool<<<lq_cuda_blocks(total), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(
        (const float *)n->in[0]->data, (float *)n->out->data, arg, g);
    LQ_CUDA_LAUNCHED(ctx, "max_pool2d");
    return LQ_OK;
}

static lq_status max_pool_bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    lq_pool2d_geom g = lq_pool2d_geom_of(n);
    int64_t total = g.N * g.C * g.H * g.W;
    if (total == 0 || g.OH * g.OW == 0) return LQ_OK;
    k_max_pool_bwd<<<lq_cuda_blocks(total), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(
        (const float *)n->in[0]->data, (const float *)n->out->grad->data, (const int32_t *)n->saved[0], gx, g);
    LQ_CUDA_LAUNCHED(ctx, "max_pool2d backward");
    return LQ_OK;
}

/* y = sum of the window's in-bounds elements (row-major order) / their count */
__global__ static void k_avg_pool(const float *x, float *y, lq_pool2d_geom g) {
    const int64_t per = g.OH * g.OW, total = g.N * g.C * per;
    FOR_EACH(i, total) {
        int64_t pl = i / per, o = i % per;
        const float *plane = x + pl * g.H * g.W;
        int64_t h0, h1, w0, w1;
        window_of(g, o / g.OW, o % g.OW, &h0, &h1, &w0, &w1);
        float s = 0.0f;
        for (int64_t ih = h0; ih < h1; ih++)
            for (int64_t iw = w0; iw < w1; iw++) s += plane[ih * g.W + iw];
        y[i] = s / (float)((h1 - h0) * (w1 - w0));
    }
}

/* dx[ih, iw] += dy[o] / cnt(o) over the windows o covering it, in increasing o (the CPU's order). */
__global__ static void k_avg_pool_bwd(const float *gy, float *gx, lq_pool2d_geom g) {
    const int64_t per = g.OH * g.OW, hw = g.H * g.W, total = g.N * g.C * hw;
    FOR_EACH(i, total) {
        int64_t pl = i / hw, r = i % hw, ih = r / g.W, iw = r % g.W;
        int64_t oh0, oh1, ow0, ow1;
        covering(ih, g.ph, g.kh, g.sh, g.OH, &oh0, &oh1);
        covering(iw, g.pw, g.kw, g.sw, g.OW, &ow0, &ow1);
        const float *dy = gy + pl * per;
        float v = gx[i];
        for (int64_t oh = oh0; oh <= oh1; oh++)
            for (int64_t ow = ow0; ow <= ow1; ow++) {
                int64_t h0, h1, w0, w1;
                window_of(g, oh, ow, &h0, &h1, &w0, &w1);
                v += dy[oh * g.OW + ow] / (float)((h1 - h0) * (w1 - w0));
            }
        gx[i] = v;
    }
}

static lq_status avg_pool_fwd(lq_ctx *ctx, lq_node *n) {
    lq_pool2d_geom g = lq_pool2d_geom_of(n);
    int64_t total = g.N * g.C * g.OH * g.OW;
    if (total == 0) return LQ_OK;
    k_avg_pool<<<lq_cuda_blocks(total), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>((const float *)n->in[0]->data,
                                                                              (float *)n->out->data, g);
    LQ_CUDA_LAUNCHED(ctx, "avg_pool2d");
    return LQ_OK;
}

static lq_status avg_pool_bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    lq_pool2d_geom g = lq_pool2d_geom_of(n);
    int64_t total = g.N * g.C * g.H * g.W;
    if (total == 0 || g.OH * g.OW == 0) return LQ_OK;
    k_avg_pool_bwd<<<lq_cuda_blocks(total), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>((const float *)n->out->grad->data,
                                                                                  gx, g);
    LQ_CUDA_LAUNCHED(ctx, "avg_pool2d backward");
    return LQ_OK;
}

extern "C" const lq_cuda_op lq_cuda_ops_conv[] = {
    {"conv2d", conv_fwd, conv_bwd},
    {"max_pool2d", max_pool_fwd, max_pool_bwd},
    {"avg_pool2d", avg_pool_fwd, avg_pool_bwd},
    {NULL, NULL, NULL},
};
