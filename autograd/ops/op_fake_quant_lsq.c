/* autograd/ops/op_fake_quant_lsq.c: fake quantization with a learned scale and zero point (LSQ), as torch's learnable fake quantize. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "autograd/fake_quant.h"
#include "quant/kernels_affine.h"

/* Node: in[0] x (contiguous), in[1] scale, in[2] zero point (when ip[3]).
 * ip: 0 qmin, 1 qmax, 2 per channel, 3 has zero point, 4 axis (normalised). fp[0] grad factor. */

/* The zero point as each direction uses it (PyTorch, FakeQuantPerTensorAffine.cpp and
 * FakeQuantPerChannelAffine.cpp): per tensor the forward takes nearbyint(zp) and the backward
 * (int)(zp + 0.5f), each clamped to [qmin, qmax] in float before the integer conversion; per
 * channel both take round-half-even(zp) clamped. The two per-tensor rules differ on negative and
 * on .5 zero points (2.5 -> 2 forward, 3 backward): reproduced, not fixed. */
static float zp_forward(const lq_node *n, int64_t k) {
    if (!n->ip[3]) return 0.0f;
    float z = ((const float *)n->in[2]->data)[k];
    float lo = (float)n->ip[0], hi = (float)n->ip[1];
    return (float)(int64_t)fminf(fmaxf(nearbyintf(z), lo), hi);
}
static float zp_backward(const lq_node *n, int64_t k) {
    if (!n->ip[3]) return 0.0f;
    float z = ((const float *)n->in[2]->data)[k];
    float lo = (float)n->ip[0], hi = (float)n->ip[1];
    if (n->ip[2]) return (float)(int64_t)fminf(fmaxf(nearbyintf(z), lo), hi);
    return (float)(int64_t)fminf(fmaxf(z + 0.5f, lo), hi);
}

static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    const lq_tensor *x = n->in[0];
    int64_t slots, inner;
    lq_fq_layout(x, n->ip[2] != 0, (int)n->ip[4], &slots, &inner);
    int32_t *zi = lq_ctx_alloc(ctx, (size_t)(slots > 0 ? slots : 1) * sizeof(int32_t));
    if (!zi) return ctx->err.status;
    for (int64_t k = 0; k < slots; k++) zi[k] = (int32_t)zp_forward(n, k);
    lq_affine_scheme s = {(int32_t)n->ip[0], (int32_t)n->ip[1], n->ip[2] ? LQ_GRAN_CHANNEL : LQ_GRAN_TENSOR,
                          (int)n->ip[4], 0};
    return lq_affine_fake_quantize(&s, x->ndim, x->ne, x->data, n->in[1]->data, zi, n->out->data, NULL,
                                   ctx->n_threads, &ctx->err);
}

/* y = (clamp(round(x / s) + z, qmin, qmax) - z) s, with the straight-through estimator on round
 * (d round(v) / dv = 1) and z entering only through the clamp (its own rounding is passed
 * through as well). With q = round(x / s) + z:
 *   qmin <= q <= qmax: y = round(x / s) s, so dy/dx = 1, dy/dz = 0 and
 *                      dy/ds = round(x / s) - x / s = (y - x) / s   (LSQ's residual term)
 *   q < qmin:          y = (qmin - z) s, so dy/dx = 0, dy/ds = qmin - z, dy/dz = -s
 *   q > qmax:          y = (qmax - z) s, so dy/dx = 0, dy/ds = qmax - z, dy/dz = -s
 * The scale and zero-point gradients are multiplied by grad_factor (LSQ: 1 / sqrt(N qmax)) and
 * summed over each slot's elements. Per element the float arithmetic is PyTorch's kernel's
 * (lq_lsq_grad_one); only the order of the final sums differs (see fake_quant.h). */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    float *gx, *gs, *gz = NULL;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    LQ_TRY(lq_grad_get(ctx, n->in[1], &gs));
    if (n->ip[3]) LQ_TRY(lq_grad_get(ctx, n->in[2], &gz));
    if (!gx && !gs && !gz) return LQ_OK;
    const lq_tensor *x = n->in[0];
    int64_t m = lq_numel(x), slots, inner;
    lq_fq_layout(x, n->ip[2] != 0, (int)n->ip[4], &slots, &inner);
    float *zb = lq_ctx_alloc(ctx, (size_t)(slots > 0 ? slots : 1) * sizeof(float));
    float *ts = gs ? lq_ctx_alloc(ctx, (size_t)(m > 0 ? m : 1) * sizeof(float)) : NULL;
    float *tz = gz ? lq_ctx_alloc(ctx, (size_t)(m > 0 ? m : 1) * sizeof(float)) : NULL;
    if (!zb || (gs && !ts) || (gz && !tz)) return ctx->err.status;
    for (int64_t k = 0; k < slots; k++) zb[k] = zp_backward(n, k);
    const float *xd = x->data, *sd = n->in[1]->data, *gy = n->out->grad->data;
    const int32_t qmin = (int32_t)n->ip[0], qmax = (int32_t)n->ip[1];
    const float g = n->fp[0];
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
    for (int64_t i = 0; i < m; i++) {
        int64_t k = slots > 1 ? (i / inner) % slots : 0;
        float dx, ds, dz, s = sd[k];
        lq_lsq_grad_one(xd[i], gy[i], s, 1.0f / s, zb[k], qmin, qmax, g, &dx, &ds, &dz);
        if (gx) gx[i] += dx;
        if (ts) ts[i] = ds;
        if (tz) tz[i] = dz;
    }
    LQ_TRY(lq_fq_slot_sums(ctx, ts, m, slots, inner, gs));
    LQ_TRY(lq_fq_slot_sums(ctx, tz, m, slots, inner, gz));
    return LQ_OK;
}

