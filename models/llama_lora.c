/* models/llama_lora.c: LoRA adapters on a loaded Llama: create, attach (with validation) and merge into
 * the base weights. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/models_impl.h"

/* The layer's weight slot adapter target t adapts (and its bias). */
lq_tensor **lq_llama_weight_slot(lq_llama_layer *L, lq_lora_target t) {
    switch (t) {
    case LQ_LORA_Q: return &L->wq;
    case LQ_LORA_K: return &L->wk;
    case LQ_LORA_V: return &L->wv;
    case LQ_LORA_O: return &L->wo;
    case LQ_LORA_GATE: return &L->wgate;
    case LQ_LORA_UP: return &L->wup;
    case LQ_LORA_DOWN: return &L->wdown;
    default: return NULL;
    }
}

lq_tensor **lq_llama_bias_slot(lq_llama_layer *L, lq_lora_target t) {
    switch (t) {
    case LQ_LORA_Q: return &L->bq;
    case LQ_LORA_K: return &L->bk;
    case LQ_LORA_V: return &L->bv;
    case LQ_LORA_O: return &L->bo;
    case LQ_LORA_GATE: return &L->bgate;
    case LQ_LORA_UP: return &L->bup;
    case LQ_LORA_DOWN: return &L->bdown;
    default: return NULL;
    }
}

static void module_name(char *buf, size_t n, int64_t layer, lq_lora_target t) {
    snprintf(buf, n, "model.layers.%lld.%s.%s", (long long)layer, lq_lora_target_parent(t), lq_lora_target_name(t));
}

/* "model.layers.<i>.<parent>.<proj>" -> layer i and target; false for any other name. */
static bool parse_module(const char *s, int64_t n_layers, int64_t *layer, lq_lora_target *t) {
    static const char pre[] = "model.layers.";
    if (strncmp(s, pre, sizeof pre - 1) != 0) return false;
    const char *p = s + sizeof pre - 1;
    if (*p < '0' || *p > '9' || (*p == '0' && p[1] != '.')) return false; /* digits, no leading zeros */
    int64_t i = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        i = i * 10 + (*p - '0');
        if (i >= n_layers) return false;
    }
    if (*p++ != '.') return false;
    for (int k = 0; k < LQ_LORA_N_TARGETS; k++) {
        char want[64];
        snprintf(want, sizeof want, "%s.%s", lq_lora_target_parent((lq_lora_target)k),
                 lq_lora_target_name((lq_lora_target)k));
        if (strcmp(p, want) == 0) {
            *layer = i;
            *t = (lq_lora_target)k;
            return true;
        }
    }
    return false;
}

lq_status lq_llama_lora_attach(lq_llama_model *m, const lq_lora_set *s, lq_err *err) {
    LQ_CHECK(err, m != NULL, LQ_ERR_ARG, "lq_llama_lora_attach: NULL model");
    int64_t nl = m->cfg.num_hidden_layers;
    if (!s) {
        for (int64_t l = 0; l < nl; l++) memset(m->layers[l].lora, 0, sizeof m->layers[l].lora);
        m->lora = NULL;
        return LQ_OK;
    }
    LQ_CHECK(err, s->finalized, LQ_ERR_STATE, "lq_llama_lora_attach: the adapter set is not finalized");
    /* validate every module before touching the model, so a bad set leaves it as it was */
    for (int i = 0; i < s->n; i++) {
        const lq_lora *a = &s->mods[i];
        int64_t l;
        lq_lora_target t;
        if (!parse_module(a->module, nl, &l, &t))
            return LQ_ERR(err, LQ_ERR_INPUT,
                          "LoRA module '%s' is not a projection of this model (expected "
                          "model.layers.<0..%lld>.self_attn.{q,k,v,o}_proj or .mlp.{gate,up,down}_proj)",
                          a->module, (long long)(nl - 1));
        const lq_tensor *w = *lq_llama_weight_slot(&m->layers[l], t);
        if (a->in != w->ne[1] || a->out != w->ne[0])
            return LQ_ERR(err, LQ_ERR_INPUT, "LoRA module '%s' maps %lld -> %lld features; the model's %s is (%lld, %lld)",
                          a->module, (long long)a->in, (long long)a->out, w->name, (long long)w->ne[0],
                          (long long)w->ne[1]);
        int r = s->cfg.r;
        if (!a->A || !a->B || a->A->ndim != 2 || a->A->ne[1] != a->in || a->B->ndim != 2 || a->B->ne[0] != a->out ||
            a->A->ne[0] != a->B->ne[1] || a->A->ne[0] < 1 || a->A->dtype != LQ_DTYPE_F32 || a->B->dtype != LQ_DTYPE_F32)
            return LQ_ERR(err, LQ_ERR_INPUT, "LoRA module '%s': A / B are not f32 (r, %lld) / (%lld, r) (set rank %d)",
                          a->module, (long long)a->in, (long long)a->out, r);
    }
    for (int64_t l = 0; l < nl; l++) memset(m->layers[l].lora, 0, sizeof m->layers[l].lora);
    for (int i = 0; i < s->n; i++) {
        int64_t l;
        lq_lora_target t;
        parse_module(s->mods[i].module, nl, &l, &t);
        m->layers[l].lora[t] = &s->mods[i];
    }
    m->lora = s;
    return LQ_OK;
}

