/* autograd/ops/op_fake_quant_dynamic.c: dynamic per-token activation fake quantization (scales from each row's min / max). */
#include <math.h>
#include <stdio.h>

#include "autograd/autograd_impl.h"

/* Node: in[0] x (contiguous). ip[0] bits, ip[1] symmetric. */
static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    const lq_tensor *x = n->in[0];
    int64_t cols = x->ndim > 0 ? x->ne[x->ndim - 1] : 1;
    int64_t rows = cols > 0 ? lq_numel(x) / cols : 0;
    return lq_affine_fake_quantize_dynamic(x->data, rows, cols, (int)n->ip[0], n->ip[1] != 0, n->out->data, NULL, NULL,
                                           ctx->n_threads, &ctx->err);
}

/* y = (clamp(round(x / s) + z, qmin, qmax) - z) s with s, z functions of the row's min / max.
 * As in torchao's QAT (_GenericFakeQuantize), the scale and zero point are treated as constants
 * and the rounding passes the gradient straight through; torchao's mask is computed on the
 * already clamped code, so it is all ones, and since the row's own range defines s and z no
 * value lies meaningfully outside it anyway: dx = dy. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    return lq_grad_add(ctx, n->in[0], n->out->grad->data);
}

/* --- gradcheck ------------------------------------------------------------------------------ */

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    return lq_fake_quant_dynamic(ctx, in[0], (int)c->ip[0], c->ip[1] != 0);
}

/* Surrogate: y = x + d with d = y0 - x0 frozen at the base point (double per element in aux):
 * the scales are constants and the rounding is the identity to the STE, so dy/dx = 1. */
static lq_tensor *gc_surrogate(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    const double *d = c->aux;
    const lq_tensor *x = in[0];
    lq_tensor *y = lq_new(ctx, LQ_DTYPE_F32, x->ndim, x->ne);
    if (!y) return NULL;
    const float *xd = x->data;
    float *yd = y->data;
    for (int64_t i = 0; i < lq_numel(x); i++) yd[i] = (float)((double)xd[i] + d[i]);
    return y;
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t a = lq_rng_int(rng, 1, 3), b = lq_rng_int(rng, 1, 3), cols = lq_rng_int(rng, 2, 8);
    c->ip[0] = lq_rng_int(rng, 2, 8);
    c->ip[1] = lq_rng_int(rng, 0, 1);
    c->n_in = 1;
    c->in[0] = lq_gc_input(ctx, rng, 3, (int64_t[]){a, b, cols}, -2.0f, 2.0f);
    if (!c->in[0]) return ctx->err.status;
    int64_t m = lq_numel(c->in[0]);
    double *d = lq_ctx_alloc(ctx, (size_t)m * sizeof(double));
    float *y0 = lq_ctx_alloc(ctx, (size_t)m * sizeof(float));
    if (!d || !y0) return ctx->err.status;
    if (lq_affine_fake_quantize_dynamic(c->in[0]->data, a * b, cols, (int)c->ip[0], c->ip[1] != 0, y0, NULL, NULL, 1,
                                        &ctx->err) != LQ_OK)
        return ctx->err.status;
    const float *xd = c->in[0]->data;
    for (int64_t i = 0; i < m; i++) d[i] = (double)y0[i] - (double)xd[i];
    c->aux = d;
    c->call = gc_call;
    c->surrogate = gc_surrogate;
    snprintf(c->desc, sizeof c->desc, "x (%lld, %lld, %lld) int%d %s", (long long)a, (long long)b, (long long)cols,
             (int)c->ip[0], c->ip[1] ? "sym" : "asym");
    return ctx->err.status;
}

const lq_op_def lq_op_fake_quant_dynamic = {"fake_quant_dynamic", fwd, bwd, gc_make};

lq_tensor *lq_fake_quant_dynamic(lq_ctx *ctx, lq_tensor *x, int bits, bool symmetric) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!lq_check_f32(ctx, "fake_quant_dynamic", "x", x)) return NULL;
    LQ_OP_CHECK(ctx, bits >= 2 && bits <= 8, LQ_ERR_ARG, "fake_quant_dynamic: bits = %d must be 2..8", bits);
    lq_node *n = lq_node_begin_like(ctx, &lq_op_fake_quant_dynamic, x);
    if (!n) return NULL;
    n->ip[0] = bits;
    n->ip[1] = symmetric;
    return lq_node_finish(ctx, n);
}
