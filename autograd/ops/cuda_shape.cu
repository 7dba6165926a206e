/* autograd/ops/cuda_shape.cu: CUDA kernels of the shape ops (forward and backward), beside their CPU files. */
#include "autograd/cuda_impl.h"
#include "core/cuda_check.h"

extern "C" const lq_cuda_op lq_cuda_ops_shape[] = {
    {NULL, NULL, NULL},
};
