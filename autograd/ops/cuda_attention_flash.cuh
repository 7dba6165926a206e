/* autograd/ops/cuda_attention_flash.cuh: what the flash attention forward (cuda_attention_flash.cu) and
 * backward (cuda_attention_flash_bwd.cu) share: tile sizes, the kernels' argument block, the dynamic
 * shared memory layouts, the f32 -> bf16 tile loader and the host-side layout checks. */
#ifndef LQ_CUDA_ATTENTION_FLASH_CUH
#define LQ_CUDA_ATTENTION_FLASH_CUH

#include <cuda_bf16.h>
#include <math.h>
#include <mma.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/cuda_impl.h"
#include "core/cuda_check.h"

/* Blocks of 4 warps; each warp owns 16 rows of every per-block tile (query rows in the forward and
 * the dQ kernel, key rows in the dK / dV kernel), so the softmax and the accumulator updates need
 * only __syncwarp; block barriers guard the shared K / V (or Q / dO) tiles.
 *   FA_BQ  query rows per block (forward, dQ), FA_BK keys per step (forward, dQ);
 *   FA_KB  keys per block of the dK / dV kernel, FA_KQ query rows per step there (32: keeps its
 *          shared memory at D 128 under an A100's 163 KiB opt-in, see fa_bwd_kv_layout). */
#define FA_THREADS 128
#define FA_BQ 64
#define FA_BK 64
#define FA_KB 64
#define FA_KQ 32
#define FA_DMAX 128 /* D % 16 == 0, D <= FA_DMAX: the layouts below at D 128 fit 163 KiB */
/* Shared row padding: bf16 rows by 8 elements, f32 rows by 4 (bank spread). WMMA wants ldm a
 * multiple of 8 (bf16) / 4 (f32) and 32-byte aligned fragment pointers: fragments start at
 * multiples of 16 rows and 16 columns, and every buffer at a multiple of 128 bytes. */
#define FA_PADH 8
#define FA_PADF 4

using namespace nvcuda;

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa_frag_a;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa_frag_b_row;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fa_frag_b_col;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> fa_frag_c;

/* A warp's 16 x 16 f32 block C (shared, row stride ldc) = A B^T: A (16, K) and B (16, K) bf16 row
 * major (strides lda, ldb), K a multiple of 16: the scores S = Q K^T and dP = dO V^T. */
__device__ static inline void fa_mma_nt(float *C, int ldc, const __nv_bfloat16 *A, int lda, const __nv_bfloat16 *B,
                                        int ldb, int K) {
    fa_frag_c acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int kk = 0; kk < K; kk += 16) {
        fa_frag_a fa;
        fa_frag_b_col fb;
        wmma::load_matrix_sync(fa, A + kk, lda);
        wmma::load_matrix_sync(fb, B + kk, ldb);
        wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(C, acc, ldc, wmma::mem_row_major);
}

/* C (16 x 16 f32, shared, row stride ldc) += A B: A (16, K) and B (K, 16) bf16 row major: O += P V,
 * dV += P^T dO, dK += dS^T Q, dQ += dS K (the running sums stay in shared memory: WMMA's
 * accumulator layout is opaque, and the forward rescales O's rows between tiles). */
