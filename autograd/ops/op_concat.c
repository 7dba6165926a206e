/* autograd/ops/op_concat.c: join tensors along one axis (a copy). */
#include <stdio.h>

#include "autograd/autograd_impl.h"

/* Each input i lands in the output's slice [off_i, off_i + len_i) along the axis. */
static void slice_layout(const lq_tensor *out, const lq_tensor *x, int axis, int64_t off, int64_t ne4[4],
                         size_t onb4[4], size_t *byte_off) {
    int pad = LQ_MAX_DIMS - out->ndim;
    for (int d = 0; d < LQ_MAX_DIMS; d++) {
        ne4[d] = d < pad ? 1 : x->ne[d - pad];
        onb4[d] = d < pad ? 0 : out->nb[d - pad];
    }
    *byte_off = (size_t)off * out->nb[axis];
}

static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    int axis = (int)n->ip[0];
    int64_t off = 0;
    for (int i = 0; i < n->n_in; i++) {
        int64_t ne4[4];
        size_t onb4[4], xnb4[4], bo;
        slice_layout(n->out, n->in[i], axis, off, ne4, onb4, &bo);
        lq_pad4(n->in[i], ne4, xnb4);
        LQ_TRY(lq_strided_to(ctx, (float *)((char *)n->out->data + bo), onb4, n->in[i]->data, xnb4, ne4, false));
        off += n->in[i]->ne[axis];
    }
    return LQ_OK;
}

/* y = [x_0 | x_1 | ...] along axis, so dx_i += dy restricted to x_i's slice. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    int axis = (int)n->ip[0];
    int64_t off = 0;
    const lq_tensor *gy = n->out->grad;
    for (int i = 0; i < n->n_in; i++) {
        float *gx;
        LQ_TRY(lq_grad_get(ctx, n->in[i], &gx));
        if (gx) {
            int64_t ne4[4];
            size_t onb4[4], xnb4[4], bo;
            slice_layout(gy, n->in[i], axis, off, ne4, onb4, &bo);
            lq_pad4(n->in[i]->grad, ne4, xnb4);
            LQ_TRY(lq_strided_to(ctx, gx, xnb4, (const float *)((const char *)gy->data + bo), onb4, ne4, true));
        }
        off += n->in[i]->ne[axis];
    }
    return LQ_OK;
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    const lq_gc_case *c = user;
    lq_tensor *y = lq_concat(ctx, in, n_in, (int)c->ip[0]);
    return lq_mul(ctx, y, y);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t s[3];
    for (int d = 0; d < 3; d++) s[d] = lq_rng_int(rng, 1, 3);
    int axis = (int)lq_rng_int(rng, 0, 2);
    c->n_in = (int)lq_rng_int(rng, 2, 3);
    for (int i = 0; i < c->n_in; i++) {
        int64_t si[3] = {s[0], s[1], s[2]};
        si[axis] = lq_rng_int(rng, 1, 3);
        c->in[i] = lq_gc_input(ctx, rng, 3, si, -1, 1);
    }
    c->ip[0] = axis;
    c->call = gc_call;
    snprintf(c->desc, sizeof c->desc, "%d inputs of 3 dims along axis %d", c->n_in, axis);
    return ctx->err.status;
}

const lq_op_def lq_op_concat = {"concat", fwd, bwd, gc_make};

lq_tensor *lq_concat(lq_ctx *ctx, lq_tensor *const *xs, int n_in, int axis) {
    if (ctx->err.status != LQ_OK) return NULL;
    LQ_OP_CHECK(ctx, xs && n_in >= 1 && n_in <= LQ_MAX_INPUTS, LQ_ERR_ARG, "concat: %d inputs, need 1..%d", n_in,
                LQ_MAX_INPUTS);
    for (int i = 0; i < n_in; i++)
        if (!lq_check_f32(ctx, "concat", "an input", xs[i])) return NULL;
    int a = lq_axis(xs[0], axis);
    LQ_OP_CHECK(ctx, a >= 0, LQ_ERR_ARG, "concat: axis %d out of range for %d dims", axis, xs[0]->ndim);
    int64_t ne[LQ_MAX_DIMS];
    for (int d = 0; d < xs[0]->ndim; d++) ne[d] = xs[0]->ne[d];
    for (int i = 1; i < n_in; i++) {
        if (xs[i]->ndim != xs[0]->ndim) return lq_shape_error(ctx, "concat", xs[0], xs[i], "differ in rank");
        for (int d = 0; d < xs[0]->ndim; d++)
            if (d != a && xs[i]->ne[d] != xs[0]->ne[d])
                return lq_shape_error(ctx, "concat", xs[0], xs[i], "differ outside the concat axis");
        ne[a] += xs[i]->ne[a];
    }
    lq_node *n = lq_node_begin(ctx, &lq_op_concat, n_in, xs);
    if (!n) return NULL;
    n->ip[0] = a;
    if (!lq_node_output(ctx, n, xs[0]->ndim, ne)) return NULL;
    return lq_node_finish(ctx, n);
}
