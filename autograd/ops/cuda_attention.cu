/* autograd/ops/cuda_attention.cu: CUDA forward and backward of attention (op_attention.c) over every
 * (batch, head) pair at once: batched cuBLAS products through device pointer arrays, one masked
 * softmax kernel that keeps only the rows' logsumexp, the probabilities recomputed in the backward.
 * Registered in cuda_nn.cu. (The first version looped over heads and kept P: 3x slower per layer
 * at 32 heads and 256 MiB per layer of saved P at the 1B model's shapes, bench/RESULTS.md.) */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/cuda_impl.h"
#include "core/cuda.h"
#include "core/cuda_check.h"

extern "C" lq_status lq_cuda_attention_fwd(lq_ctx *ctx, lq_node *n);
extern "C" lq_status lq_cuda_attention_bwd(lq_ctx *ctx, lq_node *n);
/* the opt-in flash path (bf16 math, LOQUAT_FLASH_ATTN=1): cuda_attention_flash*.cu */
extern "C" lq_status lq_cuda_flash_attn_fwd(lq_ctx *ctx, lq_node *n, float *L, const int32_t *doc);
extern "C" lq_status lq_cuda_flash_attn_bwd(lq_ctx *ctx, lq_node *n, float *gq, float *gk, float *gv,
                                            const int acc[3]);

/* Layout (op_attention.c): q (B, T, Hq, D), k / v (B, T, Hkv, D) (contiguous from the entry, but
 * read through their byte strides nb[]), out like q; in[3] doc ids (B, T) i32 on the host when
 * given; ip[0] causal, fp[0] scale. Head h of batch b is the (T, D) matrix at
 * data + b nb[0] + h nb[2] with row stride nb[1]. Query head h reads kv head h / group.
 *
 * Pairs: p = b Hq + h in [0, B Hq). Units: u = b Hkv + kh in [0, B Hkv), the g = Hq / Hkv query
 * heads sharing kv head kh; their pairs are p = u g + r, r in [0, g), consecutive. Work is done in
 * chunks of whole units whose T x T score blocks fit SCRATCH_FLOATS (one chunk for usual sizes).
 *
 * saved[1] = L (B, Hq, T): per row, max + log(sum of exp) of the masked scaled scores, +INF for a
 * row that sees nothing (P = 0 there, the CPU's rule); saved[2] = the doc ids on the device (or
 * NULL). saved[0] stays NULL.
 * Both live in the node's arena; the scores, pointer arrays and doc copy of each call are scratch
 * released (lq_ctx_reset_to) once their last kernel is queued: one stream orders the reuse. */

#define SCRATCH_FLOATS ((int64_t)1 << 26) /* per T x T buffer: 256 MB */
#define ROW_BLOCKS_CAP (65535 * 8) /* a grid-stride loop covers any more rows */
#define MAX_JOBS 16


/* --- pointer arrays -------------------------------------------------------------------------- */

/* One array of B Hq device pointers. Entry e names pair p: p = e (pair order) or, in group order,
 * e = r U + u with p = u g + r (so entries [r U + u0, r U + u0 + nu) are the r-th query head of
 * units u0.. : no two of them share a kv head). The pointer is
 * base + b sb + head sh + (p mod cp) sp bytes, head = h or, for kv tensors, h / g; sp addresses a
 * pair's T x T block in the chunk scratch (chunks start at multiples of cp pairs). */
typedef struct ptr_job {
    const char *base;
    int64_t sb, sh, sp;
    int group_order, kv;
} ptr_job;

typedef struct ptr_jobs {
    ptr_job j[MAX_JOBS];
    int n;
} ptr_jobs;

__global__ static void k_head_ptrs(ptr_jobs jobs, const char **out, int64_t npairs, int64_t Hq, int64_t g, int64_t U,
                                   int64_t cp) {
    int64_t total = (int64_t)jobs.n * npairs;
    for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (int64_t)gridDim.x * blockDim.x) {
        const ptr_job *jb = &jobs.j[idx / npairs];
        int64_t e = idx % npairs;
        int64_t p = jb->group_order ? (e % U) * g + e / U : e;
        int64_t b = p / Hq, h = p % Hq, head = jb->kv ? h / g : h;
        out[idx] = jb->base + b * jb->sb + head * jb->sh + (p % cp) * jb->sp;
    }
}

