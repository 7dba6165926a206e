/* autograd/ops/op_sum.c: sum over one axis, or over everything. */
#include "autograd/reduce.h"

static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    lq_reduce_forward(ctx, n, 1.0f);
    return LQ_OK;
}

/* y[o, i] = sum_k x[o, k, i]: every x[o, k, i] enters once, so dx[o, k, i] += dy[o, i]. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) { return lq_reduce_backward(ctx, n, 1.0f); }

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    lq_tensor *y = lq_sum(ctx, in[0], (int)c->ip[0], c->ip[1] != 0);
    return lq_mul(ctx, y, y);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) { return lq_reduce_gc_make(ctx, rng, c, gc_call); }

const lq_op_def lq_op_sum = {"sum", fwd, bwd, gc_make};

lq_tensor *lq_sum(lq_ctx *ctx, lq_tensor *x, int axis, bool keepdim) {
    return lq_reduce_op(ctx, &lq_op_sum, x, axis, keepdim);
}
