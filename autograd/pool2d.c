/* autograd/pool2d.c: geometry, argument checks and gradcheck cases shared by the 2D pooling ops. */
#include "autograd/pool2d.h"

#include <stdio.h>

lq_node *lq_pool2d_begin(lq_ctx *ctx, const lq_op_def *def, lq_tensor *x, const lq_pool2d_params *p) {
    const char *op = def->name;
    if (ctx->err.status != LQ_OK) return NULL;
    if (!lq_check_f32(ctx, op, "x", x)) return NULL;
    if (!p) {
        LQ_ERR(&ctx->err, LQ_ERR_ARG, "%s: pooling parameters are NULL", op);
        return NULL;
    }
    char sx[64];
    lq_shape_str(x, sx, sizeof sx);
    if (x->ndim != 4) {
        LQ_ERR(&ctx->err, LQ_ERR_SHAPE, "%s: x must be (N, C, H, W), got shape %s", op, sx);
        return NULL;
    }
    if (p->kernel_h < 1 || p->kernel_w < 1 || p->stride_h < 0 || p->stride_w < 0 || p->pad_h < 0 || p->pad_w < 0) {
        LQ_ERR(&ctx->err, LQ_ERR_ARG,
               "%s: kernel %dx%d must be >= 1, stride %dx%d and padding %dx%d must not be negative", op, p->kernel_h,
               p->kernel_w, p->stride_h, p->stride_w, p->pad_h, p->pad_w);
        return NULL;
    }
    if (p->pad_h > p->kernel_h / 2 || p->pad_w > p->kernel_w / 2) {
        LQ_ERR(&ctx->err, LQ_ERR_ARG, "%s: padding %dx%d must be at most half the kernel %dx%d", op, p->pad_h,
               p->pad_w, p->kernel_h, p->kernel_w);
        return NULL;
    }
    int64_t H = x->ne[2], W = x->ne[3];
    int64_t hp = H + 2 * (int64_t)p->pad_h, wp = W + 2 * (int64_t)p->pad_w;
    if (H < 1 || W < 1 || hp < p->kernel_h || wp < p->kernel_w) {
        LQ_ERR(&ctx->err, LQ_ERR_SHAPE, "%s: kernel %dx%d does not fit x of shape %s (padded input %lldx%lld)", op,
               p->kernel_h, p->kernel_w, sx, (long long)hp, (long long)wp);
        return NULL;
    }
    int64_t sh = p->stride_h ? p->stride_h : p->kernel_h, sw = p->stride_w ? p->stride_w : p->kernel_w;
    int64_t OH = (hp - p->kernel_h) / sh + 1, OW = (wp - p->kernel_w) / sw + 1;
    LQ_OP_CHECK(ctx, H * W < INT32_MAX, LQ_ERR_UNSUPPORTED, "%s: planes of %lld elements exceed int32 indices", op,
                (long long)(H * W));
    x = lq_contiguous(ctx, x);
    lq_node *n = lq_node_begin(ctx, def, 1, &x);
    if (!n) return NULL;
    n->ip[0] = p->kernel_h;
    n->ip[1] = p->kernel_w;
    n->ip[2] = sh;
    n->ip[3] = sw;
    n->ip[4] = p->pad_h;
    n->ip[5] = p->pad_w;
    if (!lq_node_output(ctx, n, 4, (int64_t[]){x->ne[0], x->ne[1], OH, OW})) return NULL;
    return n;
}

lq_pool2d_geom lq_pool2d_geom_of(const lq_node *n) {
    const lq_tensor *x = n->in[0], *y = n->out;
    lq_pool2d_geom g = {.N = x->ne[0], .C = x->ne[1], .H = x->ne[2], .W = x->ne[3], .OH = y->ne[2], .OW = y->ne[3],
                        .kh = n->ip[0], .kw = n->ip[1], .sh = n->ip[2], .sw = n->ip[3], .ph = n->ip[4], .pw = n->ip[5]};
    return g;
}

lq_status lq_pool2d_gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c, lq_gc_fn call, bool distinct) {
    int64_t N = lq_rng_int(rng, 1, 2), C = lq_rng_int(rng, 1, 2);
    /* rows always overlap (stride < kernel) and are padded; columns draw any valid geometry */
    int64_t kh = lq_rng_int(rng, 2, 3), kw = lq_rng_int(rng, 1, 3);
    int64_t sh = lq_rng_int(rng, 1, kh - 1), sw = lq_rng_int(rng, 1, kw);
    int64_t ph = lq_rng_int(rng, 1, kh / 2), pw = lq_rng_int(rng, 0, kw / 2);
    int64_t H = lq_rng_int(rng, 3, 6), W = lq_rng_int(rng, 3, 6); /* >= any kernel drawn */
    c->n_in = 1;
    c->in[0] = lq_gc_input(ctx, rng, 4, (int64_t[]){N, C, H, W}, -1, 1);
    if (!c->in[0]) return ctx->err.status;
    if (distinct) {
        /* each plane: a random permutation of (k - HW / 2) / 10, k = 0 .. HW - 1 (Fisher-Yates) */
        float *x = c->in[0]->data;
        int64_t hw = H * W;
        for (int64_t pl = 0; pl < N * C; pl++) {
            float *v = x + pl * hw;
            for (int64_t k = 0; k < hw; k++) v[k] = 0.1f * (float)(k - hw / 2);
            for (int64_t k = hw - 1; k > 0; k--) {
                int64_t j = lq_rng_int(rng, 0, k);
                float t = v[k];
                v[k] = v[j];
                v[j] = t;
            }
        }
    }
    c->ip[0] = kh;
    c->ip[1] = kw;
    c->ip[2] = sh;
    c->ip[3] = sw;
    c->ip[4] = ph;
    c->ip[5] = pw;
    c->call = call;
    snprintf(c->desc, sizeof c->desc, "x (%lld, %lld, %lld, %lld) k %lldx%lld s %lldx%lld p %lldx%lld", (long long)N,
             (long long)C, (long long)H, (long long)W, (long long)kh, (long long)kw, (long long)sh, (long long)sw,
             (long long)ph, (long long)pw);
    return ctx->err.status;
}

lq_pool2d_params lq_pool2d_gc_params(const lq_gc_case *c) {
    lq_pool2d_params p = {(int)c->ip[0], (int)c->ip[1], (int)c->ip[2], (int)c->ip[3], (int)c->ip[4], (int)c->ip[5]};
    return p;
}
