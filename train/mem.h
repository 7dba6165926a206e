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
    int64_t activations;     /* the activation arenas' peak (everything a step and an evaluation
                              * batch allocate there: outputs, saved buffers, gradients, dequant
                              * tiles, logits chunks, attention scores), without checkpointing */
    int64_t activations_ckpt;/* the same with gradient checkpointing */
    int64_t workspace;       /* scratch outside the arenas: the f32 copy of one weight while the
                              * load requantizes it */
    int64_t data;            /* tokenized and packed dataset */
    int64_t runtime;         /* process baseline (code, libraries, thread buffers, tokenizer) */
    int64_t mapped;          /* file pages the load reads through the model file's read-only
                              * mapping beyond the weights it holds (the sources of requantized
                              * weights): clean and reclaimable, but counted in RSS while the
                              * model keeps the file open */
    int64_t total;           /* the sum for the config's gradient_checkpointing setting */
    int64_t total_other;     /* the sum for the other setting */
} lq_mem_estimate;

/* Estimates from the config and the model's header (config.json or GGUF metadata: no weights are
 * read) and the dataset sizes on disk. */
lq_status lq_mem_estimate_run(const lq_train_config *cfg, lq_mem_estimate *out, lq_err *err);

/* The process baseline (runtime): LQ_MEM_RUNTIME_BYTES for code, libraries and thread buffers
 * (the peak RSS of `loquat train` on the tiny test model less its tallied parts), plus
 * LQ_MEM_VOCAB_BYTES per vocabulary entry for the tokenizer and the GGUF metadata strings
 * (measured on SmolLM2: 13 MiB for 49152 entries). */
#define LQ_MEM_RUNTIME_BYTES ((int64_t)16 << 20)
#define LQ_MEM_VOCAB_BYTES ((int64_t)280)

/* MemAvailable from /proc/meminfo in bytes; -1 when it cannot be read. */
int64_t lq_mem_available(void);
/* The check before allocation: LQ_ERR_OOM with a message giving the estimate, MemAvailable and
 * what to lower when e->total exceeds MemAvailable; LQ_OK otherwise (also when MemAvailable cannot
 * be read). The trainer refuses to start on it (exit 2); `loquat mem` prints it as a warning. */
lq_status lq_mem_check(const lq_mem_estimate *e, lq_err *err);

#endif
