/* models/llama.c: the Llama forward pass (embedding, RMSNorm, RoPE, GQA attention, SwiGLU) on autograd ops. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "autograd/autograd_impl.h"
#include "models/models_impl.h"

void lq_llama_free(lq_llama_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_owned; i++) lq_tensor_free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    free(m->inv_freq);
    if (m->gguf) lq_gguf_close(m->gguf);
    if (m->st) lq_st_model_close(m->st);
    free(m);
}

lq_status lq_llama_load(const char *path, lq_llama_model **out, lq_err *err) {
    LQ_CHECK(err, path && out, LQ_ERR_ARG, "lq_llama_load needs a path and an output");
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0) return LQ_ERR(err, LQ_ERR_INPUT, "%s: no such file or folder", path);
    lq_llama_model *m = calloc(1, sizeof *m);
    if (!m) return LQ_ERR(err, LQ_ERR_OOM, "out of memory for a model");
    lq_status s;
    if (!S_ISDIR(sb.st_mode) && lq_gguf_sniff(path))
        s = lq_llama_load_gguf(m, path, err);
    else
        s = lq_llama_load_hf(m, path, err);
    if (s == LQ_OK) {
        m->inv_freq = calloc((size_t)(m->cfg.head_dim / 2), sizeof(float));
        s = m->inv_freq ? lq_llama_rope_inv_freq(&m->cfg, m->inv_freq)
                        : LQ_ERR(err, LQ_ERR_OOM, "out of memory for RoPE frequencies");
        if (s != LQ_OK && err && err->status == LQ_OK) LQ_ERR(err, s, "%s: invalid RoPE configuration", path);
    }
    if (s != LQ_OK) {
        lq_llama_free(m);
        return s;
    }
    *out = m;
    return LQ_OK;
}

const lq_llama_config *lq_llama_model_config(const lq_llama_model *m) { return m ? &m->cfg : NULL; }

/* The one entry for every linear layer: x (B, T, in) W^T (+ b). f32 weights take lq_matmul_t,
 * any other dtype with a to_f32 (f16, bf16, GGUF blocks) lq_qmatmul. */
static lq_tensor *linear(lq_ctx *ctx, lq_tensor *x, lq_tensor *w, lq_tensor *b) {
    if (!x) return NULL;
    int64_t B = x->ne[0], T = x->ne[1];
    int64_t s2[2] = {B * T, x->ne[2]};
    lq_tensor *x2 = lq_reshape(ctx, lq_contiguous(ctx, x), 2, s2);
    lq_tensor *y = w->dtype == LQ_DTYPE_F32 ? lq_matmul_t(ctx, x2, w, false, true) : lq_qmatmul(ctx, x2, w);
    if (b) y = lq_add(ctx, y, b);
    int64_t s3[3] = {B, T, w->ne[0]};
    return lq_reshape(ctx, y, 3, s3);
}

static lq_tensor *heads(lq_ctx *ctx, lq_tensor *x, int64_t H, int64_t D) {
    if (!x) return NULL;
    int64_t s[4] = {x->ne[0], x->ne[1], H, D};
    return lq_reshape(ctx, x, 4, s);
}

lq_tensor *lq_llama_forward(lq_ctx *ctx, lq_llama_model *m, lq_tensor *ids, int64_t pos0, lq_kv_cache *kv) {
    if (!ctx || lq_ctx_status(ctx) != LQ_OK) return NULL;
    if (!m || !ids) return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "llama_forward: model and ids are required");
    const lq_llama_config *c = &m->cfg;
    if (ids->dtype != LQ_DTYPE_I32 || ids->ndim != 2 || ids->ne[1] < 1)
        return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "llama_forward: ids must be i32 (B, T) with T >= 1");
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
    const int32_t *idv = ids->data;
    for (int64_t i = 0; i < B * T; i++)
        if (idv[i] < 0 || idv[i] >= c->vocab_size)
            return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "llama_forward: token id %d is outside the vocabulary of %lld",
                              (int)idv[i], (long long)c->vocab_size);

    int64_t Hq = c->num_attention_heads, Hkv = c->num_key_value_heads, D = c->head_dim;
    float eps = (float)c->rms_norm_eps;
    lq_tensor *pos = lq_new(ctx, LQ_DTYPE_I32, 1, &T);
    if (!pos) return NULL;
    for (int64_t t = 0; t < T; t++) ((int32_t *)pos->data)[t] = (int32_t)(pos0 + t);
    lq_rope_params rp = {.layout = LQ_ROPE_HALF, .rot_dim = (int)D, .theta = (float)c->rope_theta,
                         .inv_freq = m->inv_freq};
    lq_attn_params ap = {.scale = 0, .causal = true, .doc = NULL};

    lq_tensor *h = lq_embedding(ctx, m->embed, ids);
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        const lq_llama_layer *L = &m->layers[l];
        lq_tensor *x = lq_rmsnorm(ctx, h, L->attn_norm, eps);
        lq_tensor *q = lq_rope(ctx, heads(ctx, linear(ctx, x, L->wq, L->bq), Hq, D), pos, &rp);
        lq_tensor *k = lq_rope(ctx, heads(ctx, linear(ctx, x, L->wk, L->bk), Hkv, D), pos, &rp);
        lq_tensor *v = heads(ctx, linear(ctx, x, L->wv, L->bv), Hkv, D);
        lq_tensor *a = kv ? lq_kv_attend(ctx, kv, l, q, k, v) : lq_attention(ctx, q, k, v, &ap);
        int64_t s3[3] = {B, T, Hq * D};
        a = a ? lq_reshape(ctx, lq_contiguous(ctx, a), 3, s3) : NULL;
        h = lq_add(ctx, h, linear(ctx, a, L->wo, L->bo));
        x = lq_rmsnorm(ctx, h, L->ffn_norm, eps);
        lq_tensor *g = lq_swiglu(ctx, linear(ctx, x, L->wgate, L->bgate), linear(ctx, x, L->wup, L->bup));
        h = lq_add(ctx, h, linear(ctx, g, L->wdown, L->bdown));
        if (!h) return NULL;
    }
    h = lq_rmsnorm(ctx, h, m->out_norm, eps);
    lq_tensor *logits = linear(ctx, h, m->lm_head, NULL);
    if (logits && kv) lq_kv_cache_advance(kv, T);
    return logits;
}
