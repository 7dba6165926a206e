/* quant/kernels.h: the per-block dequantization logic, written once as static inline functions
 * that the scalar reference, the vectorized CPU path and the CUDA kernels all call (marked
 * __host__ __device__ under nvcc). One header per family: */
#ifndef LQ_QUANT_KERNELS_H
#define LQ_QUANT_KERNELS_H

#include "quant/kernels_affine.h"
#include "quant/kernels_bnb.h"
#include "quant/kernels_ggml.h"

#endif
