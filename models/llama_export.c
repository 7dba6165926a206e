/* models/llama_export.c: a loaded Llama model written back as a GGUF file llama.cpp reads: its
 * tensor names and metadata keys, q / k rows put back in llama.cpp's interleaved order; either
 * with the weights as loaded (lq_llama_save_gguf) or converted to one export dtype with the base
 * GGUF's general.* and tokenizer.* metadata carried over (lq_llama_save_gguf_as). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "models/models_impl.h"

#define TOKENIZER_JSON_MAX ((int64_t)256 << 20)

/* The inverse of the loader's unpermute: rotate-half row h*D + j*D/2 + a goes to llama.cpp's row
 * h*D + 2a + j (the pairs of each head interleaved for its RoPE). Rows are whole blocks. */
static void permute_rows(void *dst, const void *src, int64_t rows, size_t row_bytes, int64_t head_dim) {
    int64_t half = head_dim / 2;
    for (int64_t h = 0; h < rows / head_dim; h++)
        for (int64_t j = 0; j < 2; j++)
            for (int64_t a = 0; a < half; a++)
                memcpy((char *)dst + (size_t)(h * head_dim + 2 * a + j) * row_bytes,
                       (const char *)src + (size_t)(h * head_dim + j * half + a) * row_bytes, row_bytes);
}

/* How tensors are written: as loaded (keep), or converted to dt. */
typedef struct export_job {
    bool keep;
    lq_export_dtype dt;
    lq_export_report_fn report;
    void *user;
} export_job;

typedef struct export_list {
    lq_gguf_wtensor *t;
    char (*names)[96];
    void **copies; /* permuted / converted data, freed at the end */
    int n, n_copies, cap;
} export_list;

static lq_status keep_copy(export_list *e, void *p, const char *name, lq_err *err) {
    if (!p) return LQ_ERR(err, LQ_ERR_OOM, "export: out of memory copying %s", name);
    e->copies[e->n_copies++] = p;
    return LQ_OK;
}

/* t converted to the job's dtype (2-D weights; 1-D tensors stay f32), rows permuted first when
 * permute_hd > 0. Sets w->dtype / w->data. */
static lq_status convert(export_list *e, const export_job *j, lq_gguf_wtensor *w, const char *name,
                         const lq_tensor *t, int64_t permute_hd, lq_err *err) {
    int64_t n = lq_numel(t);
    float *x = lq_llama_weight_f32(t, err);
    if (!x) return err->status;
    LQ_TRY(keep_copy(e, x, name, err));
    if (permute_hd > 0) {
        float *p = malloc((size_t)n * sizeof *p);
        LQ_TRY(keep_copy(e, p, name, err));
        permute_rows(p, x, t->ne[0], (size_t)(n / t->ne[0]) * sizeof *p, permute_hd);
        x = p;
    }
    w->dtype = LQ_DTYPE_F32;
    w->data = x;
    if (t->ndim != 2 || j->dt == LQ_EXPORT_F32) return LQ_OK;
    lq_dtype d = j->dt == LQ_EXPORT_F16 ? LQ_DTYPE_F16 : j->dt == LQ_EXPORT_BF16 ? LQ_DTYPE_BF16
               : j->dt == LQ_EXPORT_Q8_0 ? LQ_DTYPE_Q8_0 : LQ_DTYPE_Q4_0;
    const lq_dtype_traits *tr = lq_dtype_info(d);
    if (t->ne[1] % tr->block_size != 0)
        return LQ_ERR(err, LQ_ERR_UNSUPPORTED,
                      "export: tensor '%s' has rows of %lld elements, not a multiple of %s's block of %lld", name,
                      (long long)t->ne[1], tr->name, (long long)tr->block_size);
    void *q = malloc(lq_dtype_bytes(d, n) ? lq_dtype_bytes(d, n) : 1);
    LQ_TRY(keep_copy(e, q, name, err));
    if (tr->block_size > 1) LQ_TRY(lq_ggml_quantize(d, x, n, q, err));
    else LQ_TRY(tr->from_f32(x, q, n, NULL, 0, err));
    if (j->report) { /* the error of the stored values against the exact (merged) ones */
        float *y = malloc((size_t)n * sizeof *y);
        if (!y) return LQ_ERR(err, LQ_ERR_OOM, "export: out of memory for tensor '%s'", name);
        tr->to_f32(q, y, n, NULL, 0);
        double se = 0, sr = 0, mx = 0;
        for (int64_t i = 0; i < n; i++) {
            double df = (double)y[i] - (double)x[i];
            se += df * df, sr += (double)x[i] * x[i];
            if (fabs(df) > mx) mx = fabs(df);
        }
        free(y);
        j->report(j->user, name, n ? sqrt(se / (double)n) : 0, mx, se == 0 ? INFINITY : 10.0 * log10(sr / se));
    }
    w->dtype = d;
    w->data = q;
    return LQ_OK;
}