float lq_lsq_grad_factor(int64_t n, int32_t qmax) {
    double d = (double)(n > 0 ? n : 1) * (double)(qmax > 0 ? qmax : 1);
    return (float)(1.0 / sqrt(d));
}

/* --- gradcheck ------------------------------------------------------------------------------ */

/* Case: in[0] x, in[1] scale, in[2] zero point (learned); ip: 0 qmin, 1 qmax, 2 per channel,
 * 3 axis; fp[0] grad factor; aux: per element the residual r = m - x0 / s0 (m = the code minus
 * the zero point, as the backward rounds it), then per slot s0 and z0 and the integer k the
 * backward makes of z0. */
typedef struct lsq_aux {
    double *r;
    double *s0, *z0, *k;
} lsq_aux;

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    lq_lsq_params p = {(int32_t)c->ip[0], (int32_t)c->ip[1], c->ip[2] != 0, (int)c->ip[3], c->fp[0]};
    return lq_fake_quant_lsq(ctx, in[0], in[1], in[2], &p);
}

/* The surrogate whose true derivative is LSQ's gradient:
 *   s' = s0 + g (s - s0),  z' = k + g (z - z0)           (value s0 and k at the base point)
 *   y  = s' * clamp(x / s' + r, qmin - z', qmax - z')
 * Inside: y = x + s' r, so dy/dx = 1, dy/ds = g r, dy/dz = 0. Clamped: y = (qlim - z') s', so
 * dy/dx = 0, dy/ds = g (qlim - k), dy/dz = -g s. That is the backward's derivation term by term.
 * The case keeps every code at least one step inside or outside qmin / qmax (never on them), so
 * the clamp's kink is a whole code away from the base point. */
static lq_tensor *gc_surrogate(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    const lsq_aux *a = c->aux;
    const lq_tensor *x = in[0];
    int64_t m = lq_numel(x), slots, inner;
    lq_fq_layout(x, c->ip[2] != 0, (int)c->ip[3], &slots, &inner);
    lq_tensor *y = lq_new(ctx, LQ_DTYPE_F32, x->ndim, x->ne);
    if (!y) return NULL;
    const float *xd = x->data, *sd = in[1]->data, *zd = in[2]->data;
    float *yd = y->data;
    double g = c->fp[0];
    for (int64_t i = 0; i < m; i++) {
        int64_t k = slots > 1 ? (i / inner) % slots : 0;
        double s = a->s0[k] + g * (sd[k] - a->s0[k]), z = a->k[k] + g * (zd[k] - a->z0[k]);
        double v = xd[i] / s + a->r[i];
        yd[i] = (float)(s * fmin(fmax(v, (double)c->ip[0] - z), (double)c->ip[1] - z));
    }
    return y;
}

typedef struct near_ctx {
    const float *s;
    const double *k;
    int32_t qmin, qmax;
} near_ctx;

