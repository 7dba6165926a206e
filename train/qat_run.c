/* train/qat_run.c: the Fashion-MNIST experiments of `loquat qat`: the float baseline, PTQ
 * (calibration, no training) and QAT (fine-tuning with fake quantization) per scheme, accuracy with
 * fake quantization and with the converted integer model, exports; progress and metrics. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/rng.h"
#include "datasets/datasets.h"
#include "io/io.h"
#include "train/qat_impl.h"
#include "train/train.h"
#include "train/trainer_impl.h"

double lq_qat_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void lq_qat_progress(lq_qat_log *log, const char *run, int64_t step, int64_t total, double loss, double lr,
                     double ex_per_s, bool log_line) {
    if (log->metrics && log_line) {
        fprintf(log->metrics, "{\"run\": \"%s\", \"step\": %lld, \"loss\": %.6g, \"lr\": %.6g, \"examples_per_s\": %.1f}\n",
                run, (long long)step, loss, lr, ex_per_s);
        fflush(log->metrics);
    }
    if (log->quiet || (!log->tty && !log_line && step != total)) return;
    fprintf(stderr, "%s%-16s step %lld/%lld  loss %.4f  lr %.2e  %.0f ex/s%s", log->tty ? "\r" : "", run, (long long)step,
            (long long)total, loss, lr, ex_per_s, log->tty ? "\033[K" : "\n");
    fflush(stderr);
}

void lq_qat_progress_end(lq_qat_log *log) {
    if (log->tty && !log->quiet) fputc('\n', stderr);
}

/* --- data --------------------------------------------------------------------------------------- */

typedef struct cls_data {
    lq_idx_images train_x, test_x;
    lq_idx_labels train_y, test_y;
    int64_t n_train, n_test;
} cls_data;

static lq_status find_idx(const char *dir, const char *base, char *out, size_t cap, lq_err *err) {
    struct stat st;
    snprintf(out, cap, "%s/%s.gz", dir, base);
    if (stat(out, &st) == 0) return LQ_OK;
    snprintf(out, cap, "%s/%s", dir, base);
    if (stat(out, &st) == 0) return LQ_OK;
    return LQ_ERR(err, LQ_ERR_INPUT,
                  "data_dir '%s': %s(.gz) not found (tools/fetch_fashion_mnist.sh puts Fashion-MNIST in the cache)", dir,
                  base);
}

static lq_status load_data(const lq_qat_config *c, cls_data *d, lq_err *err) {
    memset(d, 0, sizeof *d);
    char p[4200];
    LQ_TRY(find_idx(c->data_dir, "train-images-idx3-ubyte", p, sizeof p, err));
    LQ_TRY(lq_idx_load_images(p, &d->train_x, err));
    LQ_TRY(find_idx(c->data_dir, "train-labels-idx1-ubyte", p, sizeof p, err));
    LQ_TRY(lq_idx_load_labels(p, &d->train_y, err));
    LQ_TRY(find_idx(c->data_dir, "t10k-images-idx3-ubyte", p, sizeof p, err));
    LQ_TRY(lq_idx_load_images(p, &d->test_x, err));
    LQ_TRY(find_idx(c->data_dir, "t10k-labels-idx1-ubyte", p, sizeof p, err));
    LQ_TRY(lq_idx_load_labels(p, &d->test_y, err));
    if (d->train_x.n != d->train_y.n || d->test_x.n != d->test_y.n)
        return LQ_ERR(err, LQ_ERR_INPUT, "data_dir '%s': image and label counts differ (%lld / %lld train, %lld / %lld test)",
                      c->data_dir, (long long)d->train_x.n, (long long)d->train_y.n, (long long)d->test_x.n,
                      (long long)d->test_y.n);
    const lq_idx_images *ims[2] = {&d->train_x, &d->test_x};
    for (int k = 0; k < 2; k++)
        if (ims[k]->h != 28 || ims[k]->w != 28)
            return LQ_ERR(err, LQ_ERR_INPUT, "data_dir '%s': the %s images are %lldx%lld; the models take 28x28", c->data_dir,
                          k ? "test" : "training", (long long)ims[k]->h, (long long)ims[k]->w);
    const lq_idx_labels *lbs[2] = {&d->train_y, &d->test_y};
    for (int k = 0; k < 2; k++)
        for (int64_t i = 0; i < lbs[k]->n; i++)
            if (lbs[k]->data[i] >= 10)
                return LQ_ERR(err, LQ_ERR_INPUT, "data_dir '%s': %s label %lld is %d (0..9 expected)", c->data_dir,
                              k ? "test" : "training", (long long)i, (int)lbs[k]->data[i]);
    d->n_train = c->train_limit > 0 && c->train_limit < d->train_x.n ? c->train_limit : d->train_x.n;
    d->n_test = c->test_limit > 0 && c->test_limit < d->test_x.n ? c->test_limit : d->test_x.n;
    if (d->n_train < c->batch_size)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: key 'batch_size': %lld is larger than the %lld training images", c->source,
                      (long long)c->batch_size, (long long)d->n_train);
    return LQ_OK;
}

