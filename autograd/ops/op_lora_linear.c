/* autograd/ops/op_lora_linear.c: the fused LoRA linear y = x deq(W)^T (+ b) + s (drop(x) A^T) B^T. */
#include <cblas.h>
#include <stdio.h>
#include <string.h>

#include "autograd/autograd_impl.h"
#include "autograd/ops/op_shared.h"

/* Why fused: the composition (qmatmul, add, dropout, matmul, scale, matmul, add) keeps the base
 * output (M, N), dropout(x) (M, K), x A^T and its scaled copy (M, r), (.) B^T (M, N) and the sum
 * (M, N) for backward, and makes an elementwise pass for each. Here the adapter's product is
 * added into the base output by a second sgemm with beta = 1, and the node keeps only
 * u = s drop(x) A^T (M, r) (dB needs it); the dropout mask is regenerated from its (seed, stream)
 * (op_dropout.c's kernel, so the masks are lq_dropout's), and drop(x) is rebuilt in scratch.
 *
 * Node: in[0] = x (M, K) contiguous, in[1] = w (N, K), in[2] = A (r, K), in[3] = B (N, r),
 * in[4] = bias (N) when n_in == 5. ip[0] = N, ip[1] = K, ip[2..4] = qmatmul's tiles (forward rows,
 * forward cols, backward rows), ip[5] = r, ip[6] = dropout stream, ip[7] = seed (uint64 bits);
 * fp[0] = s, fp[1] = p (0: no dropout). saved[0] = u (M, r) when recorded. */

static int64_t rows_of(const lq_node *n) { return n->ip[0] > 0 ? lq_numel(n->out) / n->ip[0] : 0; }

/* h = drop(x) into dst (M*K floats), or x itself when there is no dropout. */
static const float *dropped(lq_ctx *ctx, const lq_node *n, float *dst, int64_t m) {
    if (n->fp[1] <= 0.0f) return n->in[0]->data;
    lq_dropout_apply(ctx, false, (uint64_t)n->ip[7], (uint64_t)n->ip[6], n->fp[1], n->in[0]->data, dst, m);
    return dst;
}

