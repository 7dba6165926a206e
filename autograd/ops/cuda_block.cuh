/* autograd/ops/cuda_block.cuh: block-wide reductions for the CUDA row kernels (norms, softmax,
 * cross-entropy; attention's row softmax is a warp per row and needs none). blockDim.x a multiple of 32, at most 1024; every thread
 * of the block must call them (they hold barriers). */
#ifndef LQ_CUDA_BLOCK_CUH
#define LQ_CUDA_BLOCK_CUH

#include <math.h>

/* Sum / max over the block, the result in every thread. The leading __syncthreads keeps a previous
 * call's readers of sh from seeing this call's writes; every thread adds the warp partials in the
 * same order, so all threads agree bit for bit. */
template <typename T> static __device__ __forceinline__ T block_sum(T v) {
    __shared__ T sh[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    T r = 0;
    for (int i = 0; i < nw; i++) r += sh[i];
    return r;
}

/* max by comparison (NaNs skipped, as the CPU's `x > m ? x : m`), -inf for an empty block */
static __device__ __forceinline__ float block_max(float v) {
    __shared__ float sh[32];
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

#endif