static void free_data(cls_data *d) {
    lq_idx_images_free(&d->train_x), lq_idx_images_free(&d->test_x);
    lq_idx_labels_free(&d->train_y), lq_idx_labels_free(&d->test_y);
}

/* A batch (b, 1, 28, 28) and its labels (b) from examples idx[0..b). */
static bool batch(lq_ctx *ctx, const lq_idx_images *x, const lq_idx_labels *y, const int64_t *idx, int64_t first,
                  int64_t b, lq_tensor **xt, lq_tensor **yt) {
    int64_t xs[4] = {b, 1, 28, 28};
    *xt = lq_new(ctx, LQ_DTYPE_F32, 4, xs);
    *yt = lq_new(ctx, LQ_DTYPE_I32, 1, &b);
    if (!*xt || !*yt) return false;
    for (int64_t i = 0; i < b; i++) {
        int64_t e = idx ? idx[first + i] : first + i;
        memcpy((float *)(*xt)->data + i * 784, x->data + e * 784, 784 * sizeof(float));
        ((int32_t *)(*yt)->data)[i] = y->data[e];
    }
    return true;
}

/* --- one training stage -------------------------------------------------------------------------- */

static lq_status ctx_err(lq_ctx *ctx, lq_err *err) {
    *err = *lq_ctx_error(ctx);
    if (err->status == LQ_OK) err->status = LQ_ERR_INTERNAL;
    return err->status;
}

typedef struct stage {
    const char *run;
    const lq_qat_stage_cfg *cfg;
    lq_qat_mode mode;      /* FLOAT or FAKE */
    int64_t fq_start;      /* FAKE: steps before it run as CALIBRATE */
    int64_t freeze;        /* FAKE: observer freeze step (0 never) */
} stage;

