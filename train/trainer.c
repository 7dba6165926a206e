/* train/trainer.c: setting up a fine-tuning run (model, adapters, optimizer, data) and resuming it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/cuda.h"
#include "train/mem.h"
#include "train/trainer_impl.h"

lq_status lq_trn_load_model(const lq_train_config *cfg, lq_llama_model **model, lq_lm_tok *tok, lq_err *err) {
    *model = NULL;
    memset(tok, 0, sizeof *tok);
    struct stat sb;
    if (!cfg->base_model || stat(cfg->base_model, &sb) != 0)
        return LQ_ERR(err, LQ_ERR_INPUT, "base_model: %s: no such file or folder", cfg->base_model ? cfg->base_model : "(none)");
    lq_llama_load_opts lo = {.quant = LQ_BASE_KEEP, .block_size = cfg->quant_block_size,
                             .double_quant = cfg->bnb_4bit_use_double_quant};
    if (cfg->load_in_4bit && !cfg->base_quant_native)
        lo.quant = cfg->bnb_4bit_quant_type == LQ_DTYPE_FP4 ? LQ_BASE_FP4 : LQ_BASE_NF4;
    LQ_TRY(lq_llama_load_ex(cfg->base_model, &lo, model, err));
    lq_status st = lq_lm_tok_load(cfg->base_model, lq_llama_model_config(*model), tok, err);
    if (st != LQ_OK) {
        lq_llama_free(*model);
        *model = NULL;
    }
    return st;
}

lq_status lq_trn_device(const lq_train_config *cfg, lq_device_kind *dev, lq_err *err) {
    *dev = LQ_DEVICE_CPU;
    if (!cfg->device || strcmp(cfg->device, "cuda") != 0) return LQ_OK;
    const char *src = cfg->source && *cfg->source ? cfg->source : "(config)";
    /* a CPU build cannot do what the config asks: a config problem (exit 2); a CUDA build on a
     * machine without a usable device is a runtime one (exit 1) */
    if (!lq_cuda_built())
        return LQ_ERR(err, LQ_ERR_INPUT,
                      "%s: key 'device': cuda asked for, but this build has no CUDA backend (rebuild with make CUDA=1, "
                      "or set device: cpu)", src);
    char why[512];
    if (lq_cuda_devices(why, sizeof why) < 1)
        return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "%s: key 'device': cuda asked for, but no CUDA device is usable (%s)", src,
                      why);
    *dev = LQ_DEVICE_CUDA;
    return LQ_OK;
}

lq_status lq_trn_to_device(lq_llama_model *m, lq_lora_set *set, lq_err *err) {
    LQ_TRY(lq_llama_to_device(m, err));
    return set ? lq_params_to_device(set->params, err) : LQ_OK;
}

static lq_status make_adapters(lq_trainer *t, lq_err *err) {
    const lq_train_config *c = t->cfg;
    lq_lora_cfg lc = {.r = c->lora_r, .alpha = (float)c->lora_alpha, .dropout = (float)c->lora_dropout,
                      .rslora = c->use_rslora, .targets = c->lora_targets};
    if (!c->lora_model_dir) {
        LQ_TRY(lq_llama_lora_create(t->model, &lc, c->seed, &t->set, err));
    } else {
        LQ_TRY(lq_peft_load(&t->set, c->lora_model_dir, err));
        if (t->set->cfg.r != lc.r || t->set->cfg.alpha != lc.alpha)
            return LQ_ERR(err, LQ_ERR_INPUT, "lora_model_dir %s has r=%d lora_alpha=%g, the config says lora_r=%d lora_alpha=%g",
                          c->lora_model_dir, t->set->cfg.r, (double)t->set->cfg.alpha, lc.r, (double)lc.alpha);
        /* the run's dropout is the config's (the folder's value describes its own training) */
        t->set->cfg.dropout = lc.dropout;
        for (int i = 0; i < t->set->n; i++) t->set->mods[i].dropout = lc.dropout;
        LQ_TRY(lq_llama_lora_attach(t->model, t->set, err));
    }
    snprintf(t->set->base_model, sizeof t->set->base_model, "%s", c->base_model);
    return LQ_OK;
}

