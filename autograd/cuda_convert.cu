/* autograd/cuda_convert.cu: f32 -> bf16 conversions on the device, for the operands of products in bf16
 * math: packed, row-strided (lq_cuda_to_bf16), strided-batched into scratch (lq_cuda_gemm's
 * operands) and the adapter's two small operands in one launch. Round to nearest even everywhere,
 * so each equals lq_f32_to_bf16 of the same float. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <string.h>

#include "autograd/ops/cuda_loop.cuh"

/* f32 -> bf16, round to nearest even. The vector forms move 8 elements per step (two 16-byte loads,
 * one 16-byte store) where both pointers are 16-byte aligned; the scalar form takes the rest. The
 * scalar kernel ran at about 2 TB/s of a 3 TB/s copy on an H100 (ncu, 1B step). */
__device__ static inline uint4 bf16x8(float4 a, float4 b) {
    const uint2 lo = bf16x4(a), hi = bf16x4(b);
    return make_uint4(lo.x, lo.y, hi.x, hi.y);
}

__global__ static void k_to_bf16(__nv_bfloat16 *d, const float *s, int64_t n) {
    FOR_EACH(i, n) d[i] = __float2bfloat16_rn(s[i]);
}

/* n8 groups of 8 (d, s 16-byte aligned); the caller converts the n % 8 tail */
__global__ static void k_to_bf16_v8(uint4 *d, const float4 *s, int64_t n8) {
    FOR_EACH(i, n8) d[i] = bf16x8(__ldg(s + 2 * i), __ldg(s + 2 * i + 1));
}

/* bf16 copy of a strided-batched operand: rows x cols elements per batch with row stride ld
 * (elements), batch stride st; the copy is packed (ld' = cols, st' = rows * cols or 0). */
__global__ static void k_to_bf16_2d(__nv_bfloat16 *d, const float *s, int64_t rows, int64_t cols, int64_t ld,
                                    int64_t st, int64_t batch) {
    int64_t n = rows * cols * batch;
    FOR_EACH(i, n) {
        int64_t c = i % cols, r = (i / cols) % rows, b = i / (cols * rows);
        d[i] = __float2bfloat16_rn(s[b * st + r * ld + c]);
    }
}

/* d (rows, cols), row stride ldd = bf16 of s (rows, cols), row stride lds: a row per blockIdx.y
 * step, its columns over x */
__global__ static void k_rows_to_bf16(__nv_bfloat16 *d, int64_t ldd, const float *s, int64_t lds, int64_t rows,
                                      int64_t cols) {
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
        for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += (int64_t)gridDim.x * blockDim.x)
            d[r * ldd + c] = __float2bfloat16_rn(s[r * lds + c]);
}

/* the same with 8 columns per step: d, s, ldd and lds all keep each row 16-byte aligned, cols % 8 == 0 */
__global__ static void k_rows_to_bf16_v8(__nv_bfloat16 *d, int64_t ldd, const float *s, int64_t lds, int64_t rows,
                                         int64_t c8) {
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        uint4 *dr = (uint4 *)(d + r * ldd);
        const float4 *sr = (const float4 *)(s + r * lds);
        for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < c8; c += (int64_t)gridDim.x * blockDim.x)
            dr[c] = bf16x8(__ldg(sr + 2 * c), __ldg(sr + 2 * c + 1));
    }
}

/* two contiguous conversions in one launch (blockIdx.y picks which): the small adapter operands of
 * the bf16 QLoRA linear, a few thousand elements each, where a launch costs more than the work */
__global__ static void k_to_bf16_pair(__nv_bfloat16 *d0, const float *s0, int64_t n0, __nv_bfloat16 *d1,
                                      const float *s1, int64_t n1) {
    __nv_bfloat16 *d = blockIdx.y ? d1 : d0;
    const float *s = blockIdx.y ? s1 : s0;
    int64_t n = blockIdx.y ? n1 : n0;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        d[i] = __float2bfloat16_rn(s[i]);
}

static bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

static lq_status packed_on(lq_ctx *ctx, cudaStream_t st, void *dst, const float *s, int64_t n) {
    __nv_bfloat16 *d = (__nv_bfloat16 *)dst;
    int64_t head = 0;
    if (aligned16(d) && aligned16(s) && n >= 8) {
        int64_t n8 = n / 8;
        k_to_bf16_v8<<<lq_cuda_blocks(n8), LQ_CUDA_THREADS, 0, st>>>((uint4 *)d, (const float4 *)s, n8);
        LQ_CUDA_LAUNCHED(ctx, "to bf16 (x8)");
        head = n8 * 8;
    }
    if (head < n) {
        k_to_bf16<<<lq_cuda_blocks(n - head), LQ_CUDA_THREADS, 0, st>>>(d + head, s + head, n - head);
        LQ_CUDA_LAUNCHED(ctx, "to bf16");
    }
    return LQ_OK;
}

