/* train/train_loop.c: the optimizer-step loop (pipeline.md 3-7): accumulation, clipping, AdamW, eval, stops. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/cuda.h"
#include "train/mem.h"
#include "train/trainer_impl.h"

/* Ctrl-C state. Signal handlers can only reach globals; these two are the only ones, written by
 * the handler and read between micro-batches. */
static volatile sig_atomic_t g_sigint, g_saving, g_ignored;

static void on_sigint(int sig) {
    (void)sig;
    if (g_saving) {
        static const char msg[] = "\nCtrl-C ignored: a checkpoint is being saved\n";
        ssize_t w = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)w;
        g_ignored = 1;
        return;
    }
    g_sigint = 1;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void fmt_time(char *b, size_t n, double s) {
    long v = (long)(s + 0.5);
    if (v >= 3600) snprintf(b, n, "%ld:%02ld:%02ld", v / 3600, v / 60 % 60, v % 60);
    else snprintf(b, n, "%ld:%02ld", v / 60, v % 60);
}

static lq_status ctx_fail(lq_ctx *ctx, const char *what, lq_err *err) {
    const lq_err *e = lq_ctx_error(ctx);
    lq_status s = lq_ctx_status(ctx);
    return LQ_ERR(err, s != LQ_OK ? s : LQ_ERR_INTERNAL, "%s: %s", what, e && e->msg[0] ? e->msg : "failed");
}

/* The first parameter whose gradient holds a NaN or Inf, or "none". A block on the device is
 * read through a host copy (this runs only on the way to an error or warning). */
static const char *first_bad_grad(const lq_params *p) {
    const float *base = lq_params_grad(p), *host = base;
    float *copy = NULL;
    if (lq_params_device(p) == LQ_DEVICE_CUDA) {
        size_t bytes = (size_t)lq_params_numel(p) * sizeof(float);
        lq_err e = {0};
        copy = malloc(bytes ? bytes : 1);
        if (!copy || lq_cuda_sync(NULL, &e) != LQ_OK || lq_cuda_copy(copy, base, bytes, LQ_COPY_D2H, NULL, &e) != LQ_OK) {
            free(copy);
            return "unknown (the gradients could not be read back from the device)";
        }
        host = copy;
    }
    const char *bad = "none";
    for (int i = 0; i < lq_params_count(p) && !strcmp(bad, "none"); i++) {
        const lq_tensor *t = lq_params_at(p, i);
        if (!t->grad) continue;
        const float *g = host + ((const float *)t->grad->data - base);
        for (int64_t k = 0; k < lq_numel(t); k++)
            if (!isfinite(g[k])) {
                bad = t->name;
                break;
            }
    }
    free(copy);
    return bad;
}

/* Ends a '\r'-updated progress line before other output. */
static void end_line(lq_trainer *t) {
    if (t->line_open) fputc('\n', stderr);
    t->line_open = false;
}

/* log false: the line is already in metrics.jsonl (a resume from the final checkpoint). */
static lq_status do_eval(lq_trainer *t, int64_t step, bool log, double *loss, lq_err *err) {
    int64_t ntok;
    LQ_TRY(lq_trn_eval(t->ctx, t->model, &t->data.eval_rows, t->cfg->micro_batch_size, t->cfg->gradient_checkpointing,
                       loss, &ntok, err));
    if (log) lq_metrics_eval(&t->metrics, step, *loss);
    if (!t->opts.quiet) {
        end_line(t);
        fprintf(stderr, "eval @ step %lld: loss %.4f ppl %.2f\n", (long long)step, *loss, exp(*loss));
    }
    return LQ_OK;
}

/* Saves a checkpoint with Ctrl-C held off (a second one is ignored, and said so). */
static lq_status save(lq_trainer *t, const lq_trn_pos *pos, char *path, size_t n, lq_err *err) {
    g_saving = 1;
    lq_status st = lq_trn_save(t, pos, path, n, err);
    g_saving = 0;
    if (g_ignored) fprintf(stderr, "(a second Ctrl-C during the save was ignored)\n");
    g_ignored = 0;
    return st;
}

static lq_status stop_and_save(lq_trainer *t, const lq_trn_pos *pos, bool interrupted, lq_err *err) {
    char path[4200];
    lq_params_zero_grad(t->set->params);
    lq_ctx_step_reset(t->ctx);
    end_line(t);
    LQ_TRY(save(t, pos, path, sizeof path, err));
    const char *src = t->cfg->source && *t->cfg->source ? t->cfg->source : "CONFIG";
    if (interrupted) {
        fprintf(stderr, "interrupted at step %lld: checkpoint saved to %s; resume with loquat train %s --resume\n",
                (long long)pos->step, path, src);
        return LQ_ERR(err, LQ_ERR_INTERRUPTED, "interrupted at step %lld (checkpoint %s)", (long long)pos->step, path);
    }
    fprintf(stderr, "stopped after step %lld (--stop-after): checkpoint saved to %s; resume with loquat train %s --resume\n",
            (long long)pos->step, path, src);
    return LQ_OK;
}

