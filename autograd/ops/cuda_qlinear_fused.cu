/* autograd/ops/cuda_qlinear_fused.cu: a fused NF4 / FP4 linear for the QLoRA hot path: each thread block
 * dequantizes its tile of W to bf16 in shared memory and multiplies on the tensor cores (WMMA
 * 16x16x16, fp32 accumulation), so no dequantized copy of W ever reaches global memory. Opt-in:
 * LOQUAT_FUSED_QLINEAR=1 in a context with cuda_math bf16; otherwise cuda_qlinear.cu dequantizes
 * to bf16 and calls cuBLAS. */
#include <cuda_bf16.h>
#include <mma.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/cuda_impl.h"
#include "core/cuda_check.h"
#include "quant/kernels_bnb.h"

using namespace nvcuda;

/* Output tile BM x BN per block of 4 warps (2 x 2, each 32 x 32 = 2 x 2 fragments), the inner
 * dimension in steps of BK. Shared rows are padded by 8 bf16 (4 floats) against bank conflicts;
 * WMMA wants ldm a multiple of 8 (bf16) / 4 (float) and 32-byte aligned fragment pointers, which
 * these sizes give (fragment offsets are multiples of 16 rows and 16 columns). */
#define FQ_BM 64
#define FQ_BN 64
#define FQ_BK 32
#define FQ_THREADS 128
#define FQ_LDA (FQ_BK + 8)  /* As[BM][LDA]: activation rows x inner */
#define FQ_LDBF (FQ_BK + 8) /* forward Bs[BN][LDBF]: W rows (output cols) x inner = col-major B */
#define FQ_LDBB (FQ_BN + 8) /* backward Bs[BK][LDBB]: W rows (inner) x W cols (output cols) = row-major B */
#define FQ_LDC (FQ_BN + 4)

__constant__ float c_fq_nf4[16] = LQ_NF4_CODE_INIT;
__constant__ float c_fq_fp4[16] = LQ_FP4_CODE_INIT;

/* W's bnb state by value; arrays are device pointers (see lq_cuda_dequant). */
typedef struct fq_state {
    const float *absmax, *absmax2, *code2;
    const uint8_t *absmax_q;
    int64_t block, block2;
    float offset;
} fq_state;

/* Element (n, k) of W (N, K) as bf16: the f32 value lq_cuda_dequant gives (code * absmax, one
 * rounded multiply, quant/kernels_bnb.h), rounded to nearest even: lq_cuda_dequant_bf16's value. */
__device__ static inline __nv_bfloat16 fq_w(const uint8_t *w, const float *code, const fq_state &q, int64_t n,
                                            int64_t k, int64_t K) {
    int64_t e = n * K + k;
    uint8_t b = w[e >> 1];
    int c = (e & 1) ? (b & 15) : (b >> 4);
    float a = lq_bnb4_block_absmax(q.absmax, q.absmax_q, q.absmax2, q.code2, q.block2, q.offset, e / q.block);
    return __float2bfloat16_rn(LQ_BNB_MUL(code[c], a));
}

/* BWD false: out (M, N) = act (M, K) W^T, act = x, the inner dimension K.
 * BWD true:  out (M, K) += act (M, N) W, act = dY, the inner dimension N.
 * Block (bx, by) computes out[by*BM : +BM, bx*BN : +BN]; out-of-range elements of a partial tile
 * are zeros in shared memory and never stored. Every thread reaches every __syncthreads. */
