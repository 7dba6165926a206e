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

#endif
