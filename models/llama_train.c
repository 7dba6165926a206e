/* models/llama_train.c: the Llama training forward (packed rows, document mask, gradient checkpointing
 * per decoder layer) and the chunked summed cross-entropy loss. */
#include <stdio.h>

#include "autograd/autograd_impl.h"
#include "models/models_impl.h"

/* Most logits floats one loss chunk holds: 8M floats = 32 MB (SmolLM2's V = 49152 -> 170 rows). */
#define LOSS_CHUNK_FLOATS ((int64_t)8 << 20)

/* What a checkpointed decoder layer needs besides its input h: the segment's user data, living in
 * the step's arena until backward re-runs the layer. */
typedef struct layer_seg {
    const lq_llama_model *m;
    int64_t l;
    lq_tensor *pos, *doc;
} layer_seg;

static lq_tensor *layer_segment(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const layer_seg *u = user;
    return lq_llama_layer_forward(ctx, u->m, u->l, in[0], u->pos, u->doc, NULL);
}

/* An i32 (B, T) per-token side input (positions or document ids) for ids (B, T). */
static bool check_side(lq_ctx *ctx, const lq_tensor *t, const lq_tensor *ids, const char *who, const char *what) {
    if (t->dtype != LQ_DTYPE_I32 || t->ndim != 2 || t->ne[0] != ids->ne[0] || t->ne[1] != ids->ne[1] ||
        !lq_is_contiguous(t)) {
        (void)LQ_OP_FAIL(ctx, LQ_ERR_ARG, "%s: %s must be contiguous i32 (%lld, %lld) like the ids", who, what,
                   (long long)ids->ne[0], (long long)ids->ne[1]);
        return false;
    }
    return true;
}

/* The last decoder layer's output h (B, T, C) for ids (B, T), adapters included. */
static lq_tensor *hidden(lq_ctx *ctx, lq_llama_model *m, lq_tensor *ids, const lq_llama_fwd_opts *o, const char *who) {
    if (!lq_llama_check_ids(ctx, m, ids, who)) return NULL;
    const lq_llama_config *c = &m->cfg;
    int64_t T = ids->ne[1];
    lq_tensor *pos = o ? o->positions : NULL, *doc = o ? o->doc : NULL;
    if (pos) {
        if (!check_side(ctx, pos, ids, who, "positions")) return NULL;
        const int32_t *p = pos->data;
        for (int64_t i = 0; i < lq_numel(pos); i++)
            if (p[i] < 0) return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "%s: position %d is negative", who, (int)p[i]);
    } else {
        pos = lq_new(ctx, LQ_DTYPE_I32, 1, &T);
        if (!pos) return NULL;
        for (int64_t t = 0; t < T; t++) ((int32_t *)pos->data)[t] = (int32_t)t;
    }
    if (doc && !check_side(ctx, doc, ids, who, "document ids")) return NULL;
    if (c->sliding_window > 0 && T > c->sliding_window)
        return LQ_OP_FAIL(ctx, LQ_ERR_UNSUPPORTED, "%s: %lld tokens exceed the sliding window %lld", who, (long long)T,
                          (long long)c->sliding_window);

    lq_tensor *h = lq_embedding(ctx, m->embed, ids); /* (B, T, C) */
    bool ckpt = o && o->checkpoint;
    if (!lq_ctx_grad_enabled(ctx) && h) {
        /* Without grad nothing a layer makes outlives it: its output is copied into one of two
         * (B, T, C) buffers and the arena rewound, so an evaluation batch holds one layer's
         * activations at a time instead of every layer's (the values are the same). */
        lq_tensor *buf[2] = {lq_new(ctx, LQ_DTYPE_F32, 3, h->ne), lq_new(ctx, LQ_DTYPE_F32, 3, h->ne)};
        if (!buf[0] || !buf[1]) return NULL;
        for (int64_t l = 0; l < c->num_hidden_layers && h; l++) {
            lq_ctx_mark mk = lq_ctx_get_mark(ctx);
            lq_tensor *y = lq_contiguous(ctx, lq_llama_layer_forward(ctx, m, l, h, pos, doc, NULL));
            if (!y) return NULL;
            int64_t ne4[4]; /* on a device, queued on the stream before anything reuses y */
            size_t bnb[4], ynb[4];
            lq_pad4(buf[l & 1], ne4, bnb);
            lq_pad4(y, ne4, ynb);
            if (lq_strided_to(ctx, buf[l & 1]->data, bnb, y->data, ynb, ne4, false) != LQ_OK) return NULL;
            lq_ctx_reset_to(ctx, mk);
            h = buf[l & 1];
        }
        return h;
    }
    for (int64_t l = 0; l < c->num_hidden_layers && h; l++) {
        if (!ckpt) {
            h = lq_llama_layer_forward(ctx, m, l, h, pos, doc, NULL);
            continue;
        }
        layer_seg *u = lq_ctx_alloc(ctx, sizeof *u);
        if (!u) return NULL;
        *u = (layer_seg){.m = m, .l = l, .pos = pos, .doc = doc};
        h = lq_checkpoint(ctx, layer_segment, u, 1, &h);
    }
    return h;
}

