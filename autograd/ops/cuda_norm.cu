/* autograd/ops/cuda_norm.cu: CUDA kernels of the normalization ops (forward and backward), beside
 * their CPU files op_rmsnorm.c and op_layernorm.c: one block per row, the row sums in double where
 * the CPU sums in double, the weight (and bias) gradients summed over row chunks. */
#include <math.h>

#include "autograd/cuda_impl.h"
#include "autograd/ops/cuda_block.cuh"
#include "autograd/ops/cuda_loop.cuh"
#include "core/cuda_check.h"

/* one block per row: blocks loop over rows, so every thread of a block runs the same iterations
 * and the __syncthreads inside the reductions are reached by all of them */
#define FOR_ROWS(r, R) for (int64_t r = blockIdx.x; r < (R); r += gridDim.x)

static unsigned row_blocks(int64_t R) { return (unsigned)(R < 1 ? 1 : R > 65535 * 8 ? 65535 * 8 : R); }

static cudaStream_t stream_of(lq_ctx *ctx) { return (cudaStream_t)lq_cuda_stream(ctx); }

/* --- rmsnorm: x (R, C), w (C) or none; saved[0] rstd (R) on the device --------------------------- */

/* V consecutive floats at p into v (V 4: one 16-byte load; p aligned) and back */
template <int V> static __device__ __forceinline__ void ld(float *v, const float *p) {
    if (V == 4) {
        const float4 q = *(const float4 *)p;
        v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
    } else {
        for (int e = 0; e < V; e++) v[e] = p[e];
    }
}

template <int V> static __device__ __forceinline__ void st(float *p, const float *v) {
    if (V == 4) *(float4 *)p = make_float4(v[0], v[1], v[2], v[3]);
    else
        for (int e = 0; e < V; e++) p[e] = v[e];
}

/* The rmsnorm row kernels take V consecutive elements per thread step: V 4 when C % 4 == 0 and
 * every row pointer is 16-byte aligned (aligned4 with m = C), else 1. In a Llama step they run on
 * every block's residual stream (C = hidden), twice per layer forward and backward. */
#define ROW_LOOP(j, C, V) for (int64_t j = (int64_t)threadIdx.x * (V); j < (C); j += (int64_t)blockDim.x * (V))

/* rstd = 1 / sqrtf((float)(sum x^2 / C) + eps), the sum in double; y = w * (x * rstd) when y, and
 * (V 4) its bf16 copy into h at row stride ldh when h (lq_cuda_act_bf16_claim: the copy q, k and
 * v, or gate and up, read in bf16 math, written here instead of by a pass over y) */
template <int V>
__global__ static void k_rms_fwd(const float *x, const float *w, float *y, float *rstd, int64_t R, int64_t C,
                                 float eps, uint2 *h, int64_t ldh) {
    FOR_ROWS(r, R) {
        const float *xr = x + r * C;
        double acc = 0.0;
        ROW_LOOP(j, C, V) {
            float v[V];
            ld<V>(v, xr + j);
            for (int e = 0; e < V; e++) acc += (double)v[e] * (double)v[e];
        }
        acc = block_sum(acc);
        float ms = C > 0 ? (float)(acc / (double)C) : 0.0f;
        float s = 1.0f / sqrtf(ms + eps);
        if (rstd && threadIdx.x == 0) rstd[r] = s;
        if (y)
            ROW_LOOP(j, C, V) {
                float v[V], wv[V], o[V];
                ld<V>(v, xr + j);
                if (w) ld<V>(wv, w + j);
                for (int e = 0; e < V; e++) {
                    float h = v[e] * s;
                    o[e] = w ? wv[e] * h : h;
                }
                st<V>(y + r * C + j, o);
                if constexpr (V == 4)
                    if (h) h[(r * ldh + j) / 4] = bf16x4(make_float4(o[0], o[1], o[2], o[3]));
            }
    }
}

