/* autograd/ops/cuda_elementwise.cu: CUDA kernels of the elementwise ops (forward and backward), beside
 * their CPU files: add, sub, mul, scale, sum, mean (the activations and dropout: cuda_activation.cu). */
#include <math.h>
#include <string.h>

#include "autograd/cuda_impl.h"
#include "autograd/ops/cuda_loop.cuh"
#include "core/cuda.h"
#include "core/cuda_check.h"

extern "C" {
#include "autograd/broadcast.h"
#include "autograd/reduce.h"
}

/* The CPU files are the reference, formula for formula: op_add.c / op_sub.c / op_mul.c with
 * broadcast.c, op_scale.c, op_sum.c / op_mean.c with reduce.c. Every output and every gradient is
 * contiguous. Backward accumulates (+=). Kernels are grid-stride loops with int64 indices; the
 * contiguous ones (add, sub, mul of equal shapes, scale) are one coalesced pass. */

/* ============================== add, sub, mul (broadcast.c) ===================================== */

/* ops as lq_binop: 0 add, 1 sub, 2 mul */
__device__ static inline float binop(int op, float x, float y) { return op == 0 ? x + y : op == 1 ? x - y : x * y; }

/* same shapes, both contiguous: o[i] = x[i] op y[i]. op is a template parameter so the loop body is
 * one instruction stream. */
template <int OP>
__global__ static void k_binop(float *o, const float *x, const float *y, int64_t m) {
    FOR_EACH(i, m) o[i] = binop(OP, x[i], y[i]);
}

/* k_binop four elements per thread step (aligned4): the residual adds of a transformer block */
template <int OP>
__global__ static void k_binop4(float4 *o, const float4 *x, const float4 *y, int64_t m4) {
    FOR_EACH(i, m4) {
        const float4 a = x[i], b = y[i];
        o[i] = make_float4(binop(OP, a.x, b.x), binop(OP, a.y, b.y), binop(OP, a.z, b.z), binop(OP, a.w, b.w));
    }
}

/* A 4-dim walk of the contiguous output (ne4), a and b read through byte strides that are 0 along
 * their broadcast dims (lq_bcast_strides). */
struct bc_fwd {
    int64_t ne[4];
    int64_t an[4], bn[4]; /* byte strides */
};

__global__ static void k_bcast_fwd(float *o, const char *a, const char *b, bc_fwd p, int op, int64_t m) {
    FOR_EACH(i, m) {
        int64_t r = i;
        int64_t i3 = r % p.ne[3];
        r /= p.ne[3];
        int64_t i2 = r % p.ne[2];
        r /= p.ne[2];
        int64_t i1 = r % p.ne[1];
        int64_t i0 = r / p.ne[1];
        float x = *(const float *)(a + i0 * p.an[0] + i1 * p.an[1] + i2 * p.an[2] + i3 * p.an[3]);
        float y = *(const float *)(b + i0 * p.bn[0] + i1 * p.bn[1] + i2 * p.bn[2] + i3 * p.bn[3]);
        o[i] = binop(op, x, y);
    }
}

/* lq_bcast_forward's device twin. */
static lq_status bcast_fwd(lq_ctx *ctx, lq_node *n, int op) {
    const lq_tensor *a = n->in[0], *b = n->in[1];
    lq_tensor *out = n->out;
    float *o = (float *)out->data;
    int64_t m = lq_numel(out);
    if (lq_same_shape(a, b) && lq_is_contiguous(a) && lq_is_contiguous(b)) {
        const float *x = (const float *)a->data, *y = (const float *)b->data;
        const void *ptrs[3] = {o, x, y};
        if (aligned4(m, ptrs, 3)) {
            float4 *o4 = (float4 *)o;
            const float4 *x4 = (const float4 *)x, *y4 = (const float4 *)y;
            if (op == 0) LAUNCH(ctx, "add", k_binop4<0>, m / 4, o4, x4, y4, m / 4);
            else if (op == 1) LAUNCH(ctx, "sub", k_binop4<1>, m / 4, o4, x4, y4, m / 4);
            else LAUNCH(ctx, "mul", k_binop4<2>, m / 4, o4, x4, y4, m / 4);
        } else if (op == 0) {
            LAUNCH(ctx, "add", k_binop<0>, m, o, x, y, m);
        } else if (op == 1) {
            LAUNCH(ctx, "sub", k_binop<1>, m, o, x, y, m);
        } else {
            LAUNCH(ctx, "mul", k_binop<2>, m, o, x, y, m);
        }
        return LQ_OK;
    }
    int64_t ne4[4];
    size_t onb4[4], anb4[4], bnb4[4];
    lq_pad4(out, ne4, onb4);
    lq_bcast_strides(a, out, a->nb, anb4);
    lq_bcast_strides(b, out, b->nb, bnb4);
    bc_fwd p;
    for (int d = 0; d < 4; d++) {
        p.ne[d] = ne4[d];
        p.an[d] = (int64_t)anb4[d];
        p.bn[d] = (int64_t)bnb4[d];
    }
    LAUNCH(ctx, "broadcast binary op", k_bcast_fwd, m, o, (const char *)a->data, (const char *)b->data, p, op, m);
    return LQ_OK;
}