template <bool BWD>
__global__ static void __launch_bounds__(FQ_THREADS)
    k_fused(const uint8_t *w, fq_state q, int fp4, const float *act, float *out, int64_t M, int64_t N, int64_t K) {
    __shared__ float code[16];
    __shared__ __align__(32) __nv_bfloat16 As[FQ_BM * FQ_LDA];
    __shared__ __align__(32) __nv_bfloat16 Bs[BWD ? FQ_BK * FQ_LDBB : FQ_BN * FQ_LDBF];
    __shared__ __align__(32) float Cs[FQ_BM * FQ_LDC];
    const int tid = threadIdx.x, warp = tid / 32, wr = warp / 2, wc = warp % 2;
    if (tid < 16) code[tid] = fp4 ? c_fq_fp4[tid] : c_fq_nf4[tid];
    const int64_t inner = BWD ? N : K, cols = BWD ? K : N; /* product's inner dim and out's columns */
    const int64_t m0 = (int64_t)blockIdx.y * FQ_BM, c0 = (int64_t)blockIdx.x * FQ_BN;
    const __nv_bfloat16 zero = __float2bfloat16_rn(0.0f);
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.0f);
    __syncthreads(); /* code[] is ready */
    for (int64_t i0 = 0; i0 < inner; i0 += FQ_BK) {
        /* activation tile: act[m0 + r, i0 + c] (row stride inner) */
        for (int idx = tid; idx < FQ_BM * FQ_BK; idx += FQ_THREADS) {
            int r = idx / FQ_BK, c = idx % FQ_BK;
            int64_t gm = m0 + r, gi = i0 + c;
            As[r * FQ_LDA + c] = gm < M && gi < inner ? __float2bfloat16_rn(act[gm * inner + gi]) : zero;
        }
        if (!BWD) { /* Bs[n][k] = W[c0 + n, i0 + k] */
            for (int idx = tid; idx < FQ_BN * FQ_BK; idx += FQ_THREADS) {
                int r = idx / FQ_BK, c = idx % FQ_BK;
                int64_t gn = c0 + r, gk = i0 + c;
                Bs[r * FQ_LDBF + c] = gn < N && gk < K ? fq_w(w, code, q, gn, gk, K) : zero;
            }
        } else { /* Bs[n][k] = W[i0 + n, c0 + k] */
            for (int idx = tid; idx < FQ_BK * FQ_BN; idx += FQ_THREADS) {
                int r = idx / FQ_BN, c = idx % FQ_BN;
                int64_t gn = i0 + r, gk = c0 + c;
                Bs[r * FQ_LDBB + c] = gn < N && gk < K ? fq_w(w, code, q, gn, gk, K) : zero;
            }
        }
        __syncthreads();
        for (int kk = 0; kk < FQ_BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a[2];
            for (int i = 0; i < 2; i++) wmma::load_matrix_sync(a[i], As + (wr * 32 + i * 16) * FQ_LDA + kk, FQ_LDA);
            if (!BWD) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b[2];
                for (int j = 0; j < 2; j++)
                    wmma::load_matrix_sync(b[j], Bs + (wc * 32 + j * 16) * FQ_LDBF + kk, FQ_LDBF);
                for (int i = 0; i < 2; i++)
                    for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
            } else {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b[2];
                for (int j = 0; j < 2; j++)
                    wmma::load_matrix_sync(b[j], Bs + kk * FQ_LDBB + wc * 32 + j * 16, FQ_LDBB);
                for (int i = 0; i < 2; i++)
                    for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
            }
        }
        __syncthreads(); /* before the next step overwrites As / Bs */
    }
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            wmma::store_matrix_sync(Cs + (wr * 32 + i * 16) * FQ_LDC + wc * 32 + j * 16, acc[i][j], FQ_LDC,
                                    wmma::mem_row_major);
    __syncthreads();
    for (int idx = tid; idx < FQ_BM * FQ_BN; idx += FQ_THREADS) {
        int r = idx / FQ_BN, c = idx % FQ_BN;
        int64_t gm = m0 + r, gc = c0 + c;
        if (gm < M && gc < cols) {
            if (BWD) out[gm * cols + gc] += Cs[r * FQ_LDC + c];
            else out[gm * cols + gc] = Cs[r * FQ_LDC + c];
        }
    }
}

/* Whether the fused path is asked for and applies: LOQUAT_FUSED_QLINEAR=1, bf16 math, NF4 / FP4. */
extern "C" bool lq_cuda_fused_qlinear_wanted(lq_ctx *ctx, lq_dtype t) {
    if (ctx->cuda_math != LQ_CUDA_MATH_BF16 || (t != LQ_DTYPE_NF4 && t != LQ_DTYPE_FP4)) return false;
    const char *e = getenv("LOQUAT_FUSED_QLINEAR");
    return e && strcmp(e, "1") == 0;
}

/* backward false: out (M, N) = act (M, K) deq(w)^T; true: out (M, K) += act (M, N) deq(w). qs has
 * device arrays. M, N, K >= 1. */
extern "C" lq_status lq_cuda_fused_qlinear(lq_ctx *ctx, bool backward, const lq_tensor *w, const lq_qstate *qs,
                                           const float *act, float *out, int64_t M, int64_t N, int64_t K) {
    lq_err *err = &ctx->err;
    LQ_CHECK(err, qs && qs->block > 0 && (qs->absmax || (qs->absmax_q && qs->absmax2 && qs->code2 && qs->block2 > 0)),
             LQ_ERR_ARG, "fused qlinear: w '%s' needs a whole bnb quant state", w->name);
    int64_t cols = backward ? K : N, gy = (M + FQ_BM - 1) / FQ_BM, gx = (cols + FQ_BN - 1) / FQ_BN;
    LQ_CHECK(err, gy <= 65535 && gx <= 0x7fffffff, LQ_ERR_UNSUPPORTED, "fused qlinear: %lld rows is too many",
             (long long)M);
    fq_state q = {qs->absmax, qs->absmax2, qs->code2, qs->absmax_q, qs->block, qs->block2, qs->offset};
    dim3 grid((unsigned)gx, (unsigned)gy);
    cudaStream_t s = (cudaStream_t)lq_cuda_stream(ctx);
    int fp4 = w->dtype == LQ_DTYPE_FP4;
    if (backward) k_fused<true><<<grid, FQ_THREADS, 0, s>>>((const uint8_t *)w->data, q, fp4, act, out, M, N, K);
    else k_fused<false><<<grid, FQ_THREADS, 0, s>>>((const uint8_t *)w->data, q, fp4, act, out, M, N, K);
    LQ_CUDA_LAUNCHED(ctx, "fused qlinear");
    return LQ_OK;
}
