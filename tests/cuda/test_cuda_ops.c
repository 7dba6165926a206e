/* tests/cuda/test_cuda_ops.c: every op of the op table on the GPU against the CPU reference, on
 * fresh random cases (each op's gradcheck case, lq_op_def.gc_make). (The dequant kernels have
 * their own suite, test_cuda_dequant.c.)
 *
 * Per op and case: the case is built on a CPU context, its inputs copied to a CUDA context made
 * with poison = true (every new device activation is NaN until written); the op runs on both, one
 * random upstream gradient goes back through both (lq_backward_from), and the output and every
 * input gradient are compared by normalized MSE, sum((gpu - cpu)^2) / sum(cpu^2), against the
 * op's threshold below. NaN / Inf anywhere fails. An op without a CUDA kernel fails, never skips.
 * The gemm-based ops run again in the tf32 and bf16 modes, checked elementwise against the
 * rounding-error bound of a product of rounded operands (matmul_mode: the magnitude reference);
 * so do lora_linear cases with an NF4 / FP4 base (the training configuration, bnb4_mode) and the
 * fused NF4 / FP4 linear (LOQUAT_FUSED_QLINEAR=1).
 * Seeds come from the clock each run (printed); LOQUAT_CUDA_SEED=<n> replays a run. */
#include <stdlib.h>
#include <string.h>

#include "autograd/cuda_impl.h"
#include "core/cuda.h"
#include "tests/cuda/cuda_testutil.h"
#include "tests/testutil.h"

#define N_CASES 6 /* random cases per op and mode */

