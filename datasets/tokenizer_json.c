/* datasets/tokenizer_json.c: reads and validates a tokenizer.json into an lq_tokenizer. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/file.h"
#include "datasets/datasets_impl.h"

#define GPT2_RE "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

#define BAD(...) LQ_ERR(err, LQ_ERR_INPUT, __VA_ARGS__)

static bool json_id(const cJSON *v, int32_t *id) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0 && d < LQ_TOK_MAX_ID) || d != floor(d)) return false;
    *id = (int32_t)d;
    return true;
}

/* A boolean key: absent or null gives def; anything but a bool is an error. */
static lq_status json_bool(const cJSON *obj, const char *key, bool def, bool *out, const char *name,
                           const char *where, lq_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return LQ_OK;
    }
    if (!cJSON_IsBool(v)) return BAD("%s: %s.%s is not a boolean", name, where, key);
    *out = cJSON_IsTrue(v);
    return LQ_OK;
}

static const char *json_type(const cJSON *obj) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "type");
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

/* Records token s (byte-level form) for id; the same id twice with different strings is an error. */
static lq_status set_id(lq_tokenizer *t, int32_t id, const char *s, const char *what, lq_err *err) {
    if (t->id_tok[id]) {
        if (strcmp(t->id_tok[id], s) == 0) return LQ_OK;
        return BAD("%s: %s: id %d is used by both \"%.60s\" and \"%.60s\"", t->name, what, (int)id, t->id_tok[id], s);
    }
    size_t n = strlen(s);
    t->id_tok[id] = malloc(n + 1);
    if (!t->id_tok[id]) return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", t->name);
    memcpy(t->id_tok[id], s, n + 1);
    return LQ_OK;
}

