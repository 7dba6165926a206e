/* models/models.h: models built from autograd, quant and io: the Llama family (HF folders and
 * GGUF files), with a KV cache for generation. */
#ifndef LQ_MODELS_H
#define LQ_MODELS_H

#include "autograd/autograd.h"
#include "io/io.h"

typedef struct lq_llama_model lq_llama_model;

/* Loads a model from a GGUF file (weights kept in their GGUF block types; llama.cpp's q/k row
 * permutation undone) or a Hugging Face folder (config.json + model.safetensors or a sharded
 * index; f32 / f16 / bf16 weights). Frozen: no weight gets a gradient.
 * Details: linear weights stay in the file's dtype (the read-only mapping itself when aligned,
 * else a copy; q / k of a GGUF file are copies with their rows back in HF order, so RoPE is
 * LQ_ROPE_HALF for both formats); an f32 linear goes through lq_matmul_t, any other dtype through
 * lq_qmatmul. An embedding table in another dtype is dequantized to f32 at load (V * C * 4 bytes;
 * a tied output projection still uses the file's tensor). Norms and biases become f32. GGUF:
 * general.architecture "llama" only (llama.* keys; vocab from token_embd; no "output" = tied;
 * rope scaling none / linear; a rope_freqs tensor is LQ_ERR_UNSUPPORTED). A missing tensor, a
 * wrong shape or an unknown arch is LQ_ERR_INPUT naming the file and the tensor or key. */
lq_status lq_llama_load(const char *path, lq_llama_model **out, lq_err *err);
void lq_llama_free(lq_llama_model *m);
const lq_llama_config *lq_llama_model_config(const lq_llama_model *m);

/* Writes m as a GGUF file llama.cpp reads (architecture "llama": its metadata keys and tensor
 * names, weights in their loaded dtypes, q / k rows re-permuted to llama.cpp's interleaved
 * order), atomically. Weights only: no tokenizer metadata. Biases and scaled RoPE are
 * LQ_ERR_UNSUPPORTED. */
lq_status lq_llama_save_gguf(const lq_llama_model *m, const char *path, lq_err *err);

/* Key / value cache for incremental decoding: up to max_tokens positions per sequence, batch 1.
 * K (after RoPE) and V, (max_tokens, Hkv, D) per layer, stored as f32 or as int8: one f32 scale
 * per (token, head) vector of D values, symmetric (scale = absmax / 127, code = x / scale rounded
 * half to even, in [-127, 127]; an all-zero vector has scale 0), dequantized on read (code *
 * scale). A token's own K / V are quantized before it attends to them, so chunked and
 * token-by-token decoding see the same values. */
typedef enum lq_kv_dtype { LQ_KV_F32 = 0, LQ_KV_INT8 } lq_kv_dtype;
typedef struct lq_kv_cache lq_kv_cache;
lq_status lq_kv_cache_init(lq_kv_cache **out, const lq_llama_model *m, int64_t max_tokens, lq_err *err);
lq_status lq_kv_cache_init_dtype(lq_kv_cache **out, const lq_llama_model *m, int64_t max_tokens, lq_kv_dtype dtype,
                                 lq_err *err);
/* Bytes the cache holds per token (K and V over every layer, scales included). */
int64_t lq_kv_cache_bytes_per_token(const lq_kv_cache *kv);
/* "f32" / "int8" -> dtype; false for anything else. */
bool lq_kv_dtype_parse(const char *s, lq_kv_dtype *out);
void lq_kv_cache_free(lq_kv_cache *kv);
void lq_kv_cache_reset(lq_kv_cache *kv);
int64_t lq_kv_cache_len(const lq_kv_cache *kv); /* tokens already in the cache */