static uint64_t g_seed;
static lq_ctx *g_cpu, *g_cu; /* the CPU reference and a CUDA context in fp32 mode */

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
    lq_tensor *yg = c.call(cu, din, c.n_in, &c);
    if (!yg) {
        print_error("%s: GPU forward failed: %s\n", tag, ctx_msg(cu));
        return 1;
    }
    if (!lq_same_shape(yc, yg) || yg->device != LQ_DEVICE_CUDA) {
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
            return 1;
        }
    }

    /* the magnitude reference (tf32 / bf16 modes), on the CPU context after both backwards */
    float *mag[1 + LQ_MAX_INPUTS] = {0};
    bool use_mag = false;
    mag_worst worst = {.ratio = -1.0, .what = "-", .index = -1};
    if (tol > 0.0) {
        g_mag_cases++;
        use_mag = magnitude_run(cpu, tag, &c, rc, mag);
        if (!use_mag) g_mag_fallbacks++;
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

/* The state of an op's test: its index in the op table. */
static int g_op_index[64];

static void test_op(void **state) {
    int op = *(const int *)*state;
    const lq_op_def *def = lq_op_table[op];
    assert_non_null(g_cpu);
    assert_non_null(g_cu);
    if (!lq_op_forward_for(g_cu, def) || !lq_op_backward_for(g_cu, def))
        fail_msg("%s: no CUDA kernel%s", def->name, lq_op_forward_for(g_cu, def) ? " (backward)" : "");
    const op_bound *b = bound_of(def->name);
    if (!b) fail_msg("%s: no nmse bound in k_bounds (add one with its reason)", def->name);
    if (!def->gc_make) fail_msg("%s: no gradcheck case to run", def->name);
    int fails = 0;
    for (int k = 0; k < N_CASES; k++)
        fails += run_case(g_cpu, g_cu, op, k, case_seed(op, k, 0), b->nmse, 0.0, "fp32", NULL);
    if (fails) fail_msg("%s: %d comparison(s) failed (bound %.0e: %s)", def->name, fails, b->nmse, b->why);
}

/* The gemm-based ops again with tensor-core inputs, each element checked against the standard
 * bound of a product of rounded operands: |gpu - cpu| <= tol * M (+ 1e-30), M the magnitude
 * reference (magnitude_run: the same sums over absolute values). An nmse relative to ||cpu||^2 is
 * the wrong yardstick here: where a sum nearly cancels (lora's dA with r = 1 is one scalar
 * dY . B times x), a per-operand rounding of u gives an error ~ u sum |terms| on a small result
 * (a replayed bf16 case: nmse 2e-3, yet within this bound). tol is the longest chain of operand
 * roundings times the unit roundoff, times 2: every product here has two rounded operands, and
 * lora's intermediates u = s x A^T and du = s dY B are rounded once more when they enter the next
 * product (y += u B^T, dB += dY^T u, dA += du^T x, dx += du A), after carrying the 2u of their own
 * operands: 4 roundings of u relative to M. fp32 accumulation (K ~ 2^6 terms: ~2^-18) and second
 * order terms are far below that. A wrong index, a missed term or a missing scale is an error of
 * the order of a whole term: a ratio >> 1.
 *   bf16: round to nearest even (__float2bfloat16_rn, lq_cuda_dequant_bf16), u = 2^-9:
 *         4 u = 2^-7, times 2: tol = 4 * 2^-8.
 *   tf32: cuBLAS's FAST_TF32 mode does not promise round to nearest when an fp32 operand becomes
 *         tf32 (tensor cores fed fp32 bits may just drop the low 13: truncation, u = 2^-10):
 *         4 u = 8 * 2^-11 then, a factor 2 over round to nearest (u = 2^-11): tol = 8 * 2^-11
 *         (not 4 * 2^-11, which truncation could reach with no margin at all).
 * A case without a magnitude reference (magnitude_run refuses: counted and printed) is held to
 * the old nmse bound instead, `fallback` (tf32 1e-5, bf16 1e-3). */
#define TOL_BF16 (4.0 / 256.0)  /* 4 * 2^-8 */
#define TOL_TF32 (8.0 / 2048.0) /* 8 * 2^-11 */

static void matmul_mode(lq_cuda_math math, double tol, double fallback, const char *mode, int mode_id,
                        const char *const *ops, size_t n_ops) {
    lq_ctx *cu = lq_cuda_test_ctx(LQ_DEVICE_CUDA, math);
    assert_non_null(cu);
    int fails = 0;
    g_mag_cases = g_mag_fallbacks = 0;
    for (size_t j = 0; j < n_ops; j++) {
        int op = lq_op_find(ops[j]);
        if (op < 0) {
            print_error("%s: not in the op table\n", ops[j]);
            fails++;
            continue;
        }
        if (!lq_op_forward_for(cu, lq_op_table[op]) || !lq_op_backward_for(cu, lq_op_table[op])) {
            print_error("%s: no CUDA kernel\n", ops[j]);
            fails++;
            continue;
        }
        for (int k = 0; k < N_CASES; k++)
            fails += run_case(g_cpu, cu, op, k, case_seed(op, k, mode_id), fallback, tol, mode, NULL);
    }
    lq_ctx_free(cu);
    print_message("%s mode: %d case(s), %d held to the nmse bound %.0e for want of a magnitude reference\n", mode,
                  g_mag_cases, g_mag_fallbacks, fallback);
    if (fails) fail_msg("%s mode: %d comparison(s) failed (tol %.3g x magnitude)", mode, fails, tol);
}

static const char *const gemm_ops[] = {"matmul", "qmatmul", "lora_linear"};

static void test_matmul_tf32(void **state) {
    (void)state;
    matmul_mode(LQ_CUDA_MATH_TF32, TOL_TF32, 1e-5, "tf32", 1, gemm_ops, 3);
}

static void test_matmul_bf16(void **state) {
    (void)state;
    matmul_mode(LQ_CUDA_MATH_BF16, TOL_BF16, 1e-3, "bf16", 2, gemm_ops, 3);
}


/* A seed from which qmatmul's gc_make draws an NF4 or FP4 weight (2 of its 8 formats), the first
 * after seed0; 0 if 200 draws give none (they do not: 200 misses have probability (3/4)^200). */
static uint64_t bnb4_case_seed(int op, uint64_t seed0) {
    for (uint64_t j = 0; j < 200; j++) {
        lq_ctx_clear_error(g_cpu);
        lq_ctx_step_reset(g_cpu);
        lq_rng rng;
        lq_rng_seed(&rng, seed0 + j);
        lq_gc_case c;
        memset(&c, 0, sizeof c);
        if (lq_op_table[op]->gc_make(g_cpu, &rng, &c) != LQ_OK || c.n_in < 2 || !c.in[1]) continue;
        if (c.in[1]->dtype == LQ_DTYPE_NF4 || c.in[1]->dtype == LQ_DTYPE_FP4) return seed0 + j;
    }
    return 0;
}

/* N_CASES cases of op (qmatmul or lora_linear) whose weight is NF4 or FP4, in the given math,
 * each element within tol times its magnitude reference (matmul_mode's bound). */
static void bnb4_mode(const char *name, lq_cuda_math math, double tol, double fallback, const char *mode, int mode_id) {
    lq_ctx *cu = lq_cuda_test_ctx(LQ_DEVICE_CUDA, math);
    assert_non_null(cu);
    int op = lq_op_find(name), fails = 0;
    assert_true(op >= 0);
    g_mag_cases = g_mag_fallbacks = 0;
    for (int k = 0; k < N_CASES; k++) {
        uint64_t seed = bnb4_case_seed(op, case_seed(op, k, mode_id));
        if (!seed) {
            print_error("%s [%s] case %d: no NF4 / FP4 draw\n", name, mode, k);
            fails++;
            continue;
        }
        fails += run_case(g_cpu, cu, op, k, seed, fallback, tol, mode, NULL);
    }
    lq_ctx_free(cu);
    print_message("%s %s: %d case(s), %d held to the nmse bound %.0e for want of a magnitude reference\n", name, mode,
                  g_mag_cases, g_mag_fallbacks, fallback);
    if (fails) fail_msg("%s %s: %d comparison(s) failed (tol %.3g x magnitude)", name, mode, fails, tol);
}

/* The QLoRA linear as training runs it: an NF4 / FP4 base. bf16 math takes cuda_qlinear.cu's bf16
 * path (each operand converted once; without dropout the adapter's dX inside the base product). */
static void test_lora_bnb4_tf32(void **state) {
    (void)state;
    bnb4_mode("lora_linear", LQ_CUDA_MATH_TF32, TOL_TF32, 1e-5, "tf32 nf4/fp4", 4);
}

static void test_lora_bnb4_bf16(void **state) {
    (void)state;
    bnb4_mode("lora_linear", LQ_CUDA_MATH_BF16, TOL_BF16, 1e-3, "bf16 nf4/fp4", 5);
}

/* The fused NF4 / FP4 linear (cuda_qlinear_fused.cu, LOQUAT_FUSED_QLINEAR=1 in bf16 math: W's
 * tile dequantized to bf16 in shared memory, WMMA products with fp32 accumulation, forward and
 * dX) on qmatmul cases with an NF4 / FP4 weight (small: partial 64 x 64 tiles), against the bf16
 * mode's bound: its operands are rounded to bf16 once, as there. */
static void test_qlinear_fused_bf16(void **state) {
    (void)state;
    const char *prev = getenv("LOQUAT_FUSED_QLINEAR");
    char *keep = prev ? strdup(prev) : NULL;
    setenv("LOQUAT_FUSED_QLINEAR", "1", 1);
    bnb4_mode("qmatmul", LQ_CUDA_MATH_BF16, TOL_BF16, 1e-3, "bf16 fused", 3);
    if (keep) setenv("LOQUAT_FUSED_QLINEAR", keep, 1);
    else unsetenv("LOQUAT_FUSED_QLINEAR");
    free(keep);
}

/* Attention on rows longer than a warp: the op's gradcheck case has T <= 5, so every score row
 * fits in one warp's first 32 lanes. These cases take T from 33 to 200 (rows of several 32-key
 * strides and, past 128, of several unrolled steps of the CUDA row kernels, cuda_attention.cu),
 * T mostly not a multiple of 32, grouped-query heads, and packed documents long enough to span
 * strides. Variant v (g_attn_variant) fixes causal = v & 1 and doc = (v >> 1) & 1, so the N_CASES
 * cases cover all four mask combinations; the rest is drawn. */
static int g_attn_variant;

static lq_tensor *attn_long_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    const lq_gc_case *c = user;
    lq_attn_params p = {c->fp[0], c->ip[0] != 0, n_in > 3 ? in[3] : NULL};
    return lq_attention(ctx, in[0], in[1], in[2], &p);
}

