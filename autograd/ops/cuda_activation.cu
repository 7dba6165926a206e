/* autograd/ops/cuda_activation.cu: CUDA kernels of the activation ops and dropout (forward and
 * backward), beside their CPU files op_relu.c, op_gelu.c, op_silu.c, op_swiglu.c and op_dropout.c,
 * formula for formula. Every input they read is contiguous (their entry functions call
 * lq_contiguous), every output and gradient is contiguous; backward accumulates (+=), or assigns a
 * fresh gradient. One coalesced grid-stride pass each. */
#include <math.h>

#include "autograd/cuda_impl.h"
#include "autograd/ops/cuda_loop.cuh"
#include "core/cuda_check.h"
#include "core/rng.h"

/* ============================== relu, gelu, silu, swiglu ======================================== */

__global__ static void k_relu(float *y, const float *x, int64_t m) {
    FOR_EACH(i, m) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

/* dx += dy where x > 0 (0 at the kink, as torch) */
__global__ static void k_relu_bwd(float *gx, const float *x, const float *gy, int64_t m) {
    FOR_EACH(i, m) if (x[i] > 0.0f) gx[i] += gy[i];
}

/* op_gelu.c's constants */
#define GELU_INV_SQRT2 0.70710678118654752440f     /* 1 / sqrt(2) */
#define GELU_INV_SQRT_2PI 0.39894228040143267794f  /* 1 / sqrt(2 pi) */
#define GELU_SQRT_2_OVER_PI 0.79788456080286535588f /* sqrt(2 / pi) */
#define GELU_TANH_C 0.044715f

/* tanh: y = x (1 + tanh(k (x + c x^3))) / 2; exact: y = x (1 + erf(x / sqrt 2)) / 2 */
__global__ static void k_gelu(float *y, const float *x, int tanh_mode, int64_t m) {
    if (tanh_mode) {
        FOR_EACH(i, m) {
            float v = x[i];
            float u = GELU_SQRT_2_OVER_PI * (v + GELU_TANH_C * v * v * v);
            y[i] = 0.5f * v * (1.0f + tanhf(u));
        }
    } else {
        FOR_EACH(i, m) y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * GELU_INV_SQRT2));
    }
}

/* tanh: dy/dx = (1 + t) / 2 + x (1 - t^2) k (1 + 3 c x^2) / 2; exact: Phi(x) + x phi(x) */
__global__ static void k_gelu_bwd(float *gx, const float *x, const float *gy, int tanh_mode, int64_t m) {
    if (tanh_mode) {
        FOR_EACH(i, m) {
            float v = x[i], v2 = v * v;
            float t = tanhf(GELU_SQRT_2_OVER_PI * (v + GELU_TANH_C * v2 * v));
            float d = 0.5f * (1.0f + t) +
                      0.5f * v * (1.0f - t * t) * GELU_SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_TANH_C * v2);
            gx[i] += gy[i] * d;
        }
    } else {
        FOR_EACH(i, m) {
            float v = x[i];
            float cdf = 0.5f * (1.0f + erff(v * GELU_INV_SQRT2));
            float pdf = GELU_INV_SQRT_2PI * expf(-0.5f * v * v);
            gx[i] += gy[i] * (cdf + v * pdf);
        }
    }
}

/* silu(x) = x / (1 + e^-x) */
__global__ static void k_silu(float *y, const float *x, int64_t m) {
    FOR_EACH(i, m) y[i] = x[i] / (1.0f + expf(-x[i]));
}

/* dx += dy s (1 + x (1 - s)), s = sigmoid(x) */
__global__ static void k_silu_bwd(float *gx, const float *x, const float *gy, int64_t m) {
    FOR_EACH(i, m) {
        float s = 1.0f / (1.0f + expf(-x[i]));
        gx[i] += gy[i] * s * (1.0f + x[i] * (1.0f - s));
    }
}

