/* models/llama_save.c: merged exports of a Llama model as a Hugging Face folder (config.json +
 * model.safetensors in f32 / f16 / bf16, or NF4 in transformers' bitsandbytes layout). The GGUF
 * export (lq_llama_save_gguf_as) lives beside lq_llama_save_gguf in models/llama_export.c. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "models/models_impl.h"

#define NF4_BLOCK 64 /* QLoRA's (and transformers') default bnb_4bit blocksize */

bool lq_export_dtype_parse(const char *s, lq_export_dtype *out) {
    static const char *const names[] = {"f32", "f16", "bf16", "q8_0", "q4_0", "nf4"};
    if (!s) return false;
    for (int i = 0; i < (int)(sizeof names / sizeof names[0]); i++)
        if (strcmp(s, names[i]) == 0) {
            if (out) *out = (lq_export_dtype)i;
            return true;
        }
    return false;
}

/* Every weight a model holds, dequantized into a new f32 buffer (n = numel floats). */
float *lq_llama_weight_f32(const lq_tensor *t, lq_err *err) {
    const lq_dtype_traits *tr = lq_dtype_info(t->dtype);
    int64_t n = lq_numel(t);
    if (!tr || !tr->to_f32 || !lq_is_contiguous(t)) {
        LQ_ERR(err, LQ_ERR_UNSUPPORTED, "export: tensor '%s' (%s) cannot be read as f32", t->name,
               tr ? tr->name : "?");
        return NULL;
    }
    float *x = malloc((size_t)(n > 0 ? n : 1) * sizeof *x);
    if (!x) {
        LQ_ERR(err, LQ_ERR_OOM, "export: out of memory for tensor '%s' (%lld elements)", t->name, (long long)n);
        return NULL;
    }
    tr->to_f32(t->data, x, n, t->qs, 0);
    return x;
}

/* --- the tensors of model.safetensors ----------------------------------------------------------- */

typedef struct st_list {
    lq_st_wtensor *t;
    int n, cap;
    void **owned; /* names and data */
    int n_owned, cap_owned;
} st_list;

static bool own(st_list *l, void *p) {
    if (!p) return false;
    if (l->n_owned == l->cap_owned) {
        int c = l->cap_owned ? 2 * l->cap_owned : 64;
        void **q = realloc(l->owned, (size_t)c * sizeof *q);
        if (!q) {
            free(p);
            return false;
        }
        l->owned = q;
        l->cap_owned = c;
    }
    l->owned[l->n_owned++] = p;
    return true;
}

/* Appends a tensor; data becomes owned by the list (freed even on failure). */
static bool push(st_list *l, const char *name, lq_st_dtype dt, int ndim, const int64_t *shape, void *data) {
    if (!own(l, data)) return false;
    char *nm = strdup(name);
    if (!own(l, nm)) return false;
    if (l->n == l->cap) {
        int c = l->cap ? 2 * l->cap : 64;
        lq_st_wtensor *q = realloc(l->t, (size_t)c * sizeof *q);
        if (!q) return false;
        l->t = q;
        l->cap = c;
    }
    lq_st_wtensor *w = &l->t[l->n++];
    memset(w, 0, sizeof *w);
    w->name = nm;
    w->dtype = dt;
    w->ndim = ndim;
    for (int d = 0; d < ndim; d++) w->shape[d] = shape[d];
    w->data = data;
    return true;
}

static void st_list_free(st_list *l) {
    for (int i = 0; i < l->n_owned; i++) free(l->owned[i]);
    free(l->owned);
    free(l->t);
}

/* Error statistics of y against the exact x, reported through fn. */
static void report_err(lq_export_report_fn fn, void *user, const char *name, const float *x, const float *y, int64_t n) {
    if (!fn) return;
    double se = 0, sr = 0, mx = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = (double)y[i] - (double)x[i];
        se += e * e;
        sr += (double)x[i] * x[i];
        if (fabs(e) > mx) mx = fabs(e);
    }
    double rmse = n ? sqrt(se / (double)n) : 0, sqnr = se == 0 ? INFINITY : 10.0 * log10(sr / se);
    fn(user, name, rmse, mx, sqnr);
}

