/* train/trainer_impl.h: private parts of the trainer (checkpoints, metrics, data), shared by its
 * files (trainer.c, train_loop.c, train_data.c, train_ckpt.c, metrics.c, cmd_train.c) and tests. */
#ifndef LQ_TRAINER_IMPL_H
#define LQ_TRAINER_IMPL_H

#include <stdio.h>

#include "datasets/datasets.h"
#include "lora/lora.h"
#include "models/models.h"
#include "train/train.h"
#include "train/trainer.h"

/* ---------------------------------------------------------------------------------------------
 * Checkpoints (train_ckpt.c): output_dir/checkpoint-<step>.h5, one HDF5 file holding
 *   datasets  params, adam_m, adam_v  f32 (numel)  the adapter block and AdamW moments
 *             modules  fixed strings (n_mods) of LQ_NAME_MAX bytes: the adapted module paths
 *   root attributes  format, step, epoch, row, micro, adam_t, n_skipped, numel (i64), seed (u64),
 *             eval_before (f64), config (string: the resolved YAML), checksum (u64: FNV-1a 64
 *             over the arrays, the module names, the scalars and the config).
 * Built in memory (HDF5 core driver), written to a temporary name in the same folder with write(),
 * fsync'd, renamed, folder fsync'd: a kill or a full disk never leaves a partial checkpoint-<step>.h5.
 * ------------------------------------------------------------------------------------------- */

#define LQ_CKPT_FORMAT 1
#define LQ_CKPT_MAX_NUMEL ((int64_t)1 << 34)
#define LQ_CKPT_MAX_MODS 65536

typedef struct lq_ckpt {
    int64_t step;        /* optimizer steps done */
    int64_t epoch, row;  /* data position of the next step: epoch (0-based), row within it */
    int64_t micro;       /* micro-batches run so far (the dropout seed index of the next one) */
    int64_t adam_t;      /* AdamW's step count */
    int64_t n_skipped;   /* steps whose update was skipped (on_nan: skip, or no counted tokens) */
    uint64_t seed;
    double eval_before;  /* validation loss before training (NaN: none) */
    int64_t numel;       /* length of params, m, v (the block, padding included) */
    float *params, *m, *v;
    int n_mods;
    char (*mods)[LQ_NAME_MAX];
    char *config; /* NUL-terminated resolved YAML */
    bool owned;   /* arrays malloc'd by lq_ckpt_load (lq_ckpt_free releases them) */
} lq_ckpt;

lq_status lq_ckpt_save(const char *path, const lq_ckpt *c, lq_err *err);
/* Reads and validates (format, sizes, checksum) a checkpoint; LQ_ERR_INPUT naming the file and
 * what is wrong for anything else. */
lq_status lq_ckpt_load(const char *path, lq_ckpt *c, lq_err *err);
void lq_ckpt_free(lq_ckpt *c);
/* "<dir>/checkpoint-<step>.h5" files in dir, ascending by step (malloc'd arrays; *n may be 0). */
lq_status lq_ckpt_list(const char *dir, char ***paths, int64_t **steps, int *n, lq_err *err);
void lq_ckpt_list_free(char **paths, int64_t *steps, int n);
/* Deletes the oldest checkpoints of dir until at most keep remain (keep <= 0: none deleted). */
lq_status lq_ckpt_prune(const char *dir, int64_t keep, lq_err *err);
/* fsync of a folder (after a rename into it). */
lq_status lq_fsync_dir(const char *dir, lq_err *err);
/* mkdir -p */
lq_status lq_mkdirs(const char *dir, lq_err *err);

/* ---------------------------------------------------------------------------------------------
 * Metrics (metrics.c): metrics.jsonl, the progress line and loss.svg.
 * ------------------------------------------------------------------------------------------- */

typedef struct lq_metrics {
    FILE *f;
    char path[4096];
} lq_metrics;

/* Opens output_dir/metrics.jsonl: truncated for a fresh run; for a resume (keep_upto >= 0) first
 * rewritten atomically keeping only the well-formed lines with step <= keep_upto. */
lq_status lq_metrics_open(lq_metrics *m, const char *dir, int64_t keep_upto, lq_err *err);
void lq_metrics_step(lq_metrics *m, const lq_step_info *s, double elapsed_s);
void lq_metrics_eval(lq_metrics *m, int64_t step, double loss);
void lq_metrics_close(lq_metrics *m);
/* Draws output_dir/metrics.jsonl as an SVG (train loss per step, eval loss points). */
lq_status lq_metrics_plot(const char *metrics_path, const char *svg_path, const char *title, lq_err *err);
/* "step 12/30  loss 3.2140  lr 2.90e-04  1234 tok/s  ETA 0:45  peak 812 MiB" into buf. */
void lq_progress_format(char *buf, size_t n, const lq_step_info *s, double eta_s);

