/* autograd/ops/op_attention.c: scaled dot-product attention with causal / document masks and grouped-query heads. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "autograd/autograd_impl.h"

/* Node parameters: ip[0] causal, fp[0] scale; in[3] the doc ids (B, T) when given.
 * saved[0] P (B, Hq, T, T), the softmax probabilities, kept only when the node is recorded.
 * Every (b, h) pair is one independent attention problem; pairs are processed in chunks so a
 * no-grad forward needs at most about SCRATCH_FLOATS floats. */
#define SCRATCH_FLOATS ((int64_t)1 << 22)

typedef struct dims {
    int64_t B, T, Hq, Hkv, D, group;
    int ldq, ldk; /* row strides of a head's (T, D) matrix in q / k / v */
} dims;

static dims dims_of(const lq_node *n) {
    const lq_tensor *q = n->in[0], *k = n->in[1];
    dims d = {q->ne[0], q->ne[1], q->ne[2], k->ne[2], q->ne[3], 0, 0, 0};
    d.group = d.Hkv ? d.Hq / d.Hkv : 0;
    d.ldq = (int)(d.Hq * d.D);
    d.ldk = (int)(d.Hkv * d.D);
    return d;
}

/* Offsets of head h (of H) at batch b in a (B, T, H, D) tensor. */
static int64_t head_off(const dims *d, int64_t b, int64_t h, int64_t H) { return (b * d->T * H + h) * d->D; }

static int64_t pairs_per_chunk(const dims *d) {
    int64_t tt = d->T * d->T, c = tt ? SCRATCH_FLOATS / tt : 1;
    return c < 1 ? 1 : c;
}

/* Row i of pair (b, .) may see column j. */
static inline bool visible(const int32_t *doc_b, bool causal, int64_t i, int64_t j) {
    if (causal && j > i) return false;
    return !doc_b || doc_b[i] == doc_b[j];
}

/* In place on one pair's T score rows (batch b): masked, max-subtracted softmax. A row that sees
 * nothing (impossible with these masks, a row always sees itself) becomes all zeros. */
static void softmax_pair(const lq_node *n, const dims *d, int64_t b, float *S) {
    const int32_t *doc = n->n_in > 3 ? n->in[3]->data : NULL;
    const int32_t *doc_b = doc ? doc + b * d->T : NULL;
    bool causal = n->ip[0] != 0;
    int64_t T = d->T;
    for (int64_t i = 0; i < T; i++) {
        float *s = S + i * T;
        float mx = -INFINITY;
        for (int64_t j = 0; j < T; j++)
            if (visible(doc_b, causal, i, j) && s[j] > mx) mx = s[j];
        if (mx == -INFINITY) {
            for (int64_t j = 0; j < T; j++) s[j] = 0.0f;
            continue;
        }
        float sum = 0.0f;
        for (int64_t j = 0; j < T; j++) {
            s[j] = visible(doc_b, causal, i, j) ? expf(s[j] - mx) : 0.0f;
            sum += s[j];
        }
        float inv = 1.0f / sum;
        for (int64_t j = 0; j < T; j++) s[j] *= inv;
    }
}

/* Threads for a loop over `units` independent attention problems of T x T: one sgemm of
 * 256 x 256 x 64 is too small to split well across cores, so the pairs themselves are shared out
 * and each sgemm runs on one thread (OpenBLAS's OpenMP build goes single-threaded inside a
 * parallel region). Every pair is computed by the same calls in the same order either way; the
 * result is the same on 1 and 2 context threads as far as OpenBLAS's sgemm gives the same bits
 * split over its threads or not (bit-identical at q (2, 256, 6, 64), kv 2 heads; the no-grad chunk
 * loop therefore takes its thread count from all pairs, not the chunk's, so both paths agree). */
static int pair_threads(const lq_ctx *ctx, int64_t units, int64_t T) {
    int nt = ctx->n_threads;
    if (units < 2 || T * T < 4096) return 1;
    return nt > units ? (int)units : nt;
}

