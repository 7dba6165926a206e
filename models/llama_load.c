/* models/llama_load.c: builds a Llama model's frozen weights from a GGUF file or a Hugging Face folder, optionally
 * requantizing the decoder-layer projections to NF4 / FP4 (QLoRA's base). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "models/models_impl.h"

/* A weight as the file holds it, before it becomes a tensor. */
typedef struct raw_weight {
    lq_dtype dtype;
    int ndim;
    int64_t shape[LQ_MAX_DIMS];
    size_t nbytes;
    const void *data;
    const lq_st_tensor *st; /* HF: for lq_st_to_f32 */
    const lq_gguf_tensor *gg;
} raw_weight;

typedef enum want { WANT_KEEP = 0, WANT_F32 } want;

static lq_status track(lq_llama_model *m, lq_tensor *t, lq_err *err) {
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? 2 * m->cap_owned : 64;
        lq_tensor **p = realloc(m->owned, (size_t)cap * sizeof *p);
        if (!p) {
            lq_tensor_free(t);
            return LQ_ERR(err, LQ_ERR_OOM, "out of memory tracking model tensors");
        }
        m->owned = p;
        m->cap_owned = cap;
    }
    m->owned[m->n_owned++] = t;
    return LQ_OK;
}

static const char *shape_str(int ndim, const int64_t *s, char *buf, size_t n) {
    size_t o = (size_t)snprintf(buf, n, "(");
    for (int d = 0; d < ndim && o < n; d++) o += (size_t)snprintf(buf + o, n - o, d ? ", %lld" : "%lld", (long long)s[d]);
    if (o < n) snprintf(buf + o, n - o, ")");
    return buf;
}

/* Undoes llama.cpp's q / k row order (pairs 2a, 2a+1 of each head) into rotate-half order
 * (a, a + D/2): HF row h*D + j*D/2 + a = GGUF row h*D + 2a + j. Rows are whole blocks. */
static void unpermute_rows(void *dst, const void *src, int64_t rows, size_t row_bytes, int64_t head_dim) {
    int64_t half = head_dim / 2;
    for (int64_t h = 0; h < rows / head_dim; h++)
        for (int64_t j = 0; j < 2; j++)
            for (int64_t a = 0; a < half; a++)
                memcpy((char *)dst + (size_t)(h * head_dim + j * half + a) * row_bytes,
                       (const char *)src + (size_t)(h * head_dim + 2 * a + j) * row_bytes, row_bytes);
}

/* Finds `name` (GGUF when m->gguf, else HF), checks its shape, and makes a frozen tensor: in the
 * file dtype (WANT_KEEP; the mapping itself when aligned, else a copy) or f32 (WANT_F32).
 * permute_head_dim > 0 undoes the GGUF q / k permutation. *out NULL when optional and absent. */