/* Adds a job; returns its index (its array is out + index * npairs). */
static int add_job(ptr_jobs *js, const void *base, int64_t sb, int64_t sh, int64_t sp, bool group_order, bool kv) {
    ptr_job j = {(const char *)base, sb, sh, sp, group_order ? 1 : 0, kv ? 1 : 0};
    js->j[js->n] = j;
    return js->n++;
}

/* --- row kernels ------------------------------------------------------------------------------ */

/* One warp per score row, ROW_WARPS rows per block, grid-stride over the rows: a row's reductions
 * are warp shuffles (no block barrier), and the keys a causal mask hides (j > i: about half of S)
 * are written without being read. Lane l takes keys j = l + 32 t (coalesced); each step issues
 * ROW_UNROLL of a lane's loads before using them, so several are in flight per lane. Plain scalar
 * loads: a row starts at S + rr T, 16-byte aligned only when T % 4 == 0. */
#define ROW_WARPS 8
#define ROW_THREADS (32 * ROW_WARPS)
#define ROW_UNROLL 4
#define ROW_STEP (32 * ROW_UNROLL)

/* Sum / max over the warp, the result in every lane: xor butterflies, so every lane adds the same
 * pairs in the same order and all lanes agree bit for bit (the callers' branches on the result are
 * uniform). The max compares (as the CPU's `x > m ? x : m`); its inputs are never NaN here. */
__device__ __forceinline__ static float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ static float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) {
        float u = __shfl_xor_sync(0xffffffffu, v, o);
        v = u > v ? u : v;
    }
    return v;
}

/* v[u]: key j = j0 + lane + 32 u of query i is visible (op_attention.c's rule): j < jend (i + 1
 * when causal, else T) and, with doc ids, in the query's document (doc_i = doc_b[i]). The lane's
 * doc ids are all loaded before the caller loads any score, so its loads never wait on each other. */
__device__ __forceinline__ static void keys_visible(bool v[ROW_UNROLL], const int32_t *doc_b, int32_t doc_i, int j0,
                                                    int lane, int jend) {
#pragma unroll
    for (int u = 0; u < ROW_UNROLL; u++) v[u] = j0 + lane + 32 * u < jend;
    if (doc_b) {
#pragma unroll
        for (int u = 0; u < ROW_UNROLL; u++)
            if (v[u]) v[u] = doc_b[j0 + lane + 32 * u] == doc_i;
    }
}

/* Folds score x into a lane's running max m and sum s = sum of exp(x' - m) over its keys so far.
 * -inf (a masked key or a true -inf score) adds exp(-inf - M) = 0 to any finite final max M and is
 * skipped (which also keeps -inf - -inf = NaN out while m is -inf); a NaN score makes s NaN, as the
 * CPU's two-pass form makes the row's sum NaN. One expf: exp(-|x - m|) is exp(m - x) when x is a
 * new max (s rescaled to it, then + 1), exp(x - m) otherwise. */
__device__ __forceinline__ static void online_add(float x, float &m, float &s) {
    if (x == -INFINITY) return;
    float e = expf(-fabsf(x - m));
    if (x > m) {
        s = s * e + 1.0f;
        m = x;
    } else {
        s += e;
    }
}

/* Forward, in place over the rows of a chunk: row rr (of np T rows) is pair p0 + rr / T, query
 * i = rr % T, at S + rr T. Masked entries become 0; a row that sees nothing becomes all zeros with
 * L = +INF (the CPU's rule; these masks never make one). L (indexed p T + i) may be NULL.
 * Pass 1 reads the visible keys once: per lane an online max m and sum s, then the warp's
 * M = max m and sum = sum over lanes of s exp(m - M) (a lane with m = -inf saw no finite score:
 * its s, 0 or NaN, is added as it is). Pass 2 writes every key: exp(x - M) (1 / sum) where
 * visible (read again: just read, so mostly from cache), 0 where masked (unread). L = M + log(sum). */
