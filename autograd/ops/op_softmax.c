/* autograd/ops/op_softmax.c: softmax along any axis, max-subtracted for stability. */
#include <math.h>
#include <stdio.h>

#include "autograd/autograd_impl.h"

/* A contiguous x seen as (outer, n, inner) around axis: row (o, i) is the n values
 * x[o * n * inner + k * inner + i], k = 0..n-1, a stride of inner apart. */
typedef struct sm_dims {
    int64_t outer, n, inner;
} sm_dims;

static sm_dims dims_of(const lq_tensor *x, int axis) {
    sm_dims r = {1, 1, 1};
    for (int d = 0; d < x->ndim; d++) {
        if (d < axis) r.outer *= x->ne[d];
        else if (d == axis) r.n = x->ne[d];
        else r.inner *= x->ne[d];
    }
    return r;
}

/* y = exp(x - max) / sum exp(x - max) per row; the sum in double. */
static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    sm_dims r = dims_of(n->in[0], (int)n->ip[0]);
    const float *x = n->in[0]->data;
    float *y = n->out->data;
    int64_t rows = r.outer * r.inner;
#pragma omp parallel for num_threads(ctx->n_threads) if (rows > 1 && rows * r.n > 16384)
    for (int64_t oi = 0; oi < rows; oi++) {
        int64_t o = oi / r.inner, i = oi % r.inner, st = r.inner;
        const float *p = x + o * r.n * r.inner + i;
        float *q = y + o * r.n * r.inner + i;
        float m = -INFINITY;
        for (int64_t k = 0; k < r.n; k++) m = fmaxf(m, p[k * st]);
        double s = 0.0;
        for (int64_t k = 0; k < r.n; k++) {
            float e = expf(p[k * st] - m);
            q[k * st] = e;
            s += e;
        }
        for (int64_t k = 0; k < r.n; k++) q[k * st] = (float)((double)q[k * st] / s);
    }
    return LQ_OK;
}

/* y_j = e^{x_j} / S with S = sum_k e^{x_k}: dy_j/dx_k = y_j (delta_jk - y_k), so
 * dx_k = sum_j dy_j y_j (delta_jk - y_k) = y_k (dy_k - sum_j dy_j y_j), per row, from the saved
 * output y. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    sm_dims r = dims_of(n->in[0], (int)n->ip[0]);
    const float *y = n->out->data, *gy = n->out->grad->data;
    int64_t rows = r.outer * r.inner;
#pragma omp parallel for num_threads(ctx->n_threads) if (rows > 1 && rows * r.n > 16384)
    for (int64_t oi = 0; oi < rows; oi++) {
        int64_t o = oi / r.inner, i = oi % r.inner, st = r.inner;
        int64_t base = o * r.n * r.inner + i;
        double dot = 0.0;
        for (int64_t k = 0; k < r.n; k++) dot += (double)gy[base + k * st] * y[base + k * st];
        float d = (float)dot;
        for (int64_t k = 0; k < r.n; k++) gx[base + k * st] += y[base + k * st] * (gy[base + k * st] - d);
    }
    return LQ_OK;
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    return lq_softmax(ctx, in[0], (int)c->ip[0]);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t s[3];
    for (int d = 0; d < 3; d++) s[d] = lq_rng_int(rng, 1, 5);
    c->ip[0] = lq_rng_int(rng, -3, 2); /* negative axes too */
    s[c->ip[0] < 0 ? c->ip[0] + 3 : c->ip[0]] = lq_gc_row_len(rng, 1, 5);
    c->n_in = 1;
    c->in[0] = lq_gc_input(ctx, rng, 3, s, -2, 2);
    c->call = gc_call;
    snprintf(c->desc, sizeof c->desc, "(%lld, %lld, %lld) axis %lld", (long long)s[0], (long long)s[1],
             (long long)s[2], (long long)c->ip[0]);
    return ctx->err.status;
}

const lq_op_def lq_op_softmax = {"softmax", fwd, bwd, gc_make};

lq_tensor *lq_softmax(lq_ctx *ctx, lq_tensor *x, int axis) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!lq_check_f32(ctx, "softmax", "x", x)) return NULL;
    int a = lq_axis(x, axis);
    LQ_OP_CHECK(ctx, a >= 0, LQ_ERR_ARG, "softmax: axis %d out of range for %d dims", axis, x->ndim);
    lq_node *n = lq_node_begin_like(ctx, &lq_op_softmax, x);
    if (!n) return NULL;
    n->ip[0] = a;
    return lq_node_finish(ctx, n);
}
