/* autograd/ops/op_swiglu.c: swiglu(gate, up) = silu(gate) * up, the Llama MLP's gating. */
#include <math.h>
#include <stdio.h>

#include "autograd/autograd_impl.h"

static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    const float *g = n->in[0]->data, *u = n->in[1]->data;
    float *y = n->out->data;
    int64_t m = lq_numel(n->out);
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
    for (int64_t i = 0; i < m; i++) y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    return LQ_OK;
}

/* y = g s(g) u with s the sigmoid, s' = s (1 - s):
 *   dy/dg = u (s + g s (1 - s)) = u s (1 + g (1 - s))   (the silu derivative times u)
 *   dy/du = g s = silu(g)
 * so dgate += dy u s (1 + g (1 - s)) and dup += dy g s. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    float *gg, *gu;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gg));
    LQ_TRY(lq_grad_get(ctx, n->in[1], &gu));
    const float *g = n->in[0]->data, *u = n->in[1]->data, *gy = n->out->grad->data;
    int64_t m = lq_numel(n->out);
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
    for (int64_t i = 0; i < m; i++) {
        float s = 1.0f / (1.0f + expf(-g[i]));
        if (gg) gg[i] += gy[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
        if (gu) gu[i] += gy[i] * g[i] * s;
    }
    return LQ_OK;
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    (void)user;
    return lq_swiglu(ctx, in[0], in[1]);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t a = lq_rng_int(rng, 1, 3), b = lq_rng_int(rng, 1, 4), d = lq_rng_int(rng, 1, 6);
    int64_t shape[3] = {a, b, d};
    c->n_in = 2;
    c->in[0] = lq_gc_input(ctx, rng, 3, shape, -4, 4);
    c->in[1] = lq_gc_input(ctx, rng, 3, shape, -2, 2);
    c->call = gc_call;
    snprintf(c->desc, sizeof c->desc, "(%lld, %lld, %lld)", (long long)a, (long long)b, (long long)d);
    return ctx->err.status;
}

const lq_op_def lq_op_swiglu = {"swiglu", fwd, bwd, gc_make};

lq_tensor *lq_swiglu(lq_ctx *ctx, lq_tensor *gate, lq_tensor *up) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!lq_check_f32(ctx, "swiglu", "gate", gate) || !lq_check_f32(ctx, "swiglu", "up", up)) return NULL;
    if (!lq_same_shape(gate, up)) return lq_shape_error(ctx, "swiglu", gate, up, "differ: gate and up must match");
    gate = lq_contiguous(ctx, gate);
    up = lq_contiguous(ctx, up);
    lq_tensor *in[2] = {gate, up};
    lq_node *n = lq_node_begin(ctx, &lq_op_swiglu, 2, in);
    if (!n || !lq_node_output(ctx, n, gate->ndim, gate->ne)) return NULL;
    return lq_node_finish(ctx, n);
}