static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    const lq_tensor *x = n->in[0], *w = n->in[1];
    int64_t N = n->ip[0], K = n->ip[1], r = n->ip[5], M = rows_of(n);
    float s = n->fp[0], *y = n->out->data;
    if (M == 0 || N == 0) return LQ_OK;
    /* base: y = x deq(W)^T */
    if (w->dtype == LQ_DTYPE_F32) {
        if (K == 0) memset(y, 0, (size_t)(M * N) * sizeof(float));
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, 1.0f, x->data, (int)K, w->data,
                        (int)K, 0.0f, y, (int)N);
    } else {
        LQ_TRY(lq_qmm_forward(ctx, w, x->data, y, M, N, K, n->ip[2], n->ip[3]));
    }
    if (n->n_in == 5) { /* (base + b) first, then the adapter: lq_add's order in the composition */
        const float *b = n->in[4]->data;
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) y[i * N + j] += b[j];
    }
    /* u is kept for backward when recorded; otherwise it is scratch like drop(x). */
    float *u = NULL;
    if (n->recorded) {
        u = lq_ctx_alloc(ctx, (size_t)(M * r) * sizeof(float));
        if (!u) return ctx->err.status;
        n->saved[0] = u;
    }
    lq_ctx_mark mark = lq_ctx_get_mark(ctx);
    if (!u && !(u = lq_ctx_alloc(ctx, (size_t)(M * r) * sizeof(float)))) return ctx->err.status;
    float *hbuf = NULL;
    if (n->fp[1] > 0.0f && !(hbuf = lq_ctx_alloc(ctx, (size_t)(M * K) * sizeof(float)))) return ctx->err.status;
    const float *h = dropped(ctx, n, hbuf, M * K);
    /* u (M, r) = s h A^T: the product, then the scaling on the (M, r) intermediate */
    if (K == 0) memset(u, 0, (size_t)(M * r) * sizeof(float));
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)r, (int)K, 1.0f, h, (int)K, n->in[2]->data,
                    (int)K, 0.0f, u, (int)r);
    for (int64_t i = 0; i < M * r; i++) u[i] *= s;
    /* y += u B^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)r, 1.0f, u, (int)r, n->in[3]->data,
                (int)r, 1.0f, y, (int)N);
    lq_ctx_reset_to(ctx, mark);
    return LQ_OK;
}

/* With u = s h A^T, h = drop(x) = m x / q (mask m, q = 1 - p), y = x W^T + b + u B^T:
 *   dB (N, r) += dY^T u;   du (M, r) = s dY B;   dA (r, K) += du^T h;
 *   dx (M, K) += dY deq(W) + m (du A) / q;   db (N) += sum over rows of dY.
 * Every gradient buffer is fetched before the scratch mark (lq_grad_get may allocate). */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    const lq_tensor *w = n->in[1];
    int64_t N = n->ip[0], K = n->ip[1], r = n->ip[5], M = rows_of(n);
    float s = n->fp[0], p = n->fp[1];
    float *gx, *gA, *gB, *gb = NULL;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    LQ_TRY(lq_grad_get(ctx, n->in[2], &gA));
    LQ_TRY(lq_grad_get(ctx, n->in[3], &gB));
    if (n->n_in == 5) LQ_TRY(lq_grad_get(ctx, n->in[4], &gb));
    if (M == 0 || N == 0) return LQ_OK;
    const float *gy = n->out->grad->data, *u = n->saved[0];
    if (gb)
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) gb[j] += gy[i * N + j];
    if (gB)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)N, (int)r, (int)M, 1.0f, gy, (int)N, u, (int)r, 1.0f,
                    gB, (int)r);
    if (gx && K > 0) {
        if (w->dtype == LQ_DTYPE_F32)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)K, (int)N, 1.0f, gy, (int)N, w->data,
                        (int)K, 1.0f, gx, (int)K);
        else
            LQ_TRY(lq_qmm_backward_x(ctx, w, gy, gx, M, N, K, n->ip[4]));
    }
    if ((!gA && !gx) || K == 0) return LQ_OK;
    lq_ctx_mark mark = lq_ctx_get_mark(ctx);
    float *du = lq_ctx_alloc(ctx, (size_t)(M * r) * sizeof(float)), *buf = NULL;
    if (!du) return ctx->err.status;
    if (p > 0.0f && !(buf = lq_ctx_alloc(ctx, (size_t)(M * K) * sizeof(float)))) return ctx->err.status;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)r, (int)N, 1.0f, gy, (int)N, n->in[3]->data,
                (int)r, 0.0f, du, (int)r);
    for (int64_t i = 0; i < M * r; i++) du[i] *= s;
    if (gA) {
        const float *h = dropped(ctx, n, buf, M * K);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)r, (int)K, (int)M, 1.0f, du, (int)r, h, (int)K, 1.0f,
                    gA, (int)K);
    }
    if (gx) {
        const float *A = n->in[2]->data;
        if (p > 0.0f) { /* buf = du A, then gx += m buf / q */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)K, (int)r, 1.0f, du, (int)r, A, (int)K,
                        0.0f, buf, (int)K);
            lq_dropout_apply(ctx, true, (uint64_t)n->ip[7], (uint64_t)n->ip[6], p, buf, gx, M * K);
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)K, (int)r, 1.0f, du, (int)r, A, (int)K,
                        1.0f, gx, (int)K);
        }
    }
    lq_ctx_reset_to(ctx, mark);
    return LQ_OK;
}

/* --- gradcheck case ----------------------------------------------------------------------- */

/* Formats a case may draw for W (those that need no quant state, so the case can encode them
 * with from_f32 alone; qmatmul's own case covers the stateful ones through the same kernels). */
static const lq_dtype gc_dtypes[] = {LQ_DTYPE_F32,  LQ_DTYPE_F16, LQ_DTYPE_BF16, LQ_DTYPE_Q8_0,
                                     LQ_DTYPE_Q4_0, LQ_DTYPE_NF4, LQ_DTYPE_FP4};

/* Each evaluation restarts the streams at the case's seed (all see one mask), in training mode. */
static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    const lq_gc_case *c = user;
    uint64_t prev_seed = ctx->seed, prev_stream = ctx->rng_stream;
    bool prev_training = lq_ctx_set_training(ctx, true);
    lq_ctx_set_seed(ctx, (uint64_t)c->ip[3]);
    lq_qmatmul_tiles tl = {c->ip[0], c->ip[1], c->ip[2]};
    lq_tensor *y = lq_lora_linear_fused(ctx, in[0], in[1], n_in > 4 ? in[4] : NULL, in[2], in[3], c->fp[0], c->fp[1],
                                        &tl);
    lq_ctx_set_training(ctx, prev_training);
    ctx->seed = prev_seed;
    ctx->rng_stream = prev_stream;
    return y;
}

/* x (B, T, K), A (r, K), B (N, r) and sometimes a bias require grad; W frozen of a random format
 * (NF4 / FP4 with a scale per 32 elements: the QLoRA base); dropout p 0 or in [0.1, 0.6]; random
 * tiles as qmatmul's case. */
