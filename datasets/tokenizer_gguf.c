/* datasets/tokenizer_gguf.c: builds an lq_tokenizer from a GGUF file's tokenizer.ggml.* metadata. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "datasets/datasets_impl.h"
#include "io/io.h"

#define BAD(...) LQ_ERR(err, LQ_ERR_INPUT, __VA_ARGS__)

/* llama.cpp's token types (tokenizer.ggml.token_type). */
enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER_DEFINED = 4, TT_UNUSED = 5, TT_BYTE = 6 };

/* The GPT-2 regex as tokenizers' ByteLevel runs it (llama.cpp lists it without the final "|\s+";
 * the unmatched trailing whitespace it leaves becomes its own piece there too, so ids agree). */
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define RE_LLAMA3                                                                                            \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|" \
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_QWEN2                                                                                             \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"    \
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"

/* tokenizer.ggml.pre -> the regexes llama.cpp splits with, in order (each Isolated). */
typedef struct pre_map {
    const char *names; /* '|'-separated */
    const char *re[2];
    bool ignore_merges;
} pre_map;

static const pre_map PRE[] = {
    {"default|gpt-2|gpt2|mpt|olmo|jais", {RE_GPT2, NULL}, false},
    {"llama-bpe|llama3|smaug-bpe|falcon3|pixtral", {RE_LLAMA3, NULL}, true},
    {"smollm|starcoder|refact|command-r|codeshell|exaone|minerva-7b", {"\\p{N}", RE_GPT2}, false},
    {"qwen2|qwen2.5|qwen-2.5|deepseek-r1-qwen|stablelm2", {RE_QWEN2, NULL}, false},
};

static const pre_map *find_pre(const char *name) {
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof PRE / sizeof PRE[0]; i++)
        for (const char *p = PRE[i].names; p;) {
            const char *bar = strchr(p, '|');
            size_t len = bar ? (size_t)(bar - p) : strlen(p);
            if (len == n && memcmp(p, name, n) == 0) return &PRE[i];
            p = bar ? bar + 1 : NULL;
        }
    return NULL;
}

/* An optional id key: -1 when absent; present but not an id below n_ids is an error. */
static lq_status get_id(const lq_gguf_file *g, const char *key, int32_t n_ids, int32_t *out, lq_err *err) {
    *out = -1;
    const lq_gguf_kv *kv = lq_gguf_find_kv(g, key);
    if (!kv) return LQ_OK;
    uint64_t v;
    if (kv->type == LQ_GGUF_ARRAY || !lq_gguf_kv_uint(kv, 0, &v) || v >= (uint64_t)n_ids)
        return BAD("%s: %s is not a token id below %d", lq_gguf_path(g), key, (int)n_ids);
    *out = (int32_t)v;
    return LQ_OK;
}

static lq_status get_bool(const lq_gguf_file *g, const char *key, bool def, bool *out, lq_err *err) {
    *out = def;
    const lq_gguf_kv *kv = lq_gguf_find_kv(g, key);
    if (!kv) return LQ_OK;
    if (kv->type != LQ_GGUF_BOOL) return BAD("%s: %s is not a bool", lq_gguf_path(g), key);
    *out = kv->v.b;
    return LQ_OK;
}

lq_status lq_tokenizer_gguf_info(const lq_gguf_file *g, lq_tok_gguf_info *info, lq_err *err) {
    if (!g || !info) return LQ_ERR(err, LQ_ERR_ARG, "lq_tokenizer_gguf_info: NULL argument");
    memset(info, 0, sizeof *info);
    const lq_gguf_kv *toks = lq_gguf_find_kv(g, "tokenizer.ggml.tokens");
    if (!toks || toks->type != LQ_GGUF_ARRAY || toks->elem_type != LQ_GGUF_STRING || toks->n == 0 ||
        toks->n >= LQ_TOK_MAX_ID)
        return BAD("%s: tokenizer.ggml.tokens is missing or not a non-empty array of strings", lq_gguf_path(g));
    int32_t n = (int32_t)toks->n;
    LQ_TRY(get_id(g, "tokenizer.ggml.bos_token_id", n, &info->bos_id, err));
    LQ_TRY(get_id(g, "tokenizer.ggml.eos_token_id", n, &info->eos_id, err));
    LQ_TRY(get_id(g, "tokenizer.ggml.eot_token_id", n, &info->eot_id, err));
    LQ_TRY(get_id(g, "tokenizer.ggml.padding_token_id", n, &info->pad_id, err));
    LQ_TRY(get_bool(g, "tokenizer.ggml.add_bos_token", false, &info->add_bos, err));
    LQ_TRY(get_bool(g, "tokenizer.ggml.add_eos_token", false, &info->add_eos, err));
    const lq_gguf_kv *ct = lq_gguf_find_kv(g, "tokenizer.chat_template");
    info->chat_template = ct && ct->type == LQ_GGUF_STRING ? ct->v.s.s : NULL;
    return LQ_OK;
}