/* ---------------------------------------------------------------------------------------------
 * Data (train_data.c): pipeline.md's documents, split, epochs and eval rows.
 * ------------------------------------------------------------------------------------------- */

typedef struct lq_train_data {
    lq_docs docs;        /* every document of the training datasets, config order */
    lq_docs test_docs;   /* test_datasets' documents (validation set when given) */
    size_t *train;       /* indices into docs */
    size_t n_train;
    size_t *eval;        /* indices into docs (or test_docs when use_test) */
    size_t n_eval;
    bool use_test;
    int64_t seq_len;
    bool packing;
    int32_t pad_id;
    int64_t rows_per_epoch;
    lq_packed epoch_rows; /* rows of the epoch now loaded */
    int64_t epoch_loaded; /* -1: none */
    lq_packed eval_rows;  /* n_rows 0 when there is no validation set */
} lq_train_data;

/* Loads the datasets through the token cache, splits, and packs the eval rows. */
lq_status lq_train_data_load(lq_train_data *d, const lq_train_config *cfg, const lq_lm_tok *tok, lq_err *err);
/* Packs epoch e's rows into d->epoch_rows (no-op when already loaded). */
lq_status lq_train_data_epoch(lq_train_data *d, uint64_t seed, int64_t epoch, lq_err *err);
void lq_train_data_free(lq_train_data *d);

/* The device the config's `device` key asks for, checked before any work: LQ_ERR_INPUT (exit 2)
 * naming the key when this build has no CUDA, LQ_ERR_UNSUPPORTED (exit 1) when it has but no
 * device is usable. */
lq_status lq_trn_device(const lq_train_config *cfg, lq_device_kind *dev, lq_err *err);
/* Moves the model's weights and the adapter block (set may be NULL) to the CUDA device. */
lq_status lq_trn_to_device(lq_llama_model *m, lq_lora_set *set, lq_err *err);
/* Model, tokenizer and adapters as the config asks (shared by train and eval). */
lq_status lq_trn_load_model(const lq_train_config *cfg, lq_llama_model **model, lq_lm_tok *tok, lq_err *err);
/* Validation loss (sum CE / counted labels) over rows, micro_batch rows at a time, no dropout,
 * no grad. *n_tokens gets the counted labels. */
lq_status lq_trn_eval(lq_ctx *ctx, lq_llama_model *m, const lq_packed *rows, int64_t micro_batch, bool ckpt,
                      double *loss, int64_t *n_tokens, lq_err *err);
/* Copies rows [r0, r0 + b) of p into (b, T) i32 arena tensors. */
lq_status lq_trn_batch(lq_ctx *ctx, const lq_packed *p, int64_t r0, int64_t b, lq_tensor **ids, lq_tensor **labels,
                       lq_tensor **pos, lq_tensor **doc, lq_err *err);
/* Bytes of peak resident memory (getrusage). */
int64_t lq_peak_rss(void);

/* ---------------------------------------------------------------------------------------------
 * The trainer (trainer.c: setup, checkpoints, resume; train_loop.c: the run).
 * ------------------------------------------------------------------------------------------- */

/* Where a run stands between optimizer steps. */
typedef struct lq_trn_pos {
    int64_t step;       /* optimizer steps done */
    int64_t epoch, row; /* the next step's first row: epoch (0-based) and row within its rows */
    int64_t micro;      /* micro-batches run (the next one's dropout seed index) */
} lq_trn_pos;

struct lq_trainer {
    const lq_train_config *cfg; /* the caller's (outlives the trainer) */
    lq_trainer_opts opts;
    lq_llama_model *model;
    lq_lm_tok tok;
    lq_lora_set *set;
    lq_adamw opt;
    bool have_opt;
    lq_ctx *ctx;
    lq_train_data data;
    lq_metrics metrics;
    char *yaml; /* the resolved config, as checkpoints store it */
    int threads;
    int64_t steps_per_epoch, total, warmup;
    int64_t n_skipped;
    bool line_open; /* a '\r'-updated progress line is on the terminal (end it before other output) */
    double eval_before, eval_after; /* validation loss before / after training (NaN: none) */
};

/* Saves output_dir/checkpoint-<step>.h5 for pos (path gets its name), then prunes. */
lq_status lq_trn_save(lq_trainer *t, const lq_trn_pos *pos, char *path, size_t path_n, lq_err *err);
/* With --resume or resume_from_checkpoint: restores the newest checkpoint that loads and fits
 * (skipping others with a warning); *resumed false and LQ_OK when resuming was not asked for. */
lq_status lq_trn_resume(lq_trainer *t, lq_trn_pos *pos, bool *resumed, lq_err *err);

#endif