static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    lq_dtype avail[sizeof gc_dtypes / sizeof gc_dtypes[0]];
    int n_avail = 0;
    for (size_t i = 0; i < sizeof gc_dtypes / sizeof gc_dtypes[0]; i++) {
        const lq_dtype_traits *tr = lq_dtype_info(gc_dtypes[i]);
        if (tr && tr->to_f32 && (gc_dtypes[i] == LQ_DTYPE_F32 || tr->from_f32)) avail[n_avail++] = gc_dtypes[i];
    }
    lq_dtype t = avail[lq_rng_int(rng, 0, n_avail - 1)];
    const lq_dtype_traits *tr = lq_dtype_info(t);
    int64_t unit = tr->needs_qstate ? 32 : tr->block_size > 8 ? tr->block_size : 8;
    int64_t Bt = lq_rng_int(rng, 1, 2), T = lq_rng_int(rng, 1, 3), N = lq_rng_int(rng, 3, 9);
    int64_t K = unit * lq_rng_int(rng, 1, 2), r = lq_rng_int(rng, 1, 4);
    bool bias = lq_rng_int(rng, 0, 1) == 1;
    float *wf = lq_ctx_alloc(ctx, (size_t)(N * K) * sizeof(float));
    if (!wf) return ctx->err.status;
    for (int64_t i = 0; i < N * K; i++) wf[i] = 2.0f * lq_rng_uniform(rng) - 1.0f;
    lq_tensor *w = t == LQ_DTYPE_F32 ? lq_new(ctx, t, 2, (int64_t[]){N, K}) : lq_gc_quantize(ctx, t, wf, N, K, 32);
    if (!w) return ctx->err.status;
    if (t == LQ_DTYPE_F32) memcpy(w->data, wf, (size_t)(N * K) * sizeof(float));
    c->n_in = bias ? 5 : 4;
    c->in[0] = lq_gc_input(ctx, rng, 3, (int64_t[]){Bt, T, K}, -1, 1);
    c->in[1] = w;
    c->in[2] = lq_gc_input(ctx, rng, 2, (int64_t[]){r, K}, -1, 1);
    c->in[3] = lq_gc_input(ctx, rng, 2, (int64_t[]){N, r}, -1, 1);
    if (bias) c->in[4] = lq_gc_input(ctx, rng, 1, (int64_t[]){N}, -1, 1);
    c->ip[0] = lq_rng_int(rng, 1, N);
    c->ip[1] = tr->block_size * lq_rng_int(rng, 1, K / tr->block_size);
    c->ip[2] = lq_rng_int(rng, 1, N);
    c->ip[3] = (int64_t)(lq_rng_u64(rng) >> 1);
    c->fp[0] = 0.25f + 1.75f * lq_rng_uniform(rng);
    c->fp[1] = lq_rng_int(rng, 0, 2) ? 0.1f + 0.5f * lq_rng_uniform(rng) : 0.0f;
    c->call = gc_call;
    snprintf(c->desc, sizeof c->desc, "x (%lld, %lld, %lld), w %s (%lld, %lld), r %lld, s %.3f, p %.3f%s", (long long)Bt,
             (long long)T, (long long)K, tr->name, (long long)N, (long long)K, (long long)r, (double)c->fp[0],
             (double)c->fp[1], bias ? ", bias" : "");
    return ctx->err.status;
}

const lq_op_def lq_op_lora_linear = {"lora_linear", fwd, bwd, gc_make};