/* One linear weight W (rows, cols) as transformers saves a bitsandbytes Linear4bit: NF4, double
 * quantization, blocksize 64 (io/'s lq_st_bnb4, the layout `loquat quantize` writes too). y gets
 * the dequantized values (for the error report). */
static lq_status push_nf4(st_list *l, const char *name, const float *x, int64_t rows, int64_t cols, float *y,
                          lq_err *err) {
    lq_st_bnb4 b;
    LQ_TRY(lq_st_bnb4_encode(&b, name, LQ_DTYPE_NF4, x, rows, cols, NF4_BLOCK, true, "float32", y, err));
    bool ok = true;
    for (int i = 0; i < b.n; i++) {
        const lq_st_wtensor *t = &b.t[i];
        size_t bytes = lq_st_dtype_size(t->dtype);
        for (int d = 0; d < t->ndim; d++) bytes *= (size_t)t->shape[d];
        /* the list frees what it holds: take the owned buffers, copy the static tables */
        void *data = b.own[i] ? (void *)t->data : malloc(bytes);
        if (data && !b.own[i]) memcpy(data, t->data, bytes);
        b.own[i] = false;
        if (ok) ok = push(l, t->name, t->dtype, t->ndim, t->shape, data); /* push frees data on failure */
        else free(data);
    }
    lq_st_bnb4_free(&b);
    return ok ? LQ_OK : LQ_ERR(err, LQ_ERR_OOM, "export: out of memory for tensor '%s'", name);
}

/* Adds weight t under its HF name, converted to the export dtype. linear: a decoder projection
 * (the only tensors NF4 quantizes; everything else is f32 then, as transformers keeps non-Linear
 * modules in float). Reports the conversion error of 2-D weights for lossy dtypes. */
static lq_status push_weight(st_list *l, const char *name, const lq_tensor *t, lq_export_dtype dt, bool linear,
                             lq_export_report_fn report, void *user, lq_err *err) {
    int64_t n = lq_numel(t);
    float *x = lq_llama_weight_f32(t, err);
    if (!x) return err->status;
    lq_status s = LQ_OK;
    float *y = NULL;
    if (dt == LQ_EXPORT_NF4 && linear && t->ndim == 2) {
        y = malloc((size_t)n * sizeof *y);
        s = y ? push_nf4(l, name, x, t->ne[0], t->ne[1], y, err)
              : LQ_ERR(err, LQ_ERR_OOM, "export: out of memory for tensor '%s'", name);
        if (s == LQ_OK && t->ndim == 2) report_err(report, user, name, x, y, n);
        free(x);
        free(y);
        return s;
    }
    if (dt == LQ_EXPORT_F32 || dt == LQ_EXPORT_NF4) {
        if (!push(l, name, LQ_ST_F32, t->ndim, t->ne, x))
            return LQ_ERR(err, LQ_ERR_OOM, "export: out of memory for tensor '%s'", name);
        return LQ_OK;
    }
    lq_dtype ld = dt == LQ_EXPORT_F16 ? LQ_DTYPE_F16 : LQ_DTYPE_BF16;
    const lq_dtype_traits *tr = lq_dtype_info(ld);
    void *h = malloc((size_t)(n > 0 ? n : 1) * 2);
    y = malloc((size_t)(n > 0 ? n : 1) * sizeof *y);
    if (!h || !y) s = LQ_ERR(err, LQ_ERR_OOM, "export: out of memory for tensor '%s'", name);
    if (s == LQ_OK) s = tr->from_f32(x, h, n, NULL, 0, err);
    if (s == LQ_OK) {
        tr->to_f32(h, y, n, NULL, 0);
        if (t->ndim == 2) report_err(report, user, name, x, y, n);
        if (!push(l, name, ld == LQ_DTYPE_F16 ? LQ_ST_F16 : LQ_ST_BF16, t->ndim, t->ne, h))
            s = LQ_ERR(err, LQ_ERR_OOM, "export: out of memory for tensor '%s'", name);
        h = NULL;
    }
    free(h);
    free(x);
    free(y);
    return s;
}

