/* lora/lora.h: LoRA adapters on frozen (quantized) linear layers, their parameter block, and
 * PEFT adapter files (adapter_config.json + adapter_model.safetensors). */
#ifndef LQ_LORA_H
#define LQ_LORA_H

#include "autograd/autograd.h"

/* The Llama projections an adapter can target, in PEFT's module names. */
typedef enum lq_lora_target {
    LQ_LORA_Q = 0, /* self_attn.q_proj */
    LQ_LORA_K,     /* self_attn.k_proj */
    LQ_LORA_V,     /* self_attn.v_proj */
    LQ_LORA_O,     /* self_attn.o_proj */
    LQ_LORA_GATE,  /* mlp.gate_proj */
    LQ_LORA_UP,    /* mlp.up_proj */
    LQ_LORA_DOWN,  /* mlp.down_proj */
    LQ_LORA_N_TARGETS
} lq_lora_target;
#define LQ_LORA_ALL_LINEAR ((1u << LQ_LORA_N_TARGETS) - 1u)

/* "q_proj" ... "down_proj" */
const char *lq_lora_target_name(lq_lora_target t);
/* "self_attn" or "mlp": the parent module in Hugging Face's Llama. */
const char *lq_lora_target_parent(lq_lora_target t);
/* "q_proj" (or "self_attn.q_proj", or a full module path ending in one) -> target; -1 if none. */
int lq_lora_target_parse(const char *name);

typedef struct lq_lora_cfg {
    int r;            /* rank, >= 1 */
    float alpha;      /* lora_alpha, > 0 */
    float dropout;    /* on the adapter's input only, in [0, 1) */
    bool rslora;      /* scaling alpha / sqrt(r) instead of alpha / r */
    uint32_t targets; /* bitmask of 1u << lq_lora_target; LQ_LORA_ALL_LINEAR = every projection */
} lq_lora_cfg;

/* alpha / r, or alpha / sqrt(r) with rslora (PEFT's scaling). */
float lq_lora_scaling(const lq_lora_cfg *c);
/* Checks r >= 1, alpha > 0 and finite, dropout in [0, 1), targets non-empty. */
lq_status lq_lora_cfg_check(const lq_lora_cfg *c, lq_err *err);

/* One adapted linear layer: W (out, in) frozen; A (r, in) and B (out, r) trainable f32 parameters
 * (views into the set's block). */
typedef struct lq_lora {
    char module[LQ_NAME_MAX]; /* Hugging Face module path, e.g. "model.layers.3.self_attn.q_proj" */
    int64_t in, out;
    lq_tensor *A, *B;
    float scaling;
    float dropout;
} lq_lora;

/* y = x W^T (+ bias) + scaling * (dropout(x) A^T) B^T, for x (N, in) f32 -> (N, out).
 * W (out, in) is frozen, of any dtype with a to_f32 (f32 through lq_matmul_t, others through
 * lq_qmatmul with the shared dequant kernels); bias (out) or NULL. lora NULL = the plain linear;
 * with an adapter (and W not requiring a gradient) it is one fused op, lq_lora_linear_fused.
 * Dropout (training mode only) is drawn from the context seed, as lq_dropout. */
lq_tensor *lq_lora_linear(lq_ctx *ctx, lq_tensor *x, lq_tensor *w, lq_tensor *bias, const lq_lora *lora);

/* Every adapter of a model, with A and B in one lq_params block (so AdamW is one loop). */
typedef struct lq_lora_set {
    lq_lora_cfg cfg;
    lq_params *params;
    lq_lora *mods; /* n of them, in the order added */
    int n, cap;
    bool finalized;
    char base_model[256]; /* base_model_name_or_path written to adapter_config.json ("" = null) */
} lq_lora_set;

lq_status lq_lora_set_init(lq_lora_set **out, const lq_lora_cfg *cfg, lq_err *err);
void lq_lora_set_free(lq_lora_set *s);
/* Declares the adapter of a module (in / out features); parameters named
 * "<module>.lora_A.weight" / "<module>.lora_B.weight". Before finalize only; a duplicate module is
 * LQ_ERR_ARG. Returns the new entry (valid until the next add) or NULL. */
lq_lora *lq_lora_set_add(lq_lora_set *s, const char *module, int64_t in, int64_t out, lq_err *err);
/* Allocates the block; A gets PEFT's init, kaiming_uniform_(a = sqrt(5)) = U(-1/sqrt(in),
 * 1/sqrt(in)), drawn from an lq_rng seeded with seed, modules in the order added, A row-major;
 * B zeros. */
lq_status lq_lora_set_finalize(lq_lora_set *s, uint64_t seed, lq_err *err);
/* The entry of a module path, or NULL. */
lq_lora *lq_lora_set_find(const lq_lora_set *s, const char *module);

/* Writes a PEFT adapter into dir (created if missing): adapter_config.json (peft_type "LORA",
 * task_type "CAUSAL_LM", r, lora_alpha, lora_dropout, use_rslora, target_modules (the target
 * names, sorted), bias "none", base_model_name_or_path, ...) and adapter_model.safetensors with
 * PEFT's names "base_model.model.<module>.lora_A.weight" (r, in) and ".lora_B.weight" (out, r),
 * f32. Each file is written atomically. */
lq_status lq_peft_save(const lq_lora_set *s, const char *dir, lq_err *err);
/* Reads a PEFT LoRA adapter folder (as PEFT writes it; f32 / f16 / bf16 tensors) into a new,
 * finalized set holding the file's values. Anything it cannot apply exactly (peft_type other than
 * LORA, DoRA, bias other than "none", rank / alpha patterns, a tensor with a wrong shape or a name
 * outside the targets) is LQ_ERR_INPUT / LQ_ERR_UNSUPPORTED naming the file and key. */
lq_status lq_peft_load(lq_lora_set **out, const char *dir, lq_err *err);

#endif
