/* autograd/ops/op_scale.c: s * x for a constant s. */
#include <stdio.h>

#include "autograd/autograd_impl.h"

static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    const float *x = n->in[0]->data;
    float *y = n->out->data, s = n->fp[0];
    int64_t m = lq_numel(n->out);
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
    for (int64_t i = 0; i < m; i++) y[i] = s * x[i];
    return LQ_OK;
}

/* y = s x: dx += s dy. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    const float *gy = n->out->grad->data;
    float s = n->fp[0];
    int64_t m = lq_numel(n->out);
    for (int64_t i = 0; i < m; i++) gx[i] += s * gy[i];
    return LQ_OK;
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    return lq_scale(ctx, in[0], ((const lq_gc_case *)user)->fp[0]);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t a = lq_rng_int(rng, 1, 4), b = lq_rng_int(rng, 1, 6);
    c->n_in = 1;
    c->in[0] = lq_gc_input(ctx, rng, 2, (int64_t[]){a, b}, -1, 1);
    c->fp[0] = -3.0f + 6.0f * lq_rng_uniform(rng);
    c->call = gc_call;
    snprintf(c->desc, sizeof c->desc, "(%lld, %lld) * %.3f", (long long)a, (long long)b, c->fp[0]);
    return ctx->err.status;
}

const lq_op_def lq_op_scale = {"scale", fwd, bwd, gc_make};

lq_tensor *lq_scale(lq_ctx *ctx, lq_tensor *x, float s) {
    lq_node *n = lq_node_begin_like(ctx, &lq_op_scale, x);
    if (!n) return NULL;
    n->fp[0] = s;
    return lq_node_finish(ctx, n);
}
