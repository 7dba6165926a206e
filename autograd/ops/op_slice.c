/* autograd/ops/op_slice.c: elements [start, end) along one axis (a strided view, no copy). */
#include <stdio.h>

#include "autograd/autograd_impl.h"

static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    (void)ctx;
    (void)n;
    return LQ_OK;
}

/* y[.., i, ..] = x[.., start + i, ..] along axis: dx[.., start + i, ..] += dy[.., i, ..]. dx is
 * contiguous in x's shape, so the target is dx + start * stride(axis) with x's strides and y's
 * sizes. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    const lq_tensor *x = n->in[0], *y = n->out;
    int axis = (int)n->ip[0];
    int64_t start = n->ip[1];
    size_t cs[LQ_MAX_DIMS], ys[LQ_MAX_DIMS];
    lq_contiguous_strides(x->ndim, x->ne, sizeof(float), cs);
    lq_contiguous_strides(y->ndim, y->ne, sizeof(float), ys);
    int64_t ne4[4];
    size_t cs4[4], ys4[4];
    int pad = LQ_MAX_DIMS - y->ndim;
    for (int d = 0; d < LQ_MAX_DIMS; d++) {
        ne4[d] = d < pad ? 1 : y->ne[d - pad];
        cs4[d] = d < pad ? 0 : cs[d - pad];
        ys4[d] = d < pad ? 0 : ys[d - pad];
    }
    float *dst = (float *)((char *)gx + (size_t)start * cs[axis]);
    LQ_TRY(lq_strided_to(ctx, dst, cs4, y->grad->data, ys4, ne4, true));
    return LQ_OK;
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    lq_tensor *y = lq_slice(ctx, in[0], (int)c->ip[0], c->ip[1], c->ip[2]);
    return lq_mul(ctx, y, y);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t s[3];
    for (int d = 0; d < 3; d++) s[d] = lq_rng_int(rng, 2, 5);
    int axis = (int)lq_rng_int(rng, 0, 2);
    int64_t start = lq_rng_int(rng, 0, s[axis] - 1), end = lq_rng_int(rng, start + 1, s[axis]);
    c->n_in = 1;
    c->in[0] = lq_gc_input(ctx, rng, 3, s, -1, 1);
    c->ip[0] = axis;
    c->ip[1] = start;
    c->ip[2] = end;
    c->call = gc_call;
    snprintf(c->desc, sizeof c->desc, "(%lld, %lld, %lld) axis %d [%lld, %lld)", (long long)s[0], (long long)s[1],
             (long long)s[2], axis, (long long)start, (long long)end);
    return ctx->err.status;
}

const lq_op_def lq_op_slice = {"slice", fwd, bwd, gc_make};

lq_tensor *lq_slice(lq_ctx *ctx, lq_tensor *x, int axis, int64_t start, int64_t end) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!x) return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "slice: x is NULL");
    int a = lq_axis(x, axis);
    LQ_OP_CHECK(ctx, a >= 0, LQ_ERR_ARG, "slice: axis %d out of range for %d dims", axis, x->ndim);
    LQ_OP_CHECK(ctx, lq_dtype_info(x->dtype)->block_size == 1 || a != x->ndim - 1, LQ_ERR_UNSUPPORTED,
                "slice: cannot slice inside the blocks of %s", lq_dtype_name(x->dtype));
    int64_t len = x->ne[a];
    if (start < 0) start += len;
    if (end < 0) end += len;
    LQ_OP_CHECK(ctx, start >= 0 && start <= end && end <= len, LQ_ERR_ARG,
                "slice: range [%lld, %lld) is outside axis %d of size %lld", (long long)start, (long long)end, a,
                (long long)len);
    int64_t ne[LQ_MAX_DIMS];
    size_t nb[LQ_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++) {
        ne[d] = x->ne[d];
        nb[d] = x->nb[d];
    }
    ne[a] = end - start;
    lq_node *n = lq_node_begin(ctx, &lq_op_slice, 1, &x);
    if (!n) return NULL;
    n->ip[0] = a;
    n->ip[1] = start;
    n->ip[2] = end;
    if (!lq_node_view(ctx, n, x, x->ndim, ne, nb, (size_t)start * x->nb[a])) return NULL;
    return lq_node_finish(ctx, n);
}
