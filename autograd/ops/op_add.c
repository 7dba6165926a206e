/* autograd/ops/op_add.c: a + b with broadcasting. */
#include "autograd/broadcast.h"

static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    lq_bcast_forward(ctx, n, LQ_BINOP_ADD);
    return LQ_OK;
}

/* y = a + b: dy/da = dy/db = 1, so da += dy and db += dy, each summed over the dims along which
 * that input was broadcast. An unbroadcast a may take dy's block itself (lq_grad_adopt); b then
 * reads dy from it before anything else adds to it (b == a: the block doubles, 2 dy, right). */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    const float *gy = n->out->grad->data;
    for (int i = 0; i < 2; i++) {
        if (i == 0 && lq_same_shape(n->in[0], n->out) && lq_grad_adopt(ctx, n->in[0], n->out)) continue;
        float *g;
        LQ_TRY(lq_grad_get(ctx, n->in[i], &g));
        if (g) lq_bcast_accumulate(ctx, g, n->in[i], n->out, gy, NULL, 1.0f);
    }
    return LQ_OK;
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    (void)user;
    return lq_add(ctx, in[0], in[1]);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) { return lq_bcast_gc_make(ctx, rng, c, gc_call); }

const lq_op_def lq_op_add = {"add", fwd, bwd, gc_make};

lq_tensor *lq_add(lq_ctx *ctx, lq_tensor *a, lq_tensor *b) { return lq_bcast_op(ctx, &lq_op_add, a, b); }
