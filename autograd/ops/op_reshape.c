/* autograd/ops/op_reshape.c: a new shape over the same elements (a view of contiguous data). */
#include <stdio.h>

#include "autograd/autograd_impl.h"

static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    (void)ctx;
    (void)n;
    return LQ_OK; /* the output is a view: nothing to compute */
}

/* Reshape keeps the row-major order of elements, so element i of y is element i of x:
 * dx[i] += dy[i]; in release mode x usually just takes dy's block (lq_grad_adopt). */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    if (lq_grad_adopt(ctx, n->in[0], n->out)) return LQ_OK;
    return lq_grad_add(ctx, n->in[0], n->out->grad->data);
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    /* multiply by position so that a reordering bug changes the loss */
    lq_tensor *y = lq_reshape(ctx, in[0], (int)c->ip[0], &c->ip[1]);
    return lq_mul(ctx, y, y);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t a = lq_rng_int(rng, 1, 4), b = lq_rng_int(rng, 1, 4), d = lq_rng_int(rng, 1, 4);
    c->n_in = 1;
    c->in[0] = lq_gc_input(ctx, rng, 3, (int64_t[]){a, b, d}, -1, 1);
    c->ip[0] = 2;
    c->ip[1] = a * b;
    c->ip[2] = -1;
    c->call = gc_call;
    snprintf(c->desc, sizeof c->desc, "(%lld, %lld, %lld) -> (%lld, -1)", (long long)a, (long long)b, (long long)d,
             (long long)(a * b));
    return ctx->err.status;
}

const lq_op_def lq_op_reshape = {"reshape", fwd, bwd, gc_make};

lq_tensor *lq_reshape(lq_ctx *ctx, lq_tensor *x, int ndim, const int64_t *shape) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!x) return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "reshape: x is NULL");
    LQ_OP_CHECK(ctx, ndim >= 0 && ndim <= LQ_MAX_DIMS, LQ_ERR_ARG, "reshape: ndim %d out of range", ndim);
    LQ_OP_CHECK(ctx, lq_dtype_info(x->dtype)->block_size == 1, LQ_ERR_UNSUPPORTED, "reshape: %s is a block format",
                lq_dtype_name(x->dtype));
    int64_t ne[LQ_MAX_DIMS], known = 1;
    int infer = -1;
    for (int d = 0; d < ndim; d++) {
        ne[d] = shape[d];
        if (ne[d] == -1) {
            LQ_OP_CHECK(ctx, infer < 0, LQ_ERR_ARG, "reshape: more than one -1 in the new shape");
            infer = d;
        } else {
            LQ_OP_CHECK(ctx, ne[d] >= 0, LQ_ERR_ARG, "reshape: negative size %lld", (long long)ne[d]);
            known *= ne[d];
        }
    }
    int64_t total = lq_numel(x);
    if (infer >= 0) {
        LQ_OP_CHECK(ctx, known > 0 && total % known == 0, LQ_ERR_SHAPE,
                    "reshape: cannot infer -1 for %lld elements from the other sizes (product %lld)", (long long)total,
                    (long long)known);
        ne[infer] = total / known;
        known *= ne[infer];
    }
    if (known != total) {
        char sx[64];
        return LQ_OP_FAIL(ctx, LQ_ERR_SHAPE, "reshape: x %s has %lld elements, the new shape has %lld",
                          lq_shape_str(x, sx, sizeof sx), (long long)total, (long long)known);
    }
    if (!lq_is_contiguous(x)) x = lq_contiguous(ctx, x);
    if (!x) return NULL;
    lq_node *n = lq_node_begin(ctx, &lq_op_reshape, 1, &x);
    if (!n) return NULL;
    size_t nb[LQ_MAX_DIMS];
    lq_contiguous_strides(ndim, ne, lq_dtype_info(x->dtype)->block_bytes, nb);
    if (!lq_node_view(ctx, n, x, ndim, ne, nb, 0)) return NULL;
    return lq_node_finish(ctx, n);
}