lq_tensor *lq_lora_linear_fused(lq_ctx *ctx, lq_tensor *x, lq_tensor *w, lq_tensor *bias, lq_tensor *A, lq_tensor *B,
                                float scaling, float p, const lq_qmatmul_tiles *tiles) {
    if (!ctx || ctx->err.status != LQ_OK) return NULL;
    const char *op = "lora_linear";
    if (!lq_check_f32(ctx, op, "x", x) || !lq_check_f32(ctx, op, "A", A) || !lq_check_f32(ctx, op, "B", B)) return NULL;
    if (bias && !lq_check_f32(ctx, op, "bias", bias)) return NULL;
    if (!w) return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "lora_linear: w is NULL");
    const lq_dtype_traits *tr = lq_dtype_info(w->dtype);
    if (!tr || (w->dtype != LQ_DTYPE_F32 && !tr->to_f32))
        return LQ_OP_FAIL(ctx, LQ_ERR_UNSUPPORTED, "lora_linear: w '%s' has dtype %s, which has no conversion to f32",
                          w->name, lq_dtype_name(w->dtype));
    if (lq_requires_grad(w))
        return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "lora_linear: w '%s' requires a gradient; the base weight must be frozen",
                          w->name);
    if (w->device != ctx->device) /* x, A, B (and bias) were checked by lq_check_f32 */
        return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "lora_linear: w '%s' is on the %s but the context runs on the %s (move it "
                          "with lq_tensor_to_device)", w->name, w->device == LQ_DEVICE_CUDA ? "GPU" : "CPU",
                          ctx->device == LQ_DEVICE_CUDA ? "GPU" : "CPU");
    if (w->ndim != 2) return lq_shape_error(ctx, op, x, w, "do not fit: w must be 2-D (out, in)");
    if (x->ndim < 1) return lq_shape_error(ctx, op, x, w, "do not fit: x must have at least 1 dim");
    if (!lq_is_contiguous(w) || !w->data)
        return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "lora_linear: w '%s' must be contiguous with data", w->name);
    if (tr->needs_qstate && !w->qs)
        return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "lora_linear: w '%s' is %s but has no quant state (qs)", w->name, tr->name);
    int64_t N = w->ne[0], K = w->ne[1];
    if (x->ne[x->ndim - 1] != K)
        return lq_shape_error(ctx, op, x, w, "do not fit: x's last dim must equal w's in-features (dim 1)");
    if (A->ndim != 2 || A->ne[1] != K || A->ne[0] < 1)
        return lq_shape_error(ctx, op, x, A, "do not fit: A must be (r, in) with in = x's last dim");
    int64_t r = A->ne[0];
    if (B->ndim != 2 || B->ne[0] != N || B->ne[1] != r)
        return lq_shape_error(ctx, op, w, B, "do not fit: B must be (out, r) with out = w's dim 0 and r = A's dim 0");
    if (bias && (bias->ndim != 1 || bias->ne[0] != N))
        return lq_shape_error(ctx, op, w, bias, "do not fit: bias must be (out)");
    LQ_OP_CHECK(ctx, p >= 0.0f && p < 1.0f, LQ_ERR_ARG, "lora_linear: dropout p = %g must be in [0, 1)", (double)p);
    lq_qmatmul_tiles tl = lq_qmatmul_default_tiles(w->dtype, N, K);
    if (tiles) {
        if (tiles->fwd_rows < 0 || tiles->bwd_rows < 0 || tiles->fwd_cols < 0 || tiles->fwd_cols % tr->block_size)
            return LQ_OP_FAIL(ctx, LQ_ERR_ARG,
                              "lora_linear: tiles %lld x %lld / %lld: sizes must be >= 0 (0 = default) and the "
                              "columns whole %s blocks of %lld",
                              (long long)tiles->fwd_rows, (long long)tiles->fwd_cols, (long long)tiles->bwd_rows,
                              tr->name, (long long)tr->block_size);
        if (tiles->fwd_rows) tl.fwd_rows = tiles->fwd_rows < N ? tiles->fwd_rows : (N > 0 ? N : 1);
        if (tiles->fwd_cols) tl.fwd_cols = tiles->fwd_cols < K ? tiles->fwd_cols : (K > 0 ? K : 1);
        if (tiles->bwd_rows) tl.bwd_rows = tiles->bwd_rows < N ? tiles->bwd_rows : (N > 0 ? N : 1);
    }
    int64_t M = 1;
    for (int d = 0; d < x->ndim - 1; d++) M *= x->ne[d];
    LQ_OP_CHECK(ctx, M < INT32_MAX && N < INT32_MAX && K < INT32_MAX, LQ_ERR_UNSUPPORTED,
                "lora_linear: dimensions beyond sgemm's int range");
    bool has_bias = bias != NULL;
    x = lq_contiguous(ctx, x);
    A = lq_contiguous(ctx, A);
    B = lq_contiguous(ctx, B);
    if (has_bias) bias = lq_contiguous(ctx, bias);
    if (!x || !A || !B || (has_bias && !bias)) return NULL;
    lq_tensor *in[5] = {x, w, A, B, bias};
    lq_node *n = lq_node_begin(ctx, &lq_op_lora_linear, bias ? 5 : 4, in);
    if (!n) return NULL;
    n->ip[0] = N;
    n->ip[1] = K;
    n->ip[2] = tl.fwd_rows;
    n->ip[3] = tl.fwd_cols;
    n->ip[4] = tl.bwd_rows;
    n->ip[5] = r;
    n->fp[0] = scaling;
    n->fp[1] = 0.0f;
    if (ctx->training && p > 0.0f) { /* as lq_dropout: a stream only when the mask is drawn */
        n->fp[1] = p;
        n->ip[6] = (int64_t)ctx->rng_stream++;
        n->ip[7] = (int64_t)ctx->seed;
    }
    int64_t ne[LQ_MAX_DIMS];
    for (int d = 0; d < x->ndim - 1; d++) ne[d] = x->ne[d];
    ne[x->ndim - 1] = N;
    if (!lq_node_output(ctx, n, x->ndim, ne)) return NULL;
    return lq_node_finish(ctx, n);
}
