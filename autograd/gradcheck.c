/* autograd/gradcheck.c: backward checked against central finite differences. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/autograd_impl.h"

/* sum(out * R) in double, reading out through its strides. */
static double project(const lq_tensor *out, const float *R) {
    int64_t ne4[4];
    size_t nb4[4];
    lq_pad4(out, ne4, nb4);
    double acc = 0.0;
    int64_t k = 0;
    for (int64_t a = 0; a < ne4[0]; a++)
        for (int64_t b = 0; b < ne4[1]; b++)
            for (int64_t c = 0; c < ne4[2]; c++)
                for (int64_t d = 0; d < ne4[3]; d++)
                    acc += (double)R[k++] *
                           *(const float *)((const char *)out->data + a * nb4[0] + b * nb4[1] + c * nb4[2] + d * nb4[3]);
    return acc;
}

static lq_status eval(lq_ctx *ctx, lq_gc_fn fn, void *user, int n_in, lq_tensor *const *in, const float *R,
                      int64_t n_out, double *f) {
    lq_ctx_mark m = lq_ctx_get_mark(ctx);
    lq_tensor *out = fn(ctx, in, n_in, user);
    lq_status s = ctx->err.status;
    if (s == LQ_OK && (!out || lq_numel(out) != n_out))
        s = LQ_ERR(&ctx->err, LQ_ERR_STATE, "gradcheck: function output changed between evaluations");
    if (s == LQ_OK) *f = project(out, R);
    lq_ctx_reset_to(ctx, m);
    return s;
}

/* One forward + backward with grad_out = R; input grads accumulate (they are not zeroed). */
static lq_status analytic_pass(lq_ctx *ctx, lq_gc_fn fn, void *user, int n_in, lq_tensor *const *in,
                               const float *R, int64_t *n_out) {
    lq_tensor *out = fn(ctx, in, n_in, user);
    if (!out) return ctx->err.status ? ctx->err.status : LQ_ERR_INTERNAL;
    if (*n_out >= 0 && lq_numel(out) != *n_out)
        return LQ_ERR(&ctx->err, LQ_ERR_STATE, "gradcheck: function output changed between evaluations");
    *n_out = lq_numel(out);
    lq_tensor *g = lq_new(ctx, LQ_DTYPE_F32, out->ndim, out->ne);
    if (!g) return ctx->err.status;
    memcpy(g->data, R, (size_t)*n_out * sizeof(float));
    return lq_backward_from(ctx, out, g);
}

