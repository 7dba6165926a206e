/* autograd/checkpoint.c: gradient checkpointing: keep a segment's output, drop its activations,
 * re-run it during backward. */
#include <stdio.h>
#include <string.h>

#include "autograd/cuda_impl.h"
#include "autograd/autograd_impl.h"

typedef struct segment {
    lq_segment_fn fn;
    void *user;
    uint64_t stream; /* the random stream the segment started at, replayed on re-run */
    lq_tensor *result; /* the segment's output in scratch, valid only during lq_checkpoint */
} segment;

/* Forward: copy the segment's result (computed in scratch) into the node's output. */
static lq_status ckpt_forward(lq_ctx *ctx, lq_node *n) {
    segment *sg = n->saved[0];
    int64_t ne4[4];
    size_t dnb[4], snb[4];
    lq_pad4(n->out, ne4, dnb);
    lq_pad4(sg->result, ne4, snb);
    return lq_strided_to(ctx, n->out->data, dnb, sg->result->data, snb, ne4, false);
}

/* Backward: y = f(x1..xn; params). Re-run f with the tape on, in scratch, on leaf aliases of the
 * inputs; seed the re-run output's grad with dL/dy; walk the sub-tape. Parameters accumulate
 * straight into their own grads; the aliases' grads are added into the real inputs' grads. */
static lq_status ckpt_backward(lq_ctx *ctx, lq_node *n) {
    segment *sg = n->saved[0];
    /* the inputs' grads live in the outer arena: make them before switching to scratch */
    for (int i = 0; i < n->n_in; i++) {
        float *g;
        LQ_TRY(lq_grad_get(ctx, n->in[i], &g));
    }

    lq_arena *prev_arena = ctx->arena, *prev_darena = ctx->darena;
    lq_node *prev_tape = ctx->tape;
    uint64_t prev_stream = ctx->rng_stream;
    bool prev_grad = ctx->grad_enabled;
    lq_arena_chunk *mark_chunk = ctx->scratch.cur;
    size_t mark_used = mark_chunk ? mark_chunk->used : 0;
    bool dev = ctx->device == LQ_DEVICE_CUDA;
    lq_arena_chunk *dmark_chunk = dev ? ctx->dscratch.cur : NULL;
    size_t dmark_used = dmark_chunk ? dmark_chunk->used : 0;

    ctx->arena = &ctx->scratch;
    if (dev) ctx->darena = &ctx->dscratch;
    ctx->tape = NULL;
    ctx->grad_enabled = true;
    ctx->rng_stream = sg->stream;

    lq_status s = LQ_OK;
    lq_tensor *alias[LQ_MAX_INPUTS];
    for (int i = 0; i < n->n_in && s == LQ_OK; i++) {
        alias[i] = lq_ctx_alloc(ctx, sizeof(lq_tensor));
        if (!alias[i]) {
            s = LQ_ERR_OOM;
            break;
        }
        *alias[i] = *n->in[i];
        alias[i]->node = NULL;
        alias[i]->grad = NULL;
        alias[i]->flags &= ~(uint32_t)LQ_TENSOR_PARAM;
    }
    lq_tensor *r = s == LQ_OK ? sg->fn(ctx, alias, n->n_in, sg->user) : NULL;
    if (!r) {
        s = ctx->err.status ? ctx->err.status : LQ_ERR_INTERNAL;
    } else if (!lq_same_shape(r, n->out)) {
        s = LQ_ERR(&ctx->err, LQ_ERR_STATE, "checkpoint: segment re-run gave a different shape");
    } else if (lq_requires_grad(r)) {
        float *gr;
        s = lq_grad_get(ctx, r, &gr);
        if (s == LQ_OK) {
            if (dev) /* gr is freshly zeroed: adding is copying */
                s = lq_cuda_accumulate(ctx, gr, n->out->grad->data, lq_numel(r));
            else
                memcpy(gr, n->out->grad->data, (size_t)lq_numel(r) * sizeof(float));
        }
        if (s == LQ_OK) {
            s = lq_tape_walk(ctx, NULL);
        }
    }
    for (int i = 0; i < n->n_in && s == LQ_OK; i++)
        if (alias[i]->grad) s = lq_grad_add(ctx, n->in[i], alias[i]->grad->data);

    ctx->arena = prev_arena;
    ctx->darena = prev_darena;
    ctx->tape = prev_tape;
    ctx->rng_stream = prev_stream;
    ctx->grad_enabled = prev_grad;
    lq_arena_reset_to(&ctx->scratch, mark_chunk, mark_used);
    ctx->tensor_gen++; /* the re-run's tensors are gone (the forward's, made without grad, are never kept) */
    if (dev) lq_arena_reset_to(&ctx->dscratch, dmark_chunk, dmark_used);
    return s;
}