static lq_status attn_long_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    static const int64_t Ts[] = {70, 100, 160, 129, 200, 33};
    int v = g_attn_variant;
    int64_t T = Ts[(uint64_t)v % (sizeof Ts / sizeof Ts[0])], B = lq_rng_int(rng, 1, 2), D = lq_rng_int(rng, 1, 8);
    int64_t Hkv = lq_rng_int(rng, 1, 2), Hq = Hkv * (v < 4 ? 2 : lq_rng_int(rng, 1, 3));
    bool causal = v & 1, with_doc = (v >> 1) & 1;
    c->n_in = with_doc ? 4 : 3;
    c->in[0] = lq_gc_input(ctx, rng, 4, (int64_t[]){B, T, Hq, D}, -1.5f, 1.5f);
    c->in[1] = lq_gc_input(ctx, rng, 4, (int64_t[]){B, T, Hkv, D}, -1.5f, 1.5f);
    c->in[2] = lq_gc_input(ctx, rng, 4, (int64_t[]){B, T, Hkv, D}, -1, 1);
    /* documents longer than a warp's 32 keys: a new one with probability 1/16 per token */
    if (with_doc && !(c->in[3] = lq_gc_doc_ids(ctx, rng, B, T, 16))) return ctx->err.status;
    c->ip[0] = causal;
    c->fp[0] = 0.8f;
    c->call = attn_long_call;
    snprintf(c->desc, sizeof c->desc, "B=%lld T=%lld Hq=%lld Hkv=%lld D=%lld causal=%d doc=%d", (long long)B,
             (long long)T, (long long)Hq, (long long)Hkv, (long long)D, causal, with_doc);
    return ctx->err.status;
}

