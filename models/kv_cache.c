/* models/kv_cache.c: the key / value cache (f32 or int8 per token and head) for incremental decoding. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/autograd_impl.h"
#include "models/models_impl.h"

lq_status lq_kv_cache_init(lq_kv_cache **out, const lq_llama_model *m, int64_t max_tokens, lq_err *err) {
    return lq_kv_cache_init_dtype(out, m, max_tokens, LQ_KV_F32, err);
}

bool lq_kv_dtype_parse(const char *s, lq_kv_dtype *out) {
    if (s && !strcmp(s, "f32")) *out = LQ_KV_F32;
    else if (s && !strcmp(s, "int8")) *out = LQ_KV_INT8;
    else return false;
    return true;
}

int64_t lq_kv_cache_bytes_per_token(const lq_kv_cache *kv) {
    if (!kv) return 0;
    int64_t per_head = kv->dtype == LQ_KV_INT8 ? kv->head_dim + (int64_t)sizeof(float) : kv->head_dim * (int64_t)sizeof(float);
    return 2 * kv->n_layers * kv->n_kv_heads * per_head;
}

lq_status lq_kv_cache_init_dtype(lq_kv_cache **out, const lq_llama_model *m, int64_t max_tokens, lq_kv_dtype dtype,
                                 lq_err *err) {
    LQ_CHECK(err, out && m, LQ_ERR_ARG, "lq_kv_cache_init needs an output and a model");
    *out = NULL;
    LQ_CHECK(err, dtype == LQ_KV_F32 || dtype == LQ_KV_INT8, LQ_ERR_ARG, "unknown KV cache dtype %d", (int)dtype);
    LQ_CHECK(err, max_tokens >= 1 && max_tokens <= ((int64_t)1 << 24), LQ_ERR_ARG, "max_tokens %lld out of range",
             (long long)max_tokens);
    const lq_llama_config *c = &m->cfg;
    lq_kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv) return LQ_ERR(err, LQ_ERR_OOM, "out of memory for a KV cache");
    kv->max_tokens = max_tokens;
    kv->n_layers = c->num_hidden_layers;
    kv->n_kv_heads = c->num_key_value_heads;
    kv->head_dim = c->head_dim;
    kv->dtype = dtype;
    size_t nv = (size_t)kv->n_layers * (size_t)max_tokens * (size_t)kv->n_kv_heads;
    size_t n = nv * (size_t)kv->head_dim;
    bool ok;
    if (dtype == LQ_KV_INT8) {
        kv->kq = malloc(n);
        kv->vq = malloc(n);
        kv->ks = malloc(nv * sizeof(float));
        kv->vs = malloc(nv * sizeof(float));
        ok = kv->kq && kv->vq && kv->ks && kv->vs;
    } else {
        kv->k = malloc(n * sizeof(float));
        kv->v = malloc(n * sizeof(float));
        ok = kv->k && kv->v;
    }
    if (!ok) {
        lq_kv_cache_free(kv);
        return LQ_ERR(err, LQ_ERR_OOM, "out of memory for a KV cache of %zu floats (x2)", n);
    }
    *out = kv;
    return LQ_OK;
}

void lq_kv_cache_free(lq_kv_cache *kv) {
    if (!kv) return;
    free(kv->k);
    free(kv->v);
    free(kv->kq);
    free(kv->vq);
    free(kv->ks);
    free(kv->vs);
    free(kv);
}

void lq_kv_cache_reset(lq_kv_cache *kv) {
    if (kv) kv->len = 0;
}

int64_t lq_kv_cache_len(const lq_kv_cache *kv) { return kv ? kv->len : 0; }

void lq_kv_cache_advance(lq_kv_cache *kv, int64_t n) { kv->len += n; }

/* Copies x (1, T, H, D), any strides, into dst (T, H, D) contiguous. */
static void copy_heads(float *dst, const lq_tensor *x) {
    for (int64_t t = 0; t < x->ne[1]; t++)
        for (int64_t h = 0; h < x->ne[2]; h++)
            for (int64_t d = 0; d < x->ne[3]; d++)
                *dst++ = *lq_f32_at(x, 0, t, h, d);
}

/* As copy_heads, quantizing each (t, h) vector of D values to int8 with one scale. */
static void quant_heads(int8_t *dst, float *scale, const lq_tensor *x) {
    int64_t D = x->ne[3];
    for (int64_t t = 0; t < x->ne[1]; t++)
        for (int64_t h = 0; h < x->ne[2]; h++) {
            float amax = 0;
            for (int64_t d = 0; d < D; d++) amax = fmaxf(amax, fabsf(*lq_f32_at(x, 0, t, h, d)));
            float s = amax / 127.0f;
            *scale++ = s;
            for (int64_t d = 0; d < D; d++) {
                float q = s > 0 ? nearbyintf(*lq_f32_at(x, 0, t, h, d) / s) : 0.0f; /* ties to even */
                *dst++ = (int8_t)fminf(127.0f, fmaxf(-127.0f, q));
            }
        }
}

