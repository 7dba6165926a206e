/* autograd/ops/cuda_nn.cu: CUDA kernels of the nn ops (forward and backward), beside their CPU files:
 * embedding, rope, softmax, log_softmax, cross_entropy (attention: cuda_attention.cu; rmsnorm and
 * layernorm: cuda_norm.cu).
 * Each kernel mirrors its op_<name>.c line by line: same parameters (node->ip / fp), the same sums in
 * double where the CPU sums in double, the inputs contiguous (every entry function makes them so). */
#include <math.h>

#include "autograd/cuda_impl.h"
#include "autograd/ops/cuda_block.cuh"
#include "core/cuda.h"
#include "core/cuda_check.h"

/* attention lives in cuda_attention.cu; its table entry is here */
extern "C" lq_status lq_cuda_attention_fwd(lq_ctx *ctx, lq_node *n);
extern "C" lq_status lq_cuda_attention_bwd(lq_ctx *ctx, lq_node *n);

#define FOR_EACH(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)
/* one block per row: blocks loop over rows, so every thread of a block runs the same iterations
 * and the __syncthreads inside the reductions are reached by all of them */
#define FOR_ROWS(r, R) for (int64_t r = blockIdx.x; r < (R); r += gridDim.x)

static unsigned row_blocks(int64_t R) { return (unsigned)(R < 1 ? 1 : R > 65535 * 8 ? 65535 * 8 : R); }

static cudaStream_t stream_of(lq_ctx *ctx) { return (cudaStream_t)lq_cuda_stream(ctx); }

/* --- embedding: table (V, C), ids (N) -> y (N, C) ---------------------------------------------- */

__global__ static void k_embed_fwd(const float *w, const int32_t *ids, float *y, int64_t N, int64_t C) {
    FOR_EACH(i, N * C) y[i] = w[(int64_t)ids[i / C] * C + i % C];
}

/* dW[ids[t], c] += dy[t, c]: ids repeat, so the scatter is atomic */
__global__ static void k_embed_bwd(float *gw, const int32_t *ids, const float *gy, int64_t N, int64_t C) {
    FOR_EACH(i, N * C) atomicAdd(gw + (int64_t)ids[i / C] * C + i % C, gy[i]);
}

static lq_status embedding_fwd(lq_ctx *ctx, lq_node *n) {
    int64_t N = lq_numel(n->in[1]), C = n->in[0]->ne[1];
    if (N * C == 0) return LQ_OK;
    const int32_t *ids = lq_cuda_upload_i32(ctx, n->in[1]);
    if (!ids) return ctx->err.status;
    k_embed_fwd<<<lq_cuda_blocks(N * C), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(
        (const float *)n->in[0]->data, ids, (float *)n->out->data, N, C);
    LQ_CUDA_LAUNCHED(ctx, "embedding forward");
    return LQ_OK;
}

static lq_status embedding_bwd(lq_ctx *ctx, lq_node *n) {
    float *gw;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gw));
    if (!gw) return LQ_OK;
    int64_t N = lq_numel(n->in[1]), C = n->in[0]->ne[1];
    if (N * C == 0) return LQ_OK;
    const int32_t *ids = lq_cuda_upload_i32(ctx, n->in[1]);
    if (!ids) return ctx->err.status;
    k_embed_bwd<<<lq_cuda_blocks(N * C), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(
        gw, ids, (const float *)n->out->grad->data, N, C);
    LQ_CUDA_LAUNCHED(ctx, "embedding backward");
    return LQ_OK;
}

/* --- rope: x (B, T, H, D), pos (T) or (B, T) ----------------------------------------------------- */

/* cs[q half + i] = (cos, sin) of angle = (float)pos[q] * inv_freq[i] in float, op_rope.c's angle,
 * for every position slot q (npos: T, or B T with per-batch positions) and pair i: each value is
 * computed once, not once per head and member as it is read. */
__global__ static void k_rope_table(const int32_t *pos, const float *inv_freq, int64_t npos, int64_t half, float2 *cs) {
    FOR_EACH(e, npos * half) {
        float angle = (float)pos[e / half] * inv_freq[e % half];
        cs[e] = make_float2(cosf(angle), sinf(angle));
    }
}

