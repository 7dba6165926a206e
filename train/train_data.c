/* train/train_data.c: the trainer's data pipeline (pipeline.md 1-3, 7): cached documents, split, epoch rows, eval. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "train/trainer_impl.h"

static lq_status load_list(const lq_dataset_cfg *ds, int n, const char *prefix, const char *cache_dir,
                           const lq_lm_tok *tok, lq_docs *docs, lq_err *err) {
    for (int i = 0; i < n; i++) {
        struct stat sb;
        if (!ds[i].path || stat(ds[i].path, &sb) != 0)
            return LQ_ERR(err, LQ_ERR_INPUT, "%s.%d.path: %s: no such file or folder", prefix, i,
                          ds[i].path ? ds[i].path : "(none)");
        char cpath[4096];
        if ((size_t)snprintf(cpath, sizeof cpath, "%s/%s-%d.h5", cache_dir, prefix, i) >= sizeof cpath)
            return LQ_ERR(err, LQ_ERR_INPUT, "%s: path too long", cache_dir);
        lq_data_opts o = {.format = ds[i].type, .eos_id = tok->stop[0], .add_special = tok->add_bos,
                          .chat_template = tok->chat_template};
        LQ_TRY(lq_data_load_cached(tok->tok, ds[i].path, &o, cpath, docs, NULL, err));
    }
    return LQ_OK;
}

/* Rows of docs[order[0..n)]: packed end to end, or (no packing) one row per document holding its
 * first seq_len tokens (lq_pack of that document alone, first row), padded. */
static lq_status make_rows(const lq_docs *docs, const size_t *order, size_t n, int64_t seq_len, bool packing,
                           int32_t pad, lq_packed *out, lq_err *err) {
    memset(out, 0, sizeof *out);
    out->seq_len = seq_len;
    if (n == 0) return LQ_OK;
    if (packing) return lq_pack(docs, order, n, seq_len, pad, out, err);
    size_t cells = n * (size_t)seq_len;
    out->ids = malloc(cells * sizeof(int32_t));
    out->labels = malloc(cells * sizeof(int32_t));
    out->doc_ids = malloc(cells * sizeof(int32_t));
    out->positions = malloc(cells * sizeof(int32_t));
    if (!out->ids || !out->labels || !out->doc_ids || !out->positions) {
        lq_packed_free(out);
        return LQ_ERR(err, LQ_ERR_OOM, "%zu rows of %lld tokens", n, (long long)seq_len);
    }
    out->n_rows = (int64_t)n;
    for (size_t i = 0; i < n; i++) {
        size_t one = order ? order[i] : i;
        lq_packed p;
        lq_status st = lq_pack(docs, &one, 1, seq_len, pad, &p, err);
        if (st != LQ_OK) {
            lq_packed_free(out);
            return st;
        }
        size_t o = i * (size_t)seq_len, b = (size_t)seq_len * sizeof(int32_t);
        memcpy(out->ids + o, p.ids, b);
        memcpy(out->labels + o, p.labels, b);
        memcpy(out->doc_ids + o, p.doc_ids, b);
        memcpy(out->positions + o, p.positions, b);
        lq_packed_free(&p);
    }
    return LQ_OK;
}

