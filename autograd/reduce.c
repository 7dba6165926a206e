/* autograd/reduce.c: the axis reduction shared by sum and mean. */
#include <stdio.h>

#include "autograd/reduce.h"

lq_reduce_dims lq_reduce_dims_of(const lq_tensor *x, int axis) {
    lq_reduce_dims r = {1, 1, 1};
    if (axis == LQ_AXIS_ALL) {
        r.n = lq_numel(x);
        return r;
    }
    for (int d = 0; d < x->ndim; d++) {
        if (d < axis) r.outer *= x->ne[d];
        else if (d == axis) r.n = x->ne[d];
        else r.inner *= x->ne[d];
    }
    return r;
}

lq_tensor *lq_reduce_op(lq_ctx *ctx, const lq_op_def *def, lq_tensor *x, int axis, bool keepdim) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!lq_check_f32(ctx, def->name, "x", x)) return NULL;
    int a = axis == LQ_AXIS_ALL ? LQ_AXIS_ALL : lq_axis(x, axis);
    LQ_OP_CHECK(ctx, a >= 0, LQ_ERR_ARG, "%s: axis %d out of range for %d dims", def->name, axis, x->ndim);
    x = lq_contiguous(ctx, x);
    lq_node *n = lq_node_begin(ctx, def, 1, &x);
    if (!n) return NULL;
    n->ip[0] = a;
    int64_t ne[LQ_MAX_DIMS];
    int nd = 0;
    for (int d = 0; d < x->ndim; d++) {
        bool reduced = a == LQ_AXIS_ALL || d == a;
        if (reduced && !keepdim) continue;
        ne[nd++] = reduced ? 1 : x->ne[d];
    }
    if (!lq_node_output(ctx, n, nd, ne)) return NULL;
    return lq_node_finish(ctx, n);
}

void lq_reduce_forward(lq_ctx *ctx, lq_node *n, float scale) {
    lq_reduce_dims r = lq_reduce_dims_of(n->in[0], (int)n->ip[0]);
    const float *x = n->in[0]->data;
    float *y = n->out->data;
    int64_t rows = r.outer * r.inner;
#pragma omp parallel for num_threads(ctx->n_threads) if (rows > 1 && rows * r.n > 65536)
    for (int64_t oi = 0; oi < rows; oi++) {
        int64_t o = oi / r.inner, i = oi % r.inner;
        const float *p = x + o * r.n * r.inner + i;
        double acc = 0.0;
        for (int64_t k = 0; k < r.n; k++) acc += p[k * r.inner];
        y[oi] = (float)(acc * scale);
    }
}

lq_status lq_reduce_backward(lq_ctx *ctx, lq_node *n, float scale) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    lq_reduce_dims r = lq_reduce_dims_of(n->in[0], (int)n->ip[0]);
    const float *gy = n->out->grad->data;
    for (int64_t o = 0; o < r.outer; o++)
        for (int64_t k = 0; k < r.n; k++) {
            float *dst = gx + (o * r.n + k) * r.inner;
            const float *src = gy + o * r.inner;
            for (int64_t i = 0; i < r.inner; i++) dst[i] += scale * src[i];
        }
    return LQ_OK;
}

lq_status lq_reduce_gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c, lq_gc_fn call) {
    int64_t s[3];
    for (int d = 0; d < 3; d++) s[d] = lq_rng_int(rng, 1, 4);
    int64_t choice = lq_rng_int(rng, 0, 3);
    c->ip[0] = choice == 3 ? LQ_AXIS_ALL : choice;
    c->ip[1] = lq_rng_int(rng, 0, 1);
    c->n_in = 1;
    c->in[0] = lq_gc_input(ctx, rng, 3, s, -1, 1);
    c->call = call;
    snprintf(c->desc, sizeof c->desc, "(%lld, %lld, %lld) axis %s keepdim %lld", (long long)s[0], (long long)s[1],
             (long long)s[2], choice == 3 ? "all" : choice == 0 ? "0" : choice == 1 ? "1" : "2", (long long)c->ip[1]);
    return ctx->err.status;
}
