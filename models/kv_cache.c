/* models/kv_cache.c: the f32 key / value cache for incremental decoding and attention over it. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/autograd_impl.h"
#include "models/models_impl.h"

lq_status lq_kv_cache_init(lq_kv_cache **out, const lq_llama_model *m, int64_t max_tokens, lq_err *err) {
    LQ_CHECK(err, out && m, LQ_ERR_ARG, "lq_kv_cache_init needs an output and a model");
    *out = NULL;
    LQ_CHECK(err, max_tokens >= 1 && max_tokens <= ((int64_t)1 << 24), LQ_ERR_ARG, "max_tokens %lld out of range",
             (long long)max_tokens);
    const lq_llama_config *c = &m->cfg;
    lq_kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv) return LQ_ERR(err, LQ_ERR_OOM, "out of memory for a KV cache");
    kv->max_tokens = max_tokens;
    kv->n_layers = c->num_hidden_layers;
    kv->n_kv_heads = c->num_key_value_heads;
    kv->head_dim = c->head_dim;
    size_t n = (size_t)kv->n_layers * (size_t)max_tokens * (size_t)kv->n_kv_heads * (size_t)kv->head_dim;
    kv->k = malloc(n * sizeof(float));
    kv->v = malloc(n * sizeof(float));
    if (!kv->k || !kv->v) {
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

lq_tensor *lq_kv_attend(lq_ctx *ctx, lq_kv_cache *kv, int64_t layer, lq_tensor *q, lq_tensor *k, lq_tensor *v) {
    if (!q || !k || !v || lq_ctx_status(ctx) != LQ_OK) return NULL;
    int64_t T = q->ne[1], Hq = q->ne[2], D = q->ne[3], Hkv = kv->n_kv_heads;
    if (q->ndim != 4 || q->ne[0] != 1 || k->ne[1] != T || k->ne[2] != Hkv || k->ne[3] != D || v->ne[1] != T ||
        v->ne[2] != Hkv || v->ne[3] != D || D != kv->head_dim || Hq % Hkv != 0)
        return LQ_OP_FAIL(ctx, LQ_ERR_SHAPE, "kv_attend: q / k / v do not fit the cache");
    size_t row = (size_t)Hkv * (size_t)D;
    float *kc = kv->k + (size_t)layer * (size_t)kv->max_tokens * row;
    float *vc = kv->v + (size_t)layer * (size_t)kv->max_tokens * row;
    copy_heads(kc + (size_t)kv->len * row, k);
    copy_heads(vc + (size_t)kv->len * row, v);
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
                const float *kr = kc + (size_t)j * row + (size_t)hk * (size_t)D;
                float s = 0;
                for (int64_t d = 0; d < D; d++) s += qr[d] * kr[d];
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
                const float *vr = vc + (size_t)j * row + (size_t)hk * (size_t)D;
                float p = (float)(w[j] / sum);
                for (int64_t d = 0; d < D; d++) o[d] += p * vr[d];
            }
        }
    }
    return out;
}