/* dx_k += r w_k dy_k - (r^3 / C) x_k sum_j dy_j w_j x_j (see op_rmsnorm.c) */
template <int V>
__global__ static void k_rms_bwd_x(const float *x, const float *w, const float *gy, const float *rstd, float *gx,
                                   int64_t R, int64_t C) {
    FOR_ROWS(r, R) {
        const float *xr = x + r * C, *gr = gy + r * C;
        float s = rstd[r];
        double dot = 0.0;
        ROW_LOOP(j, C, V) {
            float xv[V], gv[V], wv[V];
            ld<V>(xv, xr + j);
            ld<V>(gv, gr + j);
            if (w) ld<V>(wv, w + j);
            for (int e = 0; e < V; e++) dot += (double)gv[e] * (w ? wv[e] : 1.0f) * xv[e];
        }
        dot = block_sum(dot);
        float coef = (float)((double)s * s * s * dot / (double)C);
        ROW_LOOP(j, C, V) {
            float xv[V], gv[V], wv[V], o[V];
            ld<V>(xv, xr + j);
            ld<V>(gv, gr + j);
            ld<V>(o, gx + r * C + j);
            if (w) ld<V>(wv, w + j);
            for (int e = 0; e < V; e++) o[e] += s * (w ? wv[e] : 1.0f) * gv[e] - coef * xv[e];
            st<V>(gx + r * C + j, o);
        }
    }
}

/* Weight (and bias) gradients summed over rows: block (cx, cy) sums rows [cy * ROWS_PER, ...) of
 * its columns in double, then adds its partial to the gradient atomically. mean == NULL: rmsnorm
 * (dw += dy x rstd); else layernorm (dw += dy (x - mean) rstd, db += dy). */
#define ROWS_PER 64
__global__ static void k_norm_bwd_w(const float *x, const float *gy, const float *mean, const float *rstd, float *gw,
                                    float *gb, int64_t R, int64_t C) {
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= C) return;
    int64_t r0 = (int64_t)blockIdx.y * ROWS_PER, r1 = r0 + ROWS_PER < R ? r0 + ROWS_PER : R;
    double aw = 0.0, ab = 0.0;
    for (int64_t r = r0; r < r1; r++) {
        float g = gy[r * C + j], xv = x[r * C + j];
        if (mean) {
            aw += (double)g * ((xv - mean[r]) * rstd[r]);
            ab += g;
        } else {
            aw += (double)g * xv * rstd[r];
        }
    }
    if (gw) atomicAdd(gw + j, (float)aw);
    if (gb) atomicAdd(gb + j, (float)ab);
}

static lq_status norm_bwd_w(lq_ctx *ctx, const float *x, const float *gy, const float *mean, const float *rstd,
                            float *gw, float *gb, int64_t R, int64_t C) {
    if (R == 0 || C == 0 || (!gw && !gb)) return LQ_OK;
    int64_t chunks = (R + ROWS_PER - 1) / ROWS_PER;
    for (int64_t c0 = 0; c0 < chunks; c0 += 65535) { /* gridDim.y is at most 65535 */
        int64_t nc = chunks - c0 < 65535 ? chunks - c0 : 65535;
        dim3 grid((unsigned)((C + LQ_CUDA_THREADS - 1) / LQ_CUDA_THREADS), (unsigned)nc);
        int64_t off = c0 * ROWS_PER;
        k_norm_bwd_w<<<grid, LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(x + off * C, gy + off * C,
                                                                   mean ? mean + off : NULL, rstd + off, gw, gb,
                                                                   R - off, C);
        LQ_CUDA_LAUNCHED(ctx, "norm weight backward");
    }
    return LQ_OK;
}

static void rows_of(const lq_tensor *xt, int64_t *R, int64_t *C) {
    *C = xt->ne[xt->ndim - 1];
    *R = *C > 0 ? lq_numel(xt) / *C : 0;
}

