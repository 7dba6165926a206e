/* train/qat_impl.h: private parts of `loquat qat` shared by its files (qat_run.c, qat_lm.c,
 * qat_export.c, cmd_qat.c) and tests. */
#ifndef LQ_TRAIN_QAT_IMPL_H
#define LQ_TRAIN_QAT_IMPL_H

#include "models/qat.h"
#include "train/qat.h"
#include "train/trainer.h"

/* Writes the converted layers (lq_qlayer_convert done) as safetensors at st_path and, when h5_path
 * is not NULL, HDF5 (train/qat_export.c's layout); *bytes (optional) gets the tensors' data bytes. */
lq_status lq_qat_export(const char *st_path, const char *h5_path, lq_qlayer *const *layers, int n, const char *model,
                        int64_t *bytes, lq_err *err);
/* Reads a safetensors export back into the converted layers' integer form (codes, scales, zero
 * points, bias, activation qparams); sizes are checked against the layers (LQ_ERR_INPUT naming the
 * file and tensor). */
lq_status lq_qat_import(const char *path, lq_qlayer *const *layers, int n, lq_err *err);

/* A run's progress and metrics (train/qat_run.c). */
typedef struct lq_qat_log {
    FILE *metrics;      /* output_dir/metrics.jsonl (every run appends lines with its "run" name) */
    bool quiet, tty;
    double t0;
} lq_qat_log;

/* The language-model runs (train/qat_lm.c): float fine-tuning, PTQ and QAT of a Llama model on
 * text, perplexity; fills res (up to 1 + 2 * n_schemes rows) and *n_res. */
lq_status lq_qat_lm_run(const lq_qat_config *c, const lq_qat_scheme *schemes, int n_schemes, bool compare,
                        lq_qat_log *log, lq_qat_result *res, int *n_res, lq_err *err);
/* The classifier runs (train/qat_run.c). */
lq_status lq_qat_cls_run(const lq_qat_config *c, const lq_qat_scheme *schemes, int n_schemes, bool compare,
                         lq_qat_log *log, lq_qat_result *res, int *n_res, lq_err *err);

/* The layer-spec callback of both runners: user is an lq_qat_spec_user; s NULL = every layer float. */
typedef struct lq_qat_spec_user {
    const lq_qat_config *c;
    const lq_qat_scheme *s;
} lq_qat_spec_user;
void lq_qat_resolve_cb(const char *name, int index, int n_layers, lq_qspec *w, lq_qspec *a, bool *pact, void *user);
/* A fresh result row (no integer metric yet). */
void lq_qat_row(lq_qat_result *r, const char *scheme, const char *mode, bool lm);

double lq_qat_now(void);
/* The progress line "RUN step 120/938  loss 0.4123  lr 1.00e-04  2100 ex/s  ETA 0:12" (stderr,
 * rewritten in place on a terminal, every logging_steps otherwise) and a metrics.jsonl line. */
void lq_qat_progress(lq_qat_log *log, const char *run, int64_t step, int64_t total, double loss, double lr,
                     double ex_per_s, bool log_line);
void lq_qat_progress_end(lq_qat_log *log);

#endif
