/* train/qat_lm.c: language-model QAT (`loquat qat` with a GGUF / Hugging Face model): the decoder
 * linears of a Llama model fine-tuned in float (the baseline; PTQ quantizes it) and with fake
 * quantization (QAT), perplexity on held-out text, integer conversion and export. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "models/models.h"
#include "train/qat_impl.h"
#include "train/trainer_impl.h"

typedef struct lm_env {
    const lq_qat_config *c;
    lq_train_config tc; /* the data pipeline's view of the config */
    lq_llama_model *m;
    lq_lm_tok tok;
    lq_train_data data;
    lq_packed eval;     /* eval_rows of the validation rows */
    lq_ctx *ctx;
    float *pretrained;  /* the loaded model's linear weights */
} lm_env;

static lq_status ctx_err(lq_ctx *ctx, const char *what, lq_err *err) {
    const lq_err *e = lq_ctx_error(ctx);
    return LQ_ERR(err, lq_ctx_status(ctx) ? lq_ctx_status(ctx) : LQ_ERR_INTERNAL, "%s: %s", what, e ? e->msg : "?");
}

static lq_status env_init(lm_env *e, const lq_qat_config *c, lq_err *err) {
    memset(e, 0, sizeof *e);
    e->c = c;
    lq_train_config_defaults(&e->tc);
    lq_train_config *t = &e->tc;
    t->source = c->source, t->base_model = c->model, t->output_dir = c->output_dir;
    memcpy(t->datasets, c->datasets, sizeof t->datasets), t->n_datasets = c->n_datasets;
    memcpy(t->test_datasets, c->test_datasets, sizeof t->test_datasets), t->n_test_datasets = c->n_test_datasets;
    t->sequence_len = c->sequence_len, t->sample_packing = true;
    t->micro_batch_size = c->batch_size, t->gradient_accumulation_steps = 1, t->seed = c->seed;
    t->load_in_4bit = false, t->base_quant_native = true;
    LQ_TRY(lq_trn_load_model(t, &e->m, &e->tok, err));
    LQ_TRY(lq_train_data_load(&e->data, t, &e->tok, err));
    e->eval = e->data.eval_rows;
    if (c->eval_rows > 0 && c->eval_rows < e->eval.n_rows) e->eval.n_rows = c->eval_rows;
    LQ_CHECK(err, e->eval.n_rows > 0, LQ_ERR_INPUT, "%s: test_datasets hold no rows to score", c->source);
    lq_ctx_opts co = {.n_threads = c->threads, .seed = c->seed};
    return lq_ctx_init(&e->ctx, &co, err);
}

static void env_free(lm_env *e) {
    lq_ctx_free(e->ctx);
    lq_train_data_free(&e->data);
    lq_lm_tok_free(&e->tok);
    lq_llama_free(e->m);
    free(e->pretrained);
}

/* Perplexity of the validation rows in mode. */
static lq_status perplexity(lm_env *e, lq_qat_mode mode, double *ppl, double *loss, lq_err *err) {
    lq_llama_qat_set_mode(e->m, mode);
    int64_t n;
    lq_status st = lq_trn_eval(e->ctx, e->m, &e->eval, e->c->eval_batch_size, false, loss, &n, err);
    *ppl = st == LQ_OK ? exp(*loss) : NAN;
    return st;
}

/* Calibration for static activations: the first calibration_batches training batches, no grad. */
static lq_status calibrate(lm_env *e, lq_llama_qat *q, lq_err *err) {
    bool any = false; /* dynamic activations and weight-only schemes have nothing to calibrate */
    for (int i = 0; i < lq_llama_qat_count(q); i++) any |= lq_llama_qat_layer(q, i)->aobs_ready;
    if (!any) return LQ_OK;
    lq_llama_qat_set_mode(e->m, LQ_QAT_CALIBRATE);
    const lq_packed *rows = &e->data.epoch_rows;
    int64_t b = e->c->batch_size;
    bool g = lq_ctx_set_grad(e->ctx, false);
    lq_status st = LQ_OK;
    for (int64_t k = 0; k < e->c->quantization.calibration_batches && st == LQ_OK; k++) {
        int64_t r0 = (k * b) % (rows->n_rows - b + 1);
        lq_tensor *ids, *labels, *pos, *doc;
        st = lq_trn_batch(e->ctx, rows, r0, b, &ids, &labels, &pos, &doc, err);
        lq_llama_fwd_opts fo = {.positions = pos, .doc = doc};
        if (st == LQ_OK && !lq_llama_loss(e->ctx, e->m, ids, labels, &fo, NULL)) st = ctx_err(e->ctx, "calibration", err);
        lq_ctx_step_reset(e->ctx);
    }
    lq_ctx_set_grad(e->ctx, g);
    return st;
}

