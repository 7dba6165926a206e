/* autograd/ops/op_dropout.c: inverted dropout with a counter-based mask that backward regenerates. */
#include <stdio.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "autograd/autograd_impl.h"
#include "autograd/ops/op_shared.h"

/* Element i of the call on (seed, stream) is kept iff its uniform draw is >= p. The draw depends
 * only on (seed, stream, i), so the mask is the same on any thread count and is never stored. */
static inline bool kept(uint64_t seed, uint64_t stream, int64_t i, float p) {
    return lq_u01_from_bits(lq_hash3(seed, stream, (uint64_t)i)) >= p;
}

/* The mask key of a call: lq_hash3(seed, stream, i) = lq_mix64(key + i). */
static inline uint64_t mask_key(uint64_t seed, uint64_t stream) {
    return lq_mix64(seed ^ lq_mix64(stream + 0x9e3779b97f4a7c15ULL));
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define DROPOUT_AVX512 1
/* Eight elements at once with AVX-512 (F + DQ for the 64-bit multiply and int64 -> float, VL for
 * the masked 256-bit float ops): the same mix64, the same 24-bit uniform (exact in float, so the
 * >= p comparison is the scalar one) and the same IEEE division, so every output bit equals the
 * scalar loop's. The hash is most of dropout's cost: scalar 64-bit multiplies, ~2 ns an element;
 * the LoRA adapters draw a mask for every input element of every adapted projection. */
__attribute__((target("avx512f,avx512dq,avx512vl"))) static inline __mmask8 kept8(uint64_t key, int64_t i, __m256 p) {
    const __m512i c1 = _mm512_set1_epi64((long long)0xbf58476d1ce4e5b9ULL);
    const __m512i c2 = _mm512_set1_epi64((long long)0x94d049bb133111ebULL);
    __m512i z = _mm512_add_epi64(_mm512_set1_epi64((long long)(key + (uint64_t)i)),
                                 _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0));
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)), c1);
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)), c2);
    z = _mm512_xor_si512(z, _mm512_srli_epi64(z, 31));
    __m256 u = _mm256_mul_ps(_mm512_cvtepi64_ps(_mm512_srli_epi64(z, 40)), _mm256_set1_ps(1.0f / 16777216.0f));
    return _mm256_cmp_ps_mask(u, p, _CMP_GE_OQ);
}

/* y[i] = kept ? x[i] / q : 0 (fwd), or gx[i] += gy[i] / q where kept (bwd), for i in [a, b), a and b
 * multiples of 8 except b = m at the end (the tail goes scalar). */
__attribute__((target("avx512f,avx512dq,avx512vl"))) static void run_avx512(bool bwd, uint64_t key, float p,
                                                                           float q, const float *x, float *y,
                                                                           int64_t a, int64_t b) {
    __m256 vp = _mm256_set1_ps(p), vq = _mm256_set1_ps(q);
    int64_t i = a;
    for (; i + 8 <= b; i += 8) {
        __mmask8 m = kept8(key, i, vp);
        __m256 d = _mm256_div_ps(_mm256_loadu_ps(x + i), vq);
        if (bwd) _mm256_storeu_ps(y + i, _mm256_mask_add_ps(_mm256_loadu_ps(y + i), m, _mm256_loadu_ps(y + i), d));
        else _mm256_storeu_ps(y + i, _mm256_maskz_mov_ps(m, d));
    }
    for (; i < b; i++) {
        bool kp = lq_u01_from_bits(lq_mix64(key + (uint64_t)i)) >= p;
        if (bwd) {
            if (kp) y[i] += x[i] / q;
        } else {
            y[i] = kp ? x[i] / q : 0.0f;
        }
    }
}
#endif

/* Forward (y = mask x / q) or backward (y += mask x / q, x = dy) over m elements. Shared with the
 * fused LoRA linear (op_shared.h), so its masks are the ones lq_dropout draws. */
