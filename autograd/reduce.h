/* autograd/reduce.h: private helpers shared by sum and mean over one axis. */
#ifndef LQ_AUTOGRAD_REDUCE_H
#define LQ_AUTOGRAD_REDUCE_H

#include "autograd/autograd_impl.h"

/* A contiguous x seen as (outer, n, inner) around the reduced axis; LQ_AXIS_ALL is (1, numel, 1). */
typedef struct lq_reduce_dims {
    int64_t outer, n, inner;
} lq_reduce_dims;

lq_reduce_dims lq_reduce_dims_of(const lq_tensor *x, int axis);
/* Shared entry point: validates, makes x contiguous, shapes the output. */
lq_tensor *lq_reduce_op(lq_ctx *ctx, const lq_op_def *def, lq_tensor *x, int axis, bool keepdim);
/* out[o, i] = scale * sum_k x[o, k, i], accumulated in double. */
void lq_reduce_forward(lq_ctx *ctx, lq_node *n, float scale);
/* dx[o, k, i] += scale * dy[o, i]. */
lq_status lq_reduce_backward(lq_ctx *ctx, lq_node *n, float scale);
lq_status lq_reduce_gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c, lq_gc_fn call);

#endif
