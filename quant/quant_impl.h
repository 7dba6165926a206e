/* quant/quant_impl.h: private declarations shared inside quant/: the conversion functions each
 * format's file provides for the dtype-traits table in dtype.c. */
#ifndef LQ_QUANT_IMPL_H
#define LQ_QUANT_IMPL_H

#include "quant/quant.h"

/* Each format declares its table functions here, in its group's section, as
 *   void lq_<fmt>_to_f32(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start);
 *   lq_status lq_<fmt>_from_f32(const float *src, void *dst, int64_t n, lq_qstate *qs, int64_t start, lq_err *err);
 */

/* --- integer affine (group: affine) --- */
void lq_i8_to_f32(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start);
lq_status lq_i8_from_f32(const float *src, void *dst, int64_t n, lq_qstate *qs, int64_t start, lq_err *err);
void lq_i4_to_f32(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start);
lq_status lq_i4_from_f32(const float *src, void *dst, int64_t n, lq_qstate *qs, int64_t start, lq_err *err);

/* --- bitsandbytes 4-bit (group: bnb) --- */

void lq_nf4_to_f32(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start);
lq_status lq_nf4_from_f32(const float *src, void *dst, int64_t n, lq_qstate *qs, int64_t start, lq_err *err);
void lq_fp4_to_f32(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start);
lq_status lq_fp4_from_f32(const float *src, void *dst, int64_t n, lq_qstate *qs, int64_t start, lq_err *err);
/* The pieces of bnb's arithmetic, visible to the tests: torch's float32 mean on the CPU, and bnb's
 * CPU quantize_blockwise (x finite) with the dynamic map. */
float lq_bnb_mean_f32(const float *x, int64_t n);
void lq_bnb_quantize_blockwise8(const float *x, int64_t n, int64_t block, uint8_t *codes, float *absmax);
/* Dequantize elements [start, start + n) (start even; src at start's byte) with one kernel:
 * LQ_BNB_ISA_AUTO picks the widest this CPU runs. False (and nothing written) if the CPU or build
 * lacks the one asked for. */
enum { LQ_BNB_ISA_AUTO = -1, LQ_BNB_ISA_SCALAR = 0, LQ_BNB_ISA_AVX2 = 1, LQ_BNB_ISA_AVX512 = 2 };
bool lq_bnb4_dequant_isa(lq_dtype type, const uint8_t *src, int64_t start, int64_t n, const lq_qstate *qs, float *y,
                         int isa);
/* quant/bnb4_simd.c: lq_bnb4_dequant_block (kernels_bnb.h) vectorized; bit-identical to it.
 * lq_bnb4_simd_built says whether this build has the x86 versions (else they are the scalar one). */
bool lq_bnb4_simd_built(void);
void lq_bnb4_dequant_block_avx2(const float *code, const uint8_t *src, int64_t n, float absmax, float *y);
void lq_bnb4_dequant_block_avx512(const float *code, const uint8_t *src, int64_t n, float absmax, float *y);
/* The same with non-temporal stores where y is aligned for them; end the run with the fence. */
void lq_bnb4_dequant_block_avx2_nt(const float *code, const uint8_t *src, int64_t n, float absmax, float *y);
void lq_bnb4_dequant_block_avx512_nt(const float *code, const uint8_t *src, int64_t n, float absmax, float *y);
void lq_bnb4_simd_fence(void);

/* --- ggml blocks (group: ggml) --- */
void lq_q4_0_to_f32(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start);
void lq_q4_1_to_f32(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start);
void lq_q5_0_to_f32(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start);
void lq_q5_1_to_f32(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start);
void lq_q8_0_to_f32(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start);
void lq_q4_k_to_f32(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start);
void lq_q5_k_to_f32(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start);
void lq_q6_k_to_f32(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start);
lq_status lq_q8_0_from_f32(const float *src, void *dst, int64_t n, lq_qstate *qs, int64_t start, lq_err *err);
lq_status lq_q4_0_from_f32(const float *src, void *dst, int64_t n, lq_qstate *qs, int64_t start, lq_err *err);
/* ggml_simd.c: nb whole blocks (2-byte aligned) with a vector path; false when this build or CPU
 * has no such path for t (the caller then runs the scalar one). */
bool lq_ggml_dequant_simd(lq_dtype t, const void *src, float *dst, int64_t nb, lq_ggml_path path);

#endif