static lq_status load_weight(lq_llama_model *m, const char *path, const char *name, int ndim, const int64_t *shape,
                             want w, bool optional, int64_t permute_head_dim, lq_tensor **out, lq_err *err) {
    *out = NULL;
    raw_weight r;
    memset(&r, 0, sizeof r);
    if (m->gguf) {
        const lq_gguf_tensor *t = lq_gguf_find(m->gguf, name);
        if (!t) {
            if (optional) return LQ_OK;
            return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s' is missing", path, name);
        }
        if (t->dtype == LQ_DTYPE_COUNT || !lq_dtype_info(t->dtype)->to_f32)
            return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "%s: tensor '%s' has ggml type %s, which loquat cannot load", path,
                          name, lq_gguf_ggml_type_name(t->ggml_type) ? lq_gguf_ggml_type_name(t->ggml_type) : "?");
        r.dtype = t->dtype;
        r.ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) r.shape[d] = t->shape[d];
        r.nbytes = t->nbytes;
        r.data = t->data;
        r.gg = t;
    } else {
        const lq_st_tensor *t = lq_st_model_find(m->st, name);
        if (!t) {
            if (optional) return LQ_OK;
            return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s' is missing", path, name);
        }
        lq_dtype dt = lq_st_dtype_to_lq(t->dtype);
        if (dt != LQ_DTYPE_F32 && dt != LQ_DTYPE_F16 && dt != LQ_DTYPE_BF16)
            return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s; f32, f16 or bf16 expected", path, name,
                          lq_st_dtype_name(t->dtype));
        if (t->ndim > LQ_MAX_DIMS)
            return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s' has %d dims", path, name, t->ndim);
        r.dtype = dt;
        r.ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) r.shape[d] = t->shape[d];
        r.nbytes = t->nbytes;
        r.data = t->data;
        r.st = t;
    }
    bool ok = r.ndim == ndim;
    for (int d = 0; ok && d < ndim; d++) ok = r.shape[d] == shape[d];
    if (!ok) {
        char a[96], b[96];
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s' has shape %s, expected %s", path, name,
                      shape_str(r.ndim, r.shape, a, sizeof a), shape_str(ndim, shape, b, sizeof b));
    }
    lq_tensor *t = NULL;
    if (w == WANT_F32) {
        t = lq_tensor_alloc(LQ_DTYPE_F32, ndim, shape, name, err);
        if (!t) return LQ_ERR_OOM;
        lq_status s = r.gg ? lq_gguf_to_f32(r.gg, t->data, err) : lq_st_to_f32(r.st, t->data, err);
        if (s != LQ_OK) {
            lq_tensor_free(t);
            return s;
        }
    } else {
        const lq_dtype_traits *tr = lq_dtype_info(r.dtype);
        size_t align = tr->block_size == 1 ? tr->block_bytes : 4;
        if (permute_head_dim > 0 || ((uintptr_t)r.data % align) != 0) {
            t = lq_tensor_alloc(r.dtype, ndim, shape, name, err);
            if (!t) return LQ_ERR_OOM;
            if (lq_nbytes(t) != r.nbytes) {
                lq_tensor_free(t);
                return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s' holds %zu bytes, not %zu", path, name, r.nbytes,
                              lq_nbytes(t));
            }
            if (permute_head_dim > 0)
                unpermute_rows(t->data, r.data, shape[0], r.nbytes / (size_t)shape[0], permute_head_dim);
            else
                memcpy(t->data, r.data, r.nbytes);
        } else {
            t = calloc(1, sizeof *t);
            if (!t) return LQ_ERR(err, LQ_ERR_OOM, "out of memory for tensor '%s'", name);
            if (lq_tensor_init(t, r.dtype, ndim, shape, (void *)(uintptr_t)r.data, err) != LQ_OK) {
                free(t);
                return err->status;
            }
            lq_tensor_set_name(t, name);
        }
    }
    t->flags &= ~(uint32_t)LQ_TENSOR_REQUIRES_GRAD;
    LQ_TRY(track(m, t, err));
    *out = t;
    return LQ_OK;
}

/* Tensor names of one file format. */
typedef struct names {
    const char *embed, *out_norm, *lm_head;
    const char *layer_fmt; /* with %lld and then the suffix */
    const char *attn_norm, *ffn_norm, *q, *k, *v, *o, *gate, *up, *down;
} names;

static const names gguf_names = {"token_embd.weight", "output_norm.weight", "output.weight", "blk.%lld.%s",
                                 "attn_norm.weight", "ffn_norm.weight", "attn_q", "attn_k", "attn_v", "attn_output",
                                 "ffn_gate", "ffn_up", "ffn_down"};
static const names hf_names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "model.layers.%lld.%s",
                               "input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj",
                               "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                               "mlp.up_proj", "mlp.down_proj"};