lq_status lq_llama_lora_create(lq_llama_model *m, const lq_lora_cfg *cfg, uint64_t seed, lq_lora_set **out,
                               lq_err *err) {
    LQ_CHECK(err, m && cfg && out, LQ_ERR_ARG, "lq_llama_lora_create needs a model, a config and an output");
    *out = NULL;
    lq_lora_set *s = NULL;
    LQ_TRY(lq_lora_set_init(&s, cfg, err));
    lq_status st = LQ_OK;
    /* layer order, then target enum order: the parameter block's layout and A's init order */
    for (int64_t l = 0; l < m->cfg.num_hidden_layers && st == LQ_OK; l++) {
        for (int t = 0; t < LQ_LORA_N_TARGETS && st == LQ_OK; t++) {
            if (!(cfg->targets & (1u << t))) continue;
            const lq_tensor *w = *lq_llama_weight_slot(&m->layers[l], (lq_lora_target)t);
            char name[LQ_NAME_MAX];
            module_name(name, sizeof name, l, (lq_lora_target)t);
            if (!lq_lora_set_add(s, name, w->ne[1], w->ne[0], err)) st = err && err->status ? err->status : LQ_ERR_ARG;
        }
    }
    if (st == LQ_OK) st = lq_lora_set_finalize(s, seed, err);
    if (st == LQ_OK) st = lq_llama_lora_attach(m, s, err);
    if (st != LQ_OK) {
        lq_lora_set_free(s);
        return st;
    }
    *out = s;
    return LQ_OK;
}

/* W' = deq(W) + scaling B A (W (out, in), B (out, r), A (r, in)) as a new f32 tensor of W's name. */
static lq_status merge_one(lq_llama_model *m, lq_tensor **slot, const lq_lora *a, lq_err *err) {
    lq_tensor *w = *slot;
    if (w->device == LQ_DEVICE_CUDA || a->A->device == LQ_DEVICE_CUDA || a->B->device == LQ_DEVICE_CUDA)
        return LQ_ERR(err, LQ_ERR_UNSUPPORTED,
                      "merge: '%s' or its adapter is on the CUDA device; the merge runs on the host (loquat merge)",
                      w->name);
    const lq_dtype_traits *tr = lq_dtype_info(w->dtype);
    if (!tr || !tr->to_f32)
        return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "merge: weight '%s' (%s) cannot be dequantized", w->name,
                      lq_dtype_name(w->dtype));
    lq_tensor *t = lq_tensor_alloc(LQ_DTYPE_F32, 2, w->ne, w->name, err);
    if (!t) return LQ_ERR_OOM;
    int64_t out = w->ne[0], in = w->ne[1], r = a->A->ne[0];
    float *d = t->data;
    tr->to_f32(w->data, d, out * in, w->qs, 0);
    /* B and A are contiguous views into the set's parameter block */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)out, (int)in, (int)r, a->scaling, (const float *)a->B->data,
                (int)r, (const float *)a->A->data, (int)in, 1.0f, d, (int)in);
    t->flags &= ~(uint32_t)LQ_TENSOR_REQUIRES_GRAD;
    return lq_llama_replace_weight(m, slot, t, err);
}

lq_status lq_llama_lora_merge(lq_llama_model *m, lq_err *err) {
    LQ_CHECK(err, m != NULL, LQ_ERR_ARG, "lq_llama_lora_merge: NULL model");
    if (!m->lora) return LQ_ERR(err, LQ_ERR_STATE, "merge: no LoRA adapter is attached to the model");
    for (int64_t l = 0; l < m->cfg.num_hidden_layers; l++) {
        lq_llama_layer *L = &m->layers[l];
        for (int t = 0; t < LQ_LORA_N_TARGETS; t++) {
            if (!L->lora[t]) continue;
            LQ_TRY(merge_one(m, lq_llama_weight_slot(L, (lq_lora_target)t), L->lora[t], err));
            L->lora[t] = NULL;
        }
    }
    return lq_llama_lora_attach(m, NULL, err);
}
