/* autograd/ops/cuda_linear.cu: CUDA kernels of the linear ops (forward and backward), beside their CPU files. */
#include "autograd/cuda_impl.h"
#include "core/cuda_check.h"

extern "C" const lq_cuda_op lq_cuda_ops_linear[] = {
    {NULL, NULL, NULL},
};
