/* models/llama.c: the Llama forward pass (embedding, RMSNorm, RoPE, GQA attention, SwiGLU; every projection with its
 * LoRA adapter when one is attached) on autograd ops, one decoder layer shared by inference and training. */
#include <stdlib.h>
#include <string.h>

#include "autograd/autograd_impl.h"
#include "models/models_impl.h"
#include "models/qat.h"

void lq_llama_free(lq_llama_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_owned; i++) {
        if (m->owned[i]) lq_qstate_free(m->owned[i]->qs); /* NF4 / FP4 weights made at load own their state */
        lq_tensor_free(m->owned[i]);
    }
    free(m->owned);
    free(m->layers);
    free(m->inv_freq);
    if (m->gguf) lq_gguf_close(m->gguf);
    if (m->st) lq_st_model_close(m->st);
    free(m);
}

lq_status lq_llama_load(const char *path, lq_llama_model **out, lq_err *err) {
    return lq_llama_load_ex(path, NULL, out, err);
}

const lq_llama_config *lq_llama_model_config(const lq_llama_model *m) { return m ? &m->cfg : NULL; }

/* Every projection: x (N, in) W^T (+ b) (+ the adapter's s B A dropout(x)) -> (N, out). lq_lora_linear
 * takes f32 weights through lq_matmul_t and any other dtype (f16, bf16, GGUF blocks, NF4) through
 * lq_qmatmul; a NULL adapter is the plain linear. */
static lq_tensor *proj(lq_ctx *ctx, lq_tensor *x2, lq_tensor *w, lq_tensor *b, const lq_lora *lora) {
    if (!x2) return NULL;
    return lq_lora_linear(ctx, x2, w, b, lora);
}

/* Projection t of layer L: its quantization-aware layer when one is attached (models/llama_qat.c),
 * else the (adapted) linear. */
static lq_tensor *lproj(lq_ctx *ctx, const lq_llama_model *m, const lq_llama_layer *L, lq_lora_target t, lq_tensor *x2) {
    if (!x2) return NULL;
    if (L->ql[t]) return lq_qlayer_forward(ctx, L->ql[t], x2, (lq_qat_mode)m->qat_mode);
    lq_llama_layer *ml = (lq_llama_layer *)L;
    return lq_lora_linear(ctx, x2, *lq_llama_weight_slot(ml, t), *lq_llama_bias_slot(ml, t), L->lora[t]);
}

/* (N, H * D) -> (B, T, H, D), a view. */
static lq_tensor *heads(lq_ctx *ctx, lq_tensor *x, int64_t B, int64_t T, int64_t H, int64_t D) {
    if (!x) return NULL;
    int64_t s[4] = {B, T, H, D};
    return lq_reshape(ctx, x, 4, s);
}

/* (B, T, C) -> (B * T, C): a view of the contiguous activations the ops here produce. */
static lq_tensor *rows(lq_ctx *ctx, lq_tensor *x) {
    if (!x) return NULL;
    int64_t s[2] = {x->ne[0] * x->ne[1], x->ne[2]};
    return lq_reshape(ctx, lq_contiguous(ctx, x), 2, s);
}

static lq_tensor *unrows(lq_ctx *ctx, lq_tensor *x, int64_t B, int64_t T) {
    if (!x) return NULL;
    int64_t s[3] = {B, T, x->ne[1]};
    return lq_reshape(ctx, x, 3, s);
}

lq_tensor *lq_llama_layer_forward(lq_ctx *ctx, const lq_llama_model *m, int64_t l, lq_tensor *h, lq_tensor *pos,
                                  lq_tensor *doc, lq_kv_cache *kv) {
    if (!h) return NULL;
    const lq_llama_config *c = &m->cfg;
    const lq_llama_layer *L = &m->layers[l];
    int64_t B = h->ne[0], T = h->ne[1];
    int64_t Hq = c->num_attention_heads, Hkv = c->num_key_value_heads, D = c->head_dim;
    float eps = (float)c->rms_norm_eps;
    lq_rope_params rp = {.layout = LQ_ROPE_HALF, .rot_dim = (int)D, .theta = (float)c->rope_theta,
                         .inv_freq = m->inv_freq};
    lq_attn_params ap = {.scale = 0, .causal = true, .doc = doc};

    lq_tensor *x = rows(ctx, lq_rmsnorm(ctx, h, L->attn_norm, eps)); /* (B*T, C) */
    lq_tensor *q = lq_rope(ctx, heads(ctx, lproj(ctx, m, L, LQ_LORA_Q, x), B, T, Hq, D), pos, &rp);
    lq_tensor *k = lq_rope(ctx, heads(ctx, lproj(ctx, m, L, LQ_LORA_K, x), B, T, Hkv, D), pos, &rp);
    lq_tensor *v = heads(ctx, lproj(ctx, m, L, LQ_LORA_V, x), B, T, Hkv, D);
    lq_tensor *a = kv ? lq_kv_attend(ctx, kv, l, q, k, v) : lq_attention(ctx, q, k, v, &ap); /* (B, T, Hq, D) */
    if (!a) return NULL;
    int64_t s2[2] = {B * T, Hq * D};
    a = lq_reshape(ctx, lq_contiguous(ctx, a), 2, s2);
    h = lq_add(ctx, h, unrows(ctx, lproj(ctx, m, L, LQ_LORA_O, a), B, T));
    x = rows(ctx, lq_rmsnorm(ctx, h, L->ffn_norm, eps));
    lq_tensor *g = lq_swiglu(ctx, lproj(ctx, m, L, LQ_LORA_GATE, x),
                             lproj(ctx, m, L, LQ_LORA_UP, x)); /* (B*T, F) */
    return lq_add(ctx, h, unrows(ctx, lproj(ctx, m, L, LQ_LORA_DOWN, g), B, T));
}

