/* train/mem.c: the memory estimate of a fine-tuning run from the config, the model's header and the
 * dataset sizes on disk (no weight is read). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/io.h"
#include "lora/lora.h"
#include "train/mem.h"

/* ---------------------------------------------------------------------------------------------
 * The model's shape, as lq_llama_load_ex would build it
 * ------------------------------------------------------------------------------------------- */

typedef struct mem_model {
    int64_t C, F, L, Hq, Hkv, D, V;
    bool tied;
    int64_t lin_in[LQ_LORA_N_TARGETS], lin_out[LQ_LORA_N_TARGETS]; /* per layer, (out, in) */
    int64_t lin_file_bytes; /* every decoder linear weight, all layers, at the file's dtypes */
    int64_t lin_max_numel;  /* the largest one (the f32 transient while requantizing at load) */
    int64_t n_lin;          /* how many */
    int64_t embed_file_bytes, head_file_bytes; /* head: the tensor lm_head uses (the embedding's when tied) */
    bool embed_f32;
    int64_t small_f32;      /* norms and biases, as f32 */
    int64_t qk_file_bytes;  /* GGUF: q and k projections (loaded as permuted copies) */
    lq_dtype lin_dtype[LQ_LORA_N_TARGETS], head_dtype; /* as the file holds them */
    bool gguf;
} mem_model;

/* Which projection a per-layer tensor name ends in (GGUF or HF spelling); -1 for none. */
static int target_of(const char *suffix) {
    static const char *gg[LQ_LORA_N_TARGETS] = {"attn_q.weight",      "attn_k.weight",  "attn_v.weight",
                                                "attn_output.weight", "ffn_gate.weight", "ffn_up.weight",
                                                "ffn_down.weight"};
    for (int t = 0; t < LQ_LORA_N_TARGETS; t++) {
        char hf[64];
        snprintf(hf, sizeof hf, "%s.%s.weight", lq_lora_target_parent((lq_lora_target)t),
                 lq_lora_target_name((lq_lora_target)t));
        if (strcmp(suffix, gg[t]) == 0 || strcmp(suffix, hf) == 0) return t;
    }
    return -1;
}

/* The part of a layer tensor's name after "blk.N." / "model.layers.N.", or NULL. */
static const char *layer_suffix(const char *name) {
    const char *p = NULL;
    if (strncmp(name, "blk.", 4) == 0)
        p = name + 4;
    else if (strncmp(name, "model.layers.", 13) == 0)
        p = name + 13;
    if (!p || *p < '0' || *p > '9') return NULL;
    while (*p >= '0' && *p <= '9') p++;
    return *p == '.' ? p + 1 : NULL;
}

/* One tensor of the file, classified. */
static lq_status add_tensor(mem_model *m, const char *path, const char *name, int ndim, const int64_t *shape,
                            int64_t numel, int64_t bytes, lq_dtype dt, lq_err *err) {
    bool is_f32 = dt == LQ_DTYPE_F32;
    const char *suf = layer_suffix(name);
    if (suf) {
        int t = target_of(suf);
        if (t < 0) { /* norms, biases */
            m->small_f32 += numel * 4;
            return LQ_OK;
        }
        if (ndim != 2) return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s' is not a matrix", path, name);
        m->lin_out[t] = shape[0];
        m->lin_in[t] = shape[1];
        m->lin_dtype[t] = dt;
        m->lin_file_bytes += bytes;
        if (m->gguf && (t == LQ_LORA_Q || t == LQ_LORA_K)) m->qk_file_bytes += bytes;
        m->n_lin++;
        if (numel > m->lin_max_numel) m->lin_max_numel = numel;
        return LQ_OK;
    }
    if (strcmp(name, "token_embd.weight") == 0 || strcmp(name, "model.embed_tokens.weight") == 0) {
        m->embed_file_bytes = bytes;
        m->embed_f32 = is_f32;
        if (ndim == 2) m->V = shape[0];
        if (m->tied) m->head_dtype = dt;
    } else if (strcmp(name, "output.weight") == 0 || strcmp(name, "lm_head.weight") == 0) {
        if (m->tied) return LQ_OK; /* a stored head of a tied model is ignored, as the loader does */
        m->head_file_bytes = bytes;
        m->head_dtype = dt;
    } else if (ndim == 1) {
        m->small_f32 += numel * 4; /* final norm */
    }
    return LQ_OK;
}

