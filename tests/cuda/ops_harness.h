/* tests/cuda/ops_harness.h: what the op parity suites (test_cuda_ops.c: every op's own random
 * cases, and the gemm modes; test_cuda_wide.c: shapes those cases never reach) share: the per-op
 * nmse bounds, the magnitude reference of the reduced-precision modes, and run_case, which runs one
 * case on the CPU and on the GPU, forward and backward, and compares every output and gradient.
 * Each suite includes it once (static definitions). */
#ifndef LQ_TESTS_CUDA_OPS_HARNESS_H
#define LQ_TESTS_CUDA_OPS_HARNESS_H

#include <stdlib.h>
#include <string.h>

#include "autograd/cuda_impl.h"
#include "core/cuda.h"
#include "tests/cuda/attn_magnitude.h"
#include "tests/cuda/cuda_testutil.h"
#include "tests/testutil.h"

#define N_CASES 6 /* random cases per op and mode */
/* The magnitude bounds of products with bf16 / tf32 operands (derived in test_cuda_ops.c, above
 * matmul_mode): |gpu - cpu| <= tol * M, M the sum of the terms' magnitudes. */
#define TOL_BF16 (4.0 / 256.0)  /* 4 * 2^-8 */
#define TOL_TF32 (8.0 / 2048.0) /* 8 * 2^-11 */

static uint64_t g_seed;
static lq_ctx *g_cpu, *g_cu; /* the CPU reference and a CUDA context in fp32 mode */
/* run_case with g_fresh_grads: on the GPU each f32 input that needs a gradient goes through a
 * scale by 1 (exact both ways) in a context that releases gradients, as the trainer runs, so the
 * op's backward gets fresh pool blocks for its inputs' gradients (NaN-poisoned, not zeroed: an op
 * that assigns into them must write every element, one that adds must zero them first) */
static bool g_fresh_grads;

/* Per-op nmse bounds for fp32 mode (LQ_CUDA_MATH_FP32), each with its reason. A one-ulp difference
 * per element is an nmse of ~1e-14; these leave room for summation order and libm differences,
 * and are far below what a wrong index, a missed element or a dropped term gives (>= 1e-3). */
typedef struct op_bound {
    const char *name;
    double nmse;
    const char *why;
} op_bound;

static const op_bound k_bounds[] = {
    {"contiguous", 1e-12, "a copy (then x*x): exact"},
    {"reshape", 1e-12, "a view, then x*x: exact"},
    {"transpose", 1e-12, "a view, then x*x: exact"},
    {"permute", 1e-12, "a view, then x*x: exact"},
    {"slice", 1e-12, "a view, then x*x: exact"},
    {"concat", 1e-12, "copies, then x*x: exact"},
    {"add", 1e-10, "elementwise; broadcast backward sums in another order"},
    {"sub", 1e-10, "elementwise; broadcast backward sums in another order"},
    {"mul", 1e-10, "elementwise; broadcast backward sums in another order"},
    {"scale", 1e-10, "one multiply per element"},
    {"sum", 1e-8, "a reduction: summation order differs"},
    {"mean", 1e-8, "a reduction: summation order differs"},
    {"matmul", 1e-7, "cuBLAS fp32 gemm: blocked accumulation order"},
    {"relu", 1e-10, "exact elementwise (inputs keep off the kink)"},
    {"gelu", 1e-9, "erff / tanhf of the device libm (a few ulp)"},
    {"swiglu", 1e-9, "expf of the device libm (a few ulp)"},
    {"silu", 1e-9, "expf of the device libm (a few ulp)"},
    {"embedding", 1e-10, "a gather; backward scatter-adds repeated ids in another order"},
    {"rope", 1e-8, "sinf / cosf of angles up to ~40 rad (device libm)"},
    {"attention", 1e-7, "products and a softmax per row: gemm-like accumulation"},
    {"rmsnorm", 1e-8, "a row reduction and rsqrt"},
    {"layernorm", 1e-8, "row reductions (mean, variance)"},
    {"softmax", 1e-8, "a row max / sum and expf"},
    {"log_softmax", 1e-8, "a row max / sum, expf and logf"},
    {"cross_entropy", 1e-8, "a reduction over rows of log-softmax"},
    {"dropout", 1e-10, "the mask is the same counter hash: exact up to the scale's rounding"},
    {"conv2d", 1e-7, "im2col + gemm or direct sums: accumulation order"},
    {"max_pool2d", 1e-10, "a max of distinct values: exact"},
    {"avg_pool2d", 1e-9, "a window sum: order"},
    {"checkpoint", 1e-7, "a matmul, silu and mul, re-run in backward"},
    {"qmatmul", 1e-7, "exact dequant, then an fp32 gemm"},
    {"lora_linear", 1e-7, "exact dequant, then fp32 gemms (base and adapter)"},
    {"fake_quant", 1e-8, "the same float ops as quant/; a code decided differently would be ~1e-4"},
    {"fake_quant_lsq", 1e-8, "as fake_quant; the scale / zero gradients are reductions"},
    {"pact", 1e-8, "as fake_quant; the alpha gradient is a reduction"},
    {"fake_quant_dynamic", 1e-8, "per-row min / max then the same float ops as quant/"},
    {"fake_quant_bnb4", 1e-8, "per-block absmax and the code table: the same float ops as quant/"},
};