lq_status lq_gradcheck(lq_ctx *ctx, lq_gc_fn fn, void *user, int n_in, lq_tensor *const *in, const lq_gc_opts *opts,
                       lq_gc_result *res) {
    memset(res, 0, sizeof *res);
    res->worst_input = -1;
    if (ctx->err.status != LQ_OK) return ctx->err.status;
    float step = (opts && opts->step > 0) ? opts->step : 1e-2f;
    lq_gc_fn numeric_fn = (opts && opts->surrogate) ? opts->surrogate : fn;
    lq_rng rng;
    lq_rng_seed(&rng, opts ? opts->seed : 0);
    for (int i = 0; i < n_in; i++) {
        if (!lq_requires_grad(in[i])) continue;
        if (in[i]->dtype != LQ_DTYPE_F32 || !lq_is_contiguous(in[i]) || in[i]->node)
            return LQ_ERR(&ctx->err, LQ_ERR_ARG, "gradcheck: input %d must be a contiguous f32 leaf", i);
        in[i]->grad = NULL;
    }
    bool prev_grad = lq_ctx_set_grad(ctx, true);
    lq_ctx_mark m0 = lq_ctx_get_mark(ctx);

    /* R is sized from a first no-grad run of fn. */
    float *R = NULL, *ana = NULL;
    int64_t n_out = -1, total = 0;
    lq_status s = LQ_OK;
    {
        lq_ctx_set_grad(ctx, false);
        lq_tensor *out = fn(ctx, in, n_in, user);
        lq_ctx_set_grad(ctx, true);
        if (!out) s = ctx->err.status ? ctx->err.status : LQ_ERR_INTERNAL;
        else n_out = lq_numel(out);
        lq_ctx_reset_to(ctx, m0);
    }
    for (int i = 0; i < n_in; i++)
        if (lq_requires_grad(in[i])) total += lq_numel(in[i]);
    if (s == LQ_OK) {
        R = malloc((size_t)(n_out > 0 ? n_out : 1) * sizeof *R);
        ana = malloc((size_t)(total > 0 ? total : 1) * sizeof *ana);
        if (!R || !ana) s = LQ_ERR(&ctx->err, LQ_ERR_OOM, "gradcheck: out of memory");
    }
    if (s == LQ_OK) {
        for (int64_t k = 0; k < n_out; k++) R[k] = lq_rng_normal(&rng);
        int64_t n_seen = n_out;
        s = analytic_pass(ctx, fn, user, n_in, in, R, &n_seen);
        int64_t off = 0;
        for (int i = 0; i < n_in && s == LQ_OK; i++) {
            if (!lq_requires_grad(in[i])) continue;
            int64_t m = lq_numel(in[i]);
            for (int64_t j = 0; j < m; j++) ana[off + j] = in[i]->grad ? ((float *)in[i]->grad->data)[j] : 0.0f;
            off += m;
        }
        /* A second pass must double every grad: catches a backward that overwrites (=) where it
         * must accumulate (+=). */
        if (s == LQ_OK) s = analytic_pass(ctx, fn, user, n_in, in, R, &n_seen);
        off = 0;
        for (int i = 0; i < n_in && s == LQ_OK; i++) {
            if (!lq_requires_grad(in[i])) continue;
            int64_t m = lq_numel(in[i]);
            double scale = 1e-2, worst = 0;
            for (int64_t j = 0; j < m; j++) scale = fmax(scale, fabs(ana[off + j]));
            for (int64_t j = 0; j < m; j++) {
                double g2 = in[i]->grad ? ((float *)in[i]->grad->data)[j] : 0.0;
                worst = fmax(worst, fabs(g2 - 2.0 * ana[off + j]));
            }
            if (worst / scale > 1e-4)
                s = LQ_ERR(&ctx->err, LQ_ERR_INTERNAL,
                           "gradcheck: input %d's gradient does not accumulate across two backward passes "
                           "(relative difference %.3g): a backward overwrites instead of adding",
                           i, worst / scale);
            in[i]->grad = NULL;
            off += m;
        }
    }
    lq_ctx_reset_to(ctx, m0);
    lq_ctx_set_grad(ctx, false);

    /* Numeric: central differences, one element at a time. */
    int64_t off = 0;
    for (int i = 0; i < n_in && s == LQ_OK; i++) {
        if (!lq_requires_grad(in[i])) continue;
        float *x = in[i]->data;
        int64_t m = lq_numel(in[i]);
        double scale = 1e-2, worst = 0, wa = 0, wn = 0;
        int64_t wj = 0;
        double *num = malloc((size_t)(m > 0 ? m : 1) * sizeof *num);
        if (!num) {
            s = LQ_ERR(&ctx->err, LQ_ERR_OOM, "gradcheck: out of memory");
            break;
        }
        for (int64_t j = 0; j < m && s == LQ_OK; j++) {
            float orig = x[j];
            float hi = orig + step, lo = orig - step;
            double fp = 0, fm = 0;
            x[j] = hi;
            s = eval(ctx, numeric_fn, user, n_in, in, R, n_out, &fp);
            x[j] = lo;
            if (s == LQ_OK) s = eval(ctx, numeric_fn, user, n_in, in, R, n_out, &fm);
            x[j] = orig;
            num[j] = (fp - fm) / ((double)hi - (double)lo);
            scale = fmax(scale, fabs(num[j]));
        }
        for (int64_t j = 0; j < m && s == LQ_OK; j++) {
            double d = fabs(ana[off + j] - num[j]);
            if (d > worst || j == 0) {
                worst = d;
                wj = j;
                wa = ana[off + j];
                wn = num[j];
            }
        }
        free(num);
        res->n_checked += m;
        if (s == LQ_OK && (worst / scale > res->error || res->worst_input < 0)) {
            res->error = worst / scale;
            res->max_abs = worst;
            res->worst_input = i;
            res->worst_index = wj;
            res->analytic = wa;
            res->numeric = wn;
        }
        off += m;
    }
    free(R);
    free(ana);
    lq_ctx_set_grad(ctx, prev_grad);
    if (s == LQ_OK && res->n_checked == 0)
        s = LQ_ERR(&ctx->err, LQ_ERR_ARG, "gradcheck: no input requires a gradient, nothing was checked");
    return s;
}

