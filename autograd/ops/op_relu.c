/* autograd/ops/op_relu.c: relu(x) = max(x, 0). */
#include <math.h>
#include <stdio.h>

#include "autograd/autograd_impl.h"

static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    const float *x = n->in[0]->data;
    float *y = n->out->data;
    int64_t m = lq_numel(n->out);
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
    for (int64_t i = 0; i < m; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
    return LQ_OK;
}

/* y = x for x > 0, 0 otherwise: dy/dx = 1 for x > 0 and 0 for x <= 0 (torch's choice at the kink),
 * so dx += dy where x > 0. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    const float *x = n->in[0]->data, *gy = n->out->grad->data;
    int64_t m = lq_numel(n->out);
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
    for (int64_t i = 0; i < m; i++)
        if (x[i] > 0.0f) gx[i] += gy[i];
    return LQ_OK;
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    (void)user;
    return lq_relu(ctx, in[0]);
}

/* Inputs in [-2.1, -0.1] U [0.1, 2.1]: the 1e-2 finite-difference step never crosses the kink. */
static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t a = lq_rng_int(rng, 1, 5), b = lq_rng_int(rng, 1, 7);
    c->n_in = 1;
    c->in[0] = lq_gc_input(ctx, rng, 2, (int64_t[]){a, b}, -2, 2);
    if (!c->in[0]) return ctx->err.status;
    float *x = c->in[0]->data;
    for (int64_t i = 0; i < a * b; i++) x[i] += copysignf(0.1f, x[i]);
    c->call = gc_call;
    snprintf(c->desc, sizeof c->desc, "(%lld, %lld)", (long long)a, (long long)b);
    return ctx->err.status;
}

const lq_op_def lq_op_relu = {"relu", fwd, bwd, gc_make};

lq_tensor *lq_relu(lq_ctx *ctx, lq_tensor *x) {
    lq_node *n = lq_node_begin_like(ctx, &lq_op_relu, x);
    return n ? lq_node_finish(ctx, n) : NULL;
}