static lq_status train_stage(const lq_qat_config *c, lq_classifier *m, const cls_data *d, const stage *sg, lq_ctx *ctx,
                             lq_qat_log *log, lq_err *err) {
    int64_t steps_per_epoch = d->n_train / c->batch_size;
    int64_t total = sg->cfg->max_steps > 0 ? sg->cfg->max_steps : sg->cfg->epochs * steps_per_epoch;
    if (total <= 0) return LQ_OK;
    lq_adamw opt;
    lq_adamw_cfg ac = {.lr = (float)sg->cfg->learning_rate, .beta1 = (float)c->adam_beta1, .beta2 = (float)c->adam_beta2,
                       .eps = (float)c->adam_epsilon, .weight_decay = (float)sg->cfg->weight_decay,
                       .n_threads = lq_ctx_threads(ctx)};
    LQ_TRY(lq_adamw_init(&opt, m->params, &ac, err));
    int64_t *order = malloc((size_t)d->n_train * sizeof *order);
    if (!order) {
        lq_adamw_free(&opt);
        return LQ_ERR(err, LQ_ERR_OOM, "out of memory");
    }
    lq_rng rng;
    lq_rng_seed(&rng, c->seed ^ 0x9e3779b97f4a7c15ULL);
    lq_status st = LQ_OK;
    double t_start = lq_qat_now(), loss_acc = 0;
    int64_t loss_n = 0;
    lq_ctx_set_training(ctx, true);
    for (int64_t step = 0; step < total && st == LQ_OK; step++) {
        int64_t e = step / steps_per_epoch, r = step % steps_per_epoch;
        if (r == 0) { /* a fresh permutation per epoch (Fisher-Yates, seeded by seed and epoch) */
            lq_rng_seed(&rng, c->seed * 1000003ULL + (uint64_t)e);
            for (int64_t i = 0; i < d->n_train; i++) order[i] = i;
            for (int64_t i = d->n_train - 1; i > 0; i--) {
                int64_t j = lq_rng_int(&rng, 0, i), t = order[i];
                order[i] = order[j], order[j] = t;
            }
        }
        lq_qat_mode mode = sg->mode;
        if (mode == LQ_QAT_FAKE && step < sg->fq_start) mode = LQ_QAT_CALIBRATE;
        if (mode == LQ_QAT_FAKE && step == sg->fq_start)
            for (int i = 0; i < m->n_layers && st == LQ_OK; i++) st = lq_qlayer_init_learned(&m->layers[i], err);
        if (sg->mode == LQ_QAT_FAKE && sg->freeze > 0 && step == sg->freeze)
            for (int i = 0; i < m->n_layers; i++)
                if (m->layers[i].aobs_ready) lq_observer_freeze(&m->layers[i].aobs);
        if (st != LQ_OK) break;
        lq_tensor *x, *y;
        lq_params_zero_grad(m->params);
        if (!batch(ctx, &d->train_x, &d->train_y, order, r * c->batch_size, c->batch_size, &x, &y)) {
            st = ctx_err(ctx, err);
            break;
        }
        lq_tensor *loss = lq_cross_entropy(ctx, lq_classifier_forward(ctx, m, x, mode), y, LQ_IGNORE_INDEX, LQ_REDUCE_MEAN);
        if (!loss || lq_backward(ctx, loss) != LQ_OK) {
            st = ctx_err(ctx, err);
            break;
        }
        double lv = *(const float *)loss->data;
        if (!isfinite(lv)) {
            st = LQ_ERR(err, LQ_ERR_NUMERIC, "%s: step %lld: loss is %g; stopping (try a lower learning rate)", sg->run,
                        (long long)step + 1, lv);
            break;
        }
        if (c->max_grad_norm > 0) lq_clip_grad_norm(m->params, (float)c->max_grad_norm, lq_ctx_threads(ctx));
        double lr = lq_lr_at(sg->cfg->lr_scheduler, sg->cfg->learning_rate, sg->cfg->warmup_steps, total, step);
        st = lq_adamw_step(&opt, m->params, (float)lr, err);
        lq_ctx_step_reset(ctx);
        loss_acc += lv, loss_n++;
        bool log_line = (step + 1) % c->logging_steps == 0 || step + 1 == total;
        double el = lq_qat_now() - t_start;
        if (log_line || log->tty)
            lq_qat_progress(log, sg->run, step + 1, total, log_line ? loss_acc / (double)loss_n : lv, lr,
                            el > 0 ? (double)((step + 1) * c->batch_size) / el : 0, log_line);
        if (log_line) loss_acc = 0, loss_n = 0;
    }
    lq_qat_progress_end(log);
    lq_ctx_set_training(ctx, false);
    lq_ctx_step_reset(ctx);
    free(order);
    lq_adamw_free(&opt);
    return st;
}

/* Accuracy (%) and mean loss on the test set. */
static lq_status evaluate(const lq_qat_config *c, lq_classifier *m, const cls_data *d, lq_qat_mode mode, lq_ctx *ctx,
                          double *acc, double *loss, lq_err *err) {
    bool g = lq_ctx_set_grad(ctx, false);
    lq_ctx_set_training(ctx, false);
    int64_t right = 0;
    double lsum = 0;
    lq_status st = LQ_OK;
    for (int64_t i = 0; i < d->n_test && st == LQ_OK; i += c->eval_batch_size) {
        int64_t b = d->n_test - i < c->eval_batch_size ? d->n_test - i : c->eval_batch_size;
        lq_tensor *x, *y;
        lq_tensor *logits = batch(ctx, &d->test_x, &d->test_y, NULL, i, b, &x, &y) ? lq_classifier_forward(ctx, m, x, mode) : NULL;
        lq_tensor *l = logits ? lq_cross_entropy(ctx, logits, y, LQ_IGNORE_INDEX, LQ_REDUCE_SUM) : NULL;
        if (!l) {
            st = ctx_err(ctx, err);
            break;
        }
        lsum += *(const float *)l->data;
        const float *lg = logits->data;
        for (int64_t r = 0; r < b; r++) {
            int best = 0;
            for (int k = 1; k < 10; k++)
                if (lg[r * 10 + k] > lg[r * 10 + best]) best = k;
            right += best == ((const int32_t *)y->data)[r];
        }
        lq_ctx_step_reset(ctx);
    }
    lq_ctx_set_grad(ctx, g);
    *acc = 100.0 * (double)right / (double)d->n_test;
    *loss = lsum / (double)d->n_test;
    return st;
}

