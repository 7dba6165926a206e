/* models/llama_device.c: a Llama model's weights moved to the CUDA device, and random models of any
 * shape (benchmarks of large shapes without a checkpoint). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "models/models_impl.h"

/* --- to the device --------------------------------------------------------------------------- */

/* Moves one weight; *t may be NULL (an absent bias). A weight the model owns owns its quant state
 * too (lq_llama_free frees it): lq_tensor_to_device frees the host state of a tensor that owned
 * its data and leaves it otherwise, so only that case is left to do here. */
static lq_status move(lq_llama_model *m, lq_tensor *t, lq_err *err) {
    if (!t || t->device == LQ_DEVICE_CUDA) return LQ_OK;
    lq_qstate *host_qs = t->qs;
    bool freed_by_move = (t->flags & LQ_TENSOR_OWNS_DATA) != 0;
    LQ_TRY(lq_tensor_to_device(t, err));
    if (host_qs && t->qs != host_qs && !freed_by_move) {
        bool owned = false;
        for (int i = 0; i < m->n_owned && !owned; i++) owned = m->owned[i] == t;
        if (owned) lq_qstate_free(host_qs);
    }
    return LQ_OK;
}

lq_status lq_llama_to_device(lq_llama_model *m, lq_err *err) {
    LQ_CHECK(err, m != NULL, LQ_ERR_ARG, "lq_llama_to_device: NULL model");
    /* every tensor the model made (weights mapped from the file are copied: the device copy is
     * then owned), then every slot, in case one holds a tensor the model did not make */
    for (int i = 0; i < m->n_owned; i++) LQ_TRY(move(m, m->owned[i], err));
    LQ_TRY(move(m, m->embed, err));
    LQ_TRY(move(m, m->embed_file, err));
    LQ_TRY(move(m, m->out_norm, err));
    LQ_TRY(move(m, m->lm_head, err)); /* the embedding's file tensor when tied: already moved */
    for (int64_t l = 0; l < m->cfg.num_hidden_layers; l++) {
        lq_llama_layer *L = &m->layers[l];
        LQ_TRY(move(m, L->attn_norm, err));
        LQ_TRY(move(m, L->ffn_norm, err));
        for (int t = 0; t < LQ_LORA_N_TARGETS; t++) {
            LQ_TRY(move(m, *lq_llama_weight_slot(L, (lq_lora_target)t), err));
            LQ_TRY(move(m, *lq_llama_bias_slot(L, (lq_lora_target)t), err));
        }
    }
    /* m->inv_freq stays on the host: rope takes it as a host array and its kernel uploads it */
    return LQ_OK;
}

/* --- random models ----------------------------------------------------------------------------- */

/* 0.02 N(0, 1) into d[2k] and d[2k + 1] (the second only when k2 is true): Box-Muller on one
 * counter-based hash of (seed, stream, k), in float with 24-bit uniforms (plenty for benchmark
 * weights, and ~3x faster than double), so a value depends on (seed, stream, index) only, not on
 * the thread that computes it. */
static void normal_pair(float *d, uint64_t seed, uint64_t stream, int64_t k, bool k2) {
    uint64_t h = lq_hash3(seed, stream, (uint64_t)k);
    float u1 = ((float)(h >> 40) + 1.0f) * (1.0f / 16777216.0f); /* (0, 1] */
    float u2 = (float)(h & 0xFFFFFFu) * (1.0f / 16777216.0f);     /* [0, 1) */
    float r = 0.02f * sqrtf(-2.0f * logf(u1)), a = 6.2831853f * u2;
    d[2 * k] = r * cosf(a);
    if (k2) d[2 * k + 1] = r * sinf(a);
}

typedef enum fill_kind { FILL_NORMAL = 0, FILL_ONES, FILL_ZEROS } fill_kind;