static lq_status load_model(lq_tokenizer *t, const cJSON *root, lq_err *err) {
    const char *nm = t->name;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) return BAD("%s: \"model\" is missing or not an object", nm);
    const char *type = json_type(model);
    if (cJSON_GetObjectItemCaseSensitive(model, "type") && (!type || strcmp(type, "BPE") != 0))
        return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "%s: model.type \"%s\" is not supported (only BPE)", nm,
                      type ? type : "(not a string)");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab)) return BAD("%s: model.vocab is missing or not an object", nm);
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsArray(merges)) return BAD("%s: model.merges is missing or not an array", nm);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (v && !cJSON_IsNull(v) && !(cJSON_IsNumber(v) && v->valuedouble == 0))
        return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "%s: model.dropout is not supported", nm);
    const char *affix[2] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        v = cJSON_GetObjectItemCaseSensitive(model, affix[i]);
        if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && v->valuestring[0] == 0))
            return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "%s: model.%s is not supported", nm, affix[i]);
    }
    bool fb;
    LQ_TRY(json_bool(model, "byte_fallback", false, &fb, nm, "model", err));
    if (fb) return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "%s: model.byte_fallback is not supported", nm);
    LQ_TRY(json_bool(model, "ignore_merges", false, &t->ignore_merges, nm, "model", err));

    /* Ids: the largest over vocab and added tokens sizes the tables. */
    int32_t max_id = -1;
    for (const cJSON *e = vocab->child; e; e = e->next) {
        int32_t id;
        if (!json_id(e, &id))
            return BAD("%s: model.vocab[\"%.60s\"] is not an integer id in [0, %d)", nm, e->string, LQ_TOK_MAX_ID);
        if (!e->string || !e->string[0]) return BAD("%s: model.vocab has an empty token", nm);
        if (id > max_id) max_id = id;
    }
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added)) return BAD("%s: added_tokens is not an array", nm);
    int i = 0;
    for (const cJSON *e = added ? added->child : NULL; e; e = e->next, i++) {
        int32_t id;
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (!cJSON_IsObject(e) || !json_id(cJSON_GetObjectItemCaseSensitive(e, "id"), &id) || !cJSON_IsString(c) ||
            !c->valuestring[0])
            return BAD("%s: added_tokens[%d] needs an integer \"id\" in [0, %d) and a non-empty \"content\"", nm, i,
                       LQ_TOK_MAX_ID);
        if (id > max_id) max_id = id;
    }
    /* Holes are allowed, but not so many that a tiny file could make the tables huge. */
    int64_t n_entries = (int64_t)cJSON_GetArraySize(vocab) + i;
    if ((int64_t)max_id >= 2 * n_entries + 1024)
        return BAD("%s: the largest id %d is far beyond the %lld tokens listed (ids too sparse)", nm, (int)max_id,
                   (long long)n_entries);
    t->n_ids = max_id + 1;
    size_t n = (size_t)t->n_ids;
    t->id_tok = calloc(n ? n : 1, sizeof *t->id_tok);
    t->id_raw = calloc(n ? n : 1, sizeof *t->id_raw);
    t->id_raw_len = calloc(n ? n : 1, sizeof *t->id_raw_len);
    t->id_special = calloc(n ? n : 1, 1);
    t->n_added = i;
    t->added = calloc(i ? (size_t)i : 1, sizeof *t->added);
    if (!t->id_tok || !t->id_raw || !t->id_raw_len || !t->id_special || !t->added)
        return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory for %d ids", nm, (int)t->n_ids);

    for (const cJSON *e = vocab->child; e; e = e->next) {
        int32_t id = (int32_t)e->valuedouble, old = -1;
        if (t->id_tok[id])
            return BAD("%s: model.vocab: id %d is used by both \"%.60s\" and \"%.60s\"", nm, (int)id, t->id_tok[id],
                       e->string);
        LQ_TRY(set_id(t, id, e->string, "model.vocab", err));
        LQ_TRY(tok_strmap_put(&t->vocab, t->id_tok[id], (uint32_t)strlen(e->string), id, &old));
        if (old >= 0) return BAD("%s: model.vocab: token \"%.60s\" appears twice", nm, e->string);
    }
    v = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    t->unk_id = -1;
    if (v && !cJSON_IsNull(v)) {
        if (!cJSON_IsString(v) || (t->unk_id = tok_strmap_get(&t->vocab, v->valuestring, (uint32_t)strlen(v->valuestring))) < 0)
            return BAD("%s: model.unk_token is not a string in the vocab", nm);
    }

    /* Merges: rank = index; a, b and a+b must be tokens. */
    i = 0;
    char *buf = NULL;
    size_t cap = 0;
    lq_status st = LQ_OK;
    for (const cJSON *e = merges->child; e && st == LQ_OK; e = e->next, i++) {
        const char *a, *b;
        size_t la, lb;
        if (cJSON_IsString(e)) {
            const char *sp = strchr(e->valuestring, ' ');
            if (!sp || strchr(sp + 1, ' ') || sp == e->valuestring || !sp[1]) {
                st = BAD("%s: model.merges[%d] \"%.60s\" is not two tokens separated by one space", nm, i, e->valuestring);
                break;
            }
            a = e->valuestring, la = (size_t)(sp - a), b = sp + 1, lb = strlen(b);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(e->child) &&
                   cJSON_IsString(e->child->next)) {
            a = e->child->valuestring, la = strlen(a), b = e->child->next->valuestring, lb = strlen(b);
        } else {
            st = BAD("%s: model.merges[%d] is neither \"a b\" nor [\"a\", \"b\"]", nm, i);
            break;
        }
        if (la + lb + 1 > cap) {
            cap = 2 * (la + lb + 1);
            char *nb = realloc(buf, cap);
            if (!nb) {
                st = LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", nm);
                break;
            }
            buf = nb;
        }
        memcpy(buf, a, la), memcpy(buf + la, b, lb), buf[la + lb] = 0;
        int32_t ia = tok_strmap_get(&t->vocab, a, (uint32_t)la), ib = tok_strmap_get(&t->vocab, b, (uint32_t)lb);
        int32_t im = tok_strmap_get(&t->vocab, buf, (uint32_t)(la + lb));
        if (ia < 0 || ib < 0 || im < 0)
            st = BAD("%s: model.merges[%d]: \"%.60s\" is not in the vocab", nm, i,
                     ia < 0 ? a : ib < 0 ? b : buf);
        else
            st = tok_pairmap_put(&t->merges, ia, ib, i, im);
    }
    free(buf);
    LQ_TRY(st);

    /* Added tokens: content -> id; a vocab token's id must carry the same content. */
    i = 0;
    for (const cJSON *e = added ? added->child : NULL; e; e = e->next, i++) {
        tok_added *a = &t->added[i];
        const char *c = cJSON_GetObjectItemCaseSensitive(e, "content")->valuestring;
        char where[48];
        snprintf(where, sizeof where, "added_tokens[%d]", i);
        a->id = (int32_t)cJSON_GetObjectItemCaseSensitive(e, "id")->valuedouble;
        a->len = (uint32_t)strlen(c);
        a->content = malloc(a->len + 1);
        if (!a->content) return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", nm);
        memcpy(a->content, c, a->len + 1);
        LQ_TRY(json_bool(e, "special", false, &a->special, nm, where, err));
        LQ_TRY(json_bool(e, "lstrip", false, &a->lstrip, nm, where, err));
        LQ_TRY(json_bool(e, "rstrip", false, &a->rstrip, nm, where, err));
        LQ_TRY(json_bool(e, "single_word", false, &a->single_word, nm, where, err));
        LQ_TRY(json_bool(e, "normalized", !a->special, &a->normalized, nm, where, err));
        LQ_TRY(set_id(t, a->id, c, where, err));
        int32_t old = -1;
        LQ_TRY(tok_strmap_put(&t->added_map, a->content, a->len, a->id, &old));
        if (old >= 0 && old != a->id) return BAD("%s: %s: \"%.60s\" appears twice with different ids", nm, where, c);
        if (a->special) t->id_special[a->id] = 1;
        t->added_first[a->normalized][(uint8_t)c[0]] = 1;
    }
    return LQ_OK;
}