/* One thread per element of dst. Element d < rot of a row belongs to pair i as its first (a) or
 * second (b) member: interleaved pairs (2i, 2i+1), half pairs (i, i + rot/2). Both members are read
 * and the pair rotated exactly as op_rope.c's rotate(): (a, b) -> (a cos - b sign sin,
 * b cos + a sign sin), cos / sin from the table. Dims >= rot pass through. I: the index type, 32-bit
 * when every index fits (integer division is the kernel's main cost after the table). */
template <typename I>
__global__ static void k_rope(const float *src, float *dst, const float2 *cs, I rows, I T, I H, I D, I rot,
                              int interleaved, int per_batch, float sign, int acc) {
    I half = rot / 2, n = rows * D;
    for (I e = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; e < n; e += (I)gridDim.x * (I)blockDim.x) {
        I r = e / D, d = e - r * D;
        const float *xr = src + (int64_t)r * D;
        float v;
        if (d >= rot) {
            v = xr[d];
        } else {
            I i, ia, ib;
            bool second;
            if (interleaved) {
                i = d / 2;
                second = (d & 1) != 0;
                ia = 2 * i;
                ib = 2 * i + 1;
            } else {
                second = d >= half;
                i = second ? d - half : d;
                ia = i;
                ib = i + half;
            }
            I bt = r / H, p = per_batch ? bt : bt % T;
            float2 c = cs[(int64_t)p * half + i];
            float a = xr[ia], b = xr[ib], si = sign * c.y;
            v = second ? b * c.x + a * si : a * c.x - b * si;
        }
        dst[e] = acc ? dst[e] + v : v;
    }
}

/* The same rotation four elements per thread step, for rows whose every quad is one kind (D a
 * multiple of 4, rot of 8 (half layout) or 4 (interleaved); src, dst and the table 16-byte aligned:
 * rope_vec_ok). Item k of a row:
 *   half layout: k < rot / 8 takes pairs i = 4k .. 4k + 3, members a = x[i ..], b = x[i + rot/2 ..]
 *     (two float4 loads, one per half, both coalesced), writing both quads;
 *   interleaved: k < rot / 4 takes the quad x[4k .. 4k + 3] = (a0, b0, a1, b1), pairs 2k, 2k + 1;
 *   the items after those copy (or add) one pass-through quad each.
 * Each pair is read once (k_rope reads it for each member) and the table once per pair. */
__device__ static inline float rope_a(float a, float b, float c, float si) { return a * c - b * si; }
__device__ static inline float rope_b(float a, float b, float c, float si) { return b * c + a * si; }

__device__ static inline void rope_store4(float *d, float4 v, int acc) {
    if (acc) {
        float4 o = *(const float4 *)d;
        v = make_float4(o.x + v.x, o.y + v.y, o.z + v.z, o.w + v.w);
    }
    *(float4 *)d = v;
}

template <typename I>
__global__ static void k_rope4(const float *src, float *dst, const float2 *cs, I rows, I T, I H, I D, I rot,
                               int interleaved, int per_batch, float sign, int acc) {
    const I half = rot / 2, nrot = interleaved ? rot / 4 : rot / 8, per_row = nrot + (D - rot) / 4, n = rows * per_row;
    for (I e = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; e < n; e += (I)gridDim.x * (I)blockDim.x) {
        const I r = e / per_row, k = e - r * per_row;
        const float *xr = src + (int64_t)r * D;
        float *yr = dst + (int64_t)r * D;
        if (k >= nrot) { /* pass-through dims */
            const I d = rot + 4 * (k - nrot);
            rope_store4(yr + d, *(const float4 *)(xr + d), acc);
            continue;
        }
        const I bt = r / H, p = per_batch ? bt : bt % T;
        const float2 *c = cs + (int64_t)p * half;
        if (interleaved) {
            const float4 x = *(const float4 *)(xr + 4 * k), t = *(const float4 *)(c + 2 * k);
            const float s0 = sign * t.y, s1 = sign * t.w;
            rope_store4(yr + 4 * k,
                        make_float4(rope_a(x.x, x.y, t.x, s0), rope_b(x.x, x.y, t.x, s0), rope_a(x.z, x.w, t.z, s1),
                                    rope_b(x.z, x.w, t.z, s1)),
                        acc);
        } else {
            const I i = 4 * k;
            const float4 a = *(const float4 *)(xr + i), b = *(const float4 *)(xr + half + i);
            const float4 t0 = *(const float4 *)(c + i), t1 = *(const float4 *)(c + i + 2);
            const float s0 = sign * t0.y, s1 = sign * t0.w, s2 = sign * t1.y, s3 = sign * t1.w;
            rope_store4(yr + i,
                        make_float4(rope_a(a.x, b.x, t0.x, s0), rope_a(a.y, b.y, t0.z, s1), rope_a(a.z, b.z, t1.x, s2),
                                    rope_a(a.w, b.w, t1.z, s3)),
                        acc);
            rope_store4(yr + half + i,
                        make_float4(rope_b(a.x, b.x, t0.x, s0), rope_b(a.y, b.y, t0.z, s1), rope_b(a.z, b.z, t1.x, s2),
                                    rope_b(a.w, b.w, t1.z, s3)),
                        acc);
        }
    }
}

