/* autograd/ops/cuda_qlinear_dy.cu: the first kernel of the bf16 QLoRA linear's backward (cuda_qlinear.cu):
 * dY (M, N) f32 to bf16 and, in the same pass, du = s dY16 B (M, r) on the tensor cores, so du needs
 * no product of its own. cuBLAS ran du (an M x r output over a reduction of N) on 32-64 blocks,
 * about 7 us per call at the 1B bench shape, on the step's critical path; here it rides in the
 * memory-bound conversion, which reads each dY element once either way.
 *
 * A block takes 16 rows; its 8 warps split N in 64-column steps (warp w: steps w, w + 8, ...). Per
 * step a warp loads its 16 x 64 f32 tile (coalesced float4s), rounds it to bf16 (nearest even, as
 * lq_cuda_to_bf16), writes it to dY16 and to a shared tile, then multiplies that tile by B's 64
 * rows (WMMA 16x16x16, bf16 in, fp32 accumulation; r / 16 fragments). At the end the 8 warps'
 * partial sums are added in warp order (deterministic, no atomics) and du16 = bf16(s sum), the
 * value lq_cuda_to_bf16 of an fp32 s dY16 B would give, up to the summation order. */
#include <cuda_bf16.h>
#include <mma.h>
#include <stdint.h>

#include "autograd/cuda_impl.h"
#include "core/cuda_check.h"

using namespace nvcuda;

#define DD_WARPS 8
#define DD_ROWS 16
#define DD_STEP 64
#define DD_LDT (DD_STEP + 8) /* the shared tile's row stride (bf16): 144 bytes, a multiple of 16 as WMMA's ldm needs */
#define DD_RMAX 64           /* r / 16 accumulator fragments per warp, at most 4 */

template <int RF>
__global__ static void __launch_bounds__(DD_WARPS * 32)
    k_dy_du(const float *gy, int64_t M, int64_t N, __nv_bfloat16 *gy16, int64_t ld, const __nv_bfloat16 *B, float s,
            __nv_bfloat16 *du, int64_t lddu) {
    __shared__ __align__(32) __nv_bfloat16 tile[DD_WARPS][DD_ROWS * DD_LDT];
    __shared__ __align__(32) float part[DD_WARPS][DD_ROWS * 16];
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, r = 16 * RF;
    const int64_t i0 = (int64_t)blockIdx.x * DD_ROWS;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[RF];
    for (int f = 0; f < RF; f++) wmma::fill_fragment(acc[f], 0.0f);
    __nv_bfloat16 *t = tile[w];
    for (int64_t n0 = (int64_t)w * DD_STEP; n0 < N; n0 += DD_WARPS * DD_STEP) {
        float4 v[8]; /* the tile: 16 rows x 16 float4, lane takes entries lane, lane + 32, ... */
        for (int q = 0; q < 8; q++) {
            const int e = q * 32 + lane, row = e >> 4, c = (e & 15) * 4;
            v[q] = i0 + row < M ? *(const float4 *)(gy + (i0 + row) * N + n0 + c) : make_float4(0.f, 0.f, 0.f, 0.f);
        }
        for (int q = 0; q < 8; q++) {
            const int e = q * 32 + lane, row = e >> 4, c = (e & 15) * 4;
            __nv_bfloat162 lo = __floats2bfloat162_rn(v[q].x, v[q].y), hi = __floats2bfloat162_rn(v[q].z, v[q].w);
            __nv_bfloat162 *sp = (__nv_bfloat162 *)(t + row * DD_LDT + c);
            sp[0] = lo;
            sp[1] = hi;
            if (i0 + row < M) {
                __nv_bfloat162 *gp = (__nv_bfloat162 *)(gy16 + (i0 + row) * ld + n0 + c);
                gp[0] = lo;
                gp[1] = hi;
            }
        }
        __syncwarp();
        for (int kk = 0; kk < DD_STEP; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
            wmma::load_matrix_sync(a, t + kk, DD_LDT);
            for (int f = 0; f < RF; f++) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
                wmma::load_matrix_sync(b, B + (n0 + kk) * r + 16 * f, r);
                wmma::mma_sync(acc[f], a, b, acc[f]);
            }
        }
        __syncwarp(); /* the tile is read before the next step rewrites it */
    }
    for (int f = 0; f < RF; f++) { /* du's columns 16 f .. 16 f + 15: the warps' sums in warp order */
        wmma::store_matrix_sync(part[w], acc[f], 16, wmma::mem_row_major);
        __syncthreads();
        const int e = threadIdx.x, row = e >> 4, col = e & 15; /* 256 threads: one element each */
        float sum = 0.0f;
        for (int k = 0; k < DD_WARPS; k++) sum += part[k][e];
        if (i0 + row < M) du[(i0 + row) * lddu + 16 * f + col] = __float2bfloat16_rn(s * sum);
        __syncthreads(); /* part is read before the next fragment's store */
    }
}

extern "C" bool lq_cuda_dy_du_fits(const float *gy, int64_t N, const void *gy16, int64_t ld, const void *B, int64_t r) {
    return r >= 16 && r <= DD_RMAX && r % 16 == 0 && N >= DD_STEP && N % DD_STEP == 0 && ld % 4 == 0 &&
           (uintptr_t)gy % 16 == 0 && (uintptr_t)gy16 % 8 == 0 && (uintptr_t)B % 32 == 0;
}

extern "C" lq_status lq_cuda_dy_du(lq_ctx *ctx, const float *gy, int64_t M, int64_t N, void *gy16, int64_t ld,
                                   const void *B, int64_t r, float s, void *du, int64_t lddu) {
    if (M <= 0) return LQ_OK;
    if (!lq_cuda_dy_du_fits(gy, N, gy16, ld, B, r))
        return LQ_ERR(&ctx->err, LQ_ERR_INTERNAL, "lora_linear: dY / du kernel called on a shape it does not take");
    const unsigned blocks = (unsigned)((M + DD_ROWS - 1) / DD_ROWS);
    cudaStream_t st = (cudaStream_t)lq_cuda_stream(ctx);
    __nv_bfloat16 *g = (__nv_bfloat16 *)gy16, *d = (__nv_bfloat16 *)du;
    const __nv_bfloat16 *b = (const __nv_bfloat16 *)B;
    switch (r / 16) {
    case 1: k_dy_du<1><<<blocks, DD_WARPS * 32, 0, st>>>(gy, M, N, g, ld, b, s, d, lddu); break;
    case 2: k_dy_du<2><<<blocks, DD_WARPS * 32, 0, st>>>(gy, M, N, g, ld, b, s, d, lddu); break;
    case 3: k_dy_du<3><<<blocks, DD_WARPS * 32, 0, st>>>(gy, M, N, g, ld, b, s, d, lddu); break;
    default: k_dy_du<4><<<blocks, DD_WARPS * 32, 0, st>>>(gy, M, N, g, ld, b, s, d, lddu); break;
    }
    LQ_CUDA_LAUNCHED(ctx, "lora_linear dY and du");
    return LQ_OK;
}