static const op_bound *bound_of(const char *name) {
    for (size_t i = 0; i < sizeof k_bounds / sizeof k_bounds[0]; i++)
        if (strcmp(k_bounds[i].name, name) == 0) return &k_bounds[i];
    return NULL;
}

/* qmatmul's case keeps W's scales in a host lq_qstate in the CPU arena (gc_quantize), and
 * lq_to_ctx_device copies the codes but keeps that host state pointer. The CUDA twin of such an
 * input gets a state whose arrays are device copies (in cu's device arena, gone at its reset),
 * as dequant_cuda.h asks: a host struct with device arrays. */
static lq_qstate *device_qstate(lq_ctx *cu, const lq_tensor *t) {
    const lq_qstate *q = t->qs;
    lq_qstate *d = lq_ctx_alloc(cu, sizeof *d);
    if (!d) return NULL;
    *d = *q;
    d->device = true;
    int64_t nb = q->block > 0 ? (lq_numel(t) + q->block - 1) / q->block : 0;
    bool ok = true;
    if (q->absmax) ok &= (d->absmax = lq_cuda_upload(cu, q->absmax, (size_t)nb * sizeof(float))) != NULL;
    if (q->zero) ok &= (d->zero = lq_cuda_upload(cu, q->zero, (size_t)nb * sizeof(float))) != NULL;
    if (q->absmax_q) {
        int64_t nb2 = q->block2 > 0 ? (nb + q->block2 - 1) / q->block2 : 0;
        ok &= (d->absmax_q = lq_cuda_upload(cu, q->absmax_q, (size_t)nb)) != NULL;
        ok &= (d->absmax2 = lq_cuda_upload(cu, q->absmax2, (size_t)nb2 * sizeof(float))) != NULL;
        ok &= (d->code2 = lq_cuda_upload(cu, q->code2, 256 * sizeof(float))) != NULL;
    }
    return ok ? d : NULL;
}

/* t's values on the host (malloc'd; free it). A strided view is first made contiguous on its own
 * context (no grad: nothing is recorded). NULL with the reason in ctx. */
static float *fetch(lq_ctx *ctx, lq_tensor *t) {
    if (!lq_is_contiguous(t)) {
        bool g = lq_ctx_set_grad(ctx, false);
        t = lq_contiguous(ctx, t);
        lq_ctx_set_grad(ctx, g);
        if (!t) return NULL;
    }
    int64_t n = lq_numel(t);
    float *h = malloc((size_t)(n > 0 ? n : 1) * sizeof *h);
    if (!h) return NULL;
    if (lq_tensor_download(ctx, t, h) != LQ_OK) {
        free(h);
        return NULL;
    }
    return h;
}

/* An input's gradient on the host: zeros when it got none. */
static float *fetch_grad(lq_ctx *ctx, lq_tensor *t) {
    if (t->grad) return fetch(ctx, t->grad);
    return calloc((size_t)(lq_numel(t) > 0 ? lq_numel(t) : 1), sizeof(float));
}

static const char *ctx_msg(lq_ctx *ctx) {
    const lq_err *e = lq_ctx_error(ctx);
    return e && e->status != LQ_OK ? e->msg : "(no error recorded)";
}