/* Whether k_rope4 takes these rows (see there). */
static bool rope_vec_ok(const float *src, const float *dst, const float2 *cs, int64_t D, int64_t rot, int il) {
    return rot % (il ? 4 : 8) == 0 && D % 4 == 0 && (uintptr_t)src % 16 == 0 && (uintptr_t)dst % 16 == 0 &&
           (uintptr_t)cs % 16 == 0;
}

/* One rope launch with index type I: k_rope4 when vec (rope_vec_ok), else k_rope. */
template <typename I>
static void rope_go(lq_ctx *ctx, bool vec, unsigned blocks, const float *src, float *dst, const float2 *cs, int64_t rows,
                    int64_t T, int64_t H, int64_t D, int64_t rot, int il, int per_batch, float sign, int acc) {
    if (vec)
        k_rope4<I><<<blocks, LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(src, dst, cs, (I)rows, (I)T, (I)H, (I)D, (I)rot, il,
                                                                  per_batch, sign, acc);
    else
        k_rope<I><<<blocks, LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(src, dst, cs, (I)rows, (I)T, (I)H, (I)D, (I)rot, il,
                                                                 per_batch, sign, acc);
}

/* saved[0] is the host inv_freq the entry built; the forward keeps the device (cos, sin) table in
 * saved[1] for the backward (the CPU keeps its own cos / sin there; a node runs on one device). */
static lq_status rope_launch(lq_ctx *ctx, lq_node *n, const float *src, float *dst, float sign, bool acc) {
    const lq_tensor *x = n->in[0];
    int64_t B = x->ne[0], T = x->ne[1], H = x->ne[2], D = x->ne[3], rot = n->ip[1], half = rot / 2;
    int64_t rows = B * T * H;
    int per_batch = n->ip[2] != 0 ? 1 : 0;
    if (rows * D == 0) return LQ_OK;
    if (!n->saved[1]) {
        int64_t npos = lq_numel(n->in[1]); /* T, or B T: the CPU's P */
        const float *inv = (const float *)lq_cuda_upload(ctx, n->saved[0], (size_t)(half > 0 ? half : 1) * sizeof(float));
        const int32_t *pos = inv ? lq_cuda_upload_i32(ctx, n->in[1]) : NULL;
        float2 *cs = pos ? (float2 *)lq_ctx_dalloc(ctx, (size_t)(npos * half > 0 ? npos * half : 1) * sizeof(float2))
                         : NULL;
        if (!cs) return ctx->err.status;
        if (npos * half > 0) {
            k_rope_table<<<lq_cuda_blocks(npos * half), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(pos, inv, npos, half, cs);
            LQ_CUDA_LAUNCHED(ctx, "rope table");
        }
        n->saved[1] = cs;
    }
    const float2 *cs = (const float2 *)n->saved[1];
    int il = n->ip[0] == LQ_ROPE_INTERLEAVED ? 1 : 0;
    bool vec = rope_vec_ok(src, dst, cs, D, rot, il);
    unsigned blocks = lq_cuda_blocks(vec ? rows * ((il ? rot / 4 : rot / 8) + (D - rot) / 4) : rows * D);
    /* 32-bit indices when the grid-stride loop cannot pass INT32_MAX either */
    if (rows * D + (int64_t)blocks * LQ_CUDA_THREADS <= INT32_MAX)
        rope_go<int32_t>(ctx, vec, blocks, src, dst, cs, rows, T, H, D, rot, il, per_batch, sign, acc ? 1 : 0);
    else
        rope_go<int64_t>(ctx, vec, blocks, src, dst, cs, rows, T, H, D, rot, il, per_batch, sign, acc ? 1 : 0);
    LQ_CUDA_LAUNCHED(ctx, "rope");
    return LQ_OK;
}