lq_tensor *lq_llama_forward_train(lq_ctx *ctx, lq_llama_model *m, lq_tensor *ids, const lq_llama_fwd_opts *o) {
    return lq_llama_head(ctx, m, hidden(ctx, m, ids, o, "llama_forward_train"));
}

/* One loss chunk: rows x (n, C) of the final-normed hidden states -> logits (n, V) -> summed CE
 * against the chunk's labels. */
typedef struct chunk_seg {
    const lq_llama_model *m;
    lq_tensor *labels; /* (n) i32, a view into the caller's labels */
} chunk_seg;

static lq_tensor *chunk_segment(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const chunk_seg *u = user;
    lq_tensor *logits = lq_lora_linear(ctx, in[0], u->m->lm_head, NULL, NULL);
    return lq_cross_entropy(ctx, logits, u->labels, LQ_IGNORE_INDEX, LQ_REDUCE_SUM);
}

lq_tensor *lq_llama_loss(lq_ctx *ctx, lq_llama_model *m, lq_tensor *ids, lq_tensor *labels, const lq_llama_fwd_opts *o,
                         int64_t *n_counted) {
    static const char who[] = "llama_loss";
    if (n_counted) *n_counted = 0;
    if (!ctx || lq_ctx_status(ctx) != LQ_OK) return NULL;
    if (!m || !ids || !labels) return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "%s: model, ids and labels are required", who);
    if (!lq_llama_check_ids(ctx, m, ids, who) || !check_side(ctx, labels, ids, who, "labels")) return NULL;
    int64_t N = ids->ne[0] * ids->ne[1], V = m->cfg.vocab_size, counted = 0;
    const int32_t *lab = labels->data;
    for (int64_t i = 0; i < N; i++) {
        if (lab[i] == LQ_IGNORE_INDEX) continue;
        if (lab[i] < 0 || lab[i] >= V)
            return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "%s: label %d at row %lld, column %lld is neither a token id below %lld nor %d",
                              who, (int)lab[i], (long long)(i / ids->ne[1]), (long long)(i % ids->ne[1]), (long long)V,
                              LQ_IGNORE_INDEX);
        counted++;
    }

    lq_tensor *h = hidden(ctx, m, ids, o, who);
    if (!h) return NULL;
    int64_t s2[2] = {N, h->ne[2]};
    lq_tensor *x = lq_reshape(ctx, lq_contiguous(ctx, lq_rmsnorm(ctx, h, m->out_norm, (float)m->cfg.rms_norm_eps)), 2, s2);
    int64_t rows = o && o->chunk_rows > 0 ? o->chunk_rows : LOSS_CHUNK_FLOATS / V;
    if (rows < 1) rows = 1;
    bool ckpt = o && o->checkpoint, nograd = !lq_ctx_grad_enabled(ctx);
    lq_tensor *total = NULL;
    float acc = 0.0f; /* no grad: the running sum, as lq_add would form it, chunk by chunk */
    for (int64_t r0 = 0; r0 < N && x; r0 += rows) {
        int64_t n = N - r0 < rows ? N - r0 : rows;
        lq_ctx_mark mk = lq_ctx_get_mark(ctx); /* no grad: a chunk's logits go once it is summed */
        chunk_seg *u = lq_ctx_alloc(ctx, sizeof *u);
        lq_tensor *lv = lq_ctx_alloc(ctx, sizeof *lv);
        if (!u || !lv) return NULL;
        lq_err e;
        lq_err_clear(&e);
        if (lq_tensor_init(lv, LQ_DTYPE_I32, 1, &n, (int32_t *)labels->data + r0, &e) != LQ_OK)
            return LQ_OP_FAIL(ctx, e.status, "%s: %s", who, e.msg);
        *u = (chunk_seg){.m = m, .labels = lv};
        /* one chunk covering every row is x itself: no slice node */
        lq_tensor *xs = n == N ? x : lq_slice(ctx, x, 0, r0, r0 + n);
        if (nograd) {
            lq_tensor *part = chunk_segment(ctx, &xs, 1, u);
            if (!part) return NULL;
            float pv = lq_tensor_get_f32(ctx, part, 0); /* from the device, if there */
            if (lq_ctx_status(ctx) != LQ_OK) return NULL;
            acc = r0 == 0 ? pv : acc + pv;
            lq_ctx_reset_to(ctx, mk);
            continue;
        }
        lq_tensor *part = ckpt ? lq_checkpoint(ctx, chunk_segment, u, 1, &xs) : chunk_segment(ctx, &xs, 1, u);
        total = total ? lq_add(ctx, total, part) : part;
        if (!total) return NULL;
    }
    if (nograd && x) {
        total = lq_new(ctx, LQ_DTYPE_F32, 0, NULL);
        if (!total) return NULL;
        if (lq_tensor_upload(ctx, total, &acc) != LQ_OK) return NULL;
    }
    if (total && n_counted) *n_counted = counted;
    return total;
}
