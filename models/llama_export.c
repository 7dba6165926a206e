/* models/llama_export.c: a loaded Llama model written back as a GGUF file llama.cpp reads: its
 * tensor names and metadata keys, q / k rows put back in llama.cpp's interleaved order. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/models_impl.h"

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

typedef struct export_list {
    lq_gguf_wtensor *t;
    char (*names)[96];
    void **copies; /* permuted q / k data, freed at the end */
    int n, n_copies, cap;
} export_list;

static lq_status add(export_list *e, const char *name, const lq_tensor *t, int64_t permute_hd, lq_err *err) {
    if (e->n == e->cap) return LQ_ERR(err, LQ_ERR_INTERNAL, "export: tensor list full");
    lq_gguf_wtensor *w = &e->t[e->n];
    snprintf(e->names[e->n], sizeof e->names[e->n], "%s", name);
    w->name = e->names[e->n];
    w->dtype = t->dtype;
    w->ndim = t->ndim;
    for (int d = 0; d < t->ndim; d++) w->shape[d] = t->ne[d];
    w->data = t->data;
    if (permute_hd > 0) {
        size_t bytes = lq_nbytes(t);
        void *p = malloc(bytes ? bytes : 1);
        if (!p) return LQ_ERR(err, LQ_ERR_OOM, "export: out of memory copying %s", name);
        permute_rows(p, t->data, t->ne[0], bytes / (size_t)t->ne[0], permute_hd);
        e->copies[e->n_copies++] = p;
        w->data = p;
    }
    e->n++;
    return LQ_OK;
}

lq_status lq_llama_save_gguf(const lq_llama_model *m, const char *path, lq_err *err) {
    LQ_CHECK(err, m != NULL && path != NULL, LQ_ERR_ARG, "export: NULL model or path");
    const lq_llama_config *c = &m->cfg;
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
    e.copies = calloc((size_t)cap, sizeof *e.copies);
    lq_status s = (e.t && e.names && e.copies) ? LQ_OK : LQ_ERR(err, LQ_ERR_OOM, "export: out of memory");
    /* the embedding as the file held it (m->embed may be a dequantized copy) */
    if (s == LQ_OK) s = add(&e, "token_embd.weight", m->embed_file, 0, err);
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
            s = add(&e, name, parts[i].t, parts[i].permute, err);
        }
    }
    if (s == LQ_OK) s = add(&e, "output_norm.weight", m->out_norm, 0, err);
    if (s == LQ_OK && !c->tie_word_embeddings) s = add(&e, "output.weight", m->lm_head, 0, err);
    if (s == LQ_OK) {
        lq_gguf_wkv kv[] = {
            {.key = "general.architecture", .type = LQ_GGUF_STRING, .v.s = "llama"},
            {.key = "general.name", .type = LQ_GGUF_STRING, .v.s = "loquat export"},
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
        s = lq_gguf_write(path, kv, (int64_t)(sizeof kv / sizeof kv[0]), e.t, e.n, err);
    }
    for (int i = 0; i < e.n_copies; i++) free(e.copies[i]);
    free(e.copies);
    free(e.names);
    free(e.t);
    return s;
}
