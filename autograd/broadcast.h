/* autograd/broadcast.h: private helpers shared by the broadcasting binary ops. */
#ifndef LQ_AUTOGRAD_BROADCAST_H
#define LQ_AUTOGRAD_BROADCAST_H

#include <stdio.h>

#include "autograd/autograd_impl.h"

typedef enum lq_binop { LQ_BINOP_ADD, LQ_BINOP_SUB, LQ_BINOP_MUL } lq_binop;

/* Allocates n->out with the broadcast shape of a and b, or records a shape error. */
lq_tensor *lq_bcast_output(lq_ctx *ctx, lq_node *n, const char *op, lq_tensor *a, lq_tensor *b);
/* t's byte strides t_nb laid against out's shape (padded to 4): 0 along broadcast dims. */
void lq_bcast_strides(const lq_tensor *t, const lq_tensor *out, const size_t *t_nb, size_t nb4[4]);
void lq_bcast_forward(lq_ctx *ctx, lq_node *n, lq_binop op);
/* g (contiguous, t's shape) += sign * reduce_to_t(gout * other), other NULL meaning 1. */
void lq_bcast_accumulate(lq_ctx *ctx, float *g, const lq_tensor *t, const lq_tensor *out, const float *gout,
                         const lq_tensor *other, float sign);
/* Entry point shared by add, sub and mul. */
lq_tensor *lq_bcast_op(lq_ctx *ctx, const lq_op_def *def, lq_tensor *a, lq_tensor *b);
lq_status lq_bcast_gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c, lq_gc_fn call);

#endif
