/* autograd/ops/op_qmatmul.c: y = x deq(W)^T for a frozen quantized W, dequantized tile by tile. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "autograd/autograd_impl.h"
#include "autograd/ops/op_shared.h"

/* Tiling. sgemm repacks whatever operand spans a whole dimension of its call, so a tile must
 * split the product along its INNER dimension, where OpenBLAS itself blocks (and reads and
 * writes C once per block anyway):
 *   forward  y (M, N) = x (M, K) W^T: inner dim K, so a tile is a slab of W's COLUMNS,
 *            W[n0:n0+rows, k0:k0+cols], and y[:, n0:n0+rows] += x[:, k0:k0+cols] slab^T;
 *   backward dX (M, K) += dY (M, N) W: inner dim N, so a tile is a slab of W's ROWS,
 *            W[n0:n0+rows, :], and dX += dY[:, n0:n0+rows] slab.
 * Row tiles in the forward instead (y[:, n0:n0+t] = x tile^T, ldc = N) make sgemm repack all of x
 * for every tile: at 4096 x 4096 with 512 tokens on 2 cores (fp32 sgemm 59 ms), 128-row tiles cost
 * 1.41x one fp32 sgemm, 1024-row ones (16 MiB) 1.10x. Column slabs cost 1.22x at 128 columns,
 * 1.18x at 512, 1.12x at 1024 and 1.09x at 2048 (bench/bench_quant.c --only sweep): each slab is
 * another pass over y, and each slab row one to_f32 call, so slabs are QMM_SLAB_COLS wide, and at
 * most QMM_TILE_FLOATS large (8 MiB, written and read back while in the L3; freed on return). */
#define QMM_SLAB_COLS 1024
#define QMM_TILE_FLOATS ((int64_t)1 << 21)
#define QMM_MIN_ROWS 16
/* Dequantizing fewer elements than this at once is not worth waking a second thread. */
#define QMM_PAR_MIN 16384

/* Node parameters: ip[0] = N, ip[1] = K, ip[2..4] = forward rows, forward cols, backward rows.
 * in[0] = x (contiguous), in[1] = w. */

static int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

lq_qmatmul_tiles lq_qmatmul_default_tiles(lq_dtype t, int64_t n_rows, int64_t k) {
    const lq_dtype_traits *tr = lq_dtype_info(t);
    int64_t blk = tr ? tr->block_size : 1; /* packed nibbles have blocks of 2: whole bytes */
    lq_qmatmul_tiles tl;
    tl.fwd_cols = round_up(QMM_SLAB_COLS, blk);
    if (tl.fwd_cols > k) tl.fwd_cols = k;
    tl.fwd_rows = QMM_TILE_FLOATS / (tl.fwd_cols > 0 ? tl.fwd_cols : 1) / QMM_MIN_ROWS * QMM_MIN_ROWS;
    if (tl.fwd_rows < QMM_MIN_ROWS) tl.fwd_rows = QMM_MIN_ROWS;
    tl.bwd_rows = QMM_TILE_FLOATS / (k > 0 ? k : 1) / QMM_MIN_ROWS * QMM_MIN_ROWS;
    if (tl.bwd_rows < QMM_MIN_ROWS) tl.bwd_rows = QMM_MIN_ROWS;
    if (tl.fwd_rows > n_rows) tl.fwd_rows = n_rows;
    if (tl.bwd_rows > n_rows) tl.bwd_rows = n_rows;
    if (tl.fwd_rows < 1) tl.fwd_rows = 1;
    if (tl.bwd_rows < 1) tl.bwd_rows = 1;
    if (tl.fwd_cols < 1) tl.fwd_cols = 1;
    return tl;
}

/* W[r0:r0+rows, c0:c0+cols] into dst (rows x cols, contiguous), split over threads by whole rows:
 * a row's part is one to_f32 call (c0 and cols are whole blocks). Every element is converted the
 * same way whatever the split, so the result does not depend on the thread count. */
static void dequant_tile(const lq_tensor *w, const lq_dtype_traits *tr, int64_t r0, int64_t rows, int64_t c0,
                         int64_t cols, float *dst, int n_threads) {
    const unsigned char *base = (const unsigned char *)w->data + lq_dtype_bytes(w->dtype, c0);
    size_t row_bytes = w->nb[0];
    int64_t K = w->ne[1];
    int nt = rows * cols >= QMM_PAR_MIN ? n_threads : 1;
    if (nt > rows) nt = (int)rows;
    if (cols == K) { /* whole rows are contiguous: one call per thread */
#pragma omp parallel num_threads(nt) if (nt > 1)
        {
            int tid = 0, cnt = 1;
#ifdef _OPENMP
            tid = omp_get_thread_num();
            cnt = omp_get_num_threads();
#endif
            int64_t a = rows * tid / cnt, b = rows * (tid + 1) / cnt;
            if (b > a)
                tr->to_f32(base + (size_t)(r0 + a) * row_bytes, dst + a * K, (b - a) * K, w->qs, (r0 + a) * K);
        }
        return;
    }
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int64_t r = 0; r < rows; r++)
        tr->to_f32(base + (size_t)(r0 + r) * row_bytes, dst + r * cols, cols, w->qs, (r0 + r) * K + c0);
}

