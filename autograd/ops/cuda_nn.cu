/* autograd/ops/cuda_nn.cu: CUDA kernels of the nn ops (forward and backward), beside their CPU files. */
#include "autograd/cuda_impl.h"
#include "core/cuda_check.h"

extern "C" const lq_cuda_op lq_cuda_ops_nn[] = {
    {NULL, NULL, NULL},
};
