/* autograd/tape.c: recording op nodes during forward and walking them back in backward. */
#include <math.h>
#include <string.h>

#include "autograd/cuda_impl.h"
#include "autograd/autograd_impl.h"

bool lq_requires_grad(const lq_tensor *t) { return t && (t->flags & LQ_TENSOR_REQUIRES_GRAD); }

bool lq_check_f32(lq_ctx *ctx, const char *op, const char *arg, const lq_tensor *t) {
    if (!t) {
        LQ_ERR(&ctx->err, LQ_ERR_ARG, "%s: %s is NULL", op, arg);
        return false;
    }
    if (t->dtype != LQ_DTYPE_F32) {
        LQ_ERR(&ctx->err, LQ_ERR_ARG, "%s: %s must be f32, got %s", op, arg, lq_dtype_name(t->dtype));
        return false;
    }
    if (t->device != ctx->device) {
        LQ_ERR(&ctx->err, LQ_ERR_ARG, "%s: %s is on the %s but the context runs on the %s (move it with "
               "lq_to_ctx_device, lq_tensor_to_device or lq_params_to_device)", op, arg,
               t->device == LQ_DEVICE_CUDA ? "GPU" : "CPU", ctx->device == LQ_DEVICE_CUDA ? "GPU" : "CPU");
        return false;
    }
    return true;
}

lq_tensor *lq_shape_error(lq_ctx *ctx, const char *op, const lq_tensor *a, const lq_tensor *b, const char *what) {
    char sa[64], sb[64];
    LQ_ERR(&ctx->err, LQ_ERR_SHAPE, "%s: shapes %s and %s %s", op, lq_shape_str(a, sa, sizeof sa),
           lq_shape_str(b, sb, sizeof sb), what);
    return NULL;
}

lq_node *lq_node_begin(lq_ctx *ctx, const lq_op_def *op, int n_in, lq_tensor *const *in) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (n_in > LQ_MAX_INPUTS) {
        LQ_ERR(&ctx->err, LQ_ERR_INTERNAL, "%s: %d inputs, at most %d", op->name, n_in, LQ_MAX_INPUTS);
        return NULL;
    }
    bool any_grad = false;
    for (int i = 0; i < n_in; i++) {
        if (!in[i]) {
            LQ_ERR(&ctx->err, LQ_ERR_ARG, "%s: input %d is NULL", op->name, i);
            return NULL;
        }
        any_grad |= lq_requires_grad(in[i]);
    }
    lq_node *n = lq_ctx_alloc(ctx, sizeof *n);
    if (!n) return NULL;
    memset(n, 0, sizeof *n);
    n->op = op;
    n->n_in = n_in;
    for (int i = 0; i < n_in; i++) n->in[i] = in[i];
    n->recorded = ctx->grad_enabled && any_grad;
    return n;
}

lq_node *lq_node_begin_like(lq_ctx *ctx, const lq_op_def *op, lq_tensor *x) {
    if (ctx->err.status != LQ_OK || !lq_check_f32(ctx, op->name, "x", x)) return NULL;
    x = lq_contiguous(ctx, x);
    lq_node *n = lq_node_begin(ctx, op, 1, &x);
    if (!n || !lq_node_output(ctx, n, x->ndim, x->ne)) return NULL;
    return n;
}

lq_tensor *lq_node_output(lq_ctx *ctx, lq_node *n, int ndim, const int64_t *shape) {
    n->out = lq_new(ctx, LQ_DTYPE_F32, ndim, shape);
    return n->out;
}

lq_tensor *lq_node_view(lq_ctx *ctx, lq_node *n, lq_tensor *src, int ndim, const int64_t *shape, const size_t *nb,
                        size_t offset) {
    lq_tensor *t = lq_ctx_alloc(ctx, sizeof *t);
    if (!t) return NULL;
    if (lq_tensor_init(t, src->dtype, ndim, shape, (char *)src->data + offset, &ctx->err) != LQ_OK) return NULL;
    for (int d = 0; d < ndim; d++) t->nb[d] = nb[d];
    t->device = src->device;
    t->flags = LQ_TENSOR_VIEW;
    n->out = t;
    return t;
}

