/* train/mem.h: the memory estimate of a fine-tuning run (`loquat mem`, and the trainer's report of
 * measured peak beside it). */
#ifndef LQ_TRAIN_MEM_H
#define LQ_TRAIN_MEM_H

#include <stdint.h>

#include "core/status.h"
#include "train/config.h"

/* Bytes, each part of a run as loquat holds it. */
typedef struct lq_mem_estimate {
    int64_t base;            /* frozen base weights at their precision (quant states included),
                              * plus the f32 embedding / norms the model keeps */
    int64_t adapters;        /* LoRA A and B (f32) */
    int64_t grads;           /* their gradients */
    int64_t optimizer;       /* AdamW moments */
    int64_t activations;     /* one micro-batch's saved activations, without checkpointing */
    int64_t activations_ckpt;/* the same with gradient checkpointing */
    int64_t workspace;       /* scratch: dequant tiles, logits chunk, attention scores */
    int64_t data;            /* tokenized and packed dataset */
    int64_t runtime;         /* process baseline (code, libraries, thread stacks) */
    int64_t total;           /* the sum for the config's gradient_checkpointing setting */
    int64_t total_other;     /* the sum for the other setting */
} lq_mem_estimate;

/* Estimates from the config and the model's header (config.json or GGUF metadata: no weights are
 * read) and the dataset sizes on disk. */
lq_status lq_mem_estimate_run(const lq_train_config *cfg, lq_mem_estimate *out, lq_err *err);

#endif
