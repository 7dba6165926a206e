/* autograd/ops/cuda_elementwise.cu: CUDA kernels of the elementwise ops (forward and backward), beside their CPU files. */
#include "autograd/cuda_impl.h"
#include "core/cuda_check.h"

extern "C" const lq_cuda_op lq_cuda_ops_elementwise[] = {
    {NULL, NULL, NULL},
};
