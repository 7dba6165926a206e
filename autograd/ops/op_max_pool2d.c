/* autograd/ops/op_max_pool2d.c: 2D max pooling over (N, C, H, W), padding counting as -inf. */
#include <math.h>

#include "autograd/pool2d.h"

/* Index (ih W + iw) in its plane of the largest element of window (oh, ow): the first in row-major
 * window order on ties (as torch), a NaN wins (it propagates). Every window holds at least one
 * input element since pad <= kernel / 2. */
static int32_t window_argmax(const float *plane, const lq_pool2d_geom *g, int64_t oh, int64_t ow) {
    int64_t h0 = oh * g->sh - g->ph, w0 = ow * g->sw - g->pw;
    int64_t best = -1;
    float bv = -INFINITY;
    for (int64_t ih = h0 < 0 ? 0 : h0; ih < h0 + g->kh && ih < g->H; ih++)
        for (int64_t iw = w0 < 0 ? 0 : w0; iw < w0 + g->kw && iw < g->W; iw++) {
            float v = plane[ih * g->W + iw];
            if (best < 0 || v > bv || (isnan(v) && !isnan(bv))) {
                best = ih * g->W + iw;
                bv = v;
            }
        }
    return (int32_t)best;
}

/* y[n, c, oh, ow] = max over the window; the argmax is kept (int32, in the arena) for backward
 * when the node is recorded. */
static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    lq_pool2d_geom g = lq_pool2d_geom_of(n);
    const float *x = n->in[0]->data;
    float *y = n->out->data;
    int64_t per = g.OH * g.OW, total = g.N * g.C * per;
    int32_t *arg = NULL;
    if (n->recorded) {
        arg = lq_ctx_alloc(ctx, (size_t)(total > 0 ? total : 1) * sizeof *arg);
        if (!arg) return ctx->err.status;
        n->saved[0] = arg;
    }
#pragma omp parallel for num_threads(ctx->n_threads) if (total > LQ_POOL_PAR_MIN)
    for (int64_t i = 0; i < total; i++) {
        int64_t pl = i / per, o = i % per;
        const float *plane = x + pl * g.H * g.W;
        int32_t a = window_argmax(plane, &g, o / g.OW, o % g.OW);
        y[i] = plane[a];
        if (arg) arg[i] = a;
    }
    return LQ_OK;
}

/* y = x[argmax of the window]: dy/dx is 1 at the argmax and 0 elsewhere, so
 * dx[argmax(n, c, oh, ow)] += dy[n, c, oh, ow]. Overlapping windows can share an argmax, so the
 * scatter runs in parallel over (n, c) planes only, each plane in a fixed order. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    lq_pool2d_geom g = lq_pool2d_geom_of(n);
    const float *x = n->in[0]->data, *gy = n->out->grad->data;
    const int32_t *arg = n->saved[0];
    int64_t per = g.OH * g.OW, planes = g.N * g.C;
#pragma omp parallel for num_threads(ctx->n_threads) if (planes > 1 && planes * per > LQ_POOL_PAR_MIN)
    for (int64_t pl = 0; pl < planes; pl++) {
        float *dx = gx + pl * g.H * g.W;
        const float *dy = gy + pl * per;
        for (int64_t o = 0; o < per; o++) {
            /* saved in forward; recomputed if the node was not recorded then */
            int32_t a = arg ? arg[pl * per + o] : window_argmax(x + pl * g.H * g.W, &g, o / g.OW, o % g.OW);
            dx[a] += dy[o];
        }
    }
    return LQ_OK;
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    lq_pool2d_params p = lq_pool2d_gc_params(user);
    return lq_max_pool2d(ctx, in[0], &p);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    return lq_pool2d_gc_make(ctx, rng, c, gc_call, true);
}

const lq_op_def lq_op_max_pool2d = {"max_pool2d", fwd, bwd, gc_make};

lq_tensor *lq_max_pool2d(lq_ctx *ctx, lq_tensor *x, const lq_pool2d_params *p) {
    if (ctx->err.status != LQ_OK) return NULL;
    lq_node *n = lq_pool2d_begin(ctx, &lq_op_max_pool2d, x, p);
    return n ? lq_node_finish(ctx, n) : NULL;
}
