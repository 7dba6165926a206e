/* autograd/ops/op_pact.c: PACT, fake quantization of activations clipped at a learned level alpha. */
#include <math.h>
#include <stdio.h>

#include "autograd/fake_quant.h"

/* Node: in[0] x (contiguous), in[1] alpha (1 element). ip[0] bits. */

/* y = round(clamp(x, 0, alpha) / s) s with s = alpha / (2^b - 1), in float32 in the order of
 * quant/'s affine kernels: inv = 1 / s, q = nearbyint(xc * inv) clamped to [0, 2^b - 1], y = q s
 * (the unsigned fake quantization of clamp(x, 0, alpha) with zero point 0). */
static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    const float *x = n->in[0]->data;
    float *y = n->out->data;
    float alpha = ((const float *)n->in[1]->data)[0];
    float levels = (float)((1 << n->ip[0]) - 1);
    float s = alpha / levels, inv = 1.0f / s;
    int64_t m = lq_numel(n->out), first_bad = INT64_MAX;
#pragma omp parallel for num_threads(ctx->n_threads) reduction(min : first_bad) if (m > 65536)
    for (int64_t i = 0; i < m; i++) {
        if (!isfinite(x[i])) {
            if (i < first_bad) first_bad = i;
            y[i] = 0.0f;
            continue;
        }
        float xc = fminf(fmaxf(x[i], 0.0f), alpha);
        float q = fminf(fmaxf(nearbyintf(xc * inv), 0.0f), levels);
        y[i] = q * s;
    }
    if (first_bad != INT64_MAX)
        return LQ_ERR(&ctx->err, LQ_ERR_NUMERIC, "pact: element %lld of x is %s", (long long)first_bad,
                      isnan(x[first_bad]) ? "NaN" : "Inf");
    return LQ_OK;
}

/* With y_c = clamp(x, 0, alpha) and the straight-through estimator on the rounding
 * (d round(v)/dv = 1, so y_q ~ y_c to first order):
 *   dy/dx     = 1 for 0 <= x < alpha, else 0
 *   dy/dalpha = 1 for x >= alpha, else 0           -> dalpha = sum over x >= alpha of dy
 * This is the PACT paper's eq. (3) (Choi et al. 2018). Differentiating the rounding grid too
 * (s = alpha / n moves every level) would add (round(y_c / s) - y_c / s) / n inside the range,
 * LSQ's residual term; PACT leaves it out, the term averages to ~0 over many activations and is
 * at most 1 / (2n) per element, and following the paper keeps alpha's updates comparable with
 * published PACT results. Use lq_fake_quant_lsq for the residual-aware (LSQ) gradient. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    float *gx, *ga;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    LQ_TRY(lq_grad_get(ctx, n->in[1], &ga));
    if (!gx && !ga) return LQ_OK;
    const float *x = n->in[0]->data, *gy = n->out->grad->data;
    float alpha = ((const float *)n->in[1]->data)[0];
    int64_t m = lq_numel(n->out);
    float *t = ga ? lq_ctx_alloc(ctx, (size_t)(m > 0 ? m : 1) * sizeof(float)) : NULL;
    if (ga && !t) return ctx->err.status;
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
    for (int64_t i = 0; i < m; i++) {
        if (gx && x[i] >= 0.0f && x[i] < alpha) gx[i] += gy[i];
        if (t) t[i] = x[i] >= alpha ? gy[i] : 0.0f;
    }
    return lq_fq_slot_sums(ctx, t, m, 1, m, ga);
}

/* --- gradcheck ------------------------------------------------------------------------------ */

/* Case: in[0] x, in[1] alpha; ip[0] bits; aux: per element d = y0 - clamp(x0, 0, alpha0), the
 * quantization error frozen at the base point (double). */
static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    return lq_pact(ctx, in[0], in[1], (int)c->ip[0]);
}

/* Surrogate: y = clamp(x, 0, alpha) + d. Its derivatives are exactly the backward's:
 * dy/dx = [0 < x < alpha], dy/dalpha = [x > alpha]; the case keeps x away from 0 and alpha. */
