/* datasets/data_text.c: training documents from text, JSONL, Alpaca and chat files (ids + loss mask). */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/file.h"
#include "datasets/datasets.h"

static const char ALPACA_INPUT[] =
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n%s\n\n### Input:\n%s\n\n"
    "### Response:\n";
static const char ALPACA_NOINPUT[] =
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n%s\n\n### Response:\n";

const char *lq_data_format_name(lq_data_format f) {
    switch (f) {
    case LQ_DATA_TEXT: return "text";
    case LQ_DATA_JSONL: return "jsonl";
    case LQ_DATA_ALPACA: return "alpaca";
    case LQ_DATA_CHAT: return "chat";
    }
    return "?";
}

void lq_docs_free(lq_docs *docs) {
    if (!docs) return;
    for (size_t i = 0; i < docs->n; i++) {
        free(docs->doc[i].ids);
        free(docs->doc[i].labels);
    }
    free(docs->doc);
    memset(docs, 0, sizeof *docs);
}

/* A document under construction. */
typedef struct doc_buf {
    int32_t *ids, *labels;
    size_t n, cap;
} doc_buf;

static lq_status doc_push(doc_buf *d, const int32_t *ids, size_t n, bool train, lq_err *err) {
    if (d->n + n > d->cap) {
        size_t cap = d->cap ? d->cap : 64;
        while (cap < d->n + n) cap *= 2;
        int32_t *a = realloc(d->ids, cap * sizeof *a);
        if (!a) return LQ_ERR(err, LQ_ERR_OOM, "document of %zu tokens", cap);
        d->ids = a;
        int32_t *b = realloc(d->labels, cap * sizeof *b);
        if (!b) return LQ_ERR(err, LQ_ERR_OOM, "document of %zu tokens", cap);
        d->labels = b;
        d->cap = cap;
    }
    for (size_t i = 0; i < n; i++) {
        d->ids[d->n + i] = ids[i];
        d->labels[d->n + i] = train ? ids[i] : LQ_IGNORE_INDEX;
    }
    d->n += n;
    return LQ_OK;
}

/* Encodes a piece of text and appends it; the first piece of a document gets the post-processor. */
static lq_status doc_text(doc_buf *d, const lq_tokenizer *tok, const lq_data_opts *o, const char *s, size_t len,
                          bool train, lq_err *err) {
    int32_t *ids = NULL;
    size_t n = 0;
    bool special = o->add_special && d->n == 0;
    if (o->stats) o->stats->n_encode++;
    LQ_TRY(lq_tokenizer_encode(tok, s, len, special, &ids, &n, err));
    lq_status st = doc_push(d, ids, n, train, err);
    free(ids);
    return st;
}

/* Finishes d with the EOS and moves it into docs. */
static lq_status doc_finish(doc_buf *d, const lq_data_opts *o, bool train_eos, lq_docs *docs, lq_err *err) {
    int32_t eos = o->eos_id;
    LQ_TRY(doc_push(d, &eos, 1, train_eos, err));
    if (docs->n == docs->cap) {
        size_t cap = docs->cap ? 2 * docs->cap : 16;
        lq_doc *a = realloc(docs->doc, cap * sizeof *a);
        if (!a) return LQ_ERR(err, LQ_ERR_OOM, "%zu documents", cap);
        docs->doc = a;
        docs->cap = cap;
    }
    docs->doc[docs->n++] = (lq_doc){d->ids, d->labels, d->n};
    memset(d, 0, sizeof *d);
    return LQ_OK;
}

static lq_status read_file(const char *path, char **out, size_t *len, lq_err *err) {
    return lq_read_file(path, LQ_DATA_MAX_FILE, "a data file", out, len, err);
}