/* A new f32 weight of the model (tracked, frozen) filled as kind says; stream numbers the tensor. */
static lq_status make(lq_llama_model *m, lq_tensor **slot, const char *name, int ndim, const int64_t *shape,
                      fill_kind kind, uint64_t seed, uint64_t stream, lq_err *err) {
    lq_tensor *t = lq_tensor_alloc(LQ_DTYPE_F32, ndim, shape, name, err);
    if (!t) return err && err->status ? err->status : LQ_ERR_OOM;
    t->flags &= ~(uint32_t)LQ_TENSOR_REQUIRES_GRAD;
    float *d = t->data;
    int64_t n = lq_numel(t);
    if (kind == FILL_NORMAL) {
        int64_t pairs = (n + 1) / 2;
#pragma omp parallel for schedule(static) if (n > 65536)
        for (int64_t k = 0; k < pairs; k++) normal_pair(d, seed, stream, k, 2 * k + 1 < n);
    } else if (kind == FILL_ONES) {
        for (int64_t i = 0; i < n; i++) d[i] = 1.0f;
    } /* zeros: lq_tensor_alloc's calloc */
    *slot = NULL;
    return lq_llama_replace_weight(m, slot, t, err); /* a NULL slot: the tensor is tracked */
}

static const char *const proj_names[LQ_LORA_N_TARGETS] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                          "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                                          "mlp.down_proj"};

static lq_status build(lq_llama_model *m, uint64_t seed, lq_err *err) {
    const lq_llama_config *c = &m->cfg;
    int64_t C = c->hidden_size, D = c->head_dim, Hq = c->num_attention_heads, Hkv = c->num_key_value_heads;
    int64_t F = c->intermediate_size, V = c->vocab_size;
    uint64_t stream = 0;
    int64_t es[2] = {V, C};
    LQ_TRY(make(m, &m->embed, "model.embed_tokens.weight", 2, es, FILL_NORMAL, seed, stream++, err));
    m->embed_file = m->embed;
    LQ_TRY(make(m, &m->out_norm, "model.norm.weight", 1, &C, FILL_ONES, seed, stream++, err));
    if (c->tie_word_embeddings) m->lm_head = m->embed;
    else LQ_TRY(make(m, &m->lm_head, "lm_head.weight", 2, es, FILL_NORMAL, seed, stream++, err));
    m->layers = calloc((size_t)c->num_hidden_layers, sizeof *m->layers);
    if (!m->layers) return LQ_ERR(err, LQ_ERR_OOM, "out of memory for %lld layers", (long long)c->num_hidden_layers);
    /* (out, in) of each projection, in lq_lora_target order */
    int64_t outs[LQ_LORA_N_TARGETS] = {Hq * D, Hkv * D, Hkv * D, C, F, F, C};
    int64_t ins[LQ_LORA_N_TARGETS] = {C, C, C, Hq * D, C, C, F};
    bool bias[LQ_LORA_N_TARGETS] = {c->qkv_bias, c->qkv_bias, c->qkv_bias, c->o_bias, c->mlp_bias, c->mlp_bias,
                                    c->mlp_bias};
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        lq_llama_layer *L = &m->layers[l];
        char name[160];
        snprintf(name, sizeof name, "model.layers.%lld.input_layernorm.weight", (long long)l);
        LQ_TRY(make(m, &L->attn_norm, name, 1, &C, FILL_ONES, seed, stream++, err));
        snprintf(name, sizeof name, "model.layers.%lld.post_attention_layernorm.weight", (long long)l);
        LQ_TRY(make(m, &L->ffn_norm, name, 1, &C, FILL_ONES, seed, stream++, err));
        for (int t = 0; t < LQ_LORA_N_TARGETS; t++) {
            int64_t ws[2] = {outs[t], ins[t]};
            snprintf(name, sizeof name, "model.layers.%lld.%s.weight", (long long)l, proj_names[t]);
            LQ_TRY(make(m, lq_llama_weight_slot(L, (lq_lora_target)t), name, 2, ws, FILL_NORMAL, seed, stream++, err));
            if (!bias[t]) continue;
            snprintf(name, sizeof name, "model.layers.%lld.%s.bias", (long long)l, proj_names[t]);
            LQ_TRY(make(m, lq_llama_bias_slot(L, (lq_lora_target)t), name, 1, &outs[t], FILL_ZEROS, seed, stream++, err));
        }
    }
    return LQ_OK;
}

