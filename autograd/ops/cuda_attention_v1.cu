/* autograd/ops/cuda_attention_v1.cu: the first CUDA attention (kept for A/B and as a fallback, run when
 * LOQUAT_CUDA_ATTN=v1): per query head cuBLAS calls, a masked row softmax kernel, the probabilities
 * P (B, Hq, T, T) kept for the backward. Dispatched from cuda_attention.cu. */
#include <math.h>

#include "autograd/cuda_impl.h"
#include "core/cuda_check.h"

extern "C" lq_status lq_cuda_attention_v1_fwd(lq_ctx *ctx, lq_node *n);
extern "C" lq_status lq_cuda_attention_v1_bwd(lq_ctx *ctx, lq_node *n);

/* Layout (op_attention.c): q (B, T, Hq, D), k / v (B, T, Hkv, D), all contiguous (the entry makes
 * them so), out like q; in[3] doc ids (B, T) i32 on the host when given; ip[0] causal, fp[0] scale.
 * Head h of batch b is the (T, D) matrix at base + (b T H + h) D with row stride H D: batch b is a
 * stride of T H D, head h an offset of h D. Query head h reads kv head h / group.
 * saved[0] = P (B, Hq, T, T) on the device when the node is recorded. */

#define ROWS_CAP (65535 * 8)

/* block-wide sum / max of a float (blockDim.x a multiple of 32), the result in every thread */
__device__ static float attn_block_sum(float v, float *sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    float r = 0.0f;
    for (int i = 0; i < nw; i++) r += sh[i];
    return r;
}

__device__ static float attn_block_max(float v, float *sh) {
    for (int o = 16; o > 0; o >>= 1) {
        float u = __shfl_xor_sync(0xffffffffu, v, o);
        v = u > v ? u : v;
    }
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    float r = -INFINITY;
    for (int i = 0; i < nw; i++) r = sh[i] > r ? sh[i] : r;
    return r;
}

/* Key j is visible to query i of batch b: not in the future when causal, same document when doc. */
__device__ static bool visible(const int32_t *doc_b, int causal, int64_t i, int64_t j) {
    if (causal && j > i) return false;
    return !doc_b || doc_b[i] == doc_b[j];
}

/* In place over the B T score rows of one head: row rr = (b, i) at S + b sb + i T. Masked entries
 * become 0; a row that sees nothing becomes all zeros (the CPU's rule; these masks never make one). */
__global__ static void k_masked_softmax(float *S, int64_t sb, int64_t B, int64_t T, const int32_t *doc, int causal) {
    __shared__ float sh[32];
    for (int64_t rr = blockIdx.x; rr < B * T; rr += gridDim.x) {
        int64_t b = rr / T, i = rr % T;
        float *s = S + b * sb + i * T;
        const int32_t *doc_b = doc ? doc + b * T : NULL;
        float mx = -INFINITY;
        for (int64_t j = threadIdx.x; j < T; j += blockDim.x)
            if (visible(doc_b, causal, i, j) && s[j] > mx) mx = s[j];
        mx = attn_block_max(mx, sh);
        if (mx == -INFINITY) { /* the same value in every thread: uniform branch */
            for (int64_t j = threadIdx.x; j < T; j += blockDim.x) s[j] = 0.0f;
            continue;
        }
        float sum = 0.0f;
        for (int64_t j = threadIdx.x; j < T; j += blockDim.x) {
            float e = visible(doc_b, causal, i, j) ? expf(s[j] - mx) : 0.0f;
            s[j] = e;
            sum += e;
        }
        sum = attn_block_sum(sum, sh);
        float inv = 1.0f / sum;
        for (int64_t j = threadIdx.x; j < T; j += blockDim.x) s[j] *= inv; /* each thread its own j */
    }
}

/* dS = P (dP - rowsum(dP P)) in place over dP, rows (b, i): P at P + b pb + i T, dP at G + b gb + i T */
__global__ static void k_softmax_back(const float *P, int64_t pb, float *G, int64_t gb, int64_t B, int64_t T) {
    __shared__ float sh[32];
    for (int64_t rr = blockIdx.x; rr < B * T; rr += gridDim.x) {
        int64_t b = rr / T, i = rr % T;
        const float *pr = P + b * pb + i * T;
        float *g = G + b * gb + i * T;
        float dot = 0.0f;
        for (int64_t j = threadIdx.x; j < T; j += blockDim.x) dot += g[j] * pr[j];
        dot = attn_block_sum(dot, sh); /* every g[j] was read before the barrier inside */
        for (int64_t j = threadIdx.x; j < T; j += blockDim.x) g[j] = pr[j] * (g[j] - dot);
    }
}

typedef struct attn_dims {
    int64_t B, T, Hq, Hkv, D, group;
} attn_dims;

static attn_dims dims_of(const lq_node *n) {
    const lq_tensor *q = n->in[0], *k = n->in[1];
    attn_dims d = {q->ne[0], q->ne[1], q->ne[2], k->ne[2], q->ne[3], 0};
    d.group = d.Hkv ? d.Hq / d.Hkv : 1;
    return d;
}

static unsigned row_blocks(int64_t rows) { return (unsigned)(rows < 1 ? 1 : rows > ROWS_CAP ? ROWS_CAP : rows); }

/* Per query head h (kv head kh = h / group), batched over b by cuBLAS:
 * S = scale Q_h K_kh^T (T, T), P = masked row softmax of S, O_h = P V_kh. Recorded: P lands in the
 * kept (B, Hq, T, T) buffer; otherwise one (B, T, T) scratch serves every head in turn (the stream
 * orders the reuse). */