/* Labels counted over the rows of one step. */
static int64_t count_labels(const lq_packed *p, int64_t r0, int64_t n_rows) {
    int64_t c = 0;
    const int32_t *l = p->labels + r0 * p->seq_len;
    for (int64_t i = 0; i < n_rows * p->seq_len; i++) c += l[i] != LQ_IGNORE_INDEX;
    return c;
}

/* One optimizer step from pos (advanced on success). *stop: Ctrl-C came between micro-batches. */
static lq_status one_step(lq_trainer *t, lq_trn_pos *pos, lq_step_info *info, bool *stop, lq_err *err) {
    const lq_train_config *c = t->cfg;
    int64_t mbs = c->micro_batch_size, gas = c->gradient_accumulation_steps, need = mbs * gas;
    lq_trn_pos p = *pos;
    if (p.row + need > t->steps_per_epoch * need) {
        p.epoch++;
        p.row = 0;
    }
    LQ_TRY(lq_train_data_epoch(&t->data, c->seed, p.epoch, err));
    const lq_packed *rows = &t->data.epoch_rows;
    int64_t n_step = count_labels(rows, p.row, need);
    double t0 = now_s(), loss = 0;
    const char *bad_loss = NULL;
    for (int64_t j = 0; j < gas; j++) {
        if (g_sigint) {
            *stop = true;
            return LQ_OK;
        }
        lq_ctx_set_training(t->ctx, true);
        lq_ctx_set_seed(t->ctx, c->seed * 1000003ull + (uint64_t)p.micro);
        lq_tensor *ids, *labels, *ps, *doc;
        LQ_TRY(lq_trn_batch(t->ctx, rows, p.row, mbs, &ids, &labels, &ps, &doc, err));
        lq_llama_fwd_opts fo = {.positions = ps, .doc = doc, .checkpoint = c->gradient_checkpointing};
        int64_t nc = 0;
        lq_tensor *l = lq_llama_loss(t->ctx, t->model, ids, labels, &fo, &nc);
        if (!l) return ctx_fail(t->ctx, "forward", err);
        float lv = lq_tensor_get_f32(t->ctx, l, 0); /* from the device, if there */
        if (lq_ctx_status(t->ctx) != LQ_OK) return ctx_fail(t->ctx, "forward", err);
        if (n_step > 0) {
            lq_tensor *scaled = lq_scale(t->ctx, l, (float)(1.0 / (double)n_step));
            if (!scaled || lq_backward(t->ctx, scaled) != LQ_OK) return ctx_fail(t->ctx, "backward", err);
            loss += (double)lv / (double)n_step;
        }
        lq_ctx_step_reset(t->ctx);
        if (!isfinite(lv) && !bad_loss) {
            bad_loss = isnan(lv) ? "nan" : "inf";
            if (c->nan_policy == LQ_NAN_STOP) {
                const char *g = first_bad_grad(t->set->params);
                return LQ_ERR(err, LQ_ERR_NUMERIC, "step %lld: loss is %s (micro-batch %lld); first non-finite gradient: %s",
                              (long long)p.step + 1, bad_loss, (long long)p.micro, g);
            }
        }
        p.micro++;
        p.row += mbs;
    }
    if (t->opts.hooks.after_backward && t->opts.hooks.after_backward(t->opts.hooks.user, p.step + 1, t->set->params)) {
        *stop = true;
        return LQ_OK;
    }
    double norm = lq_clip_grad_norm(t->set->params, (float)c->max_grad_norm, t->threads);
    double lr = lq_lr_at(c->lr_scheduler, c->learning_rate, t->warmup, t->total, p.step);
    bool skip = n_step == 0;
    if (skip || bad_loss || !isfinite(norm)) end_line(t);
    if (!bad_loss && !isfinite(norm)) {
        const char *g = first_bad_grad(t->set->params);
        if (c->nan_policy == LQ_NAN_STOP)
            return LQ_ERR(err, LQ_ERR_NUMERIC, "step %lld: gradient norm is %s; first non-finite gradient: %s",
                          (long long)p.step + 1, isnan(norm) ? "nan" : "inf", g);
        fprintf(stderr, "warning: step %lld: gradient norm is %s (first non-finite gradient: %s); update skipped\n",
                (long long)p.step + 1, isnan(norm) ? "nan" : "inf", g);
        skip = true;
    } else if (bad_loss) {
        fprintf(stderr, "warning: step %lld: loss is %s; update skipped (on_nan: skip)\n", (long long)p.step + 1, bad_loss);
        skip = true;
    } else if (n_step == 0) {
        fprintf(stderr, "warning: step %lld: no tokens to predict; update skipped\n", (long long)p.step + 1);
    }
    if (!skip) LQ_TRY(lq_adamw_step(&t->opt, t->set->params, (float)lr, err));
    else t->n_skipped++;
    lq_params_zero_grad(t->set->params);
    p.step++;
    double dt = now_s() - t0;
    *info = (lq_step_info){.step = p.step, .total = t->total, .loss = n_step ? loss : NAN, .lr = lr, .grad_norm = norm,
                           .tokens = n_step, .tokens_per_s = dt > 0 ? (double)(need * rows->seq_len) / dt : 0,
                           .peak_rss = lq_peak_rss()};
    *pos = p;
    return LQ_OK;
}

