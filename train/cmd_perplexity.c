/* train/cmd_perplexity.c: `loquat perplexity`: llama.cpp-style windowed perplexity of a model on a text file. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "datasets/datasets.h"
#include "io/io.h"
#include "lora/lora.h"
#include "models/models.h"
#include "core/file.h"
#include "train/train.h"

#define PPL_DEFAULT_CTX 512
#define PPL_MAX_FILE ((int64_t)1 << 30)
#define PPL_KV_CHUNK 64 /* tokens per forward when decoding through a KV cache */

/* The rules of llama.cpp's perplexity tool (examples/perplexity, non-strided mode):
 *  - the whole file is tokenized once, with BOS in front when the tokenizer adds one (add_bos);
 *  - it needs at least 2 * ctx tokens; there are n_tokens / ctx non-overlapping windows (the
 *    tail that does not fill one is not scored);
 *  - in every window, when add_bos, the first token is replaced by BOS for the forward;
 *  - only the second half is scored: the logits at positions ctx/2 .. ctx-2 predict the tokens
 *    at ctx/2 + 1 .. ctx-1 (ctx - 1 - ctx/2 predictions per window);
 *  - PPL = exp(mean NLL) over every scored prediction so far; the error bar is
 *    PPL * sqrt(var(NLL) / (n - 1)).
 * With --kv-cache f32|int8 each window goes through a fresh KV cache of that dtype in chunks of
 * PPL_KV_CHUNK tokens, as generation decodes (each token's K / V are stored, quantized for int8,
 * before any position reads them, so this equals token-by-token decoding): same windows, same
 * scored positions; the difference to the plain forward is the cache's storage error. */

static char *read_file(const char *path, size_t *n, lq_err *err) {
    char *buf = NULL;
    lq_read_file(path, PPL_MAX_FILE, "a text to score", &buf, n, err);
    return buf;
}

/* -log softmax(row)[target], in double. */
static double nll_of(const lq_tensor *lg, int64_t t, int64_t V, int32_t target) {
    double mx = -INFINITY;
    for (int64_t j = 0; j < V; j++) {
        double v = *lq_f32_at(lg, 0, t, j, 0);
        if (v > mx) mx = v;
    }
    double s = 0;
    for (int64_t j = 0; j < V; j++) s += exp((double)*lq_f32_at(lg, 0, t, j, 0) - mx);
    return log(s) + mx - (double)*lq_f32_at(lg, 0, t, target, 0);
}