/* Compares one quantity; prints and returns 1 on failure. */
static int check(const char *tag, const char *what, const float *gpu, const float *cpu, int64_t n, double bound) {
    int64_t bad;
    double e = lq_nmse(gpu, cpu, n, &bad);
    if (bad >= 0) {
        print_error("%s: %s: element %lld is %g on the GPU, %g on the CPU (NaN-poisoned = never written?)\n", tag,
                    what, (long long)bad, (double)gpu[bad], (double)cpu[bad]);
        return 1;
    }
    if (!(e <= bound)) {
        print_error("%s: %s: nmse %.3g > %.3g over %lld elements\n", tag, what, e, bound, (long long)n);
        return 1;
    }
    return 0;
}

/* The worst element of one magnitude check (matmul_mode), kept per case for the printout. */
typedef struct mag_worst {
    double ratio;     /* max over elements of |gpu - cpu| / (tol M + tiny) */
    char what[24];    /* the quantity it is in ("output", "d input 2") */
    int64_t index;
    double diff, mag;
} mag_worst;

#define MAG_TINY 1e-30 /* absolute slack: an element whose magnitude M is 0 must match exactly */

/* The elementwise bound of a reduced-precision product: |gpu - cpu| <= tol * M + tiny for every
 * element, M the magnitude reference (the same sums over absolute values). Non-finite values in
 * any of the three fail. Updates *w with the worst ratio; prints and returns 1 on failure. */
static int check_mag(const char *tag, const char *what, const float *gpu, const float *cpu, const float *mag, int64_t n,
                     double tol, mag_worst *w) {
    int64_t worst = -1;
    double wr = -1.0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(gpu[i]) || !isfinite(cpu[i]) || !isfinite(mag[i])) {
            print_error("%s: %s: element %lld is %g on the GPU, %g on the CPU, magnitude %g (NaN-poisoned = never "
                        "written?)\n", tag, what, (long long)i, (double)gpu[i], (double)cpu[i], (double)mag[i]);
            w->ratio = INFINITY;
            return 1;
        }
        double r = fabs((double)gpu[i] - (double)cpu[i]) / (tol * fabs((double)mag[i]) + MAG_TINY);
        if (r > wr) wr = r, worst = i;
    }
    if (worst >= 0 && wr > w->ratio) {
        w->ratio = wr;
        snprintf(w->what, sizeof w->what, "%s", what);
        w->index = worst;
        w->diff = fabs((double)gpu[worst] - (double)cpu[worst]);
        w->mag = mag[worst];
    }
    if (worst >= 0 && wr > 1.0) {
        print_error("%s: %s: element %lld: |gpu - cpu| = |%.9g - %.9g| = %.3g > tol %.3g x magnitude %.3g (ratio %.3g, "
                    "over %lld elements)\n", tag, what, (long long)worst, (double)gpu[worst], (double)cpu[worst],
                    fabs((double)gpu[worst] - (double)cpu[worst]), tol, (double)mag[worst], wr, (long long)n);
        return 1;
    }
    return 0;
}

/* The case's upstream gradient on the CPU context (shaped like y): normal, from the case seed. */
static lq_tensor *upstream_grad(lq_ctx *cpu, const lq_tensor *y, uint64_t seed) {
    lq_tensor *r = lq_new(cpu, LQ_DTYPE_F32, y->ndim, y->ne);
    if (!r) return NULL;
    lq_rng rr;
    lq_rng_seed(&rr, seed ^ 0x9e3779b97f4a7c15ull);
    lq_fill_normal(r, &rr, 1.0f);
    return r;
}

/* |t| as a new tensor on the CPU context: f32 values (a leaf requiring a grad when t does) by
 * fabsf; f16 / bf16 codes with the sign bit cleared (exactly |w|); a block format (codes and
 * scales: no cheap |W|) dequantized by the traits table's to_f32, then fabsf, as an f32 tensor;
 * integer tensors (ids) as they are. NULL when t is a strided view or has no to_f32. */
