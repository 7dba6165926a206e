/* train/trainer.h: the QLoRA fine-tuning loop behind `loquat train` (data, steps, schedule,
 * evaluation, logging, checkpoints, resume, export). */
#ifndef LQ_TRAINER_H
#define LQ_TRAINER_H

#include "autograd/autograd.h"
#include "train/config.h"

/* Learning rate of optimizer step `step` (0-based: the update made when `step` updates are done),
 * as transformers' get_{constant,linear,cosine}_schedule_with_warmup: lr * step / max(1, warmup)
 * while step < warmup; then lr (constant), lr * max(0, (total - step) / max(1, total - warmup))
 * (linear), or lr * max(0, 0.5 * (1 + cos(pi * progress))) with progress = (step - warmup) /
 * max(1, total - warmup) (cosine). */
double lq_lr_at(lq_lr_sched s, double lr, int64_t warmup, int64_t total, int64_t step);

/* What the loop reports after every optimizer step. */
typedef struct lq_step_info {
    int64_t step;        /* 1-based: optimizer steps done */
    int64_t total;       /* optimizer steps the run will make */
    double loss;         /* token-weighted mean cross-entropy over the step's micro-batches */
    double lr;           /* the rate this step used */
    double grad_norm;    /* before clipping */
    int64_t tokens;      /* counted (label) tokens in the step */
    double tokens_per_s; /* input tokens per second over the step */
    int64_t peak_rss;    /* bytes, getrusage */
} lq_step_info;

typedef struct lq_trainer lq_trainer;

typedef struct lq_trainer_hooks {
    void *user;
    /* After the step's backward (grads of every accumulated micro-batch in place, before clipping
     * and the optimizer); params = the adapter block. Return non-zero to stop the run. */
    int (*after_backward)(void *user, int64_t step, lq_params *params);
    /* After each optimizer step. */
    void (*after_step)(void *user, const lq_step_info *info);
} lq_trainer_hooks;

typedef struct lq_trainer_opts {
    bool resume;              /* --resume: continue from the newest complete checkpoint in output_dir */
    int64_t stop_after;       /* > 0: stop after this many optimizer steps (as Ctrl-C: checkpoint, exit) */
    bool quiet;               /* no progress line on stderr */
    lq_trainer_hooks hooks;
} lq_trainer_opts;

lq_status lq_trainer_init(lq_trainer **out, const lq_train_config *cfg, const lq_trainer_opts *opts, lq_err *err);
/* Runs to the end (or a stop); writes checkpoints, metrics.jsonl, the loss plot and the adapter.
 * LQ_ERR_INPUT for bad data / config, LQ_ERR_NUMERIC for a NaN / Inf loss or gradient (the last
 * good checkpoint kept), LQ_ERR_INTERRUPTED after Ctrl-C (a checkpoint saved first). */
lq_status lq_trainer_run(lq_trainer *t, lq_err *err);
void lq_trainer_free(lq_trainer *t);

/* `loquat train CONFIG [--set k=v]... [--resume] [--stop-after N]`: exit code. */
int lq_cmd_train(const char *config, const char *const *sets, int n_sets, const lq_trainer_opts *opts);

#endif
