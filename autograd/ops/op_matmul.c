/* autograd/ops/op_matmul.c: batched matrix product with optional transposes, on cblas_sgemm. */
#include <cblas.h>
#include <stdio.h>

#include "autograd/autograd_impl.h"

/* A matrix as sgemm sees it: row-major storage at p with leading dimension ld; phys_t when the
 * logical matrix is stored transposed (a transposed view), which sgemm absorbs in its flag. */
typedef struct mat {
    const float *p;
    int64_t ld;
    bool phys_t;
} mat;

/* Rows / cols of the logical matrix of t (its last two dims). */
static int64_t rows(const lq_tensor *t) { return t->ne[t->ndim - 2]; }
static int64_t cols(const lq_tensor *t) { return t->ne[t->ndim - 1]; }

/* How t's last two dims sit in memory: rows contiguous, or columns contiguous (transposed). */
static bool layout_ok(const lq_tensor *t) {
    size_t rs = t->nb[t->ndim - 2], cs = t->nb[t->ndim - 1];
    if (cs == sizeof(float) && (rs >= (size_t)cols(t) * sizeof(float) || rows(t) == 1)) return true;
    if (rs == sizeof(float) && (cs >= (size_t)rows(t) * sizeof(float) || cols(t) == 1)) return true;
    return false;
}

static mat mat_of(const lq_tensor *t, size_t byte_off) {
    mat m;
    m.p = (const float *)((const char *)t->data + byte_off);
    size_t rs = t->nb[t->ndim - 2], cs = t->nb[t->ndim - 1];
    m.phys_t = !(cs == sizeof(float) && (rs >= (size_t)cols(t) * sizeof(float) || rows(t) == 1));
    if (!m.phys_t) m.ld = rows(t) == 1 ? (cols(t) > 0 ? cols(t) : 1) : (int64_t)(rs / sizeof(float));
    else m.ld = cols(t) == 1 ? (rows(t) > 0 ? rows(t) : 1) : (int64_t)(cs / sizeof(float));
    if (m.ld < 1) m.ld = 1;
    return m;
}

/* C (m x n, ld ldc) = beta C + op(A) op(B), op(X) = X^T when tX. */
static void gemm(bool ta, mat A, bool tb, mat B, float *C, int64_t ldc, int64_t m, int64_t n, int64_t k, float beta) {
    if (m == 0 || n == 0) return;
    if (k == 0) {
        if (beta == 0.0f)
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = 0; j < n; j++) C[i * ldc + j] = 0.0f;
        return;
    }
    cblas_sgemm(CblasRowMajor, (ta != A.phys_t) ? CblasTrans : CblasNoTrans, (tb != B.phys_t) ? CblasTrans : CblasNoTrans,
                (int)m, (int)n, (int)k, 1.0f, A.p, (int)A.ld, B.p, (int)B.ld, beta, C, (int)ldc);
}

/* Byte offset of batch index bi in t (batch dims are all but the last two). */
static size_t batch_off(const lq_tensor *t, int64_t bi) {
    size_t off = 0;
    for (int d = t->ndim - 3; d >= 0; d--) {
        off += (size_t)(bi % t->ne[d]) * t->nb[d];
        bi /= t->ne[d];
    }
    return off;
}

static int64_t batch_count(const lq_tensor *t) {
    int64_t n = 1;
    for (int d = 0; d < t->ndim - 2; d++) n *= t->ne[d];
    return n;
}

/* The batch of a shared 2D b can fold into M when a is plainly contiguous and not transposed. */
static bool can_fold(const lq_node *n) {
    const lq_tensor *a = n->in[0], *b = n->in[1];
    return b->ndim == 2 && a->ndim > 2 && !n->ip[0] && lq_is_contiguous(a);
}

static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    (void)ctx;
    const lq_tensor *a = n->in[0], *b = n->in[1];
    bool ta = n->ip[0], tb = n->ip[1];
    int64_t M = n->out->ne[n->out->ndim - 2], N = n->out->ne[n->out->ndim - 1];
    int64_t K = ta ? rows(a) : cols(a);
    float *c = n->out->data;
    int64_t nbatch = batch_count(n->out);
    if (can_fold(n)) {
        mat A = {a->data, K, false};
        gemm(false, A, tb, mat_of(b, 0), c, N, M * nbatch, N, K, 0.0f);
        return LQ_OK;
    }
    for (int64_t bi = 0; bi < nbatch; bi++) {
        mat A = mat_of(a, batch_off(a, bi));
        mat B = mat_of(b, b->ndim > 2 ? batch_off(b, bi) : 0);
        gemm(ta, A, tb, B, c + bi * M * N, N, M, N, K, 0.0f);
    }
    return LQ_OK;
}

