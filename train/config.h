/* train/config.h: the fine-tuning config (YAML, axolotl's key names), its schema, validation and
 * the resolved form `loquat config` prints and checkpoints store. */
#ifndef LQ_TRAIN_CONFIG_H
#define LQ_TRAIN_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/status.h"
#include "datasets/datasets.h"
#include "quant/quant.h"

#define LQ_CFG_MAX_DATASETS 16

typedef enum lq_lr_sched { LQ_SCHED_CONSTANT = 0, LQ_SCHED_LINEAR, LQ_SCHED_COSINE } lq_lr_sched;
typedef enum lq_nan_policy { LQ_NAN_STOP = 0, LQ_NAN_SKIP } lq_nan_policy;

typedef struct lq_dataset_cfg {
    char *path;             /* file or folder */
    lq_data_format type;    /* text | completion (= jsonl "text") | alpaca | chat */
} lq_dataset_cfg;

/* Every key of a fine-tuning config, resolved (defaults filled in). Path values expand a leading
 * "~" and ${VAR} / ${VAR:-default} (so a config can say ${LOQUAT_CACHE:-~/.cache/loquat}/...);
 * relative paths are relative to the current directory, as axolotl's. Strings are malloc'd;
 * lq_train_config_free releases them. */
typedef struct lq_train_config {
    char *source; /* the config file it came from ("" for none) */

    /* model and base quantization */
    char *base_model;            /* GGUF file or Hugging Face folder */
    bool load_in_4bit;           /* quantize the base's linear weights at load (default true) */
    lq_dtype bnb_4bit_quant_type;/* LQ_DTYPE_NF4 (default) or LQ_DTYPE_FP4 */
    bool bnb_4bit_use_double_quant; /* default true */
    int64_t quant_block_size;    /* default 64 */
    bool base_quant_native;      /* base_quant: native (keep a GGUF model's own blocks; then
                                  * load_in_4bit must be false); base_quant: bnb (default) */

    /* adapter */
    char *adapter;               /* "lora" (the only one) */
    int lora_r;                  /* default 8 */
    double lora_alpha;           /* default 16 */
    double lora_dropout;         /* default 0.05 */
    uint32_t lora_targets;       /* bitmask of 1u << lq_lora_target (lora/lora.h); default q,k,v,o */
    bool use_rslora;             /* default false */
    char *lora_model_dir;        /* NULL; a PEFT adapter folder to start from (axolotl's key) */

    /* data */
    lq_dataset_cfg datasets[LQ_CFG_MAX_DATASETS];
    int n_datasets;
    /* test_datasets (axolotl's key): a held-out validation set, entries as datasets. When given,
     * its documents (all entries concatenated in config order, not shuffled) are the eval docs
     * instead of a split of the training documents, and val_set_size must be 0. */
    lq_dataset_cfg test_datasets[LQ_CFG_MAX_DATASETS];
    int n_test_datasets;
    double val_set_size;         /* < 1: fraction of documents; >= 1: a count (an integer); default 0 */
    int64_t sequence_len;        /* default 512 */
    bool sample_packing;         /* default true */
    char *dataset_prepared_path; /* token cache folder; NULL = <output_dir>/cache */

    /* batches and length */
    int64_t micro_batch_size;    /* default 1 */
    int64_t gradient_accumulation_steps; /* default 1 */
    int64_t num_epochs;          /* default 1; used when max_steps is 0 */
    int64_t max_steps;           /* optimizer steps; 0 = from num_epochs */

    /* optimizer and schedule */
    double learning_rate;        /* default 2e-4 */
    lq_lr_sched lr_scheduler;    /* default cosine */
    int64_t warmup_steps;        /* default 0; if both are given, warmup_steps wins */
    double warmup_ratio;         /* default 0 */
    char *optimizer;             /* "adamw" (aliases adamw_torch, adamw_torch_fused accepted) */
    double adam_beta1, adam_beta2, adam_epsilon; /* 0.9, 0.999, 1e-8 */
    double weight_decay;         /* default 0 */
    double max_grad_norm;        /* default 1.0; 0 = no clipping */
    bool gradient_checkpointing; /* default false */
    uint64_t seed;               /* default 42 */
    lq_nan_policy nan_policy;    /* on_nan: stop (default) | skip */

    /* output */
    char *output_dir;            /* required */
    int64_t save_steps;          /* default 0 = only at the end */
    int64_t save_total_limit;    /* default 0 = keep all */
    int64_t eval_steps;          /* default 0 = only at the end (when there is a validation split) */
    int64_t logging_steps;       /* default 1 */
    char *resume_from_checkpoint;/* NULL; a checkpoint file or an output_dir */

    /* machine */
    char *device;                /* "cpu" (default) | "cuda" */
    int cuda_math;               /* lq_cuda_math (autograd/autograd.h) of a cuda run's matrix products:
                                  * tf32 (default) | bf16 | fp32, always with fp32 accumulation */
    int threads;                 /* 0 = all cores */
} lq_train_config;

/* Fills defaults (strings NULL; a parsed config has adapter "lora", optimizer "adamw" and device
 * "cpu" filled in). */
void lq_train_config_defaults(lq_train_config *c);
/* Reads a YAML config file, applies the overrides ("key=value", value parsed as a YAML scalar, flow
 * sequence or flow mapping, e.g. lora_target_modules=[q_proj,v_proj]; an empty value is null = the
 * default; dotted keys datasets.0.path allowed, index = length appends an entry),
 * validates and resolves. Errors (LQ_ERR_INPUT) read "FILE:LINE: key 'k': what is wrong (allowed:
 * ...)" and for an unknown key add "did you mean 'x'?" (closest by edit distance); an override's
 * errors name "--set k=v" instead of a line. */
lq_status lq_train_config_load(const char *path, const char *const *sets, int n_sets, lq_train_config *out,
                               lq_err *err);
/* As load, from YAML text in memory; name is used in messages (tests, checkpoints). */
lq_status lq_train_config_parse(const char *yaml, size_t len, const char *name, const char *const *sets,
                                int n_sets, lq_train_config *out, lq_err *err);
/* Writes the resolved config as YAML (every key, one per line, in schema order) that
 * lq_train_config_parse reads back to an equal config. */
lq_status lq_train_config_write(FILE *f, const lq_train_config *c);
/* The same into a malloc'd string. */
char *lq_train_config_to_yaml(const lq_train_config *c);
void lq_train_config_free(lq_train_config *c);

const char *lq_lr_sched_name(lq_lr_sched s);

/* The schema table behind parse / write (train/yaml_tree.h: key, type, offset, default, range,
 * help), {NULL}-terminated; for JSON output (lq_yschema_to_json) and documentation. */
struct lq_ykey;
const struct lq_ykey *lq_train_config_schema(void);

#endif