/* g[i] += sign * gy[i] (w NULL) or g[i] += sign * (gy[i] * w[i]): the same-shape case. */
__global__ static void k_acc_same(float *g, const float *gy, const float *w, float sign, int64_t m) {
    if (w) {
        FOR_EACH(i, m) g[i] += sign * (gy[i] * w[i]);
    } else {
        FOR_EACH(i, m) g[i] += sign * gy[i];
    }
}

/* k_acc_same four elements per thread step (aligned4) */
__global__ static void k_acc_same4(float4 *g, const float4 *gy, const float4 *w, float sign, int64_t m4) {
    FOR_EACH(i, m4) {
        float4 d = gy[i], o = g[i];
        if (w) {
            const float4 v = w[i];
            d = make_float4(d.x * v.x, d.y * v.y, d.z * v.z, d.w * v.w);
        }
        g[i] = make_float4(o.x + sign * d.x, o.y + sign * d.y, o.z + sign * d.z, o.w + sign * d.w);
    }
}

/* The general case of lq_bcast_accumulate: out's dims split into the ones t keeps (t's size equals
 * out's there) and the ones t was broadcast along (reduced: summed into one g element). Dims of
 * size 1 in out take part in neither. Index k over the kept dims (row-major) names one g element;
 * index r over the reduced dims one of the output elements that add into it. */
struct bc_red {
    int nk, nr;
    int64_t kne[4], rne[4];
    int64_t kgo[4], rgo[4]; /* element strides in gy (contiguous in out's shape) */
    int64_t kg[4];          /* byte strides in g (contiguous in t's shape) */
    int64_t kw[4], rw[4];   /* byte strides in w (the other input, broadcast strides), 0 if none */
    int64_t nkeep, nred;
};

/* offsets of kept index k: into gy (elements), g and w (bytes) */
__device__ static inline void bc_kept(const bc_red &p, int64_t k, int64_t *go, int64_t *goff, int64_t *wo) {
    int64_t a = 0, b = 0, c = 0;
    for (int j = p.nk - 1; j >= 0; j--) {
        int64_t x = k % p.kne[j];
        k /= p.kne[j];
        a += x * p.kgo[j];
        b += x * p.kg[j];
        c += x * p.kw[j];
    }
    *go = a;
    *goff = b;
    *wo = c;
}

/* gy * w at kept offsets (go, wo) and reduced index r */
__device__ static inline float bc_term(const bc_red &p, const float *gy, const char *w, int64_t go, int64_t wo,
                                       int64_t r) {
    for (int j = p.nr - 1; j >= 0; j--) {
        int64_t x = r % p.rne[j];
        r /= p.rne[j];
        go += x * p.rgo[j];
        wo += x * p.rw[j];
    }
    float v = gy[go];
    if (w) v *= *(const float *)(w + wo);
    return v;
}

/* few terms per g element: one thread per g element sums them (one writer, no atomics) */
__global__ static void k_bc_red_thread(char *g, const float *gy, const char *w, bc_red p, float sign) {
    FOR_EACH(k, p.nkeep) {
        int64_t go, goff, wo;
        bc_kept(p, k, &go, &goff, &wo);
        float acc = 0.0f;
        for (int64_t r = 0; r < p.nred; r++) acc += bc_term(p, gy, w, go, wo, r);
        *(float *)(g + goff) += sign * acc;
    }
}

