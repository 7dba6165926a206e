/* autograd/ops/op_embedding.c: row lookup in an embedding table, table (V, C) and ids S -> (S..., C). */
#include <stdio.h>
#include <string.h>

#include "autograd/autograd_impl.h"

#define COL_CHUNK 64 /* columns per backward work item */

/* y[t, :] = table[ids[t], :] for every flat token t. Ids were range-checked at the entry. */
static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    const lq_tensor *table = n->in[0];
    const int32_t *ids = n->in[1]->data;
    const float *w = table->data;
    float *y = n->out->data;
    int64_t N = lq_numel(n->in[1]), C = table->ne[1];
#pragma omp parallel for num_threads(ctx->n_threads) if (N * C > 65536)
    for (int64_t t = 0; t < N; t++) memcpy(y + t * C, w + (int64_t)ids[t] * C, (size_t)C * sizeof(float));
    return LQ_OK;
}

/* y[t, c] = W[ids[t], c], so dW[v, c] = sum over t with ids[t] == v of dy[t, c]: a scatter-add of
 * dy's rows into dW's rows. Ids repeat, so two tokens can hit the same row; to stay race-free and
 * independent of the thread count, work is split over column chunks (each dW element belongs to
 * one chunk) and every chunk walks the tokens in order. ids are integers: no gradient. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    float *gw;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gw));
    if (!gw) return LQ_OK;
    const int32_t *ids = n->in[1]->data;
    const float *gy = n->out->grad->data;
    int64_t N = lq_numel(n->in[1]), C = n->in[0]->ne[1];
    int64_t n_chunks = (C + COL_CHUNK - 1) / COL_CHUNK;
#pragma omp parallel for num_threads(ctx->n_threads) if (n_chunks > 1 && N * C > 65536)
    for (int64_t ch = 0; ch < n_chunks; ch++) {
        int64_t c0 = ch * COL_CHUNK, c1 = c0 + COL_CHUNK < C ? c0 + COL_CHUNK : C;
        for (int64_t t = 0; t < N; t++) {
            float *dst = gw + (int64_t)ids[t] * C;
            const float *src = gy + t * C;
            for (int64_t c = c0; c < c1; c++) dst[c] += src[c];
        }
    }
    return LQ_OK;
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    (void)user;
    return lq_embedding(ctx, in[0], in[1]);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    /* a small vocabulary and more tokens than rows, so ids repeat and the scatter-add matters */
    int64_t V = lq_rng_int(rng, 2, 5), C = lq_rng_int(rng, 1, 4);
    int nd = (int)lq_rng_int(rng, 1, 2);
    int64_t s[2] = {lq_rng_int(rng, 2, 4), lq_rng_int(rng, 1, 4)};
    c->n_in = 2;
    c->in[0] = lq_gc_input(ctx, rng, 2, (int64_t[]){V, C}, -1, 1);
    c->in[1] = lq_gc_ids(ctx, rng, nd, s, 0, (int32_t)V - 1);
    c->call = gc_call;
    if (nd == 1)
        snprintf(c->desc, sizeof c->desc, "table (%lld, %lld), ids (%lld,)", (long long)V, (long long)C,
                 (long long)s[0]);
    else
        snprintf(c->desc, sizeof c->desc, "table (%lld, %lld), ids (%lld, %lld)", (long long)V, (long long)C,
                 (long long)s[0], (long long)s[1]);
    return ctx->err.status;
}

const lq_op_def lq_op_embedding = {"embedding", fwd, bwd, gc_make};

/* ids as a contiguous i32 tensor: itself, or a copy (ids carry no gradient, so no node). */
static lq_tensor *contiguous_ids(lq_ctx *ctx, lq_tensor *ids) {
    if (lq_is_contiguous(ids)) return ids;
    lq_tensor *c = lq_new(ctx, LQ_DTYPE_I32, ids->ndim, ids->ne);
    if (!c) return NULL;
    int64_t ne4[4];
    size_t nb4[4];
    lq_pad4(ids, ne4, nb4);
    int32_t *d = c->data;
    int64_t k = 0;
    for (int64_t a = 0; a < ne4[0]; a++)
        for (int64_t b = 0; b < ne4[1]; b++)
            for (int64_t e = 0; e < ne4[2]; e++)
                for (int64_t f = 0; f < ne4[3]; f++)
                    d[k++] = *(const int32_t *)((const char *)ids->data + a * nb4[0] + b * nb4[1] + e * nb4[2] +
                                                f * nb4[3]);
    return c;
}

lq_tensor *lq_embedding(lq_ctx *ctx, lq_tensor *table, lq_tensor *ids) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!lq_check_f32(ctx, "embedding", "table", table)) return NULL;
    if (!ids) return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "embedding: ids is NULL");
    LQ_OP_CHECK(ctx, ids->dtype == LQ_DTYPE_I32, LQ_ERR_ARG, "embedding: ids must be i32, got %s",
                lq_dtype_name(ids->dtype));
    LQ_OP_CHECK(ctx, ids->device == LQ_DEVICE_CPU, LQ_ERR_UNSUPPORTED, "embedding: ids must be on the CPU");
    if (table->ndim != 2) return lq_shape_error(ctx, "embedding", table, ids, "do not fit: table must be (V, C)");
    if (ids->ndim + 1 > LQ_MAX_DIMS)
        return lq_shape_error(ctx, "embedding", table, ids, "do not fit: ids may have at most 3 dims");
    int64_t V = table->ne[0], C = table->ne[1];
    ids = contiguous_ids(ctx, ids);
    if (!ids) return NULL;
    const int32_t *id = ids->data;
    int64_t N = lq_numel(ids);
    for (int64_t t = 0; t < N; t++)
        if (id[t] < 0 || id[t] >= V)
            return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "embedding: id %d at flat position %lld is outside [0, %lld) (V = %lld)",
                              (int)id[t], (long long)t, (long long)V, (long long)V);
    table = lq_contiguous(ctx, table);
    lq_tensor *in[2] = {table, ids};
    lq_node *n = lq_node_begin(ctx, &lq_op_embedding, 2, in);
    if (!n) return NULL;
    int64_t ne[LQ_MAX_DIMS];
    for (int d = 0; d < ids->ndim; d++) ne[d] = ids->ne[d];
    ne[ids->ndim] = C;
    if (!lq_node_output(ctx, n, ids->ndim + 1, ne)) return NULL;
    return lq_node_finish(ctx, n);
}
