/* autograd/ops/op_silu.c: silu(x) = x * sigmoid(x). */
#include <math.h>
#include <stdio.h>

#include "autograd/autograd_impl.h"

static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    const float *x = n->in[0]->data;
    float *y = n->out->data;
    int64_t m = lq_numel(n->out);
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
    for (int64_t i = 0; i < m; i++) y[i] = x[i] / (1.0f + expf(-x[i]));
    return LQ_OK;
}

/* y = x s(x) with s the sigmoid, s' = s (1 - s):
 * dy/dx = s + x s (1 - s) = s (1 + x (1 - s)), so dx += dy * s (1 + x (1 - s)). */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    const float *x = n->in[0]->data, *gy = n->out->grad->data;
    int64_t m = lq_numel(n->out);
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
    for (int64_t i = 0; i < m; i++) {
        float s = 1.0f / (1.0f + expf(-x[i]));
        gx[i] += gy[i] * s * (1.0f + x[i] * (1.0f - s));
    }
    return LQ_OK;
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    (void)user;
    return lq_silu(ctx, in[0]);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t a = lq_rng_int(rng, 1, 5), b = lq_rng_int(rng, 1, 7);
    c->n_in = 1;
    c->in[0] = lq_gc_input(ctx, rng, 2, (int64_t[]){a, b}, -4, 4);
    c->call = gc_call;
    snprintf(c->desc, sizeof c->desc, "(%lld, %lld)", (long long)a, (long long)b);
    return ctx->err.status;
}

const lq_op_def lq_op_silu = {"silu", fwd, bwd, gc_make};

lq_tensor *lq_silu(lq_ctx *ctx, lq_tensor *x) {
    lq_node *n = lq_node_begin_like(ctx, &lq_op_silu, x);
    return n ? lq_node_finish(ctx, n) : NULL;
}