static lq_tensor *abs_input(lq_ctx *cpu, lq_tensor *t) {
    if (t->dtype == LQ_DTYPE_I32 || t->dtype == LQ_DTYPE_U8) return t;
    if (!lq_is_contiguous(t)) return NULL;
    int64_t n = lq_numel(t);
    if (t->dtype == LQ_DTYPE_F16 || t->dtype == LQ_DTYPE_BF16) {
        lq_tensor *a = lq_new(cpu, t->dtype, t->ndim, t->ne);
        if (!a) return NULL;
        const uint16_t *src = t->data;
        uint16_t *dst = a->data;
        for (int64_t i = 0; i < n; i++) dst[i] = (uint16_t)(src[i] & 0x7fffu);
        return a;
    }
    const lq_dtype_traits *tr = lq_dtype_info(t->dtype);
    if (t->dtype != LQ_DTYPE_F32 && (!tr || !tr->to_f32)) return NULL;
    lq_tensor *a = lq_requires_grad(t) ? lq_new_leaf(cpu, t->ndim, t->ne, true) : lq_new(cpu, LQ_DTYPE_F32, t->ndim, t->ne);
    if (!a) return NULL;
    float *dst = a->data;
    if (t->dtype == LQ_DTYPE_F32) memcpy(dst, t->data, (size_t)n * sizeof(float));
    else tr->to_f32(t->data, dst, n, t->qs, 0);
    for (int64_t i = 0; i < n; i++) dst[i] = fabsf(dst[i]);
    return a;
}

/* The magnitude reference of a case of a multilinear op (matmul, qmatmul, lora_linear): the same
 * call on the CPU with every input replaced by its absolute value (abs_input) and the upstream
 * gradient r (NULL: no backward) by |r|. Each output and input-gradient element is then exactly
 * the sum of the absolute values of the terms whose rounded sum the GPU computes (the bias of
 * lora_linear is one more additive term; dropout multiplies by the same mask m / q >= 0, since
 * the case's call restarts the rng streams at its seed, so p > 0 needs nothing special). lora's
 * adapter scale s multiplies terms: the case draws s in [0.25, 2]; s < 0 would make the adapter
 * part subtract, so such a case is refused. mag[0] gets the output, mag[1 + i] input i's gradient
 * (malloc'd; NULL for inputs without one). false (and a line saying why, cpu's error cleared)
 * when the op refuses the substitute inputs: the caller falls back to the nmse bound. */
static bool magnitude_run(lq_ctx *cpu, const char *tag, lq_gc_case *c, const lq_tensor *r,
                          float *mag[1 + LQ_MAX_INPUTS]) {
    for (int i = 0; i <= LQ_MAX_INPUTS; i++) mag[i] = NULL;
    const char *why = NULL;
    lq_tensor *ain[LQ_MAX_INPUTS] = {0};
    if (strncmp(tag, "lora_linear ", 12) == 0 && c->fp[0] < 0.0f) why = "adapter scale s < 0";
    for (int i = 0; !why && i < c->n_in; i++)
        if (c->in[i] && !(ain[i] = abs_input(cpu, c->in[i]))) why = "an input has no absolute value here";
    lq_tensor *ym = why ? NULL : c->call(cpu, ain, c->n_in, c);
    if (!why && !ym) why = "the op refused the substitute inputs";
    if (!why && r) {
        lq_tensor *rm = lq_new(cpu, LQ_DTYPE_F32, r->ndim, r->ne);
        if (rm) {
            const float *src = r->data;
            float *dst = rm->data;
            for (int64_t i = 0; i < lq_numel(r); i++) dst[i] = fabsf(src[i]);
        }
        if (!rm || lq_backward_from(cpu, ym, rm) != LQ_OK) why = "its backward failed";
    }
    if (!why && !(mag[0] = fetch(cpu, ym))) why = "reading its output failed";
    for (int i = 0; !why && i < c->n_in; i++)
        if (c->in[i] && lq_requires_grad(c->in[i]) && !(mag[1 + i] = fetch_grad(cpu, ain[i])))
            why = "reading a gradient failed";
    if (!why) return true;
    print_message("%s: no magnitude reference (%s: %s): the nmse bound instead\n", tag, why, ctx_msg(cpu));
    lq_ctx_clear_error(cpu);
    for (int i = 0; i <= LQ_MAX_INPUTS; i++) {
        free(mag[i]);
        mag[i] = NULL;
    }
    return false;
}

static int g_mag_cases, g_mag_fallbacks; /* matmul_mode's cases, and those that used the nmse bound */