lq_status lq_llama_init_random(const lq_llama_config *cfg, const lq_llama_load_opts *opts, uint64_t seed,
                               lq_llama_model **out, lq_err *err) {
    LQ_CHECK(err, cfg && out, LQ_ERR_ARG, "lq_llama_init_random needs a config and an output");
    *out = NULL;
    lq_llama_load_opts keep = {.quant = LQ_BASE_KEEP};
    const lq_llama_load_opts *o = opts ? opts : &keep;
    LQ_CHECK(err, o->quant == LQ_BASE_KEEP || o->quant == LQ_BASE_NF4 || o->quant == LQ_BASE_FP4, LQ_ERR_ARG,
             "lq_llama_init_random: unknown base quantization %d", (int)o->quant);
    lq_llama_config c = *cfg;
    if (c.num_key_value_heads == 0) c.num_key_value_heads = c.num_attention_heads;
    if (c.head_dim == 0 && c.num_attention_heads > 0) c.head_dim = c.hidden_size / c.num_attention_heads;
    const int64_t lim = (int64_t)1 << 24;
    LQ_CHECK(err,
             c.hidden_size > 0 && c.hidden_size < lim && c.intermediate_size > 0 && c.intermediate_size < lim &&
                 c.num_hidden_layers > 0 && c.num_hidden_layers < 4096 && c.num_attention_heads > 0 &&
                 c.num_key_value_heads > 0 && c.num_attention_heads % c.num_key_value_heads == 0 && c.head_dim > 0 &&
                 c.head_dim % 2 == 0 && c.head_dim < 65536 && c.vocab_size > 0 && c.vocab_size < lim,
             LQ_ERR_ARG,
             "lq_llama_init_random: config hidden %lld, intermediate %lld, layers %lld, heads %lld / %lld, head_dim %lld, "
             "vocab %lld is not a model shape",
             (long long)c.hidden_size, (long long)c.intermediate_size, (long long)c.num_hidden_layers,
             (long long)c.num_attention_heads, (long long)c.num_key_value_heads, (long long)c.head_dim,
             (long long)c.vocab_size);
    if (!(c.rms_norm_eps > 0)) c.rms_norm_eps = 1e-5;
    if (!(c.rope_theta > 0)) c.rope_theta = 10000.0;
    if (!(c.rope_factor > 0)) c.rope_factor = 1.0;
    if (c.max_position_embeddings <= 0) c.max_position_embeddings = 2048;
    lq_llama_model *m = calloc(1, sizeof *m);
    if (!m) return LQ_ERR(err, LQ_ERR_OOM, "out of memory for a model");
    m->cfg = c;
    lq_status s = build(m, seed, err);
    if (s == LQ_OK) {
        m->inv_freq = calloc((size_t)(c.head_dim / 2), sizeof(float));
        s = m->inv_freq ? lq_llama_rope_inv_freq(&m->cfg, m->inv_freq)
                        : LQ_ERR(err, LQ_ERR_OOM, "out of memory for RoPE frequencies");
    }
    if (s == LQ_OK && o->quant != LQ_BASE_KEEP) {
        int nt = 1;
#ifdef _OPENMP
        nt = omp_get_max_threads();
#endif
        s = lq_llama_quantize_base(m, "random model", o, nt, err);
    }
    if (s != LQ_OK) {
        lq_llama_free(m);
        return s;
    }
    *out = m;
    return LQ_OK;
}