__global__ static void __launch_bounds__(ROW_THREADS)
    k_softmax_fwd(float *S, float *L, int64_t rows, int64_t T, int64_t p0, int64_t Hq, const int32_t *doc, int causal) {
    const int lane = (int)(threadIdx.x & 31), Ti = (int)T; /* T <= INT_MAX: cuBLAS takes it as int */
    for (int64_t rr = (int64_t)blockIdx.x * ROW_WARPS + (threadIdx.x >> 5); rr < rows;
         rr += (int64_t)gridDim.x * ROW_WARPS) { /* rr is the same in every lane of the warp */
        const int64_t p = p0 + rr / T;
        const int i = (int)(rr % T), jend = causal ? i + 1 : Ti;
        float *s = S + rr * T;
        const int32_t *doc_b = doc ? doc + (p / Hq) * T : NULL;
        const int32_t doc_i = doc_b ? doc_b[i] : 0;
        float m = -INFINITY, sum = 0.0f;
        for (int j0 = 0; j0 < jend; j0 += ROW_STEP) {
            bool v[ROW_UNROLL];
            float x[ROW_UNROLL];
            keys_visible(v, doc_b, doc_i, j0, lane, jend);
#pragma unroll
            for (int u = 0; u < ROW_UNROLL; u++) x[u] = v[u] ? s[j0 + lane + 32 * u] : -INFINITY;
#pragma unroll
            for (int u = 0; u < ROW_UNROLL; u++) online_add(x[u], m, sum);
        }
        const float M = warp_max(m);
        if (M == -INFINITY) { /* the row sees nothing: uniform, M is the same in every lane */
            for (int j = lane; j < Ti; j += 32) s[j] = 0.0f;
            if (L && lane == 0) L[p * T + i] = INFINITY;
            continue;
        }
        sum = warp_sum(m == -INFINITY ? sum : sum * expf(m - M));
        const float inv = 1.0f / sum;
        for (int j0 = 0; j0 < Ti; j0 += ROW_STEP) { /* past jend: v all false, stores of 0 only */
            bool v[ROW_UNROLL];
            float x[ROW_UNROLL];
            keys_visible(v, doc_b, doc_i, j0, lane, jend);
#pragma unroll
            for (int u = 0; u < ROW_UNROLL; u++) x[u] = v[u] ? s[j0 + lane + 32 * u] : 0.0f;
#pragma unroll
            for (int u = 0; u < ROW_UNROLL; u++) {
                const int j = j0 + lane + 32 * u;
                if (j < Ti) s[j] = v[u] ? expf(x[u] - M) * inv : 0.0f; /* each lane its own j */
            }
        }
        if (L && lane == 0) L[p * T + i] = M + logf(sum);
    }
}

/* Backward, over the rows of a chunk (rows as in k_softmax_fwd, one warp each): S holds the
 * recomputed scaled scores and becomes P = exp(S - L) (0 where masked or L = +INF); when G
 * (dP = dO V^T) is given it becomes dS = P (dP - rowsum(P dP)), op_attention.c's formula.
 * Pass 1 over the visible keys: P in place and the lane's part of rowsum(P dP); a warp sum; pass 2
 * over every key: dS from the P and dP just touched where visible, P = dS = 0 where masked (unread).
 * A lane reads and writes only its own j, so the warp sum is the only exchange. */
__global__ static void __launch_bounds__(ROW_THREADS)
    k_softmax_bwd(float *S, float *G, const float *L, int64_t rows, int64_t T, int64_t p0, int64_t Hq,
                  const int32_t *doc, int causal) {
    const int lane = (int)(threadIdx.x & 31), Ti = (int)T;
    for (int64_t rr = (int64_t)blockIdx.x * ROW_WARPS + (threadIdx.x >> 5); rr < rows;
         rr += (int64_t)gridDim.x * ROW_WARPS) {
        const int64_t p = p0 + rr / T;
        const int i = (int)(rr % T);
        float *s = S + rr * T, *g = G ? G + rr * T : NULL;
        const float l = L[p * T + i];
        if (!(l < INFINITY)) { /* the row saw nothing in the forward: P = dS = 0 (uniform branch) */
            for (int j = lane; j < Ti; j += 32) {
                s[j] = 0.0f;
                if (g) g[j] = 0.0f;
            }
            continue;
        }
        const int jend = causal ? i + 1 : Ti;
        const int32_t *doc_b = doc ? doc + (p / Hq) * T : NULL;
        const int32_t doc_i = doc_b ? doc_b[i] : 0;
        float dot = 0.0f;
        for (int j0 = 0; j0 < jend; j0 += ROW_STEP) {
            bool v[ROW_UNROLL];
            float x[ROW_UNROLL], d[ROW_UNROLL];
            keys_visible(v, doc_b, doc_i, j0, lane, jend);
#pragma unroll
            for (int u = 0; u < ROW_UNROLL; u++) {
                const int j = j0 + lane + 32 * u;
                x[u] = v[u] ? s[j] : 0.0f;
                d[u] = v[u] && g ? g[j] : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < ROW_UNROLL; u++) {
                if (!v[u]) continue;
                const float pj = expf(x[u] - l);
                s[j0 + lane + 32 * u] = pj;
                dot += pj * d[u];
            }
        }
        if (g) dot = warp_sum(dot); /* uniform: G is a kernel argument */
        for (int j0 = 0; j0 < Ti; j0 += ROW_STEP) {
            bool v[ROW_UNROLL];
            float x[ROW_UNROLL], d[ROW_UNROLL];
            keys_visible(v, doc_b, doc_i, j0, lane, jend);
#pragma unroll
            for (int u = 0; u < ROW_UNROLL; u++) {
                const int j = j0 + lane + 32 * u;
                x[u] = v[u] && g ? s[j] : 0.0f; /* P, as this lane wrote it in pass 1 */
                d[u] = v[u] && g ? g[j] : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < ROW_UNROLL; u++) {
                const int j = j0 + lane + 32 * u;
                if (j >= Ti) continue;
                if (v[u]) {
                    if (g) g[j] = x[u] * (d[u] - dot);
                } else {
                    s[j] = 0.0f;
                    if (g) g[j] = 0.0f;
                }
            }
        }
    }
}