/* Per pair (b, h) with kv head kh = h / group:  S = scale Q_h K_kh^T (T, T), P = softmax(mask(S))
 * row-wise, O_h = P V_kh. Q_h is q at (b, 0, h, 0) read as a (T, D) matrix with row stride Hq*D,
 * so sgemm works on the (B, T, H, D) layout directly. */
static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    dims d = dims_of(n);
    if (lq_numel(n->out) == 0) return LQ_OK;
    const float *q = n->in[0]->data, *k = n->in[1]->data, *v = n->in[2]->data;
    float *o = n->out->data, scale = n->fp[0];
    int64_t T = d.T, tt = T * T, npairs = d.B * d.Hq;
    int64_t chunk = n->recorded ? npairs : pairs_per_chunk(&d);
    if (chunk > npairs) chunk = npairs;
    float *P = lq_ctx_alloc(ctx, (size_t)(chunk * tt) * sizeof(float));
    if (!P) return ctx->err.status;
    if (n->recorded) n->saved[0] = P;
    /* the thread count from all the pairs, not the chunk's: a chunk of one pair still runs inside
     * the parallel region, so its sgemm is the same single-threaded call as in the recorded path */
    int nt = pair_threads(ctx, npairs, T);
    for (int64_t p0 = 0; p0 < npairs; p0 += chunk) {
        int64_t np = npairs - p0 < chunk ? npairs - p0 : chunk;
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(dynamic, 1)
        for (int64_t e = 0; e < np; e++) {
            int64_t b = (p0 + e) / d.Hq, h = (p0 + e) % d.Hq, kh = h / d.group;
            float *Pe = P + e * tt;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)T, (int)d.D, scale,
                        q + head_off(&d, b, h, d.Hq), d.ldq, k + head_off(&d, b, kh, d.Hkv), d.ldk, 0.0f, Pe,
                        (int)T);
            softmax_pair(n, &d, b, Pe);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)d.D, (int)T, 1.0f, Pe, (int)T,
                        v + head_off(&d, b, kh, d.Hkv), d.ldk, 0.0f, o + head_off(&d, b, h, d.Hq), d.ldq);
        }
        if (n->recorded) P += np * tt;
    }
    return LQ_OK;
}