static lq_status rmsnorm_fwd(lq_ctx *ctx, lq_node *n) {
    int64_t R, C;
    rows_of(n->in[0], &R, &C);
    float *rstd = NULL;
    n->saved[0] = NULL;
    if (n->recorded) {
        rstd = (float *)lq_ctx_dalloc(ctx, (size_t)(R > 0 ? R : 1) * sizeof(float));
        if (!rstd) return ctx->err.status;
        n->saved[0] = rstd;
    }
    if (R == 0) return LQ_OK;
    const float *x = (const float *)n->in[0]->data, *w = n->ip[0] ? (const float *)n->in[1]->data : NULL;
    float *y = (float *)n->out->data;
    const void *ptrs[3] = {x, w, y};
    const bool v4 = aligned4(C, ptrs, 3);
    int64_t ldh = 0;
    void *h = NULL; /* y's bf16 copy for the bf16 products that read y (q / k / v; gate / up) */
    if (v4 && ctx->cuda_math == LQ_CUDA_MATH_BF16 && !(h = lq_cuda_act_bf16_claim(ctx, n, &ldh)) &&
        ctx->err.status != LQ_OK)
        return ctx->err.status; /* no room for the copy */
    if (v4)
        k_rms_fwd<4><<<row_blocks(R), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(x, w, y, rstd, R, C, n->fp[0], (uint2 *)h,
                                                                           ldh);
    else
        k_rms_fwd<1><<<row_blocks(R), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(x, w, y, rstd, R, C, n->fp[0], NULL, 0);
    LQ_CUDA_LAUNCHED(ctx, "rmsnorm forward");
    return LQ_OK;
}

static lq_status rmsnorm_bwd(lq_ctx *ctx, lq_node *n) {
    int64_t R, C;
    rows_of(n->in[0], &R, &C);
    bool has_w = n->ip[0] != 0;
    float *gx, *gw = NULL;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (has_w) LQ_TRY(lq_grad_get(ctx, n->in[1], &gw));
    if ((!gx && !gw) || R == 0) return LQ_OK;
    const float *x = (const float *)n->in[0]->data, *w = has_w ? (const float *)n->in[1]->data : NULL;
    const float *gy = (const float *)n->out->grad->data;
    float *rstd = (float *)n->saved[0];
    const void *ptrs[4] = {x, w, gy, gx};
    const bool v4 = aligned4(C, ptrs, 4);
    if (!rstd) { /* not saved: recompute */
        rstd = (float *)lq_ctx_dalloc(ctx, (size_t)R * sizeof(float));
        if (!rstd) return ctx->err.status;
        if (v4)
            k_rms_fwd<4><<<row_blocks(R), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(x, NULL, NULL, rstd, R, C, n->fp[0],
                                                                               NULL, 0);
        else
            k_rms_fwd<1><<<row_blocks(R), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(x, NULL, NULL, rstd, R, C, n->fp[0],
                                                                               NULL, 0);
        LQ_CUDA_LAUNCHED(ctx, "rmsnorm stats");
    }
    if (gx) {
        if (v4) k_rms_bwd_x<4><<<row_blocks(R), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(x, w, gy, rstd, gx, R, C);
        else k_rms_bwd_x<1><<<row_blocks(R), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(x, w, gy, rstd, gx, R, C);
        LQ_CUDA_LAUNCHED(ctx, "rmsnorm backward");
    }
    return norm_bwd_w(ctx, x, gy, NULL, rstd, gw, NULL, R, C);
}

/* --- layernorm: x (R, C), in[ip[0]] weight, in[ip[1]] bias (-1 absent); saved mean, rstd (R) ---- */

/* mean and rstd = 1 / sqrt(var + eps) by two passes in double; y = (x - mean) rstd w + b when y */
__global__ static void k_ln_fwd(const float *x, const float *w, const float *b, float *y, float *mean_out,
                                float *rstd_out, int64_t R, int64_t C, float eps) {
    FOR_ROWS(r, R) {
        const float *xr = x + r * C;
        double s = 0.0;
        for (int64_t j = threadIdx.x; j < C; j += blockDim.x) s += xr[j];
        s = block_sum(s);
        double mu = C > 0 ? s / (double)C : 0.0;
        double v = 0.0;
        for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
            double d = (double)xr[j] - mu;
            v += d * d;
        }
        v = block_sum(v);
        v = C > 0 ? v / (double)C : 0.0;
        float m = (float)mu, rs = (float)(1.0 / sqrt(v + (double)eps));
        if (threadIdx.x == 0) {
            if (mean_out) mean_out[r] = m;
            if (rstd_out) rstd_out[r] = rs;
        }
        if (y)
            for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
                float h = (xr[j] - m) * rs;
                if (w) h *= w[j];
                if (b) h += b[j];
                y[r * C + j] = h;
            }
    }
}

