/* autograd/params.c: trainable parameters in one contiguous block, and their grads in another. */
#include <stdlib.h>
#include <string.h>

#include "autograd/autograd_impl.h"
#include "core/cuda.h"

#define PARAM_ALIGN_FLOATS 16 /* each tensor starts on a 64-byte boundary */

struct lq_params {
    lq_tensor **items; /* declared tensors (heap structs) with their grad tensors */
    int n, cap;
    bool finalized;
    float *data, *grad;
    int64_t numel, decay_numel;
    lq_device_kind device; /* where data and grad live */
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
    if (p->device == LQ_DEVICE_CUDA) {
        lq_cuda_free(p->data);
        lq_cuda_free(p->grad);
    } else {
        free(p->data);
        free(p->grad);
    }
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
    if (!p->grad) return;
    if (p->device == LQ_DEVICE_CUDA) {
        lq_err e;
        lq_err_clear(&e);
        (void)lq_cuda_memset(p->grad, 0, (size_t)p->numel * sizeof(float), NULL, &e);
        /* the default stream does not order a context's non-blocking stream: wait, so the next
         * backward (on that stream) cannot accumulate into grads the memset has not cleared yet */
        (void)lq_cuda_sync(NULL, &e);
        return;
    }
    memset(p->grad, 0, (size_t)p->numel * sizeof(float));
}

lq_device_kind lq_params_device(const lq_params *p) { return p->device; }

/* Repoints every parameter and its grad into the blocks data / grad on device dev. */
static void repoint(lq_params *p, float *data, float *grad, lq_device_kind dev) {
    for (int i = 0; i < p->n; i++) {
        lq_tensor *t = p->items[i];
        ptrdiff_t off = (float *)t->data - p->data;
        t->data = data + off;
        t->device = dev;
        t->grad->data = grad + off;
        t->grad->device = dev;
    }
    p->data = data;
    p->grad = grad;
    p->device = dev;
}

lq_status lq_params_to_device(lq_params *p, lq_err *err) {
    LQ_CHECK(err, p && p->finalized, LQ_ERR_STATE, "parameters must be finalized before they move to the device");
    if (p->device == LQ_DEVICE_CUDA) return LQ_OK;
    size_t bytes = (size_t)p->numel * sizeof(float);
    float *d = lq_cuda_malloc(bytes, err), *g = d ? lq_cuda_malloc(bytes, err) : NULL;
    if (!d || !g || lq_cuda_copy(d, p->data, bytes, LQ_COPY_H2D, NULL, err) != LQ_OK ||
        lq_cuda_copy(g, p->grad, bytes, LQ_COPY_H2D, NULL, err) != LQ_OK) {
        lq_cuda_free(d);
        lq_cuda_free(g);
        return err->status ? err->status : LQ_ERR_OOM;
    }
    float *hd = p->data, *hg = p->grad;
    repoint(p, d, g, LQ_DEVICE_CUDA);
    free(hd);
    free(hg);
    return LQ_OK;
}

lq_status lq_params_to_host(lq_params *p, lq_err *err) {
    LQ_CHECK(err, p != NULL, LQ_ERR_ARG, "NULL parameters");
    if (p->device != LQ_DEVICE_CUDA) return LQ_OK;
    size_t bytes = (size_t)p->numel * sizeof(float);
    float *d = aligned_alloc(LQ_ALIGN, bytes), *g = aligned_alloc(LQ_ALIGN, bytes);
    if (!d || !g) {
        free(d);
        free(g);
        return LQ_ERR(err, LQ_ERR_OOM, "out of memory bringing %zu bytes of parameters back from the device", bytes);
    }
    if (lq_cuda_copy(d, p->data, bytes, LQ_COPY_D2H, NULL, err) != LQ_OK ||
        lq_cuda_copy(g, p->grad, bytes, LQ_COPY_D2H, NULL, err) != LQ_OK) {
        free(d);
        free(g);
        return err->status;
    }
    float *dd = p->data, *dg = p->grad;
    repoint(p, d, g, LQ_DEVICE_CPU);
    lq_cuda_free(dd);
    lq_cuda_free(dg);
    return LQ_OK;
}
