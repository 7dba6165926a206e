/* models/qlayer_int.c: a quantized layer's integer form: conversion (weight codes, expanded scales,
 * frozen activation quantizer) and the forward on real integer codes (no fake quantization). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/autograd_impl.h"
#include "models/qat.h"
#include "quant/kernels_affine.h"

void lq_qlayer_int_free(lq_qlayer_int *q) {
    if (!q) return;
    free(q->w_codes), free(q->w_scale), free(q->w_zp), free(q->w_f32);
    memset(q, 0, sizeof *q);
}

lq_status lq_qlayer_convert(lq_qlayer *l, lq_err *err) {
    lq_qlayer_int *q = &l->q;
    lq_qlayer_int_free(q);
    int64_t N = l->weight->ne[0], K = lq_numel(l->weight) / N;
    q->n = N, q->k = K;
    const float *w = l->weight->data;
    if (!l->wspec.enabled) {
        q->w_bits = 0, q->w_group = K, q->n_groups = 1;
        if (!(q->w_f32 = malloc((size_t)(N * K) * sizeof(float)))) goto oom;
        memcpy(q->w_f32, w, (size_t)(N * K) * sizeof(float));
    } else {
        float *sc;
        int32_t *zp;
        int64_t slots;
        LQ_TRY(lq_qlayer_weight_qparams(l, &sc, &zp, &slots, err));
        q->w_bits = l->wspec.bits;
        q->w_group = l->wspec.granularity == LQ_GRAN_GROUP ? l->wspec.group_size : K;
        q->n_groups = K / q->w_group;
        q->w_codes = malloc((size_t)(N * K));
        q->w_scale = malloc((size_t)(N * q->n_groups) * sizeof(float));
        q->w_zp = malloc((size_t)(N * q->n_groups) * sizeof(int32_t));
        if (!q->w_codes || !q->w_scale || !q->w_zp) {
            free(sc), free(zp);
            goto oom;
        }
        int32_t qmin, qmax;
        lq_affine_range(q->w_bits, l->wspec.symmetric, &qmin, &qmax);
        int32_t shift = qmin >= 0 ? 1 << (q->w_bits - 1) : 0;
        for (int64_t n = 0; n < N; n++)
            for (int64_t g = 0; g < q->n_groups; g++) {
                /* slot of (n, g): tensor 0, channel n, group n G + g */
                int64_t s = slots == 1 ? 0 : (slots == N ? n : n * q->n_groups + g);
                float scale = sc[s], inv = 1.0f / scale;
                q->w_scale[n * q->n_groups + g] = scale;
                q->w_zp[n * q->n_groups + g] = zp[s];
                for (int64_t k = g * q->w_group; k < (g + 1) * q->w_group; k++) {
                    /* unsigned (asymmetric) codes are kept shifted by -2^(b-1) into the signed range, the
                     * zero point with them: code - zero point is unchanged */
                    int32_t c = lq_affine_quantize_one(w[n * K + k], inv, zp[s], qmin, qmax);
                    q->w_codes[n * K + k] = (int8_t)(c - shift);
                }
                q->w_zp[n * q->n_groups + g] -= shift;
            }
        free(sc), free(zp);
    }
    q->a_bits = 0;
    if (l->aspec.enabled) {
        const lq_qspec *a = &l->aspec;
        q->a_bits = a->bits;
        q->a_dynamic = a->granularity == LQ_GRAN_TOKEN;
        q->a_symmetric = a->symmetric;
        if (q->a_dynamic) {
            lq_affine_range(a->bits, true, &q->a_qmin, &q->a_qmax); /* torchao's signed codes */
        } else if (l->pact) {
            /* PACT: s = alpha / (2^b - 1) on [0, alpha], zero point 0 (autograd/op_pact.c) */
            lq_affine_range(a->bits, false, &q->a_qmin, &q->a_qmax);
            float alpha = ((const float *)l->pact_alpha->data)[0];
            q->a_scale = alpha / (float)q->a_qmax, q->a_zp = 0;
        } else if (l->a_scale) {
            lq_affine_range(a->bits, a->symmetric, &q->a_qmin, &q->a_qmax);
            q->a_scale = fmaxf(fabsf(((const float *)l->a_scale->data)[0]), 1.1920929e-07f);
            /* torch's learnable fake-quant rounds and clamps the float zero point */
            float z = l->a_zp ? nearbyintf(((const float *)l->a_zp->data)[0]) : 0.0f;
            z = fminf(fmaxf(z, (float)q->a_qmin), (float)q->a_qmax);
            q->a_zp = (int32_t)z;
        } else {
            lq_affine_range(a->bits, a->symmetric, &q->a_qmin, &q->a_qmax);
            LQ_CHECK(err, lq_observer_n_qparams(&l->aobs) > 0, LQ_ERR_STATE,
                     "layer %s: its activation observer has seen no data (calibrate first)", l->name);
            LQ_TRY(lq_observer_qparams(&l->aobs, &q->a_scale, &q->a_zp, err));
        }
    }
    q->ready = true;
    return LQ_OK;