lq_status lq_trainer_init(lq_trainer **out, const lq_train_config *cfg, const lq_trainer_opts *opts, lq_err *err) {
    *out = NULL;
    lq_device_kind dev;
    LQ_TRY(lq_trn_device(cfg, &dev, err)); /* before any work */
    if (!cfg->output_dir || !*cfg->output_dir) return LQ_ERR(err, LQ_ERR_INPUT, "output_dir: required");
    /* A run that cannot fit is refused before anything big is allocated (the estimate reads only
     * the model's header and the data files' sizes); a failed estimate is not fatal here: the
     * load that follows reports a bad model or dataset with its own message. */
    lq_mem_estimate me;
    lq_err me_err;
    lq_err_clear(&me_err);
    if (lq_mem_estimate_run(cfg, &me, &me_err) == LQ_OK) {
        if (dev == LQ_DEVICE_CUDA) { /* the activations live on the device, not in host memory */
            me.total -= cfg->gradient_checkpointing ? me.activations_ckpt : me.activations;
            me.total_other = me.total;
        }
        if (lq_mem_check(&me, &me_err) != LQ_OK) return LQ_ERR(err, LQ_ERR_INPUT, "%s", me_err.msg);
    }
    lq_trainer *t = calloc(1, sizeof *t);
    if (!t) return LQ_ERR(err, LQ_ERR_OOM, "trainer");
    t->cfg = cfg;
    if (opts) t->opts = *opts;
    t->eval_before = NAN;
    t->threads = cfg->threads > 0 ? cfg->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (t->threads < 1) t->threads = 1;
    lq_status st = lq_mkdirs(cfg->output_dir, err);
    if (st == LQ_OK) st = lq_trn_load_model(cfg, &t->model, &t->tok, err);
    if (st == LQ_OK) st = lq_train_data_load(&t->data, cfg, &t->tok, err);
    if (st == LQ_OK) st = make_adapters(t, err);
    /* device: cuda: the frozen base and the adapter block move once made (a resume later uploads
     * its values into the device block); the optimizer then makes its moments there */
    if (st == LQ_OK && dev == LQ_DEVICE_CUDA) st = lq_trn_to_device(t->model, t->set, err);
    if (st == LQ_OK) {
        lq_ctx_opts co = {.n_threads = t->threads, .seed = cfg->seed, .device = dev,
                          .cuda_math = (lq_cuda_math)cfg->cuda_math};
        st = lq_ctx_init(&t->ctx, &co, err);
        if (st == LQ_OK) lq_ctx_set_release_grads(t->ctx, true); /* free activation grads once used */
    }
    if (st == LQ_OK) {
        lq_adamw_cfg ac = {.lr = (float)cfg->learning_rate, .beta1 = (float)cfg->adam_beta1, .beta2 = (float)cfg->adam_beta2,
                           .eps = (float)cfg->adam_epsilon, .weight_decay = (float)cfg->weight_decay, .n_threads = t->threads};
        st = lq_adamw_init(&t->opt, t->set->params, &ac, err);
        t->have_opt = st == LQ_OK;
    }
    if (st == LQ_OK && !(t->yaml = lq_train_config_to_yaml(cfg))) st = LQ_ERR(err, LQ_ERR_OOM, "resolved config");
    if (st != LQ_OK) {
        lq_trainer_free(t);
        return st;
    }
    lq_ctx_set_training(t->ctx, true);
    int64_t need = cfg->micro_batch_size * cfg->gradient_accumulation_steps;
    t->steps_per_epoch = t->data.rows_per_epoch / need;
    t->total = cfg->max_steps > 0 ? cfg->max_steps : cfg->num_epochs * t->steps_per_epoch;
    t->warmup = cfg->warmup_steps > 0 ? cfg->warmup_steps : (int64_t)ceil(cfg->warmup_ratio * (double)t->total);
    *out = t;
    return LQ_OK;
}