/* The fp32 attention op is checked against its magnitude reference (attn_magnitude.h) rather than
 * an nmse relative to the result: dq and dk are sums of terms that can cancel to a small fraction
 * of their magnitude (with T 2 each row's two dS entries are equal and opposite), where two fp32
 * evaluations in different orders differ by ~u times the terms, not times the result (a seed gave
 * nmse 1.6e-6 on a 2-element dk that way, at session-start code too). The bound: 256 u = 2^-16 of
 * the magnitude per element. The longest chain of fp32 roundings here, counted relative to that
 * magnitude, is under ~70 u on the gc cases (|q|, |k| <= 1.5, D <= 4, scale <= 0.8, T g <= 10):
 * the scores' D-term sums (4 u) carried through exp by |s| <= 7.2 (~30 u), exp itself, the row's
 * normalization and Dv (T u each), dP, and the final sums over T g terms (10 u). Doubled for two
 * independent evaluations, that leaves a margin of almost 2x under 256 u. */
#define TOL_FP32_ATTN (1.0 / 65536.0)

/* The attention case's magnitude reference (mag[0] the output, mag[1 + i] the gradient of input
 * i, each in its tensor's layout; float copies of attn_magnitudes' doubles), from the CPU case's
 * inputs and the upstream gradient r (NULL: output only). q may be stored (B, Hq, T, D) (c->ip[1]:
 * the op reads a transposed view); the magnitudes are computed in (B, T, H, D) and put back. */
static bool attn_magnitude_run(const lq_gc_case *c, const lq_tensor *r, float *mag[1 + LQ_MAX_INPUTS]) {
    for (int i = 0; i <= LQ_MAX_INPUTS; i++) mag[i] = NULL;
    const lq_tensor *qt = c->in[0], *kt = c->in[1];
    bool view = c->ip[1] != 0;
    int64_t B = kt->ne[0], T = kt->ne[1], Hkv = kt->ne[2], D = kt->ne[3], Hq = view ? qt->ne[1] : qt->ne[2];
    int64_t nq = B * T * Hq * D, nk = B * T * Hkv * D;
    float *q = malloc((size_t)(nq > 0 ? nq : 1) * sizeof *q), *dO = NULL;
    if (!q) return false;
    const float *qs = qt->data;
    for (int64_t b = 0; b < B; b++) /* q in (B, T, Hq, D) order */
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < Hq; h++)
                for (int64_t d = 0; d < D; d++)
                    q[((b * T + t) * Hq + h) * D + d] =
                        qs[view ? ((b * Hq + h) * T + t) * D + d : ((b * T + t) * Hq + h) * D + d];
    if (r) dO = (float *)r->data;
    float *dz = NULL;
    if (!dO && !(dO = dz = calloc((size_t)(nq > 0 ? nq : 1), sizeof *dz))) {
        free(q);
        return false;
    }
    attn_mags m;
    float sc = c->fp[0] != 0.0f ? c->fp[0] : 1.0f / sqrtf((float)D);
    const int32_t *doc = c->n_in > 3 && c->in[3] ? (const int32_t *)c->in[3]->data : NULL;
    bool ok = attn_magnitudes(B, T, Hq, Hkv, D, c->ip[0] != 0, q, kt->data, c->in[2]->data, dO, doc, sc, &m);
    const double *src[4] = {m.o, m.dq, m.dk, m.dv};
    const int64_t n[4] = {nq, nq, nk, nk};
    for (int i = 0; ok && i < 4; i++) {
        if (i > 0 && (!r || !lq_requires_grad(c->in[i - 1]))) continue;
        if (!(mag[i] = malloc((size_t)(n[i] > 0 ? n[i] : 1) * sizeof(float)))) {
            ok = false;
            break;
        }
        for (int64_t b = 0; b < B; b++) /* back to the tensor's layout (only dq's differs) */
            for (int64_t t = 0; t < T; t++)
                for (int64_t h = 0; h < (i < 2 ? Hq : Hkv); h++)
                    for (int64_t d = 0; d < D; d++) {
                        int64_t H = i < 2 ? Hq : Hkv, from = ((b * T + t) * H + h) * D + d;
                        int64_t to = i == 1 && view ? ((b * Hq + h) * T + t) * D + d : from;
                        mag[i][to] = (float)src[i][from];
                    }
    }
    attn_mags_free(&m);
    free(q);
    free(dz);
    if (!ok)
        for (int i = 0; i <= LQ_MAX_INPUTS; i++) {
            free(mag[i]);
            mag[i] = NULL;
        }
    return ok;
}