oom:
    lq_qlayer_int_free(q);
    return LQ_ERR(err, LQ_ERR_OOM, "layer %s: out of memory converting to integers", l->name);
}

/* --- integer forward ------------------------------------------------------------------------------ */

/* Centred codes of rows x (M, K): static (one scale) or dynamic (per row: torchao's qparams, the same
 * arithmetic as the fake-quant op). xs gets each row's scale. */
static lq_status act_codes(const lq_qlayer *l, const float *x, int64_t M, int64_t K, int16_t *xd, float *xs, lq_err *err) {
    const lq_qlayer_int *q = &l->q;
    for (int64_t m = 0; m < M; m++) {
        const float *r = x + m * K;
        float s = q->a_scale;
        int32_t z = q->a_zp;
        if (q->a_dynamic) {
            float mn = INFINITY, mx = -INFINITY, zf;
            for (int64_t k = 0; k < K; k++) mn = fminf(mn, r[k]), mx = fmaxf(mx, r[k]);
            if (!isfinite(mn) || !isfinite(mx))
                return LQ_ERR(err, LQ_ERR_NUMERIC, "layer %s: input row %lld holds NaN or Inf", l->name, (long long)m);
            lq_affine_token_qparams(mn, mx, q->a_qmin, q->a_qmax, q->a_symmetric, &s, &zf);
            z = (int32_t)zf;
        }
        float inv = 1.0f / s;
        for (int64_t k = 0; k < K; k++)
            xd[m * K + k] = (int16_t)(lq_affine_quantize_one(r[k], inv, z, q->a_qmin, q->a_qmax) - z);
        xs[m] = s;
    }
    return LQ_OK;
}

/* Centred weight codes (N, K) as int16. */
static int16_t *weight_centred(lq_ctx *ctx, const lq_qlayer_int *q) {
    int16_t *wd = lq_ctx_alloc(ctx, (size_t)(q->n * q->k) * sizeof(int16_t));
    if (!wd) return NULL;
    for (int64_t n = 0; n < q->n; n++)
        for (int64_t k = 0; k < q->k; k++)
            wd[n * q->k + k] = (int16_t)(q->w_codes[n * q->k + k] - q->w_zp[n * q->n_groups + k / q->w_group]);
    return wd;
}

/* Dequantized weights (N, K): the integer codes times their scales (weight-only quantization). */
static lq_tensor *weight_deq(lq_ctx *ctx, const lq_qlayer *l) {
    const lq_qlayer_int *q = &l->q;
    lq_tensor *w = lq_new(ctx, LQ_DTYPE_F32, l->weight->ndim, l->weight->ne);
    if (!w) return NULL;
    float *d = w->data;
    if (q->w_bits == 0) {
        memcpy(d, q->w_f32, (size_t)(q->n * q->k) * sizeof(float));
        return w;
    }
    for (int64_t n = 0; n < q->n; n++)
        for (int64_t k = 0; k < q->k; k++) {
            int64_t g = n * q->n_groups + k / q->w_group;
            d[n * q->k + k] = (float)(q->w_codes[n * q->k + k] - q->w_zp[g]) * q->w_scale[g];
        }
    return w;
}

/* Rows (P, K) of a conv's input patches for sample b, centred codes (padding = code of 0.0 = 0). */
static void im2row_i16(const int16_t *xs, int64_t C, int64_t H, int64_t W, int64_t KH, int64_t KW, const lq_conv2d_params *p,
                       int64_t OH, int64_t OW, int16_t *rows) {
    int sh = p->stride_h > 0 ? p->stride_h : 1, sw = p->stride_w > 0 ? p->stride_w : 1;
    int64_t K = C * KH * KW;
    for (int64_t oh = 0; oh < OH; oh++)
        for (int64_t ow = 0; ow < OW; ow++) {
            int16_t *r = rows + (oh * OW + ow) * K;
            for (int64_t c = 0; c < C; c++)
                for (int64_t kh = 0; kh < KH; kh++)
                    for (int64_t kw = 0; kw < KW; kw++) {
                        int64_t ih = oh * sh - p->pad_h + kh, iw = ow * sw - p->pad_w + kw;
                        *r++ = (ih < 0 || ih >= H || iw < 0 || iw >= W) ? 0 : xs[(c * H + ih) * W + iw];
                    }
        }
}