static lq_tensor *gc_surrogate(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    const double *d = c->aux;
    const lq_tensor *x = in[0];
    double alpha = ((const float *)in[1]->data)[0];
    lq_tensor *y = lq_new(ctx, LQ_DTYPE_F32, x->ndim, x->ne);
    if (!y) return NULL;
    const float *xd = x->data;
    float *yd = y->data;
    for (int64_t i = 0; i < lq_numel(x); i++) yd[i] = (float)(fmin(fmax((double)xd[i], 0.0), alpha) + d[i]);
    return y;
}

static bool near_kink(float v, int64_t slot, const void *aux) {
    (void)slot;
    float alpha = *(const float *)aux;
    return fabsf(v) < 0.02f || fabsf(v - alpha) < 0.02f;
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t a = lq_rng_int(rng, 1, 4), b = lq_rng_int(rng, 2, 6);
    c->ip[0] = lq_rng_int(rng, 2, 8);
    c->n_in = 2;
    c->in[0] = lq_gc_input(ctx, rng, 2, (int64_t[]){a, b}, -1.0f, 3.0f);
    c->in[1] = lq_gc_input(ctx, rng, 1, (int64_t[]){1}, 1.0f, 2.0f);
    if (!c->in[0] || !c->in[1]) return ctx->err.status;
    float alpha = ((float *)c->in[1]->data)[0];
    lq_fq_redraw(c->in[0], rng, -1.0f, 3.0f, 1, lq_numel(c->in[0]), near_kink, &alpha);
    int64_t m = lq_numel(c->in[0]);
    double *d = lq_ctx_alloc(ctx, (size_t)m * sizeof(double));
    if (!d) return ctx->err.status;
    /* y0 from the same formula as the forward, computed here independently of the op */
    float levels = (float)((1 << c->ip[0]) - 1), s = alpha / levels, inv = 1.0f / s;
    const float *xd = c->in[0]->data;
    for (int64_t i = 0; i < m; i++) {
        float xc = fminf(fmaxf(xd[i], 0.0f), alpha);
        float y0 = fminf(fmaxf(nearbyintf(xc * inv), 0.0f), levels) * s;
        d[i] = (double)y0 - (double)xc;
    }
    c->aux = d;
    c->step = 5e-3f;
    c->call = gc_call;
    c->surrogate = gc_surrogate;
    snprintf(c->desc, sizeof c->desc, "x (%lld, %lld) %d bits alpha %.3f", (long long)a, (long long)b, (int)c->ip[0],
             (double)alpha);
    return ctx->err.status;
}

const lq_op_def lq_op_pact = {"pact", fwd, bwd, gc_make};

lq_tensor *lq_pact(lq_ctx *ctx, lq_tensor *x, lq_tensor *alpha, int bits) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!lq_check_f32(ctx, "pact", "x", x) || !lq_check_f32(ctx, "pact", "alpha", alpha)) return NULL;
    LQ_OP_CHECK(ctx, bits >= 2 && bits <= 8, LQ_ERR_ARG, "pact: bits = %d must be 2..8", bits);
    LQ_OP_CHECK(ctx, lq_numel(alpha) == 1, LQ_ERR_SHAPE, "pact: alpha must have one element, got %lld",
                (long long)lq_numel(alpha));
    x = lq_contiguous(ctx, x);
    alpha = lq_contiguous(ctx, alpha);
    if (!x || !alpha) return NULL;
    float a = ctx->device == LQ_DEVICE_CUDA ? lq_tensor_get_f32(ctx, alpha, 0) : ((const float *)alpha->data)[0];
    if (ctx->err.status != LQ_OK) return NULL;
    LQ_OP_CHECK(ctx, isfinite(a) && a > 0.0f, LQ_ERR_NUMERIC, "pact: alpha is %g; it must be finite and > 0",
                (double)a);
    lq_tensor *in[2] = {x, alpha};
    lq_node *n = lq_node_begin(ctx, &lq_op_pact, 2, in);
    if (!n) return NULL;
    n->ip[0] = bits;
    if (!lq_node_output(ctx, n, x->ndim, x->ne)) return NULL;
    return lq_node_finish(ctx, n);
}