/* C = op(A) op(B) with op(X) = X or X^T. From dL/dop(A) = dC op(B)^T and dL/dop(B) = op(A)^T dC:
 *   A not transposed: dA (M x K) += dC op(B)^T
 *   A transposed:     dA (K x M) += op(B) dC^T
 *   B not transposed: dB (K x N) += op(A)^T dC
 *   B transposed:     dB (N x K) += dC^T op(A)
 * sgemm with beta = 1 accumulates; a shared 2D B sums its grad over the batch. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    const lq_tensor *a = n->in[0], *b = n->in[1];
    bool ta = n->ip[0], tb = n->ip[1];
    int64_t M = n->out->ne[n->out->ndim - 2], N = n->out->ne[n->out->ndim - 1];
    int64_t K = ta ? rows(a) : cols(a);
    float *ga, *gb;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &ga));
    LQ_TRY(lq_grad_get(ctx, n->in[1], &gb));
    const float *gc = n->out->grad->data;
    int64_t nbatch = batch_count(n->out);
    if (can_fold(n)) {
        int64_t MB = M * nbatch;
        mat A = {a->data, K, false}, dC = {gc, N, false};
        if (ga) gemm(false, dC, !tb, mat_of(b, 0), ga, K, MB, K, N, 1.0f);
        if (gb) {
            if (!tb) gemm(true, A, false, dC, gb, N, K, N, MB, 1.0f);
            else gemm(true, dC, false, A, gb, K, N, K, MB, 1.0f);
        }
        return LQ_OK;
    }
    for (int64_t bi = 0; bi < nbatch; bi++) {
        mat A = mat_of(a, batch_off(a, bi));
        mat B = mat_of(b, b->ndim > 2 ? batch_off(b, bi) : 0);
        mat dC = {gc + bi * M * N, N, false};
        if (ga) {
            float *g = ga + bi * M * K;
            if (!ta) gemm(false, dC, !tb, B, g, K, M, K, N, 1.0f);
            else gemm(tb, B, true, dC, g, M, K, M, N, 1.0f);
        }
        if (gb) {
            float *g = gb + (b->ndim > 2 ? bi * K * N : 0);
            if (!tb) gemm(!ta, A, false, dC, g, N, K, N, M, 1.0f);
            else gemm(true, dC, ta, A, g, K, N, K, M, 1.0f);
        }
    }
    return LQ_OK;
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    lq_tensor *a = in[0], *b = in[1];
    /* exercise strided (transposed-view) operands as well as flags */
    if (c->ip[2]) a = lq_transpose(ctx, a, -1, -2);
    return lq_matmul_t(ctx, a, b, c->ip[0] != 0, c->ip[1] != 0);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t M = lq_rng_int(rng, 1, 4), K = lq_rng_int(rng, 1, 5), N = lq_rng_int(rng, 1, 4);
    int64_t B = lq_rng_int(rng, 1, 3);
    bool ta = lq_rng_int(rng, 0, 1), tb = lq_rng_int(rng, 0, 1), view = lq_rng_int(rng, 0, 1);
    bool shared = lq_rng_int(rng, 0, 1); /* b without batch dims */
    /* a's stored shape: logical op(a) is (M, K); a view transposes once more */
    bool stored_t = ta != view;
    int64_t as[3] = {B, stored_t ? K : M, stored_t ? M : K};
    int64_t bs[3] = {B, tb ? N : K, tb ? K : N};
    c->n_in = 2;
    c->in[0] = lq_gc_input(ctx, rng, 3, as, -1, 1);
    c->in[1] = shared ? lq_gc_input(ctx, rng, 2, bs + 1, -1, 1) : lq_gc_input(ctx, rng, 3, bs, -1, 1);
    c->ip[0] = ta;
    c->ip[1] = tb;
    c->ip[2] = view;
    c->call = gc_call;
    snprintf(c->desc, sizeof c->desc, "B=%lld M=%lld K=%lld N=%lld ta=%d tb=%d view=%d shared_b=%d", (long long)B,
             (long long)M, (long long)K, (long long)N, ta, tb, view, shared);
    return ctx->err.status;
}

const lq_op_def lq_op_matmul = {"matmul", fwd, bwd, gc_make};

lq_tensor *lq_matmul_t(lq_ctx *ctx, lq_tensor *a, lq_tensor *b, bool trans_a, bool trans_b) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!lq_check_f32(ctx, "matmul", "a", a) || !lq_check_f32(ctx, "matmul", "b", b)) return NULL;
    if (a->ndim < 2 || b->ndim < 2) return lq_shape_error(ctx, "matmul", a, b, "need at least 2 dims each");
    int64_t M = trans_a ? cols(a) : rows(a), Ka = trans_a ? rows(a) : cols(a);
    int64_t Kb = trans_b ? cols(b) : rows(b), N = trans_b ? rows(b) : cols(b);
    if (Ka != Kb) return lq_shape_error(ctx, "matmul", a, b, "do not fit: inner dimensions differ");
    if (b->ndim > 2) {
        if (b->ndim != a->ndim) return lq_shape_error(ctx, "matmul", a, b, "differ in batch dims");
        for (int d = 0; d < a->ndim - 2; d++)
            if (a->ne[d] != b->ne[d]) return lq_shape_error(ctx, "matmul", a, b, "differ in batch dims");
    }
    if (!layout_ok(a)) a = lq_contiguous(ctx, a);
    if (!layout_ok(b)) b = lq_contiguous(ctx, b);
    if (!a || !b) return NULL;
    LQ_OP_CHECK(ctx, M < INT32_MAX && N < INT32_MAX && Ka < INT32_MAX, LQ_ERR_UNSUPPORTED,
                "matmul: dimensions beyond sgemm's int range");
    lq_tensor *in[2] = {a, b};
    lq_node *n = lq_node_begin(ctx, &lq_op_matmul, 2, in);
    if (!n) return NULL;
    n->ip[0] = trans_a;
    n->ip[1] = trans_b;
    int64_t ne[LQ_MAX_DIMS];
    for (int d = 0; d < a->ndim - 2; d++) ne[d] = a->ne[d];
    ne[a->ndim - 2] = M;
    ne[a->ndim - 1] = N;
    if (!lq_node_output(ctx, n, a->ndim, ne)) return NULL;
    return lq_node_finish(ctx, n);
}

lq_tensor *lq_matmul(lq_ctx *ctx, lq_tensor *a, lq_tensor *b) { return lq_matmul_t(ctx, a, b, false, false); }