extern "C" lq_status lq_cuda_to_bf16_packed(lq_ctx *ctx, void *dst, const float *s, int64_t n) {
    return packed_on(ctx, STREAM(ctx), dst, s, n);
}

extern "C" lq_status lq_cuda_to_bf16_on(lq_ctx *ctx, bool side, void *dst, int64_t ldd, const float *src, int64_t lds,
                                        int64_t rows, int64_t cols) {
    if (rows <= 0 || cols <= 0) return LQ_OK;
    LQ_CHECK(&ctx->err, ldd >= cols && lds >= cols, LQ_ERR_ARG, "to bf16: row strides %lld / %lld under %lld columns",
             (long long)ldd, (long long)lds, (long long)cols);
    __nv_bfloat16 *d = (__nv_bfloat16 *)dst;
    cudaStream_t st = (cudaStream_t)(side ? lq_cuda_side_stream(ctx) : lq_cuda_stream(ctx));
    if ((ldd == cols && lds == cols) || rows == 1) return packed_on(ctx, st, d, src, rows * cols);
    dim3 grid(1, (unsigned)(rows < 65535 ? rows : 65535));
    if (cols % 8 == 0 && ldd % 8 == 0 && lds % 4 == 0 && aligned16(d) && aligned16(src)) {
        grid.x = lq_cuda_blocks(cols / 8);
        k_rows_to_bf16_v8<<<grid, LQ_CUDA_THREADS, 0, st>>>(d, ldd, src, lds, rows, cols / 8);
    } else {
        grid.x = lq_cuda_blocks(cols);
        k_rows_to_bf16<<<grid, LQ_CUDA_THREADS, 0, st>>>(d, ldd, src, lds, rows, cols);
    }
    LQ_CUDA_LAUNCHED(ctx, "to bf16 (rows)");
    return LQ_OK;
}

extern "C" lq_status lq_cuda_to_bf16(lq_ctx *ctx, void *dst, int64_t ldd, const float *src, int64_t lds, int64_t rows,
                                     int64_t cols) {
    return lq_cuda_to_bf16_on(ctx, false, dst, ldd, src, lds, rows, cols);
}

extern "C" lq_status lq_cuda_to_bf16_pair(lq_ctx *ctx, bool side, void *d0, const float *s0, int64_t n0, void *d1,
                                          const float *s1, int64_t n1) {
    int64_t n = n0 > n1 ? n0 : n1;
    if (n <= 0) return LQ_OK;
    dim3 grid(lq_cuda_blocks(n), 2);
    cudaStream_t st = (cudaStream_t)(side ? lq_cuda_side_stream(ctx) : lq_cuda_stream(ctx));
    k_to_bf16_pair<<<grid, LQ_CUDA_THREADS, 0, st>>>((__nv_bfloat16 *)d0, s0, n0 > 0 ? n0 : 0,
                                                                    (__nv_bfloat16 *)d1, s1, n1 > 0 ? n1 : 0);
    LQ_CUDA_LAUNCHED(ctx, "to bf16 (pair)");
    return LQ_OK;
}

extern "C" lq_status lq_cuda_to_bf16_scratch(lq_ctx *ctx, const float *src, int64_t rows, int64_t cols, int64_t ld,
                                             int64_t st, int64_t batch, void **out) {
    int64_t nb = st ? batch : 1;
    int64_t n = rows * cols * nb;
    __nv_bfloat16 *d = (__nv_bfloat16 *)lq_ctx_dalloc(ctx, (size_t)n * sizeof(__nv_bfloat16));
    if (!d) return ctx->err.status;
    if (ld == cols && (st == 0 || st == rows * cols)) {
        LQ_TRY(lq_cuda_to_bf16_packed(ctx, d, src, n));
    } else {
        k_to_bf16_2d<<<lq_cuda_blocks(n), LQ_CUDA_THREADS, 0, STREAM(ctx)>>>(d, src, rows, cols, ld, st, nb);
        LQ_CUDA_LAUNCHED(ctx, "to bf16");
    }
    *out = d;
    return LQ_OK;
}