/* y = silu(gate) * up, one element */
__device__ static inline float swiglu1(float g, float u) { return g / (1.0f + expf(-g)) * u; }

/* one element of the backward: *dg = dy u s (1 + g (1 - s)), *du = dy g s, s = sigmoid(g) */
__device__ static inline void swiglu_bwd1(float g, float u, float gy, float *dg, float *du) {
    float s = 1.0f / (1.0f + expf(-g));
    *dg = gy * u * s * (1.0f + g * (1.0f - s));
    *du = gy * g * s;
}

__global__ static void k_swiglu(float *y, const float *g, const float *u, int64_t m) {
    FOR_EACH(i, m) y[i] = swiglu1(g[i], u[i]);
}

/* dgate += dy u s (1 + g (1 - s)), dup += dy g s; either grad may be NULL (not needed). A fresh
 * grad (lq_grad_get_fresh) is assigned instead (0 + v is v: the same bits). gg == gu (swiglu(x, x))
 * has fg true and fu false: assigned, then added to, in order. */
__global__ static void k_swiglu_bwd(float *gg, float *gu, const float *g, const float *u, const float *gy, int fg,
                                    int fu, int64_t m) {
    FOR_EACH(i, m) {
        float vg, vu;
        swiglu_bwd1(g[i], u[i], gy[i], &vg, &vu);
        if (gg) gg[i] = fg ? vg : gg[i] + vg;
        if (gu) gu[i] = fu ? vu : gu[i] + vu;
    }
}

/* The same two kernels four elements per thread step (float4 loads and stores), for m % 4 == 0 and
 * 16-byte aligned buffers (aligned4): the Llama MLP's swiglu moves 3 (forward) and 5 (backward)
 * floats per element, and one element per thread step kept the 1B bench step's forward at about
 * 2 TB/s. Per element the arithmetic and, for gg == gu, the order (assign, then add) are the
 * scalar kernels'. */
__global__ static void k_swiglu4(float4 *y, const float4 *g, const float4 *u, int64_t m4) {
    FOR_EACH(i, m4) {
        const float4 a = g[i], b = u[i];
        y[i] = make_float4(swiglu1(a.x, b.x), swiglu1(a.y, b.y), swiglu1(a.z, b.z), swiglu1(a.w, b.w));
    }
}

/* k_swiglu4 that also writes y's bf16 copy h (rows of K = 4 k4 values, row stride ldh; the bf16
 * QLoRA linear's x, lq_cuda_act_bf16_claim): the down projection reads it without a conversion
 * pass over y (at the 1B bench shape 67 MB read per layer) */
__global__ static void k_swiglu4_bf16(float4 *y, const float4 *g, const float4 *u, int64_t m4, uint2 *h, int64_t k4,
                                      int64_t ldh) {
    FOR_EACH(i, m4) {
        const float4 a = g[i], b = u[i];
        const float4 v = make_float4(swiglu1(a.x, b.x), swiglu1(a.y, b.y), swiglu1(a.z, b.z), swiglu1(a.w, b.w));
        y[i] = v;
        const int64_t row = i / k4, col = i - row * k4;
        h[row * (ldh / 4) + col] = bf16x4(v);
    }
}

__global__ static void k_swiglu_bwd4(float4 *gg, float4 *gu, const float4 *g, const float4 *u, const float4 *gy,
                                     int fg, int fu, int64_t m4) {
    FOR_EACH(i, m4) {
        const float4 a = g[i], b = u[i], d = gy[i];
        float4 vg, vu;
        swiglu_bwd1(a.x, b.x, d.x, &vg.x, &vu.x);
        swiglu_bwd1(a.y, b.y, d.y, &vg.y, &vu.y);
        swiglu_bwd1(a.z, b.z, d.z, &vg.z, &vu.z);
        swiglu_bwd1(a.w, b.w, d.w, &vg.w, &vu.w);
        if (gg) {
            if (!fg) {
                const float4 o = gg[i];
                vg = make_float4(o.x + vg.x, o.y + vg.y, o.z + vg.z, o.w + vg.w);
            }
            gg[i] = vg;
        }
        if (gu) {
            if (!fu) { /* read after gg's store: gu may be gg */
                const float4 o = gu[i];
                vu = make_float4(o.x + vu.x, o.y + vu.y, o.z + vu.z, o.w + vu.w);
            }
            gu[i] = vu;
        }
    }
}

