/* models/llama_qat.c: quantization-aware layers on a loaded Llama's decoder linears (trainable f32
 * weights dequantized from the file, fake-quant / integer forwards through models/qlayer.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/models_impl.h"
#include "models/qat.h"

struct lq_llama_qat {
    lq_llama_model *m;
    lq_params *params;
    lq_qlayer *layers;     /* n_layers * LQ_LORA_N_TARGETS */
    lq_tensor **orig;      /* the model's weight slots before attaching */
    int n;
};

lq_params *lq_llama_qat_params(lq_llama_qat *q) { return q ? q->params : NULL; }
int lq_llama_qat_count(const lq_llama_qat *q) { return q ? q->n : 0; }
lq_qlayer *lq_llama_qat_layer(lq_llama_qat *q, int i) { return q && i >= 0 && i < q->n ? &q->layers[i] : NULL; }
void lq_llama_qat_set_mode(lq_llama_model *m, lq_qat_mode mode) { m->qat_mode = (int)mode; }

void lq_llama_qat_free(lq_llama_qat *q) {
    if (!q) return;
    lq_llama_model *m = q->m;
    for (int i = 0; i < q->n; i++) {
        lq_llama_layer *L = &m->layers[i / LQ_LORA_N_TARGETS];
        lq_lora_target t = (lq_lora_target)(i % LQ_LORA_N_TARGETS);
        if (q->orig && q->orig[i]) *lq_llama_weight_slot(L, t) = q->orig[i];
        L->ql[t] = NULL;
        lq_qlayer_free(&q->layers[i]);
    }
    m->qat_mode = LQ_QAT_FLOAT;
    lq_params_free(q->params);
    free(q->layers), free(q->orig), free(q);
}

lq_status lq_llama_qat_attach(lq_llama_model *m, lq_cls_spec_fn resolve, void *user, int n_threads, lq_llama_qat **out,
                              lq_err *err) {
    *out = NULL;
    for (int64_t l = 0; l < m->cfg.num_hidden_layers; l++)
        for (int t = 0; t < LQ_LORA_N_TARGETS; t++)
            LQ_CHECK(err, !m->layers[l].ql[t] && !m->layers[l].lora[t], LQ_ERR_STATE,
                     "llama qat: layer %lld already has an adapter or quantization-aware layer", (long long)l);
    lq_llama_qat *q = calloc(1, sizeof *q);
    int n = (int)m->cfg.num_hidden_layers * LQ_LORA_N_TARGETS;
    if (!q || !(q->layers = calloc((size_t)n, sizeof *q->layers)) || !(q->orig = calloc((size_t)n, sizeof *q->orig))) {
        lq_llama_qat_free(q);
        return LQ_ERR(err, LQ_ERR_OOM, "llama qat: out of memory");
    }
    q->m = m;
    lq_status st = lq_params_init(&q->params, err);
    char nm[LQ_NAME_MAX + 16];
    for (int i = 0; i < n && st == LQ_OK; i++) {
        lq_llama_layer *L = &m->layers[i / LQ_LORA_N_TARGETS];
        lq_lora_target t = (lq_lora_target)(i % LQ_LORA_N_TARGETS);
        lq_qlayer *ql = &q->layers[i];
        q->n = i + 1;
        const lq_tensor *w = *lq_llama_weight_slot(L, t);
        snprintf(ql->name, sizeof ql->name, "model.layers.%d.%s.%s", i / LQ_LORA_N_TARGETS, lq_lora_target_parent(t),
                 lq_lora_target_name(t));
        ql->kind = LQ_QLAYER_LINEAR;
        snprintf(nm, sizeof nm, "%s.weight", ql->name);
        int64_t shape[2] = {w->ne[0], w->ne[1]};
        if (!(ql->weight = lq_params_add(q->params, nm, 2, shape, 0, err))) st = err->status;
        ql->bias = *lq_llama_bias_slot(L, t); /* f32, frozen */
        if (st == LQ_OK && resolve) resolve(ql->name, i, n, &ql->wspec, &ql->aspec, &ql->pact, user);
        if (st == LQ_OK) st = lq_qlayer_declare_params(ql, q->params, err);
    }
    if (st == LQ_OK) st = lq_params_finalize(q->params, err);
    for (int i = 0; i < n && st == LQ_OK; i++) {
        lq_llama_layer *L = &m->layers[i / LQ_LORA_N_TARGETS];
        lq_lora_target t = (lq_lora_target)(i % LQ_LORA_N_TARGETS);
        lq_qlayer *ql = &q->layers[i];
        lq_tensor **slot = lq_llama_weight_slot(L, t);
        const lq_dtype_traits *tr = lq_dtype_info((*slot)->dtype);
        LQ_CHECK(err, tr && tr->to_f32 && lq_is_contiguous(*slot), LQ_ERR_UNSUPPORTED,
                 "llama qat: %s has dtype %s, which cannot be read as float", ql->name, lq_dtype_name((*slot)->dtype));
        tr->to_f32((*slot)->data, ql->weight->data, lq_numel(ql->weight), (*slot)->qs, 0);
        st = lq_qlayer_setup(ql, n_threads, err);
        if (st != LQ_OK) break;
        q->orig[i] = *slot;
        *slot = ql->weight;
        L->ql[t] = ql;
    }
    if (st != LQ_OK) {
        lq_llama_qat_free(q);
        return st;
    }
    *out = q;
    return LQ_OK;
}

int64_t lq_llama_qat_weights_numel(const lq_llama_qat *q) {
    int64_t n = 0;
    for (int i = 0; i < q->n; i++) n += lq_numel(q->layers[i].weight);
    return n;
}

void lq_llama_qat_get_weights(const lq_llama_qat *q, float *dst) {
    for (int i = 0; i < q->n; i++) {
        memcpy(dst, q->layers[i].weight->data, lq_nbytes(q->layers[i].weight));
        dst += lq_numel(q->layers[i].weight);
    }
}

void lq_llama_qat_set_weights(lq_llama_qat *q, const float *src) {
    for (int i = 0; i < q->n; i++) {
        memcpy(q->layers[i].weight->data, src, lq_nbytes(q->layers[i].weight));
        src += lq_numel(q->layers[i].weight);
    }
}