extern "C" lq_status lq_cuda_attention_v1_fwd(lq_ctx *ctx, lq_node *n) {
    attn_dims d = dims_of(n);
    n->saved[0] = NULL;
    if (lq_numel(n->out) == 0) return LQ_OK;
    const float *q = (const float *)n->in[0]->data, *k = (const float *)n->in[1]->data;
    const float *v = (const float *)n->in[2]->data;
    float *o = (float *)n->out->data, scale = n->fp[0];
    int64_t T = d.T, D = d.D, tt = T * T;
    const int32_t *doc = NULL;
    if (n->n_in > 3) {
        doc = lq_cuda_upload_i32(ctx, n->in[3]);
        if (!doc) return ctx->err.status;
    }
    bool keep = n->recorded;
    float *P = (float *)lq_ctx_dalloc(ctx, (size_t)((keep ? d.B * d.Hq : d.B) * tt) * sizeof(float));
    if (!P) return ctx->err.status;
    if (keep) n->saved[0] = P;
    int64_t pb = keep ? d.Hq * tt : tt; /* batch stride of one head's P */
    int64_t ldq = d.Hq * D, ldk = d.Hkv * D, sq = T * ldq, sk = T * ldk;
    for (int64_t h = 0; h < d.Hq; h++) {
        int64_t kh = h / d.group;
        float *Ph = keep ? P + h * tt : P;
        LQ_TRY(lq_cuda_gemm(ctx, false, true, T, T, D, scale, q + h * D, ldq, sq, k + kh * D, ldk, sk, 0.0f, Ph, T,
                            pb, d.B));
        k_masked_softmax<<<row_blocks(d.B * T), LQ_CUDA_THREADS, 0, (cudaStream_t)lq_cuda_stream(ctx)>>>(
            Ph, pb, d.B, T, doc, n->ip[0] != 0 ? 1 : 0);
        LQ_CUDA_LAUNCHED(ctx, "attention softmax");
        LQ_TRY(lq_cuda_gemm(ctx, false, false, T, D, T, 1.0f, Ph, T, pb, v + kh * D, ldk, sk, 0.0f, o + h * D, ldq,
                            sq, d.B));
    }
    return LQ_OK;
}

/* Per query head h, kv head kh, batched over b (op_attention.c's derivation):
 *   dV_kh += P^T dO_h,  dP = dO_h V_kh^T,  dS = P (dP - rowsum(dP P)),
 *   dQ_h += scale dS K_kh,  dK_kh += scale dS^T Q_h.
 * The q heads of one group add into the same dK / dV head by successive gemms with beta = 1, in
 * order on the one stream. dS: one (B, T, T) scratch reused per head. */
extern "C" lq_status lq_cuda_attention_v1_bwd(lq_ctx *ctx, lq_node *n) {
    float *gq, *gk, *gv;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gq));
    LQ_TRY(lq_grad_get(ctx, n->in[1], &gk));
    LQ_TRY(lq_grad_get(ctx, n->in[2], &gv));
    attn_dims d = dims_of(n);
    if (lq_numel(n->out) == 0 || (!gq && !gk && !gv)) return LQ_OK;
    const float *q = (const float *)n->in[0]->data, *k = (const float *)n->in[1]->data;
    const float *v = (const float *)n->in[2]->data;
    const float *dO = (const float *)n->out->grad->data, *P = (const float *)n->saved[0];
    if (!P) return LQ_ERR(&ctx->err, LQ_ERR_STATE, "attention: backward without the saved probabilities");
    float scale = n->fp[0];
    int64_t T = d.T, D = d.D, tt = T * T, pb = d.Hq * tt;
    int64_t ldq = d.Hq * D, ldk = d.Hkv * D, sq = T * ldq, sk = T * ldk;
    float *dS = NULL;
    if (gq || gk) {
        dS = (float *)lq_ctx_dalloc(ctx, (size_t)(d.B * tt) * sizeof(float));
        if (!dS) return ctx->err.status;
    }
    for (int64_t h = 0; h < d.Hq; h++) {
        int64_t kh = h / d.group;
        const float *Ph = P + h * tt, *dOh = dO + h * D;
        if (gv) /* (T, D) += P^T (T, T) dO (T, D) */
            LQ_TRY(lq_cuda_gemm(ctx, true, false, T, D, T, 1.0f, Ph, T, pb, dOh, ldq, sq, 1.0f, gv + kh * D, ldk, sk,
                                d.B));
        if (!dS) continue;
        /* dP (T, T) = dO (T, D) V^T */
        LQ_TRY(lq_cuda_gemm(ctx, false, true, T, T, D, 1.0f, dOh, ldq, sq, v + kh * D, ldk, sk, 0.0f, dS, T, tt, d.B));
        k_softmax_back<<<row_blocks(d.B * T), LQ_CUDA_THREADS, 0, (cudaStream_t)lq_cuda_stream(ctx)>>>(Ph, pb, dS, tt,
                                                                                                       d.B, T);
        LQ_CUDA_LAUNCHED(ctx, "attention softmax backward");
        if (gq) /* (T, D) += scale dS (T, T) K (T, D) */
            LQ_TRY(lq_cuda_gemm(ctx, false, false, T, D, T, scale, dS, T, tt, k + kh * D, ldk, sk, 1.0f, gq + h * D,
                                ldq, sq, d.B));
        if (gk) /* (T, D) += scale dS^T Q (T, D) */
            LQ_TRY(lq_cuda_gemm(ctx, true, false, T, D, T, scale, dS, T, tt, q + h * D, ldq, sq, 1.0f, gk + kh * D,
                                ldk, sk, d.B));
    }
    return LQ_OK;
}
