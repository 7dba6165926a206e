/* train/cmd_train.c: `loquat train` and `loquat eval` (config -> trainer / validation loss). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "train/trainer_impl.h"

/* What a run's output folders held before it started, so a run refused for bad input (exit 2)
 * takes back what it made: the output folder, the token-cache folder and the cache files it wrote
 * (a refused run leaves nothing behind; files that were there before are never touched). */
typedef struct out_undo {
    bool out_existed, cache_existed;
    char cache[4096];
    bool had[2][LQ_CFG_MAX_DATASETS]; /* datasets-<i>.h5, test_datasets-<i>.h5 existed */
} out_undo;

static bool path_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

static void cache_file(const out_undo *u, int list, int i, char *buf, size_t n) {
    snprintf(buf, n, "%s/%s-%d.h5", u->cache, list ? "test_datasets" : "datasets", i);
}

static void undo_snapshot(out_undo *u, const lq_train_config *cfg) {
    memset(u, 0, sizeof *u);
    u->out_existed = path_exists(cfg->output_dir);
    /* the same folder train_data.c puts the token cache in */
    if (cfg->dataset_prepared_path) snprintf(u->cache, sizeof u->cache, "%s", cfg->dataset_prepared_path);
    else snprintf(u->cache, sizeof u->cache, "%s/cache", cfg->output_dir);
    u->cache_existed = path_exists(u->cache);
    char f[4200];
    for (int l = 0; l < 2; l++)
        for (int i = 0; i < LQ_CFG_MAX_DATASETS; i++) {
            cache_file(u, l, i, f, sizeof f);
            u->had[l][i] = path_exists(f);
        }
}

static void undo_apply(const out_undo *u, const lq_train_config *cfg, lq_status st) {
    if (st == LQ_OK || lq_status_exit_code(st) != 2) return;
    char f[4200];
    for (int l = 0; l < 2; l++)
        for (int i = 0; i < LQ_CFG_MAX_DATASETS; i++) {
            cache_file(u, l, i, f, sizeof f);
            if (!u->had[l][i]) unlink(f);
        }
    if (!u->cache_existed) rmdir(u->cache);      /* only if now empty */
    if (!u->out_existed) rmdir(cfg->output_dir); /* idem */
}

int lq_cmd_train(const char *config, const char *const *sets, int n_sets, const lq_trainer_opts *opts) {
    lq_train_config cfg;
    lq_err err = {0};
    if (lq_train_config_load(config, sets, n_sets, &cfg, &err) != LQ_OK) {
        fprintf(stderr, "loquat train: %s\n", err.msg);
        return lq_status_exit_code(err.status);
    }
    out_undo undo;
    undo_snapshot(&undo, &cfg);
    lq_trainer *t = NULL;
    lq_status st = lq_trainer_init(&t, &cfg, opts, &err);
    if (st == LQ_OK) st = lq_trainer_run(t, &err);
    lq_trainer_free(t);
    undo_apply(&undo, &cfg, st);
    if (st != LQ_OK && st != LQ_ERR_INTERRUPTED) fprintf(stderr, "loquat train: %s\n", err.msg);
    if (st == LQ_ERR_NUMERIC) { /* say which checkpoint a user can go back to */
        char **paths;
        int64_t *steps;
        int n = 0;
        lq_err e = {0};
        if (lq_ckpt_list(cfg.output_dir, &paths, &steps, &n, &e) == LQ_OK && n > 0) {
            fprintf(stderr, "training stopped; the last good checkpoint stays: %s\n", paths[n - 1]);
            lq_ckpt_list_free(paths, steps, n);
        } else {
            fprintf(stderr, "training stopped; no checkpoint had been saved yet\n");
        }
    }
    lq_train_config_free(&cfg);
    if (st == LQ_ERR_INTERRUPTED) return 130; /* the message was printed with the checkpoint's name */
    return st == LQ_OK ? 0 : lq_status_exit_code(st);
}

int lq_cmd_eval(const char *config, const char *const *sets, int n_sets, const char *adapter, bool json) {
    lq_train_config cfg;
    lq_err err = {0};
    if (lq_train_config_load(config, sets, n_sets, &cfg, &err) != LQ_OK) {
        fprintf(stderr, "loquat eval: %s\n", err.msg);
        return lq_status_exit_code(err.status);
    }
    lq_llama_model *m = NULL;
    lq_lm_tok tok = {0};
    lq_lora_set *set = NULL;
    lq_ctx *ctx = NULL;
    lq_train_data d;
    memset(&d, 0, sizeof d);
    double loss = NAN;
    int64_t ntok = 0;
    lq_status st = LQ_OK;
    out_undo undo;
    undo_snapshot(&undo, &cfg);
    lq_device_kind dev = LQ_DEVICE_CPU;
    st = lq_trn_device(&cfg, &dev, &err); /* before any work */
    if (st == LQ_OK) st = lq_mkdirs(cfg.output_dir, &err);
    if (st == LQ_OK) st = lq_trn_load_model(&cfg, &m, &tok, &err);
    if (st == LQ_OK && adapter) {
        st = lq_peft_load(&set, adapter, &err);
        if (st == LQ_OK) st = lq_llama_lora_attach(m, set, &err);
    }
    if (st == LQ_OK) st = lq_train_data_load(&d, &cfg, &tok, &err);
    if (st == LQ_OK && d.eval_rows.n_rows == 0)
        st = LQ_ERR(&err, LQ_ERR_INPUT, "%s: no validation set: set val_set_size or test_datasets", cfg.source);
    if (st == LQ_OK && dev == LQ_DEVICE_CUDA) st = lq_trn_to_device(m, set, &err);
    if (st == LQ_OK) {
        int threads = cfg.threads > 0 ? cfg.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
        lq_ctx_opts co = {.n_threads = threads > 0 ? threads : 1, .seed = cfg.seed, .device = dev,
                          .cuda_math = (lq_cuda_math)cfg.cuda_math};
        st = lq_ctx_init(&ctx, &co, &err);
    }
    if (st == LQ_OK)
        st = lq_trn_eval(ctx, m, &d.eval_rows, cfg.micro_batch_size, cfg.gradient_checkpointing, &loss, &ntok, &err);
    if (st == LQ_OK) {
        printf("eval: loss %.4f ppl %.3f (%lld tokens)\n", loss, exp(loss), (long long)ntok);
        cJSON *o = json ? cJSON_CreateObject() : NULL;
        if (o) {
            cJSON_AddNumberToObject(o, "eval_loss", loss);
            cJSON_AddNumberToObject(o, "eval_ppl", exp(loss));
            cJSON_AddNumberToObject(o, "tokens", (double)ntok);
            if (adapter) cJSON_AddStringToObject(o, "adapter", adapter);
            else cJSON_AddNullToObject(o, "adapter");
            char *s = cJSON_PrintUnformatted(o);
            if (s) printf("%s\n", s);
            free(s);
            cJSON_Delete(o);
        }
    } else {
        fprintf(stderr, "loquat eval: %s\n", err.msg);
    }
    lq_ctx_free(ctx);
    lq_train_data_free(&d);
    lq_llama_free(m);
    lq_lora_set_free(set);
    lq_lm_tok_free(&tok);
    undo_apply(&undo, &cfg, st);
    lq_train_config_free(&cfg);
    return st == LQ_OK ? 0 : lq_status_exit_code(st);
}