static lq_status gguf_key(const lq_gguf_file *f, const char *key, int64_t dflt, int64_t *out, lq_err *err) {
    if (!lq_gguf_find_kv(f, key)) {
        if (dflt < 0) return LQ_ERR(err, LQ_ERR_INPUT, "%s: metadata key '%s' is missing", lq_gguf_path(f), key);
        *out = dflt;
        return LQ_OK;
    }
    uint64_t v;
    LQ_TRY(lq_gguf_get_u64(f, key, &v, err));
    if (v == 0 || v > ((uint64_t)1 << 40))
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: '%s' = %llu is out of range", lq_gguf_path(f), key, (unsigned long long)v);
    *out = (int64_t)v;
    return LQ_OK;
}

/* GGUF: the llama.* keys as models/llama_load.c reads them, shapes and dtypes from the tensor
 * infos (the file is mapped; no tensor data is touched). */
static lq_status read_gguf(mem_model *m, const char *path, lq_err *err) {
    lq_gguf_file *f = NULL;
    LQ_TRY(lq_gguf_open(&f, path, err));
    m->gguf = true;
    lq_status s = LQ_OK;
    const char *arch = NULL;
    if ((s = lq_gguf_get_str(f, "general.architecture", &arch, err)) != LQ_OK) goto done;
    if (strcmp(arch, "llama") != 0) {
        s = LQ_ERR(err, LQ_ERR_INPUT, "%s: general.architecture '%s' is not supported (only 'llama')", path, arch);
        goto done;
    }
    if ((s = gguf_key(f, "llama.embedding_length", -1, &m->C, err)) != LQ_OK ||
        (s = gguf_key(f, "llama.block_count", -1, &m->L, err)) != LQ_OK ||
        (s = gguf_key(f, "llama.feed_forward_length", -1, &m->F, err)) != LQ_OK ||
        (s = gguf_key(f, "llama.attention.head_count", -1, &m->Hq, err)) != LQ_OK ||
        (s = gguf_key(f, "llama.attention.head_count_kv", m->Hq, &m->Hkv, err)) != LQ_OK ||
        (s = gguf_key(f, "llama.rope.dimension_count", m->C / m->Hq, &m->D, err)) != LQ_OK)
        goto done;
    m->tied = lq_gguf_find(f, "output.weight") == NULL;
    for (int64_t i = 0; i < lq_gguf_count(f) && s == LQ_OK; i++) {
        const lq_gguf_tensor *t = lq_gguf_tensor_at(f, i);
        s = add_tensor(m, path, t->name, t->ndim, t->shape, t->numel, (int64_t)t->nbytes, t->dtype, err);
    }
done:
    lq_gguf_close(f);
    return s;
}

/* Hugging Face folder: config.json, and the safetensors headers for dtypes and sizes. */
static lq_status read_hf(mem_model *m, const char *path, lq_err *err) {
    lq_llama_config c;
    LQ_TRY(lq_llama_config_load(&c, path, err));
    m->C = c.hidden_size;
    m->F = c.intermediate_size;
    m->L = c.num_hidden_layers;
    m->Hq = c.num_attention_heads;
    m->Hkv = c.num_key_value_heads;
    m->D = c.head_dim;
    m->V = c.vocab_size;
    m->tied = c.tie_word_embeddings;
    lq_st_model *st = NULL;
    LQ_TRY(lq_st_model_open(&st, path, err));
    lq_status s = LQ_OK;
    for (int64_t i = 0; i < lq_st_model_count(st) && s == LQ_OK; i++) {
        const lq_st_tensor *t = lq_st_model_tensor_at(st, i);
        if (t->ndim > 2) continue;
        s = add_tensor(m, path, t->name, t->ndim, t->shape, t->numel, (int64_t)t->nbytes, lq_st_dtype_to_lq(t->dtype),
                       err);
    }
    lq_st_model_close(st);
    return s;
}