/* --- shapes and the batched gemm ---------------------------------------------------------- */

typedef struct attn_dims {
    int64_t B, T, Hq, Hkv, D, g, U, np; /* np = B Hq pairs, U = B Hkv units */
} attn_dims;

static attn_dims dims_of(const lq_node *n) {
    const lq_tensor *q = n->in[0], *k = n->in[1];
    attn_dims d = {q->ne[0], q->ne[1], q->ne[2], k->ne[2], q->ne[3], 1, 0, 0};
    d.g = d.Hkv ? d.Hq / d.Hkv : 1;
    d.U = d.B * d.Hkv;
    d.np = d.B * d.Hq;
    return d;
}

/* A (B, T, H, D) tensor's per-head matrix: byte strides of batch and head, row stride in elements
 * (a size-1 dim's stride is never used to address: its value is replaced by a harmless one). */
typedef struct head_view {
    const void *data;
    int64_t sb, sh, ld;
} head_view;

static lq_status view_of(lq_ctx *ctx, const lq_tensor *t, head_view *v) {
    if (t->ne[3] > 1 && t->nb[3] != sizeof(float))
        return LQ_ERR(&ctx->err, LQ_ERR_UNSUPPORTED, "attention: CUDA needs unit-stride head vectors");
    v->data = t->data;
    v->sb = t->ne[0] > 1 ? (int64_t)t->nb[0] : 0;
    v->sh = t->ne[2] > 1 ? (int64_t)t->nb[2] : 0;
    v->ld = t->ne[1] > 1 ? (int64_t)(t->nb[1] / sizeof(float)) : t->ne[3];
    if (v->ld < t->ne[3] || (t->ne[1] > 1 && t->nb[1] % sizeof(float) != 0))
        return LQ_ERR(&ctx->err, LQ_ERR_UNSUPPORTED, "attention: CUDA needs rows that do not overlap");
    return LQ_OK;
}

/* The contiguous (B, T, H, D) layout of a gradient buffer (lq_grad_get: contiguous, t's shape). */
static head_view grad_view(const float *g, const lq_tensor *t) {
    int64_t H = t->ne[2], D = t->ne[3];
    head_view v = {g, t->ne[1] * H * D * (int64_t)sizeof(float), D * (int64_t)sizeof(float), H * D};
    return v;
}

/* cuBLAS's fast math modes (tf32, bf16) in a pointer-array batched gemm need the matrices 16-byte
 * aligned (the library cannot check device pointer arrays): true when every head matrix of v and
 * each of its rows starts on 16 bytes. */
static bool hv_aligned(const head_view *v) {
    return (uintptr_t)v->data % 16 == 0 && v->sb % 16 == 0 && v->sh % 16 == 0 && v->ld % 4 == 0;
}

/* Row-major C_e = alpha op(A_e) op(B_e) + beta C_e for the batch entries e (pointer arrays on the
 * device), lq_cuda_gemm's conventions: op(A) (M, K), op(B) (K, N), C (M, N), ld* the row strides
 * in elements of the stored matrices. cuda_math picks the compute type (bf16: cuBLAS rounds the
 * fp32 inputs itself) when the operands are aligned (fast), plain fp32 otherwise. */