/* True when x's code (as the backward rounds it) sits on qmin or qmax, or x is near a tie. */
static bool near_kink(float v, int64_t slot, const void *aux) {
    const near_ctx *nc = aux;
    float inv = 1.0f / nc->s[slot];
    float q = nearbyintf((float)nc->k[slot] + v * inv);
    float frac = fabsf(v * inv - truncf(v * inv));
    return q == (float)nc->qmin || q == (float)nc->qmax || fabsf(frac - 0.5f) < 0.05f;
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int bits = (int)lq_rng_int(rng, 2, 4);
    bool sym = lq_rng_int(rng, 0, 1), per_channel = lq_rng_int(rng, 0, 1), three = lq_rng_int(rng, 0, 1);
    int64_t a = lq_rng_int(rng, 1, 3), b = lq_rng_int(rng, 2, 4), cols = lq_rng_int(rng, 2, 5);
    int64_t shape[3] = {a, b, cols}, shape2[2] = {a * b, cols};
    int ndim = three ? 3 : 2;
    int axis = (int)lq_rng_int(rng, 0, ndim - 1);
    int32_t qmin, qmax;
    lq_affine_range(bits, sym, &qmin, &qmax);
    c->ip[0] = qmin, c->ip[1] = qmax, c->ip[2] = per_channel, c->ip[3] = axis;
    c->n_in = 3;
    c->in[0] = lq_gc_input(ctx, rng, ndim, three ? shape : shape2, -2.0f, 2.0f);
    if (!c->in[0]) return ctx->err.status;
    int64_t slots, inner, m = lq_numel(c->in[0]);
    lq_fq_layout(c->in[0], per_channel, axis, &slots, &inner);
    int64_t per_slot = m / slots;
    int choice = (int)lq_rng_int(rng, 0, 2);
    c->fp[0] = choice == 0 ? 1.0f : choice == 1 ? 0.5f : lq_lsq_grad_factor(per_slot, qmax);
    int64_t sshape[1] = {slots};
    c->in[1] = lq_gc_input(ctx, rng, 1, sshape, 0.5f, 1.0f);
    c->in[2] = lq_gc_input(ctx, rng, 1, sshape, -0.3f, 0.3f);
    lsq_aux *ax = lq_ctx_alloc(ctx, sizeof *ax);
    if (!c->in[1] || !c->in[2] || !ax) return ctx->err.status;
    ax->r = lq_ctx_alloc(ctx, (size_t)m * sizeof(double));
    ax->s0 = lq_ctx_alloc(ctx, (size_t)slots * sizeof(double));
    ax->z0 = lq_ctx_alloc(ctx, (size_t)slots * sizeof(double));
    ax->k = lq_ctx_alloc(ctx, (size_t)slots * sizeof(double));
    if (!ax->r || !ax->s0 || !ax->z0 || !ax->k) return ctx->err.status;
    /* scales: the range (qmax - qmin) s spans 2..4 of x's [-2, 2]; zero point = an integer k >= 0
     * in the middle half of the range plus u in [-0.3, 0.3], so forward and backward round it
     * alike (the backward's truncation of z + 0.5 agrees with nearbyint for z > -0.5) */
    float *sd = c->in[1]->data, *zd = c->in[2]->data;
    int32_t span = qmax - qmin;
    for (int64_t k = 0; k < slots; k++) {
        sd[k] *= 4.0f / (float)span;
        int64_t lo = qmin + span / 4 > 0 ? qmin + span / 4 : 0, hi = qmax - span / 4;
        ax->k[k] = (double)lq_rng_int(rng, lo, hi > lo ? hi : lo);
        zd[k] += (float)ax->k[k];
        ax->s0[k] = sd[k];
        ax->z0[k] = zd[k];
    }
    near_ctx nc = {sd, ax->k, qmin, qmax};
    lq_fq_redraw(c->in[0], rng, -2.0f, 2.0f, slots, inner, near_kink, &nc);
    const float *xd = c->in[0]->data;
    for (int64_t i = 0; i < m; i++) {
        int64_t k = slots > 1 ? (i / inner) % slots : 0;
        float inv = 1.0f / sd[k];
        double code = nearbyintf((float)ax->k[k] + xd[i] * inv);
        ax->r[i] = (code - ax->k[k]) - (double)xd[i] / (double)sd[k];
    }
    c->aux = ax;
    /* a scale step moves x / s by |x| g step / s^2 <= 2 * 4e-3 / 0.133^2 = 0.45 codes: less than the
     * whole code between any base point and the clamp's kink */
    c->step = 4e-3f;
    c->call = gc_call;
    c->surrogate = gc_surrogate;
    snprintf(c->desc, sizeof c->desc, "x %s int%d %s %s axis %d g %.3g", three ? "3-d" : "2-d", bits,
             sym ? "sym" : "asym", per_channel ? "per channel" : "per tensor", axis, (double)c->fp[0]);
    return ctx->err.status;
}