static lq_status calibrate(const lq_qat_config *c, lq_classifier *m, const cls_data *d, lq_ctx *ctx, lq_err *err) {
    bool any = false; /* dynamic activations and weight-only schemes have nothing to calibrate */
    for (int i = 0; i < m->n_layers; i++) any |= m->layers[i].aobs_ready;
    if (!any) return LQ_OK;
    bool g = lq_ctx_set_grad(ctx, false);
    lq_status st = LQ_OK;
    /* the first calibration_batches training batches, in order (PTQ sees no labels) */
    for (int64_t k = 0; k < c->quantization.calibration_batches && st == LQ_OK; k++) {
        int64_t first = (k * c->batch_size) % (d->n_train - c->batch_size + 1);
        lq_tensor *x, *y;
        if (!batch(ctx, &d->train_x, &d->train_y, NULL, first, c->batch_size, &x, &y) ||
            !lq_classifier_forward(ctx, m, x, LQ_QAT_CALIBRATE))
            st = ctx_err(ctx, err);
        lq_ctx_step_reset(ctx);
    }
    lq_ctx_set_grad(ctx, g);
    return st;
}

static int64_t float_bytes(const lq_classifier *m) {
    int64_t b = 0;
    for (int i = 0; i < m->n_layers; i++) b += 4 * (lq_numel(m->layers[i].weight) + lq_numel(m->layers[i].bias));
    return b;
}

/* Converts, exports (safetensors + HDF5), reads the safetensors back and evaluates the integer model. */
static lq_status convert_and_eval(const lq_qat_config *c, lq_classifier *m, const cls_data *d, lq_ctx *ctx,
                                  lq_qat_result *r, lq_err *err) {
    lq_qlayer *ls[LQ_CLS_MAX_LAYERS];
    for (int i = 0; i < m->n_layers; i++) {
        ls[i] = &m->layers[i];
        LQ_TRY(lq_qlayer_convert(ls[i], err));
    }
    char h5[600];
    snprintf(r->export_path, sizeof r->export_path, "%s/%s-%s.safetensors", c->output_dir, r->scheme, r->mode);
    snprintf(h5, sizeof h5, "%s/%s-%s.h5", c->output_dir, r->scheme, r->mode);
    LQ_TRY(lq_qat_export(r->export_path, h5, ls, m->n_layers, c->model, &r->size_bytes, err));
    LQ_TRY(lq_qat_import(r->export_path, ls, m->n_layers, err));
    double loss;
    return evaluate(c, m, d, LQ_QAT_INT, ctx, &r->int_metric, &loss, err);
}

static lq_status save_float(const lq_qat_config *c, const lq_classifier *m, lq_err *err) {
    char path[4200];
    snprintf(path, sizeof path, "%s/float.safetensors", c->output_dir);
    lq_st_wtensor t[2 * LQ_CLS_MAX_LAYERS];
    char names[2 * LQ_CLS_MAX_LAYERS][LQ_NAME_MAX + 8];
    int n = 0;
    for (int i = 0; i < m->n_layers; i++) {
        const lq_qlayer *l = &m->layers[i];
        for (int k = 0; k < 2; k++) {
            const lq_tensor *x = k ? l->bias : l->weight;
            snprintf(names[n], sizeof names[n], "%s.%s", l->name, k ? "bias" : "weight");
            t[n] = (lq_st_wtensor){names[n], LQ_ST_F32, x->ndim, {0}, x->data};
            for (int dd = 0; dd < x->ndim; dd++) t[n].shape[dd] = x->ne[dd];
            n++;
        }
    }
    lq_st_kv meta[1] = {{"model", c->model}};
    return lq_st_write(path, t, n, meta, 1, err);
}