/* Linear `base` of layer i: weight (out, in) in file dtype, bias (out) f32 when has_bias. */
static lq_status load_linear(lq_llama_model *m, const char *path, const names *nm, int64_t i, const char *base,
                             int64_t n_out, int64_t n_in, bool has_bias, int64_t permute_hd, lq_tensor **wt,
                             lq_tensor **bt, lq_err *err) {
    char suffix[96], name[160];
    snprintf(suffix, sizeof suffix, "%s.weight", base);
    snprintf(name, sizeof name, nm->layer_fmt, (long long)i, suffix);
    int64_t ws[2] = {n_out, n_in};
    LQ_TRY(load_weight(m, path, name, 2, ws, WANT_KEEP, false, permute_hd, wt, err));
    *bt = NULL;
    if (!has_bias) return LQ_OK;
    if (permute_hd > 0)
        return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "%s: q / k biases in a GGUF file are not supported", path);
    snprintf(suffix, sizeof suffix, "%s.bias", base);
    snprintf(name, sizeof name, nm->layer_fmt, (long long)i, suffix);
    return load_weight(m, path, name, 1, &n_out, WANT_F32, false, 0, bt, err);
}

static lq_status load_all(lq_llama_model *m, const char *path, const names *nm, bool gguf, lq_err *err) {
    const lq_llama_config *c = &m->cfg;
    int64_t C = c->hidden_size, D = c->head_dim, Hq = c->num_attention_heads, Hkv = c->num_key_value_heads;
    int64_t F = c->intermediate_size, V = c->vocab_size;
    int64_t es[2] = {V, C};
    lq_tensor *embed_file = NULL;
    LQ_TRY(load_weight(m, path, nm->embed, 2, es, WANT_KEEP, false, 0, &embed_file, err));
    m->embed_file = embed_file;
    if (embed_file->dtype == LQ_DTYPE_F32) {
        m->embed = embed_file;
    } else { /* lq_embedding reads f32: dequantize the table once (V * C * 4 bytes) */
        LQ_TRY(load_weight(m, path, nm->embed, 2, es, WANT_F32, false, 0, &m->embed, err));
    }
    LQ_TRY(load_weight(m, path, nm->out_norm, 1, &C, WANT_F32, false, 0, &m->out_norm, err));
    /* tied: the embedding's file tensor is the output projection (a stored lm_head is ignored,
     * as transformers ties it); GGUF ties by leaving "output" out (gguf_config set the flag) */
    if (c->tie_word_embeddings)
        m->lm_head = embed_file;
    else
        LQ_TRY(load_weight(m, path, nm->lm_head, 2, es, WANT_KEEP, false, 0, &m->lm_head, err));
    m->layers = calloc((size_t)c->num_hidden_layers, sizeof *m->layers);
    if (!m->layers) return LQ_ERR(err, LQ_ERR_OOM, "out of memory for %lld layers", (long long)c->num_hidden_layers);
    for (int64_t i = 0; i < c->num_hidden_layers; i++) {
        lq_llama_layer *L = &m->layers[i];
        char name[160];
        snprintf(name, sizeof name, nm->layer_fmt, (long long)i, nm->attn_norm);
        LQ_TRY(load_weight(m, path, name, 1, &C, WANT_F32, false, 0, &L->attn_norm, err));
        snprintf(name, sizeof name, nm->layer_fmt, (long long)i, nm->ffn_norm);
        LQ_TRY(load_weight(m, path, name, 1, &C, WANT_F32, false, 0, &L->ffn_norm, err));
        int64_t pd = gguf ? D : 0;
        LQ_TRY(load_linear(m, path, nm, i, nm->q, Hq * D, C, c->qkv_bias, pd, &L->wq, &L->bq, err));
        LQ_TRY(load_linear(m, path, nm, i, nm->k, Hkv * D, C, c->qkv_bias, pd, &L->wk, &L->bk, err));
        LQ_TRY(load_linear(m, path, nm, i, nm->v, Hkv * D, C, c->qkv_bias, 0, &L->wv, &L->bv, err));
        LQ_TRY(load_linear(m, path, nm, i, nm->o, C, Hq * D, c->o_bias, 0, &L->wo, &L->bo, err));
        LQ_TRY(load_linear(m, path, nm, i, nm->gate, F, C, c->mlp_bias, 0, &L->wgate, &L->bgate, err));
        LQ_TRY(load_linear(m, path, nm, i, nm->up, F, C, c->mlp_bias, 0, &L->wup, &L->bup, err));
        LQ_TRY(load_linear(m, path, nm, i, nm->down, C, F, c->mlp_bias, 0, &L->wdown, &L->bdown, err));
    }
    return LQ_OK;
}