/* One fine-tuning stage of the attached layers in mode (FLOAT or FAKE). */
static lq_status finetune(lm_env *e, lq_llama_qat *q, const char *run, lq_qat_mode mode, lq_qat_log *log, lq_err *err) {
    const lq_qat_config *c = e->c;
    const lq_qat_stage_cfg *sc = &c->qat;
    int64_t b = c->batch_size, per_epoch = e->data.rows_per_epoch / b;
    int64_t total = sc->max_steps > 0 ? sc->max_steps : sc->epochs * per_epoch;
    lq_params *p = lq_llama_qat_params(q);
    lq_adamw opt;
    lq_adamw_cfg ac = {.lr = (float)sc->learning_rate, .beta1 = (float)c->adam_beta1, .beta2 = (float)c->adam_beta2,
                       .eps = (float)c->adam_epsilon, .weight_decay = (float)sc->weight_decay, .n_threads = c->threads};
    LQ_TRY(lq_adamw_init(&opt, p, &ac, err));
    lq_ctx_set_training(e->ctx, true);
    lq_ctx_set_release_grads(e->ctx, true);
    lq_status st = LQ_OK;
    double t0 = lq_qat_now(), acc = 0;
    int64_t acc_n = 0;
    for (int64_t step = 0; step < total && st == LQ_OK; step++) {
        int64_t ep = step / per_epoch, r0 = (step % per_epoch) * b;
        st = lq_train_data_epoch(&e->data, c->seed, ep, err);
        lq_qat_mode md = mode;
        if (mode == LQ_QAT_FAKE && step < c->quantization.fake_quant_start_step) md = LQ_QAT_CALIBRATE;
        if (mode == LQ_QAT_FAKE && step == c->quantization.fake_quant_start_step)
            for (int i = 0; i < lq_llama_qat_count(q) && st == LQ_OK; i++)
                st = lq_qlayer_init_learned(lq_llama_qat_layer(q, i), err);
        if (mode == LQ_QAT_FAKE && c->quantization.observer_freeze_step > 0 && step == c->quantization.observer_freeze_step)
            for (int i = 0; i < lq_llama_qat_count(q); i++)
                if (lq_llama_qat_layer(q, i)->aobs_ready) lq_observer_freeze(&lq_llama_qat_layer(q, i)->aobs);
        lq_llama_qat_set_mode(e->m, md);
        lq_tensor *ids, *labels, *pos, *doc;
        if (st == LQ_OK) st = lq_trn_batch(e->ctx, &e->data.epoch_rows, r0, b, &ids, &labels, &pos, &doc, err);
        if (st != LQ_OK) break;
        lq_params_zero_grad(p);
        lq_llama_fwd_opts fo = {.positions = pos, .doc = doc, .checkpoint = c->gradient_checkpointing};
        int64_t counted = 0;
        lq_tensor *sum = lq_llama_loss(e->ctx, e->m, ids, labels, &fo, &counted);
        lq_tensor *loss = sum && counted > 0 ? lq_scale(e->ctx, sum, 1.0f / (float)counted) : sum;
        if (!loss || lq_backward(e->ctx, loss) != LQ_OK) {
            st = ctx_err(e->ctx, run, err);
            break;
        }
        double lv = counted > 0 ? (double)*(const float *)sum->data / (double)counted : 0;
        if (!isfinite(lv)) {
            st = LQ_ERR(err, LQ_ERR_NUMERIC, "%s: step %lld: loss is %g; stopping", run, (long long)step + 1, lv);
            break;
        }
        if (c->max_grad_norm > 0) lq_clip_grad_norm(p, (float)c->max_grad_norm, c->threads);
        double lr = lq_lr_at(sc->lr_scheduler, sc->learning_rate, sc->warmup_steps, total, step);
        st = lq_adamw_step(&opt, p, (float)lr, err);
        lq_ctx_step_reset(e->ctx);
        acc += lv, acc_n++;
        bool line = (step + 1) % c->logging_steps == 0 || step + 1 == total;
        double el = lq_qat_now() - t0;
        if (line || log->tty)
            lq_qat_progress(log, run, step + 1, total, line ? acc / (double)acc_n : lv, lr,
                            el > 0 ? (double)((step + 1) * b * c->sequence_len) / el : 0, line);
        if (line) acc = 0, acc_n = 0;
    }
    lq_qat_progress_end(log);
    lq_ctx_set_release_grads(e->ctx, false);
    lq_ctx_set_training(e->ctx, false);
    lq_ctx_step_reset(e->ctx);
    lq_adamw_free(&opt);
    return st;
}