/* y (M, N) = x (M, K) deq(w)^T, slab by slab (see the tiling note above): for each tile
 * W[n0:n0+rows, k0:k0+cols] in the scratch, y[:, n0:n0+rows] (ldc N) = (k0 ? y : 0) + x[:, k0:k0+cols]
 * (lda K) tile^T. Shared with the fused LoRA linear (op_lora_linear.c) through op_shared.h. */
lq_status lq_qmm_forward(lq_ctx *ctx, const lq_tensor *w, const float *xd, float *y, int64_t M, int64_t N, int64_t K,
                         int64_t tr_rows, int64_t tc) {
    const lq_dtype_traits *tr = lq_dtype_info(w->dtype);
    if (M == 0 || N == 0) return LQ_OK;
    if (K == 0) {
        memset(y, 0, (size_t)(M * N) * sizeof(float));
        return LQ_OK;
    }
    /* The scratch lives only during this call: the arena goes back to the mark afterwards (the
     * node is not on the tape yet, so the tape pointer in the mark is unchanged). */
    lq_ctx_mark mark = lq_ctx_get_mark(ctx);
    float *scratch = lq_ctx_alloc(ctx, (size_t)(tr_rows * tc) * sizeof(float));
    if (!scratch) return ctx->err.status;
    for (int64_t n0 = 0; n0 < N; n0 += tr_rows) {
        int64_t rows = N - n0 < tr_rows ? N - n0 : tr_rows;
        for (int64_t k0 = 0; k0 < K; k0 += tc) {
            int64_t cols = K - k0 < tc ? K - k0 : tc;
            dequant_tile(w, tr, n0, rows, k0, cols, scratch, ctx->n_threads);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)rows, (int)cols, 1.0f, xd + k0, (int)K,
                        scratch, (int)cols, k0 ? 1.0f : 0.0f, y + n0, (int)N);
        }
    }
    lq_ctx_reset_to(ctx, mark);
    return LQ_OK;
}

static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    int64_t N = n->ip[0], K = n->ip[1];
    int64_t M = N > 0 ? lq_numel(n->out) / N : 0;
    return lq_qmm_forward(ctx, n->in[1], n->in[0]->data, n->out->data, M, N, K, n->ip[2], n->ip[3]);
}

/* y[m, n] = sum_k x[m, k] W[n, k] with W = deq(w) a constant (w is frozen), so
 *   dL/dx[m, k] = sum_n dY[m, n] W[n, k],  i.e. dX (M, K) += dY (M, N) W (N, K).
 * The sum over n splits over tiles of W's rows (the inner dimension of this product):
 *   dX += dY[:, n0:n0+t] (M, t; ld N) W[n0:n0+t, :] (t, K)
 * one sgemm with beta = 1 per tile, so the float W is never whole in memory. w gets nothing. */
lq_status lq_qmm_backward_x(lq_ctx *ctx, const lq_tensor *w, const float *gy, float *gx, int64_t M, int64_t N,
                            int64_t K, int64_t tile) {
    const lq_dtype_traits *tr = lq_dtype_info(w->dtype);
    if (M == 0 || N == 0 || K == 0) return LQ_OK;
    lq_ctx_mark mark = lq_ctx_get_mark(ctx);
    float *scratch = lq_ctx_alloc(ctx, (size_t)(tile * K) * sizeof(float));
    if (!scratch) return ctx->err.status;
    for (int64_t n0 = 0; n0 < N; n0 += tile) {
        int64_t t = N - n0 < tile ? N - n0 : tile;
        dequant_tile(w, tr, n0, t, 0, K, scratch, ctx->n_threads);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)K, (int)t, 1.0f, gy + n0, (int)N, scratch,
                    (int)K, 1.0f, gx, (int)K);
    }
    lq_ctx_reset_to(ctx, mark);
    return LQ_OK;
}

static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    int64_t N = n->ip[0], K = n->ip[1];
    int64_t M = N > 0 ? lq_numel(n->out) / N : 0;
    return lq_qmm_backward_x(ctx, n->in[1], n->out->grad->data, gx, M, N, K, n->ip[4]);
}