static lq_status rope_fwd(lq_ctx *ctx, lq_node *n) {
    n->saved[1] = NULL; /* a re-run forward (checkpointing) builds its table afresh */
    return rope_launch(ctx, n, (const float *)n->in[0]->data, (float *)n->out->data, 1.0f, false);
}

/* dx = R(-theta) dy, accumulated (assigned to a fresh gradient: every element is written) */
static lq_status rope_bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    bool fresh;
    LQ_TRY(lq_grad_get_fresh(ctx, n->in[0], &gx, &fresh));
    if (!gx) return LQ_OK;
    return rope_launch(ctx, n, (const float *)n->out->grad->data, gx, -1.0f, !fresh);
}

/* --- softmax / log_softmax along axis ip[0]: x seen as (outer, n, inner) ------------------------ */

typedef struct sm_dims {
    int64_t outer, n, inner;
} sm_dims;

static sm_dims sm_dims_of(const lq_tensor *x, int axis) {
    sm_dims r = {1, 1, 1};
    for (int d = 0; d < x->ndim; d++) {
        if (d < axis) r.outer *= x->ne[d];
        else if (d == axis) r.n = x->ne[d];
        else r.inner *= x->ne[d];
    }
    return r;
}

/* Row oi = (o, i): its n values sit at base + k inner, base = o n inner + i. log: y = (x - m) - log S,
 * else y = exp(x - m) / S; S summed in double as the CPU does. */
__global__ static void k_softmax_fwd(const float *x, float *y, int64_t rows, int64_t n, int64_t inner, int log_sm) {
    FOR_ROWS(oi, rows) {
        int64_t o = oi / inner, i = oi % inner, st = inner;
        const float *p = x + o * n * inner + i;
        float *q = y + o * n * inner + i;
        float m = -INFINITY;
        for (int64_t k = threadIdx.x; k < n; k += blockDim.x) m = fmaxf(m, p[k * st]);
        m = block_max(m);
        double s = 0.0;
        for (int64_t k = threadIdx.x; k < n; k += blockDim.x) s += expf(p[k * st] - m);
        s = block_sum(s);
        if (log_sm) {
            float ls = (float)log(s);
            for (int64_t k = threadIdx.x; k < n; k += blockDim.x) q[k * st] = (p[k * st] - m) - ls;
        } else {
            for (int64_t k = threadIdx.x; k < n; k += blockDim.x) q[k * st] = (float)((double)expf(p[k * st] - m) / s);
        }
    }
}

/* softmax: dx_k += y_k (dy_k - sum_j dy_j y_j); log_softmax: dx_k += dy_k - exp(y_k) sum_j dy_j */
__global__ static void k_softmax_bwd(const float *y, const float *gy, float *gx, int64_t rows, int64_t n,
                                     int64_t inner, int log_sm) {
    FOR_ROWS(oi, rows) {
        int64_t o = oi / inner, i = oi % inner, st = inner;
        int64_t base = o * n * inner + i;
        double acc = 0.0;
        for (int64_t k = threadIdx.x; k < n; k += blockDim.x)
            acc += log_sm ? (double)gy[base + k * st] : (double)gy[base + k * st] * y[base + k * st];
        acc = block_sum(acc);
        float d = (float)acc;
        for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
            int64_t e = base + k * st;
            gx[e] += log_sm ? gy[e] - expf(y[e]) * d : y[e] * (gy[e] - d);
        }
    }
}

static lq_status softmax_fwd_any(lq_ctx *ctx, lq_node *n, int log_sm) {
    if (lq_numel(n->out) == 0) return LQ_OK;
    sm_dims r = sm_dims_of(n->in[0], (int)n->ip[0]);
    int64_t rows = r.outer * r.inner;
    k_softmax_fwd<<<row_blocks(rows), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(
        (const float *)n->in[0]->data, (float *)n->out->data, rows, r.n, r.inner, log_sm);
    LQ_CUDA_LAUNCHED(ctx, log_sm ? "log_softmax forward" : "softmax forward");
    return LQ_OK;
}