static lq_status read_model(mem_model *m, const char *path, lq_err *err) {
    memset(m, 0, sizeof *m);
    struct stat sb;
    if (!path || stat(path, &sb) != 0)
        return LQ_ERR(err, LQ_ERR_INPUT, "base_model %s: no such file or folder", path ? path : "(none)");
    LQ_TRY(!S_ISDIR(sb.st_mode) && lq_gguf_sniff(path) ? read_gguf(m, path, err) : read_hf(m, path, err));
    if (m->n_lin != 7 * m->L || m->V <= 0 || m->embed_file_bytes == 0)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: expected 7 projections in each of %lld layers and an embedding, found %lld "
                      "projections", path, (long long)m->L, (long long)m->n_lin);
    if (m->tied) m->head_file_bytes = m->embed_file_bytes;
    return LQ_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Base weights
 * ------------------------------------------------------------------------------------------- */

/* bitsandbytes' 4-bit layout of n elements, as lq_bnb4_quantize holds it: codes (n + 1) / 2 bytes;
 * absmax one f32 per block, or with double quantization one u8 per block plus one f32 per 256
 * blocks (the 256-entry nested code table is static). */
static int64_t bnb4_bytes(int64_t n, int64_t block, bool dq) {
    int64_t nblk = (n + block - 1) / block;
    return (n + 1) / 2 + (dq ? nblk + (nblk + 255) / 256 * 4 : nblk * 4);
}

/* ---------------------------------------------------------------------------------------------
 * Activations: a tally of what the activation arenas hold, op by op, as lq_llama_layer_forward
 * (models/llama.c), lq_llama_loss (models/llama_train.c) and lq_lora_linear (lora/lora.c) call
 * the ops. The arena frees nothing within a step, so its high water is every forward output and
 * saved buffer, plus a gradient buffer for every tensor that requires one (backward makes it
 * lazily, the tensor's size), plus the backward's own buffers (attention's dS). A reshape is a
 * view: a node and no data, but its gradient is a buffer of its own. Allocations are rounded to
 * 64 bytes; every op costs a tape node and a tensor struct besides its data.
 * ------------------------------------------------------------------------------------------- */

#define ARENA_ALIGN 64
#define NODE_BYTES 320   /* sizeof(lq_node) rounded to the arena's alignment */
#define TENSOR_BYTES 192 /* sizeof(lq_tensor), likewise */
#define ATTN_SCRATCH_FLOATS ((int64_t)1 << 22) /* op_attention.c: no-grad P / backward dS chunk */
#define LOSS_CHUNK_FLOATS ((int64_t)8 << 20)   /* models/llama_train.c: logits per loss chunk */

typedef struct tally {
    int64_t bytes; /* forward outputs, saved buffers, nodes */
    int64_t grads; /* gradient buffers backward will make */
    int64_t scratch; /* other buffers backward makes in the arena (attention's dS) */
    int64_t fwd_peak; /* the most held during the forward: bytes so far plus a dequant tile */
} tally;

/* A quantized matmul's forward: its dequant tile sits on top of what is held, then is rewound. */
static void tile_on_top(tally *t, int64_t tile) {
    if (t->bytes + tile > t->fwd_peak) t->fwd_peak = t->bytes + tile;
}
static int64_t fwd_end(const tally *t) { return t->bytes > t->fwd_peak ? t->bytes : t->fwd_peak; }

