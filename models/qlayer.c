/* models/qlayer.c: a quantization-aware linear / conv2d layer: setup and validation of its specs,
 * learned quantizer parameters (LSQ, PACT), and the float, calibration and fake-quant forwards. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/autograd_impl.h"
#include "models/qat.h"

/* The weight as the quantizer sees it: (N, K), K = C KH KW for a conv. */
static void weight_2d(const lq_qlayer *l, int64_t shape[2]) {
    shape[0] = l->weight->ne[0];
    shape[1] = lq_numel(l->weight) / (shape[0] > 0 ? shape[0] : 1);
}

static lq_affine_scheme weight_scheme(const lq_qlayer *l) {
    return lq_affine_scheme_make(l->wspec.bits, l->wspec.symmetric, l->wspec.granularity, 0, l->wspec.group_size);
}

lq_status lq_qlayer_setup(lq_qlayer *l, int n_threads, lq_err *err) {
    const char *nm = l->name;
    LQ_CHECK(err, l->weight && l->weight->dtype == LQ_DTYPE_F32 && lq_is_contiguous(l->weight), LQ_ERR_ARG,
             "layer %s: the weight must be a contiguous f32 tensor", nm);
    LQ_CHECK(err, (l->kind == LQ_QLAYER_LINEAR && l->weight->ndim == 2) || (l->kind == LQ_QLAYER_CONV2D && l->weight->ndim == 4),
             LQ_ERR_ARG, "layer %s: a %s weight must have %d dims", nm, l->kind == LQ_QLAYER_LINEAR ? "linear" : "conv2d",
             l->kind == LQ_QLAYER_LINEAR ? 2 : 4);
    int64_t w2[2];
    weight_2d(l, w2);
    if (l->wspec.enabled) {
        LQ_TRY(lq_qspec_validate(&l->wspec, err));
        LQ_CHECK(err, l->wspec.granularity != LQ_GRAN_TOKEN, LQ_ERR_INPUT,
                 "layer %s: weights cannot be quantized per token (use tensor, channel or g<N>)", nm);
        if (l->wspec.granularity == LQ_GRAN_GROUP && (l->wspec.group_size <= 0 || w2[1] % l->wspec.group_size != 0)) {
            l->wspec.granularity = LQ_GRAN_CHANNEL, l->wspec.axis = 0, l->wspec.group_size = 0;
            l->group_fallback = true;
        }
        if (l->wspec.granularity == LQ_GRAN_CHANNEL)
            LQ_CHECK(err, l->wspec.axis == 0, LQ_ERR_INPUT,
                     "layer %s: weights are quantized per output channel (axis 0), not axis %d", nm, l->wspec.axis);
        if (l->wspec.learnable) {
            LQ_CHECK(err, l->wspec.granularity == LQ_GRAN_TENSOR || l->wspec.granularity == LQ_GRAN_CHANNEL,
                     LQ_ERR_INPUT, "layer %s: learned weight scales (lsq) are per tensor or per channel", nm);
            LQ_CHECK(err, l->wspec.symmetric, LQ_ERR_INPUT, "layer %s: learned weight scales (lsq) are symmetric", nm);
        }
        lq_observer_config oc = lq_qspec_observer_config(&l->wspec);
        oc.axis = 0;
        oc.n_threads = n_threads;
        if (l->wspec.granularity == LQ_GRAN_GROUP) oc.group_size = l->wspec.group_size;
        LQ_TRY(lq_observer_init(&l->wobs, &oc, err));
        l->wobs_ready = true;
    }
    if (l->aspec.enabled) {
        LQ_TRY(lq_qspec_validate(&l->aspec, err));
        bool dyn = l->aspec.granularity == LQ_GRAN_TOKEN;
        LQ_CHECK(err, dyn || l->aspec.granularity == LQ_GRAN_TENSOR, LQ_ERR_INPUT,
                 "layer %s: activations are quantized per tensor (static) or per token (dynamic)", nm);
        if (l->pact) {
            LQ_CHECK(err, !dyn && !l->aspec.learnable && !l->aspec.symmetric, LQ_ERR_INPUT,
                     "layer %s: PACT clips static, asymmetric (unsigned) activations: drop 'token', 'lsq' and 'sym'", nm);
        }
        if (dyn) LQ_CHECK(err, !l->aspec.learnable, LQ_ERR_INPUT, "layer %s: dynamic activations have no learned scale", nm);
        if (!dyn) { /* PACT starts alpha from what it saw */
            lq_observer_config oc = lq_qspec_observer_config(&l->aspec);
            oc.n_threads = n_threads;
            LQ_TRY(lq_observer_init(&l->aobs, &oc, err));
            l->aobs_ready = true;
        }
    } else {
        LQ_CHECK(err, !l->pact, LQ_ERR_INPUT, "layer %s: PACT needs quantized activations", nm);
    }
    return LQ_OK;
}