/* Bytes of the float tensors outside the decoder linears (embedding, norms), as f32. */
static int64_t other_bytes(const lq_llama_model *m) {
    const lq_llama_config *c = lq_llama_model_config(m);
    int64_t C = c->hidden_size, b = c->vocab_size * C * 4 + C * 4;
    b += c->num_hidden_layers * 2 * C * 4;
    if (!c->tie_word_embeddings) b += c->vocab_size * C * 4;
    return b;
}

static lq_status convert_eval(lm_env *e, lq_llama_qat *q, lq_qat_result *r, lq_err *err) {
    int n = lq_llama_qat_count(q);
    lq_qlayer **ls = malloc((size_t)n * sizeof *ls);
    if (!ls) return LQ_ERR(err, LQ_ERR_OOM, "out of memory");
    lq_status st = LQ_OK;
    for (int i = 0; i < n && st == LQ_OK; i++) st = lq_qlayer_convert(ls[i] = lq_llama_qat_layer(q, i), err);
    char h5[600];
    snprintf(r->export_path, sizeof r->export_path, "%s/%s-%s.safetensors", e->c->output_dir, r->scheme, r->mode);
    snprintf(h5, sizeof h5, "%s/%s-%s.h5", e->c->output_dir, r->scheme, r->mode);
    if (st == LQ_OK) st = lq_qat_export(r->export_path, h5, ls, n, e->c->model, &r->size_bytes, err);
    if (st == LQ_OK) st = lq_qat_import(r->export_path, ls, n, err);
    r->size_bytes += other_bytes(e->m);
    double loss;
    if (st == LQ_OK) st = perplexity(e, LQ_QAT_INT, &r->int_metric, &loss, err);
    free(ls);
    return st;
}

