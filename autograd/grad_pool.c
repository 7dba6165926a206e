/* autograd/grad_pool.c: reusable blocks for the gradients of intermediate tensors, handed back as
 * soon as the node that produced the tensor has run its backward (lq_ctx_set_release_grads). */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/cuda_impl.h"
#include "core/cuda.h"

/* A block: this header (its own 64-byte-aligned slot) then the gradient's data. The grad tensor
 * header lives in the block, not in the arena, so that it survives lq_ctx_reset_to and needs no
 * arena memory. */
struct lq_pool_block {
    lq_pool_block *next; /* free list of its class, or the handed-out list */
    lq_pool_block *prev; /* handed-out list only */
    int cls;             /* index into pool->cls */
    void *ddata;         /* a CUDA context's block: the data on the device (the header stays here) */
    lq_tensor t;
};

#define HDR (((sizeof(lq_pool_block) + LQ_ALIGN - 1) / LQ_ALIGN) * LQ_ALIGN)

static size_t align_up(size_t n) { return (n + (LQ_ALIGN - 1)) & ~(size_t)(LQ_ALIGN - 1); }

/* Frees a block and, for a device pool, its device data. */
static void block_free(lq_pool_block *b) {
    if (b->ddata) lq_cuda_free(b->ddata);
    free(b);
}

static lq_pool_block *block_of(lq_tensor *t) {
    return (lq_pool_block *)((char *)t - offsetof(lq_pool_block, t));
}

/* The class of exact size bytes (already aligned), made on first use; -1 when out of memory. */
static int class_of(lq_grad_pool *p, size_t bytes) {
    for (int i = 0; i < p->n_cls; i++)
        if (p->cls[i].bytes == bytes) return i;
    if (p->n_cls == p->cap_cls) {
        int cap = p->cap_cls ? 2 * p->cap_cls : 16;
        lq_pool_class *c = realloc(p->cls, (size_t)cap * sizeof *c);
        if (!c) return -1;
        p->cls = c;
        p->cap_cls = cap;
    }
    lq_pool_class *c = &p->cls[p->n_cls];
    memset(c, 0, sizeof *c);
    c->bytes = bytes;
    return p->n_cls++;
}

lq_tensor *lq_pool_grad(lq_ctx *ctx, const lq_tensor *like) { return lq_pool_grad_ex(ctx, like, true); }

lq_tensor *lq_pool_grad_ex(lq_ctx *ctx, const lq_tensor *like, bool zero) {
    lq_grad_pool *p = &ctx->pool;
    lq_tensor tmp;
    if (lq_tensor_init(&tmp, LQ_DTYPE_F32, like->ndim, like->ne, NULL, &ctx->err) != LQ_OK) return NULL;
    size_t bytes = align_up(lq_nbytes(&tmp) ? lq_nbytes(&tmp) : 1);
    int ci = class_of(p, bytes);
    if (ci < 0) {
        LQ_ERR(&ctx->err, LQ_ERR_OOM, "out of memory: gradient pool size classes");
        return NULL;
    }
    lq_pool_class *c = &p->cls[ci];
    lq_pool_block *b = c->free;
    if (b) {
        c->free = b->next;
        c->n_free--;
    } else {
        bool dev = ctx->device == LQ_DEVICE_CUDA;
        b = aligned_alloc(LQ_ALIGN, dev ? HDR : HDR + bytes);
        if (!b) {
            LQ_ERR(&ctx->err, LQ_ERR_OOM, "out of memory: a %zu-byte gradient block", bytes);
            return NULL;
        }
        b->ddata = NULL;
        if (dev && !(b->ddata = lq_cuda_malloc(bytes, &ctx->err))) {
            free(b);
            return NULL;
        }
        b->cls = ci;
        p->capacity += HDR + bytes;
        p->sys_allocs++;
    }
    b->t = tmp;
    b->t.flags = LQ_TENSOR_POOLED_GRAD;
    /* zeroed as lq_zeros (a gradient starts at zero), or left as it is for a caller that writes
     * every element (NaN bytes in poison mode, so that an unwritten one shows) */
    int fill = zero ? 0 : ctx->poison ? 0xff : -1;
    if (b->ddata) { /* stream-ordered: a block reused here was last read by kernels queued earlier */
        b->t.data = b->ddata;
        b->t.device = LQ_DEVICE_CUDA;
        if (fill >= 0 && lq_cuda_memset(b->t.data, fill, lq_nbytes(&tmp), lq_cuda_stream(ctx), &ctx->err) != LQ_OK) {
            b->next = c->free; /* back to the free list: the context has failed anyway */
            c->free = b;
            c->n_free++;
            return NULL;
        }
    } else {
        b->t.data = (char *)b + HDR;
        if (fill >= 0) memset(b->t.data, fill, lq_nbytes(&tmp));
    }
    b->prev = NULL;
    b->next = p->out;
    if (p->out) p->out->prev = b;
    p->out = b;
    if (++c->n_out > c->step_peak) c->step_peak = c->n_out;
    p->in_use += HDR + bytes;
    if (p->in_use > p->high_water) p->high_water = p->in_use;
    p->used_this_step = true;
    return &b->t;
}

void lq_pool_reshape(lq_tensor *grad, const lq_tensor *like) {
    lq_tensor t = *grad;
    lq_err err = {0};
    /* like has grad's element count: the same bytes, so init cannot fail on size */
    if (lq_tensor_init(&t, LQ_DTYPE_F32, like->ndim, like->ne, grad->data, &err) != LQ_OK) return;
    t.flags = grad->flags;
    t.device = grad->device;
    *grad = t;
}

void lq_pool_release(lq_grad_pool *p, lq_tensor *grad) {
    lq_pool_block *b = block_of(grad);
    lq_pool_class *c = &p->cls[b->cls];
    if (b->prev) b->prev->next = b->next;
    else p->out = b->next;
    if (b->next) b->next->prev = b->prev;
    b->t.flags = 0; /* a stale pointer to it is no longer taken for a pool gradient */
    b->prev = NULL;
    b->next = c->free;
    c->free = b;
    c->n_free++;
    c->n_out--;
    p->in_use -= HDR + c->bytes;
}

/* Takes back every block still handed out (nodes never walked, a failed backward), then, after a
 * step that used the pool, frees the blocks beyond what each class needed at once in that step, so
 * the pool follows a change of shapes instead of keeping every size it has ever seen. */
void lq_pool_step_end(lq_grad_pool *p) {
    while (p->out) lq_pool_release(p, &p->out->t);
    if (!p->used_this_step) return;
    for (int i = 0; i < p->n_cls; i++) {
        lq_pool_class *c = &p->cls[i];
        while (c->n_free > c->step_peak) {
            lq_pool_block *b = c->free;
            c->free = b->next;
            c->n_free--;
            p->capacity -= HDR + c->bytes;
            block_free(b);
        }
        c->step_peak = 0;
    }
    p->used_this_step = false;
}

void lq_pool_free(lq_grad_pool *p) {
    while (p->out) lq_pool_release(p, &p->out->t);
    for (int i = 0; i < p->n_cls; i++) {
        lq_pool_block *b = p->cls[i].free;
        while (b) {
            lq_pool_block *next = b->next;
            block_free(b);
            b = next;
        }
    }
    free(p->cls);
    memset(p, 0, sizeof *p);
}