/* Per pair (b, h), kv head kh, with S = scale Q K^T, P = softmax_row(S) (masked entries P = 0),
 * O = P V:
 *   dV_kh += P^T dO                          (O is linear in V)
 *   dP     = dO V^T                          (O is linear in P)
 *   dS_ij  = P_ij (dP_ij - sum_l dP_il P_il)  (softmax Jacobian dP_il/dS_ij = P_il (delta_lj - P_ij),
 *                                             applied row by row; masked entries have P = 0, so
 *                                             they get dS = 0 and the mask needs no other care)
 *   dQ_h  += scale dS K_kh,  dK_kh += scale dS^T Q_h   (S is bilinear in Q and K)
 * Several q heads share a kv head: their dK / dV terms are summed by successive sgemm calls
 * with beta = 1 in a fixed order, so the result does not depend on the thread count. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    float *gq, *gk, *gv;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gq));
    LQ_TRY(lq_grad_get(ctx, n->in[1], &gk));
    LQ_TRY(lq_grad_get(ctx, n->in[2], &gv));
    dims d = dims_of(n);
    if (lq_numel(n->out) == 0 || (!gq && !gk && !gv)) return LQ_OK;
    const float *q = n->in[0]->data, *k = n->in[1]->data, *v = n->in[2]->data;
    const float *dO = n->out->grad->data, *P = n->saved[0];
    if (!P) return LQ_ERR(&ctx->err, LQ_ERR_STATE, "attention: backward without the saved probabilities");
    float scale = n->fp[0];
    int64_t T = d.T, tt = T * T, units = d.B * d.Hkv;
    int Ti = (int)T, Di = (int)d.D;
    /* One unit = one (b, kv head) and its group of q heads, in ascending order: every dK / dV sum
     * over the group is made by the same sgemm calls in the same order on any thread count, and
     * units write disjoint parts of dQ / dK / dV. One T x T dS scratch per thread. */
    int nt = pair_threads(ctx, units, T);
    float *dS_all = NULL;
    if (gq || gk) {
        dS_all = lq_ctx_alloc(ctx, (size_t)(nt * tt) * sizeof(float));
        if (!dS_all) return ctx->err.status;
    }
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(dynamic, 1)
    for (int64_t u = 0; u < units; u++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *dS = dS_all ? dS_all + (int64_t)tid * tt : NULL;
        int64_t b = u / d.Hkv, kh = u % d.Hkv;
        for (int64_t h = kh * d.group; h < (kh + 1) * d.group; h++) {
            const float *Pp = P + (b * d.Hq + h) * tt;
            const float *dOh = dO + head_off(&d, b, h, d.Hq);
            if (gv)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Ti, Di, Ti, 1.0f, Pp, Ti, dOh, d.ldq, 1.0f,
                            gv + head_off(&d, b, kh, d.Hkv), d.ldk);
            if (!dS) continue;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Ti, Ti, Di, 1.0f, dOh, d.ldq,
                        v + head_off(&d, b, kh, d.Hkv), d.ldk, 0.0f, dS, Ti);
            for (int64_t r = 0; r < T; r++) {
                const float *pr = Pp + r * T;
                float *g = dS + r * T;
                float dot = 0.0f;
                for (int64_t j = 0; j < T; j++) dot += g[j] * pr[j];
                for (int64_t j = 0; j < T; j++) g[j] = pr[j] * (g[j] - dot);
            }
            if (gq)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Ti, Di, Ti, scale, dS, Ti,
                            k + head_off(&d, b, kh, d.Hkv), d.ldk, 1.0f, gq + head_off(&d, b, h, d.Hq), d.ldq);
            if (gk)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Ti, Di, Ti, scale, dS, Ti,
                            q + head_off(&d, b, h, d.Hq), d.ldq, 1.0f, gk + head_off(&d, b, kh, d.Hkv), d.ldk);
        }
    }
    return LQ_OK;
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    const lq_gc_case *c = user;
    lq_attn_params p = {c->fp[0], c->ip[0] != 0, n_in > 3 ? in[3] : NULL};
    lq_tensor *q = in[0];
    if (c->ip[1]) q = lq_transpose(ctx, q, 1, 2); /* q stored (B, Hq, T, D): a strided view */
    return lq_attention(ctx, q, in[1], in[2], &p);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t B = lq_rng_int(rng, 1, 2), T = lq_rng_int(rng, 1, 5), D = lq_rng_int(rng, 1, 4);
    int64_t Hkv = lq_rng_int(rng, 1, 2), Hq = Hkv * lq_rng_int(rng, 1, 2);
    bool causal = lq_rng_int(rng, 0, 1), with_doc = lq_rng_int(rng, 0, 1), view = lq_rng_int(rng, 0, 1);
    float scale = lq_rng_int(rng, 0, 1) ? 0.0f : 0.8f;
    c->n_in = with_doc ? 4 : 3;
    c->in[0] = view ? lq_gc_input(ctx, rng, 4, (int64_t[]){B, Hq, T, D}, -1.5f, 1.5f)
                    : lq_gc_input(ctx, rng, 4, (int64_t[]){B, T, Hq, D}, -1.5f, 1.5f);
    c->in[1] = lq_gc_input(ctx, rng, 4, (int64_t[]){B, T, Hkv, D}, -1.5f, 1.5f);
    c->in[2] = lq_gc_input(ctx, rng, 4, (int64_t[]){B, T, Hkv, D}, -1, 1);
    if (with_doc && !(c->in[3] = lq_gc_doc_ids(ctx, rng, B, T, 2))) return ctx->err.status; /* 1/2 per token */
    c->ip[0] = causal;
    c->ip[1] = view;
    c->fp[0] = scale;
    c->call = gc_call;
    snprintf(c->desc, sizeof c->desc, "B=%lld T=%lld Hq=%lld Hkv=%lld D=%lld causal=%d doc=%d q_view=%d scale=%g",
             (long long)B, (long long)T, (long long)Hq, (long long)Hkv, (long long)D, causal, with_doc, view,
             (double)scale);
    return ctx->err.status;
}

