/* autograd/ops/op_layernorm.c: layer normalisation over the last dim with biased variance,
 * y = (x - mean) / sqrt(var + eps) * w + b, like torch.nn.functional.layer_norm. */
#include <math.h>
#include <stdio.h>

#include "autograd/autograd_impl.h"

/* Columns per block when summing the weight and bias gradients over rows (see bwd). */
#define LN_COL_BLOCK 64

/* Mean and 1 / sqrt(var + eps) of one row, both passes in double. */
static void row_stats(const float *x, int64_t C, float eps, float *mean, float *rstd) {
    double s = 0.0;
    for (int64_t j = 0; j < C; j++) s += x[j];
    double mu = C > 0 ? s / (double)C : 0.0;
    double v = 0.0;
    for (int64_t j = 0; j < C; j++) {
        double d = (double)x[j] - mu;
        v += d * d;
    }
    v = C > 0 ? v / (double)C : 0.0;
    *mean = (float)mu;
    *rstd = (float)(1.0 / sqrt(v + (double)eps));
}

/* x (R, C) as rows; in[ip[0]] = weight (C) and in[ip[1]] = bias (C), an index of -1 when absent.
 * saved[0] = mean (R), saved[1] = rstd (R) when recorded. */
static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    const lq_tensor *xt = n->in[0];
    int64_t C = xt->ne[xt->ndim - 1];
    int64_t R = C > 0 ? lq_numel(xt) / C : 0;
    const float *x = xt->data;
    const float *w = n->ip[0] >= 0 ? n->in[n->ip[0]]->data : NULL;
    const float *b = n->ip[1] >= 0 ? n->in[n->ip[1]]->data : NULL;
    float *y = n->out->data;
    float eps = n->fp[0];
    float *mean = NULL, *rstd = NULL;
    if (n->recorded) {
        size_t bytes = (size_t)(R > 0 ? R : 1) * sizeof(float);
        mean = lq_ctx_alloc(ctx, bytes);
        rstd = mean ? lq_ctx_alloc(ctx, bytes) : NULL;
        if (!rstd) return ctx->err.status;
        n->saved[0] = mean;
        n->saved[1] = rstd;
    }
#pragma omp parallel for num_threads(ctx->n_threads) if (R > 1 && R * C > 16384)
    for (int64_t r = 0; r < R; r++) {
        const float *xr = x + r * C;
        float *yr = y + r * C;
        float mu, s;
        row_stats(xr, C, eps, &mu, &s);
        if (mean) {
            mean[r] = mu;
            rstd[r] = s;
        }
        for (int64_t j = 0; j < C; j++) {
            float h = (xr[j] - mu) * s;
            if (w) h *= w[j];
            if (b) h += b[j];
            yr[j] = h;
        }
    }
    return LQ_OK;
}

