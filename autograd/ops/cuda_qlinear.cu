/* autograd/ops/cuda_qlinear.cu: CUDA qmatmul and lora_linear (the QLoRA linear), forward and backward,
 * mirroring op_qmatmul.c and op_lora_linear.c: the frozen W is dequantized on the device, then a gemm. */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/cuda_impl.h"
#include "core/cuda_check.h"
#include "quant/dequant_cuda.h"

/* cuda_qlinear_dy.cu: dY to bf16 and du = s dY B in one pass, for the shapes it takes. */
extern "C" bool lq_cuda_dy_du_fits(const float *gy, int64_t N, const void *gy16, int64_t ld, const void *B, int64_t r);
extern "C" lq_status lq_cuda_dy_du(lq_ctx *ctx, const float *gy, int64_t M, int64_t N, void *gy16, int64_t ld,
                                   const void *B, int64_t r, float s, void *du, int64_t lddu);
/* cuda_qlinear_fused.cu: the optional fused NF4 / FP4 kernels (LOQUAT_FUSED_QLINEAR=1). */
extern "C" bool lq_cuda_fused_qlinear_wanted(lq_ctx *ctx, lq_dtype t);
extern "C" lq_status lq_cuda_fused_qlinear(lq_ctx *ctx, bool backward, const lq_tensor *w, const lq_qstate *qs,
                                           const float *act, float *out, int64_t M, int64_t N, int64_t K);

/* W is dequantized a tile of whole rows at a time: at most this many elements (256 MiB as f32), so
 * a big weight never needs its full f32 copy; a tile is an even number of rows, so that a packed
 * 4-bit tile starts on an even byte (lq_cuda_dequant wants 2-byte aligned sources). */
#define QL_TILE_ELEMS ((int64_t)1 << 26)

#define FOR_EACH(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

static cudaStream_t stream_of(lq_ctx *ctx) { return (cudaStream_t)lq_cuda_stream(ctx); }

/* --- kernels ----------------------------------------------------------------------------------- */

/* y (M, N) += bias (N) on every row: one writer per element */
__global__ static void k_add_bias(float *y, const float *b, int64_t N, int64_t n) {
    FOR_EACH(i, n) y[i] += b[i % N];
}

/* gb[j] += sum_i gy[i, j], i over M rows: one thread per column, rows summed in order (adjacent
 * threads read adjacent columns, so the loads coalesce) */
__global__ static void k_colsum_add(float *gb, const float *gy, int64_t M, int64_t N) {
    FOR_EACH(j, N) {
        float s = 0.0f;
        for (int64_t i = 0; i < M; i++) s += gy[i * N + j];
        gb[j] += s;
    }
}

/* op_dropout.c's mask on the device: element i of the call on (seed, stream) is kept iff
 * lq_u01_from_bits(lq_hash3(seed, stream, i)) >= p (core/rng.h, the same integer hash on both
 * sides), so the masks are the CPU's bit for bit. bwd false: y = kept ? x / q : 0;
 * bwd true: y += x / q where kept. q = 1 - p, an IEEE division as the CPU's. */
__global__ static void k_dropout(int bwd, uint64_t seed, uint64_t stream, float p, float q, const float *x, float *y,
                                 int64_t m) {
    FOR_EACH(i, m) {
        bool kept = lq_u01_from_bits(lq_hash3(seed, stream, (uint64_t)i)) >= p;
        if (bwd) {
            if (kept) y[i] += x[i] / q;
        } else {
            y[i] = kept ? x[i] / q : 0.0f;
        }
    }
}

static lq_status dropout_apply(lq_ctx *ctx, bool bwd, uint64_t seed, uint64_t stream, float p, const float *x,
                               float *y, int64_t m) {
    if (m <= 0) return LQ_OK;
    k_dropout<<<lq_cuda_blocks(m), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(bwd ? 1 : 0, seed, stream, p, 1.0f - p, x,
                                                                          y, m);
    LQ_CUDA_LAUNCHED(ctx, "lora_linear dropout");
    return LQ_OK;
}

/* A bf16 copy of n floats in the device arena; NULL with an error in ctx. */
static __nv_bfloat16 *to_bf16(lq_ctx *ctx, const float *src, int64_t n) {
    __nv_bfloat16 *d = (__nv_bfloat16 *)lq_ctx_dalloc(ctx, (size_t)(n > 0 ? n : 1) * sizeof(__nv_bfloat16));
    if (!d || n <= 0) return d;
    return lq_cuda_to_bf16(ctx, d, n, src, n, 1, n) == LQ_OK ? d : NULL;
}

/* Row-major C (m, n) = alpha op(A) op(B) + beta C with bf16 A and B (row strides lda, ldb as
 * stored), fp32 accumulation and C of type ct (f32, or bf16: the fp32 result rounded to nearest
 * even): lq_cuda_gemm's mapping onto column-major cuBLAS (B first), for operands that are bf16
 * already. side: on the side stream (lq_cuda_fork / lq_cuda_join), else the main one.
 * m, n, k >= 1. */