const lq_op_def lq_op_fake_quant_lsq = {"fake_quant_lsq", fwd, bwd, gc_make};

lq_tensor *lq_fake_quant_lsq(lq_ctx *ctx, lq_tensor *x, lq_tensor *scale, lq_tensor *zero_point,
                             const lq_lsq_params *p) {
    if (ctx->err.status != LQ_OK) return NULL;
    LQ_OP_CHECK(ctx, p != NULL, LQ_ERR_ARG, "fake_quant_lsq: no parameters given");
    if (!lq_check_f32(ctx, "fake_quant_lsq", "x", x) || !lq_check_f32(ctx, "fake_quant_lsq", "scale", scale))
        return NULL;
    if (zero_point && !lq_check_f32(ctx, "fake_quant_lsq", "zero_point", zero_point)) return NULL;
    LQ_OP_CHECK(ctx, p->qmin < p->qmax && p->qmin >= -32768 && p->qmax <= 65535, LQ_ERR_ARG,
                "fake_quant_lsq: code range [%d, %d] must have qmin < qmax within [-32768, 65535]", (int)p->qmin,
                (int)p->qmax);
    LQ_OP_CHECK(ctx, isfinite(p->grad_factor), LQ_ERR_ARG, "fake_quant_lsq: grad_factor is %g",
                (double)p->grad_factor);
    int axis = p->per_channel ? lq_axis(x, p->axis) : 0;
    LQ_OP_CHECK(ctx, axis >= 0, LQ_ERR_ARG, "fake_quant_lsq: axis %d is out of range for %d dims", p->axis, x->ndim);
    int64_t slots = p->per_channel ? x->ne[axis] : 1;
    if (lq_numel(scale) != slots)
        return lq_shape_error(ctx, "fake_quant_lsq", x, scale,
                              p->per_channel ? "do not match: the scale needs one value per channel"
                                             : "do not match: a per-tensor scale has one value");
    if (zero_point && !lq_same_shape(zero_point, scale))
        return lq_shape_error(ctx, "fake_quant_lsq", scale, zero_point, "(scale, zero point) must match");
    x = lq_contiguous(ctx, x);
    scale = lq_contiguous(ctx, scale);
    if (zero_point) zero_point = lq_contiguous(ctx, zero_point);
    if (!x || !scale || ctx->err.status != LQ_OK) return NULL;
    const float *sd = scale->data, *zd = zero_point ? zero_point->data : NULL;
    if (ctx->device == LQ_DEVICE_CUDA) { /* the checks below read host copies */
        float *sh = lq_ctx_alloc(ctx, (size_t)(slots > 0 ? slots : 1) * sizeof(float));
        float *zh = zero_point ? lq_ctx_alloc(ctx, (size_t)(slots > 0 ? slots : 1) * sizeof(float)) : NULL;
        if (!sh || (zero_point && !zh) || lq_tensor_download(ctx, scale, sh) != LQ_OK ||
            (zero_point && lq_tensor_download(ctx, zero_point, zh) != LQ_OK))
            return NULL;
        sd = sh;
        zd = zh;
    }
    for (int64_t k = 0; k < slots; k++) {
        LQ_OP_CHECK(ctx, isfinite(sd[k]) && sd[k] > 0.0f, LQ_ERR_NUMERIC,
                    "fake_quant_lsq: scale %lld is %g; scales must be finite and > 0", (long long)k, (double)sd[k]);
        LQ_OP_CHECK(ctx, !zd || isfinite(zd[k]), LQ_ERR_NUMERIC, "fake_quant_lsq: zero point %lld is %g",
                    (long long)k, zd ? (double)zd[k] : 0.0);
    }
    lq_tensor *in[3] = {x, scale, zero_point};
    lq_node *n = lq_node_begin(ctx, &lq_op_fake_quant_lsq, zero_point ? 3 : 2, in);
    if (!n) return NULL;
    n->ip[0] = p->qmin, n->ip[1] = p->qmax, n->ip[2] = p->per_channel, n->ip[3] = zero_point != NULL, n->ip[4] = axis;
    n->fp[0] = p->grad_factor;
    if (!lq_node_output(ctx, n, x->ndim, x->ne)) return NULL;
    return lq_node_finish(ctx, n);
}
