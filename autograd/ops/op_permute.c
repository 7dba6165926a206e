/* autograd/ops/op_permute.c: reorder dimensions (a strided view, no copy). */
#include <stdio.h>

#include "autograd/autograd_impl.h"

static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    (void)ctx;
    (void)n;
    return LQ_OK;
}

/* y[i_0..i_k] = x[j] with j[perm[d]] = i_d. So dx at that j gets dy[i]: view dx (contiguous in
 * x's shape, strides cs) with strides cs[perm[d]] and add dy into it. */
lq_status lq_permute_backward(lq_ctx *ctx, lq_node *n, const int *perm) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    const lq_tensor *x = n->in[0], *y = n->out;
    size_t cs[LQ_MAX_DIMS], vs[LQ_MAX_DIMS], ys[LQ_MAX_DIMS];
    lq_contiguous_strides(x->ndim, x->ne, sizeof(float), cs);
    lq_contiguous_strides(y->ndim, y->ne, sizeof(float), ys);
    int64_t ne4[4];
    size_t vs4[4], ys4[4];
    int pad = LQ_MAX_DIMS - y->ndim;
    for (int d = 0; d < y->ndim; d++) vs[d] = cs[perm[d]];
    for (int d = 0; d < LQ_MAX_DIMS; d++) {
        ne4[d] = d < pad ? 1 : y->ne[d - pad];
        vs4[d] = d < pad ? 0 : vs[d - pad];
        ys4[d] = d < pad ? 0 : ys[d - pad];
    }
    return lq_strided_to(ctx, gx, vs4, y->grad->data, ys4, ne4, true);
}

static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    int perm[LQ_MAX_DIMS];
    for (int d = 0; d < n->out->ndim; d++) perm[d] = (int)n->ip[d];
    return lq_permute_backward(ctx, n, perm);
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    int perm[4] = {(int)c->ip[0], (int)c->ip[1], (int)c->ip[2], (int)c->ip[3]};
    lq_tensor *y = lq_permute(ctx, in[0], perm);
    return lq_mul(ctx, y, y);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t s[4];
    for (int d = 0; d < 4; d++) s[d] = lq_rng_int(rng, 1, 3);
    int perm[4] = {0, 1, 2, 3};
    for (int d = 3; d > 0; d--) { /* Fisher-Yates */
        int j = (int)lq_rng_int(rng, 0, d), t = perm[d];
        perm[d] = perm[j];
        perm[j] = t;
    }
    c->n_in = 1;
    c->in[0] = lq_gc_input(ctx, rng, 4, s, -1, 1);
    for (int d = 0; d < 4; d++) c->ip[d] = perm[d];
    c->call = gc_call;
    snprintf(c->desc, sizeof c->desc, "(%lld, %lld, %lld, %lld) perm (%d, %d, %d, %d)", (long long)s[0],
             (long long)s[1], (long long)s[2], (long long)s[3], perm[0], perm[1], perm[2], perm[3]);
    return ctx->err.status;
}

const lq_op_def lq_op_permute = {"permute", fwd, bwd, gc_make};

lq_tensor *lq_permute(lq_ctx *ctx, lq_tensor *x, const int *perm) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!x || !perm) return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "permute: NULL argument");
    int seen[LQ_MAX_DIMS] = {0};
    int64_t ne[LQ_MAX_DIMS];
    size_t nb[LQ_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++) {
        int p = perm[d];
        LQ_OP_CHECK(ctx, p >= 0 && p < x->ndim && !seen[p], LQ_ERR_ARG,
                    "permute: perm is not a permutation of 0..%d (entry %d is %d)", x->ndim - 1, d, p);
        seen[p] = 1;
        ne[d] = x->ne[p];
        nb[d] = x->nb[p];
    }
    lq_node *n = lq_node_begin(ctx, &lq_op_permute, 1, &x);
    if (!n) return NULL;
    for (int d = 0; d < x->ndim; d++) n->ip[d] = perm[d];
    if (!lq_node_view(ctx, n, x, x->ndim, ne, nb, 0)) return NULL;
    return lq_node_finish(ctx, n);
}