static lq_status parse_step(lq_tokenizer *t, const cJSON *p, int depth, lq_err *err);

lq_status tok_add_step(lq_tokenizer *t, tok_step s, lq_err *err) {
    tok_step *ns = realloc(t->steps, (size_t)(t->n_steps + 1) * sizeof *ns);
    if (!ns) {
        pcre2_code_free(s.re);
        return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", t->name);
    }
    t->steps = ns;
    t->steps[t->n_steps++] = s;
    return LQ_OK;
}

static lq_status parse_step(lq_tokenizer *t, const cJSON *p, int depth, lq_err *err) {
    const char *nm = t->name;
    if (!cJSON_IsObject(p)) return BAD("%s: pre_tokenizer is not an object", nm);
    const char *type = json_type(p);
    if (!type) return BAD("%s: pre_tokenizer has no \"type\"", nm);
    tok_step s = {0};
    /* Later steps would see the byte-level characters, not the bytes this implementation keeps. */
    if (t->byte_level && strcmp(type, "Sequence") != 0)
        return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "%s: pre_tokenizer step \"%.40s\" after ByteLevel is not supported", nm,
                      type);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
        if (!cJSON_IsArray(list)) return BAD("%s: pre_tokenizer Sequence has no \"pretokenizers\" array", nm);
        if (depth > 8) return BAD("%s: pre_tokenizer Sequences nest too deep", nm);
        for (const cJSON *e = list->child; e; e = e->next) LQ_TRY(parse_step(t, e, depth + 1, err));
        return LQ_OK;
    }
    if (strcmp(type, "Split") == 0) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        const cJSON *re = cJSON_GetObjectItemCaseSensitive(pat, "Regex");
        const cJSON *str = cJSON_GetObjectItemCaseSensitive(pat, "String");
        const cJSON *beh = cJSON_GetObjectItemCaseSensitive(p, "behavior");
        if (!cJSON_IsString(re) && !cJSON_IsString(str))
            return BAD("%s: pre_tokenizer Split: \"pattern\" is not {\"Regex\": ...} or {\"String\": ...}", nm);
        static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
        int b = -1;
        for (int i = 0; i < 5 && cJSON_IsString(beh); i++)
            if (strcmp(beh->valuestring, names[i]) == 0) b = i;
        if (b < 0) return BAD("%s: pre_tokenizer Split: \"behavior\" is missing or unknown", nm);
        s.kind = TOK_STEP_SPLIT, s.behavior = (tok_behavior)b;
        LQ_TRY(json_bool(p, "invert", false, &s.invert, nm, "pre_tokenizer Split", err));
        const char *src = cJSON_IsString(re) ? re->valuestring : str->valuestring;
        if (!src[0]) return BAD("%s: pre_tokenizer Split: empty pattern", nm);
        s.re = tok_regex_compile(src, strlen(src), !cJSON_IsString(re), nm, "pre_tokenizer Split pattern", err);
        if (!s.re) return err ? err->status : LQ_ERR_INPUT;
        return tok_add_step(t, s, err);
    }
    if (strcmp(type, "ByteLevel") == 0) {
        bool use_regex;
        s.kind = TOK_STEP_BYTELEVEL, s.behavior = TOK_ISOLATED;
        t->byte_level = true;
        LQ_TRY(json_bool(p, "add_prefix_space", true, &s.add_prefix_space, nm, "pre_tokenizer ByteLevel", err));
        LQ_TRY(json_bool(p, "use_regex", true, &use_regex, nm, "pre_tokenizer ByteLevel", err));
        if (use_regex) {
            s.re = tok_regex_compile(GPT2_RE, strlen(GPT2_RE), false, nm, "the GPT-2 regex", err);
            if (!s.re) return err ? err->status : LQ_ERR_INTERNAL;
        }
        return tok_add_step(t, s, err);
    }
    if (strcmp(type, "Digits") == 0) {
        /* tokenizers splits on char::is_numeric: isolated digits, or contiguous runs of them. */
        bool individual;
        LQ_TRY(json_bool(p, "individual_digits", false, &individual, nm, "pre_tokenizer Digits", err));
        s.kind = TOK_STEP_SPLIT, s.behavior = individual ? TOK_ISOLATED : TOK_CONTIGUOUS;
        s.re = tok_regex_compile("\\p{N}", 5, false, nm, "the Digits pattern", err);
        if (!s.re) return err ? err->status : LQ_ERR_INTERNAL;
        return tok_add_step(t, s, err);
    }
    return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "%s: pre_tokenizer type \"%.40s\" is not supported", nm, type);
}

