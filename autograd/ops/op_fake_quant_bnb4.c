/* autograd/ops/op_fake_quant_bnb4.c: NF4 / FP4 fake quantization (bitsandbytes' blockwise absmax), straight-through backward. */
#include <math.h>
#include <stdio.h>

#include "autograd/autograd_impl.h"

/* Node: in[0] x (contiguous). ip[0] dtype (NF4 / FP4), ip[1] block size. */
static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    const lq_tensor *x = n->in[0];
    int64_t m = lq_numel(x), block = n->ip[1], nblk = (m + block - 1) / block;
    lq_dtype type = (lq_dtype)n->ip[0];
    uint8_t *codes = lq_ctx_alloc(ctx, (size_t)((m + 1) / 2 > 0 ? (m + 1) / 2 : 1));
    float *absmax = lq_ctx_alloc(ctx, (size_t)(nblk > 0 ? nblk : 1) * sizeof(float));
    if (!codes || !absmax) return ctx->err.status;
    LQ_TRY(lq_bnb4_quantize_into(type, x->data, m, block, codes, absmax, &ctx->err));
    lq_qstate qs = {.block = block, .absmax = absmax};
    lq_bnb4_dequantize(type, codes, m, &qs, n->out->data);
    return LQ_OK;
}

/* y = code[q(x / absmax)] * absmax with absmax = max |x| over x's block. The nearest-code lookup
 * is piecewise constant; the straight-through estimator passes the gradient through it
 * (d q / d(x / absmax) taken as 1), and absmax is held constant as in QLoRA-style fake
 * quantization: dy/dx = absmax * (1 / absmax) = 1, so dx += dy. (The code values are the grid;
 * every x lies inside [-absmax, absmax], so there is no clamp to mask.) */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    return lq_grad_add(ctx, n->in[0], n->out->grad->data);
}

/* --- gradcheck ------------------------------------------------------------------------------ */

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    return lq_fake_quant_bnb4(ctx, in[0], (lq_dtype)c->ip[0], c->ip[1]);
}

/* Surrogate: y = x + d with d = y0 - x0 frozen (aux, double per element): absmax constant, the
 * code lookup the identity to the STE, so dy/dx = 1 exactly. */
static lq_tensor *gc_surrogate(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    const double *d = c->aux;
    const lq_tensor *x = in[0];
    lq_tensor *y = lq_new(ctx, LQ_DTYPE_F32, x->ndim, x->ne);
    if (!y) return NULL;
    const float *xd = x->data;
    float *yd = y->data;
    for (int64_t i = 0; i < lq_numel(x); i++) yd[i] = (float)((double)xd[i] + d[i]);
    return y;
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t a = lq_rng_int(rng, 1, 3), b = lq_rng_int(rng, 20, 70);
    c->ip[0] = lq_rng_int(rng, 0, 1) ? LQ_DTYPE_NF4 : LQ_DTYPE_FP4;
    c->ip[1] = lq_rng_int(rng, 0, 1) ? 32 : 64;
    c->n_in = 1;
    c->in[0] = lq_gc_input(ctx, rng, 2, (int64_t[]){a, b}, -2.0f, 2.0f);
    if (!c->in[0]) return ctx->err.status;
    int64_t m = lq_numel(c->in[0]), nblk = (m + c->ip[1] - 1) / c->ip[1];
    double *d = lq_ctx_alloc(ctx, (size_t)m * sizeof(double));
    float *y0 = lq_ctx_alloc(ctx, (size_t)m * sizeof(float)), *absmax = lq_ctx_alloc(ctx, (size_t)nblk * sizeof(float));
    uint8_t *codes = lq_ctx_alloc(ctx, (size_t)(m + 1) / 2);
    if (!d || !y0 || !absmax || !codes) return ctx->err.status;
    /* y0 straight from quant/ (not through the op) */
    if (lq_bnb4_quantize_into((lq_dtype)c->ip[0], c->in[0]->data, m, c->ip[1], codes, absmax, &ctx->err) != LQ_OK)
        return ctx->err.status;
    lq_qstate qs = {.block = c->ip[1], .absmax = absmax};
    lq_bnb4_dequantize((lq_dtype)c->ip[0], codes, m, &qs, y0);
    const float *xd = c->in[0]->data;
    for (int64_t i = 0; i < m; i++) d[i] = (double)y0[i] - (double)xd[i];
    c->aux = d;
    c->call = gc_call;
    c->surrogate = gc_surrogate;
    snprintf(c->desc, sizeof c->desc, "x (%lld, %lld) %s block %lld", (long long)a, (long long)b,
             lq_dtype_name((lq_dtype)c->ip[0]), (long long)c->ip[1]);
    return ctx->err.status;
}

const lq_op_def lq_op_fake_quant_bnb4 = {"fake_quant_bnb4", fwd, bwd, gc_make};

lq_tensor *lq_fake_quant_bnb4(lq_ctx *ctx, lq_tensor *x, lq_dtype type, int64_t block_size) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!lq_check_f32(ctx, "fake_quant_bnb4", "x", x)) return NULL;
    LQ_OP_CHECK(ctx, type == LQ_DTYPE_NF4 || type == LQ_DTYPE_FP4, LQ_ERR_ARG,
                "fake_quant_bnb4: type must be nf4 or fp4, got %s", lq_dtype_name(type));
    LQ_OP_CHECK(ctx, block_size >= 32 && block_size <= 4096 && (block_size & (block_size - 1)) == 0, LQ_ERR_ARG,
                "fake_quant_bnb4: block size %lld must be a power of two in 32..4096", (long long)block_size);
    lq_node *n = lq_node_begin_like(ctx, &lq_op_fake_quant_bnb4, x);
    if (!n) return NULL;
    n->ip[0] = type;
    n->ip[1] = block_size;
    return lq_node_finish(ctx, n);
}