__device__ static inline void fa_mma_nn_add(float *C, int ldc, const __nv_bfloat16 *A, int lda,
                                            const __nv_bfloat16 *B, int ldb, int K) {
    fa_frag_c acc;
    wmma::load_matrix_sync(acc, C, ldc, wmma::mem_row_major);
    for (int kk = 0; kk < K; kk += 16) {
        fa_frag_a fa;
        fa_frag_b_row fb;
        wmma::load_matrix_sync(fa, A + kk, lda);
        wmma::load_matrix_sync(fb, B + (size_t)kk * ldb, ldb);
        wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(C, acc, ldc, wmma::mem_row_major);
}

/* Everything a kernel reads, by value. A (B, T, H, D) tensor's head h of batch b is the (T, D)
 * matrix at ptr + b sb + h sh with row stride ld (all in elements; unit stride within a row).
 * Gradient buffers are contiguous (B, T, H, D). L and Dv are indexed p T + i, p = b Hq + h. */
typedef struct fa_args {
    const float *q, *k, *v, *dO;
    float *o; /* forward: written; backward: read (Dv = rowsum(dO O)) */
    int64_t qsb, qsh, qld, ksb, ksh, kld, vsb, vsh, vld, osb, osh, old, dsb, dsh, dld;
    float *gq, *gk, *gv; /* backward: += (NULL: not wanted); = where the acc flag below is 0 */
    int accq, acck, accv; /* backward: 0: the buffer is fresh (garbage), its elements are assigned */
    float *L;            /* forward: written when not NULL; backward: read */
    const float *Dv;     /* backward: rowsum(dO O) per query row */
    const int32_t *doc;  /* (B, T) doc ids on the device, or NULL */
    int T, Hq, Hkv, g, D, causal, vec4;
    float scale;
} fa_args;

__host__ __device__ static inline size_t fa_round(size_t x) { return (x + 127) & ~(size_t)127; }

/* Byte offsets into the dynamic shared buffer. Forward: Q (BQ, D) K, V (BK, D) bf16, S (BQ, BK) f32,
 * P (BQ, BK) bf16, O (BQ, D) f32, the rows' 1 / l, the key tile's doc ids. */
typedef struct fa_fwd_layout {
    size_t q, k, v, s, p, o, inv, dk, total;
} fa_fwd_layout;

__host__ __device__ static inline fa_fwd_layout fa_fwd_layout_of(int D) {
    fa_fwd_layout y;
    size_t h = (size_t)(D + FA_PADH) * 2, f = (size_t)(D + FA_PADF) * 4;
    y.q = 0;
    y.k = y.q + fa_round(FA_BQ * h);
    y.v = y.k + fa_round(FA_BK * h);
    y.s = y.v + fa_round(FA_BK * h);
    y.p = y.s + fa_round((size_t)FA_BQ * (FA_BK + FA_PADF) * 4);
    y.o = y.p + fa_round((size_t)FA_BQ * (FA_BK + FA_PADH) * 2);
    y.inv = y.o + fa_round(FA_BQ * f);
    y.dk = y.inv + fa_round(FA_BQ * 4);
    y.total = y.dk + fa_round(FA_BK * 4);
    return y;
}

/* dK / dV kernel: K, V (KB, D) bf16, Q, dO (KQ, D) bf16, S^T, dP^T (KB, KQ) f32, P^T, dS^T (KB, KQ)
 * bf16, dK, dV (KB, D) f32, the query step's L, Dv and doc ids. */
typedef struct fa_kv_layout {
    size_t k, v, q, d, s, g, p, ds, dk, dv, lq, dq, docq, total;
} fa_kv_layout;

__host__ __device__ static inline fa_kv_layout fa_bwd_kv_layout(int D) {
    fa_kv_layout y;
    size_t h = (size_t)(D + FA_PADH) * 2, f = (size_t)(D + FA_PADF) * 4;
    y.k = 0;
    y.v = y.k + fa_round(FA_KB * h);
    y.q = y.v + fa_round(FA_KB * h);
    y.d = y.q + fa_round(FA_KQ * h);
    y.s = y.d + fa_round(FA_KQ * h);
    y.g = y.s + fa_round((size_t)FA_KB * (FA_KQ + FA_PADF) * 4);
    y.p = y.g + fa_round((size_t)FA_KB * (FA_KQ + FA_PADF) * 4);
    y.ds = y.p + fa_round((size_t)FA_KB * (FA_KQ + FA_PADH) * 2);
    y.dk = y.ds + fa_round((size_t)FA_KB * (FA_KQ + FA_PADH) * 2);
    y.dv = y.dk + fa_round(FA_KB * f);
    y.lq = y.dv + fa_round(FA_KB * f);
    y.dq = y.lq + fa_round(FA_KQ * 4);
    y.docq = y.dq + fa_round(FA_KQ * 4);
    y.total = y.docq + fa_round(FA_KQ * 4);
    return y;
}

/* dQ kernel: Q, dO (BQ, D) K, V (BK, D) bf16, S, dP (BQ, BK) f32, dS (BQ, BK) bf16, dQ (BQ, D) f32,
 * the key tile's doc ids. */
typedef struct fa_q_layout {
    size_t q, d, k, v, s, g, ds, dq, dk, total;
} fa_q_layout;

__host__ __device__ static inline fa_q_layout fa_bwd_q_layout(int D) {
    fa_q_layout y;
    size_t h = (size_t)(D + FA_PADH) * 2, f = (size_t)(D + FA_PADF) * 4;
    y.q = 0;
    y.d = y.q + fa_round(FA_BQ * h);
    y.k = y.d + fa_round(FA_BQ * h);
    y.v = y.k + fa_round(FA_BK * h);
    y.s = y.v + fa_round(FA_BK * h);
    y.g = y.s + fa_round((size_t)FA_BQ * (FA_BK + FA_PADF) * 4);
    y.ds = y.g + fa_round((size_t)FA_BQ * (FA_BK + FA_PADF) * 4);
    y.dq = y.ds + fa_round((size_t)FA_BQ * (FA_BK + FA_PADH) * 2);
    y.dk = y.dq + fa_round(FA_BQ * f);
    y.total = y.dk + fa_round(FA_BK * 4);
    return y;
}

/* Rows [r0, r0 + rows) of a head matrix src (row stride ld elements, D columns) into dst (rows, D)
 * bf16 (row stride ldd), rounded to nearest even; rows at or past T become zeros (a padded key's V
 * row must be 0, not NaN: P = 0 times NaN would be NaN). Block-wide; vec4: src, ld 16-byte aligned. */
__device__ static inline void fa_load(__nv_bfloat16 *dst, int ldd, const float *src, int64_t ld, int r0, int rows,
                                      int T, int D, int vec4) {
    if (vec4) {
        const int d4 = D / 4;
        for (int idx = threadIdx.x; idx < rows * d4; idx += blockDim.x) {
            const int r = idx / d4, c = (idx % d4) * 4;
            float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (r0 + r < T) x = *(const float4 *)(src + (int64_t)(r0 + r) * ld + c);
            __nv_bfloat16 *o = dst + r * ldd + c;
            o[0] = __float2bfloat16_rn(x.x);
            o[1] = __float2bfloat16_rn(x.y);
            o[2] = __float2bfloat16_rn(x.z);
            o[3] = __float2bfloat16_rn(x.w);
        }
    } else {
        for (int idx = threadIdx.x; idx < rows * D; idx += blockDim.x) {
            const int r = idx / D, c = idx % D;
            dst[r * ldd + c] = __float2bfloat16_rn(r0 + r < T ? src[(int64_t)(r0 + r) * ld + c] : 0.0f);
        }
    }
}

/* Zeros n floats of shared memory, block-wide. */
__device__ static inline void fa_zero(float *p, int n) {
    for (int idx = threadIdx.x; idx < n; idx += blockDim.x) p[idx] = 0.0f;
}

/* --- host side --------------------------------------------------------------------------------- */

/* A (B, T, H, D) tensor's head view in elements (cuda_attention.cu's view_of, in elements: a size-1
 * dim's stride is never used). false when a head vector is not unit-stride or a stride is not a
 * whole number of floats. */
static inline bool fa_view(const lq_tensor *t, const float **p, int64_t *sb, int64_t *sh, int64_t *ld) {
    if (t->ne[3] > 1 && t->nb[3] != sizeof(float)) return false;
    for (int i = 0; i < 3; i++)
        if (t->nb[i] % sizeof(float) != 0) return false;
    *p = (const float *)t->data;
    *sb = t->ne[0] > 1 ? (int64_t)(t->nb[0] / sizeof(float)) : 0;
    *sh = t->ne[2] > 1 ? (int64_t)(t->nb[2] / sizeof(float)) : 0;
    *ld = t->ne[1] > 1 ? (int64_t)(t->nb[1] / sizeof(float)) : t->ne[3];
    return *ld >= t->ne[3];
}

/* Whether a view's rows take float4 loads: pointer and strides 16-byte aligned. */
static inline bool fa_vec4(const float *p, int64_t sb, int64_t sh, int64_t ld) {
    return (uintptr_t)p % 16 == 0 && sb % 4 == 0 && sh % 4 == 0 && ld % 4 == 0;
}

/* q, k, v (node inputs) into a: views, dims, scale, mask; false when a layout does not fit. */
static inline bool fa_args_of(const lq_node *n, fa_args *a) {
    const lq_tensor *q = n->in[0], *k = n->in[1], *v = n->in[2];
    memset(a, 0, sizeof *a);
    if (!fa_view(q, &a->q, &a->qsb, &a->qsh, &a->qld) || !fa_view(k, &a->k, &a->ksb, &a->ksh, &a->kld) ||
        !fa_view(v, &a->v, &a->vsb, &a->vsh, &a->vld))
        return false;
    a->T = (int)q->ne[1];
    a->Hq = (int)q->ne[2];
    a->Hkv = (int)k->ne[2];
    a->g = a->Hkv > 0 ? a->Hq / a->Hkv : 1;
    a->D = (int)q->ne[3];
    a->causal = n->ip[0] != 0 ? 1 : 0;
    a->scale = n->fp[0];
    a->vec4 = fa_vec4(a->q, a->qsb, a->qsh, a->qld) && fa_vec4(a->k, a->ksb, a->ksh, a->kld) &&
              fa_vec4(a->v, a->vsb, a->vsh, a->vld);
    return true;
}

/* Sets the kernel's dynamic shared memory limit to bytes (over the default 48 KiB). */
#define FA_SMEM_OPTIN(ctx, kernel, bytes)                                                                      \
    LQ_CU(&(ctx)->err,                                                                                         \
          cudaFuncSetAttribute((const void *)(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize, (int)(bytes)))

#endif
