/* autograd/cuda_ctx_none.c: a build without CUDA (make CUDA=1 uses autograd/cuda_ctx.cu): a CUDA
 * context cannot be made, and the kernel table is the CPU one. */
#include "autograd/cuda_impl.h"

lq_status lq_cuda_ctx_init(lq_ctx *ctx, lq_err *err) {
    (void)ctx;
    return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "device: cuda asked for, but loquat was built without CUDA "
                                           "(rebuild with make CUDA=1)");
}
void lq_cuda_ctx_free(lq_ctx *ctx) { (void)ctx; }
lq_status lq_cuda_step_reset(lq_ctx *ctx) {
    (void)ctx;
    return LQ_OK;
}
void *lq_cuda_stream(lq_ctx *ctx) {
    (void)ctx;
    return NULL;
}
void *lq_cuda_blas(lq_ctx *ctx) {
    (void)ctx;
    return NULL;
}
lq_op_fn lq_op_forward_for(lq_ctx *ctx, const lq_op_def *op) {
    (void)ctx;
    return op->forward;
}
lq_op_fn lq_op_backward_for(lq_ctx *ctx, const lq_op_def *op) {
    (void)ctx;
    return op->backward;
}

bool lq_cuda_flash_attn_wanted(lq_ctx *ctx, const lq_node *n) {
    (void)ctx, (void)n;
    return false;
}

#define NO_CUDA_OP(what) LQ_ERR(&ctx->err, LQ_ERR_UNSUPPORTED, "%s: loquat was built without CUDA", what)

lq_status lq_cuda_fill_f32(lq_ctx *ctx, float *d, float v, int64_t n) {
    (void)d, (void)v, (void)n;
    return NO_CUDA_OP("fill");
}
lq_status lq_cuda_accumulate(lq_ctx *ctx, float *dst, const float *src, int64_t n) {
    (void)dst, (void)src, (void)n;
    return NO_CUDA_OP("accumulate");
}
lq_status lq_cuda_to_bf16(lq_ctx *ctx, void *dst, int64_t ldd, const float *src, int64_t lds, int64_t rows,
                          int64_t cols) {
    (void)dst, (void)ldd, (void)src, (void)lds, (void)rows, (void)cols;
    return NO_CUDA_OP("to bf16");
}
void *lq_cuda_act_bf16(lq_ctx *ctx, const lq_tensor *x, int64_t *ld) {
    (void)x;
    *ld = 0;
    NO_CUDA_OP("activation to bf16");
    return NULL;
}
void lq_cuda_act_bf16_counts(lq_ctx *ctx, uint64_t *shared, uint64_t *converted) {
    (void)ctx;
    *shared = *converted = 0;
}
lq_status lq_cuda_to_bf16_pair(lq_ctx *ctx, bool side, void *d0, const float *s0, int64_t n0, void *d1,
                               const float *s1, int64_t n1) {
    (void)side, (void)d0, (void)s0, (void)n0, (void)d1, (void)s1, (void)n1;
    return NO_CUDA_OP("to bf16");
}
lq_status lq_cuda_strided(lq_ctx *ctx, float *dst, const size_t *dst_nb, const float *src, const size_t *src_nb,
                          const int64_t *ne, bool accumulate) {
    (void)dst, (void)dst_nb, (void)src, (void)src_nb, (void)ne, (void)accumulate;
    return NO_CUDA_OP("strided copy");
}
void *lq_cuda_upload(lq_ctx *ctx, const void *host, size_t bytes) {
    (void)host, (void)bytes;
    NO_CUDA_OP("upload");
    return NULL;
}
const int32_t *lq_cuda_upload_i32(lq_ctx *ctx, const lq_tensor *t) {
    (void)t;
    NO_CUDA_OP("upload");
    return NULL;
}
lq_status lq_cuda_download(lq_ctx *ctx, void *host, const void *dev, size_t bytes) {
    (void)host, (void)dev, (void)bytes;
    return NO_CUDA_OP("download");
}
lq_status lq_cuda_gemm_frozen(lq_ctx *ctx, unsigned frozen, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                              float alpha, const float *A, int64_t lda, int64_t strideA, const float *B, int64_t ldb,
                              int64_t strideB, float beta, float *C, int64_t ldc, int64_t strideC, int64_t batch) {
    (void)frozen;
    return lq_cuda_gemm(ctx, ta, tb, M, N, K, alpha, A, lda, strideA, B, ldb, strideB, beta, C, ldc, strideC, batch);
}
lq_status lq_cuda_gemm(lq_ctx *ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                       int64_t lda, int64_t strideA, const float *B, int64_t ldb, int64_t strideB, float beta, float *C,
                       int64_t ldc, int64_t strideC, int64_t batch) {
    (void)ta, (void)tb, (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)lda, (void)strideA, (void)B, (void)ldb;
    (void)strideB, (void)beta, (void)C, (void)ldc, (void)strideC, (void)batch;
    return NO_CUDA_OP("gemm");
}