/* N_CASES cases of op `name` in fp32 from make, case k drawn with *variant = k, each against the
 * op's nmse bound. */
static void run_variants(const char *name, lq_gc_make_fn make, int *variant, int mode_id, const char *mode) {
    int op = lq_op_find(name), fails = 0;
    assert_true(op >= 0);
    const op_bound *b = bound_of(name);
    assert_non_null(b);
    for (int k = 0; k < N_CASES; k++) {
        *variant = k;
        fails += run_case(g_cpu, g_cu, op, k, case_seed(op, k, mode_id), b->nmse, 0.0, mode, make);
    }
    if (fails) fail_msg("%s [%s]: %d comparison(s) failed (bound %.0e: %s)", name, mode, fails, b->nmse, b->why);
}

static void test_attention_long(void **state) {
    (void)state;
    run_variants("attention", attn_long_make, &g_attn_variant, 6, "fp32 long rows");
}

/* rope at head sizes the random cases never reach (they keep D <= 7 for the CPU gradcheck), where
 * cuda_nn.cu's four-wide kernel runs: half and interleaved pairs, pass-through dims, per-batch
 * positions, a gradient accumulated onto another (the input read by two ropes), and D 36 in the half
 * layout, which the four-wide kernel declines (rot / 2 not a multiple of 4). Variant v is case v. */
static int g_rope_variant;

static lq_tensor *rope_wide_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    lq_rope_params p = {(lq_rope_layout)c->ip[0], (int)c->ip[1], 10000.0f, NULL};
    lq_tensor *y = lq_rope(ctx, in[0], in[1], &p);
    return c->ip[2] && y ? lq_add(ctx, y, lq_rope(ctx, in[0], in[1], &p)) : y;
}

