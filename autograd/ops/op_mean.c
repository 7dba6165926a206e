/* autograd/ops/op_mean.c: mean over one axis, or over everything. */
#include "autograd/reduce.h"

static float inv_count(const lq_node *n) {
    lq_reduce_dims r = lq_reduce_dims_of(n->in[0], (int)n->ip[0]);
    return r.n > 0 ? 1.0f / (float)r.n : 0.0f;
}

static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    lq_reduce_forward(ctx, n, inv_count(n));
    return LQ_OK;
}

/* y[o, i] = (1/n) sum_k x[o, k, i], so dx[o, k, i] += dy[o, i] / n. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) { return lq_reduce_backward(ctx, n, inv_count(n)); }

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    lq_tensor *y = lq_mean(ctx, in[0], (int)c->ip[0], c->ip[1] != 0);
    return lq_mul(ctx, y, y);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) { return lq_reduce_gc_make(ctx, rng, c, gc_call); }

const lq_op_def lq_op_mean = {"mean", fwd, bwd, gc_make};

lq_tensor *lq_mean(lq_ctx *ctx, lq_tensor *x, int axis, bool keepdim) {
    return lq_reduce_op(ctx, &lq_op_mean, x, axis, keepdim);
}
