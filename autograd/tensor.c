/* autograd/tensor.c: tensor metadata, heap and arena tensors, shape helpers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/cuda_impl.h"
#include "core/cuda.h"
#include "autograd/autograd_impl.h"

void lq_contiguous_strides(int ndim, const int64_t *ne, size_t elem, size_t *nb) {
    size_t s = elem;
    for (int d = LQ_MAX_DIMS - 1; d >= ndim; d--) nb[d] = s;
    for (int d = ndim - 1; d >= 0; d--) {
        nb[d] = s;
        s *= (size_t)ne[d];
    }
}

static lq_status set_shape(lq_tensor *t, lq_dtype dtype, int ndim, const int64_t *shape, lq_err *err) {
    const lq_dtype_traits *tr = lq_dtype_info(dtype);
    LQ_CHECK(err, tr != NULL, LQ_ERR_ARG, "unknown dtype %d", (int)dtype);
    LQ_CHECK(err, ndim >= 0 && ndim <= LQ_MAX_DIMS, LQ_ERR_ARG, "ndim = %d, must be 0..%d", ndim, LQ_MAX_DIMS);
    int64_t n = 1;
    for (int d = 0; d < LQ_MAX_DIMS; d++) {
        t->ne[d] = d < ndim ? shape[d] : 1;
        LQ_CHECK(err, t->ne[d] >= 0, LQ_ERR_ARG, "dimension %d has negative size %lld", d, (long long)t->ne[d]);
        LQ_CHECK(err, t->ne[d] == 0 || n <= INT64_MAX / 4 / t->ne[d], LQ_ERR_ARG, "tensor too large");
        n *= t->ne[d];
    }
    t->dtype = dtype;
    t->ndim = ndim;
    if (tr->block_size == 1) {
        lq_contiguous_strides(ndim, t->ne, tr->block_bytes, t->nb);
    } else {
        /* Block formats: rows of the innermost dim are whole blocks; nb[last] is one block. */
        int64_t inner = ndim > 0 ? t->ne[ndim - 1] : 1;
        LQ_CHECK(err, inner % tr->block_size == 0, LQ_ERR_ARG, "%s rows need a multiple of %lld elements, got %lld",
                 tr->name, (long long)tr->block_size, (long long)inner);
        size_t row = (size_t)(inner / tr->block_size) * tr->block_bytes;
        for (int d = LQ_MAX_DIMS - 1; d >= 0; d--) t->nb[d] = d >= ndim - 1 ? tr->block_bytes : 0;
        size_t s = row;
        for (int d = ndim - 2; d >= 0; d--) {
            t->nb[d] = s;
            s *= (size_t)t->ne[d];
        }
    }
    return LQ_OK;
}

lq_status lq_tensor_init(lq_tensor *t, lq_dtype dtype, int ndim, const int64_t *shape, void *data, lq_err *err) {
    LQ_CHECK(err, t != NULL, LQ_ERR_ARG, "NULL tensor");
    memset(t, 0, sizeof *t);
    LQ_TRY(set_shape(t, dtype, ndim, shape, err));
    t->data = data;
    t->device = LQ_DEVICE_CPU;
    return LQ_OK;
}

int64_t lq_numel(const lq_tensor *t) {
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= t->ne[d];
    return n;
}

size_t lq_nbytes(const lq_tensor *t) { return lq_dtype_bytes(t->dtype, lq_numel(t)); }

lq_tensor *lq_tensor_alloc(lq_dtype dtype, int ndim, const int64_t *shape, const char *name, lq_err *err) {
    lq_tensor *t = calloc(1, sizeof *t);
    if (!t) {
        LQ_ERR(err, LQ_ERR_OOM, "out of memory allocating tensor '%s'", name ? name : "");
        return NULL;
    }
    if (lq_tensor_init(t, dtype, ndim, shape, NULL, err) != LQ_OK) {
        free(t);
        return NULL;
    }
    size_t bytes = lq_nbytes(t);
    t->data = calloc(1, bytes ? bytes : 1);
    if (!t->data) {
        LQ_ERR(err, LQ_ERR_OOM, "out of memory allocating %zu bytes for tensor '%s'", bytes, name ? name : "");
        free(t);
        return NULL;
    }
    t->flags |= LQ_TENSOR_OWNS_DATA;
    lq_tensor_set_name(t, name);
    return t;
}

void lq_tensor_free(lq_tensor *t) {
    if (!t) return;
    if (t->flags & LQ_TENSOR_OWNS_DATA) {
        if (t->device == LQ_DEVICE_CUDA)
            lq_cuda_free(t->data);
        else
            free(t->data);
    }
    free(t);
}

bool lq_is_contiguous(const lq_tensor *t) {
    const lq_dtype_traits *tr = lq_dtype_info(t->dtype);
    if (!tr || tr->block_size != 1) return true; /* block tensors are only ever contiguous */
    size_t s = tr->block_bytes;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->ne[d] != 1 && t->nb[d] != s) return false;
        s *= (size_t)t->ne[d];
    }
    return true;
}

