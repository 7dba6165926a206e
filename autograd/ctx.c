/* autograd/ctx.c: the context: error state, modes, seed and the arenas. */
#include <stdlib.h>
#include <string.h>

#include "autograd/autograd_impl.h"
#include "autograd/cuda_impl.h"

lq_status lq_ctx_init(lq_ctx **out, const lq_ctx_opts *opts, lq_err *err) {
    LQ_CHECK(err, out != NULL, LQ_ERR_ARG, "lq_ctx_init needs somewhere to put the context");
    *out = NULL;
    lq_ctx_opts o = {0};
    if (opts) o = *opts;
    LQ_CHECK(err, o.n_threads >= 0 && o.n_threads <= 4096, LQ_ERR_ARG, "n_threads = %d is out of range", o.n_threads);
    lq_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return LQ_ERR(err, LQ_ERR_OOM, "out of memory allocating the context");
    ctx->n_threads = o.n_threads > 0 ? o.n_threads : 1;
    ctx->grad_enabled = true;
    ctx->seed = o.seed;
    if (lq_arena_init(&ctx->main, o.arena_bytes) != LQ_OK || lq_arena_init(&ctx->scratch, 0) != LQ_OK) {
        lq_arena_free(&ctx->main);
        lq_arena_free(&ctx->scratch);
        free(ctx);
        return LQ_ERR(err, LQ_ERR_OOM, "out of memory allocating a %zu-byte activation arena", o.arena_bytes);
    }
    ctx->arena = &ctx->main;
    ctx->darena = NULL; /* a CUDA context points it at dmain below; nothing else reads it */
    ctx->device = o.device;
    ctx->cuda_math = o.cuda_math;
    ctx->poison = o.poison;
    if (o.profile) {
        ctx->prof_ms = calloc(2 * (size_t)lq_op_table_len, sizeof *ctx->prof_ms);
        ctx->prof_calls = calloc(2 * (size_t)lq_op_table_len, sizeof *ctx->prof_calls);
        if (!ctx->prof_ms || !ctx->prof_calls) {
            lq_ctx_free(ctx);
            return LQ_ERR(err, LQ_ERR_OOM, "out of memory for the op profile");
        }
    }
    if (o.device == LQ_DEVICE_CUDA) {
        lq_status s = lq_arena_init_device(&ctx->dmain, o.arena_bytes, err);
        if (s == LQ_OK) s = lq_arena_init_device(&ctx->dscratch, (size_t)16 << 20, err);
        if (s == LQ_OK) s = lq_cuda_ctx_init(ctx, err);
        if (s != LQ_OK) {
            lq_ctx_free(ctx);
            return s;
        }
        ctx->darena = &ctx->dmain;
    } else if (o.device != LQ_DEVICE_CPU) {
        lq_ctx_free(ctx);
        return LQ_ERR(err, LQ_ERR_ARG, "unknown device %d", (int)o.device);
    }
    *out = ctx;
    return LQ_OK;
}

lq_device_kind lq_ctx_device(const lq_ctx *ctx) { return ctx->device; }

void lq_ctx_free(lq_ctx *ctx) {
    if (!ctx) return;
    if (ctx->cuda) lq_cuda_ctx_free(ctx);
    if (ctx->device == LQ_DEVICE_CUDA) {
        lq_arena_free(&ctx->dmain);
        lq_arena_free(&ctx->dscratch);
    }
    lq_arena_free(&ctx->main);
    lq_arena_free(&ctx->scratch);
    lq_pool_free(&ctx->pool);
    free(ctx->prof_ms);
    free(ctx->prof_calls);
    free(ctx);
}

lq_status lq_ctx_status(const lq_ctx *ctx) { return ctx->err.status; }
const lq_err *lq_ctx_error(const lq_ctx *ctx) { return &ctx->err; }
void lq_ctx_clear_error(lq_ctx *ctx) { lq_err_clear(&ctx->err); }
int lq_ctx_threads(const lq_ctx *ctx) { return ctx->n_threads; }

bool lq_ctx_set_grad(lq_ctx *ctx, bool enabled) {
    bool prev = ctx->grad_enabled;
    ctx->grad_enabled = enabled;
    return prev;
}
bool lq_ctx_grad_enabled(const lq_ctx *ctx) { return ctx->grad_enabled; }