lq_tensor *lq_node_finish(lq_ctx *ctx, lq_node *n) {
    if (!n->out || ctx->err.status != LQ_OK) return NULL;
    lq_op_fn fwd = lq_op_forward_for(ctx, n->op);
    if (!fwd) return LQ_OP_FAIL(ctx, LQ_ERR_UNSUPPORTED, "%s: this op has no CUDA kernel", n->op->name);
    double t0 = lq_prof_begin(ctx);
    lq_status s = fwd(ctx, n);
    lq_prof_end(ctx, n->op, false, t0);
    if (s != LQ_OK) {
        if (ctx->err.status == LQ_OK) LQ_ERR(&ctx->err, s, "%s: forward failed", n->op->name);
        return NULL;
    }
    if (n->recorded) {
        n->out->flags |= LQ_TENSOR_REQUIRES_GRAD;
        n->out->node = n;
        n->prev = ctx->tape;
        ctx->tape = n;
    }
    return n->out;
}

/* Whether t's gradient comes from the pool: an intermediate (a recorded node's output, not a
 * parameter) in release mode, a block that walk() hands back after the node's backward. */
static bool pooled_grad(const lq_ctx *ctx, const lq_tensor *t) {
    return ctx->release_grads && t->node && t->node->recorded && !(t->flags & LQ_TENSOR_PARAM);
}

/* A zeroed gradient for t. Inside a checkpointed segment's re-run (checkpoint.c) allocations go to
 * the scratch arenas, which the re-run rewinds when it ends: right for the segment's own tensors,
 * wrong for one from outside it that gets its gradient there first (a parameter the segment reads
 * through its user pointer): that gradient goes to the main arenas and lasts the step. */
static lq_tensor *zero_grad_for(lq_ctx *ctx, const lq_tensor *t) {
    if (ctx->arena != &ctx->scratch || lq_arena_holds(&ctx->scratch, t))
        return lq_zeros(ctx, LQ_DTYPE_F32, t->ndim, t->ne);
    lq_arena *a = ctx->arena, *da = ctx->darena;
    ctx->arena = &ctx->main;
    if (ctx->device == LQ_DEVICE_CUDA) ctx->darena = &ctx->dmain;
    lq_tensor *gt = lq_zeros(ctx, LQ_DTYPE_F32, t->ndim, t->ne);
    ctx->arena = a;
    ctx->darena = da;
    return gt;
}

lq_status lq_grad_get(lq_ctx *ctx, lq_tensor *t, float **g) {
    *g = NULL;
    if (!lq_requires_grad(t)) return LQ_OK;
    if (!t->grad) {
        lq_tensor *gt = pooled_grad(ctx, t) ? lq_pool_grad(ctx, t) : zero_grad_for(ctx, t);
        if (!gt) return ctx->err.status ? ctx->err.status : LQ_ERR_OOM;
        t->grad = gt;
    }
    *g = t->grad->data;
    return LQ_OK;
}

lq_status lq_grad_get_fresh(lq_ctx *ctx, lq_tensor *t, float **g, bool *fresh) {
    *fresh = false;
    if (t->grad || !lq_requires_grad(t) || !pooled_grad(ctx, t)) return lq_grad_get(ctx, t, g);
    lq_tensor *gt = lq_pool_grad_ex(ctx, t, false);
    if (!gt) return ctx->err.status ? ctx->err.status : LQ_ERR_OOM;
    t->grad = gt;
    *g = gt->data;
    *fresh = true;
    return LQ_OK;
}

lq_status lq_grad_add(lq_ctx *ctx, lq_tensor *t, const float *src) {
    float *g;
    LQ_TRY(lq_grad_get(ctx, t, &g));
    if (!g) return LQ_OK;
    int64_t m = lq_numel(t);
    if (ctx->device == LQ_DEVICE_CUDA) return lq_cuda_accumulate(ctx, g, src, m);
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
    for (int64_t i = 0; i < m; i++) g[i] += src[i];
    return LQ_OK;
}

/* Every consumer of out was recorded after out's node, so when that node's backward runs, out's
 * gradient is complete and nothing reads it again (walk hands a pool block back just after). x
 * without a gradient yet starts from zero, so zero + dy is dy: the block itself. Later
 * contributions to x (its consumers recorded before out's node) add into it as usual. */
bool lq_grad_adopt(lq_ctx *ctx, lq_tensor *x, lq_tensor *out) {
    lq_tensor *gy = out->grad;
    if (!gy || !(gy->flags & LQ_TENSOR_POOLED_GRAD) || x->grad || !lq_requires_grad(x) || !pooled_grad(ctx, x) ||
        lq_numel(x) != lq_numel(out))
        return false;
    lq_pool_reshape(gy, x);
    x->grad = gy;
    out->grad = NULL;
    return true;
}

