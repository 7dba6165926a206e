/* autograd/ops/cuda_linear.cu: CUDA matmul (forward and backward) on lq_cuda_gemm, mirroring op_matmul.c;
 * the group's table also lists qmatmul and lora_linear, whose kernels are in cuda_qlinear.cu. */
#include "autograd/cuda_impl.h"
#include "core/cuda_check.h"

/* cuda_qlinear.cu */
extern "C" lq_status lq_cuda_qmatmul_fwd(lq_ctx *ctx, lq_node *n);
extern "C" lq_status lq_cuda_qmatmul_bwd(lq_ctx *ctx, lq_node *n);
extern "C" lq_status lq_cuda_lora_linear_fwd(lq_ctx *ctx, lq_node *n);
extern "C" lq_status lq_cuda_lora_linear_bwd(lq_ctx *ctx, lq_node *n);

/* A matrix as op_matmul.c's sgemm sees it: row-major storage at p with leading dimension ld (in
 * elements); phys_t when the logical matrix is stored transposed (a transposed view), which the
 * gemm absorbs in its flag: the gemm transposes it iff (logical flag != phys_t). */
typedef struct mat {
    const float *p;
    int64_t ld;
    bool phys_t;
} mat;

static int64_t rows(const lq_tensor *t) { return t->ne[t->ndim - 2]; }
static int64_t cols(const lq_tensor *t) { return t->ne[t->ndim - 1]; }

/* op_matmul.c's mat_of, line for line (the entry function made every operand fit one of the two
 * layouts). */
static mat mat_of(const lq_tensor *t) {
    mat m;
    m.p = (const float *)t->data;
    size_t rs = t->nb[t->ndim - 2], cs = t->nb[t->ndim - 1];
    m.phys_t = !(cs == sizeof(float) && (rs >= (size_t)cols(t) * sizeof(float) || rows(t) == 1));
    if (!m.phys_t) m.ld = rows(t) == 1 ? (cols(t) > 0 ? cols(t) : 1) : (int64_t)(rs / sizeof(float));
    else m.ld = cols(t) == 1 ? (rows(t) > 0 ? rows(t) : 1) : (int64_t)(cs / sizeof(float));
    if (m.ld < 1) m.ld = 1;
    return m;
}

/* The batch of the product: index bi = o * n_in + i (the CPU's order: the last batch dim runs
 * fastest), o over dim 0 of a 4-dim product, i over dim ndim-3. An operand's matrix bi starts at
 * m.p + o * so + i * si (elements); si = so = 0 for an operand shared by every batch. */
typedef struct opnd {
    mat m;
    int64_t si, so;
} opnd;

static int64_t n_inner(const lq_tensor *out) { return out->ndim >= 3 ? out->ne[out->ndim - 3] : 1; }
static int64_t n_outer(const lq_tensor *out) { return out->ndim == 4 ? out->ne[0] : 1; }

/* t's matrices over the batch of a product with nd dims (t has nd dims too, or 2: shared). Byte
 * strides of f32 views are whole floats. */
static opnd opnd_of(const lq_tensor *t, int nd) {
    opnd o = {mat_of(t), 0, 0};
    if (t->ndim != nd || nd < 3) return o;
    if (t->ne[nd - 3] > 1) o.si = (int64_t)(t->nb[nd - 3] / sizeof(float));
    if (nd == 4 && t->ne[0] > 1) o.so = (int64_t)(t->nb[0] / sizeof(float));
    return o;
}

/* A contiguous (M, N)-per-batch buffer (outputs, gradients, dC) as an operand. */
static opnd packed(const float *p, int64_t ld, int64_t per, int64_t n_in) {
    opnd o = {{p, ld, false}, per, per * n_in};
    return o;
}

/* C (m x n, row stride ldc) = beta C + op(X) op(Y) for every batch, op(.) the logical flag tX /
 * tY combined with the operand's storage as op_matmul.c's gemm does. One strided-batched call
 * when every operand's batch has a single stride, else one per outer index. An output that all
 * batches share (stride 0: a shared b's gradient) is accumulated one batch at a time, since the
 * matrices of a batched call may be computed concurrently. */