lq_status lq_qlayer_declare_params(lq_qlayer *l, lq_params *p, lq_err *err) {
    char nm[LQ_NAME_MAX + 16];
    int64_t one = 1;
    if (l->wspec.enabled && l->wspec.learnable) {
        int64_t slots = l->wspec.granularity == LQ_GRAN_CHANNEL ? l->weight->ne[0] : 1;
        snprintf(nm, sizeof nm, "%s.w_scale", l->name);
        if (!(l->w_scale = lq_params_add(p, nm, 1, &slots, LQ_TENSOR_NO_DECAY, err))) return err->status;
    }
    if (l->aspec.enabled && l->aspec.learnable) {
        snprintf(nm, sizeof nm, "%s.a_scale", l->name);
        if (!(l->a_scale = lq_params_add(p, nm, 1, &one, LQ_TENSOR_NO_DECAY, err))) return err->status;
        if (!l->aspec.symmetric) {
            snprintf(nm, sizeof nm, "%s.a_zp", l->name);
            if (!(l->a_zp = lq_params_add(p, nm, 1, &one, LQ_TENSOR_NO_DECAY, err))) return err->status;
        }
    }
    if (l->aspec.enabled && l->pact) {
        snprintf(nm, sizeof nm, "%s.pact_alpha", l->name);
        if (!(l->pact_alpha = lq_params_add(p, nm, 1, &one, LQ_TENSOR_NO_DECAY, err))) return err->status;
    }
    return LQ_OK;
}

/* Scales / zero points of the weight from its current values (observer reset, then one update). */
static lq_status observe_weight(const lq_qlayer *l, lq_err *err) {
    lq_observer *o = (lq_observer *)&l->wobs; /* scratch state: the layer's weights are what it reports */
    int64_t w2[2];
    weight_2d(l, w2);
    lq_observer_reset(o);
    return lq_observer_update(o, l->weight->data, 2, w2, err);
}

lq_status lq_qlayer_weight_qparams(const lq_qlayer *l, float **scale, int32_t **zp, int64_t *n_slots, lq_err *err) {
    *scale = NULL, *zp = NULL, *n_slots = 0;
    LQ_CHECK(err, l->wspec.enabled, LQ_ERR_STATE, "layer %s: its weights are not quantized", l->name);
    int64_t w2[2], slots;
    weight_2d(l, w2);
    lq_affine_scheme s = weight_scheme(l);
    LQ_TRY(lq_affine_check(&s, 2, w2, &slots, err));
    float *sc = malloc((size_t)slots * sizeof *sc);
    int32_t *z = calloc((size_t)slots, sizeof *z);
    if (!sc || !z) {
        free(sc), free(z);
        return LQ_ERR(err, LQ_ERR_OOM, "layer %s: out of memory for %lld scales", l->name, (long long)slots);
    }
    lq_status st = LQ_OK;
    if (l->w_scale && l->lsq_ready) {
        /* LSQ: torch's learnable fake-quant clamps the learned scale at eps before using it */
        const float *ls = l->w_scale->data;
        for (int64_t i = 0; i < slots; i++) sc[i] = fmaxf(fabsf(ls[l->w_scale->ne[0] == slots ? i : 0]), 1.1920929e-07f);
    } else {
        st = observe_weight(l, err);
        if (st == LQ_OK) st = lq_observer_qparams(&l->wobs, sc, z, err);
    }
    if (st != LQ_OK) {
        free(sc), free(z);
        return st;
    }
    *scale = sc, *zp = z, *n_slots = slots;
    return LQ_OK;
}