static lq_status softmax_bwd_any(lq_ctx *ctx, lq_node *n, int log_sm) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx || lq_numel(n->out) == 0) return LQ_OK;
    sm_dims r = sm_dims_of(n->in[0], (int)n->ip[0]);
    int64_t rows = r.outer * r.inner;
    k_softmax_bwd<<<row_blocks(rows), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(
        (const float *)n->out->data, (const float *)n->out->grad->data, gx, rows, r.n, r.inner, log_sm);
    LQ_CUDA_LAUNCHED(ctx, log_sm ? "log_softmax backward" : "softmax backward");
    return LQ_OK;
}

static lq_status softmax_fwd(lq_ctx *ctx, lq_node *n) { return softmax_fwd_any(ctx, n, 0); }
static lq_status softmax_bwd(lq_ctx *ctx, lq_node *n) { return softmax_bwd_any(ctx, n, 0); }
static lq_status log_softmax_fwd(lq_ctx *ctx, lq_node *n) { return softmax_fwd_any(ctx, n, 1); }
static lq_status log_softmax_bwd(lq_ctx *ctx, lq_node *n) { return softmax_bwd_any(ctx, n, 1); }

/* --- cross_entropy: logits (N, V), targets (N) i32; ip[0] ignore, ip[1] reduction, ip[2] count ---- */

/* Per row: loss = logsumexp - x[t] (0 for an ignored row), lse the float logsumexp (0 if ignored).
 * One block per row, ce_threads(V) threads: a language model's rows are a vocabulary wide (32000 at
 * the 1B bench shape) and its chunks have few of them (128 rows: one 256-thread block per SM, 40 us
 * per chunk there, under 0.5 TB/s), so wide rows get 1024 threads. */
#define CE_WIDE_THREADS 1024
static unsigned ce_threads(int64_t V) { return V >= 4 * CE_WIDE_THREADS ? CE_WIDE_THREADS : LQ_CUDA_THREADS; }

__global__ static void __launch_bounds__(CE_WIDE_THREADS) k_ce_rows(const float *x, const int32_t *t, double *loss, float *lse, int64_t N, int64_t V,
                                 int32_t ignore) {
    FOR_ROWS(r, N) {
        if (t[r] == ignore) { /* uniform across the block: no thread reaches a barrier alone */
            if (threadIdx.x == 0) {
                loss[r] = 0.0;
                if (lse) lse[r] = 0.0f;
            }
            continue;
        }
        const float *xr = x + r * V;
        float m = -INFINITY;
        for (int64_t k = threadIdx.x; k < V; k += blockDim.x) m = xr[k] > m ? xr[k] : m;
        m = block_max(m);
        double s = 0.0;
        for (int64_t k = threadIdx.x; k < V; k += blockDim.x) s += expf(xr[k] - m);
        s = block_sum(s);
        double l = (double)m + log(s);
        if (threadIdx.x == 0) {
            loss[r] = l - (double)xr[t[r]];
            if (lse) lse[r] = (float)l;
        }
    }
}

/* One block: y = sum of the row losses (double), / count for MEAN (0 when nothing counts). */
__global__ static void k_ce_total(const double *loss, float *y, int64_t N, int64_t count, int sum_red) {
    double s = 0.0;
    for (int64_t r = threadIdx.x; r < N; r += blockDim.x) s += loss[r];
    s = block_sum(s);
    if (threadIdx.x == 0) y[0] = sum_red ? (float)s : count > 0 ? (float)(s / (double)count) : 0.0f;
}

/* dx_k += c (softmax_k - [k == t]) for counted rows, c = g (SUM) or g / count (MEAN), g read from
 * the device scalar gradient of the loss. Rows along grid y, each row's columns along grid x (no
 * per-element division of a flat index). */
__global__ static void k_ce_bwd(const float *x, const int32_t *t, const float *lse, const float *gout, float *gx,
                                int64_t N, int64_t V, int32_t ignore, int64_t count, int sum_red, int acc) {
    double g = gout[0];
    float scale = (float)(sum_red ? g : g / (double)count);
    for (int64_t r = blockIdx.y; r < N; r += gridDim.y) {
        const int32_t tr = t[r];
        float *gr = gx + r * V;
        if (tr == ignore) {
            if (!acc) /* a fresh gradient: the ignored row's zeros are written too */
                for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < V;
                     k += (int64_t)gridDim.x * blockDim.x)
                    gr[k] = 0.0f;
            continue;
        }
        const float l = lse[r], *xr = x + r * V;
        for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < V; k += (int64_t)gridDim.x * blockDim.x) {
            float v = (acc ? gr[k] : 0.0f) + scale * expf(xr[k] - l);
            if (k == tr) v -= scale;
            gr[k] = v;
        }
    }
}