/* --- config.json ------------------------------------------------------------------------------- */

typedef struct tbuf {
    char *p;
    size_t n, cap;
    bool failed;
} tbuf;

static void tb_printf(tbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tb_printf(tbuf *b, const char *fmt, ...) {
    if (b->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) {
            b->failed = true;
            return;
        }
        if (b->p && b->n + (size_t)k < b->cap) {
            b->n += (size_t)k;
            return;
        }
        size_t c = b->cap ? b->cap * 2 : 2048;
        while (c < b->n + (size_t)k + 1) c *= 2;
        char *q = realloc(b->p, c);
        if (!q) {
            b->failed = true;
            return;
        }
        b->p = q;
        b->cap = c;
    }
}

/* A float as JSON (shortest round-trip digits, always with a '.' or exponent as Python writes). */
static void tb_float(tbuf *b, double v) {
    char s[40];
    lq_py_float_repr(s, sizeof s, v);
    tb_printf(b, "%s", s);
}

static void tb_ids(tbuf *b, const char *key, const int64_t *ids, int n) {
    tb_printf(b, "  \"%s\": ", key);
    if (n == 0) tb_printf(b, "null");
    else if (n == 1) tb_printf(b, "%lld", (long long)ids[0]);
    else {
        tb_printf(b, "[");
        for (int i = 0; i < n; i++) tb_printf(b, i ? ", %lld" : "%lld", (long long)ids[i]);
        tb_printf(b, "]");
    }
    tb_printf(b, ",\n");
}

/* transformers' config for the model's architecture, with both spellings of RoPE (transformers
 * 5's rope_parameters and the older top-level rope_theta / rope_scaling). */