void lq_trainer_free(lq_trainer *t) {
    if (!t) return;
    lq_metrics_close(&t->metrics);
    if (t->have_opt) lq_adamw_free(&t->opt);
    lq_ctx_free(t->ctx);
    lq_train_data_free(&t->data);
    lq_llama_free(t->model);
    lq_lora_set_free(t->set);
    lq_lm_tok_free(&t->tok);
    free(t->yaml);
    free(t);
}

/* --- checkpoints ------------------------------------------------------------------------------ */

/* Host copies of the adapter block and the AdamW moments for a checkpoint: the arrays themselves
 * on the CPU (*buf NULL), a download into *buf (3 numel floats, to free) on the device. */
static lq_status host_state(lq_trainer *t, const float **params, const float **m, const float **v, float **buf,
                            lq_err *err) {
    lq_params *p = t->set->params;
    int64_t n = lq_params_numel(p);
    *buf = NULL;
    if (lq_params_device(p) != LQ_DEVICE_CUDA && !t->opt.on_device) {
        *params = lq_params_data(p);
        *m = t->opt.m;
        *v = t->opt.v;
        return LQ_OK;
    }
    float *b = malloc((size_t)(3 * n > 0 ? 3 * n : 1) * sizeof(float));
    if (!b) return LQ_ERR(err, LQ_ERR_OOM, "out of memory for a host copy of %lld adapter values", (long long)n);
    lq_status st = LQ_OK;
    if (lq_params_device(p) == LQ_DEVICE_CUDA) {
        st = lq_cuda_sync(NULL, err); /* the last update may still be running on another stream */
        if (st == LQ_OK) st = lq_cuda_copy(b, lq_params_data(p), (size_t)n * sizeof(float), LQ_COPY_D2H, NULL, err);
    } else {
        memcpy(b, lq_params_data(p), (size_t)n * sizeof(float));
    }
    if (st == LQ_OK) st = lq_adamw_state_get(&t->opt, b + n, b + 2 * n, err);
    if (st != LQ_OK) {
        free(b);
        return st;
    }
    *params = b;
    *m = b + n;
    *v = b + 2 * n;
    *buf = b;
    return LQ_OK;
}

lq_status lq_trn_save(lq_trainer *t, const lq_trn_pos *pos, char *path, size_t path_n, lq_err *err) {
    snprintf(path, path_n, "%s/checkpoint-%lld.h5", t->cfg->output_dir, (long long)pos->step);
    const float *hp = NULL, *hm = NULL, *hv = NULL;
    float *buf = NULL;
    LQ_TRY(host_state(t, &hp, &hm, &hv, &buf, err));
    char(*mods)[LQ_NAME_MAX] = calloc((size_t)(t->set->n ? t->set->n : 1), LQ_NAME_MAX);
    if (!mods) {
        free(buf);
        return LQ_ERR(err, LQ_ERR_OOM, "checkpoint module names");
    }
    for (int i = 0; i < t->set->n; i++) snprintf(mods[i], LQ_NAME_MAX, "%s", t->set->mods[i].module);
    lq_ckpt c = {.step = pos->step, .epoch = pos->epoch, .row = pos->row, .micro = pos->micro, .adam_t = t->opt.t,
                 .n_skipped = t->n_skipped, .seed = t->cfg->seed, .eval_before = t->eval_before,
                 .numel = lq_params_numel(t->set->params), .params = (float *)hp, .m = (float *)hm,
                 .v = (float *)hv, .n_mods = t->set->n, .mods = mods, .config = t->yaml};
    lq_status st = lq_ckpt_save(path, &c, err);
    free(mods);
    free(buf);
    if (st == LQ_OK) st = lq_ckpt_prune(t->cfg->output_dir, t->cfg->save_total_limit, err);
    return st;
}

static bool str_eq(const char *a, const char *b) { return (!a && !b) || (a && b && strcmp(a, b) == 0); }

static bool ds_eq(const lq_dataset_cfg *a, int na, const lq_dataset_cfg *b, int nb) {
    if (na != nb) return false;
    for (int i = 0; i < na; i++)
        if (!str_eq(a[i].path, b[i].path) || a[i].type != b[i].type) return false;
    return true;
}