static lq_status add(export_list *e, const export_job *j, const char *name, const lq_tensor *t, int64_t permute_hd,
                     lq_err *err) {
    if (e->n == e->cap) return LQ_ERR(err, LQ_ERR_INTERNAL, "export: tensor list full");
    lq_gguf_wtensor *w = &e->t[e->n];
    snprintf(e->names[e->n], sizeof e->names[e->n], "%s", name);
    w->name = e->names[e->n];
    w->dtype = t->dtype;
    w->ndim = t->ndim;
    for (int d = 0; d < t->ndim; d++) w->shape[d] = t->ne[d];
    w->data = t->data;
    if (!j->keep) {
        LQ_TRY(convert(e, j, w, name, t, permute_hd, err));
    } else if (permute_hd > 0) {
        size_t bytes = lq_nbytes(t);
        void *p = malloc(bytes ? bytes : 1);
        LQ_TRY(keep_copy(e, p, name, err));
        permute_rows(p, t->data, t->ne[0], bytes / (size_t)t->ne[0], permute_hd);
        w->data = p;
    }
    e->n++;
    return LQ_OK;
}

/* llama.cpp's general.file_type (LLAMA_FTYPE_*) of an export dtype. */
static uint64_t file_type(lq_export_dtype dt) {
    switch (dt) {
    case LQ_EXPORT_F16: return 1;
    case LQ_EXPORT_Q4_0: return 2;
    case LQ_EXPORT_Q8_0: return 7;
    case LQ_EXPORT_BF16: return 32;
    default: return 0;
    }
}

/* Whether a base GGUF key is carried over: general.* (but what describes this file's own
 * encoding) and tokenizer.*; llama.* keys are written from the config. */
static bool carried(const char *key) {
    if (strncmp(key, "tokenizer.", 10) == 0) return true;
    if (strncmp(key, "general.", 8) != 0) return false;
    return strcmp(key, "general.architecture") != 0 && strcmp(key, "general.file_type") != 0 &&
           strcmp(key, "general.alignment") != 0 && strcmp(key, "general.quantization_version") != 0;
}

/* --- tokenizer.* from a Hugging Face tokenizer.json ------------------------------------------- */

/* llama.cpp's tokenizer metadata for a byte-level BPE tokenizer.json, as convert_hf_to_gguf.py
 * writes it for the "gpt2" model: tokens by id (ids the model has but the file lacks become
 * "[PAD<id>]", type UNUSED), token_type (added special tokens CONTROL, other added tokens
 * USER_DEFINED, the rest NORMAL), merges as "a b", bos / eos from the config, add_bos_token when
 * the post-processor is a template that starts with a special token, and the chat template of
 * tokenizer_config.json. The pre-tokenizer must be one llama.cpp names: byte-level alone
 * ("gpt-2") or individual digits then byte-level ("smollm"); anything else (or a normalizer, or
 * another model type) gives no tokenizer metadata rather than a wrong one. */
typedef struct tok_meta {
    cJSON *tj, *tc;      /* tokenizer.json, tokenizer_config.json */
    const char **tokens; /* [n] */
    int32_t *types;      /* [n] */
    const char **merges;
    void **owned;
    int n_owned;
    int64_t n, n_merges;
    lq_gguf_wkv kv[10];
    int n_kv;
} tok_meta;

static void tok_meta_free(tok_meta *t) {
    for (int i = 0; i < t->n_owned; i++) free(t->owned[i]);
    free(t->owned);
    free(t->tokens), free(t->types), free(t->merges);
    cJSON_Delete(t->tj), cJSON_Delete(t->tc);
    memset(t, 0, sizeof *t);
}