static lq_status load_text_file(const lq_tokenizer *tok, const char *path, const lq_data_opts *o, lq_docs *docs,
                                lq_err *err) {
    char *text = NULL;
    size_t len = 0;
    LQ_TRY(read_file(path, &text, &len, err));
    doc_buf d = {0};
    lq_status st = doc_text(&d, tok, o, text, len, true, err);
    free(text);
    if (st == LQ_OK) st = doc_finish(&d, o, true, docs, err);
    free(d.ids);
    free(d.labels);
    return st;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && memcmp(s + a - b, suf, b) == 0;
}

static lq_status load_text_dir(const lq_tokenizer *tok, const char *path, const lq_data_opts *o, lq_docs *docs,
                               lq_err *err) {
    DIR *dir = opendir(path);
    if (!dir) return LQ_ERR(err, LQ_ERR_INPUT, "%s: cannot open folder: %s", path, strerror(errno));
    char **names = NULL;
    size_t n = 0, cap = 0;
    lq_status st = LQ_OK;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        if (e->d_name[0] == '.' || !ends_with(e->d_name, ".txt")) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            char **a = realloc(names, cap * sizeof *a);
            if (!a) {
                st = LQ_ERR(err, LQ_ERR_OOM, "%s: file list", path);
                break;
            }
            names = a;
        }
        if (!(names[n] = strdup(e->d_name))) {
            st = LQ_ERR(err, LQ_ERR_OOM, "%s: file list", path);
            break;
        }
        n++;
    }
    closedir(dir);
    if (st == LQ_OK && n == 0) st = LQ_ERR(err, LQ_ERR_INPUT, "%s: folder holds no .txt files", path);
    if (st == LQ_OK) qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n && st == LQ_OK; i++) {
        size_t plen = strlen(path) + strlen(names[i]) + 2;
        char *full = malloc(plen);
        if (!full) {
            st = LQ_ERR(err, LQ_ERR_OOM, "%s: path", path);
            break;
        }
        snprintf(full, plen, "%s/%s", path, names[i]);
        st = load_text_file(tok, full, o, docs, err);
        free(full);
    }
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    return st;
}

/* A string field of obj, or NULL with an error naming file, line and key (optional: absent is ""). */
static lq_status get_str(const cJSON *obj, const char *key, bool optional, const char *path, size_t line,
                         const char **out, lq_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v && optional) {
        *out = "";
        return LQ_OK;
    }
    if (!v) return LQ_ERR(err, LQ_ERR_INPUT, "%s:%zu: missing field \"%s\"", path, line, key);
    if (!cJSON_IsString(v) || !v->valuestring)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s:%zu: field \"%s\" is not a string", path, line, key);
    *out = v->valuestring;
    return LQ_OK;
}

static lq_status sprintf_alloc(char **out, lq_err *err, const char *fmt, const char *a, const char *b) {
    int n = b ? snprintf(NULL, 0, fmt, a, b) : snprintf(NULL, 0, fmt, a);
    if (n < 0) return LQ_ERR(err, LQ_ERR_INTERNAL, "format failed");
    char *s = malloc((size_t)n + 1);
    if (!s) return LQ_ERR(err, LQ_ERR_OOM, "%d bytes", n);
    if (b) snprintf(s, (size_t)n + 1, fmt, a, b);
    else snprintf(s, (size_t)n + 1, fmt, a);
    *out = s;
    return LQ_OK;
}

static lq_status alpaca_doc(const lq_tokenizer *tok, const cJSON *obj, const char *path, size_t line,
                            const lq_data_opts *o, doc_buf *d, lq_err *err) {
    const char *ins, *inp, *outp;
    LQ_TRY(get_str(obj, "instruction", false, path, line, &ins, err));
    LQ_TRY(get_str(obj, "input", true, path, line, &inp, err));
    LQ_TRY(get_str(obj, "output", false, path, line, &outp, err));
    char *prompt = NULL;
    if (inp[0]) LQ_TRY(sprintf_alloc(&prompt, err, ALPACA_INPUT, ins, inp));
    else LQ_TRY(sprintf_alloc(&prompt, err, ALPACA_NOINPUT, ins, NULL));
    lq_status st = doc_text(d, tok, o, prompt, strlen(prompt), false, err);
    free(prompt);
    LQ_TRY(st);
    return doc_text(d, tok, o, outp, strlen(outp), true, err);
}