static int64_t al(int64_t b) { return (b + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN; }

/* An op's output of n floats (rg: it requires a gradient, so backward gives it a buffer). */
static bool op(tally *t, int64_t n, bool rg) {
    t->bytes += NODE_BYTES + TENSOR_BYTES + al(n * 4);
    if (rg) t->grads += TENSOR_BYTES + al(n * 4);
    return rg;
}
static bool view(tally *t, int64_t n, bool rg) {
    t->bytes += NODE_BYTES + TENSOR_BYTES;
    if (rg) t->grads += TENSOR_BYTES + al(n * 4);
    return rg;
}

typedef struct act_shape {
    const mem_model *m;
    int64_t B, T, r;
    uint32_t targets;
    bool dropout; /* lora_dropout > 0 (training mode) */
    bool grad;    /* recorded (training) or not (evaluation) */
    int threads;  /* the context's */
    bool release; /* lq_ctx_set_release_grads (the trainer's setting): intermediate gradients
                   * live in a pool, each returned once its node's backward has run */
    int64_t tile_lin[LQ_LORA_N_TARGETS], tile_head; /* dequant tile bytes of a quantized matmul, 0 for f32 */
} act_shape;

/* op_attention.c's backward: one (T, T) dS buffer per thread working on (b, kv head) units. */
static int64_t attn_ds_floats(const act_shape *s) {
    int64_t tt = s->T * s->T, units = s->B * s->m->Hkv, nt = s->threads;
    if (units < 2 || tt < 4096) nt = 1;
    if (nt > units) nt = units;
    return nt * tt;
}

/* Pairs (b, h) per attention chunk of at most 2^22 floats of (T, T) scores. */
static int64_t attn_chunk(const act_shape *s) {
    int64_t tt = s->T * s->T, pairs = s->B * s->m->Hq, c = ATTN_SCRATCH_FLOATS / (tt ? tt : 1);
    if (c < 1) c = 1;
    return c < pairs ? c : pairs;
}

/* lq_lora_linear on x (N, in) -> (N, out): the base matmul's (N, out), its dequant tile on top
 * (rewound at once). An adapted target is one fused op (autograd/ops/op_lora_linear.c): the output
 * (N, out) and, when recorded, u (N, r) kept for backward; drop(x) (N, in) (training with p > 0)
 * and, unrecorded, u are scratch on top, rewound before the op returns. Its backward's du (N, r)
 * and (N, in) buffer are rewound too, before the step's end. */
static bool lora_linear(tally *t, const act_shape *s, int tg, bool x_rg) {
    int64_t N = s->B * s->T, in = s->m->lin_in[tg], out = s->m->lin_out[tg];
    bool g = s->grad;
    bool adapted = (s->targets & (1u << tg)) != 0;
    bool y_rg = op(t, N * out, g && (x_rg || adapted));
    tile_on_top(t, s->tile_lin[tg]);
    if (!adapted) return y_rg;
    int64_t top = s->dropout ? al(N * in * 4) : 0;
    if (g) t->bytes += al(N * s->r * 4);
    else top += al(N * s->r * 4);
    tile_on_top(t, top);
    return y_rg;
}

/* lq_rmsnorm: the output and, when recorded, rstd (one float per row). */
static bool rmsnorm(tally *t, const act_shape *s, int64_t rows, bool x_rg) {
    bool rg = s->grad && x_rg;
    if (rg) t->bytes += al(rows * 4);
    return op(t, rows * s->m->C, rg);
}

/* One decoder layer (lq_llama_layer_forward) on h (B, T, C). Attention keeps P (B, Hq, T, T) when
 * recorded and its backward makes a dS chunk; without grad it works in chunks. */
static void layer(tally *t, const act_shape *s, bool h_rg) {
    const mem_model *m = s->m;
    int64_t N = s->B * s->T, C = m->C, F = m->F, half = m->D / 2;
    int64_t nq = N * m->lin_out[LQ_LORA_Q], nk = N * m->lin_out[LQ_LORA_K], nv = N * m->lin_out[LQ_LORA_V];
    bool g = s->grad;
    bool x = view(t, N * C, rmsnorm(t, s, N, h_rg)); /* rows(): (B*T, C) */
    bool q = view(t, nq, lora_linear(t, s, LQ_LORA_Q, x));
    bool k = view(t, nk, lora_linear(t, s, LQ_LORA_K, x));
    bool v = view(t, nv, lora_linear(t, s, LQ_LORA_V, x));
    for (int i = 0; i < 2; i++) t->bytes += al(half * 4) + 2 * al(N * half * 4); /* rope: freqs, cos, sin */
    q = op(t, nq, g && q);
    k = op(t, nk, g && k);
    bool a = op(t, nq, g && (q || k || v));
    int64_t tt = s->T * s->T;
    if (a) {
        t->bytes += al(s->B * m->Hq * tt * 4);      /* P */
        t->scratch += al(attn_ds_floats(s) * 4);     /* dS */
    } else {
        t->bytes += al(attn_chunk(s) * tt * 4);
    }
    a = view(t, nq, a); /* (B*T, Hq*D) */
    bool o = view(t, N * C, lora_linear(t, s, LQ_LORA_O, a));
    bool h2 = op(t, N * C, g && (h_rg || o)); /* residual */
    x = view(t, N * C, rmsnorm(t, s, N, h2));
    bool ga = lora_linear(t, s, LQ_LORA_GATE, x), up = lora_linear(t, s, LQ_LORA_UP, x);
    bool sw = op(t, N * F, g && (ga || up));
    bool dn = view(t, N * C, lora_linear(t, s, LQ_LORA_DOWN, sw));
    op(t, N * C, g && (h2 || dn)); /* residual */
}

/* Bytes of the largest dequant tile a quantized matmul with W (rows, k) of dtype dt makes
 * (lq_qmatmul_default_tiles: the forward's slab, or the backward's whole rows); 0 for f32, which
 * goes through sgemm on the weight itself. */
static int64_t tile_bytes(lq_dtype dt, int64_t rows, int64_t k) {
    if (dt == LQ_DTYPE_F32) return 0;
    lq_qmatmul_tiles tl = lq_qmatmul_default_tiles(dt, rows, k);
    int64_t f = tl.fwd_rows * tl.fwd_cols, b = tl.bwd_rows * k;
    return al((f > b ? f : b) * 4);
}

/* Rows of one loss chunk. */
static int64_t head_rows(const act_shape *s) {
    int64_t N = s->B * s->T, rows = LOSS_CHUNK_FLOATS / s->m->V;
    if (rows < 1) rows = 1;
    return rows < N ? rows : N;
}

/* One loss chunk (chunk_segment): logits (n, V) = x lm_head^T, then the summed cross-entropy (its
 * per-row losses in double and, recorded, the logsumexp per row). */
static void head_chunk(tally *t, const act_shape *s, int64_t n, bool x_rg) {
    bool g = s->grad && x_rg;
    op(t, n * s->m->V, g);
    tile_on_top(t, s->tile_head);
    t->bytes += al(n * 8) + (g ? al(n * 4) : 0);
    op(t, 1, g);
}

/* Final norm, the (N, C) view, and the chunks (a slice view each when there is more than one);
 * checkpointed chunks run in scratch: *seg gets the largest one's peak (its dequant tile on top). */
static void head(tally *t, const act_shape *s, bool h_rg, bool ckpt_chunks, int64_t *seg) {
    int64_t N = s->B * s->T, rows = head_rows(s);
    bool x = view(t, N * s->m->C, rmsnorm(t, s, N, h_rg));
    for (int64_t r0 = 0; r0 < N; r0 += rows) {
        int64_t n = N - r0 < rows ? N - r0 : rows;
        bool xs = n == N ? x : view(t, n * s->m->C, x);
        if (ckpt_chunks) {
            op(t, 1, s->grad && xs);
            tally c = {0};
            head_chunk(&c, s, n, xs);
            c.bytes += TENSOR_BYTES; /* the input's alias; its gradient: */
            if (s->grad && xs) c.grads += TENSOR_BYTES + al(n * s->m->C * 4);
            /* re-run forward, then backward: the logits' and the alias's gradients, and the tile */
            int64_t peak = c.bytes + c.grads + s->tile_head;
            if (fwd_end(&c) > peak) peak = fwd_end(&c);
            if (peak > *seg) *seg = peak;
        } else {
            head_chunk(t, s, n, xs);
        }
        if (r0 > 0) op(t, 1, s->grad && x); /* the running sum */
    }
}

/* The main arena's peak for a step without checkpointing (grad) or one evaluation batch (no
 * grad). The arena only grows within a step, so the peak is its end, or an earlier moment with a
 * quantized matmul's dequant tile on top: in the forward, or the lm_head's in the backward of the
 * head (before the layers' gradients exist). */
static int64_t act_plain(const act_shape *s) {
    tally t = {0};
    op(&t, s->B * s->T * s->m->C, false); /* embedding (frozen table: no gradient) */
    bool h_rg = false;
    int64_t layer_grads = 0; /* the most gradient bytes one layer makes */
    for (int64_t l = 0; l < s->m->L; l++) {
        int64_t g0 = t.grads;
        layer(&t, s, h_rg);
        if (t.grads - g0 > layer_grads) layer_grads = t.grads - g0;
        h_rg = s->grad && s->targets != 0;
    }
    int64_t grads_layers = t.grads;
    head(&t, s, h_rg, false, NULL);
    if (!s->grad) return fwd_end(&t);
    if (s->release) {
        /* The arena keeps the forward and backward's scratch; the pool keeps, per size, the most
         * gradients alive at once: bounded by one layer's (or the head's) gradients plus the
         * residual stream's two (B, T, C) ones. */
        int64_t head_grads = t.grads - grads_layers, C = s->B * s->T * s->m->C;
        int64_t pool = (layer_grads > head_grads ? layer_grads : head_grads) + 2 * (TENSOR_BYTES + al(C * 4));
        int64_t end = t.bytes + t.scratch + pool;
        return end > fwd_end(&t) + pool ? end : fwd_end(&t) + pool;
    }
    int64_t end = t.bytes + t.grads + t.scratch, at_head = t.bytes + t.grads - grads_layers + s->tile_head;
    return end > at_head ? end : at_head;
}

/* One evaluation batch (no grad; models/llama_train.c): the embedding and two (B, T, C) buffers
 * stay; each layer runs on top of them and is rewound once its output is copied into a buffer;
 * then the final norm and its (N, C) view, and one loss chunk at a time (rewound after it is
 * summed), and the scalar sum. */
static int64_t act_eval(const act_shape *s) {
    int64_t N = s->B * s->T, C = s->m->C, rows = head_rows(s);
    tally base = {0};
    op(&base, N * C, false);                          /* embedding */
    base.bytes += 2 * (TENSOR_BYTES + al(N * C * 4)); /* the two buffers (no node) */
    int64_t peak = base.bytes;
    for (int64_t l = 0; l < s->m->L; l++) {
        tally lt = base;
        lt.fwd_peak = 0;
        layer(&lt, s, false);
        if (fwd_end(&lt) > peak) peak = fwd_end(&lt);
    }
    tally h = base;
    h.fwd_peak = 0;
    view(&h, N * C, rmsnorm(&h, s, N, false));
    for (int64_t r0 = 0; r0 < N; r0 += rows) {
        int64_t n = N - r0 < rows ? N - r0 : rows;
        tally c = h;
        c.bytes += al(sizeof(void *) * 2) + TENSOR_BYTES; /* the chunk's user data and label view */
        if (n != N) view(&c, n * C, false);
        head_chunk(&c, s, n, false);
        if (fwd_end(&c) > peak) peak = fwd_end(&c);
    }
    h.bytes += TENSOR_BYTES + al(4); /* the sum */
    return fwd_end(&h) > peak ? fwd_end(&h) : peak;
}

/* With checkpointing: the main arena keeps the embedding, each layer's output h (B, T, C) and its
 * gradient, the final norm and each loss chunk's scalar; a layer (or a loss chunk) runs in the
 * scratch arena, which is rewound after it: once without grad in forward, once with grad in
 * backward, so scratch holds the largest single segment's activations and gradients (or a moment
 * with a dequant tile on top: in a forward, or the q projection's dX at the end of a layer's
 * backward, before the input's gradient). An arena keeps the pages it has touched, so the two
 * arenas' peaks add up: main_floor is the most the main arena holds at another time (an
 * evaluation batch). */
static int64_t act_ckpt(const act_shape *s, int64_t main_floor) {
    int64_t N = s->B * s->T, C = s->m->C, seg = 0;
    tally main = {0};
    op(&main, N * C, false);
    bool h_rg = false;
    for (int64_t l = 0; l < s->m->L; l++) {
        tally fw = {0}, bw = {0};
        act_shape ng = *s;
        ng.grad = false;
        layer(&fw, &ng, h_rg);
        layer(&bw, s, h_rg);
        bw.bytes += TENSOR_BYTES; /* the input's alias and, when it needs one, its gradient */
        if (h_rg) bw.grads += TENSOR_BYTES + al(N * C * 4);
        int64_t f = fwd_end(&fw), b = bw.bytes + bw.grads + bw.scratch;
        int64_t b_tile = b - TENSOR_BYTES - al(N * C * 4) + (h_rg ? s->tile_lin[LQ_LORA_Q] : 0);
        if (fwd_end(&bw) > b) b = fwd_end(&bw);
        if (b_tile > b) b = b_tile;
        if (f > seg) seg = f;
        if (b > seg) seg = b;
        h_rg = s->targets != 0;
        op(&main, N * C, h_rg);
    }
    head(&main, s, h_rg, true, &seg);
    /* release mode: the layer outputs' gradients go back to the pool one by one */
    int64_t main_peak = main.bytes + (s->release ? 2 * (TENSOR_BYTES + al(N * C * 4)) : main.grads);
    return (main_peak > main_floor ? main_peak : main_floor) + seg;
}

/* ---------------------------------------------------------------------------------------------
 * Data
 * ------------------------------------------------------------------------------------------- */

/* Bytes of a dataset path: the file, or the *.txt files of a folder. */
static lq_status data_bytes(const char *path, int64_t *out, lq_err *err) {
    struct stat sb;
    if (stat(path, &sb) != 0) return LQ_ERR(err, LQ_ERR_INPUT, "dataset %s: no such file or folder", path);
    if (!S_ISDIR(sb.st_mode)) {
        *out += (int64_t)sb.st_size;
        return LQ_OK;
    }
    DIR *d = opendir(path);
    if (!d) return LQ_ERR(err, LQ_ERR_INPUT, "dataset %s: cannot open the folder", path);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (n < 4 || strcmp(e->d_name + n - 4, ".txt") != 0) continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", path, e->d_name);
        if (stat(p, &sb) == 0 && S_ISREG(sb.st_mode)) *out += (int64_t)sb.st_size;
    }
    closedir(d);
    return LQ_OK;
}

