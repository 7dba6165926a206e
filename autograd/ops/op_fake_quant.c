/* autograd/ops/op_fake_quant.c: fake quantization with a fixed scale and zero point, straight-through backward. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "autograd/cuda_impl.h"
#include "autograd/fake_quant.h"
#include "quant/kernels_affine.h"

/* Node: in[0] x (contiguous), in[1] scale, in[2] zero point (when ip[5]).
 * ip: 0 granularity, 1 axis, 2 group, 3 qmin, 4 qmax, 5 has zero point.
 * saved[0]: int32 zero points (or NULL); saved[1]: the uint8 mask, when recorded. */
static lq_affine_scheme node_scheme(const lq_node *n) {
    lq_affine_scheme s = {(int32_t)n->ip[3], (int32_t)n->ip[4], (lq_granularity)n->ip[0], (int)n->ip[1], n->ip[2]};
    return s;
}

static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    lq_affine_scheme s = node_scheme(n);
    const lq_tensor *x = n->in[0];
    uint8_t *mask = NULL;
    if (n->recorded) {
        mask = lq_ctx_alloc(ctx, (size_t)(lq_numel(x) > 0 ? lq_numel(x) : 1));
        if (!mask) return ctx->err.status;
        n->saved[1] = mask;
    }
    return lq_affine_fake_quantize(&s, x->ndim, x->ne, x->data, n->in[1]->data, n->saved[0], n->out->data, mask,
                                   ctx->n_threads, &ctx->err);
}

/* y = (clamp(zp + round(x / s), qmin, qmax) - zp) s. The rounding has derivative 0 almost
 * everywhere; the straight-through estimator replaces d round(v) / dv by 1, so inside the range
 * dy/dx = s * (1 / s) = 1 and where the clamp is active dy/dx = 0. PyTorch decides "inside" on
 * the rounded, unclamped code (qmin <= zp + round(x / s) <= qmax), so x a hair beyond the last
 * code still passes its gradient: dx += dy * mask. Scale and zero point are constants here. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    const lq_tensor *x = n->in[0];
    int64_t m = lq_numel(x);
    const uint8_t *mask = n->saved[1];
    if (!mask) { /* not recorded with a mask (should not happen): recompute it */
        uint8_t *mk = lq_ctx_alloc(ctx, (size_t)(m > 0 ? m : 1));
        float *tmp = lq_ctx_alloc(ctx, (size_t)(m > 0 ? m : 1) * sizeof(float));
        if (!mk || !tmp) return ctx->err.status;
        lq_affine_scheme s = node_scheme(n);
        LQ_TRY(lq_affine_fake_quantize(&s, x->ndim, x->ne, x->data, n->in[1]->data, n->saved[0], tmp, mk,
                                       ctx->n_threads, &ctx->err));
        mask = mk;
    }
    const float *gy = n->out->grad->data;
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
    for (int64_t i = 0; i < m; i++)
        if (mask[i]) gx[i] += gy[i];
    return LQ_OK;
}

/* --- gradcheck ------------------------------------------------------------------------------ */

/* Case: in[0] x, in[1] scale, in[2] zero point; ip as the node's; aux = the rounding residual
 * r = round(x0 / s) - x0 / s frozen at the base point (double per element). */
static lq_fq_params case_params(const lq_gc_case *c, lq_tensor *const *in) {
    lq_fq_params p = {{(int32_t)c->ip[3], (int32_t)c->ip[4], (lq_granularity)c->ip[0], (int)c->ip[1], c->ip[2]},
                      in[1], in[2]};
    return p;
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    lq_fq_params p = case_params(user, in);
    return lq_fake_quant(ctx, in[0], &p);
}

/* The surrogate whose true derivative is the STE's:
 *   y = s * clamp(x / s + r, qmin - zp - 1/2, qmax - zp + 1/2)
 * At the base point x / s + r = round(x0 / s) = m, an integer, so the clamp is inactive exactly
 * when qmin <= m + zp <= qmax (torch's mask, decided on the rounded code), and there dy/dx = 1;
 * elsewhere 0. The half-code margin keeps the kink at least s/2 - step from the base point, so
 * the finite differences (step <= s / 10) never straddle it; rounding ties do not matter because
 * r is frozen. */
