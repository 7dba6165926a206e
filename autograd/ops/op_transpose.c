/* autograd/ops/op_transpose.c: swap two dimensions (a strided view, no copy). */
#include <stdio.h>

#include "autograd/autograd_impl.h"

static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    (void)ctx;
    (void)n;
    return LQ_OK;
}

/* A transpose is the permutation that swaps axis0 and axis1; its backward adds dy into dx
 * through the swapped strides (see op_permute.c). */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    int perm[LQ_MAX_DIMS];
    for (int d = 0; d < LQ_MAX_DIMS; d++) perm[d] = d;
    perm[n->ip[0]] = (int)n->ip[1];
    perm[n->ip[1]] = (int)n->ip[0];
    return lq_permute_backward(ctx, n, perm);
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    lq_tensor *y = lq_transpose(ctx, in[0], (int)c->ip[0], (int)c->ip[1]);
    return lq_mul(ctx, y, y);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t s[3];
    for (int d = 0; d < 3; d++) s[d] = lq_rng_int(rng, 1, 4);
    c->n_in = 1;
    c->in[0] = lq_gc_input(ctx, rng, 3, s, -1, 1);
    c->ip[0] = lq_rng_int(rng, 0, 2);
    c->ip[1] = (c->ip[0] + lq_rng_int(rng, 1, 2)) % 3;
    c->call = gc_call;
    snprintf(c->desc, sizeof c->desc, "(%lld, %lld, %lld) axes %lld,%lld", (long long)s[0], (long long)s[1],
             (long long)s[2], (long long)c->ip[0], (long long)c->ip[1]);
    return ctx->err.status;
}

const lq_op_def lq_op_transpose = {"transpose", fwd, bwd, gc_make};

lq_tensor *lq_transpose(lq_ctx *ctx, lq_tensor *x, int axis0, int axis1) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!x) return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "transpose: x is NULL");
    int a0 = lq_axis(x, axis0), a1 = lq_axis(x, axis1);
    LQ_OP_CHECK(ctx, a0 >= 0 && a1 >= 0, LQ_ERR_ARG, "transpose: axes %d, %d out of range for %d dims", axis0, axis1,
                x->ndim);
    int64_t ne[LQ_MAX_DIMS];
    size_t nb[LQ_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++) {
        int s = d == a0 ? a1 : d == a1 ? a0 : d;
        ne[d] = x->ne[s];
        nb[d] = x->nb[s];
    }
    lq_node *n = lq_node_begin(ctx, &lq_op_transpose, 1, &x);
    if (!n) return NULL;
    n->ip[0] = a0;
    n->ip[1] = a1;
    if (!lq_node_view(ctx, n, x, x->ndim, ne, nb, 0)) return NULL;
    return lq_node_finish(ctx, n);
}
