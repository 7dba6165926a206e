/* models/models_impl.h: private layout of the Llama model and its KV cache, shared by models/. */
#ifndef LQ_MODELS_IMPL_H
#define LQ_MODELS_IMPL_H

#include "lora/lora.h"
#include "models/models.h"

/* One decoder layer's weights. Linear weights (out, in) keep their file dtype (f32 goes through
 * lq_matmul_t, anything else through lq_qmatmul); norms and biases are f32. q / k rows are in
 * Hugging Face order (GGUF's interleave permutation undone at load), so RoPE is LQ_ROPE_HALF. */
typedef struct lq_llama_layer {
    lq_tensor *attn_norm, *ffn_norm;
    lq_tensor *wq, *wk, *wv, *wo, *wgate, *wup, *wdown;
    lq_tensor *bq, *bk, *bv, *bo, *bgate, *bup, *bdown; /* NULL when the config has none */
    const lq_lora *lora[LQ_LORA_N_TARGETS]; /* attached adapters (indexed by lq_lora_target), NULL = none */
    struct lq_qlayer *ql[LQ_LORA_N_TARGETS]; /* quantization-aware layers (models/llama_qat.c), NULL = none */
} lq_llama_layer;

struct lq_llama_model {
    lq_llama_config cfg;
    lq_llama_layer *layers;
    lq_tensor *embed;      /* (V, C) f32, dequantized at load when the file holds another dtype */
    lq_tensor *embed_file; /* the embedding as the file holds it (== embed when f32); for export */
    lq_tensor *out_norm; /* (C) f32 */
    lq_tensor *lm_head;  /* (V, C) in file dtype; the embedding's file tensor when tied */
    float *inv_freq;     /* head_dim / 2 */
    lq_gguf_file *gguf;  /* kept open: weights may point into its mapping */
    lq_st_model *st;
    const lq_lora_set *lora; /* attached adapter set (not owned), NULL = none */
    int qat_mode;            /* lq_qat_mode of the attached quantization-aware layers */
    lq_tensor **owned; /* every tensor struct the model made (freed with lq_tensor_free) */
    int n_owned, cap_owned;
};

/* The layer's weight slot of projection t (and its bias slot), models/llama_lora.c. */
lq_tensor **lq_llama_weight_slot(lq_llama_layer *L, lq_lora_target t);
lq_tensor **lq_llama_bias_slot(lq_llama_layer *L, lq_lora_target t);

struct lq_kv_cache {
    int64_t max_tokens, len, n_layers, n_kv_heads, head_dim;
    lq_kv_dtype dtype;
    float *k, *v;         /* f32: per layer (max_tokens, Hkv, D), layer after layer */
    int8_t *kq, *vq;      /* int8: the same layout, codes */
    float *ks, *vs;       /* int8: per layer (max_tokens, Hkv) scales */
};

/* Attention of q (1, T, Hq, D) at positions len .. len + T - 1 over the cached prefix and the new
 * keys / values k, v (1, T, Hkv, D), which are written into the cache for `layer` (the cache
 * length itself advances in lq_kv_cache_advance, after every layer). No gradient: generation only.
 * NULL with the error in ctx. */
lq_tensor *lq_kv_attend(lq_ctx *ctx, lq_kv_cache *kv, int64_t layer, lq_tensor *q, lq_tensor *k, lq_tensor *v);
void lq_kv_cache_advance(lq_kv_cache *kv, int64_t n);

/* One decoder layer (llama.c), shared by lq_llama_forward and the training forward: h (B, T, C) ->
 * (B, T, C); pos (T) or (B, T) i32 RoPE positions; doc (B, T) i32 or NULL (lq_attention's document
 * mask); kv NULL or the generation cache. Every projection goes through lq_lora_linear with the
 * layer's attached adapter. NULL with the error in ctx. */
lq_tensor *lq_llama_layer_forward(lq_ctx *ctx, const lq_llama_model *m, int64_t l, lq_tensor *h, lq_tensor *pos,
                                  lq_tensor *doc, lq_kv_cache *kv);
/* Final norm and lm_head: h (B, T, C) -> logits (B, T, V). */
lq_tensor *lq_llama_head(lq_ctx *ctx, const lq_llama_model *m, lq_tensor *h);
/* Checks ids are contiguous i32 (B, T) within the vocabulary; ids, or NULL with the error in ctx. */
lq_tensor *lq_llama_check_ids(lq_ctx *ctx, const lq_llama_model *m, lq_tensor *ids, const char *who);
/* Replaces the weight in *slot by t (an owned tensor), releasing the old one (and its quant state)
 * when the model owns it (llama_load.c). On failure t is freed. */
lq_status lq_llama_replace_weight(lq_llama_model *m, lq_tensor **slot, lq_tensor *t, lq_err *err);

/* Requantizes every decoder-layer projection (q k v o gate up down) to NF4 / FP4 as o asks (the
 * load's QLoRA base, byte-identical to bitsandbytes' quantize_4bit), n_threads weights at once
 * (1 = one at a time: the f32 scratch is one weight); what names the model in messages. */
lq_status lq_llama_quantize_base(lq_llama_model *m, const char *what, const lq_llama_load_opts *o, int n_threads,
                                 lq_err *err);

/* Loaders (llama_load.c): fill m (zeroed, cfg unset) from a GGUF file or HF folder. */
lq_status lq_llama_load_gguf(lq_llama_model *m, const char *path, lq_err *err);
lq_status lq_llama_load_hf(lq_llama_model *m, const char *path, lq_err *err);

/* Export (llama_save.c): a model tensor of any dtype dequantized into a new f32 buffer (numel
 * floats, malloc'd); NULL with err set when it cannot be read. */
float *lq_llama_weight_f32(const lq_tensor *t, lq_err *err);

#endif