/* Walks the tape from its newest node back to stop, calling each backward whose output got a
 * gradient. Nodes whose output never received one (not on the loss's path) are skipped. Every
 * consumer of a node's output was recorded after it, so once the node's backward has run nothing
 * adds to or reads its output's gradient again: a pool gradient goes back then. */
static lq_status walk(lq_ctx *ctx, lq_node *stop) {
    for (lq_node *n = ctx->tape; n && n != stop; n = n->prev) {
        if (!n->out->grad) continue;
        lq_op_fn bwd = lq_op_backward_for(ctx, n->op);
        if (!bwd) return LQ_ERR(&ctx->err, LQ_ERR_UNSUPPORTED, "%s: this op has no CUDA backward kernel", n->op->name);
        double t0 = lq_prof_begin(ctx);
        lq_status s = bwd(ctx, n);
        lq_prof_end(ctx, n->op, true, t0);
        if (s != LQ_OK) {
            if (ctx->err.status == LQ_OK) LQ_ERR(&ctx->err, s, "%s: backward failed", n->op->name);
            return s;
        }
        if (n->out->grad && (n->out->grad->flags & LQ_TENSOR_POOLED_GRAD)) { /* NULL: adopted */
            lq_pool_release(&ctx->pool, n->out->grad);
            n->out->grad = NULL;
        }
    }
    return LQ_OK;
}

lq_status lq_backward_from(lq_ctx *ctx, lq_tensor *out, const lq_tensor *grad_out) {
    if (ctx->err.status != LQ_OK) return ctx->err.status;
    if (!out) return LQ_ERR(&ctx->err, LQ_ERR_ARG, "backward: output is NULL");
    if (!lq_requires_grad(out))
        return LQ_ERR(&ctx->err, LQ_ERR_STATE,
                      "backward: '%s' does not depend on anything that requires a gradient (or was made in no-grad mode)",
                      out->name);
    if (grad_out && (!lq_same_shape(out, grad_out) || grad_out->dtype != LQ_DTYPE_F32))
        return LQ_ERR(&ctx->err, LQ_ERR_SHAPE, "backward: gradient shape or dtype does not match the output");
    if (out->node) {
        lq_node *n = ctx->tape;
        while (n && n != out->node) n = n->prev;
        if (!n)
            return LQ_ERR(&ctx->err, LQ_ERR_STATE,
                          "backward: the tape that produced '%s' was already consumed by a backward pass (or reset)",
                          out->name);
    }
    float *g;
    LQ_TRY(lq_grad_get(ctx, out, &g));
    if (grad_out) {
        int64_t ne4[4];
        size_t dnb[4], snb[4];
        lq_pad4(out->grad, ne4, dnb);
        lq_pad4(grad_out, ne4, snb);
        if (ctx->device == LQ_DEVICE_CUDA) { /* g is device memory: grad_out must be too */
            if (grad_out->device != LQ_DEVICE_CUDA)
                return LQ_ERR(&ctx->err, LQ_ERR_ARG,
                              "backward: the upstream gradient must be on the GPU (lq_to_ctx_device)");
            LQ_TRY(lq_cuda_strided(ctx, g, dnb, grad_out->data, snb, ne4, true));
        } else {
            lq_strided_add(g, dnb, grad_out->data, snb, ne4, ctx->n_threads);
        }
    } else {
        if (lq_numel(out) != 1)
            return LQ_ERR(&ctx->err, LQ_ERR_SHAPE, "backward: loss must be a scalar, got %lld elements",
                          (long long)lq_numel(out));
        if (ctx->device == LQ_DEVICE_CUDA) { /* g[0] += 1 on the device */
            const float one = 1.0f;
            const float *d_one = lq_cuda_upload(ctx, &one, sizeof one);
            if (!d_one) return ctx->err.status ? ctx->err.status : LQ_ERR_OOM;
            LQ_TRY(lq_cuda_accumulate(ctx, g, d_one, 1));
        } else {
            g[0] += 1.0f;
        }
    }
    lq_status s = walk(ctx, NULL);
    ctx->tape = NULL; /* consumed: a second backward over it would double the grads */
    return s;
}

lq_status lq_backward(lq_ctx *ctx, lq_tensor *loss) { return lq_backward_from(ctx, loss, NULL); }

lq_status lq_tape_walk(lq_ctx *ctx, lq_node *stop) { return walk(ctx, stop); }