/* ---------------------------------------------------------------------------------------------
 * The estimate
 * ------------------------------------------------------------------------------------------- */

lq_status lq_mem_estimate_run(const lq_train_config *cfg, lq_mem_estimate *out, lq_err *err) {
    LQ_CHECK(err, cfg && out, LQ_ERR_ARG, "lq_mem_estimate_run needs a config and an output");
    memset(out, 0, sizeof *out);
    mem_model m;
    LQ_TRY(read_model(&m, cfg->base_model, err));

    /* base: what lq_llama_load_ex holds */
    bool q4 = cfg->load_in_4bit && !cfg->base_quant_native;
    int64_t block = cfg->quant_block_size > 0 ? cfg->quant_block_size : 64;
    int64_t lin = m.lin_file_bytes;
    if (q4) {
        lin = 0;
        for (int t = 0; t < LQ_LORA_N_TARGETS; t++)
            lin += m.L * bnb4_bytes(m.lin_out[t] * m.lin_in[t], block, cfg->bnb_4bit_use_double_quant);
    }
    int64_t embed = m.V * m.C * 4 + (m.embed_f32 ? 0 : (m.tied ? m.embed_file_bytes : 0));
    out->base = lin + embed + (m.tied ? 0 : m.head_file_bytes) + m.small_f32;
    /* pages read at load that the model does not hold as weights: the requantized sources, or
     * GGUF q / k (copied to undo llama.cpp's row order); an untied non-f32 embedding's file tensor
     * (dequantized once) */
    out->mapped = q4 ? m.lin_file_bytes : m.qk_file_bytes;
    if (!m.embed_f32 && !m.tied) out->mapped += m.embed_file_bytes;

    /* adapters: A (r, in) and B (out, r) f32 per adapted projection per layer */
    int64_t r = cfg->lora_r, n_ad = 0;
    for (int t = 0; t < LQ_LORA_N_TARGETS; t++)
        if (cfg->lora_targets & (1u << t)) n_ad += m.L * r * (m.lin_in[t] + m.lin_out[t]);
    out->adapters = n_ad * 4;
    out->grads = n_ad * 4;
    out->optimizer = 2 * n_ad * 4;

    /* the largest product below, (B, Hq, T, T) floats in every layer, must fit in an int64 */
    double big = (double)cfg->micro_batch_size * (double)m.Hq * (double)cfg->sequence_len * (double)cfg->sequence_len *
                 16.0 * (double)m.L;
    if (cfg->micro_batch_size < 1 || cfg->sequence_len < 1 || big > 1e18)
        return LQ_ERR(err, LQ_ERR_INPUT, "micro_batch_size %lld x sequence_len %lld is out of the range an estimate covers",
                      (long long)cfg->micro_batch_size, (long long)cfg->sequence_len);
    int threads = cfg->threads > 0 ? cfg->threads : (int)sysconf(_SC_NPROCESSORS_ONLN); /* as the trainer */
    act_shape s = {&m,   cfg->micro_batch_size, cfg->sequence_len, r, cfg->lora_targets, cfg->lora_dropout > 0,
                   true, threads < 1 ? 1 : threads, true, {0}, 0};
    lq_dtype q4_dt = cfg->bnb_4bit_quant_type == LQ_DTYPE_FP4 ? LQ_DTYPE_FP4 : LQ_DTYPE_NF4;
    for (int t = 0; t < LQ_LORA_N_TARGETS; t++)
        s.tile_lin[t] = tile_bytes(q4 ? q4_dt : m.lin_dtype[t], m.lin_out[t], m.lin_in[t]);
    s.tile_head = tile_bytes(m.head_dtype, m.V, m.C);
    /* evaluation runs the same micro-batches in the main arena without grad, one layer at a time */
    act_shape ev = s;
    ev.grad = false;
    ev.dropout = false;
    int64_t eval = act_eval(&ev);
    out->activations = act_plain(&s);
    if (eval > out->activations) out->activations = eval;
    out->activations_ckpt = act_ckpt(&s, eval);

    /* workspace: outside the arena, the f32 copy of one weight while the load requantizes it
     * (at load only; counted all the same) */
    out->workspace = q4 ? m.lin_max_numel * 4 : 0;

    /* data: the documents' ids and labels (8 bytes a token) and the packed rows' ids, labels, doc
     * ids and positions (16 bytes a token); about 4 bytes of English text per token */
    int64_t text = 0;
    for (int i = 0; i < cfg->n_datasets; i++) LQ_TRY(data_bytes(cfg->datasets[i].path, &text, err));
    for (int i = 0; i < cfg->n_test_datasets; i++) LQ_TRY(data_bytes(cfg->test_datasets[i].path, &text, err));
    out->data = text / 4 * 24;

    out->runtime = LQ_MEM_RUNTIME_BYTES + m.V * LQ_MEM_VOCAB_BYTES;
    int64_t common = out->base + out->adapters + out->grads + out->optimizer + out->workspace + out->data +
                     out->runtime + out->mapped;
    out->total = common + (cfg->gradient_checkpointing ? out->activations_ckpt : out->activations);
    out->total_other = common + (cfg->gradient_checkpointing ? out->activations : out->activations_ckpt);
    return LQ_OK;
}

int64_t lq_mem_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return -1;
    char line[256];
    long long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lld kB", &kb) == 1) break;
    fclose(f);
    return kb < 0 ? -1 : (int64_t)kb * 1024;
}

lq_status lq_mem_check(const lq_mem_estimate *e, lq_err *err) {
    int64_t avail = lq_mem_available();
    if (!e || avail < 0 || e->total <= avail) return LQ_OK;
    /* total_other < total: checkpointing is off and turning it on would help */
    return LQ_ERR(err, LQ_ERR_OOM,
                  "the run needs about %.0f MiB (loquat mem's estimate) but only %.0f MiB are available (MemAvailable); "
                  "lower micro_batch_size or sequence_len%s",
                  (double)e->total / 1048576.0, (double)avail / 1048576.0,
                  e->total_other < e->total ? ", or set gradient_checkpointing: true" : "");
}
