/* autograd/ops/op_cross_entropy.c: softmax cross-entropy of logits against integer targets, with
 * an ignore index and mean or sum reduction, giving a scalar loss. */
#include <math.h>
#include <stdio.h>

#include "autograd/autograd_impl.h"

/* log(sum_k exp(x_k)) of one row of V logits, max-subtracted; the sum in double. */
static double row_logsumexp(const float *x, int64_t V) {
    float m = -INFINITY;
    /* the comparison, not fmaxf: the same maximum (NaNs skipped either way; a +-0 tie cannot
     * change x - m), inlined to maxss instead of a libm call per logit */
    for (int64_t k = 0; k < V; k++) m = x[k] > m ? x[k] : m;
    double s = 0.0;
    for (int64_t k = 0; k < V; k++) s += expf(x[k] - m);
    return (double)m + log(s);
}

/* logits (N, V) as rows (the leading dims flattened), targets (N) i32. ip[0] = ignore_index,
 * ip[1] = reduction, ip[2] = number of counted rows. saved[0] = logsumexp per row (N) when
 * recorded. Per-row losses go to an arena buffer and are summed serially in double, so the loss
 * does not depend on the thread count. */
static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    const lq_tensor *lt = n->in[0];
    int64_t V = lt->ne[lt->ndim - 1];
    int64_t N = lq_numel(n->in[1]);
    const float *x = lt->data;
    const int32_t *t = n->in[1]->data;
    int32_t ignore = (int32_t)n->ip[0];
    size_t rows_alloc = (size_t)(N > 0 ? N : 1);
    double *loss = lq_ctx_alloc(ctx, rows_alloc * sizeof(double));
    if (!loss) return ctx->err.status;
    float *lse = NULL;
    if (n->recorded) {
        lse = lq_ctx_alloc(ctx, rows_alloc * sizeof(float));
        if (!lse) return ctx->err.status;
        n->saved[0] = lse;
    }
#pragma omp parallel for num_threads(ctx->n_threads) if (N > 1 && N * V > 16384)
    for (int64_t r = 0; r < N; r++) {
        if (t[r] == ignore) {
            loss[r] = 0.0;
            if (lse) lse[r] = 0.0f;
            continue;
        }
        const float *xr = x + r * V;
        double l = row_logsumexp(xr, V);
        loss[r] = l - (double)xr[t[r]];
        if (lse) lse[r] = (float)l;
    }
    double sum = 0.0;
    for (int64_t r = 0; r < N; r++) sum += loss[r];
    int64_t count = n->ip[2];
    float *y = n->out->data;
    if (n->ip[1] == LQ_REDUCE_SUM) y[0] = (float)sum;
    else y[0] = count > 0 ? (float)(sum / (double)count) : 0.0f;
    return LQ_OK;
}

/* Per counted row with target t: L_r = log sum_k e^{x_k} - x_t, so dL_r/dx_k = softmax_k - [k == t].
 * The loss is c * sum_r L_r with c = 1 / count (MEAN) or 1 (SUM); with upstream gradient g,
 * dx_k += g c (softmax_k - [k == t]). Ignored rows get nothing; with no counted rows the MEAN loss
 * is the constant 0 and every gradient is 0. softmax_k = exp(x_k - lse) from the saved lse. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    const lq_tensor *lt = n->in[0];
    int64_t V = lt->ne[lt->ndim - 1];
    int64_t N = lq_numel(n->in[1]);
    const float *x = lt->data;
    const int32_t *t = n->in[1]->data;
    int32_t ignore = (int32_t)n->ip[0];
    int64_t count = n->ip[2];
    if (count == 0) return LQ_OK;
    double g = ((const float *)n->out->grad->data)[0];
    float scale = (float)(n->ip[1] == LQ_REDUCE_SUM ? g : g / (double)count);
    const float *lse = n->saved[0];
#pragma omp parallel for num_threads(ctx->n_threads) if (N > 1 && N * V > 16384)
    for (int64_t r = 0; r < N; r++) {
        if (t[r] == ignore) continue;
        const float *xr = x + r * V;
        float *gr = gx + r * V;
        float l = lse ? lse[r] : (float)row_logsumexp(xr, V);
        for (int64_t k = 0; k < V; k++) gr[k] += scale * expf(xr[k] - l);
        gr[t[r]] -= scale;
    }
    return LQ_OK;
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    return lq_cross_entropy(ctx, in[0], in[1], (int)c->ip[0], (lq_reduction)c->ip[1]);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t B = lq_rng_int(rng, 1, 3), T = lq_rng_int(rng, 1, 4), V = lq_gc_row_len(rng, 2, 7);
    bool three = lq_rng_int(rng, 0, 1);
    c->ip[1] = lq_rng_int(rng, 0, 1) ? LQ_REDUCE_SUM : LQ_REDUCE_MEAN;
    /* the ignore index is either the usual -100 or a real class, which then never counts */
    c->ip[0] = lq_rng_int(rng, 0, 2) ? LQ_IGNORE_INDEX : V - 1;
    c->n_in = 2;
    if (three) {
        c->in[0] = lq_gc_input(ctx, rng, 3, (int64_t[]){B, T, V}, -3, 3);
        c->in[1] = lq_gc_ids(ctx, rng, 2, (int64_t[]){B, T}, 0, (int32_t)V - 1);
    } else {
        c->in[0] = lq_gc_input(ctx, rng, 2, (int64_t[]){B * T, V}, -3, 3);
        c->in[1] = lq_gc_ids(ctx, rng, 1, (int64_t[]){B * T}, 0, (int32_t)V - 1);
    }
    if (!c->in[1]) return ctx->err.status;
    /* mark about a quarter of the rows ignored, keeping the first row counted */
    int32_t *tg = c->in[1]->data;
    for (int64_t r = 0; r < B * T; r++) {
        if (r > 0 && lq_rng_int(rng, 0, 3) == 0) tg[r] = (int32_t)c->ip[0];
        else if (tg[r] == c->ip[0]) tg[r] = 0;
    }
    c->call = gc_call;
    if (three)
        snprintf(c->desc, sizeof c->desc, "logits (%lld, %lld, %lld) ignore %lld %s", (long long)B, (long long)T,
                 (long long)V, (long long)c->ip[0], c->ip[1] == LQ_REDUCE_SUM ? "sum" : "mean");
    else
        snprintf(c->desc, sizeof c->desc, "logits (%lld, %lld) ignore %lld %s", (long long)(B * T), (long long)V,
                 (long long)c->ip[0], c->ip[1] == LQ_REDUCE_SUM ? "sum" : "mean");
    return ctx->err.status;
}

