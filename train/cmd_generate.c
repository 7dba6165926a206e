/* train/cmd_generate.c: `loquat generate`: prompt -> tokens -> KV-cached decoding, streamed as UTF-8; and the model tokenizer loader it shares with perplexity. */
#include <cjson/cJSON.h>
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
#include "train/train.h"

#define GEN_DEFAULT_MAX_TOKENS 128

static void add_stop(lq_lm_tok *t, int64_t id) {
    if (id < 0 || id >= lq_tokenizer_n_ids(t->tok)) return;
    for (int i = 0; i < t->n_stop; i++)
        if (t->stop[i] == id) return;
    if (t->n_stop < (int)(sizeof t->stop / sizeof t->stop[0])) t->stop[t->n_stop++] = (int32_t)id;
}

/* tokenizer_config.json's "chat_template" string (NULL if absent or unreadable: chat is optional). */
static char *hf_chat_template(const char *dir) {
    char path[4200];
    if (snprintf(path, sizeof path, "%s/tokenizer_config.json", dir) >= (int)sizeof path) return NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL, *res = NULL;
    struct stat sb;
    if (fstat(fileno(f), &sb) == 0 && sb.st_size > 0 && sb.st_size < (1 << 26) && (buf = malloc((size_t)sb.st_size + 1)) &&
        fread(buf, 1, (size_t)sb.st_size, f) == (size_t)sb.st_size) {
        cJSON *j = cJSON_ParseWithLength(buf, (size_t)sb.st_size);
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(j, "chat_template");
        if (cJSON_IsString(ct)) res = strdup(ct->valuestring);
        cJSON_Delete(j);
    }
    free(buf);
    fclose(f);
    return res;
}