static void summary(lq_trainer *t, int64_t steps_run, double elapsed) {
    char tb[32];
    fmt_time(tb, sizeof tb, elapsed);
    fprintf(stderr, "done: %lld steps (%lld this session) in %s", (long long)t->total, (long long)steps_run, tb);
    if (t->n_skipped) fprintf(stderr, ", %lld skipped", (long long)t->n_skipped);
    fprintf(stderr, "\n");
    if (isfinite(t->eval_before) || isfinite(t->eval_after))
        fprintf(stderr, "eval ppl: %.3f -> %.3f\n", exp(t->eval_before), exp(t->eval_after));
    lq_mem_estimate me;
    lq_err e = {0};
    int64_t peak = lq_peak_rss();
    if (lq_mem_estimate_run(t->cfg, &me, &e) == LQ_OK)
        fprintf(stderr, "peak RSS: %lld MiB measured, %lld MiB estimated (loquat mem)\n", (long long)(peak >> 20),
                (long long)(me.total >> 20));
    else fprintf(stderr, "peak RSS: %lld MiB measured\n", (long long)(peak >> 20));
    if (lq_ctx_device(t->ctx) == LQ_DEVICE_CUDA)
        fprintf(stderr, "peak device memory: %lld MiB (base weights, adapters, grads, moments, activation arenas)\n",
                (long long)(lq_cuda_mem_stats().peak >> 20));
    fprintf(stderr, "adapter: %s/adapter_config.json, %s/adapter_model.safetensors; loss plot: %s/loss.svg\n",
            t->cfg->output_dir, t->cfg->output_dir, t->cfg->output_dir);
}

/* resumed_final: resumed from the final checkpoint, which finish() writes after the final eval,
 * so that eval's metrics line is kept already (the eval is redone only for the summary). */
static lq_status finish(lq_trainer *t, const lq_trn_pos *pos, bool saved, int64_t last_eval, bool resumed_final,
                        lq_err *err) {
    if (t->data.eval_rows.n_rows > 0) {
        if (last_eval != pos->step) LQ_TRY(do_eval(t, pos->step, !resumed_final, &t->eval_after, err));
    }
    char path[4200];
    if (!saved) LQ_TRY(save(t, pos, path, sizeof path, err));
    if (lq_params_device(t->set->params) == LQ_DEVICE_CUDA) { /* the adapter file is written from the host */
        LQ_TRY(lq_cuda_sync(NULL, err));
        LQ_TRY(lq_params_to_host(t->set->params, err));
    }
    LQ_TRY(lq_peft_save(t->set, t->cfg->output_dir, err));
    lq_metrics_close(&t->metrics);
    char svg[4200], title[512];
    snprintf(svg, sizeof svg, "%s/loss.svg", t->cfg->output_dir);
    const char *src = t->cfg->source && *t->cfg->source ? t->cfg->source : "loquat train";
    const char *base = strrchr(src, '/');
    snprintf(title, sizeof title, "loquat train: %s", base ? base + 1 : src);
    return lq_metrics_plot(t->metrics.path, svg, title, err);
}

/* A fresh run refuses an output folder that holds an earlier run's checkpoints: mixing them would
 * let save_total_limit prune across both runs and a later --resume pick the wrong one, and
 * deleting them would lose that run's work. The user chooses: --resume, or another folder. */
