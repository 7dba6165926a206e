/* core/cuda_check.h: the check macros every CUDA, cuBLAS and cuBLASLt call goes through (.cu files
 * only): on failure they record file:line, the call and the library's own words, and return the
 * status from the enclosing function. */
#ifndef LQ_CORE_CUDA_CHECK_H
#define LQ_CORE_CUDA_CHECK_H

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "core/status.h"

#define LQ_CU(err, call)                                                                                   \
    do {                                                                                                   \
        cudaError_t lq_cu_e_ = (call);                                                                     \
        if (lq_cu_e_ != cudaSuccess)                                                                       \
            return lq_err_set((err), LQ_ERR_INTERNAL, __FILE__, __LINE__, "CUDA call %s failed: %s (%s)", #call, \
                              cudaGetErrorName(lq_cu_e_), cudaGetErrorString(lq_cu_e_));                  \
    } while (0)

#define LQ_CUBLAS(err, call)                                                                                \
    do {                                                                                                    \
        cublasStatus_t lq_cb_s_ = (call);                                                                   \
        if (lq_cb_s_ != CUBLAS_STATUS_SUCCESS)                                                              \
            return lq_err_set((err), LQ_ERR_INTERNAL, __FILE__, __LINE__, "cuBLAS call %s failed: %s (%s)", #call, \
                              cublasGetStatusName(lq_cb_s_), cublasGetStatusString(lq_cb_s_));              \
    } while (0)

/* After a kernel launch: the launch's own error (bad configuration, no kernel image), if any. */
#define LQ_CU_LAUNCHED(err, what)                                                                           \
    do {                                                                                                    \
        cudaError_t lq_cu_e_ = cudaGetLastError();                                                          \
        if (lq_cu_e_ != cudaSuccess)                                                                        \
            return lq_err_set((err), LQ_ERR_INTERNAL, __FILE__, __LINE__, "CUDA kernel %s failed to launch: %s (%s)", \
                              (what), cudaGetErrorName(lq_cu_e_), cudaGetErrorString(lq_cu_e_));            \
    } while (0)

#endif