lq_status lq_lm_tok_load(const char *model_path, const struct lq_llama_config *cfg, lq_lm_tok *out, lq_err *err) {
    if (!model_path || !out) return LQ_ERR(err, LQ_ERR_ARG, "lq_lm_tok_load: NULL argument");
    memset(out, 0, sizeof *out);
    out->bos = -1;
    lq_status st;
    if (lq_gguf_sniff(model_path)) {
        lq_gguf_file *g = NULL;
        LQ_TRY(lq_gguf_open(&g, model_path, err));
        lq_tok_gguf_info info;
        st = lq_tokenizer_from_gguf(g, &out->tok, err);
        if (st == LQ_OK) st = lq_tokenizer_gguf_info(g, &info, err);
        if (st == LQ_OK) {
            out->bos = info.bos_id, out->add_bos = info.add_bos && info.bos_id >= 0;
            if (info.chat_template && !(out->chat_template = strdup(info.chat_template)))
                st = LQ_ERR(err, LQ_ERR_OOM, "out of memory");
            add_stop(out, info.eos_id);
            add_stop(out, info.eot_id);
        }
        lq_gguf_close(g);
    } else {
        /* a folder, or a file whose folder holds tokenizer.json */
        char dir[4096], path[4200];
        struct stat sb;
        if (snprintf(dir, sizeof dir, "%s", model_path) >= (int)sizeof dir)
            return LQ_ERR(err, LQ_ERR_INPUT, "%.200s: path too long", model_path);
        if (stat(model_path, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
            char *slash = strrchr(dir, '/');
            if (slash) *slash = 0;
            else snprintf(dir, sizeof dir, ".");
        }
        if (snprintf(path, sizeof path, "%s/tokenizer.json", dir) >= (int)sizeof path)
            return LQ_ERR(err, LQ_ERR_INPUT, "%.200s: path too long", model_path);
        st = lq_tokenizer_load(&out->tok, path, err);
        if (st == LQ_OK) {
            int32_t *ids = NULL;
            size_t n = 0;
            st = lq_tokenizer_encode(out->tok, "", 0, true, &ids, &n, err);
            if (st == LQ_OK && n > 0) out->bos = ids[0], out->add_bos = true;
            free(ids);
            out->chat_template = hf_chat_template(dir);
        }
    }
    if (st == LQ_OK && cfg)
        for (int i = 0; i < cfg->n_eos && i < LQ_LLAMA_MAX_TOKEN_IDS; i++) add_stop(out, cfg->eos_token_id[i]);
    if (st == LQ_OK && out->bos < 0 && cfg && cfg->n_bos > 0 && cfg->bos_token_id[0] < lq_tokenizer_n_ids(out->tok))
        out->bos = (int32_t)cfg->bos_token_id[0];
    if (st != LQ_OK) lq_lm_tok_free(out);
    return st;
}

void lq_lm_tok_free(lq_lm_tok *t) {
    if (!t) return;
    lq_tokenizer_free(t->tok);
    free(t->chat_template);
    memset(t, 0, sizeof *t);
    t->bos = -1;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Length of the prefix of s[0..n) that holds only complete UTF-8 sequences (an invalid byte counts
 * as complete: it is printed as U+FFFD rather than waited on). */
static size_t complete_utf8(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
        if (i + len > n) {
            bool cont = true; /* an incomplete tail: wait only if what is there is a valid start */
            for (size_t k = i + 1; k < n; k++) cont = cont && (s[k] & 0xC0) == 0x80;
            if (cont) return i;
            len = 1;
        }
        i += len;
    }
    return n;
}

/* Writes s[0..n) to stdout with invalid UTF-8 replaced by U+FFFD. */
static void emit(const char *s, size_t n) {
    char *o = NULL;
    size_t on = 0;
    if (n == 0) return;
    if (lq_utf8_lossy(s, n, &o, &on, NULL, NULL) == LQ_OK) fwrite(o, 1, on, stdout);
    free(o);
    fflush(stdout);
}

static int fail(lq_status st, const lq_err *err, const char *what) {
    fprintf(stderr, "loquat generate: %s%s%s\n", what ? what : "", what ? ": " : "", err && err->msg[0] ? err->msg : "failed");
    return lq_status_exit_code(st);
}

/* Shared with `loquat perplexity` (train/train.h). */
lq_status lq_lm_attach_adapter(struct lq_llama_model *m, const char *dir, struct lq_lora_set **out, lq_err *err) {
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return LQ_ERR(err, LQ_ERR_INPUT, "--adapter %s: %s", dir,
                      stat(dir, &sb) != 0 ? strerror(errno) : "not a folder (a PEFT adapter folder is expected)");
    LQ_TRY(lq_peft_load(out, dir, err));
    lq_status s = lq_llama_lora_attach(m, *out, err);
    if (s != LQ_OK) {
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        *err = (lq_err){0}; /* the first error sticks: restate it with the folder's name */
        LQ_ERR(err, s, "adapter %s does not fit the model: %s", dir, msg);
    }
    return s;
}

static bool parse_double(const char *s, double lo, double hi, double *out) {
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) return false;
    *out = v;
    return true;
}

/* The logits row at position t of a (1, T, V) result, contiguous copy in row. */
static void logits_row(const lq_tensor *lg, int64_t t, float *row) {
    int64_t v = lg->ne[2];
    for (int64_t j = 0; j < v; j++) row[j] = *lq_f32_at(lg, 0, t, j, 0);
}