/* --dump-logits: the first window's ids (1, T) i32 and logits (1, T, V) f32 as a safetensors file. */
static lq_status dump_logits(const char *path, const int32_t *ids, int64_t T, int64_t V, const lq_tensor *lg,
                             const float *lgs, lq_err *err) {
    float *buf = malloc((size_t)T * (size_t)V * sizeof *buf);
    if (!buf) return LQ_ERR(err, LQ_ERR_OOM, "out of memory for the logits dump");
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < V; j++) buf[t * V + j] = lgs ? lgs[t * V + j] : *lq_f32_at(lg, 0, t, j, 0);
    lq_st_wtensor w[2] = {{.name = "ids", .dtype = LQ_ST_I32, .ndim = 2, .shape = {1, T}, .data = ids},
                          {.name = "logits", .dtype = LQ_ST_F32, .ndim = 3, .shape = {1, T, V}, .data = buf}};
    lq_st_kv meta[] = {{"format", "pt"}};
    lq_status s = lq_st_write(path, w, 2, meta, 1, err);
    free(buf);
    return s;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int lq_cmd_perplexity(const lq_perplexity_opts *o) {
    long n_ctx = o->ctx > 0 ? o->ctx : PPL_DEFAULT_CTX;
    lq_kv_dtype kvt = LQ_KV_F32;
    if (o->kv_cache && !lq_kv_dtype_parse(o->kv_cache, &kvt)) {
        fprintf(stderr, "loquat perplexity: --kv-cache expects f32 or int8, got '%s'\n", o->kv_cache);
        return 2;
    }
    if (n_ctx < 4) {
        fprintf(stderr, "loquat perplexity: --ctx must be at least 4, got %ld\n", n_ctx);
        return 2;
    }
    struct stat sb;
    if (!o->model || stat(o->model, &sb) != 0) {
        fprintf(stderr, "loquat perplexity: %s: cannot open: %s\n", o->model ? o->model : "(no model)", strerror(errno));
        return 2;
    }
    lq_err err = {0};
    size_t len = 0;
    char *text = read_file(o->data, &len, &err);
    if (!text) {
        fprintf(stderr, "loquat perplexity: %s\n", err.msg);
        return lq_status_exit_code(err.status);
    }
    lq_llama_model *m = NULL;
    lq_lm_tok lt = {0};
    lq_ctx *ctx = NULL;
    int32_t *toks = NULL, *win = NULL;
    lq_kv_cache *kv = NULL;
    float *lgs = NULL; /* with a cache: the window's logits, (n_ctx, V) */
    int rc = 0;
    lq_lora_set *adapter = NULL;
    lq_status st = lq_llama_load(o->model, &m, &err);
    if (st == LQ_OK && o->adapter) st = lq_lm_attach_adapter(m, o->adapter, &adapter, &err);
    if (st == LQ_OK) st = lq_lm_tok_load(o->model, lq_llama_model_config(m), &lt, &err);
    size_t n_tok = 0;
    if (st == LQ_OK) st = lq_tokenizer_encode(lt.tok, text, len, true, &toks, &n_tok, &err);
    if (st != LQ_OK) {
        fprintf(stderr, "loquat perplexity: %s\n", err.msg);
        rc = lq_status_exit_code(st);
        goto done;
    }
    const lq_llama_config *cfg = lq_llama_model_config(m);
    if (cfg->max_position_embeddings > 0 && n_ctx > cfg->max_position_embeddings) {
        fprintf(stderr, "loquat perplexity: --ctx %ld is beyond the model's %lld positions\n", n_ctx,
                (long long)cfg->max_position_embeddings);
        rc = 2;
        goto done;
    }
    if ((int64_t)n_tok < 2 * (int64_t)n_ctx) {
        fprintf(stderr, "loquat perplexity: %s has %zu tokens; at least 2 * ctx = %ld are needed (as llama.cpp)\n", o->data,
                n_tok, 2 * n_ctx);
        rc = 2;
        goto done;
    }
    int64_t n_win = (int64_t)n_tok / n_ctx, V = cfg->vocab_size, first = n_ctx / 2;
    long nthreads = sysconf(_SC_NPROCESSORS_ONLN);
    lq_ctx_opts copts = {.n_threads = (int)(nthreads > 0 ? nthreads : 1)};
    win = malloc((size_t)n_ctx * sizeof *win);
    if (!win) st = LQ_ERR(&err, LQ_ERR_OOM, "out of memory");
    if (st == LQ_OK) st = lq_ctx_init(&ctx, &copts, &err);
    if (st == LQ_OK && o->kv_cache) {
        st = lq_kv_cache_init_dtype(&kv, m, n_ctx, kvt, &err);
        if (st == LQ_OK && !(lgs = malloc((size_t)n_ctx * (size_t)V * sizeof *lgs)))
            st = LQ_ERR(&err, LQ_ERR_OOM, "out of memory for %ld x %lld logits", n_ctx, (long long)V);
    }
    if (st != LQ_OK) {
        fprintf(stderr, "loquat perplexity: %s\n", err.msg);
        rc = lq_status_exit_code(st);
        goto done;
    }
    lq_ctx_set_grad(ctx, false);
    fprintf(stderr, "loquat perplexity: %zu tokens, %lld windows of %ld (scoring the last %lld positions of each)%s\n",
            n_tok, (long long)n_win, n_ctx, (long long)(n_ctx - 1 - first), lt.add_bos ? ", BOS first" : "");
    if (kv)
        fprintf(stderr, "loquat perplexity: decoding through the %s KV cache (%lld bytes per token)\n",
                kvt == LQ_KV_INT8 ? "int8" : "f32", (long long)lq_kv_cache_bytes_per_token(kv));
    double nll = 0, nll2 = 0, t0 = now_s();
    int64_t count = 0;
    for (int64_t w = 0; w < n_win; w++) {
        memcpy(win, toks + w * n_ctx, (size_t)n_ctx * sizeof *win);
        if (lt.add_bos) win[0] = lt.bos;
        lq_tensor *lg = NULL;
        if (kv) lq_kv_cache_reset(kv);
        for (int64_t p0 = 0; p0 < n_ctx; p0 += kv ? PPL_KV_CHUNK : n_ctx) {
            int64_t n = kv && n_ctx - p0 > PPL_KV_CHUNK ? PPL_KV_CHUNK : n_ctx - p0;
            lq_ctx_mark mk = lq_ctx_get_mark(ctx);
            int64_t shape[2] = {1, n};
            lq_tensor *in = lq_new(ctx, LQ_DTYPE_I32, 2, shape);
            if (in) memcpy(in->data, win + p0, (size_t)n * sizeof *win);
            lg = lq_llama_forward(ctx, m, in, p0, kv);
            if (!lg || lq_ctx_status(ctx) != LQ_OK) {
                const lq_err *ce = lq_ctx_error(ctx);
                fprintf(stderr, "loquat perplexity: forward: %s\n", ce && ce->msg[0] ? ce->msg : "failed");
                rc = lq_status_exit_code(ce ? ce->status : LQ_ERR_INTERNAL);
                goto done;
            }
            if (kv) {
                for (int64_t t = 0; t < n; t++)
                    for (int64_t j = 0; j < V; j++) lgs[(p0 + t) * V + j] = *lq_f32_at(lg, 0, t, j, 0);
                lq_ctx_reset_to(ctx, mk);
            }
        }
        if (w == 0 && o->dump_logits) {
            lq_status ds = dump_logits(o->dump_logits, win, n_ctx, V, lg, kv ? lgs : NULL, &err);
            if (ds != LQ_OK) {
                fprintf(stderr, "loquat perplexity: --dump-logits: %s\n", err.msg);
                rc = lq_status_exit_code(ds);
                goto done;
            }
        }
        for (int64_t t = first; t < n_ctx - 1; t++) {
            int32_t target = toks[w * n_ctx + t + 1];
            double v;
            if (kv) {
                const float *r = lgs + t * V;
                double mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < V; j++) mx = r[j] > mx ? r[j] : mx;
                for (int64_t j = 0; j < V; j++) sum += exp((double)r[j] - mx);
                v = log(sum) + mx - (double)r[target];
            } else {
                v = nll_of(lg, t, V, target);
            }
            nll += v, nll2 += v * v, count++;
        }
        lq_ctx_step_reset(ctx);
        fprintf(stderr, "[%lld/%lld] ppl %.4f (%.1f s)\n", (long long)(w + 1), (long long)n_win, exp(nll / (double)count),
                now_s() - t0);
    }
    double mean = nll / (double)count, var = nll2 / (double)count - mean * mean;
    double ppl = exp(mean), ppl_err = count > 1 && var > 0 ? ppl * sqrt(var / (double)(count - 1)) : 0;
    printf("perplexity: %.4f +/- %.4f (%lld tokens scored, %lld windows of %ld)\n", ppl, ppl_err, (long long)count,
           (long long)n_win, n_ctx);
    if (o->json)
        printf("{\"perplexity\": %.6f, \"perplexity_err\": %.6f, \"mean_nll\": %.8f, \"tokens\": %zu, \"scored\": %lld, "
               "\"windows\": %lld, \"ctx\": %ld, \"bos\": %s, \"kv_cache\": \"%s\", \"seconds\": %.3f}\n",
               ppl, ppl_err, mean, n_tok, (long long)count, (long long)n_win, n_ctx, lt.add_bos ? "true" : "false",
               kv ? (kvt == LQ_KV_INT8 ? "int8" : "f32") : "none", now_s() - t0);
    if (!isfinite(ppl)) rc = 1;
done:
    free(text), free(toks), free(win), free(lgs);
    lq_kv_cache_free(kv);
    lq_ctx_free(ctx);
    lq_lm_tok_free(&lt);
    lq_llama_free(m);
    lq_lora_set_free(adapter);
    return rc;
}