int64_t lq_gc_row_len(lq_rng *rng, int64_t lo, int64_t hi) {
    return lq_rng_int(rng, 0, 1) == 0 ? lq_rng_int(rng, 257, 300) : lq_rng_int(rng, lo, hi);
}

lq_tensor *lq_gc_input(lq_ctx *ctx, lq_rng *rng, int ndim, const int64_t *shape, float lo, float hi) {
    lq_tensor *t = lq_new_leaf(ctx, ndim, shape, true);
    if (t) lq_fill_uniform(t, rng, lo, hi);
    return t;
}

lq_tensor *lq_gc_doc_ids(lq_ctx *ctx, lq_rng *rng, int64_t B, int64_t T, int64_t one_in) {
    lq_tensor *t = lq_new(ctx, LQ_DTYPE_I32, 2, (int64_t[]){B, T});
    if (!t) return NULL;
    int32_t *doc = t->data;
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < T; i++)
            doc[b * T + i] = i == 0 ? 0 : doc[b * T + i - 1] + (lq_rng_int(rng, 1, one_in) == 1);
    return t;
}

lq_tensor *lq_gc_ids(lq_ctx *ctx, lq_rng *rng, int ndim, const int64_t *shape, int32_t lo, int32_t hi) {
    lq_tensor *t = lq_new(ctx, LQ_DTYPE_I32, ndim, shape);
    if (!t) return NULL;
    int32_t *d = t->data;
    for (int64_t i = 0; i < lq_numel(t); i++) d[i] = (int32_t)lq_rng_int(rng, lo, hi);
    return t;
}

lq_status lq_gradcheck_op(lq_ctx *ctx, int op, uint64_t seed, lq_gc_result *res, char *desc, size_t desc_n) {
    memset(res, 0, sizeof *res);
    if (op < 0 || op >= lq_op_table_len) return LQ_ERR(&ctx->err, LQ_ERR_ARG, "gradcheck: no op %d", op);
    const lq_op_def *def = lq_op_table[op];
    if (!def->gc_make)
        return LQ_ERR(&ctx->err, LQ_ERR_STATE, "gradcheck: op '%s' has no gradcheck case", def->name);
    lq_ctx_mark m = lq_ctx_get_mark(ctx);
    lq_rng rng;
    lq_rng_seed(&rng, seed * 1000003u + (uint64_t)op);
    lq_gc_case c;
    memset(&c, 0, sizeof c);
    lq_status s = def->gc_make(ctx, &rng, &c);
    if (s == LQ_OK && ctx->err.status != LQ_OK) s = ctx->err.status;
    if (desc && desc_n) snprintf(desc, desc_n, "%s", c.desc);
    if (s == LQ_OK) {
        lq_gc_opts o = {.step = c.step, .seed = seed, .surrogate = c.surrogate};
        s = lq_gradcheck(ctx, c.call, &c, c.n_in, c.in, &o, res);
    }
    lq_ctx_reset_to(ctx, m);
    return s;
}