/* The keys a checkpoint's state depends on: model, adapter and data. NULL when they all match. */
static const char *incompatible(const lq_train_config *o, const lq_train_config *n) {
    if (!str_eq(o->base_model, n->base_model)) return "base_model";
    if (o->load_in_4bit != n->load_in_4bit || o->base_quant_native != n->base_quant_native) return "load_in_4bit / base_quant";
    if (o->bnb_4bit_quant_type != n->bnb_4bit_quant_type) return "bnb_4bit_quant_type";
    if (o->bnb_4bit_use_double_quant != n->bnb_4bit_use_double_quant) return "bnb_4bit_use_double_quant";
    if (o->quant_block_size != n->quant_block_size) return "quant_block_size";
    if (o->lora_r != n->lora_r) return "lora_r";
    if (o->lora_alpha != n->lora_alpha) return "lora_alpha";
    if (o->lora_dropout != n->lora_dropout) return "lora_dropout";
    if (o->lora_targets != n->lora_targets) return "lora_target_modules";
    if (o->use_rslora != n->use_rslora) return "use_rslora";
    if (!ds_eq(o->datasets, o->n_datasets, n->datasets, n->n_datasets)) return "datasets";
    if (!ds_eq(o->test_datasets, o->n_test_datasets, n->test_datasets, n->n_test_datasets)) return "test_datasets";
    if (o->val_set_size != n->val_set_size) return "val_set_size";
    if (o->sequence_len != n->sequence_len) return "sequence_len";
    if (o->sample_packing != n->sample_packing) return "sample_packing";
    if (o->micro_batch_size != n->micro_batch_size) return "micro_batch_size";
    if (o->gradient_accumulation_steps != n->gradient_accumulation_steps) return "gradient_accumulation_steps";
    if (o->seed != n->seed) return "seed";
    return NULL;
}

/* Prints every line of the new resolved config the checkpoint's does not have (allowed changes). */
static void warn_changes(const char *old_yaml, const char *new_yaml, const char *path) {
    for (const char *p = new_yaml; *p;) {
        const char *e = strchr(p, '\n');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        bool found = false;
        for (const char *q = old_yaml; *q && !found;) {
            const char *qe = strchr(q, '\n');
            size_t qn = qe ? (size_t)(qe - q) : strlen(q);
            found = qn == n && memcmp(p, q, n) == 0;
            q = qe ? qe + 1 : q + qn;
        }
        if (!found && n && strncmp(p, "output_dir:", 11) != 0 && strncmp(p, "resume_from_checkpoint:", 23) != 0)
            fprintf(stderr, "warning: resuming from %s with a changed setting: %.*s\n", path, (int)n, p);
        p = e ? e + 1 : p + n;
    }
}

/* Validates a loaded checkpoint against this run; NULL when it fits, else why not. */
static const char *check_fit(lq_trainer *t, const lq_ckpt *c, const char *path, char *why, size_t wn) {
    /* the stored config first: a checkpoint of another run is best told by the key that differs */
    lq_train_config old;
    lq_err e = {0};
    if (lq_train_config_parse(c->config, strlen(c->config), path, NULL, 0, &old, &e) != LQ_OK) {
        snprintf(why, wn, "its stored config does not parse: %.400s", e.msg);
        return why;
    }
    const char *key = incompatible(&old, t->cfg);
    if (key) snprintf(why, wn, "it was made with another '%s' (the model, adapter and data keys must match)", key);
    lq_train_config_free(&old);
    if (key) return why;
    if (c->numel != lq_params_numel(t->set->params) || c->n_mods != t->set->n) {
        snprintf(why, wn, "its adapters (%d modules, %lld values) are not this run's (%d modules, %lld values)", c->n_mods,
                 (long long)c->numel, t->set->n, (long long)lq_params_numel(t->set->params));
        return why;
    }
    for (int i = 0; i < c->n_mods; i++)
        if (strcmp(c->mods[i], t->set->mods[i].module) != 0) {
            snprintf(why, wn, "module %d is %s, this run has %s", i, c->mods[i], t->set->mods[i].module);
            return why;
        }
    int64_t need = t->cfg->micro_batch_size * t->cfg->gradient_accumulation_steps;
    if (c->row > t->steps_per_epoch * need || c->row % t->cfg->micro_batch_size != 0 || c->seed != t->cfg->seed) {
        snprintf(why, wn, "its data position (epoch %lld, row %lld) does not fit this run", (long long)c->epoch, (long long)c->row);
        return why;
    }
    for (int64_t i = 0; i < c->numel; i++)
        if (!isfinite(c->params[i]) || !isfinite(c->m[i]) || !isfinite(c->v[i]) || c->v[i] < 0) {
            snprintf(why, wn, "non-finite adapter or optimizer values");
            return why;
        }
    warn_changes(c->config, t->yaml, path);
    return NULL;
}