static cJSON *read_json(const char *dir, const char *file) {
    size_t n = strlen(dir) + strlen(file) + 2, len = 0;
    char *path = malloc(n), *buf = NULL;
    if (!path) return NULL;
    snprintf(path, n, "%s/%s", dir, file);
    lq_err e = {0};
    cJSON *j = NULL;
    if (lq_read_file(path, TOKENIZER_JSON_MAX, "a tokenizer file", &buf, &len, &e) == LQ_OK)
        j = cJSON_ParseWithLength(buf, len);
    free(buf), free(path);
    return j;
}

static bool jtype(const cJSON *o, const char *type) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type");
    return cJSON_IsString(t) && strcmp(t->valuestring, type) == 0;
}

/* "gpt-2" / "smollm" for the pre-tokenizers llama.cpp has under those names, else NULL. */
static const char *pre_name(const cJSON *pre) {
    const cJSON *ur;
    if (jtype(pre, "ByteLevel")) {
        ur = cJSON_GetObjectItemCaseSensitive(pre, "use_regex");
        return (!ur || cJSON_IsTrue(ur)) ? "gpt-2" : NULL;
    }
    if (!jtype(pre, "Sequence")) return NULL;
    const cJSON *ps = cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers");
    if (cJSON_GetArraySize(ps) != 2) return NULL;
    const cJSON *d = cJSON_GetArrayItem(ps, 0), *b = cJSON_GetArrayItem(ps, 1);
    if (!jtype(d, "Digits") || !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(d, "individual_digits"))) return NULL;
    return pre_name(b) && jtype(b, "ByteLevel") ? "smollm" : NULL;
}

static bool keep_owned(tok_meta *t, void *p) {
    void **q = p ? realloc(t->owned, (size_t)(t->n_owned + 1) * sizeof *q) : NULL;
    if (!q) {
        free(p);
        return false;
    }
    t->owned = q;
    t->owned[t->n_owned++] = p;
    return true;
}