static lq_status bgemm(lq_ctx *ctx, bool fast, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const char **A,
                       int64_t lda, const char **B, int64_t ldb, float beta, const char **C, int64_t ldc,
                       int64_t batch) {
    if (M <= 0 || N <= 0 || K <= 0 || batch <= 0) return LQ_OK; /* K >= 1 here: T, D >= 1 */
    cublasComputeType_t ct = !fast || ctx->cuda_math == LQ_CUDA_MATH_FP32 ? CUBLAS_COMPUTE_32F
                             : ctx->cuda_math == LQ_CUDA_MATH_BF16 ? CUBLAS_COMPUTE_32F_FAST_16BF
                                                                   : CUBLAS_COMPUTE_32F_FAST_TF32;
    /* row-major C (M, N) = op(A) op(B) is column-major C^T (N, M) = op(B)^T op(A)^T */
    cublasOperation_t opB = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opA = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    LQ_CUBLAS(&ctx->err,
              cublasGemmBatchedEx((cublasHandle_t)lq_cuda_blas(ctx), opB, opA, (int)N, (int)M, (int)K, &alpha,
                                  (const void *const *)B, CUDA_R_32F, (int)ldb, (const void *const *)A, CUDA_R_32F,
                                  (int)lda, &beta, (void *const *)C, CUDA_R_32F, (int)ldc, (int)batch, ct,
                                  CUBLAS_GEMM_DEFAULT));
    return LQ_OK;
}

/* Builds the jobs' pointer arrays in device scratch: *out, job j's array at *out + j np. */
static lq_status build_ptrs(lq_ctx *ctx, const ptr_jobs *js, const attn_dims *d, int64_t cp, const char ***out) {
    int64_t total = (int64_t)js->n * d->np;
    const char **a = (const char **)lq_ctx_dalloc(ctx, (size_t)total * sizeof(char *));
    if (!a) return ctx->err.status;
    k_head_ptrs<<<lq_cuda_blocks(total), LQ_CUDA_THREADS, 0, (cudaStream_t)lq_cuda_stream(ctx)>>>(*js, a, d->np, d->Hq,
                                                                                                 d->g, d->U, cp);
    LQ_CUDA_LAUNCHED(ctx, "attention pointers");
    *out = a;
    return LQ_OK;
}

/* Units per chunk: as many whole units as keep a chunk's T x T blocks under SCRATCH_FLOATS. */
static int64_t units_per_chunk(const attn_dims *d) {
    int64_t per_unit = d->g * d->T * d->T, cu = per_unit > 0 ? SCRATCH_FLOATS / per_unit : d->U;
    if (cu < 1) cu = 1;
    return cu > d->U ? d->U : cu;
}

/* Blocks for the row kernels: one warp per row, ROW_WARPS rows per block (capped). */
static unsigned row_blocks(int64_t rows) {
    int64_t b = (rows + ROW_WARPS - 1) / ROW_WARPS;
    return (unsigned)(b < 1 ? 1 : b > ROW_BLOCKS_CAP ? ROW_BLOCKS_CAP : b);
}


/* --- forward ---------------------------------------------------------------------------------- */

/* Per chunk of pairs [p0, p0 + np): S_p = scale Q_h K_kh^T (T, T) for every pair in one call, the
 * masked softmax of every row (L kept), O_h = P_p V_kh in one call. */