static lq_tensor *gc_segment(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    (void)user;
    /* silu(x W) * x W: a small two-op segment with a reused intermediate */
    lq_tensor *h = lq_matmul(ctx, in[0], in[1]);
    return lq_mul(ctx, lq_silu(ctx, h), h);
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)user;
    return lq_checkpoint(ctx, gc_segment, NULL, n_in, in);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t m = lq_rng_int(rng, 1, 4), k = lq_rng_int(rng, 1, 5), nn = lq_rng_int(rng, 1, 4);
    c->n_in = 2;
    c->in[0] = lq_gc_input(ctx, rng, 2, (int64_t[]){m, k}, -1, 1);
    c->in[1] = lq_gc_input(ctx, rng, 2, (int64_t[]){k, nn}, -1, 1);
    c->call = gc_call;
    snprintf(c->desc, sizeof c->desc, "silu(xW)*xW, x (%lld, %lld), W (%lld, %lld)", (long long)m, (long long)k,
             (long long)k, (long long)nn);
    return ctx->err.status;
}

const lq_op_def lq_op_checkpoint = {"checkpoint", ckpt_forward, ckpt_backward, gc_make};

lq_tensor *lq_checkpoint(lq_ctx *ctx, lq_segment_fn fn, void *user, int n_in, lq_tensor *const *inputs) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!fn) return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "checkpoint: segment function is NULL");
    if (!ctx->grad_enabled) return fn(ctx, inputs, n_in, user); /* nothing to save: just run it */
    lq_node *n = lq_node_begin(ctx, &lq_op_checkpoint, n_in, inputs);
    if (!n) return NULL;
    n->recorded = true; /* parameters read inside the segment need their grads */
    segment *sg = lq_ctx_alloc(ctx, sizeof *sg);
    if (!sg) return NULL;
    sg->fn = fn;
    sg->user = user;
    sg->stream = ctx->rng_stream;
    n->saved[0] = sg;

    lq_arena *prev_arena = ctx->arena, *prev_darena = ctx->darena;
    lq_arena_chunk *mark_chunk = ctx->scratch.cur;
    size_t mark_used = mark_chunk ? mark_chunk->used : 0;
    bool dev = ctx->device == LQ_DEVICE_CUDA;
    lq_arena_chunk *dmark_chunk = dev ? ctx->dscratch.cur : NULL;
    size_t dmark_used = dmark_chunk ? dmark_chunk->used : 0;
    ctx->arena = &ctx->scratch;
    if (dev) ctx->darena = &ctx->dscratch;
    ctx->grad_enabled = false;
    sg->result = fn(ctx, inputs, n_in, user);
    ctx->grad_enabled = true;
    ctx->arena = prev_arena;
    ctx->darena = prev_darena;

    lq_tensor *out = NULL;
    if (sg->result && lq_check_f32(ctx, "checkpoint", "segment output", sg->result) &&
        lq_node_output(ctx, n, sg->result->ndim, sg->result->ne))
        out = lq_node_finish(ctx, n);
    sg->result = NULL;
    lq_arena_reset_to(&ctx->scratch, mark_chunk, mark_used);
    if (dev) lq_arena_reset_to(&ctx->dscratch, dmark_chunk, dmark_used);
    return out;
}