static lq_tensor *gc_surrogate(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    lq_fq_params p = case_params(c, in);
    const lq_tensor *x = in[0];
    int64_t slots, m = lq_numel(x);
    if (lq_affine_check(&p.scheme, x->ndim, x->ne, &slots, &ctx->err) != LQ_OK) return NULL;
    int64_t inner = lq_affine_inner(&p.scheme, x->ndim, x->ne);
    lq_tensor *y = lq_new(ctx, LQ_DTYPE_F32, x->ndim, x->ne);
    if (!y) return NULL;
    const float *xd = x->data, *sd = in[1]->data, *zd = in[2]->data;
    const double *r = c->aux;
    float *yd = y->data;
    for (int64_t i = 0; i < m; i++) {
        int64_t k = (i / inner) % slots;
        double s = sd[k], zp = zd[k];
        double v = (double)xd[i] / s + r[i];
        double lo = p.scheme.qmin - zp - 0.5, hi = p.scheme.qmax - zp + 0.5;
        yd[i] = (float)(s * fmin(fmax(v, lo), hi));
    }
    return y;
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int bits = (int)lq_rng_int(rng, 2, 8);
    bool sym = lq_rng_int(rng, 0, 1);
    lq_granularity gran = (lq_granularity)lq_rng_int(rng, 0, 3);
    int64_t g = lq_rng_int(rng, 2, 4), a = lq_rng_int(rng, 1, 3), b = lq_rng_int(rng, 2, 4), cols = g * lq_rng_int(rng, 1, 3);
    bool three = lq_rng_int(rng, 0, 1);
    int64_t shape[3] = {a, b, cols}, shape2[2] = {a * b, cols};
    int ndim = three ? 3 : 2;
    const int64_t *sh = three ? shape : shape2;
    int axis = (int)lq_rng_int(rng, -ndim, ndim - 1);
    lq_affine_scheme s = lq_affine_scheme_make(bits, sym, gran, axis, g);
    int64_t slots;
    if (lq_affine_check(&s, ndim, sh, &slots, &ctx->err) != LQ_OK) return ctx->err.status;
    c->ip[0] = gran, c->ip[1] = axis, c->ip[2] = g, c->ip[3] = s.qmin, c->ip[4] = s.qmax;
    c->n_in = 3;
    c->in[0] = lq_gc_input(ctx, rng, ndim, sh, -2.0f, 2.0f);
    c->in[1] = lq_new_leaf(ctx, 1, (int64_t[]){slots}, false);
    c->in[2] = lq_new_leaf(ctx, 1, (int64_t[]){slots}, false);
    if (!c->in[0] || !c->in[1] || !c->in[2]) return ctx->err.status;
    /* scales so that the representable range, (qmax - qmin) s in [2, 4], covers part of [-2, 2]:
     * some elements clamp, most do not; the zero point sits in the middle half of the range */
    float *sd = c->in[1]->data, *zd = c->in[2]->data, smin = INFINITY;
    int32_t span = s.qmax - s.qmin;
    for (int64_t k = 0; k < slots; k++) {
        sd[k] = (0.5f + 0.5f * lq_rng_uniform(rng)) * 4.0f / (float)span;
        zd[k] = (float)lq_rng_int(rng, s.qmin + span / 4, s.qmax - span / 4);
        smin = fminf(smin, sd[k]);
    }
    int64_t m = lq_numel(c->in[0]), inner = lq_affine_inner(&s, ndim, sh);
    double *r = lq_ctx_alloc(ctx, (size_t)m * sizeof(double));
    if (!r) return ctx->err.status;
    const float *xd = c->in[0]->data;
    for (int64_t i = 0; i < m; i++) {
        int64_t k = (i / inner) % slots;
        float inv = 1.0f / sd[k];
        r[i] = (double)nearbyintf(xd[i] * inv) - (double)xd[i] / (double)sd[k];
    }
    c->aux = r;
    c->step = 0.1f * smin;
    c->call = gc_call;
    c->surrogate = gc_surrogate;
    static const char *gname[] = {"tensor", "channel", "group", "token"};
    if (three)
        snprintf(c->desc, sizeof c->desc, "x (%lld, %lld, %lld) int%d %s %s axis %d g%lld", (long long)a, (long long)b,
                 (long long)cols, bits, sym ? "sym" : "asym", gname[gran], axis, (long long)g);
    else
        snprintf(c->desc, sizeof c->desc, "x (%lld, %lld) int%d %s %s axis %d g%lld", (long long)(a * b),
                 (long long)cols, bits, sym ? "sym" : "asym", gname[gran], axis, (long long)g);
    return ctx->err.status;
}