/* many terms per g element: one block per g element, a shared-memory tree sum (blockDim is
 * LQ_CUDA_THREADS, a power of two); the loop over k is uniform across the block, so every
 * thread reaches every __syncthreads. */
__global__ static void k_bc_red_block(char *g, const float *gy, const char *w, bc_red p, float sign) {
    __shared__ float sh[LQ_CUDA_THREADS];
    for (int64_t k = blockIdx.x; k < p.nkeep; k += gridDim.x) {
        int64_t go, goff, wo;
        bc_kept(p, k, &go, &goff, &wo);
        float acc = 0.0f;
        for (int64_t r = threadIdx.x; r < p.nred; r += blockDim.x) acc += bc_term(p, gy, w, go, wo, r);
        sh[threadIdx.x] = acc;
        __syncthreads();
        for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
            if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
            __syncthreads();
        }
        if (threadIdx.x == 0) *(float *)(g + goff) += sign * sh[0];
        __syncthreads(); /* sh is rewritten by the next k */
    }
}

/* lq_bcast_accumulate's device twin: g (contiguous, t's shape) += sign * reduce_to_t(gy * other),
 * other NULL meaning 1. */
static lq_status bcast_acc(lq_ctx *ctx, float *g, const lq_tensor *t, const lq_tensor *out, const float *gy,
                           const lq_tensor *other, float sign) {
    int64_t m = lq_numel(out);
    if (m <= 0) return LQ_OK;
    bool same = lq_same_shape(t, out);
    if (same && (!other || (lq_same_shape(other, out) && lq_is_contiguous(other)))) {
        const float *w = other ? (const float *)other->data : NULL;
        const void *ptrs[3] = {g, gy, w};
        if (aligned4(m, ptrs, 3))
            LAUNCH(ctx, "broadcast grad", k_acc_same4, m / 4, (float4 *)g, (const float4 *)gy, (const float4 *)w, sign,
                   m / 4);
        else
            LAUNCH(ctx, "broadcast grad", k_acc_same, m, g, gy, w, sign, m);
        return LQ_OK;
    }
    size_t gcs[LQ_MAX_DIMS];
    lq_contiguous_strides(t->ndim, t->ne, sizeof(float), gcs);
    int64_t ne4[4];
    size_t onb4[4], gnb4[4], wnb4[4] = {0, 0, 0, 0};
    lq_pad4(out, ne4, onb4);
    lq_bcast_strides(t, out, gcs, gnb4);
    if (other) lq_bcast_strides(other, out, other->nb, wnb4);
    int64_t os[4]; /* gy's element strides: contiguous in out's padded shape */
    os[3] = 1;
    for (int d = 2; d >= 0; d--) os[d] = os[d + 1] * ne4[d + 1];
    bc_red p;
    memset(&p, 0, sizeof p);
    p.nkeep = p.nred = 1;
    for (int d = 0; d < 4; d++) {
        if (ne4[d] == 1) continue;
        if (gnb4[d] == 0) { /* t has size 1 here (or lacks the dim): summed over */
            p.rne[p.nr] = ne4[d];
            p.rgo[p.nr] = os[d];
            p.rw[p.nr] = (int64_t)wnb4[d];
            p.nred *= ne4[d];
            p.nr++;
        } else {
            p.kne[p.nk] = ne4[d];
            p.kgo[p.nk] = os[d];
            p.kg[p.nk] = (int64_t)gnb4[d];
            p.kw[p.nk] = (int64_t)wnb4[d];
            p.nkeep *= ne4[d];
            p.nk++;
        }
    }
    const char *w = other ? (const char *)other->data : NULL;
    if (p.nred < 32) {
        LAUNCH(ctx, "broadcast grad", k_bc_red_thread, p.nkeep, (char *)g, gy, w, p, sign);
    } else {
        unsigned blocks = (unsigned)(p.nkeep < 65535 * 8 ? p.nkeep : 65535 * 8);
        k_bc_red_block<<<blocks, LQ_CUDA_THREADS, 0, STREAM(ctx)>>>((char *)g, gy, w, p, sign);
        LQ_CUDA_LAUNCHED(ctx, "broadcast grad reduce");
    }
    return LQ_OK;
}