static lq_status fwd_body(lq_ctx *ctx, lq_node *n, const attn_dims *d, float *L, const int32_t *doc) {
    head_view q, k, v, o;
    LQ_TRY(view_of(ctx, n->in[0], &q));
    LQ_TRY(view_of(ctx, n->in[1], &k));
    LQ_TRY(view_of(ctx, n->in[2], &v));
    LQ_TRY(view_of(ctx, n->out, &o));
    int64_t T = d->T, tt = T * T, cu = units_per_chunk(d), cp = cu * d->g;
    float *S = (float *)lq_ctx_dalloc(ctx, (size_t)(cp * tt) * sizeof(float));
    if (!S) return ctx->err.status;
    ptr_jobs js;
    memset(&js, 0, sizeof js);
    int jq = add_job(&js, q.data, q.sb, q.sh, 0, false, false), jk = add_job(&js, k.data, k.sb, k.sh, 0, false, true);
    int jv = add_job(&js, v.data, v.sb, v.sh, 0, false, true), jo = add_job(&js, o.data, o.sb, o.sh, 0, false, false);
    int js_ = add_job(&js, S, 0, 0, tt * (int64_t)sizeof(float), false, false);
    const char **a;
    LQ_TRY(build_ptrs(ctx, &js, d, cp, &a));
    const char **Qp = a + jq * d->np, **Kp = a + jk * d->np, **Vp = a + jv * d->np, **Op = a + jo * d->np;
    const char **Sp = a + js_ * d->np;
    int causal = n->ip[0] != 0 ? 1 : 0;
    /* scratch blocks start on 64 bytes, their rows on 16 when T % 4 == 0 */
    bool fast = T % 4 == 0 && hv_aligned(&q) && hv_aligned(&k) && hv_aligned(&v) && hv_aligned(&o);
    for (int64_t u0 = 0; u0 < d->U; u0 += cu) {
        int64_t nu = d->U - u0 < cu ? d->U - u0 : cu, p0 = u0 * d->g, np = nu * d->g;
        LQ_TRY(bgemm(ctx, fast, false, true, T, T, d->D, n->fp[0], Qp + p0, q.ld, Kp + p0, k.ld, 0.0f, Sp + p0, T, np));
        k_softmax_fwd<<<row_blocks(np * T), ROW_THREADS, 0, (cudaStream_t)lq_cuda_stream(ctx)>>>(
            S, L, np * T, T, p0, d->Hq, doc, causal);
        LQ_CUDA_LAUNCHED(ctx, "attention softmax");
        LQ_TRY(bgemm(ctx, fast, false, false, T, d->D, T, 1.0f, Sp + p0, T, Vp + p0, v.ld, 0.0f, Op + p0, o.ld, np));
    }
    return LQ_OK;
}

extern "C" lq_status lq_cuda_attention_fwd(lq_ctx *ctx, lq_node *n) {
    n->saved[0] = n->saved[1] = n->saved[2] = NULL;
    if (lq_numel(n->out) == 0) return LQ_OK;
    attn_dims d = dims_of(n);
    /* kept for the backward, so allocated before the mark: L and the device doc ids */
    float *L = NULL;
    const int32_t *doc = NULL;
    if (n->recorded) {
        L = (float *)lq_ctx_dalloc(ctx, (size_t)(d.np * d.T) * sizeof(float));
        if (!L) return ctx->err.status;
        if (n->n_in > 3 && !(doc = lq_cuda_upload_i32(ctx, n->in[3]))) return ctx->err.status;
    }
    lq_ctx_mark mark = lq_ctx_get_mark(ctx);
    if (!n->recorded && n->n_in > 3 && !(doc = lq_cuda_upload_i32(ctx, n->in[3]))) return ctx->err.status;
    lq_status s =
        lq_cuda_flash_attn_wanted(ctx, n) ? lq_cuda_flash_attn_fwd(ctx, n, L, doc) : fwd_body(ctx, n, &d, L, doc);
    lq_ctx_reset_to(ctx, mark); /* scores, pointers: every kernel reading them is queued */
    if (s != LQ_OK) return s;
    if (n->recorded) { /* a no-grad forward's doc copy was scratch */
        n->saved[1] = L;
        n->saved[2] = (void *)doc;
    }
    return LQ_OK;
}

/* --- backward --------------------------------------------------------------------------------- */

/* Per chunk (op_attention.c's derivation), P recomputed as exp(scale Q K^T - L):
 *   dP_p = dO_h V_kh^T,  dS_p = P (dP - rowsum(P dP))        (all pairs, one call each)
 *   dQ_h += scale dS_p K_kh                                    (all pairs, one call)
 *   dV_kh += sum_r P_r^T dO_r,  dK_kh += scale sum_r dS_r^T Q_r   (all units, one call each)
 * The GQA sums over the g query heads r of a kv head are one product per unit with K = g T: the
 * unit's g score blocks follow each other in the chunk (pairs p = u g + r), a (g T, T) matrix, and
 * Q and dO are first copied into (B, Hq, T, D) order, where the unit's g heads make a (g T, D)
 * matrix. (Per head, g calls of T x D outputs ran at about 50 TFLOP/s on an H100, 2.8 ms of a
 * 1B step.) */