const lq_op_def lq_op_attention = {"attention", fwd, bwd, gc_make};

lq_tensor *lq_attention(lq_ctx *ctx, lq_tensor *q, lq_tensor *k, lq_tensor *v, const lq_attn_params *p) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!lq_check_f32(ctx, "attention", "q", q) || !lq_check_f32(ctx, "attention", "k", k) ||
        !lq_check_f32(ctx, "attention", "v", v))
        return NULL;
    lq_attn_params def = {0.0f, true, NULL};
    if (!p) p = &def;
    if (q->ndim != 4) return lq_shape_error(ctx, "attention", q, k, "do not fit: q must be (B, T, Hq, D)");
    if (k->ndim != 4 || k->ne[0] != q->ne[0] || k->ne[1] != q->ne[1] || k->ne[3] != q->ne[3])
        return lq_shape_error(ctx, "attention", q, k, "do not fit: q (B, T, Hq, D) needs k (B, T, Hkv, D)");
    if (!lq_same_shape(k, v)) return lq_shape_error(ctx, "attention", k, v, "differ: k and v must match");
    if (k->ne[2] < 1 || q->ne[2] % k->ne[2] != 0)
        return lq_shape_error(ctx, "attention", q, k, "do not fit: Hq must be a multiple of Hkv");
    int64_t B = q->ne[0], T = q->ne[1], D = q->ne[3];
    LQ_OP_CHECK(ctx, T < INT32_MAX && q->ne[2] * D < INT32_MAX, LQ_ERR_UNSUPPORTED,
                "attention: dimensions beyond sgemm's int range");
    lq_tensor *doc = p->doc;
    if (doc) {
        LQ_OP_CHECK(ctx, doc->dtype == LQ_DTYPE_I32 && doc->device == LQ_DEVICE_CPU, LQ_ERR_ARG,
                    "attention: doc must be an i32 CPU tensor, got %s", lq_dtype_name(doc->dtype));
        if (doc->ndim != 2 || doc->ne[0] != B || doc->ne[1] != T)
            return lq_shape_error(ctx, "attention", q, doc, "do not fit: doc ids must be (B, T)");
        if (!lq_is_contiguous(doc)) { /* a copy; ids carry no gradient, so no node */
            lq_tensor *dc = lq_new(ctx, LQ_DTYPE_I32, 2, doc->ne);
            if (!dc) return NULL;
            int32_t *dd = dc->data;
            for (int64_t b = 0; b < B; b++)
                for (int64_t t = 0; t < T; t++)
                    dd[b * T + t] = *(const int32_t *)((const char *)doc->data + b * doc->nb[0] + t * doc->nb[1]);
            doc = dc;
        }
    }
    float scale = p->scale != 0.0f ? p->scale : (D > 0 ? 1.0f / sqrtf((float)D) : 1.0f);
    q = lq_contiguous(ctx, q);
    k = lq_contiguous(ctx, k);
    v = lq_contiguous(ctx, v);
    lq_tensor *in[4] = {q, k, v, doc};
    lq_node *n = lq_node_begin(ctx, &lq_op_attention, doc ? 4 : 3, in);
    if (!n) return NULL;
    n->ip[0] = p->causal;
    n->fp[0] = scale;
    if (!lq_node_output(ctx, n, 4, q->ne)) return NULL;
    return lq_node_finish(ctx, n);
}