void lq_dropout_apply(lq_ctx *ctx, bool bwd, uint64_t seed, uint64_t stream, float p, const float *x, float *y, int64_t m) {
    float q = 1.0f - p;
#ifdef DROPOUT_AVX512
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
        uint64_t key = mask_key(seed, stream);
        int nt = m > 65536 ? ctx->n_threads : 1;
#pragma omp parallel num_threads(nt) if (nt > 1)
        {
            int tid = 0, cnt = 1;
#ifdef _OPENMP
            tid = omp_get_thread_num();
            cnt = omp_get_num_threads();
#endif
            int64_t blocks = (m + 7) / 8, a = blocks * tid / cnt * 8, b = blocks * (tid + 1) / cnt * 8;
            if (b > m) b = m;
            if (b > a) run_avx512(bwd, key, p, q, x, y, a, b);
        }
        return;
    }
#endif
    if (bwd) {
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
        for (int64_t i = 0; i < m; i++)
            if (kept(seed, stream, i, p)) y[i] += x[i] / q;
    } else {
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
        for (int64_t i = 0; i < m; i++) y[i] = kept(seed, stream, i, p) ? x[i] / q : 0.0f;
    }
}

/* ip[0] = stream, ip[1] = seed (as the bits of a uint64), fp[0] = p. y = x / (1 - p) where kept,
 * else 0 (p == 1 keeps nothing, so the division never runs). */
static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    lq_dropout_apply(ctx, false, (uint64_t)n->ip[1], (uint64_t)n->ip[0], n->fp[0], n->in[0]->data, n->out->data,
          lq_numel(n->out));
    return LQ_OK;
}

/* y_i = m_i x_i / (1 - p) with the fixed mask m_i in {0, 1}: dy_i/dx_i = m_i / (1 - p), so
 * dx_i += m_i dy_i / (1 - p), the mask regenerated from the (seed, stream) the forward used. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    lq_dropout_apply(ctx, true, (uint64_t)n->ip[1], (uint64_t)n->ip[0], n->fp[0], n->out->grad->data, gx, lq_numel(n->out));
    return LQ_OK;
}

/* Each dropout call takes a new stream, so the case restarts the streams at its own seed on every
 * evaluation (all see the same mask), then puts the context's mode, seed and stream back. */
static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    uint64_t prev_seed = ctx->seed, prev_stream = ctx->rng_stream;
    bool prev_training = lq_ctx_set_training(ctx, true);
    lq_ctx_set_seed(ctx, (uint64_t)c->ip[0]);
    lq_tensor *y = lq_dropout(ctx, in[0], c->fp[0]);
    lq_ctx_set_training(ctx, prev_training);
    ctx->seed = prev_seed;
    ctx->rng_stream = prev_stream;
    return y;
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t a = lq_rng_int(rng, 1, 6), b = lq_rng_int(rng, 1, 8);
    c->ip[0] = (int64_t)(lq_rng_u64(rng) >> 1);
    c->fp[0] = 0.1f + 0.6f * lq_rng_uniform(rng);
    c->n_in = 1;
    c->in[0] = lq_gc_input(ctx, rng, 2, (int64_t[]){a, b}, -2, 2);
    c->call = gc_call;
    snprintf(c->desc, sizeof c->desc, "(%lld, %lld) p %.3f seed %lld", (long long)a, (long long)b, (double)c->fp[0],
             (long long)c->ip[0]);
    return ctx->err.status;
}

const lq_op_def lq_op_dropout = {"dropout", fwd, bwd, gc_make};

lq_tensor *lq_dropout(lq_ctx *ctx, lq_tensor *x, float p) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!lq_check_f32(ctx, "dropout", "x", x)) return NULL;
    LQ_OP_CHECK(ctx, p >= 0.0f && p <= 1.0f, LQ_ERR_ARG, "dropout: p = %g must be in [0, 1]", (double)p);
    if (!ctx->training || p == 0.0f) return x; /* identity: no node, no stream consumed */
    lq_node *n = lq_node_begin_like(ctx, &lq_op_dropout, x);
    if (!n) return NULL;
    n->ip[0] = (int64_t)ctx->rng_stream++;
    n->ip[1] = (int64_t)ctx->seed;
    n->fp[0] = p;
    return lq_node_finish(ctx, n);
}