int lq_cmd_generate(const lq_generate_opts *o) {
    double temp = 0, top_p = 1, seed = 0;
    if (o->temperature && !parse_double(o->temperature, 0, 1e6, &temp)) {
        fprintf(stderr, "loquat generate: --temperature expects a number >= 0, got '%s'\n", o->temperature);
        return 2;
    }
    if (o->top_p && (!parse_double(o->top_p, 0, 1, &top_p) || top_p <= 0)) {
        fprintf(stderr, "loquat generate: --top-p expects a number in (0, 1], got '%s'\n", o->top_p);
        return 2;
    }
    if (o->seed && (!parse_double(o->seed, 0, 9007199254740992.0, &seed) || seed != floor(seed))) {
        fprintf(stderr, "loquat generate: --seed expects a non-negative integer, got '%s'\n", o->seed);
        return 2;
    }
    lq_kv_dtype kvt = LQ_KV_F32;
    if (o->kv_cache && !lq_kv_dtype_parse(o->kv_cache, &kvt)) {
        fprintf(stderr, "loquat generate: --kv-cache expects f32 or int8, got '%s'\n", o->kv_cache);
        return 2;
    }
    long max_new = o->max_tokens > 0 ? o->max_tokens : GEN_DEFAULT_MAX_TOKENS;
    struct stat sb;
    if (!o->model || stat(o->model, &sb) != 0) {
        fprintf(stderr, "loquat generate: %s: cannot open: %s\n", o->model ? o->model : "(no model)", strerror(errno));
        return 2;
    }
    lq_err err = {0};
    lq_llama_model *m = NULL;
    lq_lm_tok lt = {0};
    lq_ctx *ctx = NULL;
    lq_kv_cache *kv = NULL;
    lq_sampler smp = {0};
    int32_t *ids = NULL;
    float *row = NULL;
    char *text = NULL, *pend = NULL;
    int rc = 0;
    lq_lora_set *adapter = NULL;
    lq_status st = lq_llama_load(o->model, &m, &err);
    if (st == LQ_OK && o->adapter) st = lq_lm_attach_adapter(m, o->adapter, &adapter, &err);
    if (st != LQ_OK) {
        rc = fail(st, &err, NULL);
        goto done;
    }
    const lq_llama_config *cfg = lq_llama_model_config(m);
    if ((st = lq_lm_tok_load(o->model, cfg, &lt, &err)) != LQ_OK) {
        rc = fail(st, &err, "tokenizer");
        goto done;
    }
    const char *prompt = o->prompt ? o->prompt : "";
    size_t tlen = strlen(prompt);
    if (o->chat) {
        lq_chat_msg msg = {"user", prompt};
        if ((st = lq_chat_render_template(lt.chat_template, &msg, 1, true, &text, &tlen, &err)) != LQ_OK) {
            rc = fail(st, &err, "chat template");
            goto done;
        }
        prompt = text;
    }
    size_t n_prompt = 0;
    if ((st = lq_tokenizer_encode(lt.tok, prompt, tlen, true, &ids, &n_prompt, &err)) != LQ_OK) {
        rc = fail(st, &err, "encoding the prompt");
        goto done;
    }
    if (n_prompt == 0) {
        if (lt.bos < 0) {
            fprintf(stderr, "loquat generate: the prompt is empty and the model has no BOS token to start from; give --prompt\n");
            rc = 2;
            goto done;
        }
        int32_t *one = realloc(ids, sizeof *ids);
        if (!one) {
            rc = fail(LQ_ERR_OOM, NULL, "out of memory");
            goto done;
        }
        ids = one, ids[0] = lt.bos, n_prompt = 1;
    }
    int64_t limit = cfg->max_position_embeddings > 0 ? cfg->max_position_embeddings : INT64_MAX;
    if ((int64_t)n_prompt >= limit) {
        fprintf(stderr, "loquat generate: the prompt has %zu tokens, the model's context is %lld\n", n_prompt, (long long)limit);
        rc = 2;
        goto done;
    }
    if ((int64_t)n_prompt + max_new > limit) max_new = (long)(limit - (int64_t)n_prompt);
    int64_t V = cfg->vocab_size;
    lq_sampler_cfg scfg = {(float)temp, (int)o->top_k, (float)top_p, (uint64_t)seed};
    long nthreads = sysconf(_SC_NPROCESSORS_ONLN);
    lq_ctx_opts copts = {.n_threads = (int)(nthreads > 0 ? nthreads : 1)};
    row = malloc((size_t)V * sizeof *row);
    pend = malloc(64);
    if (!row || !pend) {
        rc = fail(LQ_ERR_OOM, NULL, "out of memory");
        goto done;
    }
    if ((st = lq_sampler_init(&smp, &scfg, V, &err)) != LQ_OK || (st = lq_ctx_init(&ctx, &copts, &err)) != LQ_OK ||
        (st = lq_kv_cache_init_dtype(&kv, m, (int64_t)n_prompt + max_new, kvt, &err)) != LQ_OK) {
        rc = fail(st, &err, NULL);
        goto done;
    }
    lq_ctx_set_grad(ctx, false);
    double t0 = now_s(), t1 = t0;
    size_t np = 0; /* pending bytes of an unfinished UTF-8 character */
    long n_gen = 0;
    int64_t pos = 0;
    const int32_t *feed = ids;
    int64_t n_feed = (int64_t)n_prompt;
    int32_t next = -1;
    for (;;) {
        int64_t shape[2] = {1, n_feed};
        lq_tensor *in = lq_new(ctx, LQ_DTYPE_I32, 2, shape);
        if (in) memcpy(in->data, feed, (size_t)n_feed * sizeof(int32_t));
        lq_tensor *lg = lq_llama_forward(ctx, m, in, pos, kv);
        if (!lg || lq_ctx_status(ctx) != LQ_OK) {
            const lq_err *ce = lq_ctx_error(ctx);
            rc = fail(ce ? ce->status : LQ_ERR_INTERNAL, ce, "forward");
            goto done;
        }
        logits_row(lg, n_feed - 1, row);
        lq_ctx_step_reset(ctx);
        pos += n_feed;
        if (pos == (int64_t)n_prompt) t1 = now_s();
        if (n_gen >= max_new) break;
        if ((st = lq_sampler_sample(&smp, row, &next, &err)) != LQ_OK) {
            rc = fail(st, &err, "sampling");
            goto done;
        }
        bool stop = false;
        for (int i = 0; i < lt.n_stop; i++) stop = stop || next == lt.stop[i];
        if (stop) break;
        n_gen++;
        char *piece = NULL;
        size_t pl = 0;
        if (lq_tokenizer_decode(lt.tok, &next, 1, true, &piece, &pl, NULL) == LQ_OK && pl) {
            char *np2 = realloc(pend, np + pl + 1);
            if (!np2) {
                free(piece);
                rc = fail(LQ_ERR_OOM, NULL, "out of memory");
                goto done;
            }
            pend = np2;
            memcpy(pend + np, piece, pl);
            np += pl;
            size_t ok = complete_utf8((const unsigned char *)pend, np);
            emit(pend, ok);
            memmove(pend, pend + ok, np - ok);
            np -= ok;
        }
        free(piece);
        if (n_gen >= max_new || pos >= limit) break;
        feed = &next, n_feed = 1;
    }
    emit(pend, np);
    fputc('\n', stdout);
    fflush(stdout);
    double t2 = now_s();
    fprintf(stderr, "loquat generate: prompt %zu tokens in %.2f s (%.1f tok/s); generated %ld tokens in %.2f s (%.1f tok/s)\n",
            n_prompt, t1 - t0, (double)n_prompt / (t1 - t0 > 0 ? t1 - t0 : 1e-9), n_gen, t2 - t1,
            (double)n_gen / (t2 - t1 > 0 ? t2 - t1 : 1e-9));
    fprintf(stderr, "loquat generate: %s KV cache, %lld bytes per token\n", kvt == LQ_KV_INT8 ? "int8" : "f32",
            (long long)lq_kv_cache_bytes_per_token(kv));
done:
    free(ids), free(row), free(text), free(pend);
    lq_sampler_free(&smp);
    lq_kv_cache_free(kv);
    lq_ctx_free(ctx);
    lq_lm_tok_free(&lt);
    lq_llama_free(m);
    lq_lora_set_free(adapter);
    return rc;
}