static lq_status load_float(const lq_qat_config *c, lq_classifier *m, lq_err *err) {
    lq_st_file *f;
    LQ_TRY(lq_st_open(&f, c->float_model, err));
    lq_status st = LQ_OK;
    for (int i = 0; i < m->n_layers && st == LQ_OK; i++)
        for (int k = 0; k < 2 && st == LQ_OK; k++) {
            lq_tensor *x = k ? m->layers[i].bias : m->layers[i].weight;
            char nm[LQ_NAME_MAX + 8];
            snprintf(nm, sizeof nm, "%s.%s", m->layers[i].name, k ? "bias" : "weight");
            const lq_st_tensor *t = lq_st_find(f, nm);
            if (!t || t->numel != lq_numel(x))
                st = LQ_ERR(err, LQ_ERR_INPUT, "float_model '%s': tensor '%s' is %s (this %s needs %lld values)",
                            c->float_model, nm, t ? "the wrong size" : "missing", c->model, (long long)lq_numel(x));
            else
                st = lq_st_to_f32(t, x->data, err);
        }
    lq_st_close(f);
    return st;
}

lq_status lq_qat_cls_run(const lq_qat_config *c, const lq_qat_scheme *schemes, int n_schemes, bool compare,
                         lq_qat_log *log, lq_qat_result *res, int *n_res, lq_err *err) {
    *n_res = 0;
    lq_cls_arch arch;
    LQ_CHECK(err, lq_cls_arch_parse(c->model, &arch), LQ_ERR_INPUT, "%s: key 'model': '%s' is not mlp or cnn", c->source,
             c->model);
    cls_data d;
    lq_status st = load_data(c, &d, err);
    if (st != LQ_OK) {
        free_data(&d);
        return st;
    }
    lq_ctx *ctx = NULL;
    lq_ctx_opts co = {.n_threads = c->threads, .seed = c->seed};
    st = lq_ctx_init(&ctx, &co, err);
    lq_classifier base = {0};
    lq_qat_spec_user fu = {c, NULL};
    /* every scheme's layers are checked before any training: a bad spec is a config error now,
     * not after the float model has trained */
    for (int s = 0; s < n_schemes && st == LQ_OK && (compare || c->mode != LQ_QAT_RUN_FLOAT); s++) {
        lq_qat_spec_user u = {c, &schemes[s]};
        lq_classifier probe = {0};
        st = lq_classifier_init(&probe, arch, lq_qat_resolve_cb, &u, c->seed, 1, err);
        if (st != LQ_OK) {
            size_t l = strlen(err->msg);
            snprintf(err->msg + l, sizeof err->msg - l, " (scheme %s)", schemes[s].name ? schemes[s].name : "?");
        }
        lq_classifier_free(&probe);
    }
    if (st == LQ_OK) st = lq_classifier_init(&base, arch, lq_qat_resolve_cb, &fu, c->seed, c->threads, err);
    /* the pretrained float model: trained here (train:), or read from float_model */
    double t0 = lq_qat_now();
    if (st == LQ_OK && c->float_model) st = load_float(c, &base, err);
    else if (st == LQ_OK) {
        stage sg = {.run = "float", .cfg = &c->train, .mode = LQ_QAT_FLOAT};
        st = train_stage(c, &base, &d, &sg, ctx, log, err);
        if (st == LQ_OK) st = save_float(c, &base, err);
    }
    /* the float baseline and PTQ's starting point: the pretrained model fine-tuned in float with
     * the QAT stage's settings, so float, PTQ and QAT rows have had the same training (torchao's
     * comparison: QAT fine-tuning against the same fine-tuning followed by PTQ) */
    lq_classifier ft = {0};
    if (st == LQ_OK) st = lq_classifier_init(&ft, arch, lq_qat_resolve_cb, &fu, c->seed, c->threads, err);
    if (st == LQ_OK) st = lq_classifier_copy_weights(&ft, &base, err);
    if (st == LQ_OK) {
        stage sg = {.run = "float-finetune", .cfg = &c->qat, .mode = LQ_QAT_FLOAT};
        st = train_stage(c, &ft, &d, &sg, ctx, log, err);
    }
    if (st == LQ_OK) {
        lq_qat_result *r = &res[(*n_res)++];
        lq_qat_row(r, "float", "float", false);
        st = evaluate(c, &ft, &d, LQ_QAT_FLOAT, ctx, &r->metric, &r->loss, err);
        r->size_bytes = float_bytes(&ft);
        r->seconds = lq_qat_now() - t0;
        if (!log->quiet && st == LQ_OK) fprintf(stderr, "float: accuracy %.2f%%\n", r->metric);
    }
    bool want_ptq = compare || c->mode != LQ_QAT_RUN_FLOAT, want_qat = compare || c->mode == LQ_QAT_RUN_QAT;
    for (int s = 0; s < n_schemes && st == LQ_OK && (want_ptq || want_qat); s++) {
        const lq_qat_scheme *sc = &schemes[s];
        lq_qat_spec_user u = {c, sc};
        lq_classifier m = {0};
        st = lq_classifier_init(&m, arch, lq_qat_resolve_cb, &u, c->seed, c->threads, err);
        for (int i = 0; i < m.n_layers && st == LQ_OK && !log->quiet; i++)
            if (m.layers[i].group_fallback)
                fprintf(stderr, "%s: layer %s: the weight group does not divide its %lld inputs; quantized per channel\n",
                        sc->name, m.layers[i].name, (long long)(lq_numel(m.layers[i].weight) / m.layers[i].weight->ne[0]));
        /* PTQ of the float baseline: observers calibrated on its float activations */
        t0 = lq_qat_now();
        if (st == LQ_OK && want_ptq) {
            st = lq_classifier_copy_weights(&m, &ft, err);
            if (st == LQ_OK) st = calibrate(c, &m, &d, ctx, err);
            for (int i = 0; i < m.n_layers && st == LQ_OK; i++) st = lq_qlayer_init_learned(&m.layers[i], err);
            lq_qat_result *r = &res[(*n_res)++];
            lq_qat_row(r, sc->name, "ptq", false);
            if (st == LQ_OK) st = evaluate(c, &m, &d, LQ_QAT_FAKE, ctx, &r->metric, &r->loss, err);
            if (st == LQ_OK) st = convert_and_eval(c, &m, &d, ctx, r, err);
            r->seconds = lq_qat_now() - t0;
            if (!log->quiet && st == LQ_OK)
                fprintf(stderr, "%s ptq: accuracy %.2f%% (integer model %.2f%%), %lld bytes\n", sc->name, r->metric,
                        r->int_metric, (long long)r->size_bytes);
        }
        /* QAT starts from the pretrained model, observers calibrated on it first */
        if (st == LQ_OK && want_qat) {
            lq_classifier_free(&m);
            st = lq_classifier_init(&m, arch, lq_qat_resolve_cb, &u, c->seed, c->threads, err);
            if (st == LQ_OK) st = lq_classifier_copy_weights(&m, &base, err);
            if (st == LQ_OK) st = calibrate(c, &m, &d, ctx, err);
        }
        /* QAT: fine-tuning with fake quantization from the calibrated model */
        if (st == LQ_OK && want_qat) {
            char run[64];
            snprintf(run, sizeof run, "%s-qat", sc->name);
            t0 = lq_qat_now();
            stage sg = {.run = run, .cfg = &c->qat, .mode = LQ_QAT_FAKE, .fq_start = c->quantization.fake_quant_start_step,
                        .freeze = c->quantization.observer_freeze_step};
            st = train_stage(c, &m, &d, &sg, ctx, log, err);
            lq_qat_result *r = &res[(*n_res)++];
            lq_qat_row(r, sc->name, "qat", false);
            if (st == LQ_OK) st = evaluate(c, &m, &d, LQ_QAT_FAKE, ctx, &r->metric, &r->loss, err);
            if (st == LQ_OK) st = convert_and_eval(c, &m, &d, ctx, r, err);
            r->seconds = lq_qat_now() - t0;
            if (!log->quiet && st == LQ_OK)
                fprintf(stderr, "%s qat: accuracy %.2f%% (integer model %.2f%%), %lld bytes\n", sc->name, r->metric,
                        r->int_metric, (long long)r->size_bytes);
        }
        lq_classifier_free(&m);
    }
    lq_classifier_free(&ft);
    lq_classifier_free(&base);
    lq_ctx_free(ctx);
    free_data(&d);
    return st;
}