/* A required positive integer llama.* key. */
static lq_status gguf_int(const lq_gguf_file *f, const char *key, int64_t *out, lq_err *err) {
    uint64_t v;
    LQ_TRY(lq_gguf_get_u64(f, key, &v, err));
    if (v == 0 || v > ((uint64_t)1 << 40))
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: '%s' = %llu is out of range", lq_gguf_path(f), key, (unsigned long long)v);
    *out = (int64_t)v;
    return LQ_OK;
}

static lq_status gguf_config(lq_llama_model *m, const char *path, lq_err *err) {
    const lq_gguf_file *f = m->gguf;
    lq_llama_config *c = &m->cfg;
    const char *arch = NULL;
    LQ_TRY(lq_gguf_get_str(f, "general.architecture", &arch, err));
    if (strcmp(arch, "llama") != 0)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: general.architecture '%s' is not supported (only 'llama')", path, arch);
    memset(c, 0, sizeof *c);
    c->arch = LQ_LLAMA_ARCH_LLAMA;
    LQ_TRY(gguf_int(f, "llama.embedding_length", &c->hidden_size, err));
    LQ_TRY(gguf_int(f, "llama.block_count", &c->num_hidden_layers, err));
    LQ_TRY(gguf_int(f, "llama.feed_forward_length", &c->intermediate_size, err));
    LQ_TRY(gguf_int(f, "llama.attention.head_count", &c->num_attention_heads, err));
    c->num_key_value_heads = c->num_attention_heads;
    if (lq_gguf_find_kv(f, "llama.attention.head_count_kv"))
        LQ_TRY(gguf_int(f, "llama.attention.head_count_kv", &c->num_key_value_heads, err));
    c->max_position_embeddings = 2048;
    if (lq_gguf_find_kv(f, "llama.context_length"))
        LQ_TRY(gguf_int(f, "llama.context_length", &c->max_position_embeddings, err));
    if (c->num_attention_heads % c->num_key_value_heads != 0)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: head_count %lld is not a multiple of head_count_kv %lld", path,
                      (long long)c->num_attention_heads, (long long)c->num_key_value_heads);
    c->head_dim = c->hidden_size / c->num_attention_heads;
    if (lq_gguf_find_kv(f, "llama.rope.dimension_count"))
        LQ_TRY(gguf_int(f, "llama.rope.dimension_count", &c->head_dim, err));
    if (c->head_dim % 2 != 0 || c->head_dim * c->num_attention_heads != c->hidden_size)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: llama.rope.dimension_count %lld does not fit %lld heads of hidden %lld",
                      path, (long long)c->head_dim, (long long)c->num_attention_heads, (long long)c->hidden_size);
    float eps, theta = 10000.0f;
    LQ_TRY(lq_gguf_get_f32(f, "llama.attention.layer_norm_rms_epsilon", &eps, err));
    if (lq_gguf_find_kv(f, "llama.rope.freq_base")) LQ_TRY(lq_gguf_get_f32(f, "llama.rope.freq_base", &theta, err));
    if (!(eps > 0) || !(theta > 0))
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: rms epsilon %g / rope.freq_base %g must be positive", path, eps, theta);
    c->rms_norm_eps = eps;
    c->rope_theta = theta;
    c->rope_type = LQ_ROPE_DEFAULT;
    c->rope_factor = 1;
    const char *st = NULL;
    if (lq_gguf_find_kv(f, "llama.rope.scaling.type")) {
        LQ_TRY(lq_gguf_get_str(f, "llama.rope.scaling.type", &st, err));
        if (strcmp(st, "linear") == 0) {
            float fac;
            LQ_TRY(lq_gguf_get_f32(f, "llama.rope.scaling.factor", &fac, err));
            if (!(fac > 0)) return LQ_ERR(err, LQ_ERR_INPUT, "%s: llama.rope.scaling.factor %g", path, fac);
            c->rope_type = LQ_ROPE_LINEAR;
            c->rope_factor = fac;
        } else if (strcmp(st, "none") != 0) {
            return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "%s: rope scaling '%s' is not supported", path, st);
        }
    }
    if (lq_gguf_find(f, "rope_freqs.weight"))
        return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "%s: tensor 'rope_freqs.weight' (llama3 RoPE) is not supported", path);
    const lq_gguf_tensor *e = lq_gguf_find(f, "token_embd.weight");
    if (!e) return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor 'token_embd.weight' is missing", path);
    if (e->ndim != 2 || e->shape[1] != c->hidden_size)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor 'token_embd.weight' is not (vocab, %lld)", path,
                      (long long)c->hidden_size);
    c->vocab_size = e->shape[0];
    c->tie_word_embeddings = lq_gguf_find(f, "output.weight") == NULL;
    uint32_t id;
    const lq_gguf_kv *kv = lq_gguf_find_kv(f, "tokenizer.ggml.bos_token_id");
    if (kv && lq_gguf_get_u32(f, "tokenizer.ggml.bos_token_id", &id, err) == LQ_OK) c->bos_token_id[c->n_bos++] = id;
    kv = lq_gguf_find_kv(f, "tokenizer.ggml.eos_token_id");
    if (kv && lq_gguf_get_u32(f, "tokenizer.ggml.eos_token_id", &id, err) == LQ_OK) c->eos_token_id[c->n_eos++] = id;
    LQ_TRY(err->status);
    c->dtype = LQ_DTYPE_COUNT;
    return LQ_OK;
}