static lq_status bgemm(lq_ctx *ctx, unsigned fz, int64_t n_out, int64_t n_in, bool tX, opnd X, bool tY, opnd Y,
                       float *C, int64_t ldc, int64_t ci, int64_t co, int64_t m, int64_t n, int64_t k, float beta) {
    bool fx = tX != X.m.phys_t, fy = tY != Y.m.phys_t;
    int64_t nb = n_out * n_in;
    if (nb <= 0) return LQ_OK;
    if (ci == 0 && co == 0 && nb > 1) {
        for (int64_t o = 0; o < n_out; o++)
            for (int64_t i = 0; i < n_in; i++)
                LQ_TRY(lq_cuda_gemm_frozen(ctx, fz, fx, fy, m, n, k, 1.0f, X.m.p + o * X.so + i * X.si, X.m.ld, 0,
                                           Y.m.p + o * Y.so + i * Y.si, Y.m.ld, 0, beta, C, ldc, 0, 1));
        return LQ_OK;
    }
    if (n_out == 1 || n_in == 1 || (X.so == X.si * n_in && Y.so == Y.si * n_in && co == ci * n_in)) {
        /* with n_in == 1 the batch steps over the outer dim, else over the inner one */
        int64_t sx = n_in == 1 ? X.so : X.si, sy = n_in == 1 ? Y.so : Y.si, sc = n_in == 1 ? co : ci;
        return lq_cuda_gemm_frozen(ctx, fz, fx, fy, m, n, k, 1.0f, X.m.p, X.m.ld, sx, Y.m.p, Y.m.ld, sy, beta, C, ldc,
                                   sc, nb);
    }
    for (int64_t o = 0; o < n_out; o++)
        LQ_TRY(lq_cuda_gemm_frozen(ctx, fz, fx, fy, m, n, k, 1.0f, X.m.p + o * X.so, X.m.ld, X.si, Y.m.p + o * Y.so,
                                   Y.m.ld, Y.si, beta, C + o * co, ldc, ci, n_in));
    return LQ_OK;
}

/* op_matmul.c's can_fold: a shared 2-D b and a plainly contiguous, untransposed a fold the batch
 * into M. */
static bool can_fold(const lq_node *n) {
    const lq_tensor *a = n->in[0], *b = n->in[1];
    return b->ndim == 2 && a->ndim > 2 && !n->ip[0] && lq_is_contiguous(a);
}

static int64_t batch_count(const lq_tensor *t) {
    int64_t c = 1;
    for (int d = 0; d < t->ndim - 2; d++) c *= t->ne[d];
    return c;
}

/* C = op(a) op(b) per batch: node ip[0] = trans_a, ip[1] = trans_b; out contiguous (..., M, N). */
static lq_status mm_fwd(lq_ctx *ctx, lq_node *n) {
    const lq_tensor *a = n->in[0], *b = n->in[1], *out = n->out;
    bool ta = n->ip[0], tb = n->ip[1];
    int nd = out->ndim;
    int64_t M = out->ne[nd - 2], N = out->ne[nd - 1], K = ta ? rows(a) : cols(a);
    float *c = (float *)out->data;
    unsigned fa = lq_cuda_is_frozen(a) ? LQ_GEMM_FROZEN_A : 0, fb = lq_cuda_is_frozen(b) ? LQ_GEMM_FROZEN_B : 0;
    if (can_fold(n)) {
        mat B = mat_of(b);
        return lq_cuda_gemm_frozen(ctx, fa | fb, false, tb != B.phys_t, M * batch_count(out), N, K, 1.0f,
                                   (const float *)a->data, K, 0, B.p, B.ld, 0, 0.0f, c, N, 0, 1);
    }
    int64_t no = n_outer(out), ni = n_inner(out);
    return bgemm(ctx, fa | fb, no, ni, ta, opnd_of(a, nd), tb, opnd_of(b, nd), c, N, M * N, M * N * ni, M, N, K, 0.0f);
}