static lq_status cross_entropy_fwd(lq_ctx *ctx, lq_node *n) {
    const lq_tensor *lt = n->in[0];
    int64_t V = lt->ne[lt->ndim - 1], N = lq_numel(n->in[1]);
    size_t rows_alloc = (size_t)(N > 0 ? N : 1);
    double *loss = (double *)lq_ctx_dalloc(ctx, rows_alloc * sizeof(double));
    if (!loss) return ctx->err.status;
    float *lse = NULL;
    n->saved[0] = NULL;
    if (n->recorded) {
        lse = (float *)lq_ctx_dalloc(ctx, rows_alloc * sizeof(float));
        if (!lse) return ctx->err.status;
        n->saved[0] = lse;
    }
    if (N > 0) {
        const int32_t *t = lq_cuda_upload_i32(ctx, n->in[1]);
        if (!t) return ctx->err.status;
        k_ce_rows<<<row_blocks(N), ce_threads(V), 0, stream_of(ctx)>>>((const float *)lt->data, t, loss, lse, N, V,
                                                                        (int32_t)n->ip[0]);
        LQ_CUDA_LAUNCHED(ctx, "cross_entropy rows");
    }
    k_ce_total<<<1, LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(loss, (float *)n->out->data, N, n->ip[2],
                                                         n->ip[1] == LQ_REDUCE_SUM ? 1 : 0);
    LQ_CUDA_LAUNCHED(ctx, "cross_entropy total");
    return LQ_OK;
}

/* dx += (softmax(x) - onehot(t)) dy / count on each counted row; assigned (ignored rows zeroed)
 * into a fresh gradient block, which then needs no memset of its own. */
static lq_status cross_entropy_bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    bool fresh;
    LQ_TRY(lq_grad_get_fresh(ctx, n->in[0], &gx, &fresh));
    if (!gx) return LQ_OK;
    const lq_tensor *lt = n->in[0];
    int64_t V = lt->ne[lt->ndim - 1], N = lq_numel(n->in[1]), count = n->ip[2];
    if (count == 0 || N * V == 0)
        return fresh ? lq_cuda_memset(gx, 0, (size_t)lq_numel(lt) * sizeof(float), stream_of(ctx), &ctx->err) : LQ_OK;
    const float *x = (const float *)lt->data;
    const int32_t *t = lq_cuda_upload_i32(ctx, n->in[1]);
    if (!t) return ctx->err.status;
    const float *lse = (const float *)n->saved[0];
    if (!lse) { /* not saved: recompute */
        double *loss = (double *)lq_ctx_dalloc(ctx, (size_t)N * sizeof(double));
        float *l = loss ? (float *)lq_ctx_dalloc(ctx, (size_t)N * sizeof(float)) : NULL;
        if (!l) return ctx->err.status;
        k_ce_rows<<<row_blocks(N), ce_threads(V), 0, stream_of(ctx)>>>(x, t, loss, l, N, V, (int32_t)n->ip[0]);
        LQ_CUDA_LAUNCHED(ctx, "cross_entropy rows");
        lse = l;
    }
    int64_t bx = (V + LQ_CUDA_THREADS - 1) / LQ_CUDA_THREADS;
    dim3 grid((unsigned)(bx < 1024 ? bx : 1024), (unsigned)(N < 65535 ? N : 65535));
    k_ce_bwd<<<grid, LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(
        x, t, lse, (const float *)n->out->grad->data, gx, N, V, (int32_t)n->ip[0], count,
        n->ip[1] == LQ_REDUCE_SUM ? 1 : 0, fresh ? 0 : 1);
    LQ_CUDA_LAUNCHED(ctx, "cross_entropy backward");
    return LQ_OK;
}

extern "C" const lq_cuda_op lq_cuda_ops_nn[] = {
    {"embedding", embedding_fwd, embedding_bwd},
    {"rope", rope_fwd, rope_bwd},
    {"attention", lq_cuda_attention_fwd, lq_cuda_attention_bwd},
    {"softmax", softmax_fwd, softmax_bwd},
    {"log_softmax", log_softmax_fwd, log_softmax_bwd},
    {"cross_entropy", cross_entropy_fwd, cross_entropy_bwd},
    {NULL, NULL, NULL},
};