bool lq_ctx_set_training(lq_ctx *ctx, bool training) {
    bool prev = ctx->training;
    ctx->training = training;
    return prev;
}

void lq_ctx_set_seed(lq_ctx *ctx, uint64_t seed) {
    ctx->seed = seed;
    ctx->rng_stream = 0;
}

bool lq_ctx_set_release_grads(lq_ctx *ctx, bool on) {
    bool prev = ctx->release_grads;
    ctx->release_grads = on;
    return prev;
}

void lq_ctx_step_reset(lq_ctx *ctx) {
    ctx->tensor_gen++;
    ctx->tape = NULL;
    lq_pool_step_end(&ctx->pool);
    ctx->arena = &ctx->main;
    lq_arena_reset(&ctx->main);
    lq_arena_reset(&ctx->scratch);
    if (ctx->device == LQ_DEVICE_CUDA) {
        (void)lq_cuda_step_reset(ctx);
        ctx->darena = &ctx->dmain;
        lq_arena_reset(&ctx->dmain);
        lq_arena_reset(&ctx->dscratch);
    }
}

lq_ctx_mark lq_ctx_get_mark(const lq_ctx *ctx) {
    lq_ctx_mark m = {ctx->arena->cur, ctx->arena->cur ? ctx->arena->cur->used : 0, ctx->tape, NULL, 0};
    if (ctx->device == LQ_DEVICE_CUDA) {
        m.dchunk = ctx->darena->cur;
        m.dused = ctx->darena->cur ? ctx->darena->cur->used : 0;
    }
    return m;
}

void lq_ctx_reset_to(lq_ctx *ctx, lq_ctx_mark mark) {
    /* tensors live in the host arena and on the tape: a rewind of either may drop some (an op's
     * own scratch reset moves only the device arena and keeps the generation) */
    if (mark.tape != ctx->tape || mark.chunk != (void *)ctx->arena->cur ||
        (ctx->arena->cur && mark.used != ctx->arena->cur->used))
        ctx->tensor_gen++;
    lq_arena_reset_to(ctx->arena, mark.chunk, mark.used);
    if (ctx->device == LQ_DEVICE_CUDA) lq_arena_reset_to(ctx->darena, mark.dchunk, mark.dused);
    ctx->tape = mark.tape;
}

lq_arena_stats lq_ctx_arena_stats(const lq_ctx *ctx) {
    lq_arena_stats s = {
        .used = lq_arena_used(&ctx->main) + lq_arena_used(&ctx->scratch),
        .high_water = ctx->main.high_water + ctx->scratch.high_water,
        .capacity = lq_arena_capacity(&ctx->main) + lq_arena_capacity(&ctx->scratch),
        .sys_allocs = ctx->main.sys_allocs + ctx->scratch.sys_allocs,
        .pool_in_use = ctx->pool.in_use,
        .pool_high_water = ctx->pool.high_water,
        .pool_capacity = ctx->pool.capacity,
        .pool_sys_allocs = ctx->pool.sys_allocs,
    };
    if (ctx->device == LQ_DEVICE_CUDA) {
        s.device_used = lq_arena_used(&ctx->dmain) + lq_arena_used(&ctx->dscratch);
        s.device_high_water = ctx->dmain.high_water + ctx->dscratch.high_water;
        s.device_capacity = lq_arena_capacity(&ctx->dmain) + lq_arena_capacity(&ctx->dscratch);
    }
    return s;
}

void *lq_ctx_dalloc(lq_ctx *ctx, size_t bytes) {
    if (ctx->device != LQ_DEVICE_CUDA) return lq_ctx_alloc(ctx, bytes);
    void *p = lq_arena_alloc(ctx->darena, bytes);
    if (!p)
        LQ_ERR(&ctx->err, LQ_ERR_OOM, "out of device memory: the device activation arena could not grow by %zu bytes",
               bytes);
    return p;
}

void *lq_ctx_alloc(lq_ctx *ctx, size_t bytes) {
    void *p = lq_arena_alloc(ctx->arena, bytes);
    if (!p) LQ_ERR(&ctx->err, LQ_ERR_OOM, "out of memory: the activation arena could not grow by %zu bytes", bytes);
    return p;
}