static lq_status add_fwd(lq_ctx *ctx, lq_node *n) { return bcast_fwd(ctx, n, 0); }
static lq_status sub_fwd(lq_ctx *ctx, lq_node *n) { return bcast_fwd(ctx, n, 1); }
static lq_status mul_fwd(lq_ctx *ctx, lq_node *n) { return bcast_fwd(ctx, n, 2); }

__global__ static void k_scale(float *y, const float *x, float s, int64_t m);

/* add: da += dy, db += dy; sub: da += dy, db -= dy (each summed over its broadcast dims). An
 * unbroadcast a may take dy's block itself, as on the CPU (op_add.c, lq_grad_adopt). An input
 * whose gradient is a fresh pool block (lq_grad_get_fresh: not zeroed) of out's shape gets dy
 * (or -dy) assigned: a copy instead of zeroing the block and reading the zeros back (in a
 * residual stream, the branch's side of each add: 32 of a 1B step's memsets). */
static lq_status addsub_bwd(lq_ctx *ctx, lq_node *n, float sign_b) {
    const float *gy = (const float *)n->out->grad->data;
    for (int i = 0; i < 2; i++) {
        if (i == 0 && lq_same_shape(n->in[0], n->out) && lq_grad_adopt(ctx, n->in[0], n->out)) continue;
        float *g;
        bool fresh;
        LQ_TRY(lq_grad_get_fresh(ctx, n->in[i], &g, &fresh));
        if (!g) continue;
        const float sign = i == 0 ? 1.0f : sign_b;
        int64_t m = lq_numel(n->in[i]);
        if (fresh && lq_same_shape(n->in[i], n->out)) {
            const size_t bytes = (size_t)m * sizeof(float);
            if (sign == 1.0f) LQ_CU(&ctx->err, cudaMemcpyAsync(g, gy, bytes, cudaMemcpyDeviceToDevice, STREAM(ctx)));
            else LAUNCH(ctx, "sub backward", k_scale, m, g, gy, sign, m);
            continue;
        }
        if (fresh) LQ_TRY(lq_cuda_memset(g, 0, (size_t)m * sizeof(float), STREAM(ctx), &ctx->err));
        LQ_TRY(bcast_acc(ctx, g, n->in[i], n->out, gy, NULL, sign));
    }
    return LQ_OK;
}
static lq_status add_bwd(lq_ctx *ctx, lq_node *n) { return addsub_bwd(ctx, n, 1.0f); }
static lq_status sub_bwd(lq_ctx *ctx, lq_node *n) { return addsub_bwd(ctx, n, -1.0f); }

/* mul: da += dy * b, db += dy * a (the other read through its broadcast strides). */
static lq_status mul_bwd(lq_ctx *ctx, lq_node *n) {
    for (int i = 0; i < 2; i++) {
        float *g;
        LQ_TRY(lq_grad_get(ctx, n->in[i], &g));
        if (g) LQ_TRY(bcast_acc(ctx, g, n->in[i], n->out, (const float *)n->out->grad->data, n->in[1 - i], 1.0f));
    }
    return LQ_OK;
}

/* ============================== scale =========================================================== */

__global__ static void k_scale(float *y, const float *x, float s, int64_t m) {
    FOR_EACH(i, m) y[i] = s * x[i];
}

__global__ static void k_scale_acc(float *gx, const float *gy, float s, int64_t m) {
    FOR_EACH(i, m) gx[i] += s * gy[i];
}

/* fp[0] = s: y = s x */
static lq_status scale_fwd(lq_ctx *ctx, lq_node *n) {
    int64_t m = lq_numel(n->out);
    LAUNCH(ctx, "scale", k_scale, m, (float *)n->out->data, (const float *)n->in[0]->data, n->fp[0], m);
    return LQ_OK;
}

/* dx += s dy */
static lq_status scale_bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    int64_t m = lq_numel(n->out);
    LAUNCH(ctx, "scale backward", k_scale_acc, m, gx, (const float *)n->out->grad->data, n->fp[0], m);
    return LQ_OK;
}

/* ============================== sum, mean (reduce.c) ============================================ */

/* x contiguous seen as (outer, n, inner); row oi = (o, i) of the output sums x[o, k, i] over k in
 * double, then y = (float)(acc * scale) as reduce.c. */