static lq_status bwd_body(lq_ctx *ctx, lq_node *n, const attn_dims *d, float *gq, float *gk, float *gv,
                         const int acc[3]) {
    head_view q, k, v;
    LQ_TRY(view_of(ctx, n->in[0], &q));
    LQ_TRY(view_of(ctx, n->in[1], &k));
    LQ_TRY(view_of(ctx, n->in[2], &v));
    head_view dO = grad_view((const float *)n->out->grad->data, n->out);
    const float *L = (const float *)n->saved[1];
    const int32_t *doc = (const int32_t *)n->saved[2];
    if (!doc && n->n_in > 3 && !(doc = lq_cuda_upload_i32(ctx, n->in[3]))) return ctx->err.status;
    int64_t T = d->T, tt = T * T, cu = units_per_chunk(d), cp = cu * d->g, U = d->U, g = d->g;
    bool need_ds = gq || gk;
    float *S = (float *)lq_ctx_dalloc(ctx, (size_t)(cp * tt) * sizeof(float)), *G = NULL;
    if (!S) return ctx->err.status;
    if (need_ds && !(G = (float *)lq_ctx_dalloc(ctx, (size_t)(cp * tt) * sizeof(float)))) return ctx->err.status;
    head_view dq = grad_view(gq, n->in[0]), dk = grad_view(gk, n->in[1]), dv = grad_view(gv, n->in[2]);
    int64_t sp = tt * (int64_t)sizeof(float);
    /* Q (for dK) and dO (for dV) in (B, Hq, T, D) order: a head's (T, D) at b hsb + h hsh bytes */
    int64_t D = d->D, hsh = T * D * (int64_t)sizeof(float), hsb = d->Hq * hsh;
    float *Qt = NULL, *dOt = NULL;
    {
        const int64_t ne[4] = {d->B, d->Hq, T, D};
        const size_t tnb[4] = {(size_t)hsb, (size_t)hsh, (size_t)D * sizeof(float), sizeof(float)};
        if (gk) {
            const size_t qnb[4] = {(size_t)q.sb, (size_t)q.sh, (size_t)q.ld * sizeof(float), sizeof(float)};
            if (!(Qt = (float *)lq_ctx_dalloc(ctx, (size_t)(d->B * hsb)))) return ctx->err.status;
            LQ_TRY(lq_cuda_strided(ctx, Qt, tnb, (const float *)q.data, qnb, ne, false));
        }
        if (gv) {
            const size_t onb[4] = {(size_t)dO.sb, (size_t)dO.sh, (size_t)dO.ld * sizeof(float), sizeof(float)};
            if (!(dOt = (float *)lq_ctx_dalloc(ctx, (size_t)(d->B * hsb)))) return ctx->err.status;
            LQ_TRY(lq_cuda_strided(ctx, dOt, tnb, (const float *)dO.data, onb, ne, false));
        }
    }
    ptr_jobs js;
    memset(&js, 0, sizeof js);
    /* pair order */
    int jq = add_job(&js, q.data, q.sb, q.sh, 0, false, false), jk = add_job(&js, k.data, k.sb, k.sh, 0, false, true);
    int jv = add_job(&js, v.data, v.sb, v.sh, 0, false, true);
    int jdo = add_job(&js, dO.data, dO.sb, dO.sh, 0, false, false), js_ = add_job(&js, S, 0, 0, sp, false, false);
    int jg = G ? add_job(&js, G, 0, 0, sp, false, false) : -1;
    int jdq = gq ? add_job(&js, dq.data, dq.sb, dq.sh, 0, false, false) : -1;
    /* group order, r = 0 entries: per unit the start of its g stacked blocks / heads */
    int jsr = gv ? add_job(&js, S, 0, 0, sp, true, false) : -1;
    int jdot = gv ? add_job(&js, dOt, hsb, hsh, 0, true, false) : -1;
    int jdv = gv ? add_job(&js, dv.data, dv.sb, dv.sh, 0, true, true) : -1;
    int jgr = gk ? add_job(&js, G, 0, 0, sp, true, false) : -1;
    int jqt = gk ? add_job(&js, Qt, hsb, hsh, 0, true, false) : -1;
    int jdk = gk ? add_job(&js, dk.data, dk.sb, dk.sh, 0, true, true) : -1;
    const char **a;
    LQ_TRY(build_ptrs(ctx, &js, d, cp, &a));
#define ARR(j) (a + (int64_t)(j) * d->np)
    float scale = n->fp[0];
    int causal = n->ip[0] != 0 ? 1 : 0;
    bool fast = T % 4 == 0 && D % 4 == 0 && hv_aligned(&q) && hv_aligned(&k) && hv_aligned(&v) && hv_aligned(&dO) &&
                (!gq || hv_aligned(&dq)) && (!gk || hv_aligned(&dk)) && (!gv || hv_aligned(&dv));
    for (int64_t u0 = 0; u0 < U; u0 += cu) {
        int64_t nu = U - u0 < cu ? U - u0 : cu, p0 = u0 * g, np = nu * g;
        /* S (T, T) = scale Q K^T, then (when needed) dP (T, T) = dO V^T into G */
        LQ_TRY(bgemm(ctx, fast, false, true, T, T, d->D, scale, ARR(jq) + p0, q.ld, ARR(jk) + p0, k.ld, 0.0f,
                     ARR(js_) + p0, T, np));
        if (need_ds)
            LQ_TRY(bgemm(ctx, fast, false, true, T, T, d->D, 1.0f, ARR(jdo) + p0, dO.ld, ARR(jv) + p0, v.ld, 0.0f,
                         ARR(jg) + p0, T, np));
        k_softmax_bwd<<<row_blocks(np * T), ROW_THREADS, 0, (cudaStream_t)lq_cuda_stream(ctx)>>>(
            S, G, L, np * T, T, p0, d->Hq, doc, causal);
        LQ_CUDA_LAUNCHED(ctx, "attention softmax backward");
        if (gq) /* (T, D) += scale dS (T, T) K (T, D) */
            LQ_TRY(bgemm(ctx, fast, false, false, T, d->D, T, scale, ARR(jg) + p0, T, ARR(jk) + p0, k.ld,
                         acc[0] ? 1.0f : 0.0f, ARR(jdq) + p0, dq.ld, np));
        if (gv) /* (T, D) += [P_0; ..; P_g-1]^T (T, g T) [dO_0; ..; dO_g-1] (g T, D) */
            LQ_TRY(bgemm(ctx, fast, true, false, T, D, g * T, 1.0f, ARR(jsr) + u0, T, ARR(jdot) + u0, D,
                         acc[2] ? 1.0f : 0.0f, ARR(jdv) + u0, dv.ld, nu));
        if (gk) /* (T, D) += scale [dS_0; ..]^T (T, g T) [Q_0; ..] (g T, D) */
            LQ_TRY(bgemm(ctx, fast, true, false, T, D, g * T, scale, ARR(jgr) + u0, T, ARR(jqt) + u0, D,
                         acc[1] ? 1.0f : 0.0f, ARR(jdk) + u0, dk.ld, nu));
    }
#undef ARR
    return LQ_OK;
}

