/* autograd/device.c: moving tensors, weights and their quant state between the host and a CUDA
 * device, and reading results back. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/cuda_impl.h"
#include "core/cuda.h"

lq_status lq_tensor_download(lq_ctx *ctx, const lq_tensor *t, void *host) {
    if (!t || !host) return LQ_ERR(&ctx->err, LQ_ERR_ARG, "tensor download: NULL tensor or buffer");
    if (!lq_is_contiguous(t)) return LQ_ERR(&ctx->err, LQ_ERR_ARG, "tensor download: '%s' is not contiguous", t->name);
    if (t->device == LQ_DEVICE_CUDA) return lq_cuda_copy(host, t->data, lq_nbytes(t), LQ_COPY_D2H, lq_cuda_stream(ctx), &ctx->err);
    memcpy(host, t->data, lq_nbytes(t));
    return LQ_OK;
}

lq_status lq_tensor_upload(lq_ctx *ctx, lq_tensor *t, const void *host) {
    if (!t || !host) return LQ_ERR(&ctx->err, LQ_ERR_ARG, "tensor upload: NULL tensor or buffer");
    if (!lq_is_contiguous(t)) return LQ_ERR(&ctx->err, LQ_ERR_ARG, "tensor upload: '%s' is not contiguous", t->name);
    if (t->device == LQ_DEVICE_CUDA) return lq_cuda_copy(t->data, host, lq_nbytes(t), LQ_COPY_H2D, lq_cuda_stream(ctx), &ctx->err);
    memcpy(t->data, host, lq_nbytes(t));
    return LQ_OK;
}

lq_tensor *lq_to_ctx_device(lq_ctx *ctx, const lq_tensor *t) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!t) return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "to_device: NULL tensor");
    if (!lq_is_contiguous(t)) return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "to_device: '%s' is not contiguous", t->name);
    if (t->device != LQ_DEVICE_CPU) return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "to_device: '%s' is not a host tensor", t->name);
    lq_tensor *c = lq_new(ctx, t->dtype, t->ndim, t->ne);
    if (!c) return NULL;
    if (lq_tensor_upload(ctx, c, t->data) != LQ_OK) return NULL;
    c->flags |= t->flags & LQ_TENSOR_REQUIRES_GRAD;
    c->qs = t->qs;
    memcpy(c->name, t->name, sizeof c->name);
    return c;
}

float lq_tensor_get_f32(lq_ctx *ctx, const lq_tensor *t, int64_t i) {
    if (!t || t->dtype != LQ_DTYPE_F32 || i < 0 || i >= lq_numel(t) || !lq_is_contiguous(t)) return NAN;
    if (t->device != LQ_DEVICE_CUDA) return ((const float *)t->data)[i];
    float v = NAN;
    if (lq_cuda_copy(&v, (const float *)t->data + i, sizeof v, LQ_COPY_D2H, lq_cuda_stream(ctx), &ctx->err) != LQ_OK)
        return NAN;
    return v;
}

/* A device copy of n bytes of host memory; NULL (err set) on failure. */
static void *dev_copy(const void *host, size_t n, lq_err *err) {
    if (!host) return NULL;
    void *d = lq_cuda_malloc(n ? n : 1, err);
    if (d && lq_cuda_copy(d, host, n, LQ_COPY_H2D, NULL, err) != LQ_OK) {
        lq_cuda_free(d);
        return NULL;
    }
    return d;
}

/* Number of blocks a quant state describes for tensor t. */
static int64_t state_blocks(const lq_tensor *t) {
    int64_t n = lq_numel(t);
    return t->qs && t->qs->block > 0 ? (n + t->qs->block - 1) / t->qs->block : 0;
}

static lq_status state_to_device(lq_tensor *t, lq_err *err) {
    lq_qstate *q = t->qs;
    if (!q || q->device) return LQ_OK;
    int64_t nb = state_blocks(t);
    lq_qstate *d = calloc(1, sizeof *d);
    if (!d) return LQ_ERR(err, LQ_ERR_OOM, "out of memory for the device quant state of '%s'", t->name);
    *d = *q;
    d->absmax = d->zero = d->absmax2 = NULL;
    d->absmax_q = NULL;
    d->code2 = NULL;
    d->device = true;
    bool ok = true;
    if (q->absmax) ok &= (d->absmax = dev_copy(q->absmax, (size_t)nb * sizeof(float), err)) != NULL;
    if (q->zero) ok &= (d->zero = dev_copy(q->zero, (size_t)nb * sizeof(float), err)) != NULL;
    if (q->absmax_q) {
        int64_t nb2 = q->block2 > 0 ? (nb + q->block2 - 1) / q->block2 : 0;
        ok &= (d->absmax_q = dev_copy(q->absmax_q, (size_t)nb, err)) != NULL;
        ok &= (d->absmax2 = dev_copy(q->absmax2, (size_t)nb2 * sizeof(float), err)) != NULL;
        ok &= (d->code2 = dev_copy(q->code2, 256 * sizeof(float), err)) != NULL;
    }
    if (!ok) {
        lq_qstate_free(d);
        return err->status ? err->status : LQ_ERR_OOM;
    }
    /* a tensor that owns its data owns its state too (a model's NF4 weights made at load): the
     * host copy goes; otherwise it belongs to whoever made it and is kept */
    if (t->flags & LQ_TENSOR_OWNS_DATA) lq_qstate_free(q);
    t->qs = d;
    return LQ_OK;
}

lq_status lq_tensor_to_device(lq_tensor *t, lq_err *err) {
    LQ_CHECK(err, t != NULL, LQ_ERR_ARG, "NULL tensor");
    if (t->device == LQ_DEVICE_CUDA) return LQ_OK;
    LQ_CHECK(err, lq_is_contiguous(t), LQ_ERR_ARG, "tensor '%s' must be contiguous to move to the device", t->name);
    size_t bytes = lq_nbytes(t);
    void *d = dev_copy(t->data, bytes, err);
    if (!d) return err->status ? err->status : LQ_ERR_OOM;
    lq_status s = state_to_device(t, err);
    if (s != LQ_OK) {
        lq_cuda_free(d);
        return s;
    }
    if (t->flags & LQ_TENSOR_OWNS_DATA) free(t->data);
    t->data = d;
    t->device = LQ_DEVICE_CUDA;
    t->flags |= LQ_TENSOR_OWNS_DATA;
    return LQ_OK;
}