static lq_status chat_doc(const lq_tokenizer *tok, const cJSON *obj, const char *path, size_t line,
                          const lq_data_opts *o, doc_buf *d, lq_err *err) {
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(obj, "messages");
    if (!msgs) return LQ_ERR(err, LQ_ERR_INPUT, "%s:%zu: missing field \"messages\"", path, line);
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s:%zu: \"messages\" is not a non-empty array", path, line);
    size_t k = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs) {
        if (!cJSON_IsObject(m))
            return LQ_ERR(err, LQ_ERR_INPUT, "%s:%zu: messages[%zu] is not an object", path, line, k);
        const char *role, *content;
        LQ_TRY(get_str(m, "role", false, path, line, &role, err));
        LQ_TRY(get_str(m, "content", false, path, line, &content, err));
        /* ChatML's roles; another would be rendered as is and trained on as a prompt */
        if (strcmp(role, "system") != 0 && strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0 &&
            strcmp(role, "tool") != 0)
            return LQ_ERR(err, LQ_ERR_INPUT, "%s:%zu: messages[%zu].role \"%.40s\" is not system, user, assistant or tool",
                          path, line, k, role);
        char *head = NULL, *body = NULL;
        LQ_TRY(sprintf_alloc(&head, err, "<|im_start|>%s\n", role, NULL));
        lq_status st = sprintf_alloc(&body, err, "%s<|im_end|>", content, NULL);
        if (st == LQ_OK) st = doc_text(d, tok, o, head, strlen(head), false, err);
        if (st == LQ_OK) st = doc_text(d, tok, o, body, strlen(body), strcmp(role, "assistant") == 0, err);
        if (st == LQ_OK) st = doc_text(d, tok, o, "\n", 1, false, err);
        free(head);
        free(body);
        LQ_TRY(st);
        k++;
    }
    return LQ_OK;
}

/* Offset of the first NUL byte or invalid UTF-8 sequence in s[0, n) (overlong forms, surrogates
 * and code points past U+10FFFF count as invalid, as in RFC 3629), or n when there is none: cJSON
 * would cut a string at a NUL and pass broken UTF-8 on to the tokenizer. */
static size_t line_check(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        if (c == 0) return i;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k = c >= 0xc2 && c <= 0xdf ? 1 : c >= 0xe0 && c <= 0xef ? 2 : c >= 0xf0 && c <= 0xf4 ? 3 : 0;
        if (k == 0 || i + k >= n) return i; /* a bad lead byte, or the sequence runs past the line */
        unsigned lo = 0x80, hi = 0xbf; /* the second byte's range (RFC 3629's table) */
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
        if (u[i + 1] < lo || u[i + 1] > hi) return i;
        for (size_t j = 2; j <= k; j++)
            if (u[i + j] < 0x80 || u[i + j] > 0xbf) return i;
        i += k + 1;
    }
    return n;
}