const lq_op_def lq_op_cross_entropy = {"cross_entropy", fwd, bwd, gc_make};

lq_tensor *lq_cross_entropy(lq_ctx *ctx, lq_tensor *logits, lq_tensor *targets, int ignore_index,
                            lq_reduction reduction) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!lq_check_f32(ctx, "cross_entropy", "logits", logits)) return NULL;
    LQ_OP_CHECK(ctx, targets != NULL, LQ_ERR_ARG, "cross_entropy: targets is NULL");
    LQ_OP_CHECK(ctx, targets->dtype == LQ_DTYPE_I32, LQ_ERR_ARG, "cross_entropy: targets must be i32, got %s",
                lq_dtype_name(targets->dtype));
    LQ_OP_CHECK(ctx, targets->device == LQ_DEVICE_CPU, LQ_ERR_UNSUPPORTED,
                "cross_entropy: targets are on a device this op does not run on");
    LQ_OP_CHECK(ctx, reduction == LQ_REDUCE_MEAN || reduction == LQ_REDUCE_SUM, LQ_ERR_ARG,
                "cross_entropy: unknown reduction %d", (int)reduction);
    char sb[64];
    LQ_OP_CHECK(ctx, logits->ndim == 2 || logits->ndim == 3, LQ_ERR_SHAPE,
                "cross_entropy: logits must be (N, V) or (B, T, V), got %s", lq_shape_str(logits, sb, sizeof sb));
    bool match = targets->ndim == logits->ndim - 1;
    for (int d = 0; match && d < targets->ndim; d++) match = targets->ne[d] == logits->ne[d];
    if (!match)
        return lq_shape_error(ctx, "cross_entropy", logits, targets,
                              "do not match: logits (N, V) or (B, T, V) need targets (N) or (B, T)");
    LQ_OP_CHECK(ctx, lq_is_contiguous(targets), LQ_ERR_ARG, "cross_entropy: targets must be contiguous");
    int64_t V = logits->ne[logits->ndim - 1];
    int64_t N = lq_numel(targets);

    /* Every target is a class in [0, V) or the ignore index; report the first that is not. */
    const int32_t *t = targets->data;
    int64_t count = 0;
    for (int64_t r = 0; r < N; r++) {
        if (t[r] == ignore_index) continue;
        if (t[r] < 0 || t[r] >= V) {
            if (targets->ndim == 2)
                return LQ_OP_FAIL(ctx, LQ_ERR_ARG,
                                  "cross_entropy: target %d at position [%lld, %lld] is outside [0, %lld) and is not "
                                  "the ignore index %d",
                                  (int)t[r], (long long)(r / targets->ne[1]), (long long)(r % targets->ne[1]),
                                  (long long)V, ignore_index);
            return LQ_OP_FAIL(ctx, LQ_ERR_ARG,
                              "cross_entropy: target %d at position [%lld] is outside [0, %lld) and is not the "
                              "ignore index %d",
                              (int)t[r], (long long)r, (long long)V, ignore_index);
        }
        count++;
    }

    logits = lq_contiguous(ctx, logits);
    lq_tensor *in[2] = {logits, targets};
    lq_node *n = lq_node_begin(ctx, &lq_op_cross_entropy, 2, in);
    if (!n) return NULL;
    n->ip[0] = ignore_index;
    n->ip[1] = reduction;
    n->ip[2] = count;
    int64_t scalar_shape[1] = {1};
    if (!lq_node_output(ctx, n, 0, scalar_shape)) return NULL;
    return lq_node_finish(ctx, n);
}
