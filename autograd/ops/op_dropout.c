/* autograd/ops/op_dropout.c: inverted dropout with a counter-based mask that backward regenerates. */
#include <stdio.h>

#include "autograd/autograd_impl.h"

/* Element i of the call on (seed, stream) is kept iff its uniform draw is >= p. The draw depends
 * only on (seed, stream, i), so the mask is the same on any thread count and is never stored. */
static inline bool kept(uint64_t seed, uint64_t stream, int64_t i, float p) {
    return lq_u01_from_bits(lq_hash3(seed, stream, (uint64_t)i)) >= p;
}

/* ip[0] = stream, ip[1] = seed (as the bits of a uint64), fp[0] = p. y = x / (1 - p) where kept,
 * else 0 (p == 1 keeps nothing, so the division never runs). */
static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    const float *x = n->in[0]->data;
    float *y = n->out->data;
    int64_t m = lq_numel(n->out);
    uint64_t stream = (uint64_t)n->ip[0], seed = (uint64_t)n->ip[1];
    float p = n->fp[0], q = 1.0f - p;
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
    for (int64_t i = 0; i < m; i++) y[i] = kept(seed, stream, i, p) ? x[i] / q : 0.0f;
    return LQ_OK;
}

/* y_i = m_i x_i / (1 - p) with the fixed mask m_i in {0, 1}: dy_i/dx_i = m_i / (1 - p), so
 * dx_i += m_i dy_i / (1 - p), the mask regenerated from the (seed, stream) the forward used. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    const float *gy = n->out->grad->data;
    int64_t m = lq_numel(n->out);
    uint64_t stream = (uint64_t)n->ip[0], seed = (uint64_t)n->ip[1];
    float p = n->fp[0], q = 1.0f - p;
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
    for (int64_t i = 0; i < m; i++)
        if (kept(seed, stream, i, p)) gx[i] += gy[i] / q;
    return LQ_OK;
}

/* Each dropout call takes a new stream, so the case restarts the streams at its own seed on every
 * evaluation (all see the same mask), then puts the context's mode, seed and stream back. */
static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    uint64_t prev_seed = ctx->seed, prev_stream = ctx->rng_stream;
    bool prev_training = lq_ctx_set_training(ctx, true);
    lq_ctx_set_seed(ctx, (uint64_t)c->ip[0]);
    lq_tensor *y = lq_dropout(ctx, in[0], c->fp[0]);
    lq_ctx_set_training(ctx, prev_training);
    ctx->seed = prev_seed;
    ctx->rng_stream = prev_stream;
    return y;
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t a = lq_rng_int(rng, 1, 6), b = lq_rng_int(rng, 1, 8);
    c->ip[0] = (int64_t)(lq_rng_u64(rng) >> 1);
    c->fp[0] = 0.1f + 0.6f * lq_rng_uniform(rng);
    c->n_in = 1;
    c->in[0] = lq_gc_input(ctx, rng, 2, (int64_t[]){a, b}, -2, 2);
    c->call = gc_call;
    snprintf(c->desc, sizeof c->desc, "(%lld, %lld) p %.3f seed %lld", (long long)a, (long long)b, (double)c->fp[0],
             (long long)c->ip[0]);
    return ctx->err.status;
}

const lq_op_def lq_op_dropout = {"dropout", fwd, bwd, gc_make};

lq_tensor *lq_dropout(lq_ctx *ctx, lq_tensor *x, float p) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!lq_check_f32(ctx, "dropout", "x", x)) return NULL;
    LQ_OP_CHECK(ctx, p >= 0.0f && p <= 1.0f, LQ_ERR_ARG, "dropout: p = %g must be in [0, 1]", (double)p);
    if (!ctx->training || p == 0.0f) return x; /* identity: no node, no stream consumed */
    lq_node *n = lq_node_begin_like(ctx, &lq_op_dropout, x);
    if (!n) return NULL;
    n->ip[0] = (int64_t)ctx->rng_stream++;
    n->ip[1] = (int64_t)ctx->seed;
    n->fp[0] = p;
    return lq_node_finish(ctx, n);
}