/* Fills t from dir/tokenizer.json; false (t empty) when it is absent or not convertible. */
static bool hf_tokenizer_meta(const char *dir, const lq_llama_config *c, tok_meta *t) {
    memset(t, 0, sizeof *t);
    t->tj = read_json(dir, "tokenizer.json");
    t->tc = read_json(dir, "tokenizer_config.json");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(t->tj, "model");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(t->tj, "added_tokens");
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(t->tj, "normalizer");
    const char *pre = pre_name(cJSON_GetObjectItemCaseSensitive(t->tj, "pre_tokenizer"));
    if (!jtype(model, "BPE") || !cJSON_IsObject(vocab) || !cJSON_IsArray(merges) || !pre || (norm && !cJSON_IsNull(norm)))
        goto fail;
    int64_t n = c->vocab_size;
    t->n = n;
    t->tokens = calloc((size_t)n, sizeof *t->tokens);
    t->types = calloc((size_t)n, sizeof *t->types);
    if (!t->tokens || !t->types) goto fail;
    const cJSON *v;
    cJSON_ArrayForEach(v, vocab) {
        if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= (double)n) goto fail; /* beyond the model */
        int64_t id = (int64_t)v->valuedouble;
        t->tokens[id] = v->string;
        t->types[id] = 1; /* NORMAL */
    }
    cJSON_ArrayForEach(v, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(v, "id"), *ct = cJSON_GetObjectItemCaseSensitive(v, "content");
        if (!cJSON_IsNumber(id) || !cJSON_IsString(ct) || id->valuedouble < 0 || id->valuedouble >= (double)n) goto fail;
        int64_t i = (int64_t)id->valuedouble;
        t->tokens[i] = ct->valuestring;
        t->types[i] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(v, "special")) ? 3 : 4; /* CONTROL : USER_DEFINED */
    }
    for (int64_t i = 0; i < n; i++)
        if (!t->tokens[i]) {
            char *p = malloc(32);
            if (!keep_owned(t, p)) goto fail;
            snprintf(p, 32, "[PAD%lld]", (long long)i);
            t->tokens[i] = p;
            t->types[i] = 5; /* UNUSED */
        }
    t->n_merges = cJSON_GetArraySize(merges);
    t->merges = calloc((size_t)(t->n_merges ? t->n_merges : 1), sizeof *t->merges);
    if (!t->merges) goto fail;
    int64_t k = 0;
    cJSON_ArrayForEach(v, merges) {
        if (cJSON_IsString(v)) {
            t->merges[k++] = v->valuestring;
        } else if (cJSON_GetArraySize(v) == 2 && cJSON_IsString(cJSON_GetArrayItem(v, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(v, 1))) { /* ["a", "b"] (tokenizers >= 0.20) */
            const char *a = cJSON_GetArrayItem(v, 0)->valuestring, *b = cJSON_GetArrayItem(v, 1)->valuestring;
            size_t len = strlen(a) + strlen(b) + 2;
            char *p = malloc(len);
            if (!keep_owned(t, p)) goto fail;
            snprintf(p, len, "%s %s", a, b);
            t->merges[k++] = p;
        } else {
            goto fail;
        }
    }
    bool add_bos = false;
    const cJSON *pp = cJSON_GetObjectItemCaseSensitive(t->tj, "post_processor");
    if (jtype(pp, "TemplateProcessing")) {
        const cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(pp, "single"), 0);
        add_bos = cJSON_GetObjectItemCaseSensitive(first, "SpecialToken") != NULL;
    }
    lq_gguf_wkv *kv = t->kv;
    int m = 0;
    kv[m++] = (lq_gguf_wkv){.key = "tokenizer.ggml.model", .type = LQ_GGUF_STRING, .v.s = "gpt2"};
    kv[m++] = (lq_gguf_wkv){.key = "tokenizer.ggml.pre", .type = LQ_GGUF_STRING, .v.s = pre};
    kv[m++] = (lq_gguf_wkv){.key = "tokenizer.ggml.tokens", .type = LQ_GGUF_ARRAY, .elem_type = LQ_GGUF_STRING,
                            .n = (uint64_t)n, .arr = t->tokens};
    kv[m++] = (lq_gguf_wkv){.key = "tokenizer.ggml.token_type", .type = LQ_GGUF_ARRAY, .elem_type = LQ_GGUF_INT32,
                            .n = (uint64_t)n, .arr = t->types};
    kv[m++] = (lq_gguf_wkv){.key = "tokenizer.ggml.merges", .type = LQ_GGUF_ARRAY, .elem_type = LQ_GGUF_STRING,
                            .n = (uint64_t)k, .arr = t->merges};
    if (c->n_bos > 0 && c->bos_token_id[0] >= 0 && c->bos_token_id[0] < n)
        kv[m++] = (lq_gguf_wkv){.key = "tokenizer.ggml.bos_token_id", .type = LQ_GGUF_UINT32,
                                .v.u = (uint64_t)c->bos_token_id[0]};
    if (c->n_eos > 0 && c->eos_token_id[0] >= 0 && c->eos_token_id[0] < n)
        kv[m++] = (lq_gguf_wkv){.key = "tokenizer.ggml.eos_token_id", .type = LQ_GGUF_UINT32,
                                .v.u = (uint64_t)c->eos_token_id[0]};
    kv[m++] = (lq_gguf_wkv){.key = "tokenizer.ggml.add_bos_token", .type = LQ_GGUF_BOOL, .v.b = add_bos};
    const cJSON *tpl = cJSON_GetObjectItemCaseSensitive(t->tc, "chat_template");
    if (cJSON_IsString(tpl))
        kv[m++] = (lq_gguf_wkv){.key = "tokenizer.chat_template", .type = LQ_GGUF_STRING, .v.s = tpl->valuestring};
    t->n_kv = m;
    return true;
fail:
    tok_meta_free(t);
    return false;
}

/* The metadata: llama.* from the config, then (converting exports of a GGUF base) the base's
 * carried keys. String arrays need a pointer array each (kept in *strs for the caller to free). */