/* Per row, with mu = mean_j x_j, v = mean_j (x_j - mu)^2, r = (v + eps)^(-1/2),
 * h_j = (x_j - mu) r and y_j = w_j h_j + b_j. Let g_j = dy_j w_j (= dy_j without weight).
 *   dmu/dx_k = 1/C,  dv/dx_k = 2 (x_k - mu) / C  (the dmu terms sum to zero),
 *   dr/dx_k = -1/2 r^3 dv/dx_k = -r h_k / C
 *   dh_j/dx_k = r (delta_jk - 1/C) + (x_j - mu) dr/dx_k = r (delta_jk - 1/C - h_j h_k / C)
 * so dx_k = sum_j g_j dh_j/dx_k = r (g_k - mean_j g_j - h_k mean_j (g_j h_j)),
 * dw_j = sum over rows of dy_j h_j, db_j = sum over rows of dy_j.
 * The dw / db sums run over rows in order for each block of columns, each block handled by one
 * iteration, so the result does not depend on the thread count. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    const lq_tensor *xt = n->in[0];
    int64_t C = xt->ne[xt->ndim - 1];
    int64_t R = C > 0 ? lq_numel(xt) / C : 0;
    const float *x = xt->data;
    const float *w = n->ip[0] >= 0 ? n->in[n->ip[0]]->data : NULL;
    const float *gy = n->out->grad->data;
    float eps = n->fp[0];
    float *gx, *gw = NULL, *gb = NULL;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (n->ip[0] >= 0) LQ_TRY(lq_grad_get(ctx, n->in[n->ip[0]], &gw));
    if (n->ip[1] >= 0) LQ_TRY(lq_grad_get(ctx, n->in[n->ip[1]], &gb));
    if (!gx && !gw && !gb) return LQ_OK;

    float *mean = n->saved[0], *rstd = n->saved[1];
    if (!mean || !rstd) { /* not saved (should not happen for a recorded node): recompute */
        size_t bytes = (size_t)(R > 0 ? R : 1) * sizeof(float);
        mean = lq_ctx_alloc(ctx, bytes);
        rstd = mean ? lq_ctx_alloc(ctx, bytes) : NULL;
        if (!rstd) return ctx->err.status;
        for (int64_t r = 0; r < R; r++) row_stats(x + r * C, C, eps, &mean[r], &rstd[r]);
    }

    if (gx) {
#pragma omp parallel for num_threads(ctx->n_threads) if (R > 1 && R * C > 16384)
        for (int64_t r = 0; r < R; r++) {
            const float *xr = x + r * C, *gr = gy + r * C;
            float *dr = gx + r * C;
            float mu = mean[r], s = rstd[r];
            double sg = 0.0, sgh = 0.0;
            for (int64_t j = 0; j < C; j++) {
                double g = (double)gr[j] * (w ? w[j] : 1.0f);
                sg += g;
                sgh += g * ((xr[j] - mu) * s);
            }
            float mg = (float)(sg / (double)C), mgh = (float)(sgh / (double)C);
            for (int64_t j = 0; j < C; j++) {
                float h = (xr[j] - mu) * s;
                float g = gr[j] * (w ? w[j] : 1.0f);
                dr[j] += s * (g - mg - h * mgh);
            }
        }
    }
    if (gw || gb) {
        int64_t nblk = (C + LN_COL_BLOCK - 1) / LN_COL_BLOCK;
#pragma omp parallel for num_threads(ctx->n_threads) if (nblk > 1 && R * C > 16384)
        for (int64_t bk = 0; bk < nblk; bk++) {
            int64_t j0 = bk * LN_COL_BLOCK, j1 = j0 + LN_COL_BLOCK < C ? j0 + LN_COL_BLOCK : C;
            double aw[LN_COL_BLOCK] = {0}, ab[LN_COL_BLOCK] = {0};
            for (int64_t r = 0; r < R; r++) {
                const float *xr = x + r * C, *gr = gy + r * C;
                float mu = mean[r], s = rstd[r];
                for (int64_t j = j0; j < j1; j++) {
                    aw[j - j0] += (double)gr[j] * ((xr[j] - mu) * s);
                    ab[j - j0] += gr[j];
                }
            }
            for (int64_t j = j0; j < j1; j++) {
                if (gw) gw[j] += (float)aw[j - j0];
                if (gb) gb[j] += (float)ab[j - j0];
            }
        }
    }
    return LQ_OK;
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    lq_tensor *w = c->ip[0] >= 0 ? in[c->ip[0]] : NULL;
    lq_tensor *b = c->ip[1] >= 0 ? in[c->ip[1]] : NULL;
    return lq_layernorm(ctx, in[0], w, b, c->fp[0]);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t a = lq_rng_int(rng, 1, 3), b = lq_rng_int(rng, 1, 4), C = lq_gc_row_len(rng, 3, 9);
    int64_t which = lq_rng_int(rng, 0, 3); /* bit 0: weight, bit 1: bias; mostly both */
    if (which == 0 && lq_rng_int(rng, 0, 1)) which = 3;
    c->fp[0] = 1e-5f;
    c->n_in = 1;
    c->in[0] = lq_gc_input(ctx, rng, 3, (int64_t[]){a, b, C}, -2, 2);
    c->ip[0] = c->ip[1] = -1;
    if (which & 1) {
        c->ip[0] = c->n_in;
        c->in[c->n_in++] = lq_gc_input(ctx, rng, 1, (int64_t[]){C}, 0.5f, 1.5f);
    }
    if (which & 2) {
        c->ip[1] = c->n_in;
        c->in[c->n_in++] = lq_gc_input(ctx, rng, 1, (int64_t[]){C}, -1, 1);
    }
    c->call = gc_call;
    snprintf(c->desc, sizeof c->desc, "x (%lld, %lld, %lld)%s%s", (long long)a, (long long)b, (long long)C,
             (which & 1) ? " weight" : "", (which & 2) ? " bias" : "");
    return ctx->err.status;
}

const lq_op_def lq_op_layernorm = {"layernorm", fwd, bwd, gc_make};

lq_tensor *lq_layernorm(lq_ctx *ctx, lq_tensor *x, lq_tensor *weight, lq_tensor *bias, float eps) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!lq_check_f32(ctx, "layernorm", "x", x)) return NULL;
    if (weight && !lq_check_f32(ctx, "layernorm", "weight", weight)) return NULL;
    if (bias && !lq_check_f32(ctx, "layernorm", "bias", bias)) return NULL;
    LQ_OP_CHECK(ctx, x->ndim >= 1, LQ_ERR_SHAPE, "layernorm: x must have at least one dim, got a scalar");
    LQ_OP_CHECK(ctx, eps >= 0.0f, LQ_ERR_ARG, "layernorm: eps = %g must be >= 0", (double)eps);
    int64_t C = x->ne[x->ndim - 1];
    if (weight && (weight->ndim != 1 || weight->ne[0] != C))
        return lq_shape_error(ctx, "layernorm", x, weight, "do not match: weight must be (C) for x (..., C)");
    if (bias && (bias->ndim != 1 || bias->ne[0] != C))
        return lq_shape_error(ctx, "layernorm", x, bias, "do not match: bias must be (C) for x (..., C)");
    x = lq_contiguous(ctx, x);
    if (weight) weight = lq_contiguous(ctx, weight);
    if (bias) bias = lq_contiguous(ctx, bias);
    lq_tensor *in[3] = {x, NULL, NULL};
    int n_in = 1;
    int64_t wi = -1, bi = -1;
    if (weight) {
        wi = n_in;
        in[n_in++] = weight;
    }
    if (bias) {
        bi = n_in;
        in[n_in++] = bias;
    }
    lq_node *n = lq_node_begin(ctx, &lq_op_layernorm, n_in, in);
    if (!n) return NULL;
    n->ip[0] = wi;
    n->ip[1] = bi;
    n->fp[0] = eps;
    if (!lq_node_output(ctx, n, x->ndim, x->ne)) return NULL;
    return lq_node_finish(ctx, n);
}