lq_tensor *lq_qlayer_int_forward(lq_ctx *ctx, lq_qlayer *l, lq_tensor *x) {
    const lq_qlayer_int *q = &l->q;
    if (!q->ready) return LQ_OP_FAIL(ctx, LQ_ERR_STATE, "layer %s: not converted to integers", l->name);
    /* float activations (or float weights): the layer's real weights (codes x scales) in float arithmetic */
    if (q->a_bits == 0 || q->w_bits == 0) {
        bool g = lq_ctx_set_grad(ctx, false);
        lq_tensor *xa = x;
        if (q->a_bits) { /* float weights, quantized activations: the codes' values */
            xa = NULL;
            lq_tensor *xc = lq_contiguous(ctx, x);
            int64_t M = xc ? xc->ne[0] : 0; /* rows of a linear's input, samples of a conv's */
            int64_t K = xc ? lq_numel(xc) / M : 0;
            int16_t *xd = xc ? lq_ctx_alloc(ctx, (size_t)(M * K) * sizeof(int16_t)) : NULL;
            float *xs = xc ? lq_ctx_alloc(ctx, (size_t)M * sizeof(float)) : NULL;
            if (xd && xs && act_codes(l, xc->data, M, K, xd, xs, &ctx->err) == LQ_OK &&
                (xa = lq_new(ctx, LQ_DTYPE_F32, xc->ndim, xc->ne)))
                for (int64_t i = 0; i < M * K; i++) ((float *)xa->data)[i] = (float)xd[i] * xs[i / K];
        }
        lq_tensor *w = weight_deq(ctx, l), *y = NULL;
        if (xa && w) {
            y = l->kind == LQ_QLAYER_CONV2D ? lq_conv2d(ctx, xa, w, l->bias, &l->conv) : lq_matmul_t(ctx, xa, w, false, true);
            if (y && l->bias && l->kind == LQ_QLAYER_LINEAR) y = lq_add(ctx, y, l->bias);
        }
        lq_ctx_set_grad(ctx, g);
        return y;
    }
    lq_tensor *xc = lq_contiguous(ctx, x);
    int16_t *wd = weight_centred(ctx, q);
    if (!xc || !wd) return NULL;
    const float *bias = l->bias ? l->bias->data : NULL;
    float *ws = q->w_scale;
    if (l->kind == LQ_QLAYER_LINEAR) {
        if (xc->ndim != 2 || xc->ne[1] != q->k)
            return LQ_OP_FAIL(ctx, LQ_ERR_SHAPE, "layer %s: input must be (M, %lld)", l->name, (long long)q->k);
        int64_t M = xc->ne[0], s2[2] = {M, q->n};
        int16_t *xd = lq_ctx_alloc(ctx, (size_t)(M * q->k) * sizeof(int16_t));
        float *xs = lq_ctx_alloc(ctx, (size_t)M * sizeof(float));
        lq_tensor *y = lq_new(ctx, LQ_DTYPE_F32, 2, s2);
        if (!xd || !xs || !y) return NULL;
        if (act_codes(l, xc->data, M, q->k, xd, xs, &ctx->err) != LQ_OK) return NULL;
        lq_int_linear(M, q->n, q->k, q->w_group, xd, xs, wd, ws, bias, y->data, ctx->n_threads);
        return y;
    }
    /* conv: codes of each sample (static: one scale; dynamic: one per sample), patches as rows */
    if (xc->ndim != 4) return LQ_OP_FAIL(ctx, LQ_ERR_SHAPE, "layer %s: input must be (B, C, H, W)", l->name);
    int64_t B = xc->ne[0], C = xc->ne[1], H = xc->ne[2], W = xc->ne[3];
    int64_t KH = l->weight->ne[2], KW = l->weight->ne[3];
    int sh = l->conv.stride_h > 0 ? l->conv.stride_h : 1, sw = l->conv.stride_w > 0 ? l->conv.stride_w : 1;
    int64_t OH = (H + 2 * l->conv.pad_h - KH) / sh + 1, OW = (W + 2 * l->conv.pad_w - KW) / sw + 1, P = OH * OW;
    int64_t ys[4] = {B, q->n, OH, OW};
    lq_tensor *y = lq_new(ctx, LQ_DTYPE_F32, 4, ys);
    int16_t *xd = lq_ctx_alloc(ctx, (size_t)(C * H * W) * sizeof(int16_t));
    int16_t *rows = lq_ctx_alloc(ctx, (size_t)(P * q->k) * sizeof(int16_t));
    float *rs = lq_ctx_alloc(ctx, (size_t)P * sizeof(float)), *tmp = lq_ctx_alloc(ctx, (size_t)(P * q->n) * sizeof(float));
    if (!y || !xd || !rows || !rs || !tmp) return NULL;
    for (int64_t b = 0; b < B; b++) {
        float s;
        if (act_codes(l, (const float *)xc->data + b * C * H * W, 1, C * H * W, xd, &s, &ctx->err) != LQ_OK) return NULL;
        im2row_i16(xd, C, H, W, KH, KW, &l->conv, OH, OW, rows);
        for (int64_t p = 0; p < P; p++) rs[p] = s;
        lq_int_linear(P, q->n, q->k, q->w_group, rows, rs, wd, ws, bias, tmp, ctx->n_threads);
        float *yb = (float *)y->data + b * q->n * P;
        for (int64_t p = 0; p < P; p++)
            for (int64_t o = 0; o < q->n; o++) yb[o * P + p] = tmp[p * q->n + o];
    }
    return y;
}