lq_status lq_llama_load_gguf(lq_llama_model *m, const char *path, lq_err *err) {
    LQ_TRY(lq_gguf_open(&m->gguf, path, err));
    LQ_TRY(gguf_config(m, path, err));
    return load_all(m, path, &gguf_names, true, err);
}

lq_status lq_llama_load_hf(lq_llama_model *m, const char *path, lq_err *err) {
    LQ_TRY(lq_llama_config_load(&m->cfg, path, err));
    LQ_TRY(lq_st_model_open(&m->st, path, err));
    return load_all(m, path, &hf_names, false, err);
}

/* The model's slot for t in the owned list, or -1. */
static int owned_index(const lq_llama_model *m, const lq_tensor *t) {
    for (int i = 0; i < m->n_owned; i++)
        if (m->owned[i] == t) return i;
    return -1;
}

lq_status lq_llama_replace_weight(lq_llama_model *m, lq_tensor **slot, lq_tensor *t, lq_err *err) {
    int i = owned_index(m, *slot);
    if (i >= 0) {
        lq_qstate_free(m->owned[i]->qs);
        lq_tensor_free(m->owned[i]);
        m->owned[i] = t;
    } else {
        LQ_TRY(track(m, t, err));
    }
    *slot = t;
    return LQ_OK;
}

/* Quantizes one weight (out, in) of any dtype to NF4 / FP4 as bitsandbytes' quantize_4bit of its
 * f32 values; f32 is scratch for numel floats. *made gets the new tensor (same name, frozen, owning
 * its codes and state); the model is not touched, so calls on distinct weights may run at once. */
static lq_status requantize(const lq_tensor *w, lq_dtype type, int64_t block, bool dq, float *f32, lq_tensor **made,
                            lq_err *err) {
    *made = NULL;
    const lq_dtype_traits *tr = lq_dtype_info(w->dtype);
    if (!tr || !tr->to_f32)
        return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "weight '%s' (%s) cannot be dequantized", w->name, lq_dtype_name(w->dtype));
    int64_t n = lq_numel(w);
    tr->to_f32(w->data, f32, n, w->qs, 0);
    lq_tensor *t = lq_tensor_alloc(type, w->ndim, w->ne, w->name, err);
    if (!t) return LQ_ERR_OOM;
    lq_qstate *qs = NULL;
    lq_status s = lq_bnb4_quantize(type, f32, n, block, dq, t->data, &qs, err);
    if (s != LQ_OK) {
        lq_tensor_free(t);
        if (err) { /* name the tensor (NaN / Inf weights end here) */
            char msg[sizeof err->msg];
            snprintf(msg, sizeof msg, "%s", err->msg);
            lq_err_clear(err);
            LQ_ERR(err, s, "tensor '%s': %s", w->name, msg);
        }
        return s;
    }
    t->qs = qs;
    t->flags &= ~(uint32_t)LQ_TENSOR_REQUIRES_GRAD;
    *made = t;
    return LQ_OK;
}