/* short rows: one thread per output element */
__global__ static void k_reduce_thread(float *y, const float *x, int64_t rows, int64_t n, int64_t inner, float scale) {
    FOR_EACH(oi, rows) {
        int64_t o = oi / inner, i = oi % inner;
        const float *p = x + o * n * inner + i;
        double acc = 0.0;
        for (int64_t k = 0; k < n; k++) acc += p[k * inner];
        y[oi] = (float)(acc * scale);
    }
}

/* long rows: one block per output element, a shared-memory tree sum in double; the loop over rows
 * is uniform across the block, so every thread reaches every __syncthreads */
__global__ static void k_reduce_block(float *y, const float *x, int64_t rows, int64_t n, int64_t inner, float scale) {
    __shared__ double sh[LQ_CUDA_THREADS];
    for (int64_t oi = blockIdx.x; oi < rows; oi += gridDim.x) {
        int64_t o = oi / inner, i = oi % inner;
        const float *p = x + o * n * inner + i;
        double acc = 0.0;
        for (int64_t k = threadIdx.x; k < n; k += blockDim.x) acc += p[k * inner];
        sh[threadIdx.x] = acc;
        __syncthreads();
        for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
            if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
            __syncthreads();
        }
        if (threadIdx.x == 0) y[oi] = (float)(sh[0] * scale);
        __syncthreads(); /* sh is rewritten by the next row */
    }
}

/* dx[o, k, i] += scale * dy[o, i], one thread per element of dx */
__global__ static void k_reduce_bwd(float *gx, const float *gy, int64_t total, int64_t n, int64_t inner, float scale) {
    FOR_EACH(j, total) {
        int64_t i = j % inner, o = j / (n * inner);
        gx[j] += scale * gy[o * inner + i];
    }
}

/* mean's factor 1 / n (op_mean.c's inv_count); sum's is 1 */
static float mean_scale(const lq_node *n) {
    lq_reduce_dims r = lq_reduce_dims_of(n->in[0], (int)n->ip[0]);
    return r.n > 0 ? 1.0f / (float)r.n : 0.0f;
}

/* ip[0] = axis (or LQ_AXIS_ALL) */
static lq_status reduce_fwd(lq_ctx *ctx, lq_node *n, float scale) {
    lq_reduce_dims r = lq_reduce_dims_of(n->in[0], (int)n->ip[0]);
    int64_t rows = r.outer * r.inner;
    if (rows <= 0) return LQ_OK;
    float *y = (float *)n->out->data;
    const float *x = (const float *)n->in[0]->data;
    if (r.n < 64) {
        LAUNCH(ctx, "reduce", k_reduce_thread, rows, y, x, rows, r.n, r.inner, scale);
    } else {
        unsigned blocks = (unsigned)(rows < 65535 * 8 ? rows : 65535 * 8);
        k_reduce_block<<<blocks, LQ_CUDA_THREADS, 0, STREAM(ctx)>>>(y, x, rows, r.n, r.inner, scale);
        LQ_CUDA_LAUNCHED(ctx, "reduce");
    }
    return LQ_OK;
}

static lq_status reduce_bwd(lq_ctx *ctx, lq_node *n, float scale) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    lq_reduce_dims r = lq_reduce_dims_of(n->in[0], (int)n->ip[0]);
    int64_t total = r.outer * r.n * r.inner;
    LAUNCH(ctx, "reduce backward", k_reduce_bwd, total, gx, (const float *)n->out->grad->data, total, r.n, r.inner,
           scale);
    return LQ_OK;
}

static lq_status sum_fwd(lq_ctx *ctx, lq_node *n) { return reduce_fwd(ctx, n, 1.0f); }
static lq_status sum_bwd(lq_ctx *ctx, lq_node *n) { return reduce_bwd(ctx, n, 1.0f); }
static lq_status mean_fwd(lq_ctx *ctx, lq_node *n) { return reduce_fwd(ctx, n, mean_scale(n)); }
static lq_status mean_bwd(lq_ctx *ctx, lq_node *n) { return reduce_bwd(ctx, n, mean_scale(n)); }

extern "C" const lq_cuda_op lq_cuda_ops_elementwise[] = {
    {"add", add_fwd, add_bwd},
    {"sub", sub_fwd, sub_bwd},
    {"mul", mul_fwd, mul_bwd},
    {"scale", scale_fwd, scale_bwd},
    {"sum", sum_fwd, sum_bwd},
    {"mean", mean_fwd, mean_bwd},
    {NULL, NULL, NULL},
};
