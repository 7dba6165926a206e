/* autograd/cuda_impl.h: what the CUDA op kernels (autograd/ops/cuda_*.cu) and the engine share: the
 * per-group kernel tables, the context's stream and cuBLAS handle, and device helpers (fill,
 * accumulate, strided copy, uploads of host side inputs, one gemm for every matrix product). */
#ifndef LQ_AUTOGRAD_CUDA_IMPL_H
#define LQ_AUTOGRAD_CUDA_IMPL_H

#ifdef __cplusplus
extern "C" {
#endif

#include "autograd/autograd_impl.h"

/* One op's CUDA kernels, found by the op's name (lq_op_def.name). forward / backward have the
 * CPU functions' contract: they read node->in[] (device data, f32 unless the op says otherwise;
 * integer side inputs may be host tensors: use lq_cuda_upload_i32), write node->out (device,
 * allocated by the op's entry function), and backward accumulates (+=) into the inputs' grads
 * (lq_grad_get gives device buffers, zeroed on first use). Scratch: lq_ctx_dalloc. */
typedef struct lq_cuda_op {
    const char *name;
    lq_op_fn forward, backward;
} lq_cuda_op;

/* Each group's table, terminated by an entry with name NULL (autograd/ops/cuda_<group>.cu). */
extern const lq_cuda_op lq_cuda_ops_elementwise[]; /* add sub mul scale sum mean */
extern const lq_cuda_op lq_cuda_ops_activation[];  /* relu gelu swiglu silu dropout */
extern const lq_cuda_op lq_cuda_ops_nn[];         /* embedding rope attention softmax log_softmax
                                                     cross_entropy */
extern const lq_cuda_op lq_cuda_ops_norm[];       /* rmsnorm layernorm */
extern const lq_cuda_op lq_cuda_ops_linear[];     /* matmul qmatmul lora_linear */
extern const lq_cuda_op lq_cuda_ops_quant[];      /* fake_quant fake_quant_lsq pact fake_quant_dynamic
                                                     fake_quant_bnb4 */
extern const lq_cuda_op lq_cuda_ops_conv[];       /* conv2d max_pool2d avg_pool2d */

/* Context set-up (stream, cuBLAS handle, the resolved kernel table) and teardown. */
lq_status lq_cuda_ctx_init(lq_ctx *ctx, lq_err *err);
void lq_cuda_ctx_free(lq_ctx *ctx);
/* Start of a step (lq_ctx_step_reset): the upload staging buffer is reused from its start. */
lq_status lq_cuda_step_reset(lq_ctx *ctx);

/* The context's cudaStream_t and cublasHandle_t (as void *, so C files can hold them). Every
 * kernel of a context goes on its stream. */
void *lq_cuda_stream(lq_ctx *ctx);
void *lq_cuda_blas(lq_ctx *ctx);
/* A side stream for independent work inside one op (the adapter's thin products beside the NF4
 * dequant and the base product): lq_cuda_fork makes the side wait for everything queued on the
 * main stream so far; products issued through lq_cuda_side_blas's handle then run on the side,
 * concurrently with what the main stream does next; lq_cuda_join makes the main stream wait for
 * the side. An op that forks joins before it returns (also on its error paths), so every later
 * kernel, arena reuse and host read is ordered after the side's work. Queue side work right after
 * a fork (the CPU emulator checks this). With LOQUAT_CUDA_SIDE_STREAM=0 at context creation there
 * is no side stream: the side handle is the main one, fork and join do nothing. */
void *lq_cuda_side_blas(lq_ctx *ctx);
void *lq_cuda_side_stream(lq_ctx *ctx); /* the side's cudaStream_t (the main one without a side) */
lq_status lq_cuda_fork(lq_ctx *ctx);
lq_status lq_cuda_join(lq_ctx *ctx);
/* A partial join: lq_cuda_side_mark marks the side's work queued so far, lq_cuda_join_mark makes
 * the main stream wait for just that (work the side queues after the mark may still run); the op
 * still ends with lq_cuda_join. */
lq_status lq_cuda_side_mark(lq_ctx *ctx);
lq_status lq_cuda_join_mark(lq_ctx *ctx);

/* Device helpers on the context's stream; errors go into ctx->err and come back as the status. */
lq_status lq_cuda_fill_f32(lq_ctx *ctx, float *d, float v, int64_t n);
lq_status lq_cuda_accumulate(lq_ctx *ctx, float *dst, const float *src, int64_t n); /* dst += src */
/* dst (rows, cols) bf16, row stride ldd = src (rows, cols) f32, row stride lds (elements), each
 * rounded to nearest even: the operand a product in bf16 math reads. */
lq_status lq_cuda_to_bf16(lq_ctx *ctx, void *dst, int64_t ldd, const float *src, int64_t lds, int64_t rows,
                          int64_t cols);
/* dst = src (or dst += src) between f32 layouts of one logical shape ne (4 dims, padded left),
 * strides in bytes: the device twin of lq_strided_copy / lq_strided_add. */
lq_status lq_cuda_strided(lq_ctx *ctx, float *dst, const size_t *dst_nb, const float *src, const size_t *src_nb,
                          const int64_t *ne, bool accumulate);
/* A device copy of bytes of host memory, in the device arena (valid until the step resets). */
void *lq_cuda_upload(lq_ctx *ctx, const void *host, size_t bytes);
/* The device address of an i32 tensor's elements (contiguous): its own data when it is already
 * on the device, else a copy uploaded into the arena. NULL with an error in ctx. */
const int32_t *lq_cuda_upload_i32(lq_ctx *ctx, const lq_tensor *t);
/* Downloads bytes from the device into host memory, waiting for the stream. */
lq_status lq_cuda_download(lq_ctx *ctx, void *host, const void *dev, size_t bytes);

/* Row-major strided-batched C = alpha op(A) op(B) + beta C for b in [0, batch):
 * op(A) is (M, K), op(B) is (K, N), C is (M, N); lda / ldb / ldc are the row strides (in elements)
 * of A, B, C as stored (A stored (K, M) when ta), stride* the batch strides (0 = shared). The
 * context's cuda_math picks fp32, tf32 or bf16 tensor-core inputs; accumulation and C are fp32. */
lq_status lq_cuda_gemm(lq_ctx *ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                       int64_t lda, int64_t strideA, const float *B, int64_t ldb, int64_t strideB, float beta, float *C,
                       int64_t ldc, int64_t strideC, int64_t batch);
/* lq_cuda_gemm where A and / or B (frozen: LQ_GEMM_FROZEN_A | LQ_GEMM_FROZEN_B) is a frozen weight
 * (lq_cuda_is_frozen): in bf16 math its bf16 copy is made once per step (lq_ctx_step_reset) and
 * shared by every product of the step that reads it. Its data must not change within a step. */
#define LQ_GEMM_FROZEN_A 1u
#define LQ_GEMM_FROZEN_B 2u
lq_status lq_cuda_gemm_frozen(lq_ctx *ctx, unsigned frozen, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                              float alpha, const float *A, int64_t lda, int64_t strideA, const float *B, int64_t ldb,
                              int64_t strideB, float beta, float *C, int64_t ldc, int64_t strideC, int64_t batch);
/* A weight that no product of a step can change: a device leaf that owns its data (a model's
 * weight, moved by lq_tensor_to_device) and needs no gradient; contiguous f32. */
static inline bool lq_cuda_is_frozen(const lq_tensor *t) {
    return t && !t->node && t->device == LQ_DEVICE_CUDA && t->dtype == LQ_DTYPE_F32 &&
           (t->flags & LQ_TENSOR_OWNS_DATA) && !(t->flags & LQ_TENSOR_REQUIRES_GRAD) && lq_is_contiguous(t);
}
/* x's elements (f32) as bf16, for products in bf16 math. When x's data is an op's output of the
 * current tape (x recorded, or a recorded view of one), the copy goes into a buffer the context
 * keeps, and the next call on the same data returns it unconverted: q, k and v read one x, gate and
 * up another, and a product's backward often follows its forward's. The copy is valid until the
 * next call (kernels queued before it still read the old one: the stream orders them). Any other x
 * is converted into the device arena, which the caller's mark rewinds. NULL with an error in ctx.
 * The copy is rows of x's last dimension K with a row stride of *ld = K + LQ_CUDA_ACT_PAD elements:
 * columns K .. *ld - 1 of each row are the caller's scratch, for operands that extend x along K
 * (the bf16 QLoRA linear puts its u = s h A^T there: [x | u] [W | B]^T in one product); a later
 * caller finds them overwritten. x is contiguous (its elements are read packed). */
#define LQ_CUDA_ACT_PAD 64
void *lq_cuda_act_bf16(lq_ctx *ctx, const lq_tensor *x, int64_t *ld);
/* lq_cuda_act_bf16 with the conversion (when one is needed) on the side stream, between
 * lq_cuda_fork and lq_cuda_join, for a reader there: the copy is ready on the side at once, on the
 * main stream after the join. */
void *lq_cuda_act_bf16_side(lq_ctx *ctx, const lq_tensor *x, int64_t *ld);
/* For a recorded node's forward, which writes x = node->out (f32, contiguous, not a view, the last
 * dim K a multiple of 4): the kept buffer, registered as x's bf16 copy (row stride *ld = K +
 * LQ_CUDA_ACT_PAD), which the op must fill on the main stream in the same pass as x (round to
 * nearest even, as lq_cuda_to_bf16); the readers' lq_cuda_act_bf16 then finds it without
 * converting. NULL where x cannot have a kept copy (the op writes none), or with an error in ctx
 * when no device memory is left for it. */
void *lq_cuda_act_bf16_claim(lq_ctx *ctx, const lq_node *node, int64_t *ld);
/* lq_cuda_act_bf16's calls so far that returned the kept copy, and those that converted into it. */
void lq_cuda_act_bf16_counts(lq_ctx *ctx, uint64_t *shared, uint64_t *converted);
/* n contiguous elements of s as bf16 into dst, on the main stream (autograd/cuda_convert.cu). */
lq_status lq_cuda_to_bf16_packed(lq_ctx *ctx, void *dst, const float *s, int64_t n);
/* A packed bf16 copy in the device arena (*out) of a strided-batched f32 operand: rows x cols per
 * batch entry, row stride ld, batch stride st (0: one matrix shared by the batch). */
lq_status lq_cuda_to_bf16_scratch(lq_ctx *ctx, const float *src, int64_t rows, int64_t cols, int64_t ld, int64_t st,
                                  int64_t batch, void **out);
/* lq_cuda_to_bf16 on the side stream (side, after lq_cuda_fork) or the main one. */
lq_status lq_cuda_to_bf16_on(lq_ctx *ctx, bool side, void *dst, int64_t ldd, const float *src, int64_t lds,
                             int64_t rows, int64_t cols);
/* Two contiguous f32 -> bf16 conversions (n0 and n1 elements) in one launch; side: on the side
 * stream (after lq_cuda_fork), else the main one. */
lq_status lq_cuda_to_bf16_pair(lq_ctx *ctx, bool side, void *d0, const float *s0, int64_t n0, void *d1,
                               const float *s1, int64_t n1);

/* Whether attention node n runs the flash kernels (autograd/ops/cuda_attention_flash.cu): opt-in,
 * LOQUAT_FLASH_ATTN=1 with bf16 math and a head size / layout they take. Always false without CUDA. */
bool lq_cuda_flash_attn_wanted(lq_ctx *ctx, const lq_node *n);

/* Launch configuration: 256 threads, enough blocks for n work items (capped; kernels loop). */
#define LQ_CUDA_THREADS 256
static inline unsigned lq_cuda_blocks(int64_t n) {
    int64_t b = (n + LQ_CUDA_THREADS - 1) / LQ_CUDA_THREADS;
    return (unsigned)(b < 1 ? 1 : b > 65535 * 8 ? 65535 * 8 : b);
}

#ifdef __cplusplus
}
#endif

/* In .cu files: a launch's error into ctx (returns the status from the enclosing function). */
#define LQ_CUDA_LAUNCHED(ctx, what) LQ_CU_LAUNCHED(&(ctx)->err, what)

#endif