lq_status lq_qlayer_init_learned(lq_qlayer *l, lq_err *err) {
    if (l->lsq_ready) return LQ_OK;
    if (l->w_scale) {
        float *sc;
        int32_t *zp;
        int64_t n;
        LQ_TRY(lq_qlayer_weight_qparams(l, &sc, &zp, &n, err));
        memcpy(l->w_scale->data, sc, (size_t)n * sizeof(float));
        free(sc), free(zp);
    }
    bool seen = l->aobs_ready && lq_observer_n_qparams(&l->aobs) > 0;
    if (l->a_scale) {
        float s = 1.0f;
        int32_t z = 0;
        if (seen) LQ_TRY(lq_observer_qparams(&l->aobs, &s, &z, err));
        ((float *)l->a_scale->data)[0] = s;
        if (l->a_zp) ((float *)l->a_zp->data)[0] = (float)z;
    }
    if (l->pact_alpha) {
        float lo = 0.0f, hi = 6.0f; /* PACT's paper starts alpha at 10; ReLU6's 6 suits unit-scale inputs */
        if (seen) LQ_TRY(lq_observer_range(&l->aobs, &lo, &hi, err));
        ((float *)l->pact_alpha->data)[0] = hi > 0.0f ? hi : 1.0f;
    }
    l->lsq_ready = true;
    return LQ_OK;
}

void lq_qlayer_free(lq_qlayer *l) {
    if (!l) return;
    if (l->aobs_ready) lq_observer_free(&l->aobs);
    if (l->wobs_ready) lq_observer_free(&l->wobs);
    l->aobs_ready = l->wobs_ready = false;
    lq_qlayer_int_free(&l->q);
}

/* --- forward ----------------------------------------------------------------------------------- */

/* torch's _LearnableFakeQuantize clamps its scale in place (min eps) before every forward, so an
 * optimizer step cannot leave it at or below zero; PACT's alpha gets the same floor. */
static void clamp_learned(lq_tensor *t) {
    if (!t) return;
    float *d = t->data;
    for (int64_t i = 0; i < lq_numel(t); i++)
        if (!(d[i] >= 1.1920929e-07f)) d[i] = 1.1920929e-07f;
}

/* An f32 (n) arena tensor holding v (no gradient). */
static lq_tensor *const_vec(lq_ctx *ctx, const float *v, int64_t n) {
    lq_tensor *t = lq_new(ctx, LQ_DTYPE_F32, 1, &n);
    if (t) memcpy(t->data, v, (size_t)n * sizeof(float));
    return t;
}

static lq_tensor *fake_weight(lq_ctx *ctx, lq_qlayer *l) {
    if (!l->wspec.enabled) return l->weight;
    int64_t w2[2];
    weight_2d(l, w2);
    lq_tensor *w = lq_reshape(ctx, l->weight, 2, w2);
    if (!w) return NULL;
    if (l->w_scale && l->lsq_ready) {
        int32_t qmin, qmax;
        lq_affine_range(l->wspec.bits, true, &qmin, &qmax);
        bool pc = l->wspec.granularity == LQ_GRAN_CHANNEL;
        int64_t per = pc ? w2[1] : w2[0] * w2[1];
        clamp_learned(l->w_scale);
        lq_lsq_params lp = {.qmin = qmin, .qmax = qmax, .per_channel = pc, .axis = 0,
                            .grad_factor = lq_lsq_grad_factor(per, qmax)};
        w = lq_fake_quant_lsq(ctx, w, l->w_scale, NULL, &lp);
    } else {
        float *sc;
        int32_t *zp;
        int64_t n;
        if (lq_qlayer_weight_qparams(l, &sc, &zp, &n, &ctx->err) != LQ_OK) return NULL;
        lq_tensor *st = const_vec(ctx, sc, n), *zt = NULL;
        if (st && !l->wspec.symmetric && (zt = lq_new(ctx, LQ_DTYPE_F32, 1, &n)))
            for (int64_t i = 0; i < n; i++) ((float *)zt->data)[i] = (float)zp[i];
        free(sc), free(zp);
        if (!st || (!l->wspec.symmetric && !zt)) return NULL;
        lq_fq_params fp = {.scheme = weight_scheme(l), .scale = st, .zero_point = zt};
        w = lq_fake_quant(ctx, w, &fp);
    }
    return lq_reshape(ctx, w, l->weight->ndim, l->weight->ne);
}