/* The gradients of q, k and v are added into, or, where one is a fresh pool block
 * (lq_grad_get_fresh: not zeroed), assigned by the same products and kernels (beta 0, acc 0):
 * every element is written once, and the block needs no memset (25 MB per layer at the 1B shape).
 * Not when two inputs are one tensor (self-attention on x, x, x): their gradients share a buffer
 * that several products add into. */
extern "C" lq_status lq_cuda_attention_bwd(lq_ctx *ctx, lq_node *n) {
    float *g[3];
    int acc[3] = {1, 1, 1};
    const bool alias = n->in[0] == n->in[1] || n->in[0] == n->in[2] || n->in[1] == n->in[2];
    /* the gradients first: a first-use buffer comes from the arena and must outlive the mark */
    for (int i = 0; i < 3; i++) {
        bool fresh = false;
        if (alias) LQ_TRY(lq_grad_get(ctx, n->in[i], &g[i]));
        else LQ_TRY(lq_grad_get_fresh(ctx, n->in[i], &g[i], &fresh));
        acc[i] = fresh ? 0 : 1;
    }
    float *gq = g[0], *gk = g[1], *gv = g[2];
    if (lq_numel(n->out) == 0 || (!gq && !gk && !gv)) {
        for (int i = 0; i < 3; i++) /* nothing to assign: a fresh block is zeroed */
            if (g[i] && !acc[i])
                LQ_TRY(lq_cuda_memset(g[i], 0, (size_t)lq_numel(n->in[i]) * sizeof(float), lq_cuda_stream(ctx),
                                      &ctx->err));
        return LQ_OK;
    }
    if (!n->saved[1]) return LQ_ERR(&ctx->err, LQ_ERR_STATE, "attention: backward without the saved row logsumexp");
    attn_dims d = dims_of(n);
    lq_ctx_mark mark = lq_ctx_get_mark(ctx);
    lq_status s = lq_cuda_flash_attn_wanted(ctx, n) ? lq_cuda_flash_attn_bwd(ctx, n, gq, gk, gv, acc)
                                                    : bwd_body(ctx, n, &d, gq, gk, gv, acc);
    lq_ctx_reset_to(ctx, mark); /* scores, dS, pointers: every kernel reading them is queued */
    return s;
}