static lq_status relu_fwd(lq_ctx *ctx, lq_node *n) {
    int64_t m = lq_numel(n->out);
    LAUNCH(ctx, "relu", k_relu, m, (float *)n->out->data, (const float *)n->in[0]->data, m);
    return LQ_OK;
}

static lq_status relu_bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    int64_t m = lq_numel(n->out);
    LAUNCH(ctx, "relu backward", k_relu_bwd, m, gx, (const float *)n->in[0]->data, (const float *)n->out->grad->data, m);
    return LQ_OK;
}

/* ip[0] = LQ_GELU_EXACT or LQ_GELU_TANH */
static lq_status gelu_fwd(lq_ctx *ctx, lq_node *n) {
    int64_t m = lq_numel(n->out);
    LAUNCH(ctx, "gelu", k_gelu, m, (float *)n->out->data, (const float *)n->in[0]->data, n->ip[0] == LQ_GELU_TANH ? 1 : 0,
           m);
    return LQ_OK;
}

static lq_status gelu_bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    int64_t m = lq_numel(n->out);
    LAUNCH(ctx, "gelu backward", k_gelu_bwd, m, gx, (const float *)n->in[0]->data, (const float *)n->out->grad->data,
           n->ip[0] == LQ_GELU_TANH ? 1 : 0, m);
    return LQ_OK;
}

static lq_status silu_fwd(lq_ctx *ctx, lq_node *n) {
    int64_t m = lq_numel(n->out);
    LAUNCH(ctx, "silu", k_silu, m, (float *)n->out->data, (const float *)n->in[0]->data, m);
    return LQ_OK;
}

static lq_status silu_bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    int64_t m = lq_numel(n->out);
    LAUNCH(ctx, "silu backward", k_silu_bwd, m, gx, (const float *)n->in[0]->data, (const float *)n->out->grad->data, m);
    return LQ_OK;
}

static lq_status swiglu_fwd(lq_ctx *ctx, lq_node *n) {
    int64_t m = lq_numel(n->out);
    float *y = (float *)n->out->data;
    const float *g = (const float *)n->in[0]->data, *u = (const float *)n->in[1]->data;
    const void *ptrs[3] = {y, g, u};
    const bool v4 = aligned4(m, ptrs, 3);
    int64_t ldh = 0, K = n->out->ndim > 0 ? n->out->ne[n->out->ndim - 1] : 1;
    void *h = NULL; /* y's bf16 copy for a bf16 product that reads y (the MLP's down projection) */
    if (v4 && ctx->cuda_math == LQ_CUDA_MATH_BF16 && K % 4 == 0 && !(h = lq_cuda_act_bf16_claim(ctx, n, &ldh)) &&
        ctx->err.status != LQ_OK)
        return ctx->err.status; /* no room for the copy */
    if (h)
        LAUNCH(ctx, "swiglu (and bf16)", k_swiglu4_bf16, m / 4, (float4 *)y, (const float4 *)g, (const float4 *)u,
               m / 4, (uint2 *)h, K / 4, ldh);
    else if (v4)
        LAUNCH(ctx, "swiglu", k_swiglu4, m / 4, (float4 *)y, (const float4 *)g, (const float4 *)u, m / 4);
    else
        LAUNCH(ctx, "swiglu", k_swiglu, m, y, g, u, m);
    return LQ_OK;
}

