/* train/train.h: optimizers, gradient clipping and the loquat command line. */
#ifndef LQ_TRAIN_H
#define LQ_TRAIN_H

#include "autograd/autograd.h"
#include "core/rng.h"

#define LQ_VERSION "0.1.0-dev"

/* ---------------------------------------------------------------------------------------------
 * Optimizers. Each works on the whole contiguous parameter block of an lq_params (data and grad,
 * lq_params_numel() floats, alignment padding included): one elementwise loop, so the result does
 * not depend on the thread count. Weight decay applies to the prefix [0, lq_params_decay_numel()),
 * i.e. to every parameter not flagged LQ_TENSOR_NO_DECAY. Padding stays zero.
 * The arithmetic follows PyTorch's single-tensor (foreach=False) implementations step by step.
 * ------------------------------------------------------------------------------------------- */

/* torch.optim.AdamW: decoupled weight decay, bias-corrected moments. */
typedef struct lq_adamw_cfg {
    float lr;           /* default learning rate (lq_adamw_step takes the per-step one) */
    float beta1, beta2; /* in [0, 1) */
    float eps;          /* > 0 */
    float weight_decay; /* >= 0 */
    int n_threads;      /* 0 = 1 */
} lq_adamw_cfg;

typedef struct lq_adamw {
    lq_adamw_cfg cfg;
    int64_t numel; /* length of m and v (the parameter block it was made for) */
    float *m;      /* first moment (exp_avg) */
    float *v;      /* second moment (exp_avg_sq) */
    int64_t t;     /* steps taken; the bias corrections use it (checkpoints save m, v, t) */
    bool on_device; /* m and v are CUDA device memory: they follow the block (lq_params_device) */
} lq_adamw;

/* Allocates zeroed moments for p's block (p must be finalized) and validates cfg. */
lq_status lq_adamw_init(lq_adamw *opt, const lq_params *p, const lq_adamw_cfg *cfg, lq_err *err);
/* One update with learning rate lr (schedules drive it); t += 1. Reads the grads, leaves them.
 * A block on the CUDA device (lq_params_to_device) is updated there by one kernel, with the same
 * arithmetic; the moments move to wherever the block is before the update (made on the device
 * when init saw a device block). Device work waits for everything queued on the device first and
 * is finished when the call returns. */
lq_status lq_adamw_step(lq_adamw *opt, lq_params *p, float lr, lq_err *err);
void lq_adamw_free(lq_adamw *opt);
/* Copies the moments (numel floats each) into / from host buffers, wherever they live: for
 * checkpoints of a run on the device. */
lq_status lq_adamw_state_get(const lq_adamw *opt, float *m, float *v, lq_err *err);
lq_status lq_adamw_state_set(lq_adamw *opt, const float *m, const float *v, lq_err *err);

/* torch.optim.SGD: L2 weight decay added to the gradient, optional (Nesterov) momentum. */
typedef struct lq_sgd_cfg {
    float lr;
    float momentum;     /* >= 0; 0 = plain SGD (no buffer) */
    float dampening;    /* in [0, 1]; must be 0 with nesterov */
    float weight_decay; /* >= 0 */
    bool nesterov;      /* needs momentum > 0 */
    int n_threads;      /* 0 = 1 */
} lq_sgd_cfg;

typedef struct lq_sgd {
    lq_sgd_cfg cfg;
    int64_t numel;
    float *buf; /* momentum buffer (NULL when momentum == 0) */
    int64_t t;  /* steps taken; the buffer starts as the first step's gradient */
    bool ready; /* set by lq_sgd_init */
    bool on_device; /* buf is CUDA device memory (as lq_adamw's moments) */
} lq_sgd;

lq_status lq_sgd_init(lq_sgd *opt, const lq_params *p, const lq_sgd_cfg *cfg, lq_err *err);
lq_status lq_sgd_step(lq_sgd *opt, lq_params *p, float lr, lq_err *err);
void lq_sgd_free(lq_sgd *opt);

/* Total L2 norm of every gradient in p (accumulated in double in a fixed order, so it is the same
 * on any thread count); if max_norm / (norm + 1e-6) < 1 the grads are scaled by it, as
 * torch.nn.utils.clip_grad_norm_ does. Returns the norm before clipping. A non-finite norm is
 * returned as is with the grads untouched (the caller reports it). max_norm <= 0 or NaN turns
 * clipping off (the norm is still returned). A block on the CUDA device is reduced there (in
 * double, the same chunks; the order within a chunk differs) and scaled there; a device failure
 * returns NaN (the grads untouched). */
