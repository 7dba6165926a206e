/* autograd/ops/op_shared.h: private kernels shared between op files (quantized matmul tiles,
 * the dropout mask), so that fused ops compute exactly what the separate ops do. */
#ifndef LQ_OP_SHARED_H
#define LQ_OP_SHARED_H

#include "autograd/autograd_impl.h"

/* y (M, N) = x (M, K) deq(w)^T for w (N, K) of any dtype with a to_f32, through dequantized
 * slabs of tr_rows x tc (op_qmatmul.c's tiling; tc whole blocks of w's dtype). The slab is
 * arena scratch, rewound before return. */
lq_status lq_qmm_forward(lq_ctx *ctx, const lq_tensor *w, const float *x, float *y, int64_t M, int64_t N, int64_t K,
                         int64_t tr_rows, int64_t tc);
/* gx (M, K) += gy (M, N) deq(w) (N, K), through dequantized row tiles of `tile` rows. */
lq_status lq_qmm_backward_x(lq_ctx *ctx, const lq_tensor *w, const float *gy, float *gx, int64_t M, int64_t N,
                            int64_t K, int64_t tile);

/* Inverted dropout over m elements with the mask of (seed, stream), as lq_dropout draws it:
 * bwd false: y = mask x / (1 - p); bwd true: y += mask x / (1 - p). */
void lq_dropout_apply(lq_ctx *ctx, bool bwd, uint64_t seed, uint64_t stream, float p, const float *x, float *y,
                      int64_t m);

/* Gradcheck cases: src (rows x k floats) quantized into an arena tensor of dtype t (a format with
 * an encoder), with an arena quant state where the format needs one: one scale per block of
 * `block` elements (bnb absmax, or a symmetric affine scale). NULL with an error in ctx. */
lq_tensor *lq_gc_quantize(lq_ctx *ctx, lq_dtype t, const float *src, int64_t rows, int64_t k, int64_t block);

#endif
