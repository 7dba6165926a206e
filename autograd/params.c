/* autograd/params.c: trainable parameters in one contiguous block, and their grads in another. */
#include <stdlib.h>
#include <string.h>

#include "autograd/autograd_impl.h"

#define PARAM_ALIGN_FLOATS 16 /* each tensor starts on a 64-byte boundary */

struct lq_params {
    lq_tensor **items; /* declared tensors (heap structs) with their grad tensors */
    int n, cap;
    bool finalized;
    float *data, *grad;
    int64_t numel, decay_numel;
};

lq_status lq_params_init(lq_params **p, lq_err *err) {
    LQ_CHECK(err, p != NULL, LQ_ERR_ARG, "NULL output");
    *p = calloc(1, sizeof **p);
    if (!*p) return LQ_ERR(err, LQ_ERR_OOM, "out of memory allocating the parameter set");
    return LQ_OK;
}

void lq_params_free(lq_params *p) {
    if (!p) return;
    for (int i = 0; i < p->n; i++) {
        free(p->items[i]->grad);
        free(p->items[i]);
    }
    free(p->items);
    free(p->data);
    free(p->grad);
    free(p);
}

lq_tensor *lq_params_add(lq_params *p, const char *name, int ndim, const int64_t *shape, uint32_t flags, lq_err *err) {
    if (!p || !name) {
        LQ_ERR(err, LQ_ERR_ARG, "lq_params_add: NULL parameter set or name");
        return NULL;
    }
    if (p->finalized) {
        LQ_ERR(err, LQ_ERR_STATE, "parameter '%s' declared after the parameter block was allocated", name);
        return NULL;
    }
    if (lq_params_find(p, name)) {
        LQ_ERR(err, LQ_ERR_ARG, "parameter '%s' declared twice", name);
        return NULL;
    }
    if (p->n == p->cap) {
        int cap = p->cap ? p->cap * 2 : 16;
        lq_tensor **items = realloc(p->items, (size_t)cap * sizeof *items);
        if (!items) {
            LQ_ERR(err, LQ_ERR_OOM, "out of memory declaring parameter '%s'", name);
            return NULL;
        }
        p->items = items;
        p->cap = cap;
    }
    lq_tensor *t = calloc(1, sizeof *t);
    lq_tensor *g = calloc(1, sizeof *g);
    if (!t || !g || lq_tensor_init(t, LQ_DTYPE_F32, ndim, shape, NULL, err) != LQ_OK) {
        if (!t || !g) LQ_ERR(err, LQ_ERR_OOM, "out of memory declaring parameter '%s'", name);
        free(t);
        free(g);
        return NULL;
    }
    *g = *t;
    t->flags = LQ_TENSOR_PARAM | LQ_TENSOR_REQUIRES_GRAD | (flags & LQ_TENSOR_NO_DECAY);
    t->grad = g;
    lq_tensor_set_name(t, name);
    lq_tensor_set_name(g, name);
    p->items[p->n++] = t;
    return t;
}

static int64_t padded(int64_t n) { return (n + PARAM_ALIGN_FLOATS - 1) / PARAM_ALIGN_FLOATS * PARAM_ALIGN_FLOATS; }

lq_status lq_params_finalize(lq_params *p, lq_err *err) {
    LQ_CHECK(err, p != NULL && !p->finalized, LQ_ERR_STATE, "parameter block already allocated");
    int64_t total = 0, decay = 0;
    for (int pass = 0; pass < 2; pass++) /* decayed first, then the rest */
        for (int i = 0; i < p->n; i++) {
            bool no_decay = (p->items[i]->flags & LQ_TENSOR_NO_DECAY) != 0;
            if (no_decay != (pass == 1)) continue;
            total += padded(lq_numel(p->items[i]));
            if (pass == 0) decay = total;
        }
    size_t bytes = (size_t)(total ? total : PARAM_ALIGN_FLOATS) * sizeof(float);
    p->data = aligned_alloc(LQ_ALIGN, bytes);
    p->grad = aligned_alloc(LQ_ALIGN, bytes);
    if (!p->data || !p->grad) {
        free(p->data);
        free(p->grad);
        p->data = p->grad = NULL;
        return LQ_ERR(err, LQ_ERR_OOM, "out of memory allocating %lld parameters", (long long)total);
    }
    memset(p->data, 0, bytes);
    memset(p->grad, 0, bytes);
    int64_t off = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < p->n; i++) {
            lq_tensor *t = p->items[i];
            bool no_decay = (t->flags & LQ_TENSOR_NO_DECAY) != 0;
            if (no_decay != (pass == 1)) continue;
            t->data = p->data + off;
            t->grad->data = p->grad + off;
            off += padded(lq_numel(t));
        }
    p->numel = total;
    p->decay_numel = decay;
    p->finalized = true;
    return LQ_OK;
}

int lq_params_count(const lq_params *p) { return p->n; }
lq_tensor *lq_params_at(const lq_params *p, int i) { return (i >= 0 && i < p->n) ? p->items[i] : NULL; }

lq_tensor *lq_params_find(const lq_params *p, const char *name) {
    for (int i = 0; i < p->n; i++)
        if (strcmp(p->items[i]->name, name) == 0) return p->items[i];
    return NULL;
}

float *lq_params_data(const lq_params *p) { return p->data; }
float *lq_params_grad(const lq_params *p) { return p->grad; }
int64_t lq_params_numel(const lq_params *p) { return p->numel; }
int64_t lq_params_decay_numel(const lq_params *p) { return p->decay_numel; }

int64_t lq_params_count_elements(const lq_params *p) {
    int64_t n = 0;
    for (int i = 0; i < p->n; i++) n += lq_numel(p->items[i]);
    return n;
}

void lq_params_zero_grad(lq_params *p) {
    if (p->grad) memset(p->grad, 0, (size_t)p->numel * sizeof(float));
}