lq_tensor *lq_kv_attend(lq_ctx *ctx, lq_kv_cache *kv, int64_t layer, lq_tensor *q, lq_tensor *k, lq_tensor *v) {
    if (!q || !k || !v || lq_ctx_status(ctx) != LQ_OK) return NULL;
    int64_t T = q->ne[1], Hq = q->ne[2], D = q->ne[3], Hkv = kv->n_kv_heads;
    if (q->ndim != 4 || q->ne[0] != 1 || k->ne[1] != T || k->ne[2] != Hkv || k->ne[3] != D || v->ne[1] != T ||
        v->ne[2] != Hkv || v->ne[3] != D || D != kv->head_dim || Hq % Hkv != 0)
        return LQ_OP_FAIL(ctx, LQ_ERR_SHAPE, "kv_attend: q / k / v do not fit the cache");
    size_t row = (size_t)Hkv * (size_t)D, lay = (size_t)layer * (size_t)kv->max_tokens;
    bool i8 = kv->dtype == LQ_KV_INT8;
    float *kc = NULL, *vc = NULL, *ksc = NULL, *vsc = NULL;
    int8_t *kqc = NULL, *vqc = NULL;
    if (i8) {
        kqc = kv->kq + lay * row, vqc = kv->vq + lay * row;
        ksc = kv->ks + lay * (size_t)Hkv, vsc = kv->vs + lay * (size_t)Hkv;
        quant_heads(kqc + (size_t)kv->len * row, ksc + (size_t)kv->len * (size_t)Hkv, k);
        quant_heads(vqc + (size_t)kv->len * row, vsc + (size_t)kv->len * (size_t)Hkv, v);
    } else {
        kc = kv->k + lay * row, vc = kv->v + lay * row;
        copy_heads(kc + (size_t)kv->len * row, k);
        copy_heads(vc + (size_t)kv->len * row, v);
    }
    q = lq_contiguous(ctx, q);
    if (!q) return NULL;
    const float *qd = q->data;
    int64_t ne[4] = {1, T, Hq, D};
    lq_tensor *out = lq_new(ctx, LQ_DTYPE_F32, 4, ne);
    float *w = lq_ctx_alloc(ctx, (size_t)(kv->len + T) * sizeof(float));
    if (!out || !w) return NULL;
    float scale = 1.0f / sqrtf((float)D);
    int64_t group = Hq / Hkv;
    for (int64_t t = 0; t < T; t++) {
        int64_t n_keys = kv->len + t + 1; /* causal: the prefix and new tokens up to t */
        for (int64_t h = 0; h < Hq; h++) {
            int64_t hk = h / group;
            const float *qr = qd + (size_t)(t * Hq + h) * (size_t)D;
            float mx = -INFINITY;
            for (int64_t j = 0; j < n_keys; j++) {
                float s = 0;
                if (i8) { /* q . (codes * scale) = (q . codes) * scale */
                    const int8_t *kr = kqc + (size_t)j * row + (size_t)hk * (size_t)D;
                    for (int64_t d = 0; d < D; d++) s += qr[d] * (float)kr[d];
                    s *= ksc[(size_t)j * (size_t)Hkv + (size_t)hk];
                } else {
                    const float *kr = kc + (size_t)j * row + (size_t)hk * (size_t)D;
                    for (int64_t d = 0; d < D; d++) s += qr[d] * kr[d];
                }
                w[j] = s * scale;
                if (w[j] > mx) mx = w[j];
            }
            double sum = 0;
            for (int64_t j = 0; j < n_keys; j++) {
                w[j] = expf(w[j] - mx);
                sum += w[j];
            }
            float *o = (float *)out->data + (size_t)(t * Hq + h) * (size_t)D;
            for (int64_t d = 0; d < D; d++) o[d] = 0;
            for (int64_t j = 0; j < n_keys; j++) {
                float p = (float)(w[j] / sum);
                if (i8) {
                    const int8_t *vr = vqc + (size_t)j * row + (size_t)hk * (size_t)D;
                    p *= vsc[(size_t)j * (size_t)Hkv + (size_t)hk];
                    for (int64_t d = 0; d < D; d++) o[d] += p * (float)vr[d];
                } else {
                    const float *vr = vc + (size_t)j * row + (size_t)hk * (size_t)D;
                    for (int64_t d = 0; d < D; d++) o[d] += p * vr[d];
                }
            }
        }
    }
    return out;
}