lq_tensor *lq_llama_check_ids(lq_ctx *ctx, const lq_llama_model *m, lq_tensor *ids, const char *who) {
    if (!ctx || lq_ctx_status(ctx) != LQ_OK) return NULL;
    if (!m || !ids) return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "%s: model and ids are required", who);
    if (ids->dtype != LQ_DTYPE_I32 || ids->ndim != 2 || ids->ne[0] < 1 || ids->ne[1] < 1 || !lq_is_contiguous(ids))
        return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "%s: ids must be contiguous i32 (B, T) with B, T >= 1", who);
    const int32_t *idv = ids->data;
    int64_t n = ids->ne[0] * ids->ne[1], V = m->cfg.vocab_size;
    for (int64_t i = 0; i < n; i++)
        if (idv[i] < 0 || idv[i] >= V)
            return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "%s: token id %d is outside the vocabulary of %lld", who, (int)idv[i],
                              (long long)V);
    return ids;
}

lq_tensor *lq_llama_head(lq_ctx *ctx, const lq_llama_model *m, lq_tensor *h) {
    if (!h) return NULL;
    int64_t B = h->ne[0], T = h->ne[1];
    lq_tensor *x = rows(ctx, lq_rmsnorm(ctx, h, m->out_norm, (float)m->cfg.rms_norm_eps));
    return unrows(ctx, proj(ctx, x, m->lm_head, NULL, NULL), B, T);
}

lq_tensor *lq_llama_forward(lq_ctx *ctx, lq_llama_model *m, lq_tensor *ids, int64_t pos0, lq_kv_cache *kv) {
    if (!lq_llama_check_ids(ctx, m, ids, "llama_forward")) return NULL;
    const lq_llama_config *c = &m->cfg;
    int64_t B = ids->ne[0], T = ids->ne[1];
    if (kv) {
        if (B != 1) return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "llama_forward: a KV cache takes batch 1, got %lld", (long long)B);
        if (pos0 != kv->len)
            return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "llama_forward: pos0 %lld is not the cache length %lld", (long long)pos0,
                              (long long)kv->len);
        if (kv->n_layers != c->num_hidden_layers || kv->n_kv_heads != c->num_key_value_heads ||
            kv->head_dim != c->head_dim)
            return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "llama_forward: the KV cache was made for another model");
        if (kv->len + T > kv->max_tokens)
            return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "llama_forward: %lld + %lld tokens overflow the KV cache of %lld",
                              (long long)kv->len, (long long)T, (long long)kv->max_tokens);
    } else if (pos0 != 0) {
        return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "llama_forward: without a KV cache pos0 must be 0, got %lld", (long long)pos0);
    }
    if (c->sliding_window > 0 && pos0 + T > c->sliding_window)
        return LQ_OP_FAIL(ctx, LQ_ERR_UNSUPPORTED, "llama_forward: %lld tokens exceed the sliding window %lld",
                          (long long)(pos0 + T), (long long)c->sliding_window);

    lq_tensor *pos = lq_new(ctx, LQ_DTYPE_I32, 1, &T);
    if (!pos) return NULL;
    for (int64_t t = 0; t < T; t++) ((int32_t *)pos->data)[t] = (int32_t)(pos0 + t);
    lq_tensor *h = lq_embedding(ctx, m->embed, ids);
    for (int64_t l = 0; l < c->num_hidden_layers && h; l++) h = lq_llama_layer_forward(ctx, m, l, h, pos, NULL, kv);
    lq_tensor *logits = lq_llama_head(ctx, m, h);
    if (logits && kv) lq_kv_cache_advance(kv, T);
    return logits;
}