static lq_status build_kv(const lq_llama_model *m, const export_job *j, const tok_meta *tok, lq_gguf_wkv **out,
                          int64_t *n_out, void ***strs, int *n_strs, lq_err *err) {
    const lq_llama_config *c = &m->cfg;
    int64_t n_base = (!j->keep && m->gguf) ? lq_gguf_kv_count(m->gguf) : 0;
    lq_gguf_wkv *kv = calloc((size_t)(n_base + 16 + tok->n_kv), sizeof *kv);
    void **sp = calloc((size_t)(n_base + 1), sizeof *sp);
    if (!kv || !sp) {
        free(kv), free(sp);
        return LQ_ERR(err, LQ_ERR_OOM, "export: out of memory");
    }
    int64_t n = 0;
    bool has_name = false;
    kv[n++] = (lq_gguf_wkv){.key = "general.architecture", .type = LQ_GGUF_STRING, .v.s = "llama"};
    for (int64_t i = 0; i < n_base; i++) {
        const lq_gguf_kv *b = lq_gguf_kv_at(m->gguf, i);
        if (!carried(b->key)) continue;
        if (strcmp(b->key, "general.name") == 0) has_name = true;
        lq_gguf_wkv *w = &kv[n++];
        w->key = b->key;
        w->type = b->type;
        switch (b->type) {
        case LQ_GGUF_STRING: w->v.s = b->v.s.s; break;
        case LQ_GGUF_ARRAY:
            w->elem_type = b->elem_type;
            w->n = b->n;
            if (b->elem_type == LQ_GGUF_STRING) {
                const char **p = malloc((size_t)(b->n ? b->n : 1) * sizeof *p);
                if (!p) {
                    for (int k = 0; k < *n_strs; k++) free(sp[k]);
                    free(sp), free(kv);
                    return LQ_ERR(err, LQ_ERR_OOM, "export: out of memory copying '%s'", b->key);
                }
                for (uint64_t k = 0; k < b->n; k++) p[k] = b->strs[k].s;
                sp[(*n_strs)++] = (void *)p;
                w->arr = p;
            } else {
                w->arr = b->arr;
            }
            break;
        default: break;
        }
        /* scalars other than strings share the union's 8 bytes: copy them whole */
        if (b->type != LQ_GGUF_STRING && b->type != LQ_GGUF_ARRAY) memcpy(&w->v, &b->v, sizeof(uint64_t));
    }
    if (!has_name) kv[n++] = (lq_gguf_wkv){.key = "general.name", .type = LQ_GGUF_STRING, .v.s = "loquat export"};
    if (!j->keep) {
        kv[n++] = (lq_gguf_wkv){.key = "general.file_type", .type = LQ_GGUF_UINT32, .v.u = file_type(j->dt)};
        kv[n++] = (lq_gguf_wkv){.key = "general.quantization_version", .type = LQ_GGUF_UINT32, .v.u = 2};
    }
    lq_gguf_wkv ll[] = {
        {.key = "llama.context_length", .type = LQ_GGUF_UINT32, .v.u = (uint64_t)c->max_position_embeddings},
        {.key = "llama.embedding_length", .type = LQ_GGUF_UINT32, .v.u = (uint64_t)c->hidden_size},
        {.key = "llama.block_count", .type = LQ_GGUF_UINT32, .v.u = (uint64_t)c->num_hidden_layers},
        {.key = "llama.feed_forward_length", .type = LQ_GGUF_UINT32, .v.u = (uint64_t)c->intermediate_size},
        {.key = "llama.rope.dimension_count", .type = LQ_GGUF_UINT32, .v.u = (uint64_t)c->head_dim},
        {.key = "llama.attention.head_count", .type = LQ_GGUF_UINT32, .v.u = (uint64_t)c->num_attention_heads},
        {.key = "llama.attention.head_count_kv", .type = LQ_GGUF_UINT32, .v.u = (uint64_t)c->num_key_value_heads},
        {.key = "llama.rope.freq_base", .type = LQ_GGUF_FLOAT32, .v.f = c->rope_theta},
        {.key = "llama.attention.layer_norm_rms_epsilon", .type = LQ_GGUF_FLOAT32, .v.f = c->rms_norm_eps},
        {.key = "llama.vocab_size", .type = LQ_GGUF_UINT32, .v.u = (uint64_t)c->vocab_size},
    };
    for (size_t i = 0; i < sizeof ll / sizeof ll[0]; i++) kv[n++] = ll[i];
    for (int i = 0; i < tok->n_kv; i++) kv[n++] = tok->kv[i];
    *out = kv;
    *n_out = n;
    *strs = sp;
    return LQ_OK;
}

