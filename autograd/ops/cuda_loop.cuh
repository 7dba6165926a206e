/* autograd/ops/cuda_loop.cuh: the grid-stride loop, launch and alignment helpers the elementwise
 * kernel files (cuda_elementwise.cu, cuda_activation.cu, cuda_norm.cu, cuda_convert.cu) share, and
 * the f32 -> bf16 packing. */
#ifndef LQ_CUDA_LOOP_CUH
#define LQ_CUDA_LOOP_CUH

#include <cuda_bf16.h>
#include <stdint.h>
#include <string.h>

#include "autograd/cuda_impl.h"
#include "core/cuda_check.h"

#define FOR_EACH(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

#define STREAM(ctx) ((cudaStream_t)lq_cuda_stream(ctx))

/* A grid-stride kernel over n items on the context's stream (nothing when n is 0), its launch
 * error into ctx. */
#define LAUNCH(ctx, what, kernel, n, ...)                                                             \
    do {                                                                                             \
        if ((n) > 0) {                                                                               \
            kernel<<<lq_cuda_blocks(n), LQ_CUDA_THREADS, 0, STREAM(ctx)>>>(__VA_ARGS__);             \
            LQ_CUDA_LAUNCHED(ctx, what);                                                             \
        }                                                                                            \
    } while (0)

/* Whether the float4 kernels (binop, accumulate, swiglu; rmsnorm's rows with m = C) apply:
 * m % 4 == 0 and every non-NULL pointer 16-byte aligned. */
static inline bool aligned4(int64_t m, const void *const *p, int np) {
    if (m % 4 != 0) return false;
    for (int i = 0; i < np; i++)
        if ((uintptr_t)p[i] % 16 != 0) return false;
    return true;
}

/* four floats as bf16 (round to nearest even), packed into 8 bytes in order */
__device__ static inline uint2 bf16x4(float4 a) {
    const __nv_bfloat162 lo = __floats2bfloat162_rn(a.x, a.y), hi = __floats2bfloat162_rn(a.z, a.w);
    uint2 o;
    memcpy(&o.x, &lo, 4);
    memcpy(&o.y, &hi, 4);
    return o;
}

#endif