/* Logits (B, T, V) for token ids (B, T) i32 at positions pos0 .. pos0 + T - 1. With kv (B must be
 * 1), the keys / values of these tokens are appended to the cache and attention covers the cached
 * prefix too (pos0 must equal lq_kv_cache_len(kv)); without kv the sequence stands alone (causal,
 * pos0 = 0). NULL with the error in ctx on failure. The cached path computes attention outside the
 * tape (no gradient: generation only). Ids outside the vocabulary are LQ_ERR_ARG; a config with a
 * sliding window refuses sequences longer than it (LQ_ERR_UNSUPPORTED). */
lq_tensor *lq_llama_forward(lq_ctx *ctx, lq_llama_model *m, lq_tensor *ids, int64_t pos0, lq_kv_cache *kv);

/* ---------------------------------------------------------------------------------------------
 * Fine-tuning (models/llama_train.c, models/llama_lora.c, models/llama_save.c)
 * ------------------------------------------------------------------------------------------- */

struct lq_lora_set;
struct lq_lora_cfg;

/* How the base's linear weights are held after loading. */
typedef enum lq_base_quant {
    LQ_BASE_KEEP = 0, /* the file's own dtype (f32 / f16 / bf16 / GGUF blocks): base_quant: native */
    LQ_BASE_NF4,      /* dequantize to f32, then NF4 as bitsandbytes quantize_4bit (load_in_4bit) */
    LQ_BASE_FP4,
} lq_base_quant;

typedef struct lq_llama_load_opts {
    lq_base_quant quant;
    int64_t block_size; /* NF4 / FP4 absmax block, 0 = 64 */
    bool double_quant;  /* bitsandbytes' nested absmax quantization (bnb_4bit_use_double_quant) */
} lq_llama_load_opts;

/* As lq_llama_load; with NF4 / FP4 every linear weight of the decoder layers (q k v o gate up
 * down) is requantized (byte-identical to bitsandbytes' quantize_4bit of the f32 weight); the
 * embedding, norms and lm_head stay as lq_llama_load keeps them (transformers does not quantize
 * lm_head either). opts NULL = LQ_BASE_KEEP. */
lq_status lq_llama_load_ex(const char *path, const lq_llama_load_opts *opts, lq_llama_model **out, lq_err *err);

/* Moves every weight of the model (embedding, norms, projections with their quant state, lm_head)
 * to the CUDA device, for a context made with device = LQ_DEVICE_CUDA; adapters are parameters
 * and move with lq_params_to_device. The model must not be used with a CPU context afterwards. */
lq_status lq_llama_to_device(lq_llama_model *m, lq_err *err);

/* A model of cfg's shape with random f32 weights (normal, std 0.02; norms 1; biases 0 where cfg
 * has them; tied or not as cfg says), deterministic in seed whatever the thread count; then the
 * decoder projections quantized as opts asks, exactly as lq_llama_load_ex quantizes a loaded
 * base (opts NULL = f32). For benchmarks and tests of large shapes without a checkpoint. */
lq_status lq_llama_init_random(const lq_llama_config *cfg, const lq_llama_load_opts *opts, uint64_t seed,
                               lq_llama_model **out, lq_err *err);

/* Creates the adapters cfg->targets asks for on every decoder layer (module paths
 * "model.layers.<i>.self_attn.q_proj" ...), finalized with seed, and attaches them: the forward
 * passes then add them. The model does not own the set (free it after the model). */
lq_status lq_llama_lora_create(lq_llama_model *m, const struct lq_lora_cfg *cfg, uint64_t seed,
                               struct lq_lora_set **out, lq_err *err);
/* Attaches an existing set (e.g. from lq_peft_load): every module must name a projection of this
 * model with matching in / out features (LQ_ERR_INPUT naming the module otherwise). NULL detaches. */
lq_status lq_llama_lora_attach(lq_llama_model *m, const struct lq_lora_set *s, lq_err *err);
/* Folds the attached adapters into the base: for each adapted W, W' = deq(W) + scaling * B A in
 * float32, stored as an f32 weight the model owns (the quantized one is released); then detaches. */