/* Feeds x to the static activation observer (calibration, or QAT training before the freeze). */
static bool observe_act(lq_ctx *ctx, lq_qlayer *l, lq_tensor *x) {
    if (!l->aobs_ready || l->aobs.frozen) return true;
    lq_tensor *xc = lq_contiguous(ctx, x);
    if (!xc) return false;
    int64_t flat = lq_numel(xc);
    return lq_observer_update(&l->aobs, xc->data, 1, &flat, &ctx->err) == LQ_OK;
}

static lq_tensor *fake_act(lq_ctx *ctx, lq_qlayer *l, lq_tensor *x) {
    if (!l->aspec.enabled) return x;
    const lq_qspec *a = &l->aspec;
    if (l->pact) {
        if (!l->lsq_ready && lq_qlayer_init_learned(l, &ctx->err) != LQ_OK) return NULL;
        clamp_learned(l->pact_alpha);
        return lq_pact(ctx, x, l->pact_alpha, a->bits);
    }
    if (a->granularity == LQ_GRAN_TOKEN) {
        if (l->kind == LQ_QLAYER_LINEAR) return lq_fake_quant_dynamic(ctx, x, a->bits, a->symmetric);
        int64_t s2[2] = {x->ne[0], lq_numel(x) / x->ne[0]}; /* a conv's input: one scale per sample */
        lq_tensor *y = lq_fake_quant_dynamic(ctx, lq_reshape(ctx, lq_contiguous(ctx, x), 2, s2), a->bits, a->symmetric);
        return lq_reshape(ctx, y, x->ndim, x->ne);
    }
    int32_t qmin, qmax;
    lq_affine_range(a->bits, a->symmetric, &qmin, &qmax);
    if (l->a_scale) {
        if (!l->lsq_ready && lq_qlayer_init_learned(l, &ctx->err) != LQ_OK) return NULL;
        clamp_learned(l->a_scale);
        lq_lsq_params lp = {.qmin = qmin, .qmax = qmax, .per_channel = false,
                            .grad_factor = lq_lsq_grad_factor(lq_numel(x) / x->ne[0], qmax)};
        return lq_fake_quant_lsq(ctx, x, l->a_scale, l->a_zp, &lp);
    }
    if (ctx->training && !observe_act(ctx, l, x)) return NULL;
    if (lq_observer_n_qparams(&l->aobs) == 0)
        return LQ_OP_FAIL(ctx, LQ_ERR_STATE, "layer %s: its activation observer has seen no data (calibrate first)",
                          l->name);
    float s;
    int32_t z;
    if (lq_observer_qparams(&l->aobs, &s, &z, &ctx->err) != LQ_OK) return NULL;
    float zf = (float)z;
    lq_fq_params fp = {.scheme = lq_affine_scheme_make(a->bits, a->symmetric, LQ_GRAN_TENSOR, 0, 0),
                       .scale = const_vec(ctx, &s, 1), .zero_point = a->symmetric ? NULL : const_vec(ctx, &zf, 1)};
    return lq_fake_quant(ctx, x, &fp);
}

static lq_tensor *apply(lq_ctx *ctx, const lq_qlayer *l, lq_tensor *x, lq_tensor *w) {
    if (l->kind == LQ_QLAYER_CONV2D) return lq_conv2d(ctx, x, w, l->bias, &l->conv);
    lq_tensor *y = lq_matmul_t(ctx, x, w, false, true);
    return l->bias ? lq_add(ctx, y, l->bias) : y;
}

lq_tensor *lq_qlayer_int_forward(lq_ctx *ctx, lq_qlayer *l, lq_tensor *x); /* models/qlayer_int.c */

lq_tensor *lq_qlayer_forward(lq_ctx *ctx, lq_qlayer *l, lq_tensor *x, lq_qat_mode mode) {
    if (!ctx || lq_ctx_status(ctx) != LQ_OK || !x) return NULL;
    switch (mode) {
    case LQ_QAT_FLOAT: return apply(ctx, l, x, l->weight);
    case LQ_QAT_CALIBRATE:
        if (l->aspec.enabled && !observe_act(ctx, l, x)) return NULL;
        return apply(ctx, l, x, l->weight);
    case LQ_QAT_FAKE: {
        lq_tensor *xq = fake_act(ctx, l, x);
        return apply(ctx, l, xq, fake_weight(ctx, l));
    }
    case LQ_QAT_INT: return lq_qlayer_int_forward(ctx, l, x);
    }
    return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "layer %s: unknown mode %d", l->name, (int)mode);
}