static lq_status refuse_stale(const char *dir, lq_err *err) {
    char **paths;
    int64_t *steps;
    int n;
    LQ_TRY(lq_ckpt_list(dir, &paths, &steps, &n, err));
    lq_status st = LQ_OK;
    if (n > 0)
        st = LQ_ERR(err, LQ_ERR_INPUT,
                    "output_dir %s holds %d checkpoint(s) of an earlier run (newest %s): pass --resume to continue "
                    "that run, or choose another output_dir (or remove them)", dir, n, paths[n - 1]);
    lq_ckpt_list_free(paths, steps, n);
    return st;
}

static lq_status run(lq_trainer *t, lq_err *err) {
    lq_trn_pos pos = {0};
    bool resumed;
    LQ_TRY(lq_trn_resume(t, &pos, &resumed, err));
    if (!resumed) LQ_TRY(refuse_stale(t->cfg->output_dir, err));
    LQ_TRY(lq_metrics_open(&t->metrics, t->cfg->output_dir, resumed ? pos.step : -1, err));
    bool tty = isatty(STDERR_FILENO), quiet = t->opts.quiet;
    if (!quiet)
        fprintf(stderr, "train: %lld steps (%lld per epoch: %lld rows of %lld tokens, %lld x %lld rows per step), "
                        "%lld adapter parameters, %d threads\n",
                (long long)t->total, (long long)t->steps_per_epoch, (long long)t->data.rows_per_epoch,
                (long long)t->data.seq_len, (long long)t->cfg->micro_batch_size,
                (long long)t->cfg->gradient_accumulation_steps, (long long)lq_params_count_elements(t->set->params),
                t->threads);
    int64_t last_eval = -1;
    if (!resumed && t->data.eval_rows.n_rows > 0) {
        LQ_TRY(do_eval(t, 0, true, &t->eval_before, err));
        last_eval = 0;
    }
    t->eval_after = t->eval_before;
    double t0 = now_s();
    int64_t start = pos.step;
    bool saved = false, resumed_final = resumed && pos.step >= t->total;
    while (pos.step < t->total) {
        if (g_sigint) return stop_and_save(t, &pos, true, err);
        /* --stop-after N: stop once N steps are done (at once when a resumed run is already there) */
        if (t->opts.stop_after > 0 && pos.step >= t->opts.stop_after) {
            if (saved) {
                end_line(t);
                fprintf(stderr, "stopped after step %lld (--stop-after); resume with loquat train %s --resume\n",
                        (long long)pos.step, t->cfg->source && *t->cfg->source ? t->cfg->source : "CONFIG");
                return LQ_OK;
            }
            return stop_and_save(t, &pos, false, err);
        }
        lq_step_info info;
        bool stop = false;
        LQ_TRY(one_step(t, &pos, &info, &stop, err));
        if (stop) {
            if (g_sigint) return stop_and_save(t, &pos, true, err);
            lq_params_zero_grad(t->set->params);
            return LQ_OK; /* after_backward asked to stop */
        }
        saved = false;
        double el = now_s() - t0;
        lq_metrics_step(&t->metrics, &info, el);
        if (t->opts.hooks.after_step) t->opts.hooks.after_step(t->opts.hooks.user, &info);
        if (!quiet && (tty || t->cfg->logging_steps <= 1 || info.step % t->cfg->logging_steps == 0 || info.step == t->total)) {
            char line[256];
            lq_progress_format(line, sizeof line, &info, el / (double)(pos.step - start) * (double)(t->total - pos.step));
            if (tty) fprintf(stderr, "\r%s\033[K", line), t->line_open = true;
            else fprintf(stderr, "%s\n", line);
        }
        if (t->cfg->eval_steps > 0 && pos.step % t->cfg->eval_steps == 0 && pos.step < t->total &&
            t->data.eval_rows.n_rows > 0) {
            LQ_TRY(do_eval(t, pos.step, true, &t->eval_after, err));
            last_eval = pos.step;
        }
        if (t->cfg->save_steps > 0 && pos.step % t->cfg->save_steps == 0 && pos.step < t->total) {
            char path[4200];
            LQ_TRY(save(t, &pos, path, sizeof path, err));
            saved = true;
        }
    }
    end_line(t);
    LQ_TRY(finish(t, &pos, saved, last_eval, resumed_final, err));
    if (!quiet) summary(t, pos.step - start, now_s() - t0);
    return LQ_OK;
}

lq_status lq_trainer_run(lq_trainer *t, lq_err *err) {
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    g_sigint = g_saving = g_ignored = 0;
    sigaction(SIGINT, &sa, &old);
    lq_status st = run(t, err);
    end_line(t);
    sigaction(SIGINT, &old, NULL);
    lq_metrics_close(&t->metrics);
    g_sigint = 0;
    return st;
}