/* --- gradcheck case ----------------------------------------------------------------------- */

/* Formats a case may draw, where this build's traits table has a row with an encoder. */
static const lq_dtype gc_dtypes[] = {LQ_DTYPE_F16,  LQ_DTYPE_BF16, LQ_DTYPE_NF4, LQ_DTYPE_FP4,
                                     LQ_DTYPE_Q8_0, LQ_DTYPE_Q4_0, LQ_DTYPE_I8,  LQ_DTYPE_I4};

lq_tensor *lq_gc_quantize(lq_ctx *ctx, lq_dtype t, const float *src, int64_t rows, int64_t k, int64_t block) {
    const lq_dtype_traits *tr = lq_dtype_info(t);
    lq_tensor *w = lq_new(ctx, t, 2, (int64_t[]){rows, k});
    if (!w) return NULL;
    if (tr->needs_qstate) {
        int64_t nblk = (rows * k + block - 1) / block;
        lq_qstate *qs = lq_ctx_alloc(ctx, sizeof *qs);
        if (!qs) return NULL;
        memset(qs, 0, sizeof *qs);
        qs->block = block;
        qs->bits = t == LQ_DTYPE_I4 ? 4 : 8;
        qs->absmax = lq_ctx_alloc(ctx, (size_t)nblk * sizeof(float));
        if (!qs->absmax) return NULL;
        /* symmetric scales max|w| / qmax: the affine encoders use the scales they are given; the
         * bnb encoders compute their own absmax over these */
        float qmax = (float)((1 << (qs->bits - 1)) - 1);
        for (int64_t b = 0; b < nblk; b++) {
            float m = 0.0f;
            for (int64_t i = b * block; i < (b + 1) * block && i < rows * k; i++) m = fmaxf(m, fabsf(src[i]));
            qs->absmax[b] = m > 0.0f ? m / qmax : 1.0f;
        }
        w->qs = qs;
    }
    if (tr->from_f32(src, w->data, rows * k, w->qs, 0, &ctx->err) != LQ_OK) return NULL;
    return w;
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    lq_qmatmul_tiles tl = {c->ip[0], c->ip[1], c->ip[2]};
    return lq_qmatmul_tiled(ctx, in[0], in[1], &tl);
}

/* x (B, T, K) requiring grad, W (N, K) quantized, random tiles (so that several tiles and a
 * partial last one are common); gradcheck validates dX (W is frozen: no gradient to check). */
static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    lq_dtype avail[sizeof gc_dtypes / sizeof gc_dtypes[0]];
    int n_avail = 0;
    for (size_t i = 0; i < sizeof gc_dtypes / sizeof gc_dtypes[0]; i++) {
        const lq_dtype_traits *tr = lq_dtype_info(gc_dtypes[i]);
        if (tr && tr->to_f32 && tr->from_f32) avail[n_avail++] = gc_dtypes[i];
    }
    lq_dtype t = avail[lq_rng_int(rng, 0, n_avail - 1)];
    const lq_dtype_traits *tr = lq_dtype_info(t);
    int64_t block = 32; /* a scale per 32 elements where the format keeps scales beside codes */
    int64_t unit = tr->block_size > block ? tr->block_size : block;
    int64_t col_unit = tr->block_size;
    int64_t B = lq_rng_int(rng, 1, 2), T = lq_rng_int(rng, 1, 3), N = lq_rng_int(rng, 3, 9);
    int64_t K = unit * lq_rng_int(rng, 1, 2);
    float *wf = lq_ctx_alloc(ctx, (size_t)(N * K) * sizeof(float));
    if (!wf) return ctx->err.status;
    for (int64_t i = 0; i < N * K; i++) wf[i] = 2.0f * lq_rng_uniform(rng) - 1.0f;
    c->n_in = 2;
    c->in[0] = lq_gc_input(ctx, rng, 3, (int64_t[]){B, T, K}, -1, 1);
    c->in[1] = lq_gc_quantize(ctx, t, wf, N, K, block);
    c->ip[0] = lq_rng_int(rng, 1, N);
    c->ip[1] = col_unit * lq_rng_int(rng, 1, K / col_unit);
    c->ip[2] = lq_rng_int(rng, 1, N);
    c->call = gc_call;
    snprintf(c->desc, sizeof c->desc, "x (%lld, %lld, %lld), w %s (%lld, %lld), tiles %lldx%lld / %lld", (long long)B,
             (long long)T, (long long)K, tr->name, (long long)N, (long long)K, (long long)c->ip[0],
             (long long)c->ip[1], (long long)c->ip[2]);
    return ctx->err.status;
}

const lq_op_def lq_op_qmatmul = {"qmatmul", fwd, bwd, gc_make};