static lq_status restore(lq_trainer *t, const lq_ckpt *c, lq_trn_pos *pos, lq_err *err) {
    lq_params *p = t->set->params;
    if (lq_params_device(p) == LQ_DEVICE_CUDA) {
        LQ_TRY(lq_cuda_sync(NULL, err));
        LQ_TRY(lq_cuda_copy(lq_params_data(p), c->params, (size_t)c->numel * sizeof(float), LQ_COPY_H2D, NULL, err));
    } else {
        memcpy(lq_params_data(p), c->params, (size_t)c->numel * sizeof(float));
    }
    LQ_TRY(lq_adamw_state_set(&t->opt, c->m, c->v, err));
    t->opt.t = c->adam_t;
    t->n_skipped = c->n_skipped;
    t->eval_before = c->eval_before;
    *pos = (lq_trn_pos){c->step, c->epoch, c->row, c->micro};
    return LQ_OK;
}

lq_status lq_trn_resume(lq_trainer *t, lq_trn_pos *pos, bool *resumed, lq_err *err) {
    *resumed = false;
    const char *from = t->cfg->resume_from_checkpoint;
    if (!t->opts.resume && !from) return LQ_OK;
    if (!from) from = t->cfg->output_dir;
    struct stat sb;
    if (stat(from, &sb) != 0) return LQ_ERR(err, LQ_ERR_INPUT, "resume_from_checkpoint: %s: no such file or folder", from);
    char **paths = NULL;
    int64_t *steps = NULL;
    int n = 0;
    if (S_ISDIR(sb.st_mode)) {
        LQ_TRY(lq_ckpt_list(from, &paths, &steps, &n, err));
    } else {
        paths = malloc(sizeof *paths);
        steps = malloc(sizeof *steps);
        if (!paths || !steps || !(paths[0] = strdup(from))) {
            free(paths);
            free(steps);
            return LQ_ERR(err, LQ_ERR_OOM, "checkpoint list");
        }
        n = 1;
    }
    lq_status st = LQ_OK;
    for (int i = n - 1; i >= 0 && !*resumed; i--) {
        lq_ckpt c;
        lq_err e = {0};
        char why[LQ_ERR_MSG_MAX];
        if (lq_ckpt_load(paths[i], &c, &e) != LQ_OK) {
            fprintf(stderr, "warning: skipping checkpoint %s\n", e.msg);
            continue;
        }
        const char *bad = check_fit(t, &c, paths[i], why, sizeof why);
        if (bad) fprintf(stderr, "warning: skipping checkpoint %s: %s\n", paths[i], bad);
        else if ((st = restore(t, &c, pos, err)) != LQ_OK) {
            lq_ckpt_free(&c);
            break; /* the device refused the values: not a checkpoint problem, so no fallback */
        } else {
            *resumed = true;
            fprintf(stderr, "resuming from %s (step %lld)\n", paths[i], (long long)pos->step);
        }
        lq_ckpt_free(&c);
    }
    if (!*resumed && st == LQ_OK)
        st = LQ_ERR(err, LQ_ERR_INPUT, "%s: no usable checkpoint to resume from%s", from,
                    n ? " (every one was skipped; see the warnings)" : " (no checkpoint-<step>.h5 there)");
    lq_ckpt_list_free(paths, steps, n);
    return st;
}