lq_status lq_train_data_load(lq_train_data *d, const lq_train_config *cfg, const lq_lm_tok *tok, lq_err *err) {
    memset(d, 0, sizeof *d);
    d->epoch_loaded = -1;
    d->seq_len = cfg->sequence_len;
    d->packing = cfg->sample_packing;
    if (tok->n_stop < 1) return LQ_ERR(err, LQ_ERR_INPUT, "%s: the tokenizer has no end-of-sequence token", cfg->base_model);
    d->pad_id = tok->stop[0];
    char cache_dir[4096];
    if (cfg->dataset_prepared_path) snprintf(cache_dir, sizeof cache_dir, "%s", cfg->dataset_prepared_path);
    else snprintf(cache_dir, sizeof cache_dir, "%s/cache", cfg->output_dir);
    lq_status st = lq_mkdirs(cache_dir, err);
    if (st == LQ_OK) st = load_list(cfg->datasets, cfg->n_datasets, "datasets", cache_dir, tok, &d->docs, err);
    if (st == LQ_OK) st = load_list(cfg->test_datasets, cfg->n_test_datasets, "test_datasets", cache_dir, tok, &d->test_docs, err);
    if (st != LQ_OK) return st;
    size_t n = d->docs.n;
    if (n == 0) return LQ_ERR(err, LQ_ERR_INPUT, "%s: the datasets hold no documents", cfg->source);
    d->use_test = cfg->n_test_datasets > 0;
    double frac = 0;
    if (!d->use_test && cfg->val_set_size > 0) {
        frac = cfg->val_set_size < 1 ? cfg->val_set_size : cfg->val_set_size / (double)n;
        if (!(frac < 1))
            return LQ_ERR(err, LQ_ERR_INPUT, "val_set_size %g: the datasets hold only %zu documents", cfg->val_set_size, n);
    }
    if (frac > 0) {
        LQ_TRY(lq_data_split(n, frac, cfg->seed, &d->train, &d->n_train, &d->eval, &d->n_eval, err));
    } else {
        /* no split (val_set_size 0, or test_datasets): the training documents in file order */
        if (!(d->train = malloc(n * sizeof *d->train))) return LQ_ERR(err, LQ_ERR_OOM, "%zu document indices", n);
        for (size_t i = 0; i < n; i++) d->train[i] = i;
        d->n_train = n;
    }
    if (d->n_train == 0) return LQ_ERR(err, LQ_ERR_INPUT, "%s: no training documents left after the split", cfg->source);
    if (d->use_test) {
        free(d->eval);
        d->eval = NULL;
        d->n_eval = d->test_docs.n;
        LQ_TRY(make_rows(&d->test_docs, NULL, d->test_docs.n, d->seq_len, d->packing, d->pad_id, &d->eval_rows, err));
    } else {
        LQ_TRY(make_rows(&d->docs, d->eval, d->n_eval, d->seq_len, d->packing, d->pad_id, &d->eval_rows, err));
    }
    /* rows per epoch do not depend on the order: packing lays the same tokens end to end */
    LQ_TRY(lq_train_data_epoch(d, cfg->seed, 0, err));
    d->rows_per_epoch = d->epoch_rows.n_rows;
    int64_t need = cfg->micro_batch_size * cfg->gradient_accumulation_steps;
    if (d->rows_per_epoch / need == 0)
        return LQ_ERR(err, LQ_ERR_INPUT,
                      "datasets (%s%s): too small for one step: %lld rows of %lld tokens, a step needs %lld "
                      "(micro_batch_size x gradient_accumulation_steps)",
                      cfg->n_datasets > 0 ? cfg->datasets[0].path : "", cfg->n_datasets > 1 ? ", ..." : "",
                      (long long)d->rows_per_epoch, (long long)d->seq_len, (long long)need);
    return LQ_OK;
}

lq_status lq_train_data_epoch(lq_train_data *d, uint64_t seed, int64_t epoch, lq_err *err) {
    if (d->epoch_loaded == epoch) return LQ_OK;
    lq_packed_free(&d->epoch_rows);
    memset(&d->epoch_rows, 0, sizeof d->epoch_rows);
    d->epoch_loaded = -1;
    size_t *perm = malloc(d->n_train * sizeof *perm), *order = malloc(d->n_train * sizeof *order);
    lq_status st = perm && order ? LQ_OK : LQ_ERR(err, LQ_ERR_OOM, "epoch order of %zu documents", d->n_train);
    if (st == LQ_OK) st = lq_data_shuffle(d->n_train, seed + 1 + (uint64_t)epoch, perm, err);
    if (st == LQ_OK) {
        for (size_t i = 0; i < d->n_train; i++) order[i] = d->train[perm[i]];
        st = make_rows(&d->docs, order, d->n_train, d->seq_len, d->packing, d->pad_id, &d->epoch_rows, err);
    }
    free(perm);
    free(order);
    if (st == LQ_OK) {
        if (d->rows_per_epoch && d->epoch_rows.n_rows != d->rows_per_epoch)
            return LQ_ERR(err, LQ_ERR_INTERNAL, "epoch %lld has %lld rows, epoch 0 had %lld", (long long)epoch,
                          (long long)d->epoch_rows.n_rows, (long long)d->rows_per_epoch);
        d->epoch_loaded = epoch;
    }
    return st;
}