lq_status lq_qat_lm_run(const lq_qat_config *c, const lq_qat_scheme *schemes, int n_schemes, bool compare,
                        lq_qat_log *log, lq_qat_result *res, int *n_res, lq_err *err) {
    *n_res = 0;
    lm_env e;
    lq_status st = env_init(&e, c, err);
    lq_llama_qat *q = NULL;
    lq_qat_spec_user fu = {c, NULL};
    /* every scheme's layers are checked before any training (a bad spec is a config error now) */
    for (int s = 0; s < n_schemes && st == LQ_OK && (compare || c->mode != LQ_QAT_RUN_FLOAT); s++) {
        lq_qat_spec_user u = {c, &schemes[s]};
        st = lq_llama_qat_attach(e.m, lq_qat_resolve_cb, &u, 1, &q, err);
        lq_llama_qat_free(q);
        q = NULL;
    }
    double t0 = lq_qat_now();
    if (st == LQ_OK) st = lq_llama_qat_attach(e.m, lq_qat_resolve_cb, &fu, c->threads, &q, err);
    float *tuned = NULL;
    if (st == LQ_OK) {
        int64_t nw = lq_llama_qat_weights_numel(q);
        e.pretrained = malloc((size_t)nw * sizeof(float));
        tuned = malloc((size_t)nw * sizeof(float));
        if (!e.pretrained || !tuned) st = LQ_ERR(err, LQ_ERR_OOM, "out of memory for two copies of %lld weights", (long long)nw);
        else lq_llama_qat_get_weights(q, e.pretrained);
    }
    if (st == LQ_OK && !log->quiet) {
        double ppl, loss;
        st = perplexity(&e, LQ_QAT_FLOAT, &ppl, &loss, err);
        if (st == LQ_OK) fprintf(stderr, "pretrained: perplexity %.3f on %lld rows of %lld tokens\n", ppl,
                                 (long long)e.eval.n_rows, (long long)c->sequence_len);
    }
    /* the float baseline: the model fine-tuned in float with the QAT stage's settings */
    if (st == LQ_OK) st = finetune(&e, q, "float-finetune", LQ_QAT_FLOAT, log, err);
    if (st == LQ_OK) {
        lq_qat_result *r = &res[(*n_res)++];
        lq_qat_row(r, "float", "float", true);
        st = perplexity(&e, LQ_QAT_FLOAT, &r->metric, &r->loss, err);
        r->size_bytes = 4 * lq_llama_qat_weights_numel(q) + other_bytes(e.m);
        r->seconds = lq_qat_now() - t0;
        lq_llama_qat_get_weights(q, tuned);
        if (!log->quiet && st == LQ_OK) fprintf(stderr, "float: perplexity %.3f\n", r->metric);
    }
    lq_llama_qat_free(q);
    q = NULL;
    bool want_ptq = compare || c->mode != LQ_QAT_RUN_FLOAT, want_qat = compare || c->mode == LQ_QAT_RUN_QAT;
    for (int s = 0; s < n_schemes && st == LQ_OK && (want_ptq || want_qat); s++) {
        lq_qat_spec_user u = {c, &schemes[s]};
        st = lq_llama_qat_attach(e.m, lq_qat_resolve_cb, &u, c->threads, &q, err);
        if (st == LQ_OK && want_ptq) {
            t0 = lq_qat_now();
            lq_llama_qat_set_weights(q, tuned);
            lq_qat_result *r = &res[(*n_res)++];
            lq_qat_row(r, schemes[s].name, "ptq", true);
            st = calibrate(&e, q, err);
            for (int i = 0; i < lq_llama_qat_count(q) && st == LQ_OK; i++) st = lq_qlayer_init_learned(lq_llama_qat_layer(q, i), err);
            if (st == LQ_OK) st = perplexity(&e, LQ_QAT_FAKE, &r->metric, &r->loss, err);
            if (st == LQ_OK) st = convert_eval(&e, q, r, err);
            r->seconds = lq_qat_now() - t0;
            if (!log->quiet && st == LQ_OK)
                fprintf(stderr, "%s ptq: perplexity %.3f (integer model %.3f), %lld bytes\n", r->scheme, r->metric,
                        r->int_metric, (long long)r->size_bytes);
        }
        if (st == LQ_OK && want_qat) {
            lq_llama_qat_free(q); /* fresh observers and learned scales */
            q = NULL;
            st = lq_llama_qat_attach(e.m, lq_qat_resolve_cb, &u, c->threads, &q, err);
            char run[64];
            snprintf(run, sizeof run, "%s-qat", schemes[s].name);
            t0 = lq_qat_now();
            if (st == LQ_OK) {
                lq_llama_qat_set_weights(q, e.pretrained);
                st = calibrate(&e, q, err);
            }
            if (st == LQ_OK) st = finetune(&e, q, run, LQ_QAT_FAKE, log, err);
            lq_qat_result *r = &res[(*n_res)++];
            lq_qat_row(r, schemes[s].name, "qat", true);
            if (st == LQ_OK) st = perplexity(&e, LQ_QAT_FAKE, &r->metric, &r->loss, err);
            if (st == LQ_OK) st = convert_eval(&e, q, r, err);
            r->seconds = lq_qat_now() - t0;
            if (!log->quiet && st == LQ_OK)
                fprintf(stderr, "%s qat: perplexity %.3f (integer model %.3f), %lld bytes\n", r->scheme, r->metric,
                        r->int_metric, (long long)r->size_bytes);
        }
        lq_llama_qat_free(q);
        q = NULL;
    }
    free(tuned);
    env_free(&e);
    return st;
}
