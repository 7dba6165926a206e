/* quant/dequant_cuda.h: dequantization of any traits-table format on a CUDA device (make CUDA=1). */
#ifndef LQ_QUANT_DEQUANT_CUDA_H
#define LQ_QUANT_DEQUANT_CUDA_H

#include <stdbool.h>
#include <stdint.h>

#include "core/status.h"
#include "quant/quant.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Converts n elements, starting at element `start` of a tensor, from dtype t to float32 on the
 * device, as the traits table's to_f32 does on the CPU (same arguments, same per-block logic from
 * quant/kernels_*.h, the same float32 results bit for bit):
 *   d_src   device pointer to element `start`'s bytes (2-byte aligned for the ggml blocks);
 *   d_dst   device pointer to n floats;
 *   start, n multiples of t's block size (of 2 for packed nibbles); start only indexes the state;
 *   qs      a HOST struct describing the tensor's state whose array members are DEVICE pointers:
 *           absmax (or absmax_q + absmax2 + code2 when double-quantized) and zero, each covering
 *           the whole tensor's blocks (block i of the tensor is absmax[i], i = element / qs->block).
 *           Its scalar members (block, bits, block2, offset) are read on the host and passed to
 *           the kernel by value, so the struct itself may live on the stack. NULL for formats
 *           without a state (f32, f16, bf16, the ggml blocks).
 *   stream  a cudaStream_t (NULL = the default stream). The call only launches: the result is
 *           ready when the stream is; launch errors are reported here, kernel faults at the next
 *           synchronisation.
 * LQ_ERR_ARG for bad arguments (the message names which), LQ_ERR_UNSUPPORTED for a dtype with no
 * kernel (i32, u8) or a build without CUDA (quant/dequant_none.c), LQ_ERR_INTERNAL when the CUDA
 * runtime refuses the launch (its message is included). */
lq_status lq_cuda_dequant(lq_dtype t, const void *d_src, float *d_dst, int64_t n, int64_t start, const lq_qstate *qs,
                          void *stream, lq_err *err);

/* Whether lq_cuda_dequant has a kernel for t in this build (false everywhere without CUDA). */
bool lq_cuda_dequant_supported(lq_dtype t);

/* The same conversion to bfloat16 (d_dst: n uint16 bf16 bit patterns, device memory), for the
 * bitsandbytes formats NF4 / FP4: each element is first the float32 that lq_cuda_dequant gives,
 * then rounded to nearest even (__float2bfloat16_rn), so it equals a bf16 cast of the f32 result;
 * half the bytes for a bf16 tensor-core product. Arguments and errors as lq_cuda_dequant;
 * LQ_ERR_UNSUPPORTED for any other dtype (see lq_cuda_dequant_bf16_supported). */
lq_status lq_cuda_dequant_bf16(lq_dtype t, const void *d_src, uint16_t *d_dst, int64_t n, int64_t start,
                               const lq_qstate *qs, void *stream, lq_err *err);
bool lq_cuda_dequant_bf16_supported(lq_dtype t);

/* lq_cuda_dequant_bf16 of rows x K elements (from element start) into rows of stride ld elements:
 * row i's K values at d_dst + i ld, the columns past K left as they are (the bf16 QLoRA linear
 * puts the adapter's B beside W's rows there). Only what the vector kernel takes, as
 * lq_cuda_dequant_bf16_rows_ok says: NF4 / FP4, K, ld and start multiples of 8, state blocks
 * powers of two and multiples of 8, codes 4-byte and d_dst 16-byte aligned; LQ_ERR_ARG otherwise. */
bool lq_cuda_dequant_bf16_rows_ok(lq_dtype t, const void *d_src, const void *d_dst, int64_t rows, int64_t K,
                                  int64_t ld, int64_t start, const lq_qstate *qs);
lq_status lq_cuda_dequant_bf16_rows(lq_dtype t, const void *d_src, uint16_t *d_dst, int64_t rows, int64_t K,
                                    int64_t ld, int64_t start, const lq_qstate *qs, void *stream, lq_err *err);

#ifdef __cplusplus
}
#endif

#endif
