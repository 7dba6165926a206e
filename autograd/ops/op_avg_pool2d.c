/* autograd/ops/op_avg_pool2d.c: 2D average pooling over (N, C, H, W), count_include_pad = false. */
#include "autograd/pool2d.h"

/* The in-bounds part [h0, h1) x [w0, w1) of window (oh, ow); never empty as pad <= kernel / 2. */
typedef struct window {
    int64_t h0, h1, w0, w1;
} window;

static window window_of(const lq_pool2d_geom *g, int64_t oh, int64_t ow) {
    window r;
    r.h0 = oh * g->sh - g->ph;
    r.w0 = ow * g->sw - g->pw;
    r.h1 = r.h0 + g->kh < g->H ? r.h0 + g->kh : g->H;
    r.w1 = r.w0 + g->kw < g->W ? r.w0 + g->kw : g->W;
    if (r.h0 < 0) r.h0 = 0;
    if (r.w0 < 0) r.w0 = 0;
    return r;
}

/* y[n, c, oh, ow] = sum of the window's in-bounds elements / their count (padding excluded). */
static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    lq_pool2d_geom g = lq_pool2d_geom_of(n);
    const float *x = n->in[0]->data;
    float *y = n->out->data;
    int64_t per = g.OH * g.OW, total = g.N * g.C * per;
#pragma omp parallel for num_threads(ctx->n_threads) if (total > LQ_POOL_PAR_MIN)
    for (int64_t i = 0; i < total; i++) {
        int64_t pl = i / per, o = i % per;
        const float *plane = x + pl * g.H * g.W;
        window w = window_of(&g, o / g.OW, o % g.OW);
        float s = 0.0f;
        for (int64_t ih = w.h0; ih < w.h1; ih++)
            for (int64_t iw = w.w0; iw < w.w1; iw++) s += plane[ih * g.W + iw];
        y[i] = s / (float)((w.h1 - w.h0) * (w.w1 - w.w0));
    }
    return LQ_OK;
}

/* y = (1 / cnt) sum_{window} x with cnt the in-bounds count: dy/dx = 1 / cnt for every in-bounds
 * element of the window, so dx[ih, iw] += dy[oh, ow] / cnt(oh, ow) over the windows covering it.
 * Overlapping windows share elements, so the scatter runs in parallel over (n, c) planes only. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    lq_pool2d_geom g = lq_pool2d_geom_of(n);
    const float *gy = n->out->grad->data;
    int64_t per = g.OH * g.OW, planes = g.N * g.C;
#pragma omp parallel for num_threads(ctx->n_threads) if (planes > 1 && planes * per > LQ_POOL_PAR_MIN)
    for (int64_t pl = 0; pl < planes; pl++) {
        float *dx = gx + pl * g.H * g.W;
        const float *dy = gy + pl * per;
        for (int64_t o = 0; o < per; o++) {
            window w = window_of(&g, o / g.OW, o % g.OW);
            float d = dy[o] / (float)((w.h1 - w.h0) * (w.w1 - w.w0));
            for (int64_t ih = w.h0; ih < w.h1; ih++)
                for (int64_t iw = w.w0; iw < w.w1; iw++) dx[ih * g.W + iw] += d;
        }
    }
    return LQ_OK;
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    lq_pool2d_params p = lq_pool2d_gc_params(user);
    return lq_avg_pool2d(ctx, in[0], &p);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    return lq_pool2d_gc_make(ctx, rng, c, gc_call, false);
}

const lq_op_def lq_op_avg_pool2d = {"avg_pool2d", fwd, bwd, gc_make};

lq_tensor *lq_avg_pool2d(lq_ctx *ctx, lq_tensor *x, const lq_pool2d_params *p) {
    if (ctx->err.status != LQ_OK) return NULL;
    lq_node *n = lq_pool2d_begin(ctx, &lq_op_avg_pool2d, x, p);
    return n ? lq_node_finish(ctx, n) : NULL;
}