static lq_status load_jsonl(const lq_tokenizer *tok, const char *path, const lq_data_opts *o, lq_docs *docs,
                            lq_err *err) {
    char *text = NULL;
    size_t len = 0;
    LQ_TRY(read_file(path, &text, &len, err));
    lq_status st = LQ_OK;
    size_t line = 0, pos = 0, before = docs->n;
    doc_buf d = {0};
    while (pos < len && st == LQ_OK) {
        line++;
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - text) : len;
        const char *s = text + pos;
        size_t n = end - pos;
        pos = end + 1;
        size_t j = 0;
        while (j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '\r')) j++;
        if (j == n) continue; /* blank line */
        size_t bad = line_check(s, n);
        if (bad < n) {
            st = LQ_ERR(err, LQ_ERR_INPUT, "%s:%zu: %s at byte %zu of the line", path, line,
                        s[bad] ? "not valid UTF-8" : "a NUL byte", bad + 1);
            break;
        }
        const char *jend = NULL;
        cJSON *obj = cJSON_ParseWithLengthOpts(s, n, &jend, 0);
        size_t rest = obj && jend ? (size_t)(jend - s) : n;
        while (rest < n && (s[rest] == ' ' || s[rest] == '\t' || s[rest] == '\r')) rest++;
        if (!obj || !cJSON_IsObject(obj) || rest < n) {
            st = LQ_ERR(err, LQ_ERR_INPUT, "%s:%zu: %s", path, line,
                        !obj ? "bad JSON" : !cJSON_IsObject(obj) ? "line is not a JSON object"
                                                                 : "text after the JSON object (one object per line)");
            cJSON_Delete(obj);
            break;
        }
        if (o->format == LQ_DATA_JSONL) {
            const char *t;
            st = get_str(obj, "text", false, path, line, &t, err);
            if (st == LQ_OK) st = doc_text(&d, tok, o, t, strlen(t), true, err);
        } else if (o->format == LQ_DATA_ALPACA) {
            st = alpaca_doc(tok, obj, path, line, o, &d, err);
        } else {
            st = chat_doc(tok, obj, path, line, o, &d, err);
        }
        cJSON_Delete(obj);
        if (st == LQ_OK) st = doc_finish(&d, o, o->format != LQ_DATA_CHAT, docs, err);
    }
    free(d.ids);
    free(d.labels);
    free(text);
    if (st == LQ_OK && docs->n == before) st = LQ_ERR(err, LQ_ERR_INPUT, "%s: no records", path);
    return st;
}

lq_status lq_data_load(const lq_tokenizer *tok, const char *path, const lq_data_opts *opts, lq_docs *docs,
                       lq_err *err) {
    LQ_CHECK(err, tok && path && opts && docs, LQ_ERR_ARG, "tokenizer, path, opts and docs are required");
    LQ_CHECK(err, opts->eos_id >= 0 && opts->eos_id < lq_tokenizer_n_ids(tok) &&
                      lq_tokenizer_id_to_token(tok, opts->eos_id) != NULL,
             LQ_ERR_ARG, "eos_id %d is not a token of the tokenizer", (int)opts->eos_id);
    if (opts->format == LQ_DATA_CHAT && opts->chat_template) {
        /* Only the ChatML family is supported: ask the renderer, which knows which templates it takes. */
        lq_chat_msg probe = {"user", "x"};
        char *out = NULL;
        size_t n = 0;
        LQ_TRY(lq_chat_render_template(opts->chat_template, &probe, 1, false, &out, &n, err));
        free(out);
    }
    size_t before = docs->n;
    lq_status st;
    switch (opts->format) {
    case LQ_DATA_TEXT: {
        struct stat sb;
        if (stat(path, &sb) != 0) return LQ_ERR(err, LQ_ERR_INPUT, "%s: %s", path, strerror(errno));
        st = S_ISDIR(sb.st_mode) ? load_text_dir(tok, path, opts, docs, err) : load_text_file(tok, path, opts, docs, err);
        break;
    }
    case LQ_DATA_JSONL:
    case LQ_DATA_ALPACA:
    case LQ_DATA_CHAT: st = load_jsonl(tok, path, opts, docs, err); break;
    default: return LQ_ERR(err, LQ_ERR_ARG, "unknown data format %d", (int)opts->format);
    }
    if (st != LQ_OK) { /* leave docs as they were */
        for (size_t i = before; i < docs->n; i++) {
            free(docs->doc[i].ids);
            free(docs->doc[i].labels);
        }
        docs->n = before;
    }
    return st;
}