static lq_status rope_wide_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    static const struct {
        int layout, D, rot, per_batch, twice;
    } v[] = {{LQ_ROPE_HALF, 64, 64, 0, 0},        {LQ_ROPE_INTERLEAVED, 64, 32, 1, 1}, {LQ_ROPE_HALF, 128, 64, 0, 1},
             {LQ_ROPE_INTERLEAVED, 36, 36, 0, 0}, {LQ_ROPE_HALF, 36, 36, 1, 0},        {LQ_ROPE_HALF, 48, 48, 1, 1}};
    int k = g_rope_variant % (int)(sizeof v / sizeof v[0]);
    int64_t B = lq_rng_int(rng, 1, 2), T = lq_rng_int(rng, 20, 70), H = lq_rng_int(rng, 1, 4), D = v[k].D;
    c->n_in = 2;
    c->in[0] = lq_gc_input(ctx, rng, 4, (int64_t[]){B, T, H, D}, -1, 1);
    c->in[1] = v[k].per_batch ? lq_gc_ids(ctx, rng, 2, (int64_t[]){B, T}, 0, 40) : lq_gc_ids(ctx, rng, 1, &T, 0, 40);
    c->ip[0] = v[k].layout;
    c->ip[1] = v[k].rot;
    c->ip[2] = v[k].twice;
    c->call = rope_wide_call;
    snprintf(c->desc, sizeof c->desc, "x (%lld, %lld, %lld, %lld) %s rot_dim %d pos %s%s", (long long)B, (long long)T,
             (long long)H, (long long)D, v[k].layout == LQ_ROPE_INTERLEAVED ? "interleaved" : "half", v[k].rot,
             v[k].per_batch ? "(B, T)" : "(T)", v[k].twice ? ", x read twice" : "");
    return ctx->err.status;
}

static void test_rope_wide(void **state) {
    (void)state;
    run_variants("rope", rope_wide_make, &g_rope_variant, 7, "fp32 wide");
}

/* swiglu over sizes the random cases seldom reach, where cuda_elementwise.cu's float4 kernels run
 * (m % 4 == 0), and one they decline (m odd); swiglu(x, x), where the gate's and the up's gradient
 * are one buffer (assigned, then added to); and the gate and up read by two swiglus, so the second
 * backward adds to gradients the first assigned. Variant v is case v. */
static int g_swiglu_variant;

static lq_tensor *swiglu_wide_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    lq_tensor *u = c->ip[0] ? in[0] : in[1], *y = lq_swiglu(ctx, in[0], u);
    return c->ip[1] && y ? lq_add(ctx, y, lq_swiglu(ctx, in[0], u)) : y;
}

static lq_status swiglu_wide_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    static const struct {
        int64_t F;
        int alias, twice;
    } v[] = {{64, 0, 0}, {63, 0, 0}, {96, 1, 0}, {40, 0, 1}, {36, 1, 1}, {125, 0, 1}};
    int k = g_swiglu_variant % (int)(sizeof v / sizeof v[0]);
    int64_t B = lq_rng_int(rng, 1, 2), T = v[k].F % 2 ? 2 * lq_rng_int(rng, 8, 30) + 1 : lq_rng_int(rng, 8, 60);
    int64_t shape[3] = {B, T, v[k].F};
    c->n_in = 2;
    c->in[0] = lq_gc_input(ctx, rng, 3, shape, -4, 4);
    c->in[1] = lq_gc_input(ctx, rng, 3, shape, -2, 2);
    c->ip[0] = v[k].alias;
    c->ip[1] = v[k].twice;
    c->call = swiglu_wide_call;
    snprintf(c->desc, sizeof c->desc, "(%lld, %lld, %lld)%s%s", (long long)B, (long long)T, (long long)v[k].F,
             v[k].alias ? " swiglu(x, x)" : "", v[k].twice ? ", read twice" : "");
    return ctx->err.status;
}

static void test_swiglu_wide(void **state) {
    (void)state;
    run_variants("swiglu", swiglu_wide_make, &g_swiglu_variant, 8, "fp32 wide");
}

