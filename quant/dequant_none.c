/* quant/dequant_none.c: lq_cuda_dequant in a build without CUDA (make CUDA=1 uses dequant.cu). */
#include "quant/dequant_cuda.h"

bool lq_cuda_dequant_supported(lq_dtype t) {
    (void)t;
    return false;
}

lq_status lq_cuda_dequant(lq_dtype t, const void *d_src, float *d_dst, int64_t n, int64_t start, const lq_qstate *qs,
                          void *stream, lq_err *err) {
    (void)d_src, (void)d_dst, (void)n, (void)start, (void)qs, (void)stream;
    return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "cuda dequant %s: loquat was built without CUDA (rebuild with make CUDA=1)",
                  lq_dtype_name(t));
}

bool lq_cuda_dequant_bf16_supported(lq_dtype t) {
    (void)t;
    return false;
}

lq_status lq_cuda_dequant_bf16(lq_dtype t, const void *d_src, uint16_t *d_dst, int64_t n, int64_t start,
                               const lq_qstate *qs, void *stream, lq_err *err) {
    (void)d_src, (void)d_dst, (void)n, (void)start, (void)qs, (void)stream;
    return LQ_ERR(err, LQ_ERR_UNSUPPORTED,
                  "cuda dequant %s to bf16: loquat was built without CUDA (rebuild with make CUDA=1)",
                  lq_dtype_name(t));
}

bool lq_cuda_dequant_bf16_rows_ok(lq_dtype t, const void *d_src, const void *d_dst, int64_t rows, int64_t K,
                                  int64_t ld, int64_t start, const lq_qstate *qs) {
    (void)t, (void)d_src, (void)d_dst, (void)rows, (void)K, (void)ld, (void)start, (void)qs;
    return false;
}

lq_status lq_cuda_dequant_bf16_rows(lq_dtype t, const void *d_src, uint16_t *d_dst, int64_t rows, int64_t K,
                                    int64_t ld, int64_t start, const lq_qstate *qs, void *stream, lq_err *err) {
    (void)d_src, (void)d_dst, (void)rows, (void)K, (void)ld, (void)start, (void)qs, (void)stream;
    return LQ_ERR(err, LQ_ERR_UNSUPPORTED,
                  "cuda dequant %s to bf16 rows: loquat was built without CUDA (rebuild with make CUDA=1)",
                  lq_dtype_name(t));
}