const lq_op_def lq_op_fake_quant = {"fake_quant", fwd, bwd, gc_make};

lq_tensor *lq_fake_quant(lq_ctx *ctx, lq_tensor *x, const lq_fq_params *p) {
    if (ctx->err.status != LQ_OK) return NULL;
    LQ_OP_CHECK(ctx, p != NULL, LQ_ERR_ARG, "fake_quant: no parameters given");
    if (!lq_check_f32(ctx, "fake_quant", "x", x) || !lq_check_f32(ctx, "fake_quant", "scale", p->scale)) return NULL;
    if (p->zero_point && !lq_check_f32(ctx, "fake_quant", "zero_point", p->zero_point)) return NULL;
    LQ_OP_CHECK(ctx, !lq_requires_grad(p->scale) && !lq_requires_grad(p->zero_point), LQ_ERR_ARG,
                "fake_quant: scale and zero point are constants here; use lq_fake_quant_lsq to learn them");
    int64_t slots;
    if (lq_affine_check(&p->scheme, x->ndim, x->ne, &slots, &ctx->err) != LQ_OK) return NULL;
    if (lq_numel(p->scale) != slots)
        return lq_shape_error(ctx, "fake_quant", x, p->scale, "do not match: the scale needs one value per slot");
    if (p->zero_point && lq_numel(p->zero_point) != slots)
        return lq_shape_error(ctx, "fake_quant", x, p->zero_point,
                              "do not match: the zero point needs one value per slot");
    x = lq_contiguous(ctx, x);
    lq_tensor *scale = lq_contiguous(ctx, p->scale);
    lq_tensor *zp = p->zero_point ? lq_contiguous(ctx, p->zero_point) : NULL;
    if (!x || !scale || (p->zero_point && !zp)) return NULL;
    int32_t *zi = NULL;
    if (zp) {
        zi = lq_ctx_alloc(ctx, (size_t)(slots > 0 ? slots : 1) * sizeof(int32_t));
        if (!zi) return NULL;
        const float *zd = zp->data;
        if (ctx->device == LQ_DEVICE_CUDA) { /* checked and converted on the host, then uploaded below */
            float *zh = lq_ctx_alloc(ctx, (size_t)(slots > 0 ? slots : 1) * sizeof(float));
            if (!zh || lq_tensor_download(ctx, zp, zh) != LQ_OK) return NULL;
            zd = zh;
        }
        for (int64_t k = 0; k < slots; k++) {
            if (!(zd[k] == nearbyintf(zd[k]) && zd[k] >= (float)p->scheme.qmin && zd[k] <= (float)p->scheme.qmax))
                return LQ_OP_FAIL(ctx, LQ_ERR_ARG,
                                  "fake_quant: zero point %lld is %g; it must be an integer in [%d, %d]",
                                  (long long)k, (double)zd[k], (int)p->scheme.qmin, (int)p->scheme.qmax);
            zi[k] = (int32_t)zd[k];
        }
        if (ctx->device == LQ_DEVICE_CUDA && !(zi = lq_cuda_upload(ctx, zi, (size_t)slots * sizeof(int32_t))))
            return NULL;
    }
    lq_tensor *in[3] = {x, scale, zp};
    lq_node *n = lq_node_begin(ctx, &lq_op_fake_quant, zp ? 3 : 2, in);
    if (!n) return NULL;
    n->ip[0] = p->scheme.gran, n->ip[1] = p->scheme.axis, n->ip[2] = p->scheme.group;
    n->ip[3] = p->scheme.qmin, n->ip[4] = p->scheme.qmax, n->ip[5] = zp != NULL;
    n->saved[0] = zi;
    if (!lq_node_output(ctx, n, x->ndim, x->ne)) return NULL;
    return lq_node_finish(ctx, n);
}