/* Weight slot i of the decoder projections, layer after layer (q k v o gate up down). */
static lq_tensor **proj_slot(lq_llama_model *m, int64_t i) {
    lq_llama_layer *L = &m->layers[i / 7];
    lq_tensor **ws[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->wgate, &L->wup, &L->wdown};
    return ws[i % 7];
}

lq_status lq_llama_quantize_base(lq_llama_model *m, const char *what, const lq_llama_load_opts *o, int n_threads,
                                 lq_err *err) {
    lq_dtype type = o->quant == LQ_BASE_NF4 ? LQ_DTYPE_NF4 : LQ_DTYPE_FP4;
    int64_t block = o->block_size ? o->block_size : 64;
    if (block < 32 || block > 4096 || (block & (block - 1)) != 0)
        return LQ_ERR(err, LQ_ERR_ARG, "%s: quant block size %lld must be a power of two in 32..4096", what,
                      (long long)block);
    int64_t nw = m->cfg.num_hidden_layers * 7, max_n = 0;
    for (int64_t i = 0; i < nw; i++)
        if (lq_numel(*proj_slot(m, i)) > max_n) max_n = lq_numel(*proj_slot(m, i));
    /* nt = 1: one weight at a time, each swapped into the model as soon as it is made (the transient
     * f32 buffer is the largest weight). nt > 1: every weight at once over nt threads (largest-first
     * would balance better; dynamic scheduling is close enough), one f32 buffer per thread, then
     * swapped in order. */
    int nt = n_threads > 1 ? n_threads : 1;
    if (nw > 0 && nt > nw) nt = (int)nw;
    int64_t batch = nt == 1 ? 1 : nw;
    size_t nbatch = (size_t)(batch > 0 ? batch : 1);
    float *f32 = malloc((size_t)nt * (size_t)(max_n ? max_n : 1) * sizeof(float));
    lq_tensor **made = calloc(nbatch, sizeof *made);
    lq_status *sts = calloc(nbatch, sizeof *sts);
    lq_err *errs = calloc(nbatch, sizeof *errs);
    lq_status s = LQ_OK;
    if (!f32 || !made || !sts || !errs)
        s = LQ_ERR(err, LQ_ERR_OOM, "out of memory for %d %lld-float dequantization buffers", nt, (long long)max_n);
    for (int64_t b0 = 0; b0 < nw && s == LQ_OK; b0 += batch) {
        int64_t nb = nw - b0 < batch ? nw - b0 : batch;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
        for (int64_t j = 0; j < nb; j++) {
            int th = 0;
#ifdef _OPENMP
            th = omp_get_thread_num();
#endif
            lq_err_clear(&errs[j]);
            sts[j] = requantize(*proj_slot(m, b0 + j), type, block, o->double_quant, f32 + (size_t)th * (size_t)max_n,
                                &made[j], &errs[j]);
        }
        for (int64_t j = 0; j < nb; j++) {
            if (s == LQ_OK && sts[j] != LQ_OK) {
                s = sts[j];
                if (err && err->status == LQ_OK) *err = errs[j];
            }
            if (!made[j]) continue;
            if (s != LQ_OK) { /* an earlier one failed: drop what this one made */
                lq_qstate_free(made[j]->qs);
                lq_tensor_free(made[j]);
            } else {
                lq_qstate *qs = made[j]->qs;
                s = lq_llama_replace_weight(m, proj_slot(m, b0 + j), made[j], err);
                if (s != LQ_OK) lq_qstate_free(qs); /* track() freed the tensor */
            }
            made[j] = NULL;
        }
    }
    free(f32);
    free(made);
    free(sts);
    free(errs);
    if (s != LQ_OK && err) { /* name the file: the quantizer's message names only the tensor */
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        lq_err_clear(err);
        LQ_ERR(err, s, "%s: 4-bit quantization of the base: %s", what, msg);
    }
    return s;
}