static lq_status write_gguf(const lq_llama_model *m, const char *path, const export_job *j, lq_err *err) {
    LQ_CHECK(err, m != NULL && path != NULL, LQ_ERR_ARG, "export: NULL model or path");
    const lq_llama_config *c = &m->cfg;
    if (m->lora && !j->keep)
        return LQ_ERR(err, LQ_ERR_ARG, "export %s: the model has adapters attached; merge them first", path);
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        const lq_llama_layer *L = &m->layers[l];
        if (L->bq || L->bk || L->bv || L->bo || L->bgate || L->bup || L->bdown)
            return LQ_ERR(err, LQ_ERR_UNSUPPORTED,
                          "export %s: layer %lld has biases, which GGUF's llama architecture has no tensors for",
                          path, (long long)l);
    }
    LQ_CHECK(err, c->rope_type == LQ_ROPE_DEFAULT, LQ_ERR_UNSUPPORTED,
             "export %s: only unscaled RoPE is written (the model has %s scaling)", path,
             lq_rope_type_name(c->rope_type));
    int cap = (int)(9 * c->num_hidden_layers + 3);
    export_list e = {.cap = cap};
    e.t = calloc((size_t)cap, sizeof *e.t);
    e.names = calloc((size_t)cap, sizeof *e.names);
    e.copies = calloc((size_t)cap * 3, sizeof *e.copies); /* up to 3 buffers per tensor */
    lq_status s = (e.t && e.names && e.copies) ? LQ_OK : LQ_ERR(err, LQ_ERR_OOM, "export: out of memory");
    /* the embedding as the file held it (m->embed may be a dequantized copy) */
    if (s == LQ_OK) s = add(&e, j, "token_embd.weight", m->embed_file, 0, err);
    char name[96];
    for (int64_t l = 0; l < c->num_hidden_layers && s == LQ_OK; l++) {
        const lq_llama_layer *L = &m->layers[l];
        struct { const char *suffix; const lq_tensor *t; int64_t permute; } parts[] = {
            {"attn_norm", L->attn_norm, 0}, {"attn_q", L->wq, c->head_dim}, {"attn_k", L->wk, c->head_dim},
            {"attn_v", L->wv, 0},           {"attn_output", L->wo, 0},      {"ffn_norm", L->ffn_norm, 0},
            {"ffn_gate", L->wgate, 0},      {"ffn_up", L->wup, 0},          {"ffn_down", L->wdown, 0},
        };
        for (size_t i = 0; i < sizeof parts / sizeof parts[0] && s == LQ_OK; i++) {
            snprintf(name, sizeof name, "blk.%lld.%s.weight", (long long)l, parts[i].suffix);
            s = add(&e, j, name, parts[i].t, parts[i].permute, err);
        }
    }
    if (s == LQ_OK) s = add(&e, j, "output_norm.weight", m->out_norm, 0, err);
    if (s == LQ_OK && !c->tie_word_embeddings) s = add(&e, j, "output.weight", m->lm_head, 0, err);
    lq_gguf_wkv *kv = NULL;
    int64_t n_kv = 0;
    void **strs = NULL; /* the string arrays' pointer arrays */
    int n_strs = 0;
    /* a Hugging Face base: the tokenizer.* keys from the tokenizer.json beside its weights */
    tok_meta tok = {0};
    if (s == LQ_OK && !j->keep && !m->gguf && m->st) {
        char *dir = strdup(lq_st_path(lq_st_model_shard(m->st, 0)));
        char *slash = dir ? strrchr(dir, '/') : NULL;
        if (slash) *slash = '\0';
        if (dir) hf_tokenizer_meta(slash ? dir : ".", c, &tok);
        free(dir);
    }
    if (s == LQ_OK) s = build_kv(m, j, &tok, &kv, &n_kv, &strs, &n_strs, err);
    if (s == LQ_OK) s = lq_gguf_write(path, kv, n_kv, e.t, e.n, err);
    for (int i = 0; i < n_strs; i++) free(strs[i]);
    free(strs);
    free(kv);
    tok_meta_free(&tok);
    for (int i = 0; i < e.n_copies; i++) free(e.copies[i]);
    free(e.copies);
    free(e.names);
    free(e.t);
    return s;
}

lq_status lq_llama_save_gguf(const lq_llama_model *m, const char *path, lq_err *err) {
    export_job j = {.keep = true};
    return write_gguf(m, path, &j, err);
}

lq_status lq_llama_save_gguf_as(const lq_llama_model *m, const char *path, lq_export_dtype dtype,
                                lq_export_report_fn report, void *user, lq_err *err) {
    if (dtype == LQ_EXPORT_NF4)
        return LQ_ERR(err, LQ_ERR_UNSUPPORTED,
                      "export %s: GGUF has no NF4 type; use --format safetensors for nf4, or q4_0 / q8_0 for GGUF",
                      path ? path : "");
    LQ_CHECK(err, (int)dtype >= 0 && dtype < LQ_EXPORT_NF4, LQ_ERR_ARG, "export: invalid dtype %d", (int)dtype);
    export_job j = {.keep = false, .dt = dtype, .report = report, .user = user};
    return write_gguf(m, path, &j, err);
}
