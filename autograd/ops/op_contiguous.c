/* autograd/ops/op_contiguous.c: copy a strided view into a contiguous tensor. */
#include <stdio.h>

#include "autograd/autograd_impl.h"

static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    int64_t ne4[4];
    size_t dnb[4], snb[4];
    lq_pad4(n->out, ne4, dnb);
    lq_pad4(n->in[0], ne4, snb);
    return lq_strided_to(ctx, n->out->data, dnb, n->in[0]->data, snb, ne4, false);
}

/* y = x element for element (only the layout changes), so dx += dy; both grads use the logical
 * contiguous layout. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) { return lq_grad_add(ctx, n->in[0], n->out->grad->data); }

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    (void)user;
    /* a transposed view is not contiguous, so this really copies */
    return lq_contiguous(ctx, lq_transpose(ctx, in[0], 0, 1));
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t a = lq_rng_int(rng, 2, 5), b = lq_rng_int(rng, 2, 5);
    c->n_in = 1;
    c->in[0] = lq_gc_input(ctx, rng, 2, (int64_t[]){a, b}, -1, 1);
    c->call = gc_call;
    snprintf(c->desc, sizeof c->desc, "x^T with x (%lld, %lld)", (long long)a, (long long)b);
    return ctx->err.status;
}

const lq_op_def lq_op_contiguous = {"contiguous", fwd, bwd, gc_make};

lq_tensor *lq_contiguous(lq_ctx *ctx, lq_tensor *x) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!lq_check_f32(ctx, "contiguous", "x", x)) return NULL;
    if (lq_is_contiguous(x)) return x;
    lq_node *n = lq_node_begin(ctx, &lq_op_contiguous, 1, &x);
    if (!n || !lq_node_output(ctx, n, x->ndim, x->ne)) return NULL;
    return lq_node_finish(ctx, n);
}