lq_status lq_llama_load_ex(const char *path, const lq_llama_load_opts *opts, lq_llama_model **out, lq_err *err) {
    LQ_CHECK(err, path && out, LQ_ERR_ARG, "lq_llama_load needs a path and an output");
    *out = NULL;
    lq_llama_load_opts keep = {.quant = LQ_BASE_KEEP};
    const lq_llama_load_opts *o = opts ? opts : &keep;
    LQ_CHECK(err, o->quant == LQ_BASE_KEEP || o->quant == LQ_BASE_NF4 || o->quant == LQ_BASE_FP4, LQ_ERR_ARG,
             "lq_llama_load_ex: unknown base quantization %d", (int)o->quant);
    struct stat sb;
    if (stat(path, &sb) != 0) return LQ_ERR(err, LQ_ERR_INPUT, "%s: no such file or folder", path);
    lq_llama_model *m = calloc(1, sizeof *m);
    if (!m) return LQ_ERR(err, LQ_ERR_OOM, "out of memory for a model");
    lq_status s;
    size_t plen = strlen(path);
    bool gguf_name = plen > 5 && strcmp(path + plen - 5, ".gguf") == 0;
    if (!S_ISDIR(sb.st_mode) && (lq_gguf_sniff(path) || gguf_name))
        s = lq_llama_load_gguf(m, path, err); /* a .gguf without the magic: its reader says so */
    else if (!S_ISDIR(sb.st_mode))
        s = LQ_ERR(err, LQ_ERR_INPUT,
                   "%s: not a model: a GGUF file starts with 'GGUF', a Hugging Face model is a folder", path);
    else
        s = lq_llama_load_hf(m, path, err);
    if (s == LQ_OK) {
        m->inv_freq = calloc((size_t)(m->cfg.head_dim / 2), sizeof(float));
        s = m->inv_freq ? lq_llama_rope_inv_freq(&m->cfg, m->inv_freq)
                        : LQ_ERR(err, LQ_ERR_OOM, "out of memory for RoPE frequencies");
        if (s != LQ_OK && err && err->status == LQ_OK) LQ_ERR(err, s, "%s: invalid RoPE configuration", path);
    }
    if (s == LQ_OK && o->quant != LQ_BASE_KEEP) s = lq_llama_quantize_base(m, path, o, 1, err);
    if (s != LQ_OK) {
        lq_llama_free(m);
        return s;
    }
    *out = m;
    return LQ_OK;
}

/* Bytes of a quant state's scales for a tensor of n elements. */
static int64_t qstate_bytes(const lq_qstate *qs, int64_t n) {
    if (!qs || qs->block <= 0) return 0;
    int64_t nb = (n + qs->block - 1) / qs->block, b = 0;
    if (qs->absmax) b += nb * (int64_t)sizeof(float);
    if (qs->zero) b += nb * (int64_t)sizeof(float);
    if (qs->absmax_q) b += nb;
    if (qs->absmax2 && qs->block2 > 0) b += (nb + qs->block2 - 1) / qs->block2 * (int64_t)sizeof(float);
    return b;
}

int64_t lq_llama_weight_bytes(const lq_llama_model *m) {
    if (!m) return 0;
    int64_t b = 0;
    for (int i = 0; i < m->n_owned; i++) {
        const lq_tensor *t = m->owned[i];
        if (!t) continue;
        b += (int64_t)lq_nbytes(t) + qstate_bytes(t->qs, lq_numel(t));
    }
    return b;
}