double lq_clip_grad_norm(lq_params *p, float max_norm, int n_threads);

/* ---------------------------------------------------------------------------------------------
 * Command line
 * ------------------------------------------------------------------------------------------- */

/* Runs the CLI; returns the process exit code (0 ok, 1 runtime failure, 2 bad usage/input). */
int lq_cli_main(int argc, char **argv);

/* `loquat quantize` / `loquat dequantize` (train/cmd_quantize.c, train/cmd_dequantize.c). Each
 * prints its report on stdout and any error on stderr, and returns the exit code; on failure no
 * output file is left behind. */
typedef struct lq_quantize_opts {
    const char *format;  /* "nf4" | "fp4" | "int8" | "int4" */
    long block_size;     /* nf4 / fp4: elements per absmax, 32..4096, a power of two; 0 = 64 */
    bool double_quant;   /* nf4 / fp4: quantize the absmax values too (bitsandbytes' nested state) */
    long group_size;     /* int8 / int4: elements per scale along each row; 0 = one per row */
    bool asymmetric;     /* int8 / int4: with a zero point (default symmetric) */
    const char *skip;    /* comma-separated globs of names kept in float; NULL = the default list */
    bool json;           /* also print one JSON object as the last line */
} lq_quantize_opts;
int lq_cmd_quantize(const char *in, const char *out, const lq_quantize_opts *opts);
/* dtype: "f32" | "f16" | "bf16", or NULL for the dtype each tensor's quant state records. */
int lq_cmd_dequantize(const char *in, const char *out, const char *dtype, bool json);
/* `loquat inspect` (train/cmd_inspect.c): prints a GGUF or safetensors file's metadata and tensor
 * table (one JSON object with json); exit 0, 2 for a missing or malformed file, 1 for HDF5. */
int lq_cmd_inspect(const char *path, bool json);

/* ---------------------------------------------------------------------------------------------
 * Sampling (train/sample.c): next-token choice from a logits row, in Hugging Face's order:
 * logits / temperature, keep the top_k largest (ties: the lower id first), softmax over those,
 * keep the smallest prefix (by probability, descending) whose mass reaches top_p (at least one
 * token), renormalize, draw with a seeded lq_rng (53-bit uniform). temperature <= 0 is greedy:
 * the argmax, the lowest id on ties. NaN logits count as -inf. The same seed and logits give the
 * same ids on every machine (double arithmetic, fixed order).
 * ------------------------------------------------------------------------------------------- */

typedef struct lq_sampler_cfg {
    float temperature; /* <= 0: greedy */
    int top_k;         /* 0 = all */
    float top_p;       /* (0, 1]; 1 = all */
    uint64_t seed;
} lq_sampler_cfg;

typedef struct lq_sampler {
    lq_sampler_cfg cfg;
    int64_t n_vocab;
    lq_rng rng;
    struct lq_sample_cand *cand; /* [n_vocab] scratch (train/sample.c) */
} lq_sampler;

/* Validates cfg (top_k >= 0, top_p in (0, 1], temperature finite) and allocates the scratch. */
lq_status lq_sampler_init(lq_sampler *s, const lq_sampler_cfg *cfg, int64_t n_vocab, lq_err *err);
void lq_sampler_free(lq_sampler *s);
/* The distribution the sampler draws from for these logits: probs[n_vocab] (zero outside the
 * kept set; for greedy, 1 at the argmax). LQ_ERR_ARG when every logit is -inf or NaN. */
lq_status lq_sampler_probs(lq_sampler *s, const float *logits, double *probs, lq_err *err);
/* Draws the next id (advances the rng unless greedy). */
lq_status lq_sampler_sample(lq_sampler *s, const float *logits, int32_t *id, lq_err *err);

/* ---------------------------------------------------------------------------------------------
 * `loquat generate` / `loquat perplexity` (train/cmd_generate.c, train/cmd_perplexity.c): they
 * print results on stdout, progress and errors on stderr, and return the exit code (2 for bad
 * flags or input files, 1 for a runtime failure).
 * ------------------------------------------------------------------------------------------- */