bool lq_same_shape(const lq_tensor *a, const lq_tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int d = 0; d < a->ndim; d++)
        if (a->ne[d] != b->ne[d]) return false;
    return true;
}

int lq_axis(const lq_tensor *t, int axis) {
    if (axis < 0) axis += t->ndim;
    return (axis >= 0 && axis < t->ndim) ? axis : -1;
}

const char *lq_shape_str(const lq_tensor *t, char *buf, size_t n) {
    if (!t) {
        snprintf(buf, n, "(null)");
        return buf;
    }
    size_t k = (size_t)snprintf(buf, n, "(");
    for (int d = 0; d < t->ndim && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, d ? ", %lld" : "%lld", (long long)t->ne[d]);
    if (k < n) snprintf(buf + k, n - k, t->ndim == 1 ? ",)" : ")");
    return buf;
}

void lq_tensor_set_name(lq_tensor *t, const char *name) {
    if (!name) name = "";
    snprintf(t->name, sizeof t->name, "%s", name);
}

float *lq_f32_at(const lq_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    int64_t idx[4] = {i0, i1, i2, i3};
    size_t off = 0;
    for (int d = 0; d < t->ndim; d++) off += (size_t)idx[d] * t->nb[d];
    return (float *)((char *)t->data + off);
}

void lq_pad4(const lq_tensor *t, int64_t ne4[4], size_t nb4[4]) {
    int pad = LQ_MAX_DIMS - t->ndim;
    for (int d = 0; d < LQ_MAX_DIMS; d++) {
        if (d < pad) {
            ne4[d] = 1;
            nb4[d] = 0;
        } else {
            ne4[d] = t->ne[d - pad];
            nb4[d] = t->nb[d - pad];
        }
    }
}

/* --- arena tensors ------------------------------------------------------------------------ */

lq_tensor *lq_new(lq_ctx *ctx, lq_dtype dtype, int ndim, const int64_t *shape) {
    if (ctx->err.status != LQ_OK) return NULL;
    lq_tensor *t = lq_ctx_alloc(ctx, sizeof *t);
    if (!t) return NULL;
    if (lq_tensor_init(t, dtype, ndim, shape, NULL, &ctx->err) != LQ_OK) return NULL;
    /* a CUDA context keeps integer tensors (ids, positions, labels) on the host: see lq_ctx_opts */
    if (ctx->device == LQ_DEVICE_CUDA && dtype != LQ_DTYPE_I32 && dtype != LQ_DTYPE_U8) {
        t->device = LQ_DEVICE_CUDA;
        t->data = lq_ctx_dalloc(ctx, lq_nbytes(t));
        if (t->data && ctx->poison &&
            lq_cuda_memset(t->data, 0xff, lq_nbytes(t), lq_cuda_stream(ctx), &ctx->err) != LQ_OK)
            return NULL;
        return t->data ? t : NULL;
    }
    t->data = lq_ctx_alloc(ctx, lq_nbytes(t));
    return t->data ? t : NULL;
}

lq_tensor *lq_zeros(lq_ctx *ctx, lq_dtype dtype, int ndim, const int64_t *shape) {
    lq_tensor *t = lq_new(ctx, dtype, ndim, shape);
    if (!t) return NULL;
    if (t->device == LQ_DEVICE_CUDA)
        return lq_cuda_memset(t->data, 0, lq_nbytes(t), lq_cuda_stream(ctx), &ctx->err) == LQ_OK ? t : NULL;
    memset(t->data, 0, lq_nbytes(t));
    return t;
}

lq_tensor *lq_new_leaf(lq_ctx *ctx, int ndim, const int64_t *shape, bool requires_grad) {
    lq_tensor *t = lq_zeros(ctx, LQ_DTYPE_F32, ndim, shape);
    if (t && requires_grad) t->flags |= LQ_TENSOR_REQUIRES_GRAD;
    return t;
}

void lq_fill_normal(lq_tensor *t, lq_rng *rng, float std) {
    int64_t ne4[4];
    size_t nb4[4];
    lq_pad4(t, ne4, nb4);
    for (int64_t a = 0; a < ne4[0]; a++)
        for (int64_t b = 0; b < ne4[1]; b++)
            for (int64_t c = 0; c < ne4[2]; c++)
                for (int64_t d = 0; d < ne4[3]; d++)
                    *(float *)((char *)t->data + a * nb4[0] + b * nb4[1] + c * nb4[2] + d * nb4[3]) =
                        std * lq_rng_normal(rng);
}

void lq_fill_uniform(lq_tensor *t, lq_rng *rng, float lo, float hi) {
    int64_t ne4[4];
    size_t nb4[4];
    lq_pad4(t, ne4, nb4);
    for (int64_t a = 0; a < ne4[0]; a++)
        for (int64_t b = 0; b < ne4[1]; b++)
            for (int64_t c = 0; c < ne4[2]; c++)
                for (int64_t d = 0; d < ne4[3]; d++)
                    *(float *)((char *)t->data + a * nb4[0] + b * nb4[1] + c * nb4[2] + d * nb4[3]) =
                        lo + (hi - lo) * lq_rng_uniform(rng);
}