/* dx_k += r (g_k - mean_j g_j - h_k mean_j (g_j h_j)), g = dy w (see op_layernorm.c) */
__global__ static void k_ln_bwd_x(const float *x, const float *w, const float *gy, const float *mean,
                                  const float *rstd, float *gx, int64_t R, int64_t C) {
    FOR_ROWS(r, R) {
        const float *xr = x + r * C, *gr = gy + r * C;
        float mu = mean[r], s = rstd[r];
        double sg = 0.0, sgh = 0.0;
        for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
            double g = (double)gr[j] * (w ? w[j] : 1.0f);
            sg += g;
            sgh += g * ((xr[j] - mu) * s);
        }
        sg = block_sum(sg);
        sgh = block_sum(sgh);
        float mg = (float)(sg / (double)C), mgh = (float)(sgh / (double)C);
        for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
            float h = (xr[j] - mu) * s;
            float g = gr[j] * (w ? w[j] : 1.0f);
            gx[r * C + j] += s * (g - mg - h * mgh);
        }
    }
}

static lq_status layernorm_fwd(lq_ctx *ctx, lq_node *n) {
    int64_t R, C;
    rows_of(n->in[0], &R, &C);
    const float *w = n->ip[0] >= 0 ? (const float *)n->in[n->ip[0]]->data : NULL;
    const float *b = n->ip[1] >= 0 ? (const float *)n->in[n->ip[1]]->data : NULL;
    float *mean = NULL, *rstd = NULL;
    n->saved[0] = n->saved[1] = NULL;
    if (n->recorded) {
        size_t bytes = (size_t)(R > 0 ? R : 1) * sizeof(float);
        mean = (float *)lq_ctx_dalloc(ctx, bytes);
        rstd = mean ? (float *)lq_ctx_dalloc(ctx, bytes) : NULL;
        if (!rstd) return ctx->err.status;
        n->saved[0] = mean;
        n->saved[1] = rstd;
    }
    if (R == 0) return LQ_OK;
    k_ln_fwd<<<row_blocks(R), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>((const float *)n->in[0]->data, w, b,
                                                                     (float *)n->out->data, mean, rstd, R, C,
                                                                     n->fp[0]);
    LQ_CUDA_LAUNCHED(ctx, "layernorm forward");
    return LQ_OK;
}

static lq_status layernorm_bwd(lq_ctx *ctx, lq_node *n) {
    int64_t R, C;
    rows_of(n->in[0], &R, &C);
    const float *x = (const float *)n->in[0]->data;
    const float *w = n->ip[0] >= 0 ? (const float *)n->in[n->ip[0]]->data : NULL;
    const float *gy = (const float *)n->out->grad->data;
    float *gx, *gw = NULL, *gb = NULL;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (n->ip[0] >= 0) LQ_TRY(lq_grad_get(ctx, n->in[n->ip[0]], &gw));
    if (n->ip[1] >= 0) LQ_TRY(lq_grad_get(ctx, n->in[n->ip[1]], &gb));
    if ((!gx && !gw && !gb) || R == 0) return LQ_OK;
    float *mean = (float *)n->saved[0], *rstd = (float *)n->saved[1];
    if (!mean || !rstd) { /* not saved: recompute */
        mean = (float *)lq_ctx_dalloc(ctx, (size_t)R * sizeof(float));
        rstd = mean ? (float *)lq_ctx_dalloc(ctx, (size_t)R * sizeof(float)) : NULL;
        if (!rstd) return ctx->err.status;
        k_ln_fwd<<<row_blocks(R), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(x, NULL, NULL, NULL, mean, rstd, R, C,
                                                                         n->fp[0]);
        LQ_CUDA_LAUNCHED(ctx, "layernorm stats");
    }
    if (gx) {
        k_ln_bwd_x<<<row_blocks(R), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(x, w, gy, mean, rstd, gx, R, C);
        LQ_CUDA_LAUNCHED(ctx, "layernorm backward");
    }
    return norm_bwd_w(ctx, x, gy, mean, rstd, gw, gb, R, C);
}

extern "C" const lq_cuda_op lq_cuda_ops_norm[] = {
    {"rmsnorm", rmsnorm_fwd, rmsnorm_bwd},
    {"layernorm", layernorm_fwd, layernorm_bwd},
    {NULL, NULL, NULL},
};
