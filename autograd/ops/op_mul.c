/* autograd/ops/op_mul.c: a * b elementwise with broadcasting. */
#include "autograd/broadcast.h"

static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    lq_bcast_forward(ctx, n, LQ_BINOP_MUL);
    return LQ_OK;
}

/* y = a * b: da += dy * b and db += dy * a, each summed over the dims along which that input
 * was broadcast (b and a read through their own broadcast strides). */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    for (int i = 0; i < 2; i++) {
        float *g;
        LQ_TRY(lq_grad_get(ctx, n->in[i], &g));
        if (g) lq_bcast_accumulate(ctx, g, n->in[i], n->out, n->out->grad->data, n->in[1 - i], 1.0f);
    }
    return LQ_OK;
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    (void)user;
    return lq_mul(ctx, in[0], in[1]);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) { return lq_bcast_gc_make(ctx, rng, c, gc_call); }

const lq_op_def lq_op_mul = {"mul", fwd, bwd, gc_make};

lq_tensor *lq_mul(lq_ctx *ctx, lq_tensor *a, lq_tensor *b) { return lq_bcast_op(ctx, &lq_op_mul, a, b); }