lq_status lq_llama_lora_merge(lq_llama_model *m, lq_err *err);

/* Options of the training forward. */
typedef struct lq_llama_fwd_opts {
    lq_tensor *positions; /* (B, T) i32 RoPE positions (packed rows restart per document); NULL = 0..T-1 */
    lq_tensor *doc;       /* (B, T) i32 document ids: attention stays within a document; NULL = none */
    bool checkpoint;      /* gradient checkpointing: each decoder layer's activations are dropped after
                           * forward and recomputed in backward */
    int64_t chunk_rows;   /* lq_llama_loss: rows of logits per chunk; 0 = as many as fit 8M floats */
} lq_llama_fwd_opts;

/* Logits (B, T, V) for ids (B, T) with gradients flowing into the attached adapters. */
lq_tensor *lq_llama_forward_train(lq_ctx *ctx, lq_llama_model *m, lq_tensor *ids, const lq_llama_fwd_opts *o);
/* The summed cross-entropy of predicting labels (B, T) i32 (LQ_IGNORE_INDEX = not counted) from
 * ids: a scalar; *n_counted (optional) gets the number of counted labels. The lm_head and the
 * cross-entropy may be computed in row chunks so the full (B, T, V) logits need not exist at once;
 * the value and gradients equal lq_cross_entropy(logits, labels, SUM) up to summation order. */
lq_tensor *lq_llama_loss(lq_ctx *ctx, lq_llama_model *m, lq_tensor *ids, lq_tensor *labels,
                         const lq_llama_fwd_opts *o, int64_t *n_counted);

/* Bytes the base weights occupy as loaded (every tensor the model holds, quant states included). */
int64_t lq_llama_weight_bytes(const lq_llama_model *m);

/* Output dtypes of lq_llama_save_* (merged exports). */
typedef enum lq_export_dtype {
    LQ_EXPORT_F32 = 0, LQ_EXPORT_F16, LQ_EXPORT_BF16, LQ_EXPORT_Q8_0, LQ_EXPORT_Q4_0, LQ_EXPORT_NF4
} lq_export_dtype;
/* "f32" ... "nf4" -> dtype; false if unknown. */
bool lq_export_dtype_parse(const char *s, lq_export_dtype *out);

/* Per-tensor report of a requantizing export (optional): called once per converted weight. */
typedef void (*lq_export_report_fn)(void *user, const char *name, double rmse, double max_abs, double sqnr_db);

/* Writes m as a Hugging Face folder transformers loads: config.json (LlamaForCausalLM,
 * torch_dtype) and model.safetensors with HF tensor names, every weight dequantized to f32 and
 * converted to dtype (F32 / F16 / BF16; NF4 = transformers' bitsandbytes 4-bit layout with
 * quant_state tensors and a quantization_config in config.json; Q8_0 / Q4_0 are
 * LQ_ERR_UNSUPPORTED here). Files are written atomically into dir (created if missing). */
lq_status lq_llama_save_hf(const lq_llama_model *m, const char *dir, lq_export_dtype dtype,
                           lq_export_report_fn report, void *user, lq_err *err);
/* As lq_llama_save_gguf, with every 2-D weight converted to dtype (F32 / F16 / BF16 / Q8_0 /
 * Q4_0; NF4 is LQ_ERR_UNSUPPORTED: GGUF has no NF4), norms f32 (models/llama_export.c). Metadata:
 * a GGUF base's general.* and tokenizer.* keys are carried over (general.file_type set for dtype);
 * from a Hugging Face base, tokenizer.* is converted from the tokenizer.json beside its weights
 * when that is a byte-level BPE llama.cpp names (pre-tokenizer gpt-2 or smollm), else left out. */
lq_status lq_llama_save_gguf_as(const lq_llama_model *m, const char *path, lq_export_dtype dtype,
                                lq_export_report_fn report, void *user, lq_err *err);

#endif
