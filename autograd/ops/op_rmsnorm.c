/* autograd/ops/op_rmsnorm.c: RMS normalisation over the last dim, y = x * rsqrt(mean(x^2) + eps) * w. */
#include <math.h>
#include <stdio.h>

#include "autograd/autograd_impl.h"

/* Columns per block when summing the weight gradient over rows (see bwd). */
#define RMS_COL_BLOCK 64

/* 1 / sqrt(mean(x^2) + eps) for one row of C values: the mean accumulated in double, the rsqrt
 * taken in float, as Hugging Face's LlamaRMSNorm does in float32. */
static float row_rstd(const float *x, int64_t C, float eps) {
    double acc = 0.0;
    for (int64_t j = 0; j < C; j++) acc += (double)x[j] * (double)x[j];
    float ms = C > 0 ? (float)(acc / (double)C) : 0.0f;
    return 1.0f / sqrtf(ms + eps);
}

/* x (R, C) as rows, w (C) or absent. saved[0] = rstd (R) when recorded. */
static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    const lq_tensor *xt = n->in[0];
    int64_t C = xt->ne[xt->ndim - 1];
    int64_t R = C > 0 ? lq_numel(xt) / C : 0;
    const float *x = xt->data;
    const float *w = n->ip[0] ? n->in[1]->data : NULL;
    float *y = n->out->data;
    float eps = n->fp[0];
    float *rstd = NULL;
    if (n->recorded) {
        rstd = lq_ctx_alloc(ctx, (size_t)(R > 0 ? R : 1) * sizeof(float));
        if (!rstd) return ctx->err.status;
        n->saved[0] = rstd;
    }
#pragma omp parallel for num_threads(ctx->n_threads) if (R > 1 && R * C > 16384)
    for (int64_t r = 0; r < R; r++) {
        const float *xr = x + r * C;
        float *yr = y + r * C;
        float s = row_rstd(xr, C, eps);
        if (rstd) rstd[r] = s;
        for (int64_t j = 0; j < C; j++) {
            float h = xr[j] * s; /* normalise first, then weight, in float (the HF order) */
            yr[j] = w ? w[j] * h : h;
        }
    }
    return LQ_OK;
}