void lq_train_data_free(lq_train_data *d) {
    lq_docs_free(&d->docs);
    lq_docs_free(&d->test_docs);
    free(d->train);
    free(d->eval);
    lq_packed_free(&d->epoch_rows);
    lq_packed_free(&d->eval_rows);
    memset(d, 0, sizeof *d);
}

static lq_tensor *i32_rows(lq_ctx *ctx, const int32_t *src, int64_t b, int64_t t) {
    int64_t shape[2] = {b, t};
    lq_tensor *x = lq_new(ctx, LQ_DTYPE_I32, 2, shape);
    if (x) memcpy(x->data, src, (size_t)(b * t) * sizeof(int32_t));
    return x;
}

lq_status lq_trn_batch(lq_ctx *ctx, const lq_packed *p, int64_t r0, int64_t b, lq_tensor **ids, lq_tensor **labels,
                       lq_tensor **pos, lq_tensor **doc, lq_err *err) {
    if (r0 < 0 || b < 1 || r0 + b > p->n_rows) return LQ_ERR(err, LQ_ERR_INTERNAL, "rows %lld..%lld of %lld", (long long)r0, (long long)(r0 + b), (long long)p->n_rows);
    size_t o = (size_t)(r0 * p->seq_len);
    *ids = i32_rows(ctx, p->ids + o, b, p->seq_len);
    *labels = i32_rows(ctx, p->labels + o, b, p->seq_len);
    *pos = i32_rows(ctx, p->positions + o, b, p->seq_len);
    *doc = i32_rows(ctx, p->doc_ids + o, b, p->seq_len);
    if (!*ids || !*labels || !*pos || !*doc) {
        const lq_err *e = lq_ctx_error(ctx);
        return LQ_ERR(err, lq_ctx_status(ctx) ? lq_ctx_status(ctx) : LQ_ERR_OOM, "batch: %s", e ? e->msg : "out of memory");
    }
    return LQ_OK;
}

lq_status lq_trn_eval(lq_ctx *ctx, lq_llama_model *m, const lq_packed *rows, int64_t micro_batch, bool ckpt,
                      double *loss, int64_t *n_tokens, lq_err *err) {
    *loss = NAN;
    *n_tokens = 0;
    bool grad = lq_ctx_set_grad(ctx, false), train = lq_ctx_set_training(ctx, false);
    double sum = 0;
    int64_t count = 0;
    lq_status st = LQ_OK;
    for (int64_t r = 0; r < rows->n_rows && st == LQ_OK; r += micro_batch) {
        int64_t b = rows->n_rows - r < micro_batch ? rows->n_rows - r : micro_batch;
        lq_tensor *ids, *labels, *pos, *doc;
        st = lq_trn_batch(ctx, rows, r, b, &ids, &labels, &pos, &doc, err);
        if (st != LQ_OK) break;
        lq_llama_fwd_opts fo = {.positions = pos, .doc = doc, .checkpoint = ckpt};
        int64_t nc = 0;
        lq_tensor *l = lq_llama_loss(ctx, m, ids, labels, &fo, &nc);
        if (!l || lq_ctx_status(ctx) != LQ_OK) {
            const lq_err *e = lq_ctx_error(ctx);
            st = LQ_ERR(err, lq_ctx_status(ctx) ? lq_ctx_status(ctx) : LQ_ERR_INTERNAL, "evaluation: %s", e ? e->msg : "?");
            break;
        }
        float lv = lq_ctx_device(ctx) == LQ_DEVICE_CUDA ? lq_tensor_get_f32(ctx, l, 0) : *(const float *)l->data;
        if (lq_ctx_status(ctx) != LQ_OK) {
            st = LQ_ERR(err, lq_ctx_status(ctx), "evaluation: %s", lq_ctx_error(ctx)->msg);
            break;
        }
        sum += (double)lv;
        count += nc;
        lq_ctx_step_reset(ctx);
    }
    lq_ctx_step_reset(ctx);
    lq_ctx_set_grad(ctx, grad);
    lq_ctx_set_training(ctx, train);
    if (st != LQ_OK) return st;
    if (count == 0) return LQ_ERR(err, LQ_ERR_INPUT, "the validation set has no tokens to predict");
    *loss = sum / (double)count;
    *n_tokens = count;
    return LQ_OK;
}
