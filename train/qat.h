/* train/qat.h: quantization-aware training experiments (`loquat qat`): the config, the float /
 * PTQ / QAT runs, their comparison over schemes, and integer export. */
#ifndef LQ_TRAIN_QAT_H
#define LQ_TRAIN_QAT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/status.h"
#include "quant/quant.h"
#include "train/config.h"

#define LQ_QAT_MAX_OVERRIDES 32
#define LQ_QAT_MAX_SCHEMES 16

/* What a model's quantized layers get: weights, input activations, PACT. */
typedef struct lq_qat_scheme {
    char *name;          /* "W4A8"; the table's row label */
    lq_qspec weights;    /* enabled false = float */
    lq_qspec activations;/* granularity tensor = static (observer), token = dynamic per token */
    bool pact;           /* learned clipping for static activations */
} lq_qat_scheme;

/* A per-layer rule: the last rule whose glob pattern matches a layer name wins. */
typedef struct lq_qat_override {
    char *pattern;
    lq_qspec weights, activations;
    bool has_weights, has_activations; /* the rule sets them (else the scheme's stand) */
} lq_qat_override;

typedef enum lq_qat_run_mode { LQ_QAT_RUN_FLOAT = 0, LQ_QAT_RUN_PTQ, LQ_QAT_RUN_QAT } lq_qat_run_mode;

typedef struct lq_qat_quant_cfg {
    lq_qat_scheme scheme;            /* weights / activations / pact keys */
    lq_qat_override overrides[LQ_QAT_MAX_OVERRIDES];
    int n_overrides;
    bool keep_first_last_float;      /* the first and last quantized layers stay float */
    int64_t fake_quant_start_step;   /* QAT: steps before it run float (observers watching) */
    int64_t observer_freeze_step;    /* QAT: static activation observers freeze here (0 = never) */
    int64_t calibration_batches;     /* PTQ: batches the observers see (default 32) */
} lq_qat_quant_cfg;

typedef struct lq_qat_stage_cfg {   /* one training stage (the float baseline, or QAT) */
    int64_t epochs;                  /* classifier: passes over the training set (if max_steps is 0) */
    int64_t max_steps;               /* optimizer steps; 0 = from epochs */
    double learning_rate;
    lq_lr_sched lr_scheduler;
    int64_t warmup_steps;
    double weight_decay;
} lq_qat_stage_cfg;

typedef struct lq_qat_config {
    char *source;
    char *model;            /* mlp | cnn | a GGUF file / Hugging Face folder (language-model QAT) */
    lq_qat_run_mode mode;   /* the single run without --compare */
    /* classifier data */
    char *data_dir;         /* Fashion-MNIST's IDX files (train-*, t10k-*, .gz or plain) */
    int64_t train_limit, test_limit; /* use the first N examples; 0 = all */
    /* language-model data */
    lq_dataset_cfg datasets[LQ_CFG_MAX_DATASETS];
    int n_datasets;
    lq_dataset_cfg test_datasets[LQ_CFG_MAX_DATASETS];
    int n_test_datasets;
    int64_t sequence_len;
    int64_t eval_rows;      /* language model: validation rows scored (0 = all) */
    bool gradient_checkpointing;
    /* training */
    int64_t batch_size;
    lq_qat_stage_cfg train;  /* the float baseline */
    lq_qat_stage_cfg qat;    /* QAT fine-tuning from the float model */
    char *float_model;       /* start from these float weights (safetensors) instead of training them */
    double adam_beta1, adam_beta2, adam_epsilon, max_grad_norm;
    uint64_t seed;
    /* quantization */
    lq_qat_quant_cfg quantization;
    lq_qat_scheme compare[LQ_QAT_MAX_SCHEMES]; /* --compare's schemes */
    int n_compare;
    /* output */
    char *output_dir;
    int64_t logging_steps;
    int64_t eval_batch_size;
    int threads;
} lq_qat_config;

lq_status lq_qat_config_load(const char *path, const char *const *sets, int n_sets, lq_qat_config *out, lq_err *err);
lq_status lq_qat_config_parse(const char *yaml, size_t len, const char *name, const char *const *sets, int n_sets,
                              lq_qat_config *out, lq_err *err);
void lq_qat_config_free(lq_qat_config *c);
lq_status lq_qat_config_write(FILE *f, const lq_qat_config *c);
/* A preset scheme by name (W8A8, W4A8, W4A4, W2A8, W8A16... "W4G32-DYN8"): false when unknown. */
bool lq_qat_preset(const char *name, lq_qat_scheme *out);
/* Whether model names a classifier (mlp / cnn) rather than a language model file. */
bool lq_qat_is_classifier(const lq_qat_config *c);
/* The specs a layer gets under scheme s and the config's overrides / first-last rule. */
void lq_qat_resolve(const lq_qat_config *c, const lq_qat_scheme *s, const char *layer, int index, int n_layers,
                    lq_qspec *w, lq_qspec *a, bool *pact);

/* One row of results. */
typedef struct lq_qat_result {
    char scheme[32];
    const char *mode;      /* "float" | "ptq" | "qat" */
    bool lm;               /* perplexity (language model) or accuracy (classifier) */
    double metric;         /* accuracy in % or perplexity, with fake quantization (or float) */
    double int_metric;     /* the same with the converted integer model; NaN when not converted */
    double loss;           /* evaluation loss */
    int64_t size_bytes;    /* the model's bytes as exported: every tensor's data (codes packed, scales,
                            * zero points, biases, float tensors), headers not counted */
    double seconds;        /* wall time of the run */
    char export_path[512]; /* safetensors of the integer model ("" if none) */
} lq_qat_result;

/* `loquat qat CONFIG [--compare] [--json] [--set k=v ...]`: exit status. */
int lq_cmd_qat(const char *config, const char *const *sets, int n_sets, bool compare, bool json, bool quiet);

#endif