/* Per row, with m = mean_j x_j^2 and r = (m + eps)^(-1/2): y_j = w_j x_j r.
 *   dr/dx_k = -1/2 (m + eps)^(-3/2) * 2 x_k / C = -r^3 x_k / C
 *   dy_j/dx_k = w_j (delta_jk r + x_j dr/dx_k)
 * so dx_k = sum_j dy_j dy_j/dx_k = r w_k dy_k - (r^3 / C) x_k sum_j dy_j w_j x_j
 * (w = 1 when there is no weight), and dw_j = sum over rows of dy_j x_j r.
 * The dw sum runs over rows in order for each block of columns, each block handled by one
 * iteration, so the result does not depend on the thread count. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    const lq_tensor *xt = n->in[0];
    int64_t C = xt->ne[xt->ndim - 1];
    int64_t R = C > 0 ? lq_numel(xt) / C : 0;
    const float *x = xt->data;
    bool has_w = n->ip[0] != 0;
    const float *w = has_w ? n->in[1]->data : NULL;
    const float *gy = n->out->grad->data;
    float eps = n->fp[0];
    float *gx, *gw = NULL;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (has_w) LQ_TRY(lq_grad_get(ctx, n->in[1], &gw));
    if (!gx && !gw) return LQ_OK;

    float *rstd = n->saved[0];
    if (!rstd) { /* not saved (should not happen for a recorded node): recompute */
        rstd = lq_ctx_alloc(ctx, (size_t)(R > 0 ? R : 1) * sizeof(float));
        if (!rstd) return ctx->err.status;
        for (int64_t r = 0; r < R; r++) rstd[r] = row_rstd(x + r * C, C, eps);
    }

    if (gx) {
#pragma omp parallel for num_threads(ctx->n_threads) if (R > 1 && R * C > 16384)
        for (int64_t r = 0; r < R; r++) {
            const float *xr = x + r * C, *gr = gy + r * C;
            float *dr = gx + r * C;
            float s = rstd[r];
            double dot = 0.0;
            for (int64_t j = 0; j < C; j++) dot += (double)gr[j] * (w ? w[j] : 1.0f) * xr[j];
            float coef = (float)((double)s * s * s * dot / (double)C);
            for (int64_t j = 0; j < C; j++) dr[j] += s * (w ? w[j] : 1.0f) * gr[j] - coef * xr[j];
        }
    }
    if (gw) {
        int64_t nblk = (C + RMS_COL_BLOCK - 1) / RMS_COL_BLOCK;
#pragma omp parallel for num_threads(ctx->n_threads) if (nblk > 1 && R * C > 16384)
        for (int64_t b = 0; b < nblk; b++) {
            int64_t j0 = b * RMS_COL_BLOCK, j1 = j0 + RMS_COL_BLOCK < C ? j0 + RMS_COL_BLOCK : C;
            double acc[RMS_COL_BLOCK] = {0};
            for (int64_t r = 0; r < R; r++) {
                const float *xr = x + r * C, *gr = gy + r * C;
                for (int64_t j = j0; j < j1; j++) acc[j - j0] += (double)gr[j] * xr[j] * rstd[r];
            }
            for (int64_t j = j0; j < j1; j++) gw[j] += (float)acc[j - j0];
        }
    }
    return LQ_OK;
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    return lq_rmsnorm(ctx, in[0], c->ip[0] ? in[1] : NULL, c->fp[0]);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t a = lq_rng_int(rng, 1, 3), b = lq_rng_int(rng, 1, 4), C = lq_gc_row_len(rng, 3, 9);
    bool three = lq_rng_int(rng, 0, 1);
    c->ip[0] = lq_rng_int(rng, 0, 3) != 0; /* mostly with a weight */
    c->fp[0] = 1e-5f;
    c->n_in = 1;
    if (three) c->in[0] = lq_gc_input(ctx, rng, 3, (int64_t[]){a, b, C}, -2, 2);
    else c->in[0] = lq_gc_input(ctx, rng, 2, (int64_t[]){a * b, C}, -2, 2);
    if (c->ip[0]) c->in[c->n_in++] = lq_gc_input(ctx, rng, 1, (int64_t[]){C}, 0.5f, 1.5f);
    c->call = gc_call;
    if (three)
        snprintf(c->desc, sizeof c->desc, "x (%lld, %lld, %lld)%s", (long long)a, (long long)b, (long long)C,
                 c->ip[0] ? " weight" : "");
    else
        snprintf(c->desc, sizeof c->desc, "x (%lld, %lld)%s", (long long)(a * b), (long long)C,
                 c->ip[0] ? " weight" : "");
    return ctx->err.status;
}

const lq_op_def lq_op_rmsnorm = {"rmsnorm", fwd, bwd, gc_make};

lq_tensor *lq_rmsnorm(lq_ctx *ctx, lq_tensor *x, lq_tensor *weight, float eps) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!lq_check_f32(ctx, "rmsnorm", "x", x)) return NULL;
    if (weight && !lq_check_f32(ctx, "rmsnorm", "weight", weight)) return NULL;
    LQ_OP_CHECK(ctx, x->ndim >= 1, LQ_ERR_SHAPE, "rmsnorm: x must have at least one dim, got a scalar");
    LQ_OP_CHECK(ctx, eps >= 0.0f, LQ_ERR_ARG, "rmsnorm: eps = %g must be >= 0", (double)eps);
    if (weight && (weight->ndim != 1 || weight->ne[0] != x->ne[x->ndim - 1]))
        return lq_shape_error(ctx, "rmsnorm", x, weight, "do not match: weight must be (C) for x (..., C)");
    x = lq_contiguous(ctx, x);
    if (weight) weight = lq_contiguous(ctx, weight);
    lq_tensor *in[2] = {x, weight};
    lq_node *n = lq_node_begin(ctx, &lq_op_rmsnorm, weight ? 2 : 1, in);
    if (!n) return NULL;
    n->ip[0] = weight != NULL;
    n->fp[0] = eps;
    if (!lq_node_output(ctx, n, x->ndim, x->ne)) return NULL;
    return lq_node_finish(ctx, n);
}