/* Case `k` of op `op` on the CPU and on cu, drawn by `make` (NULL: the op's gc_make). With tol > 0
 * each quantity is checked against the magnitude bound (check_mag; the nmse `bound` only when the
 * case has no magnitude reference), else against the nmse `bound`. Returns the number of failures
 * (each printed). */
static int run_case(lq_ctx *cpu, lq_ctx *cu, int op, int k, uint64_t seed, double bound, double tol,
                    const char *mode, lq_gc_make_fn make) {
    const lq_op_def *def = lq_op_table[op];
    if (!make) make = def->gc_make;
    lq_ctx_clear_error(cpu);
    lq_ctx_clear_error(cu);
    lq_ctx_step_reset(cpu);
    lq_ctx_step_reset(cu);
    lq_ctx_set_grad(cpu, true);
    lq_ctx_set_grad(cu, true);
    lq_rng rng;
    lq_rng_seed(&rng, seed);
    lq_gc_case c;
    memset(&c, 0, sizeof c);
    char tag[256];
    snprintf(tag, sizeof tag, "%s [%s] case %d (case seed %llu)", def->name, mode, k, (unsigned long long)seed);
    if (make(cpu, &rng, &c) != LQ_OK || lq_ctx_status(cpu) != LQ_OK) {
        print_error("%s: gc_make failed: %s\n", tag, ctx_msg(cpu));
        return 1;
    }
    snprintf(tag, sizeof tag, "%s [%s] case %d (case seed %llu: %s)", def->name, mode, k, (unsigned long long)seed,
             c.desc);

    /* the CUDA twins of the inputs: f32 leaves keep REQUIRES_GRAD, i32 ones stay on the host */
    lq_tensor *din[LQ_MAX_INPUTS] = {0};
    for (int i = 0; i < c.n_in; i++) {
        if (!c.in[i]) continue;
        din[i] = lq_to_ctx_device(cu, c.in[i]);
        if (!din[i]) {
            print_error("%s: input %d to the GPU: %s\n", tag, i, ctx_msg(cu));
            return 1;
        }
        const lq_dtype_traits *tr = lq_dtype_info(c.in[i]->dtype);
        if (c.in[i]->qs && tr && tr->needs_qstate && !(din[i]->qs = device_qstate(cu, c.in[i]))) {
            print_error("%s: input %d's quant state to the GPU: %s\n", tag, i, ctx_msg(cu));
            return 1;
        }
    }
    /* rope's case keeps its optional inv_freq as a host array in c.aux: the op's entry takes a host
     * array (the CUDA kernel uploads it), so the same c serves both runs; every other case's call
     * reads only c.in[] (aux elsewhere feeds the CPU-only gradcheck surrogates) */
    lq_tensor *yc = c.call(cpu, c.in, c.n_in, &c);
    if (!yc) {
        print_error("%s: CPU forward failed: %s\n", tag, ctx_msg(cpu));
        return 1;
    }
    lq_tensor *gin[LQ_MAX_INPUTS] = {0}; /* what the GPU op reads: din, or din scaled by 1 */
    lq_ctx_set_release_grads(cu, g_fresh_grads);
    for (int i = 0; i < c.n_in; i++) {
        gin[i] = din[i];
        if (g_fresh_grads && din[i] && din[i]->dtype == LQ_DTYPE_F32 && lq_requires_grad(din[i]) &&
            !(gin[i] = lq_scale(cu, din[i], 1.0f))) {
            print_error("%s: input %d through a scale: %s\n", tag, i, ctx_msg(cu));
            lq_ctx_set_release_grads(cu, false);
            return 1;
        }
    }
    lq_tensor *yg = c.call(cu, gin, c.n_in, &c);
    if (!yg) {
        print_error("%s: GPU forward failed: %s\n", tag, ctx_msg(cu));
        lq_ctx_set_release_grads(cu, false);
        return 1;
    }
    if (!lq_same_shape(yc, yg) || yg->device != LQ_DEVICE_CUDA) {
        lq_ctx_set_release_grads(cu, false);
        char a[64], b[64];
        print_error("%s: GPU output %s (device %d), CPU %s\n", tag, lq_shape_str(yg, a, sizeof a), (int)yg->device,
                    lq_shape_str(yc, b, sizeof b));
        return 1;
    }

    /* one random upstream gradient, the same on both */
    int fails = 0;
    if (lq_requires_grad(yc) != lq_requires_grad(yg)) {
        print_error("%s: the output requires a gradient on the %s only\n", tag, lq_requires_grad(yc) ? "CPU" : "GPU");
        return 1;
    }
    lq_tensor *rc = NULL;
    if (lq_requires_grad(yc)) {
        rc = upstream_grad(cpu, yc, seed);
        if (!rc) {
            print_error("%s: %s\n", tag, ctx_msg(cpu));
            return 1;
        }
        lq_tensor *rg = lq_to_ctx_device(cu, rc);
        if (lq_backward_from(cpu, yc, rc) != LQ_OK) {
            print_error("%s: CPU backward failed: %s\n", tag, ctx_msg(cpu));
            return 1;
        }
        if (!rg || lq_backward_from(cu, yg, rg) != LQ_OK) {
            print_error("%s: GPU backward failed: %s\n", tag, ctx_msg(cu));
            lq_ctx_set_release_grads(cu, false);
            return 1;
        }
    }
    lq_ctx_set_release_grads(cu, false);

    /* the magnitude reference (tf32 / bf16 modes), on the CPU context after both backwards */
    float *mag[1 + LQ_MAX_INPUTS] = {0};
    bool use_mag = false;
    mag_worst worst = {.ratio = -1.0, .what = "-", .index = -1};
    if (tol > 0.0) {
        g_mag_cases++;
        use_mag = magnitude_run(cpu, tag, &c, rc, mag);
        if (!use_mag) g_mag_fallbacks++;
    } else if (strcmp(def->name, "attention") == 0) { /* fp32: see TOL_FP32_ATTN */
        use_mag = attn_magnitude_run(&c, rc, mag);
        tol = TOL_FP32_ATTN;
        if (!use_mag) {
            print_error("%s: no magnitude reference (out of memory)\n", tag);
            return 1;
        }
    }
    float *oc = fetch(cpu, yc), *og = fetch(cu, yg);
    if (!oc || !og) {
        print_error("%s: reading the output back: %s\n", tag, ctx_msg(og ? cpu : cu));
        fails++;
    } else if (use_mag) {
        fails += check_mag(tag, "output", og, oc, mag[0], lq_numel(yc), tol, &worst);
    } else {
        fails += check(tag, "output", og, oc, lq_numel(yc), bound);
    }
    free(oc);
    free(og);
    for (int i = 0; i < c.n_in; i++) {
        if (!lq_requires_grad(c.in[i])) continue;
        float *gc = fetch_grad(cpu, c.in[i]), *gg = fetch_grad(cu, din[i]);
        char what[64];
        snprintf(what, sizeof what, "d input %d", i);
        if (!gc || !gg) {
            print_error("%s: reading %s back: %s\n", tag, what, ctx_msg(gg ? cpu : cu));
            fails++;
        } else if (use_mag && mag[1 + i]) {
            fails += check_mag(tag, what, gg, gc, mag[1 + i], lq_numel(c.in[i]), tol, &worst);
        } else {
            fails += check(tag, what, gg, gc, lq_numel(c.in[i]), bound);
        }
        free(gc);
        free(gg);
    }
    if (use_mag)
        print_message("%s [%s] case %d: worst |gpu - cpu| / (tol M) = %.3g (%s element %lld: diff %.3g, M %.3g)\n",
                      def->name, mode, k, worst.ratio, worst.what, (long long)worst.index, worst.diff, worst.mag);
    for (int i = 0; i <= LQ_MAX_INPUTS; i++) free(mag[i]);
    return fails;
}

static uint64_t case_seed(int op, int k, int mode) {
    return lq_mix64(g_seed * 1000003u + (uint64_t)op * 7919u + (uint64_t)k * 131u + (uint64_t)mode);
}

static int group_setup(void **state) {
    (void)state;
    g_cpu = lq_cuda_test_ctx(LQ_DEVICE_CPU, LQ_CUDA_MATH_FP32);
    g_cu = lq_cuda_test_ctx(LQ_DEVICE_CUDA, LQ_CUDA_MATH_FP32);
    return g_cpu && g_cu ? 0 : -1;
}

static int group_teardown(void **state) {
    (void)state;
    lq_ctx_free(g_cu);
    lq_ctx_free(g_cpu);
    return 0;
}

#endif