/* Appends the template's special-token ids before ($A not yet seen) or after $A. */
static lq_status parse_template(lq_tokenizer *t, const cJSON *p, lq_err *err) {
    const char *nm = t->name;
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(p, "single");
    const cJSON *specials = cJSON_GetObjectItemCaseSensitive(p, "special_tokens");
    if (!cJSON_IsArray(single)) return BAD("%s: post_processor TemplateProcessing: \"single\" is not an array", nm);
    int seen_a = 0;
    for (const cJSON *e = single->child; e; e = e->next) {
        const cJSON *sq = cJSON_GetObjectItemCaseSensitive(e, "Sequence");
        const cJSON *sp = cJSON_GetObjectItemCaseSensitive(e, "SpecialToken");
        if (sq) {
            seen_a++;
            continue;
        }
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(sp, "id");
        const cJSON *def = cJSON_IsString(name) ? cJSON_GetObjectItemCaseSensitive(specials, name->valuestring) : NULL;
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(def, "ids");
        if (!cJSON_IsArray(ids))
            return BAD("%s: post_processor TemplateProcessing: a SpecialToken is not defined in \"special_tokens\"", nm);
        for (const cJSON *x = ids->child; x; x = x->next) {
            int32_t id;
            if (!json_id(x, &id) || id >= t->n_ids || !t->id_tok[id])
                return BAD("%s: post_processor TemplateProcessing: special token \"%.40s\" has an id that is not a token",
                           nm, name->valuestring);
            int *cnt = seen_a ? &t->n_suffix : &t->n_prefix;
            int32_t **arr = seen_a ? &t->suffix : &t->prefix;
            int32_t *na = realloc(*arr, (size_t)(*cnt + 1) * sizeof *na);
            if (!na) return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", nm);
            *arr = na;
            na[(*cnt)++] = id;
        }
    }
    if (seen_a != 1) return BAD("%s: post_processor TemplateProcessing: \"single\" must hold one Sequence", nm);
    return LQ_OK;
}

static lq_status parse_post(lq_tokenizer *t, const cJSON *p, int depth, lq_err *err) {
    if (!p || cJSON_IsNull(p)) return LQ_OK;
    const char *type = cJSON_IsObject(p) ? json_type(p) : NULL;
    if (!type) return BAD("%s: post_processor is not an object with a \"type\"", t->name);
    if (strcmp(type, "ByteLevel") == 0) return LQ_OK;
    if (strcmp(type, "TemplateProcessing") == 0) return parse_template(t, p, err);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "processors");
        if (!cJSON_IsArray(list) || depth > 8) return BAD("%s: post_processor Sequence has no \"processors\" array", t->name);
        for (const cJSON *e = list->child; e; e = e->next) LQ_TRY(parse_post(t, e, depth + 1, err));
        return LQ_OK;
    }
    return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "%s: post_processor type \"%.40s\" is not supported", t->name, type);
}