static lq_status fill(lq_tokenizer *t, const lq_gguf_file *g, lq_err *err) {
    const char *nm = t->name;
    const lq_gguf_kv *kv = lq_gguf_find_kv(g, "tokenizer.ggml.model");
    if (!kv || kv->type != LQ_GGUF_STRING) return BAD("%s: tokenizer.ggml.model is missing or not a string", nm);
    if (strcmp(kv->v.s.s, "gpt2") != 0)
        return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "%s: tokenizer.ggml.model \"%.40s\" is not supported (only gpt2, byte-level BPE)",
                      nm, kv->v.s.s);
    const char *pre_name = "default";
    kv = lq_gguf_find_kv(g, "tokenizer.ggml.pre");
    if (kv) {
        if (kv->type != LQ_GGUF_STRING) return BAD("%s: tokenizer.ggml.pre is not a string", nm);
        pre_name = kv->v.s.s;
    }
    const pre_map *pre = find_pre(pre_name);
    if (!pre)
        return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "%s: tokenizer.ggml.pre \"%.40s\" is not supported (known: gpt-2, llama-bpe, smollm, qwen2 and their aliases)",
                      nm, pre_name);
    lq_tok_gguf_info info;
    LQ_TRY(lq_tokenizer_gguf_info(g, &info, err));
    const lq_gguf_kv *toks = lq_gguf_find_kv(g, "tokenizer.ggml.tokens");
    const lq_gguf_kv *types = lq_gguf_find_kv(g, "tokenizer.ggml.token_type");
    const lq_gguf_kv *merges = lq_gguf_find_kv(g, "tokenizer.ggml.merges");
    if (types && (types->type != LQ_GGUF_ARRAY || types->n != toks->n))
        return BAD("%s: tokenizer.ggml.token_type is not an array of %llu numbers", nm, (unsigned long long)toks->n);
    if (!merges || merges->type != LQ_GGUF_ARRAY || merges->elem_type != LQ_GGUF_STRING)
        return BAD("%s: tokenizer.ggml.merges is missing or not an array of strings", nm);

    size_t n = (size_t)toks->n;
    t->n_ids = (int32_t)n;
    t->id_tok = calloc(n, sizeof *t->id_tok);
    t->id_raw = calloc(n, sizeof *t->id_raw);
    t->id_raw_len = calloc(n, sizeof *t->id_raw_len);
    t->id_special = calloc(n, 1);
    int64_t *tt = calloc(n, sizeof *tt);
    if (!t->id_tok || !t->id_raw || !t->id_raw_len || !t->id_special || !tt) {
        free(tt);
        return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory for %zu tokens", nm, n);
    }
    lq_status st = LQ_OK;
    int n_added = 0;
    for (size_t i = 0; i < n && st == LQ_OK; i++) {
        tt[i] = TT_NORMAL;
        if (types && !lq_gguf_kv_int(types, i, &tt[i]))
            st = BAD("%s: tokenizer.ggml.token_type[%zu] is not an integer", nm, i);
        if (tt[i] == TT_CONTROL || tt[i] == TT_USER_DEFINED) n_added++;
    }
    t->added = calloc(n_added ? (size_t)n_added : 1, sizeof *t->added);
    if (st == LQ_OK && !t->added) st = LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", nm);
    /* Control / user-defined tokens become added tokens (control = special), matched before the
     * pre-tokenizer as tokenizers matches added tokens; the rest is the BPE vocab. An empty token
     * is a hole (llama.cpp renames it; nothing can produce it). */
    for (size_t i = 0; i < n && st == LQ_OK; i++) {
        const lq_gguf_str *s = lq_gguf_kv_str(toks, i);
        if (!s || s->len == 0) continue;
        if (strlen(s->s) != s->len) {
            st = BAD("%s: tokenizer.ggml.tokens[%zu] holds a NUL byte", nm, i);
            break;
        }
        if (!(t->id_tok[i] = strdup(s->s))) {
            st = LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", nm);
            break;
        }
        int32_t old = -1;
        if (tt[i] == TT_CONTROL || tt[i] == TT_USER_DEFINED) {
            tok_added *a = &t->added[t->n_added++];
            a->content = strdup(s->s);
            if (!a->content) {
                st = LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", nm);
                break;
            }
            a->len = (uint32_t)s->len, a->id = (int32_t)i, a->special = tt[i] == TT_CONTROL;
            st = tok_strmap_put(&t->added_map, a->content, a->len, a->id, &old);
            if (a->special) t->id_special[i] = 1;
            t->added_first[0][(uint8_t)a->content[0]] = 1;
        } else {
            st = tok_strmap_put(&t->vocab, t->id_tok[i], (uint32_t)s->len, (int32_t)i, &old);
        }
        if (st == LQ_OK && old >= 0) st = BAD("%s: tokenizer.ggml.tokens: \"%.60s\" appears twice", nm, s->s);
    }
    free(tt);
    LQ_TRY(st);
    t->unk_id = -1; /* byte-level: every byte has a token; llama.cpp ignores unk for BPE too */
    t->ignore_merges = pre->ignore_merges;

    /* Merges "a b" (split at the first space after the first byte, as llama.cpp does); rank = index. */
    char *buf = NULL;
    size_t cap = 0;
    for (uint64_t i = 0; i < merges->n && st == LQ_OK; i++) {
        const lq_gguf_str *s = lq_gguf_kv_str(merges, i);
        const char *sp = s && s->len > 1 ? strchr(s->s + 1, ' ') : NULL;
        if (!sp || !sp[1] || strlen(s->s) != s->len) {
            st = BAD("%s: tokenizer.ggml.merges[%llu] is not two tokens separated by a space", nm, (unsigned long long)i);
            break;
        }
        size_t la = (size_t)(sp - s->s), lb = s->len - la - 1;
        if (la + lb + 1 > cap) {
            cap = 2 * (la + lb + 1);
            char *nb = realloc(buf, cap);
            if (!nb) {
                st = LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", nm);
                break;
            }
            buf = nb;
        }
        memcpy(buf, s->s, la), memcpy(buf + la, sp + 1, lb), buf[la + lb] = 0;
        int32_t ia = tok_strmap_get(&t->vocab, s->s, (uint32_t)la), ib = tok_strmap_get(&t->vocab, sp + 1, (uint32_t)lb);
        int32_t im = tok_strmap_get(&t->vocab, buf, (uint32_t)(la + lb));
        if (ia < 0 || ib < 0 || im < 0)
            st = BAD("%s: tokenizer.ggml.merges[%llu] \"%.60s\": a part or the merge is not a token", nm,
                     (unsigned long long)i, s->s);
        else
            st = tok_pairmap_put(&t->merges, ia, ib, (int32_t)i, im);
    }
    free(buf);
    LQ_TRY(st);

    /* Pre-tokenizer: llama.cpp's regexes (each splitting, matches isolated), then byte-level. */
    for (int i = 0; i < 2 && pre->re[i]; i++) {
        tok_step s = {.kind = TOK_STEP_SPLIT, .behavior = TOK_ISOLATED};
        s.re = tok_regex_compile(pre->re[i], strlen(pre->re[i]), false, nm, "the pre-tokenizer regex", err);
        if (!s.re) return err ? err->status : LQ_ERR_INTERNAL;
        LQ_TRY(tok_add_step(t, s, err));
    }
    LQ_TRY(tok_add_step(t, (tok_step){.kind = TOK_STEP_BYTELEVEL, .behavior = TOK_ISOLATED}, err));
    t->byte_level = true;

    /* BOS / EOS that encode(add_special) adds, as llama.cpp's add_bos / add_eos. */
    if (info.add_bos && info.bos_id >= 0) {
        if (!(t->prefix = malloc(sizeof *t->prefix))) return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", nm);
        t->prefix[t->n_prefix++] = info.bos_id;
    }
    if (info.add_eos && info.eos_id >= 0) {
        if (!(t->suffix = malloc(sizeof *t->suffix))) return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", nm);
        t->suffix[t->n_suffix++] = info.eos_id;
    }
    for (int i = 0; i < t->n_prefix + t->n_suffix; i++) {
        int32_t id = i < t->n_prefix ? t->prefix[i] : t->suffix[i - t->n_prefix];
        if (!t->id_tok[id]) return BAD("%s: the BOS / EOS id %d is an empty token", nm, (int)id);
    }
    return tok_build_decode(t, err);
}

lq_status lq_tokenizer_from_gguf(const lq_gguf_file *g, lq_tokenizer **out, lq_err *err) {
    if (!g || !out) return LQ_ERR(err, LQ_ERR_ARG, "lq_tokenizer_from_gguf: NULL argument");
    *out = NULL;
    const char *name = lq_gguf_path(g) ? lq_gguf_path(g) : "(gguf)";
    lq_tokenizer *t = calloc(1, sizeof *t);
    if (!t || !(t->name = strdup(name))) {
        free(t);
        return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", name);
    }
    lq_status st = fill(t, g, err);
    if (st != LQ_OK) lq_tokenizer_free(t);
    else *out = t;
    return st;
}