static lq_status swiglu_bwd(lq_ctx *ctx, lq_node *n) {
    float *gg, *gu;
    bool fg, fu;
    LQ_TRY(lq_grad_get_fresh(ctx, n->in[0], &gg, &fg));
    LQ_TRY(lq_grad_get_fresh(ctx, n->in[1], &gu, &fu));
    if (!gg && !gu) return LQ_OK;
    int64_t m = lq_numel(n->out);
    const float *g = (const float *)n->in[0]->data, *u = (const float *)n->in[1]->data;
    const float *gy = (const float *)n->out->grad->data;
    const void *ptrs[5] = {gg, gu, g, u, gy}; /* NULL is aligned */
    if (aligned4(m, ptrs, 5))
        LAUNCH(ctx, "swiglu backward", k_swiglu_bwd4, m / 4, (float4 *)gg, (float4 *)gu, (const float4 *)g,
               (const float4 *)u, (const float4 *)gy, fg ? 1 : 0, fu ? 1 : 0, m / 4);
    else
        LAUNCH(ctx, "swiglu backward", k_swiglu_bwd, m, gg, gu, g, u, gy, fg ? 1 : 0, fu ? 1 : 0, m);
    return LQ_OK;
}

/* ============================== dropout ========================================================= */

/* The CPU mask is counter-based (op_dropout.c): element i is kept iff
 * lq_u01_from_bits(lq_hash3(seed, stream, i)) >= p, and lq_hash3(seed, stream, i) =
 * lq_mix64(key + i) with key = lq_mix64(seed ^ lq_mix64(stream + 0x9e3779b97f4a7c15)). The same
 * __host__ __device__ functions of core/rng.h compute it here per element, so the CUDA mask is
 * the CPU mask bit for bit; x / q is an IEEE division on both (no fast math). */
__device__ static inline bool dropout_kept(uint64_t key, int64_t i, float p) {
    return lq_u01_from_bits(lq_mix64(key + (uint64_t)i)) >= p;
}

/* y = kept ? x / q : 0 (p == 1 keeps nothing: the division is never used) */
__global__ static void k_dropout(float *y, const float *x, uint64_t key, float p, float q, int64_t m) {
    FOR_EACH(i, m) y[i] = dropout_kept(key, i, p) ? x[i] / q : 0.0f;
}

/* gx += gy / q where kept */
__global__ static void k_dropout_bwd(float *gx, const float *gy, uint64_t key, float p, float q, int64_t m) {
    FOR_EACH(i, m) if (dropout_kept(key, i, p)) gx[i] += gy[i] / q;
}

static uint64_t dropout_key(const lq_node *n) {
    uint64_t seed = (uint64_t)n->ip[1], stream = (uint64_t)n->ip[0];
    return lq_mix64(seed ^ lq_mix64(stream + 0x9e3779b97f4a7c15ULL));
}

/* ip[0] = stream, ip[1] = seed, fp[0] = p */
static lq_status dropout_fwd(lq_ctx *ctx, lq_node *n) {
    int64_t m = lq_numel(n->out);
    float p = n->fp[0], q = 1.0f - p;
    LAUNCH(ctx, "dropout", k_dropout, m, (float *)n->out->data, (const float *)n->in[0]->data, dropout_key(n), p, q, m);
    return LQ_OK;
}

static lq_status dropout_bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    int64_t m = lq_numel(n->out);
    float p = n->fp[0], q = 1.0f - p;
    LAUNCH(ctx, "dropout backward", k_dropout_bwd, m, gx, (const float *)n->out->grad->data, dropout_key(n), p, q, m);
    return LQ_OK;
}

extern "C" const lq_cuda_op lq_cuda_ops_activation[] = {
    {"relu", relu_fwd, relu_bwd},
    {"gelu", gelu_fwd, gelu_bwd},
    {"swiglu", swiglu_fwd, swiglu_bwd},
    {"silu", silu_fwd, silu_bwd},
    {"dropout", dropout_fwd, dropout_bwd},
    {NULL, NULL, NULL},
};