lq_tensor *lq_qmatmul_tiled(lq_ctx *ctx, lq_tensor *x, lq_tensor *w, const lq_qmatmul_tiles *tiles) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!lq_check_f32(ctx, "qmatmul", "x", x)) return NULL;
    if (!w) return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "qmatmul: w is NULL");
    const lq_dtype_traits *tr = lq_dtype_info(w->dtype);
    if (!tr || !tr->to_f32)
        return LQ_OP_FAIL(ctx, LQ_ERR_UNSUPPORTED, "qmatmul: w '%s' has dtype %s, which has no conversion to f32",
                          w->name, lq_dtype_name(w->dtype));
    if (lq_requires_grad(w))
        return LQ_OP_FAIL(ctx, LQ_ERR_ARG,
                          "qmatmul: w '%s' requires a gradient; the quantized base weight must be frozen "
                          "(train an adapter beside it, or use matmul for a float weight)",
                          w->name);
    if (w->device != ctx->device) /* x was checked by lq_check_f32 */
        return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "qmatmul: w '%s' is on the %s but the context runs on the %s (move it with "
                          "lq_tensor_to_device)", w->name, w->device == LQ_DEVICE_CUDA ? "GPU" : "CPU",
                          ctx->device == LQ_DEVICE_CUDA ? "GPU" : "CPU");
    if (w->ndim != 2) return lq_shape_error(ctx, "qmatmul", x, w, "do not fit: w must be 2-D (out, in)");
    if (x->ndim < 1) return lq_shape_error(ctx, "qmatmul", x, w, "do not fit: x must have at least 1 dim");
    if (!lq_is_contiguous(w)) return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "qmatmul: w '%s' must be contiguous", w->name);
    if (!w->data) return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "qmatmul: w '%s' has no data", w->name);
    if (tr->needs_qstate && !w->qs)
        return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "qmatmul: w '%s' is %s but has no quant state (qs)", w->name, tr->name);
    int64_t N = w->ne[0], K = w->ne[1];
    if (x->ne[x->ndim - 1] != K)
        return lq_shape_error(ctx, "qmatmul", x, w, "do not fit: x's last dim must equal w's in-features (dim 1)");
    lq_qmatmul_tiles tl = lq_qmatmul_default_tiles(w->dtype, N, K);
    if (tiles) {
        int64_t col_unit = tr->block_size;
        if (tiles->fwd_rows < 0 || tiles->bwd_rows < 0 || tiles->fwd_cols < 0 || tiles->fwd_cols % col_unit)
            return LQ_OP_FAIL(ctx, LQ_ERR_ARG,
                              "qmatmul: tiles %lld x %lld / %lld: sizes must be >= 0 (0 = default) and the columns "
                              "whole %s blocks of %lld",
                              (long long)tiles->fwd_rows, (long long)tiles->fwd_cols, (long long)tiles->bwd_rows,
                              tr->name, (long long)col_unit);
        if (tiles->fwd_rows) tl.fwd_rows = tiles->fwd_rows < N ? tiles->fwd_rows : (N > 0 ? N : 1);
        if (tiles->fwd_cols) tl.fwd_cols = tiles->fwd_cols < K ? tiles->fwd_cols : (K > 0 ? K : 1);
        if (tiles->bwd_rows) tl.bwd_rows = tiles->bwd_rows < N ? tiles->bwd_rows : (N > 0 ? N : 1);
    }
    int64_t M = 1;
    for (int d = 0; d < x->ndim - 1; d++) M *= x->ne[d];
    LQ_OP_CHECK(ctx, M < INT32_MAX && N < INT32_MAX && K < INT32_MAX, LQ_ERR_UNSUPPORTED,
                "qmatmul: dimensions beyond sgemm's int range");
    x = lq_contiguous(ctx, x);
    if (!x) return NULL;
    lq_tensor *in[2] = {x, w};
    lq_node *n = lq_node_begin(ctx, &lq_op_qmatmul, 2, in);
    if (!n) return NULL;
    n->ip[0] = N;
    n->ip[1] = K;
    n->ip[2] = tl.fwd_rows;
    n->ip[3] = tl.fwd_cols;
    n->ip[4] = tl.bwd_rows;
    int64_t ne[LQ_MAX_DIMS];
    for (int d = 0; d < x->ndim - 1; d++) ne[d] = x->ne[d];
    ne[x->ndim - 1] = N;
    if (!lq_node_output(ctx, n, x->ndim, ne)) return NULL;
    return lq_node_finish(ctx, n);
}

lq_tensor *lq_qmatmul(lq_ctx *ctx, lq_tensor *x, lq_tensor *w) { return lq_qmatmul_tiled(ctx, x, w, NULL); }