typedef struct lq_tokenizer lq_tokenizer;
struct lq_llama_config;

typedef struct lq_generate_opts {
    const char *model;       /* GGUF file or Hugging Face folder */
    const char *prompt;      /* NULL: start from BOS alone */
    bool chat;               /* wrap the prompt in the model's chat template as a user message */
    long max_tokens;         /* new tokens; 0 = 128 */
    const char *temperature; /* the flag texts, validated here; NULL = default (greedy: 0) */
    const char *top_p;       /* default 1 */
    long top_k;              /* 0 = off */
    const char *seed;        /* default 0 */
    const char *kv_cache;    /* "f32" (default, NULL) or "int8" */
    const char *adapter;     /* PEFT adapter folder applied on top of the model, or NULL */
} lq_generate_opts;
int lq_cmd_generate(const lq_generate_opts *o);

typedef struct lq_perplexity_opts {
    const char *model, *data;
    long ctx; /* tokens per window; 0 = 512 */
    bool json;
    const char *kv_cache; /* NULL: one forward per window; "f32" / "int8": incremental decoding through that cache */
    const char *adapter;  /* PEFT adapter folder applied on top of the model, or NULL */
    const char *dump_logits; /* safetensors file for the first window's "ids" (1, T) i32 and "logits" (1, T, V) f32 */
} lq_perplexity_opts;
int lq_cmd_perplexity(const lq_perplexity_opts *o);

/* A model's tokenizer and the special ids generation needs: from the GGUF metadata, or the
 * tokenizer.json (and tokenizer_config.json's chat_template) beside a Hugging Face model. */
typedef struct lq_lm_tok {
    lq_tokenizer *tok;
    int32_t bos;         /* -1: none */
    bool add_bos;        /* encode(add_special) starts with bos (llama.cpp's add_bos) */
    int32_t stop[8];     /* end-of-generation ids */
    int n_stop;
    char *chat_template; /* malloc'd, or NULL */
} lq_lm_tok;
lq_status lq_lm_tok_load(const char *model_path, const struct lq_llama_config *cfg, lq_lm_tok *out, lq_err *err);

/* Loads the PEFT adapter folder dir and attaches it to m (loaded from the base the adapter was
 * trained on: every module must name one of its projections with the same shape). A folder that
 * is missing or does not fit is LQ_ERR_INPUT (exit 2) naming it. Free *out after the model. */
struct lq_llama_model;
struct lq_lora_set;
lq_status lq_lm_attach_adapter(struct lq_llama_model *m, const char *dir, struct lq_lora_set **out, lq_err *err);
void lq_lm_tok_free(lq_lm_tok *t);

/* ---------------------------------------------------------------------------------------------
 * Fine-tuning commands. Each returns the exit code (0 ok, 2 bad flags / config / input, 1 runtime
 * failure); `sets` are --set key=value overrides of the config.
 * ------------------------------------------------------------------------------------------- */

/* `loquat config CONFIG [--set k=v]... [--json]` (train/cmd_config.c): validates and prints the
 * resolved config (YAML; with json one JSON object). */
int lq_cmd_config(const char *config, const char *const *sets, int n_sets, bool json);

/* `loquat mem CONFIG [--set k=v]... [--json]` (train/cmd_mem.c): the memory estimate of a run. */
int lq_cmd_mem(const char *config, const char *const *sets, int n_sets, bool json);

/* `loquat eval CONFIG [--set k=v]... [--adapter DIR] [--json]` (train/cmd_train.c): validation
 * loss and perplexity of the config's base model (with the adapter if given) on its validation
 * split. */
int lq_cmd_eval(const char *config, const char *const *sets, int n_sets, const char *adapter, bool json);

/* `loquat merge` (train/cmd_merge.c). */
typedef struct lq_merge_opts {
    const char *model;   /* base model: GGUF file or Hugging Face folder */
    const char *adapter; /* PEFT adapter folder */
    const char *out;     /* output folder (safetensors) or .gguf file */
    const char *format;  /* "safetensors" | "gguf"; NULL = from out's extension */
    const char *dtype;   /* "f32" | "f16" | "bf16" | "q8_0" | "q4_0" | "nf4"; NULL = f32 */
    bool json;
} lq_merge_opts;
int lq_cmd_merge(const lq_merge_opts *o);

#endif
