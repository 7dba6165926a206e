/* autograd/ops/op_gelu.c: gelu(x), exact (erf) or tanh-approximated, as torch defines them. */
#include <math.h>
#include <stdio.h>

#include "autograd/autograd_impl.h"

#define GELU_INV_SQRT2 0.70710678118654752440f     /* 1 / sqrt(2) */
#define GELU_INV_SQRT_2PI 0.39894228040143267794f  /* 1 / sqrt(2 pi) */
#define GELU_SQRT_2_OVER_PI 0.79788456080286535588f /* sqrt(2 / pi) */
#define GELU_TANH_C 0.044715f

static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    const float *x = n->in[0]->data;
    float *y = n->out->data;
    int64_t m = lq_numel(n->out);
    if (n->ip[0] == LQ_GELU_TANH) {
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
        for (int64_t i = 0; i < m; i++) {
            float v = x[i];
            float u = GELU_SQRT_2_OVER_PI * (v + GELU_TANH_C * v * v * v);
            y[i] = 0.5f * v * (1.0f + tanhf(u));
        }
    } else {
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
        for (int64_t i = 0; i < m; i++) y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * GELU_INV_SQRT2));
    }
    return LQ_OK;
}

/* Exact: y = x Phi(x) with Phi(x) = (1 + erf(x / sqrt 2)) / 2 the normal CDF and
 *   phi(x) = Phi'(x) = exp(-x^2 / 2) / sqrt(2 pi), so dy/dx = Phi(x) + x phi(x).
 * Tanh: y = x (1 + t) / 2 with t = tanh(u), u = k (x + c x^3), k = sqrt(2 / pi), c = 0.044715;
 *   tanh' = 1 - t^2 and du/dx = k (1 + 3 c x^2), so
 *   dy/dx = (1 + t) / 2 + x (1 - t^2) k (1 + 3 c x^2) / 2.
 * Either way dx += dy * dy/dx. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    const float *x = n->in[0]->data, *gy = n->out->grad->data;
    int64_t m = lq_numel(n->out);
    if (n->ip[0] == LQ_GELU_TANH) {
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
        for (int64_t i = 0; i < m; i++) {
            float v = x[i], v2 = v * v;
            float t = tanhf(GELU_SQRT_2_OVER_PI * (v + GELU_TANH_C * v2 * v));
            float d = 0.5f * (1.0f + t) +
                      0.5f * v * (1.0f - t * t) * GELU_SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_TANH_C * v2);
            gx[i] += gy[i] * d;
        }
    } else {
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
        for (int64_t i = 0; i < m; i++) {
            float v = x[i];
            float cdf = 0.5f * (1.0f + erff(v * GELU_INV_SQRT2));
            float pdf = GELU_INV_SQRT_2PI * expf(-0.5f * v * v);
            gx[i] += gy[i] * (cdf + v * pdf);
        }
    }
    return LQ_OK;
}

/* Both modes in every case: their outputs stacked along a new outer axis, each projected on its
 * own random weights by gradcheck. */
static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    (void)user;
    lq_tensor *x = in[0];
    int64_t shape[3] = {1, x->ne[0], x->ne[1]};
    lq_tensor *ys[2] = {lq_reshape(ctx, lq_gelu(ctx, x, LQ_GELU_EXACT), 3, shape),
                        lq_reshape(ctx, lq_gelu(ctx, x, LQ_GELU_TANH), 3, shape)};
    return lq_concat(ctx, ys, 2, 0);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t a = lq_rng_int(rng, 1, 5), b = lq_rng_int(rng, 1, 7);
    c->n_in = 1;
    c->in[0] = lq_gc_input(ctx, rng, 2, (int64_t[]){a, b}, -4, 4);
    c->call = gc_call;
    snprintf(c->desc, sizeof c->desc, "(%lld, %lld) exact and tanh", (long long)a, (long long)b);
    return ctx->err.status;
}

const lq_op_def lq_op_gelu = {"gelu", fwd, bwd, gc_make};

lq_tensor *lq_gelu(lq_ctx *ctx, lq_tensor *x, lq_gelu_approx approx) {
    if (ctx->err.status != LQ_OK) return NULL;
    LQ_OP_CHECK(ctx, approx == LQ_GELU_EXACT || approx == LQ_GELU_TANH, LQ_ERR_ARG,
                "gelu: approx must be LQ_GELU_EXACT or LQ_GELU_TANH, got %d", (int)approx);
    lq_node *n = lq_node_begin_like(ctx, &lq_op_gelu, x);
    if (!n) return NULL;
    n->ip[0] = approx;
    return lq_node_finish(ctx, n);
}