static char *config_json(const lq_llama_config *c, lq_export_dtype dt) {
    static const char *const archs[] = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"};
    const char *torch = dt == LQ_EXPORT_F16 ? "float16" : dt == LQ_EXPORT_BF16 ? "bfloat16" : "float32";
    tbuf b = {0};
    tb_printf(&b, "{\n  \"architectures\": [\n    \"%s\"\n  ],\n", archs[c->arch]);
    if (c->arch == LQ_LLAMA_ARCH_LLAMA)
        tb_printf(&b, "  \"attention_bias\": %s,\n", c->qkv_bias ? "true" : "false");
    tb_printf(&b, "  \"attention_dropout\": 0.0,\n");
    tb_ids(&b, "bos_token_id", c->bos_token_id, c->n_bos);
    tb_printf(&b, "  \"dtype\": \"%s\",\n", torch);
    tb_ids(&b, "eos_token_id", c->eos_token_id, c->n_eos);
    tb_printf(&b,
              "  \"head_dim\": %lld,\n  \"hidden_act\": \"silu\",\n  \"hidden_size\": %lld,\n"
              "  \"initializer_range\": 0.02,\n  \"intermediate_size\": %lld,\n  \"max_position_embeddings\": %lld,\n",
              (long long)c->head_dim, (long long)c->hidden_size, (long long)c->intermediate_size,
              (long long)c->max_position_embeddings);
    if (c->arch == LQ_LLAMA_ARCH_LLAMA) tb_printf(&b, "  \"mlp_bias\": %s,\n", c->mlp_bias ? "true" : "false");
    tb_printf(&b,
              "  \"model_type\": \"%s\",\n  \"num_attention_heads\": %lld,\n  \"num_hidden_layers\": %lld,\n"
              "  \"num_key_value_heads\": %lld,\n",
              lq_llama_arch_name(c->arch), (long long)c->num_attention_heads, (long long)c->num_hidden_layers,
              (long long)c->num_key_value_heads);
    if (c->arch == LQ_LLAMA_ARCH_LLAMA) tb_printf(&b, "  \"pretraining_tp\": 1,\n");
    if (dt == LQ_EXPORT_NF4)
        tb_printf(&b,
                  "  \"quantization_config\": {\n    \"_load_in_4bit\": true,\n    \"_load_in_8bit\": false,\n"
                  "    \"bnb_4bit_compute_dtype\": \"float32\",\n    \"bnb_4bit_quant_storage\": \"uint8\",\n"
                  "    \"bnb_4bit_quant_type\": \"nf4\",\n    \"bnb_4bit_use_double_quant\": true,\n"
                  "    \"llm_int8_enable_fp32_cpu_offload\": false,\n    \"llm_int8_has_fp16_weight\": false,\n"
                  "    \"llm_int8_skip_modules\": null,\n    \"llm_int8_threshold\": 6.0,\n"
                  "    \"load_in_4bit\": true,\n    \"load_in_8bit\": false,\n"
                  "    \"quant_method\": \"bitsandbytes\"\n  },\n");
    tb_printf(&b, "  \"rms_norm_eps\": ");
    tb_float(&b, c->rms_norm_eps);
    const char *rt = lq_rope_type_name(c->rope_type);
    tb_printf(&b, ",\n  \"rope_parameters\": {\n");
    if (c->rope_type != LQ_ROPE_DEFAULT) {
        tb_printf(&b, "    \"factor\": ");
        tb_float(&b, c->rope_factor);
        tb_printf(&b, ",\n");
    }
    if (c->rope_type == LQ_ROPE_LLAMA3) {
        tb_printf(&b, "    \"high_freq_factor\": ");
        tb_float(&b, c->rope_high_freq_factor);
        tb_printf(&b, ",\n    \"low_freq_factor\": ");
        tb_float(&b, c->rope_low_freq_factor);
        tb_printf(&b, ",\n    \"original_max_position_embeddings\": %lld,\n", (long long)c->rope_original_max_position);
    }
    tb_printf(&b, "    \"rope_theta\": ");
    tb_float(&b, c->rope_theta);
    tb_printf(&b, ",\n    \"rope_type\": \"%s\"\n  },\n", rt);
    if (c->arch != LQ_LLAMA_ARCH_LLAMA) {
        if (c->sliding_window > 0) tb_printf(&b, "  \"sliding_window\": %lld,\n", (long long)c->sliding_window);
        else tb_printf(&b, "  \"sliding_window\": null,\n");
    }
    tb_printf(&b, "  \"tie_word_embeddings\": %s,\n  \"torch_dtype\": \"%s\",\n  \"use_cache\": true,\n",
              c->tie_word_embeddings ? "true" : "false", torch);
    if (c->arch == LQ_LLAMA_ARCH_QWEN2)
        tb_printf(&b, "  \"use_sliding_window\": %s,\n", c->sliding_window > 0 ? "true" : "false");
    tb_printf(&b, "  \"vocab_size\": %lld\n}\n", (long long)c->vocab_size);
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

static lq_status write_text(const char *path, const char *text, lq_err *err) {
    lq_atomic_file af = {0};
    lq_status s = lq_atomic_open(&af, path, err);
    if (s == LQ_OK) s = lq_atomic_write(&af, text, strlen(text), err);
    if (s == LQ_OK) s = lq_atomic_commit(&af, err);
    lq_atomic_abort(&af);
    return s;
}

/* --- lq_llama_save_hf ------------------------------------------------------------------------ */

static lq_status collect(const lq_llama_model *m, lq_export_dtype dt, st_list *l, lq_export_report_fn report,
                         void *user, lq_err *err) {
    const lq_llama_config *c = &m->cfg;
    LQ_TRY(push_weight(l, "model.embed_tokens.weight", m->embed_file, dt, false, report, user, err));
    char name[LQ_NAME_MAX + 64];
    for (int64_t i = 0; i < c->num_hidden_layers; i++) {
        const lq_llama_layer *L = &m->layers[i];
        struct { const char *suffix; const lq_tensor *t; bool linear; } parts[] = {
            {"input_layernorm.weight", L->attn_norm, false},
            {"self_attn.q_proj.weight", L->wq, true},       {"self_attn.q_proj.bias", L->bq, false},
            {"self_attn.k_proj.weight", L->wk, true},       {"self_attn.k_proj.bias", L->bk, false},
            {"self_attn.v_proj.weight", L->wv, true},       {"self_attn.v_proj.bias", L->bv, false},
            {"self_attn.o_proj.weight", L->wo, true},       {"self_attn.o_proj.bias", L->bo, false},
            {"post_attention_layernorm.weight", L->ffn_norm, false},
            {"mlp.gate_proj.weight", L->wgate, true},       {"mlp.gate_proj.bias", L->bgate, false},
            {"mlp.up_proj.weight", L->wup, true},           {"mlp.up_proj.bias", L->bup, false},
            {"mlp.down_proj.weight", L->wdown, true},       {"mlp.down_proj.bias", L->bdown, false},
        };
        for (size_t k = 0; k < sizeof parts / sizeof parts[0]; k++) {
            if (!parts[k].t) continue;
            snprintf(name, sizeof name, "model.layers.%lld.%s", (long long)i, parts[k].suffix);
            LQ_TRY(push_weight(l, name, parts[k].t, dt, parts[k].linear, report, user, err));
        }
    }
    LQ_TRY(push_weight(l, "model.norm.weight", m->out_norm, dt, false, report, user, err));
    if (!c->tie_word_embeddings) LQ_TRY(push_weight(l, "lm_head.weight", m->lm_head, dt, false, report, user, err));
    return LQ_OK;
}

lq_status lq_llama_save_hf(const lq_llama_model *m, const char *dir, lq_export_dtype dtype,
                           lq_export_report_fn report, void *user, lq_err *err) {
    LQ_CHECK(err, m != NULL && dir != NULL && *dir, LQ_ERR_ARG, "export: NULL model or folder");
    if (dtype == LQ_EXPORT_Q8_0 || dtype == LQ_EXPORT_Q4_0)
        return LQ_ERR(err, LQ_ERR_UNSUPPORTED,
                      "export %s: q8_0 / q4_0 are GGUF block types; a safetensors export takes f32, f16, bf16 or nf4",
                      dir);
    LQ_CHECK(err, (int)dtype >= 0 && dtype <= LQ_EXPORT_NF4, LQ_ERR_ARG, "export: invalid dtype %d", (int)dtype);
    if (m->lora)
        return LQ_ERR(err, LQ_ERR_ARG, "export %s: the model has adapters attached; merge them first", dir);
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return LQ_ERR(err, LQ_ERR_IO, "export: cannot create folder %s: %s", dir, strerror(errno));
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return LQ_ERR(err, LQ_ERR_IO, "export: %s is not a folder", dir);
    st_list l = {0};
    lq_status s = collect(m, dtype, &l, report, user, err);
    size_t plen = strlen(dir) + 32;
    char *path = malloc(plen);
    char *cfg = s == LQ_OK ? config_json(&m->cfg, dtype) : NULL;
    if (s == LQ_OK && (!path || !cfg)) s = LQ_ERR(err, LQ_ERR_OOM, "export: out of memory");
    if (s == LQ_OK) {
        snprintf(path, plen, "%s/model.safetensors", dir);
        lq_st_kv meta[] = {{"format", "pt"}};
        s = lq_st_write(path, l.t, l.n, meta, 1, err);
    }
    if (s == LQ_OK) {
        snprintf(path, plen, "%s/config.json", dir);
        s = write_text(path, cfg, err);
        if (s != LQ_OK) { /* the pair belongs together */
            snprintf(path, plen, "%s/model.safetensors", dir);
            remove(path);
        }
    }
    free(cfg);
    free(path);
    st_list_free(&l);
    return s;
}