static lq_status gemm_bf16_to(lq_ctx *ctx, bool side, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                              const __nv_bfloat16 *A, int64_t lda, const __nv_bfloat16 *B, int64_t ldb, float beta,
                              void *C, cudaDataType ct, int64_t ldc) {
    cublasHandle_t h = (cublasHandle_t)(side ? lq_cuda_side_blas(ctx) : lq_cuda_blas(ctx));
    LQ_CUBLAS(&ctx->err, cublasGemmEx(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, (int)n,
                                      (int)m, (int)k, &alpha, B, CUDA_R_16BF, (int)ldb, A, CUDA_R_16BF, (int)lda,
                                      &beta, C, ct, (int)ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return LQ_OK;
}

/* gemm_bf16_to with an fp32 C. */
static lq_status gemm_bf16(lq_ctx *ctx, bool side, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                           const __nv_bfloat16 *A, int64_t lda, const __nv_bfloat16 *B, int64_t ldb, float beta,
                           float *C, int64_t ldc) {
    return gemm_bf16_to(ctx, side, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, CUDA_R_32F, ldc);
}

/* dst (rows, cols) bf16, row stride ldd = src (rows, cols) packed, on stream st. */
static lq_status copy_cols(lq_ctx *ctx, __nv_bfloat16 *dst, int64_t ldd, const __nv_bfloat16 *src, int64_t cols,
                           int64_t rows, void *st) {
    const size_t w = (size_t)cols * sizeof(__nv_bfloat16);
    LQ_CU(&ctx->err, cudaMemcpy2DAsync(dst, (size_t)ldd * sizeof(__nv_bfloat16), src, w, w, (size_t)rows,
                                       cudaMemcpyDeviceToDevice, (cudaStream_t)st));
    return LQ_OK;
}

/* --- the frozen weight ------------------------------------------------------------------------- */

/* w's quant state with device arrays: its own when lq_tensor_to_device moved it (qs->device), else
 * (a tensor copied with lq_to_ctx_device keeps the host state) copies uploaded into the arena,
 * described by *tmp. NULL for formats without a state. */
static lq_status device_qstate(lq_ctx *ctx, const lq_tensor *w, lq_qstate *tmp, const lq_qstate **out) {
    const lq_qstate *q = w->qs;
    *out = q;
    if (!q || q->device) return LQ_OK;
    int64_t nb = q->block > 0 ? (lq_numel(w) + q->block - 1) / q->block : 0;
    int64_t nb2 = q->block2 > 0 ? (nb + q->block2 - 1) / q->block2 : 0;
    *tmp = *q;
    tmp->device = true; /* arena memory: nobody frees it but the step reset */
    if (q->absmax && !(tmp->absmax = (float *)lq_cuda_upload(ctx, q->absmax, (size_t)nb * sizeof(float))))
        return ctx->err.status;
    if (q->zero && !(tmp->zero = (float *)lq_cuda_upload(ctx, q->zero, (size_t)nb * sizeof(float))))
        return ctx->err.status;
    if (q->absmax_q && !(tmp->absmax_q = (uint8_t *)lq_cuda_upload(ctx, q->absmax_q, (size_t)nb))) return ctx->err.status;
    if (q->absmax2 && !(tmp->absmax2 = (float *)lq_cuda_upload(ctx, q->absmax2, (size_t)nb2 * sizeof(float))))
        return ctx->err.status;
    if (q->code2 && !(tmp->code2 = (const float *)lq_cuda_upload(ctx, q->code2, 256 * sizeof(float))))
        return ctx->err.status;
    *out = tmp;
    return LQ_OK;
}

/* Whether W's tiles go to the gemm as bf16: in bf16 math, a bf16 W as it is, NF4 / FP4 dequantized
 * straight to bf16 (half the bytes of an f32 tile; the same values lq_cuda_gemm's own bf16 cast of
 * the f32 tile would give). Other formats take the f32 route, where lq_cuda_gemm converts. */
static bool w_bf16(lq_ctx *ctx, lq_dtype t) {
    return ctx->cuda_math == LQ_CUDA_MATH_BF16 && (t == LQ_DTYPE_BF16 || lq_cuda_dequant_bf16_supported(t));
}

/* LOQUAT_CUDA_LORA_FUSE=0 (read each call): the bf16 path without its two fusions, the forward as
 * one product over [x | u] and [deq(W) | B] and the dY / du kernel; the thin product and the
 * conversion with its own du product run instead. For timing each against the other, and a way
 * around either should it misbehave on some GPU. */
static bool lora_fuse(void) {
    const char *e = getenv("LOQUAT_CUDA_LORA_FUSE");
    return !e || strcmp(e, "0") != 0;
}

/* Whether W's own data is the gemm operand (f32; bf16 in bf16 math): no dequant, no scratch. */
static bool w_direct(lq_ctx *ctx, const lq_tensor *w) {
    return w->dtype == LQ_DTYPE_F32 || (w->dtype == LQ_DTYPE_BF16 && w_bf16(ctx, w->dtype));
}

/* W's rows [n0, n0 + rows) as a row-major (rows, K) gemm operand: W's own data for f32 (and bf16
 * in bf16 math), else dequantized into scratch (f32, or bf16 when w_bf16). */
static lq_status w_rows(lq_ctx *ctx, const lq_tensor *w, const lq_qstate *qs, int64_t n0, int64_t rows, void *scratch,
                        const void **tile) {
    int64_t K = w->ne[1];
    const char *src = (const char *)w->data + (size_t)n0 * w->nb[0];
    if (w_direct(ctx, w)) {
        *tile = src;
        return LQ_OK;
    }
    *tile = scratch;
    if (w_bf16(ctx, w->dtype))
        return lq_cuda_dequant_bf16(w->dtype, src, (uint16_t *)scratch, rows * K, n0 * K, qs, stream_of(ctx),
                                    &ctx->err);
    return lq_cuda_dequant(w->dtype, src, (float *)scratch, rows * K, n0 * K, qs, stream_of(ctx), &ctx->err);
}

/* Rows per tile: all of W when its own data serves (f32; bf16 in bf16 math). */
static int64_t tile_rows(lq_ctx *ctx, const lq_tensor *w, int64_t N, int64_t K) {
    if (w_direct(ctx, w)) return N;
    int64_t t = K > 0 ? QL_TILE_ELEMS / K : N;
    t -= t % 2;
    if (t < 2) t = 2;
    return t < N ? t : N;
}

/* Scratch for one tile, or NULL (no error) when W's own data serves. */
static lq_status tile_scratch(lq_ctx *ctx, const lq_tensor *w, int64_t rows, void **scratch) {
    *scratch = NULL;
    if (w_direct(ctx, w)) return LQ_OK;
    bool bf = w_bf16(ctx, w->dtype);
    size_t bytes = (size_t)(rows * w->ne[1]) * (bf ? sizeof(__nv_bfloat16) : sizeof(float));
    *scratch = lq_ctx_dalloc(ctx, bytes);
    return *scratch ? LQ_OK : ctx->err.status;
}

/* The base product over W's row tiles, on an operand the caller prepared: act f32, or bf16 when
 * w_bf16 (row stride lda):
 *   bwd false: out (M, N) = beta0 out + act (M, K) deq(W)^T; tile n0: out[:, n0:n0+rows] (ldc N)
 *              = beta0 out[:, n0:n0+rows] + act tile^T;
 *   bwd true:  out (M, K) = beta0 out + act (M, N) deq(W): W is dequantized again rather than kept
 *              from the forward (as bitsandbytes does), so the step holds no copy of it; the sum
 *              over n splits over the tiles, out (+)= act[:, n0:n0+rows] tile, the first with beta0
 *              (0: a fresh gradient, lq_grad_get_fresh). M, N, K >= 1.
 * The tile scratch stays on the arena: the caller's mark rewinds it. joined: NULL, or a forked side
 * stream the first product must wait for (it writes out): joined after the first tile's dequant,
 * which so runs beside the side's work, and *joined set. */
static lq_status w_product(lq_ctx *ctx, const lq_tensor *w, const lq_qstate *qs, bool bwd, const void *act, int64_t lda,
                           float *out, int64_t M, int64_t N, int64_t K, float beta0, bool *joined) {
    bool bf = w_bf16(ctx, w->dtype);
    int64_t tr = tile_rows(ctx, w, N, K);
    void *scratch;
    LQ_TRY(tile_scratch(ctx, w, tr, &scratch));
    for (int64_t n0 = 0; n0 < N; n0 += tr) {
        int64_t rows = N - n0 < tr ? N - n0 : tr;
        const void *tile;
        LQ_TRY(w_rows(ctx, w, qs, n0, rows, scratch, &tile));
        if (joined && !*joined) {
            LQ_TRY(lq_cuda_join(ctx));
            *joined = true;
        }
        const __nv_bfloat16 *a16 = (const __nv_bfloat16 *)act, *t16 = (const __nv_bfloat16 *)tile;
        const float *a32 = (const float *)act, *t32 = (const float *)tile;
        if (!bwd && bf)
            LQ_TRY(gemm_bf16(ctx, false, false, true, M, rows, K, 1.0f, a16, lda, t16, K, beta0, out + n0, N));
        else if (!bwd)
            LQ_TRY(lq_cuda_gemm(ctx, false, true, M, rows, K, 1.0f, a32, lda, 0, t32, K, 0, beta0, out + n0, N, 0, 1));
        else if (bf)
            LQ_TRY(gemm_bf16(ctx, false, false, false, M, K, rows, 1.0f, a16 + n0, lda, t16, K, n0 == 0 ? beta0 : 1.0f,
                             out, K));
        else
            LQ_TRY(lq_cuda_gemm(ctx, false, false, M, K, rows, 1.0f, a32 + n0, lda, 0, t32, K, 0, n0 == 0 ? beta0 : 1.0f,
                                out, K, 0, 1));
    }
    return LQ_OK;
}

/* w_product on an f32 act (converted to bf16 here when the tiles are), or the fused kernel when it
 * is wanted (LOQUAT_FUSED_QLINEAR); scratch (tiles, uploaded state, the bf16 act) rewound before
 * return. bwd false: y (M, N) = x (M, K) deq(w)^T; true: gx (M, K) = beta0 gx + gy (M, N) deq(w).
 * M, N, K >= 1. */
static lq_status qmm(lq_ctx *ctx, const lq_tensor *w, bool bwd, const float *act, float *out, int64_t M, int64_t N,
                     int64_t K, float beta0) {
    lq_ctx_mark mark = lq_ctx_get_mark(ctx);
    lq_qstate tmp;
    const lq_qstate *qs;
    LQ_TRY(device_qstate(ctx, w, &tmp, &qs));
    if (lq_cuda_fused_qlinear_wanted(ctx, w->dtype)) { /* it adds: a fresh gx is zeroed first */
        if (bwd && beta0 == 0.0f) LQ_TRY(lq_cuda_fill_f32(ctx, out, 0.0f, M * K));
        LQ_TRY(lq_cuda_fused_qlinear(ctx, bwd, w, qs, act, out, M, N, K));
    } else {
        int64_t lda = bwd ? N : K;
        const void *a = act;
        if (w_bf16(ctx, w->dtype) && !(a = to_bf16(ctx, act, M * lda))) return ctx->err.status;
        LQ_TRY(w_product(ctx, w, qs, bwd, a, lda, out, M, N, K, beta0, NULL));
    }
    lq_ctx_reset_to(ctx, mark);
    return LQ_OK;
}

/* y (M, N) = x (M, K) deq(w)^T (K = 0: zeros). */
static lq_status qmm_forward(lq_ctx *ctx, const lq_tensor *w, const float *x, float *y, int64_t M, int64_t N,
                             int64_t K) {
    if (M == 0 || N == 0) return LQ_OK;
    if (K == 0) return lq_cuda_fill_f32(ctx, y, 0.0f, M * N);
    return qmm(ctx, w, false, x, y, M, N, K, 0.0f);
}

/* --- qmatmul ----------------------------------------------------------------------------------- */

/* ip[0] = N, ip[1] = K (ip[2..4], the CPU's tiles, do not apply here); in[0] = x (M, K) contiguous,
 * in[1] = w (N, K). */
extern "C" lq_status lq_cuda_qmatmul_fwd(lq_ctx *ctx, lq_node *n) {
    int64_t N = n->ip[0], K = n->ip[1];
    int64_t M = N > 0 ? lq_numel(n->out) / N : 0;
    return qmm_forward(ctx, n->in[1], (const float *)n->in[0]->data, (float *)n->out->data, M, N, K);
}

/* dX (M, K) += dY (M, N) deq(W); W is frozen: no gradient. */
extern "C" lq_status lq_cuda_qmatmul_bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    int64_t N = n->ip[0], K = n->ip[1];
    int64_t M = N > 0 ? lq_numel(n->out) / N : 0;
    if (M == 0 || N == 0 || K == 0) return LQ_OK;
    return qmm(ctx, n->in[1], true, (const float *)n->out->grad->data, gx, M, N, K, 1.0f);
}

/* --- lora_linear ------------------------------------------------------------------------------- */

/* Node (op_lora_linear.c): in[0] = x (M, K) contiguous, in[1] = w (N, K), in[2] = A (r, K),
 * in[3] = B (N, r), in[4] = bias (N) when n_in == 5; ip[0] = N, ip[1] = K, ip[5] = r,
 * ip[6] = dropout stream, ip[7] = seed; fp[0] = s, fp[1] = p (0: no dropout). saved[0] = u (M, r),
 * device memory, when recorded. */

static int64_t rows_of(const lq_node *n) { return n->ip[0] > 0 ? lq_numel(n->out) / n->ip[0] : 0; }

/* h = drop(x) into dst (M*K floats), or x itself when there is no dropout. NULL on error. */
static const float *dropped(lq_ctx *ctx, const lq_node *n, float *dst, int64_t m) {
    if (n->fp[1] <= 0.0f) return (const float *)n->in[0]->data;
    if (dropout_apply(ctx, false, (uint64_t)n->ip[7], (uint64_t)n->ip[6], n->fp[1], (const float *)n->in[0]->data, dst,
                      m) != LQ_OK)
        return NULL;
    return dst;
}

/* h = drop(x) as a packed bf16 copy in the arena (the bf16 path with dropout). NULL on error. */
static const __nv_bfloat16 *dropped_bf16(lq_ctx *ctx, const lq_node *n, int64_t m) {
    float *hbuf = (float *)lq_ctx_dalloc(ctx, (size_t)m * sizeof(float));
    const float *h = hbuf ? dropped(ctx, n, hbuf, m) : NULL;
    return h ? to_bf16(ctx, h, m) : NULL;
}

/* --- lora_linear in bf16 math -------------------------------------------------------------------
 * With W's tiles in bf16 (w_bf16: NF4 / FP4 dequantized straight to bf16, or a bf16 W), each f32
 * operand is converted to bf16 once per call and shared by every product that reads it: x by the
 * base product and u = s h A^T, dY by dX, dB and du (lq_cuda_gemm converts its operands per
 * product: dY three times over); x's copy comes from lq_cuda_act_bf16, which also shares it
 * between calls (the projections that read one x, and a backward right after its forward); u, A
 * and B are converted once per forward and kept for the backward. Each product sees the values
 * lq_cuda_gemm's own conversion gives (round to nearest even); only the grouping changes. Without
 * dropout, with W in one tile, the
 * adapter's share of dX rides in the base product, one gemm over N + r:
 *   dX (M, K) += [dY | du] (M, N + r) [deq(W) ; A] (N + r, K)
 * so gx is read and written once instead of twice. */

static bool lora_bf16_path(lq_ctx *ctx, const lq_node *n) {
    const lq_tensor *w = n->in[1];
    return w_bf16(ctx, w->dtype) && !lq_cuda_fused_qlinear_wanted(ctx, w->dtype) && n->ip[5] >= 1 && n->ip[1] >= 1;
}

/* The forward of the bf16 path. u = s h A^T comes out of its product in bf16 (the only form any
 * later product reads), and when the node is recorded, u and the bf16 copies of A and B made here
 * are kept for the backward (saved[1], [2], [3]; saved[0], the f32 path's u, stays NULL), so it
 * converts none of them again. A and B's conversion and u's product run on the side stream while
 * the main stream dequantizes W (cuBLAS gives the skinny u only 32-64 blocks: alone it leaves most
 * of the GPU idle). Then, where W's dequant can write rows of K + r (cat; r a multiple of 8 up to
 * LQ_CUDA_ACT_PAD), one product with K + r terms:
 *   y (M, N) = [x | u] (M, K + r) [deq(W) | B]^T
 * u in the spare columns of x's shared bf16 copy (lq_cuda_act_bf16), B beside W's rows in the tile
 * scratch, both put there by the side stream; y is written once, by that product. Otherwise
 * y = u B^T (a thin product that only writes y), then the base product adds into it (beta 1) and
 * the bias comes last. The CPU's order (x W^T, bias, then += u B^T) would have the thin product read
 * and rewrite all of y (2.7 ms of a 50 ms step at the 1B bench shape). The sums are the same up to
 * rounding order. */
static lq_status lora_fwd_bf16(lq_ctx *ctx, lq_node *n) {
    const lq_tensor *w = n->in[1];
    int64_t N = n->ip[0], K = n->ip[1], r = n->ip[5], M = rows_of(n);
    float s = n->fp[0], *y = (float *)n->out->data;
    __nv_bfloat16 *keep[3]; /* u, A, B in bf16: kept (recorded) or scratch (rewound below) */
    const int64_t len[3] = {M * r, r * K, N * r};
    lq_ctx_mark mark = lq_ctx_get_mark(ctx);
    for (int i = 0; i < 3; i++)
        if (!(keep[i] = (__nv_bfloat16 *)lq_ctx_dalloc(ctx, (size_t)len[i] * sizeof(__nv_bfloat16))))
            return ctx->err.status;
    if (n->recorded) mark = lq_ctx_get_mark(ctx); /* the rewind keeps them */
    __nv_bfloat16 *u16 = keep[0], *A16 = keep[1], *B16 = keep[2];
    lq_qstate tmp;
    const lq_qstate *qs;
    LQ_TRY(device_qstate(ctx, w, &tmp, &qs));
    int64_t ldx, ldh, ldw = K + r;
    __nv_bfloat16 *x16 = (__nv_bfloat16 *)lq_cuda_act_bf16(ctx, n->in[0], &ldx); /* shared (see there) */
    if (!x16) return ctx->err.status;
    const __nv_bfloat16 *h16 = x16;
    ldh = ldx;
    if (n->fp[1] > 0.0f) { /* h = drop(x) */
        if (!(h16 = dropped_bf16(ctx, n, M * K))) return ctx->err.status;
        ldh = K;
    }
    __nv_bfloat16 *wc = NULL; /* [deq(W) | B] (N, K + r) when cat */
    bool cat = lora_fuse() && !w_direct(ctx, w) && tile_rows(ctx, w, N, K) == N && r % 8 == 0 && r <= ldx - K;
    if (cat && !(wc = (__nv_bfloat16 *)lq_ctx_dalloc(ctx, (size_t)(N * ldw) * sizeof(__nv_bfloat16))))
        return ctx->err.status;
    cat = cat && lq_cuda_dequant_bf16_rows_ok(w->dtype, w->data, wc, N, K, ldw, 0, qs);
    void *side = lq_cuda_side_stream(ctx);
    LQ_TRY(lq_cuda_fork(ctx));
    bool joined = false;
    lq_status st = lq_cuda_to_bf16_pair(ctx, true, A16, (const float *)n->in[2]->data, r * K, B16,
                                        (const float *)n->in[3]->data, N * r);
    if (st == LQ_OK) st = gemm_bf16_to(ctx, true, false, true, M, r, K, s, h16, ldh, A16, K, 0.0f, u16, CUDA_R_16BF, r);
    if (cat) { /* u beside x, B beside W's rows (side); W's rows (main); then the one product */
        if (st == LQ_OK) st = copy_cols(ctx, x16 + K, ldx, u16, r, M, side);
        if (st == LQ_OK) st = copy_cols(ctx, wc + K, ldw, B16, r, N, side);
        if (st == LQ_OK)
            st = lq_cuda_dequant_bf16_rows(w->dtype, w->data, (uint16_t *)wc, N, K, ldw, 0, qs, stream_of(ctx),
                                           &ctx->err);
        if (st == LQ_OK && (st = lq_cuda_join(ctx)) == LQ_OK) joined = true;
        if (st == LQ_OK) st = gemm_bf16(ctx, false, false, true, M, N, K + r, 1.0f, x16, ldx, wc, ldw, 0.0f, y, N);
    } else {
        if (st == LQ_OK) st = gemm_bf16(ctx, true, false, true, M, N, r, 1.0f, u16, r, B16, r, 0.0f, y, N); /* u B^T */
        if (st == LQ_OK) st = w_product(ctx, w, qs, false, x16, ldx, y, M, N, K, 1.0f, &joined); /* += x deq(W)^T */
    }
    if (!joined) {
        lq_status js = lq_cuda_join(ctx);
        st = st != LQ_OK ? st : js;
    }
    LQ_TRY(st);
    if (n->n_in == 5) {
        k_add_bias<<<lq_cuda_blocks(M * N), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(
            y, (const float *)n->in[4]->data, N, M * N);
        LQ_CUDA_LAUNCHED(ctx, "lora_linear bias");
    }
    if (n->recorded) {
        n->saved[0] = NULL;
        for (int i = 0; i < 3; i++) n->saved[1 + i] = keep[i];
    }
    lq_ctx_reset_to(ctx, mark);
    return LQ_OK;
}

/* dX = beta0 dX + dY deq(W) + m (du A) / q on the main stream (the bf16 path's backward): one
 * product over [dY | du] and [deq(W) ; A] when wc (N + r, K) is given (cat, see above: A already
 * queued into its last r rows on the side, before lq_cuda_side_mark), else the base product and
 * then the adapter's share. */
static lq_status lora_bwd_dx(lq_ctx *ctx, lq_node *n, float *gx, float beta0, const __nv_bfloat16 *gy16, int64_t ld,
                             const __nv_bfloat16 *du16, int64_t lddu, __nv_bfloat16 *wc) {
    const lq_tensor *w = n->in[1];
    int64_t N = n->ip[0], K = n->ip[1], r = n->ip[5], M = rows_of(n);
    float p = n->fp[1];
    const __nv_bfloat16 *A16 = (const __nv_bfloat16 *)n->saved[2];
    lq_qstate tmp;
    const lq_qstate *qs;
    LQ_TRY(device_qstate(ctx, w, &tmp, &qs));
    if (wc) { /* W' (N + r, K) = [deq(W) ; A] in one scratch, then one product */
        const void *tile;
        LQ_TRY(w_rows(ctx, w, qs, 0, N, wc, &tile));
        LQ_TRY(lq_cuda_join_mark(ctx)); /* A's rows */
        return gemm_bf16(ctx, false, false, false, M, K, N + r, 1.0f, gy16, ld, wc, K, beta0, gx, K);
    }
    LQ_TRY(w_product(ctx, w, qs, true, gy16, ld, gx, M, N, K, beta0, NULL)); /* dX = beta0 dX + dY deq(W) */
    if (p <= 0.0f) return gemm_bf16(ctx, false, false, false, M, K, r, 1.0f, du16, lddu, A16, K, 1.0f, gx, K);
    float *buf = (float *)lq_ctx_dalloc(ctx, (size_t)(M * K) * sizeof(float)); /* dX += m (du A) / q */
    if (!buf) return ctx->err.status;
    LQ_TRY(gemm_bf16(ctx, false, false, false, M, K, r, 1.0f, du16, lddu, A16, K, 0.0f, buf, K));
    return dropout_apply(ctx, true, (uint64_t)n->ip[7], (uint64_t)n->ip[6], p, buf, gx, M * K);
}

/* The backward of the bf16 path (the gradient buffers fetched by the caller). dY goes to bf16 once,
 * with du = s dY B (in bf16, the only form any product reads) computed in the same pass where
 * lq_cuda_dy_du takes the shape (else a conversion, then the product). Then the side stream runs
 * dB += dY^T u and dA += du^T h (skinny products that cuBLAS runs on few blocks), after copying A
 * beside W's rows for dX's one product and converting x to bf16 for dA where no copy is kept,
 * while the main stream dequantizes W and waits for A's copy alone before the product; it joins
 * the side before the scratch is rewound. */
static lq_status lora_bwd_bf16(lq_ctx *ctx, lq_node *n, float *gx, float *gA, float *gB, float beta0) {
    const lq_tensor *w = n->in[1];
    int64_t N = n->ip[0], K = n->ip[1], r = n->ip[5], M = rows_of(n);
    float s = n->fp[0], p = n->fp[1];
    const float *gy = (const float *)n->out->grad->data;
    const __nv_bfloat16 *u16 = (const __nv_bfloat16 *)n->saved[1], *B16 = (const __nv_bfloat16 *)n->saved[3];
    if (!u16 || !n->saved[2] || !B16)
        return LQ_ERR(&ctx->err, LQ_ERR_INTERNAL,
                      "lora_linear: the bf16 backward found no bf16 operands from the forward (math mode changed?)");
    lq_ctx_mark mark = lq_ctx_get_mark(ctx);
    /* the adapter's dX in the base product: no dropout mask to apply, W in one tile of scratch */
    bool cat = gx && p <= 0.0f && !w_direct(ctx, w) && tile_rows(ctx, w, N, K) == N;
    int64_t ld = cat ? N + r : N; /* dY16's row stride: [dY | du] when cat */
    __nv_bfloat16 *gy16 = (__nv_bfloat16 *)lq_ctx_dalloc(ctx, (size_t)(M * ld) * sizeof(__nv_bfloat16));
    if (!gy16) return ctx->err.status;
    __nv_bfloat16 *du16 = NULL; /* s dY B in bf16: beside dY when cat */
    int64_t lddu = cat ? ld : r;
    if ((gA || gx) && cat) du16 = gy16 + N;
    if ((gA || gx) && !cat &&
        !(du16 = (__nv_bfloat16 *)lq_ctx_dalloc(ctx, (size_t)(M * r) * sizeof(__nv_bfloat16))))
        return ctx->err.status;
    if (du16 && lora_fuse() && lq_cuda_dy_du_fits(gy, N, gy16, ld, B16, r)) {
        LQ_TRY(lq_cuda_dy_du(ctx, gy, M, N, gy16, ld, B16, r, s, du16, lddu));
    } else {
        LQ_TRY(lq_cuda_to_bf16(ctx, gy16, ld, gy, N, M, N));
        if (du16) {
            float *du = (float *)lq_ctx_dalloc(ctx, (size_t)(M * r) * sizeof(float));
            if (!du) return ctx->err.status;
            LQ_TRY(gemm_bf16(ctx, false, false, false, M, r, N, s, gy16, ld, B16, r, 0.0f, du, r));
            LQ_TRY(lq_cuda_to_bf16(ctx, du16, lddu, du, r, M, r));
        }
    }
    const __nv_bfloat16 *h16 = NULL; /* dA's h = drop(x), row stride ldh */
    int64_t ldh = K;
    if (gA && p > 0.0f && !(h16 = dropped_bf16(ctx, n, M * K))) return ctx->err.status;
    __nv_bfloat16 *wc = NULL; /* [deq(W) ; A] (N + r, K) when cat */
    if (cat && !(wc = (__nv_bfloat16 *)lq_ctx_dalloc(ctx, (size_t)((N + r) * K) * sizeof(__nv_bfloat16))))
        return ctx->err.status;
    LQ_TRY(lq_cuda_fork(ctx));
    lq_status st = LQ_OK;
    if (wc) { /* A into wc's last r rows, on the side, marked for dX's product */
        const __nv_bfloat16 *A16 = (const __nv_bfloat16 *)n->saved[2];
        cudaError_t e = cudaMemcpyAsync(wc + N * K, A16, (size_t)(r * K) * sizeof(__nv_bfloat16),
                                        cudaMemcpyDeviceToDevice, (cudaStream_t)lq_cuda_side_stream(ctx));
        st = e == cudaSuccess ? lq_cuda_side_mark(ctx)
                              : LQ_ERR(&ctx->err, LQ_ERR_INTERNAL, "lora_linear: copying A beside W: %s",
                                       cudaGetErrorString(e));
    }
    /* x's bf16 copy for dA converted on the side too (dA is its only reader here), off the main
     * stream's path; often it is still the forward's, or a sibling's (q, k, v; gate, up) */
    if (st == LQ_OK && gA && !h16 && !(h16 = (const __nv_bfloat16 *)lq_cuda_act_bf16_side(ctx, n->in[0], &ldh)))
        st = ctx->err.status;
    if (st == LQ_OK && gB) st = gemm_bf16(ctx, true, true, false, N, r, M, 1.0f, gy16, ld, u16, r, 1.0f, gB, r);
    if (st == LQ_OK && gA) st = gemm_bf16(ctx, true, true, false, r, K, M, 1.0f, du16, lddu, h16, ldh, 1.0f, gA, K);
    if (st == LQ_OK && gx) st = lora_bwd_dx(ctx, n, gx, beta0, gy16, ld, du16, lddu, wc);
    lq_status js = lq_cuda_join(ctx);
    LQ_TRY(st != LQ_OK ? st : js);
    lq_ctx_reset_to(ctx, mark);
    return LQ_OK;
}

/* y = x deq(W)^T (+ b), then u (M, r) = s h A^T with h = drop(x), then y += u B^T: the CPU's
 * order. s is the gemm's alpha (the CPU scales the product after the sgemm: one rounding apart). */
extern "C" lq_status lq_cuda_lora_linear_fwd(lq_ctx *ctx, lq_node *n) {
    const lq_tensor *x = n->in[0], *w = n->in[1];
    int64_t N = n->ip[0], K = n->ip[1], r = n->ip[5], M = rows_of(n);
    float s = n->fp[0], *y = (float *)n->out->data;
    const float *xd = (const float *)x->data;
    if (M == 0 || N == 0) return LQ_OK;
    if (lora_bf16_path(ctx, n)) {
        return lora_fwd_bf16(ctx, n);
    }
    LQ_TRY(qmm_forward(ctx, w, xd, y, M, N, K)); /* an f32 W is used in place: no copy */
    if (n->n_in == 5) {
        k_add_bias<<<lq_cuda_blocks(M * N), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(
            y, (const float *)n->in[4]->data, N, M * N);
        LQ_CUDA_LAUNCHED(ctx, "lora_linear bias");
    }
    float *u = NULL;
    if (n->recorded) {
        u = (float *)lq_ctx_dalloc(ctx, (size_t)(M * r) * sizeof(float));
        if (!u) return ctx->err.status;
        n->saved[0] = u;
    }
    lq_ctx_mark mark = lq_ctx_get_mark(ctx);
    if (!u && !(u = (float *)lq_ctx_dalloc(ctx, (size_t)(M * r) * sizeof(float)))) return ctx->err.status;
    float *hbuf = NULL;
    if (n->fp[1] > 0.0f && !(hbuf = (float *)lq_ctx_dalloc(ctx, (size_t)(M * K) * sizeof(float)))) return ctx->err.status;
    const float *h = dropped(ctx, n, hbuf, M * K);
    if (!h) return ctx->err.status;
    /* u = s h A^T (K = 0: zeros) */
    LQ_TRY(lq_cuda_gemm(ctx, false, true, M, r, K, s, h, K, 0, (const float *)n->in[2]->data, K, 0, 0.0f, u, r, 0, 1));
    /* y += u B^T */
    LQ_TRY(lq_cuda_gemm(ctx, false, true, M, N, r, 1.0f, u, r, 0, (const float *)n->in[3]->data, r, 0, 1.0f, y, N, 0,
                        1));
    lq_ctx_reset_to(ctx, mark);
    return LQ_OK;
}

/* With u = s h A^T, h = drop(x) = m x / q, y = x W^T + b + u B^T (op_lora_linear.c):
 *   dB (N, r) += dY^T u;   du (M, r) = s dY B;   dA (r, K) += du^T h;
 *   dx (M, K) += dY deq(W) + m (du A) / q;   db (N) += sum over rows of dY.
 * Every gradient buffer is fetched before the scratch mark (lq_grad_get may allocate). */
extern "C" lq_status lq_cuda_lora_linear_bwd(lq_ctx *ctx, lq_node *n) {
    const lq_tensor *w = n->in[1];
    int64_t N = n->ip[0], K = n->ip[1], r = n->ip[5], M = rows_of(n);
    float s = n->fp[0], p = n->fp[1];
    float *gx, *gA, *gB, *gb = NULL;
    bool fx; /* gx fresh: the base product's first tile assigns (beta 0) */
    LQ_TRY(lq_grad_get_fresh(ctx, n->in[0], &gx, &fx));
    LQ_TRY(lq_grad_get(ctx, n->in[2], &gA));
    LQ_TRY(lq_grad_get(ctx, n->in[3], &gB));
    if (n->n_in == 5) LQ_TRY(lq_grad_get(ctx, n->in[4], &gb));
    if (fx && (M == 0 || N == 0 || K == 0)) LQ_TRY(lq_cuda_fill_f32(ctx, gx, 0.0f, lq_numel(n->in[0])));
    if (M == 0 || N == 0) return LQ_OK;
    float beta0 = fx && K > 0 ? 0.0f : 1.0f;
    const float *gy = (const float *)n->out->grad->data, *u = (const float *)n->saved[0];
    const float *Ad = (const float *)n->in[2]->data, *Bd = (const float *)n->in[3]->data;
    if (gb) {
        k_colsum_add<<<lq_cuda_blocks(N), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(gb, gy, M, N);
        LQ_CUDA_LAUNCHED(ctx, "lora_linear bias grad");
    }
    if (lora_bf16_path(ctx, n)) return lora_bwd_bf16(ctx, n, gx, gA, gB, beta0);
    if (!u)
        return LQ_ERR(&ctx->err, LQ_ERR_INTERNAL,
                      "lora_linear: the backward found no saved u from the forward (math mode changed?)");
    if (gB) LQ_TRY(lq_cuda_gemm(ctx, true, false, N, r, M, 1.0f, gy, N, 0, u, r, 0, 1.0f, gB, r, 0, 1));
    if (gx && K > 0) LQ_TRY(qmm(ctx, w, true, gy, gx, M, N, K, beta0));
    if ((!gA && !gx) || K == 0) return LQ_OK;
    lq_ctx_mark mark = lq_ctx_get_mark(ctx);
    float *du = (float *)lq_ctx_dalloc(ctx, (size_t)(M * r) * sizeof(float)), *buf = NULL;
    if (!du) return ctx->err.status;
    if (p > 0.0f && !(buf = (float *)lq_ctx_dalloc(ctx, (size_t)(M * K) * sizeof(float)))) return ctx->err.status;
    /* du = s dY B */
    LQ_TRY(lq_cuda_gemm(ctx, false, false, M, r, N, s, gy, N, 0, Bd, r, 0, 0.0f, du, r, 0, 1));
    if (gA) {
        const float *h = dropped(ctx, n, buf, M * K);
        if (!h) return ctx->err.status;
        LQ_TRY(lq_cuda_gemm(ctx, true, false, r, K, M, 1.0f, du, r, 0, h, K, 0, 1.0f, gA, K, 0, 1));
    }
    if (gx) {
        if (p > 0.0f) { /* buf = du A, then gx += m buf / q (buf's h is no longer needed) */
            LQ_TRY(lq_cuda_gemm(ctx, false, false, M, K, r, 1.0f, du, r, 0, Ad, K, 0, 0.0f, buf, K, 0, 1));
            LQ_TRY(dropout_apply(ctx, true, (uint64_t)n->ip[7], (uint64_t)n->ip[6], p, buf, gx, M * K));
        } else {
            LQ_TRY(lq_cuda_gemm(ctx, false, false, M, K, r, 1.0f, du, r, 0, Ad, K, 0, 1.0f, gx, K, 0, 1));
        }
    }
    lq_ctx_reset_to(ctx, mark);
    return LQ_OK;
}