/* rmsnorm over rows wider than the random cases' (C <= 9), where cuda_norm.cu's four-wide row
 * kernels run (C % 4 == 0), and one they decline (C 258); with and without a weight, and x read
 * by two rmsnorms, so the second backward adds to the gradient the first wrote. Variant v is
 * case v. */
static int g_rms_variant;

static lq_tensor *rms_wide_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    const lq_gc_case *c = user;
    lq_tensor *w = n_in > 1 ? in[1] : NULL, *y = lq_rmsnorm(ctx, in[0], w, 1e-5f);
    return c->ip[0] && y ? lq_add(ctx, y, lq_rmsnorm(ctx, in[0], w, 1e-5f)) : y;
}

static lq_status rms_wide_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    static const struct {
        int64_t C;
        int weight, twice;
    } v[] = {{256, 1, 0}, {64, 0, 0}, {258, 1, 1}, {512, 1, 1}, {36, 0, 1}, {2048, 1, 0}};
    int k = g_rms_variant % (int)(sizeof v / sizeof v[0]);
    int64_t R = lq_rng_int(rng, 1, 40), C = v[k].C;
    c->n_in = 1;
    c->in[0] = lq_gc_input(ctx, rng, 2, (int64_t[]){R, C}, -2, 2);
    if (v[k].weight) c->in[c->n_in++] = lq_gc_input(ctx, rng, 1, &C, 0.5f, 1.5f);
    c->ip[0] = v[k].twice;
    c->call = rms_wide_call;
    snprintf(c->desc, sizeof c->desc, "x (%lld, %lld)%s%s", (long long)R, (long long)C, v[k].weight ? " weight" : "",
             v[k].twice ? ", read twice" : "");
    return ctx->err.status;
}

static void test_rms_wide(void **state) {
    (void)state;
    run_variants("rmsnorm", rms_wide_make, &g_rms_variant, 9, "fp32 wide");
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

int main(void) {
    int rc = 0;
    if (!lq_cuda_test_should_run(&rc)) return rc;
    g_seed = lq_cuda_test_seed("test_cuda_ops");
    int n_ops = lq_op_count();
    if (n_ops > (int)(sizeof g_op_index / sizeof g_op_index[0])) {
        printf("test_cuda_ops: %d ops, room for %d\n", n_ops, (int)(sizeof g_op_index / sizeof g_op_index[0]));
        return 1;
    }
    struct CMUnitTest tests[64 + 9];
    int n = 0;
    for (int i = 0; i < n_ops; i++) {
        g_op_index[i] = i;
        tests[n++] = (struct CMUnitTest){lq_op_name(i), test_op, NULL, NULL, &g_op_index[i]};
    }
    tests[n++] = (struct CMUnitTest){"matmul_tf32", test_matmul_tf32, NULL, NULL, NULL};
    tests[n++] = (struct CMUnitTest){"matmul_bf16", test_matmul_bf16, NULL, NULL, NULL};
    tests[n++] = (struct CMUnitTest){"lora_bnb4_tf32", test_lora_bnb4_tf32, NULL, NULL, NULL};
    tests[n++] = (struct CMUnitTest){"lora_bnb4_bf16", test_lora_bnb4_bf16, NULL, NULL, NULL};
    tests[n++] = (struct CMUnitTest){"qlinear_fused_bf16", test_qlinear_fused_bf16, NULL, NULL, NULL};
    tests[n++] = (struct CMUnitTest){"attention_long_rows", test_attention_long, NULL, NULL, NULL};
    tests[n++] = (struct CMUnitTest){"rope_wide", test_rope_wide, NULL, NULL, NULL};
    tests[n++] = (struct CMUnitTest){"swiglu_wide", test_swiglu_wide, NULL, NULL, NULL};
    tests[n++] = (struct CMUnitTest){"rmsnorm_wide", test_rms_wide, NULL, NULL, NULL};
    return _cmocka_run_group_tests("test_cuda_ops", tests, (size_t)n, group_setup, group_teardown);
}