/* The CPU backward's cases (op_matmul.c), with dC = out->grad:
 *   A not transposed: dA (M x K) += dC op(B)^T;   A transposed: dA (K x M) += op(B) dC^T
 *   B not transposed: dB (K x N) += op(A)^T dC;   B transposed: dB (N x K) += dC^T op(A)
 * a shared 2-D b sums its gradient over the batch. Gradients are contiguous in the inputs'
 * logical shapes. */
static lq_status mm_bwd(lq_ctx *ctx, lq_node *n) {
    const lq_tensor *a = n->in[0], *b = n->in[1], *out = n->out;
    bool ta = n->ip[0], tb = n->ip[1];
    int nd = out->ndim;
    int64_t M = out->ne[nd - 2], N = out->ne[nd - 1], K = ta ? rows(a) : cols(a);
    float *ga, *gb;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &ga));
    LQ_TRY(lq_grad_get(ctx, n->in[1], &gb));
    const float *gc = (const float *)out->grad->data;
    /* a frozen operand (the lm_head) as the gemm's A or B: its bf16 copy of the step (lq_cuda_gemm_frozen) */
    bool fa = lq_cuda_is_frozen(a), fb = lq_cuda_is_frozen(b);
    if (can_fold(n)) {
        int64_t MB = M * batch_count(out);
        const float *ap = (const float *)a->data;
        mat B = mat_of(b);
        if (ga)
            LQ_TRY(lq_cuda_gemm_frozen(ctx, fb ? LQ_GEMM_FROZEN_B : 0, false, (!tb) != B.phys_t, MB, K, N, 1.0f, gc, N,
                                       0, B.p, B.ld, 0, 1.0f, ga, K, 0, 1));
        if (gb) {
            unsigned f = fa ? (tb ? LQ_GEMM_FROZEN_B : LQ_GEMM_FROZEN_A) : 0;
            if (!tb)
                LQ_TRY(lq_cuda_gemm_frozen(ctx, f, true, false, K, N, MB, 1.0f, ap, K, 0, gc, N, 0, 1.0f, gb, N, 0, 1));
            else
                LQ_TRY(lq_cuda_gemm_frozen(ctx, f, true, false, N, K, MB, 1.0f, gc, N, 0, ap, K, 0, 1.0f, gb, K, 0, 1));
        }
        return LQ_OK;
    }
    int64_t no = n_outer(out), ni = n_inner(out);
    opnd A = opnd_of(a, nd), B = opnd_of(b, nd), dC = packed(gc, N, M * N, ni);
    if (ga) {
        if (!ta)
            LQ_TRY(bgemm(ctx, fb ? LQ_GEMM_FROZEN_B : 0, no, ni, false, dC, !tb, B, ga, K, M * K, M * K * ni, M, K, N,
                         1.0f));
        else
            LQ_TRY(bgemm(ctx, fb ? LQ_GEMM_FROZEN_A : 0, no, ni, tb, B, true, dC, ga, M, M * K, M * K * ni, K, M, N,
                         1.0f));
    }
    if (gb) {
        bool shared = b->ndim == 2 && nd > 2;
        int64_t ci = shared ? 0 : K * N, co = shared ? 0 : K * N * ni;
        unsigned f = fa ? (tb ? LQ_GEMM_FROZEN_B : LQ_GEMM_FROZEN_A) : 0;
        if (!tb) LQ_TRY(bgemm(ctx, f, no, ni, !ta, A, false, dC, gb, N, ci, co, K, N, M, 1.0f));
        else LQ_TRY(bgemm(ctx, f, no, ni, true, dC, ta, A, gb, K, ci, co, N, K, M, 1.0f));
    }
    return LQ_OK;
}

extern "C" const lq_cuda_op lq_cuda_ops_linear[] = {
    {"matmul", mm_fwd, mm_bwd},
    {"qmatmul", lq_cuda_qmatmul_fwd, lq_cuda_qmatmul_bwd},
    {"lora_linear", lq_cuda_lora_linear_fwd, lq_cuda_lora_linear_bwd},
    {NULL, NULL, NULL},
};