/* The bytes each id decodes to: byte-level characters back to bytes, or (a character outside the
 * map, e.g. in an added token) the token's UTF-8 as it is, as tokenizers' ByteLevel decoder does. */
lq_status tok_build_decode(lq_tokenizer *t, lq_err *err) {
    for (int32_t id = 0; id < t->n_ids; id++) {
        const unsigned char *s = (const unsigned char *)t->id_tok[id];
        if (!s) continue;
        size_t n = strlen((const char *)s), k = 0;
        char *raw = malloc(n + 1);
        if (!raw) return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", t->name);
        bool mapped = true;
        for (size_t i = 0; i < n && mapped;) {
            uint32_t cp = s[i];
            int len = cp < 0x80 ? 1 : cp >= 0xC0 && cp < 0xE0 ? 2 : 0;
            if (len == 2 && i + 1 < n) cp = ((cp & 0x1F) << 6) | (s[i + 1] & 0x3F);
            int b = len && i + (size_t)len <= n ? tok_cp_to_byte(cp) : -1;
            if (b < 0) mapped = false;
            else raw[k++] = (char)b, i += (size_t)len;
        }
        if (!mapped) memcpy(raw, s, n), k = n;
        raw[k] = 0;
        t->id_raw[id] = raw, t->id_raw_len[id] = (uint32_t)k;
    }
    for (int b = 0; b < 256; b++) {
        uint32_t cp = tok_byte_to_cp((uint8_t)b);
        char *c = t->byte_chr[b];
        if (cp < 0x80) c[0] = (char)cp, c[1] = 0;
        else c[0] = (char)(0xC0 | (cp >> 6)), c[1] = (char)(0x80 | (cp & 0x3F)), c[2] = 0;
        t->byte_id[b] = tok_strmap_get(&t->vocab, c, (uint32_t)strlen(c));
    }
    return LQ_OK;
}

lq_status lq_tokenizer_from_json(lq_tokenizer **out, const char *json, size_t len, const char *name, lq_err *err) {
    if (!out || !json) return LQ_ERR(err, LQ_ERR_ARG, "lq_tokenizer_from_json: NULL argument");
    *out = NULL;
    if (!name) name = "tokenizer.json";
    lq_tokenizer *t = calloc(1, sizeof *t);
    if (!t || !(t->name = strdup(name))) {
        free(t);
        return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", name);
    }
    lq_status st = LQ_OK;
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!cJSON_IsObject(root)) {
        st = BAD("%s: not a JSON object (parse error near byte %td)", name,
                 root ? 0 : cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - json : 0);
        goto done;
    }
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    if (norm && !cJSON_IsNull(norm)) {
        const char *type = json_type(norm);
        st = LQ_ERR(err, LQ_ERR_UNSUPPORTED, "%s: normalizer \"%.40s\" is not supported", name, type ? type : "?");
        goto done;
    }
    if ((st = load_model(t, root, err)) != LQ_OK) goto done;
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    if (pre && !cJSON_IsNull(pre) && (st = parse_step(t, pre, 0, err)) != LQ_OK) goto done;
    if ((st = parse_post(t, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), 0, err)) != LQ_OK) goto done;
    st = tok_build_decode(t, err);
done:
    cJSON_Delete(root);
    if (st != LQ_OK) lq_tokenizer_free(t);
    else *out = t;
    return st;
}

lq_status lq_tokenizer_load(lq_tokenizer **out, const char *path, lq_err *err) {
    if (!out || !path) return LQ_ERR(err, LQ_ERR_ARG, "lq_tokenizer_load: NULL argument");
    *out = NULL;
    char *buf = NULL;
    size_t n = 0;
    LQ_TRY(lq_read_file(path, LQ_TOK_MAX_FILE, "a tokenizer.json", &buf, &n, err));
    lq_status st = lq_tokenizer_from_json(out, buf, n, path, err);
    free(buf);
    return st;
}
