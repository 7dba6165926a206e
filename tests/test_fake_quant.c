/* tests/test_fake_quant.c: integer affine quantization and the fake-quant autograd ops against
 * PyTorch (tests/fixtures/fakequant.lqfx from tools/gen_fakequant_fixtures.py) and against
 * independent references written here; NaN / Inf refusal (the I8 / I4 rows: test_quant_affine.c). */
#include "tests/testutil.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static lq_fixture *g_fx;

/* --- fixture helpers --------------------------------------------------------------------------- */

static const lq_fx_tensor *fx_get(const char *kind, int ci, const char *field) {
    return lq_fixture_find(g_fx, "%s/%d/%s", kind, ci, field);
}

/* Fixture data sits at unaligned offsets: copy it into an arena tensor (i32 records become f32
 * when as_f32). */
static lq_tensor *fx_tensor(lq_ctx *ctx, const lq_fx_tensor *t, bool requires_grad, bool as_f32) {
    assert_non_null(t);
    lq_tensor *x = lq_new(ctx, LQ_DTYPE_F32, t->ndim, t->shape);
    assert_non_null(x);
    if (t->dtype == 1 && as_f32) {
        for (int64_t i = 0; i < t->numel; i++) {
            int32_t v;
            memcpy(&v, (const char *)t->data + 4 * i, 4);
            ((float *)x->data)[i] = (float)v;
        }
    } else {
        memcpy(x->data, t->data, (size_t)t->numel * 4);
    }
    if (requires_grad) x->flags |= LQ_TENSOR_REQUIRES_GRAD;
    return x;
}

static float fx_param(const lq_fx_tensor *p, int i) {
    float v;
    memcpy(&v, (const char *)p->data + 4 * i, 4);
    return v;
}

/* Bit-for-bit equality of float arrays; returns the number of differing elements and reports the
 * first. -0 and +0 count as equal only where allow_signed_zero (STE masks multiply by 0). */
static int64_t count_diff(const float *a, const lq_fx_tensor *ref, bool allow_signed_zero, const char *what) {
    assert_non_null(ref);
    int64_t bad = 0;
    for (int64_t i = 0; i < ref->numel; i++) {
        float r;
        memcpy(&r, (const char *)ref->data + 4 * i, 4);
        bool same = allow_signed_zero ? (a[i] == r) : (memcmp(&a[i], &r, 4) == 0);
        if (!same && bad++ == 0) printf("  %s: element %lld is %.9g, torch %.9g\n", what, (long long)i, (double)a[i], (double)r);
    }
    return bad;
}

/* Runs backward from out with the fixture's R. */
static void backward_with(lq_ctx *ctx, lq_tensor *out, const lq_fx_tensor *R) {
    lq_tensor *g = fx_tensor(ctx, R, false, false);
    assert_int_equal(lq_backward_from(ctx, out, g), LQ_OK);
}

/* How many x sit exactly on a rounding tie (x / s = k + 1/2 in float) and how many are clamped:
 * so a case cannot pass without exercising either. */
static void count_ties(const float *x, int64_t n, float s, int32_t zp, int32_t qmin, int32_t qmax, int64_t *ties,
                       int64_t *clamped) {
    float inv = 1.0f / s;
    for (int64_t i = 0; i < n; i++) {
        float v = x[i] * inv;
        if (v - floorf(v) == 0.5f) (*ties)++;
        float q = (float)zp + nearbyintf(v);
        if (q < (float)qmin || q > (float)qmax) (*clamped)++;
    }
}

/* --- non-learnable fake quantization against torch ------------------------------------------- */

/* One pt / pc / pg case through lq_fake_quant: output bit-identical, STE mask identical. */
static void run_fixed_case(lq_ctx *ctx, const char *kind, int ci, lq_affine_scheme s, lq_tensor *scale,
                           lq_tensor *zp, int64_t *ties, int64_t *clamped) {
    lq_tensor *x = fx_tensor(ctx, fx_get(kind, ci, "x"), true, false);
    lq_fq_params p = {s, scale, zp};
    lq_tensor *y = lq_fake_quant(ctx, x, &p);
    assert_ctx_ok(ctx);
    char what[64];
    snprintf(what, sizeof what, "%s/%d out", kind, ci);
    assert_int_equal(count_diff(y->data, fx_get(kind, ci, "out"), false, what), 0);
    backward_with(ctx, y, fx_get(kind, ci, "R"));
    snprintf(what, sizeof what, "%s/%d grad_x", kind, ci);
    assert_int_equal(count_diff(x->grad->data, fx_get(kind, ci, "grad_x"), true, what), 0);
    /* the buffer API gives the same, and quantize + dequantize composes to it */
    int64_t n = lq_numel(x), slots;
    assert_int_equal(lq_affine_check(&s, x->ndim, x->ne, &slots, NULL), LQ_OK);
    float *y2 = malloc((size_t)n * sizeof(float));
    int32_t *codes = malloc((size_t)n * sizeof(int32_t)), *zi = malloc((size_t)slots * sizeof(int32_t));
    for (int64_t k = 0; k < slots; k++) zi[k] = zp ? (int32_t)((float *)zp->data)[k] : 0;
    assert_int_equal(lq_affine_quantize(&s, x->ndim, x->ne, x->data, scale->data, zi, codes, 1, NULL), LQ_OK);
    assert_int_equal(lq_affine_dequantize(&s, x->ndim, x->ne, codes, scale->data, zi, y2, 1, NULL), LQ_OK);
    assert_int_equal(count_diff(y2, fx_get(kind, ci, "out"), false, "quantize + dequantize"), 0);
    int64_t inner = lq_affine_inner(&s, x->ndim, x->ne);
    for (int64_t i = 0; i < n; i++) {
        assert_true(codes[i] >= s.qmin && codes[i] <= s.qmax);
        int64_t k = (i / inner) % slots;
        count_ties(&((float *)x->data)[i], 1, ((float *)scale->data)[k], zi[k], s.qmin, s.qmax, ties, clamped);
    }
    free(y2);
    free(codes);
    free(zi);
    lq_ctx_step_reset(ctx);
}

/* pt (per tensor), pc (per channel) and pg (per group) cases: params are [scale, zp, qmin, qmax],
 * [axis, qmin, qmax] and [group, qmin, qmax]; ties and clamped values must be among them. */
static void check_fixed_kind(const char *kind, lq_granularity gran, int min_cases, int64_t min_ties,
                             int64_t min_clamped) {
    lq_ctx *ctx = lq_test_ctx(2);
    int n = 0;
    int64_t ties = 0, clamped = 0;
    for (int ci = 0; fx_get(kind, ci, "x"); ci++, n++) {
        const lq_fx_tensor *pp = fx_get(kind, ci, "params");
        int o = gran == LQ_GRAN_TENSOR ? 2 : 1;
        lq_affine_scheme s = {(int32_t)fx_param(pp, o), (int32_t)fx_param(pp, o + 1), gran,
                              gran == LQ_GRAN_CHANNEL ? (int)fx_param(pp, 0) : 0,
                              gran == LQ_GRAN_GROUP ? (int64_t)fx_param(pp, 0) : 0};
        lq_tensor *scale, *zp;
        if (gran == LQ_GRAN_TENSOR) {
            scale = lq_new(ctx, LQ_DTYPE_F32, 1, (int64_t[]){1});
            zp = lq_new(ctx, LQ_DTYPE_F32, 1, (int64_t[]){1});
            ((float *)scale->data)[0] = fx_param(pp, 0);
            ((float *)zp->data)[0] = fx_param(pp, 1);
        } else {
            scale = fx_tensor(ctx, fx_get(kind, ci, "scale"), false, false);
            zp = fx_tensor(ctx, fx_get(kind, ci, "zp"), false, true);
        }
        run_fixed_case(ctx, kind, ci, s, scale, zp, &ties, &clamped);
    }
    printf("%s: %d cases bit-identical to torch, STE masks identical (%lld values on rounding ties, %lld "
           "clamped)\n", kind, n, (long long)ties, (long long)clamped);
    assert_true(n >= min_cases);
    assert_true(ties >= min_ties && clamped >= min_clamped);
    lq_ctx_free(ctx);
}

static void test_per_tensor_matches_torch(void **state) {
    (void)state;
    check_fixed_kind("pt", LQ_GRAN_TENSOR, 10, 50, 50);
}

static void test_per_channel_matches_torch(void **state) {
    (void)state;
    check_fixed_kind("pc", LQ_GRAN_CHANNEL, 6, 20, 10);
}

static void test_per_group_matches_torch(void **state) {
    (void)state;
    check_fixed_kind("pg", LQ_GRAN_GROUP, 4, 10, 4);
}

/* Per-group and per-token layouts of 3-D and 4-D shapes against a reference loop that finds each
 * element's scale from its (row, column) directly. */
static void test_group_and_token_layouts(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_rng rng;
    lq_rng_seed(&rng, 7);
    const int64_t shapes[][4] = {{2, 3, 12, 0}, {2, 2, 2, 8}, {5, 6, 0, 0}};
    const int ndims[] = {3, 4, 2};
    for (int t = 0; t < 3; t++) {
        for (int gran = LQ_GRAN_GROUP; gran <= LQ_GRAN_TOKEN; gran++) {
            int nd = ndims[t];
            const int64_t *sh = shapes[t];
            int64_t cols = sh[nd - 1], n = 1;
            for (int d = 0; d < nd; d++) n *= sh[d];
            int64_t g = gran == LQ_GRAN_GROUP ? (cols % 4 == 0 ? 4 : 3) : cols;
            lq_affine_scheme s = lq_affine_scheme_make(4, false, (lq_granularity)gran, 0, g);
            int64_t slots;
            assert_int_equal(lq_affine_check(&s, nd, sh, &slots, NULL), LQ_OK);
            assert_int_equal(slots, n / g);
            float *x = malloc((size_t)n * sizeof(float)), *y = malloc((size_t)n * sizeof(float));
            float *sc = malloc((size_t)slots * sizeof(float));
            int32_t *zp = malloc((size_t)slots * sizeof(int32_t));
            for (int64_t i = 0; i < n; i++) x[i] = 3.0f * lq_rng_normal(&rng);
            for (int64_t k = 0; k < slots; k++) {
                sc[k] = 0.1f + 0.5f * lq_rng_uniform(&rng);
                zp[k] = (int32_t)lq_rng_int(&rng, 3, 12);
            }
            assert_int_equal(lq_affine_fake_quantize(&s, nd, sh, x, sc, zp, y, NULL, 1, NULL), LQ_OK);
            for (int64_t i = 0; i < n; i++) {
                int64_t row = i / cols, col = i % cols, k = row * (cols / g) + col / g;
                double q = nearbyint((double)x[i] / sc[k]) + zp[k];
                q = fmin(fmax(q, 0.0), 15.0);
                double want = (q - zp[k]) * sc[k];
                /* the reference divides in double: it may round differently only within 1e-5 of a tie */
                double v = (double)x[i] / sc[k];
                if (fabs(fabs(v - floor(v)) - 0.5) < 1e-5) continue;
                if (fabs(y[i] - want) > 1e-6 * fabs(want) + 1e-7)
                    fail_msg("layout %d gran %d: element %lld is %g, reference %g", t, gran, (long long)i, (double)y[i],
                             want);
            }
            free(x), free(y), free(sc), free(zp);
        }
    }
    /* a group that does not divide the last dim is refused with a message */
    lq_err err = {0};
    lq_affine_scheme bad = lq_affine_scheme_make(4, true, LQ_GRAN_GROUP, 0, 5);
    assert_int_equal(lq_affine_check(&bad, 2, (int64_t[]){3, 12}, NULL, &err), LQ_ERR_SHAPE);
    assert_non_null(strstr(err.msg, "does not divide"));
    lq_ctx_free(ctx);
}

/* --- LSQ against torch's learnable fake quantize ----------------------------------------------- */

/* The zero point as torch's learnable backward takes it (per tensor (int)(z + 0.5f) clamped, per
 * channel round-half-even clamped), written out here from the PyTorch sources' description. */
static double ref_zp_backward(float z, bool per_channel, int32_t qmin, int32_t qmax) {
    double v = per_channel ? nearbyint((double)z) : (double)z + 0.5;
    v = fmin(fmax(v, qmin), qmax);
    return per_channel ? v : trunc(v);
}

/* Sum over slot k of |LSQ term| for scale (S_s) and zero point (S_z), in double from the paper's
 * formulas: the magnitude the summation-order tolerance is relative to. */
static void lsq_term_mass(const float *x, const float *R, int64_t n, int64_t slots, int64_t inner, const float *sc,
                          const float *zp, bool per_channel, int32_t qmin, int32_t qmax, double g, double *S_s,
                          double *S_z) {
    for (int64_t i = 0; i < n; i++) {
        int64_t k = slots > 1 ? (i / inner) % slots : 0;
        double s = sc[k], z = ref_zp_backward(zp[k], per_channel, qmin, qmax);
        double q = nearbyint(z + x[i] / s);
        if (q < qmin || q > qmax) {
            S_s[k] += fabs(R[i] * ((q < qmin ? qmin : qmax) - z) * g);
            S_z[k] += fabs(R[i] * s * g);
        } else {
            S_s[k] += fabs(R[i] * (q - z - x[i] / s) * g);
        }
    }
}

/* loquat sums the per-element float terms (bit-identical to torch's kernel) in double; torch sums
 * them in float32 with its vectorized cascade. The two sums of the same N terms differ by at most
 * about log2(N) * 2^-24 * sum|t| (pairwise float summation error; N <= 1024 here gives 10 * 6e-8),
 * so 2e-6 * sum|t| is a tight bound that a single wrong term (>= one code step times |R| * g)
 * exceeds by orders of magnitude. */
#define LSQ_SUM_RTOL 2e-6

static void run_lsq_case(lq_ctx *ctx, const char *kind, int ci, double *worst) {
    bool per_channel = strcmp(kind, "lsqc") == 0;
    const lq_fx_tensor *pp = fx_get(kind, ci, "params");
    int o = per_channel ? 1 : 0;
    lq_lsq_params p = {(int32_t)fx_param(pp, o), (int32_t)fx_param(pp, o + 1), per_channel,
                       per_channel ? (int)fx_param(pp, 0) : 0, fx_param(pp, o + 2)};
    lq_tensor *x = fx_tensor(ctx, fx_get(kind, ci, "x"), true, false);
    lq_tensor *scale = fx_tensor(ctx, fx_get(kind, ci, "scale"), true, false);
    lq_tensor *zp = fx_tensor(ctx, fx_get(kind, ci, "zp"), true, false);
    lq_tensor *y = lq_fake_quant_lsq(ctx, x, scale, zp, &p);
    assert_ctx_ok(ctx);
    char what[64];
    snprintf(what, sizeof what, "%s/%d out", kind, ci);
    assert_int_equal(count_diff(y->data, fx_get(kind, ci, "out"), false, what), 0);
    const lq_fx_tensor *Rf = fx_get(kind, ci, "R");
    backward_with(ctx, y, Rf);
    snprintf(what, sizeof what, "%s/%d grad_x", kind, ci);
    assert_int_equal(count_diff(x->grad->data, fx_get(kind, ci, "grad_x"), true, what), 0);

    int64_t n = lq_numel(x), slots = lq_numel(scale), inner = 1;
    if (per_channel)
        for (int d = p.axis + 1; d < x->ndim; d++) inner *= x->ne[d];
    else
        inner = n;
    double *S_s = calloc((size_t)slots, sizeof(double)), *S_z = calloc((size_t)slots, sizeof(double));
    lq_tensor *R = fx_tensor(ctx, Rf, false, false);
    lsq_term_mass(x->data, R->data, n, slots, inner, scale->data, zp->data, per_channel, p.qmin, p.qmax,
                  p.grad_factor, S_s, S_z);
    const lq_fx_tensor *gs = fx_get(kind, ci, "grad_scale"), *gz = fx_get(kind, ci, "grad_zp");
    for (int64_t k = 0; k < slots; k++) {
        double ws = fx_param(gs, (int)k), wz = fx_param(gz, (int)k);
        double as = ((float *)scale->grad->data)[k], az = ((float *)zp->grad->data)[k];
        double ts = LSQ_SUM_RTOL * S_s[k] + 1e-12, tz = LSQ_SUM_RTOL * S_z[k] + 1e-12;
        if (fabs(as - ws) > ts || fabs(az - wz) > tz)
            fail_msg("%s/%d slot %lld: d scale %.9g (torch %.9g, tol %.3g), d zero point %.9g (torch %.9g, tol %.3g)",
                     kind, ci, (long long)k, as, ws, ts, az, wz, tz);
        if (S_s[k] > 0) *worst = fmax(*worst, fabs(as - ws) / S_s[k]);
        if (S_z[k] > 0) *worst = fmax(*worst, fabs(az - wz) / S_z[k]);
    }
    free(S_s);
    free(S_z);
    lq_ctx_step_reset(ctx);
}

static void test_lsq_matches_torch(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(2);
    int nt = 0, nc = 0;
    double worst = 0;
    for (int ci = 0; fx_get("lsqt", ci, "x"); ci++, nt++) run_lsq_case(ctx, "lsqt", ci, &worst);
    for (int ci = 0; fx_get("lsqc", ci, "x"); ci++, nc++) run_lsq_case(ctx, "lsqc", ci, &worst);
    printf("LSQ: %d per-tensor and %d per-channel cases; outputs and dx bit-identical, d scale / d zero point "
           "within %.2e of sum|terms| (tolerance %.0e)\n", nt, nc, worst, LSQ_SUM_RTOL);
    assert_true(nt >= 8 && nc >= 5);
    lq_ctx_free(ctx);
}

static void test_lsq_grad_factor(void **state) {
    (void)state;
    /* LSQ's g = 1 / sqrt(N Qp): 4-bit signed weights, 256 per channel -> 1 / sqrt(256 * 7) */
    assert_float_equal(lq_lsq_grad_factor(256, 7), 1.0 / sqrt(1792.0), 1e-8);
    assert_float_equal(lq_lsq_grad_factor(4096, 255), 1.0 / sqrt(4096.0 * 255.0), 1e-10);
}

/* --- PACT ---------------------------------------------------------------------------------------- */

static void test_pact(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(2);
    int n_cases = 0;
    for (int ci = 0; fx_get("pact", ci, "x"); ci++, n_cases++) {
        int bits = (int)fx_param(fx_get("pact", ci, "params"), 0);
        lq_tensor *x = fx_tensor(ctx, fx_get("pact", ci, "x"), true, false);
        lq_tensor *alpha = fx_tensor(ctx, fx_get("pact", ci, "alpha"), true, false);
        lq_tensor *y = lq_pact(ctx, x, alpha, bits);
        assert_ctx_ok(ctx);
        assert_int_equal(count_diff(y->data, fx_get("pact", ci, "out"), false, "pact out"), 0);
        const lq_fx_tensor *Rf = fx_get("pact", ci, "R");
        backward_with(ctx, y, Rf);
        assert_int_equal(count_diff(x->grad->data, fx_get("pact", ci, "grad_x"), true, "pact grad_x"), 0);
        /* independent reference: PACT's formulas in double */
        lq_tensor *R = fx_tensor(ctx, Rf, false, false);
        const float *xd = x->data, *yd = y->data, *Rd = R->data;
        double a = ((float *)alpha->data)[0], levels = (1 << bits) - 1, da = 0, mass = 0;
        int64_t beyond = 0;
        for (int64_t i = 0; i < lq_numel(x); i++) {
            double xc = fmin(fmax(xd[i], 0.0), a), v = xc * levels / a;
            if (fabs(fabs(v - floor(v)) - 0.5) > 1e-4) {
                double want = nearbyint(v) * a / levels;
                if (fabs(yd[i] - want) > 1e-6 * a) fail_msg("pact %d: element %lld is %g, PACT gives %g", ci, (long long)i, (double)yd[i], want);
            }
            double gx = (xd[i] >= 0 && xd[i] < a) ? Rd[i] : 0.0;
            if (((float *)x->grad->data)[i] != (float)gx) fail_msg("pact %d: dx[%lld] wrong", ci, (long long)i);
            if (xd[i] >= a) da += Rd[i], beyond++;
            mass += fabs(Rd[i]);
        }
        double ga = ((float *)alpha->grad->data)[0], wt = fx_param(fx_get("pact", ci, "grad_alpha"), 0);
        assert_true(beyond > 0);
        if (fabs(ga - da) > 1e-6 * mass || fabs(ga - wt) > 2e-6 * mass)
            fail_msg("pact %d: d alpha %.9g, reference %.9g, torch %.9g", ci, ga, da, wt);
        lq_ctx_step_reset(ctx);
    }
    assert_true(n_cases >= 4);
    /* alpha <= 0 is refused */
    lq_tensor *x = lq_zeros(ctx, LQ_DTYPE_F32, 1, (int64_t[]){4});
    lq_tensor *alpha = lq_zeros(ctx, LQ_DTYPE_F32, 1, (int64_t[]){1});
    assert_null(lq_pact(ctx, x, alpha, 4));
    assert_non_null(strstr(lq_ctx_error(ctx)->msg, "alpha"));
    lq_ctx_free(ctx);
}

/* --- dynamic per token ------------------------------------------------------------------------- */

static void test_dynamic_per_token(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(2);
    int n_cases = 0;
    for (int ci = 0; fx_get("dyn", ci, "x"); ci++, n_cases++) {
        const lq_fx_tensor *pp = fx_get("dyn", ci, "params");
        int bits = (int)fx_param(pp, 0);
        bool sym = fx_param(pp, 1) != 0;
        lq_tensor *x = fx_tensor(ctx, fx_get("dyn", ci, "x"), true, false);
        int64_t cols = x->ne[x->ndim - 1], rows = lq_numel(x) / cols;
        lq_tensor *y = lq_fake_quant_dynamic(ctx, x, bits, sym);
        assert_ctx_ok(ctx);
        assert_int_equal(count_diff(y->data, fx_get("dyn", ci, "out"), false, "dynamic out"), 0);
        float *sc = malloc((size_t)rows * sizeof(float)), *zp = malloc((size_t)rows * sizeof(float));
        float *y2 = malloc((size_t)(rows * cols) * sizeof(float));
        assert_int_equal(lq_affine_fake_quantize_dynamic(x->data, rows, cols, bits, sym, y2, sc, zp, 1, NULL), LQ_OK);
        assert_int_equal(count_diff(sc, fx_get("dyn", ci, "scale"), false, "dynamic scale"), 0);
        assert_int_equal(count_diff(zp, fx_get("dyn", ci, "zp"), false, "dynamic zero point"), 0);
        /* independent properties: per row the scale spans the row's range, zero maps to zero,
         * zero points are codes, nothing moves by more than one step */
        double qmin = -(1 << (bits - 1)), qmax = (1 << (bits - 1)) - 1;
        const float *xd = x->data, *yd = y->data;
        for (int64_t r = 0; r < rows; r++) {
            double lo = 0, hi = 0;
            for (int64_t j = 0; j < cols; j++) lo = fmin(lo, xd[r * cols + j]), hi = fmax(hi, xd[r * cols + j]);
            double want = sym ? fmax(-lo, hi) / ((qmax - qmin) / 2) : (hi - lo) / (qmax - qmin);
            want = fmax(want, FLT_EPSILON);
            assert_true(fabs(sc[r] - want) <= 2e-7 * want);
            assert_true(zp[r] == nearbyintf(zp[r]) && zp[r] >= qmin && zp[r] <= qmax);
            if (sym) assert_true(zp[r] == 0.0f);
            for (int64_t j = 0; j < cols; j++) {
                float xv = xd[r * cols + j], yv = yd[r * cols + j];
                if (xv == 0.0f) assert_true(yv == 0.0f);
                if (fabs((double)yv - xv) > 1.00001 * sc[r])
                    fail_msg("dyn %d row %lld: %g became %g (scale %g)", ci, (long long)r, (double)xv, (double)yv, (double)sc[r]);
            }
        }
        /* straight through: dx = dy exactly */
        lq_tensor *g = lq_new(ctx, LQ_DTYPE_F32, y->ndim, y->ne);
        for (int64_t i = 0; i < lq_numel(g); i++) ((float *)g->data)[i] = (float)(i % 7) - 3.0f;
        assert_int_equal(lq_backward_from(ctx, y, g), LQ_OK);
        assert_memory_equal(x->grad->data, g->data, (size_t)lq_numel(g) * sizeof(float));
        free(sc), free(zp), free(y2);
        lq_ctx_step_reset(ctx);
    }
    assert_true(n_cases >= 6);
    lq_ctx_free(ctx);
}

/* --- NF4 / FP4 ------------------------------------------------------------------------------------ */

static void test_bnb4_matches_bitsandbytes(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(2);
    int n_cases = 0;
    int64_t signed_zeros = 0;
    for (int ci = 0; fx_get("bnb4", ci, "x"); ci++, n_cases++) {
        const lq_fx_tensor *pp = fx_get("bnb4", ci, "params");
        lq_dtype type = fx_param(pp, 0) == 0 ? LQ_DTYPE_NF4 : LQ_DTYPE_FP4;
        int64_t block = (int64_t)fx_param(pp, 1);
        lq_tensor *x = fx_tensor(ctx, fx_get("bnb4", ci, "x"), true, false);
        lq_tensor *y = lq_fake_quant_bnb4(ctx, x, type, block);
        assert_ctx_ok(ctx);
        char what[64];
        snprintf(what, sizeof what, "bnb4/%d (%s, block %lld)", ci, lq_dtype_name(type), (long long)block);
        /* equal as floats: bitsandbytes' CPU dequantize_4bit gives FP4 code 8 (chosen for tiny
         * positive x) as -0.0, quant/'s table (bnb's own code table) as +0.0 */
        assert_int_equal(count_diff(y->data, fx_get("bnb4", ci, "out"), true, what), 0);
        const lq_fx_tensor *ref = fx_get("bnb4", ci, "out");
        for (int64_t i = 0; i < ref->numel; i++) signed_zeros += memcmp((float *)y->data + i, (const char *)ref->data + 4 * i, 4) != 0;
        lq_tensor *g = lq_new(ctx, LQ_DTYPE_F32, y->ndim, y->ne);
        for (int64_t i = 0; i < lq_numel(g); i++) ((float *)g->data)[i] = 0.25f * (float)(i % 9) - 1.0f;
        assert_int_equal(lq_backward_from(ctx, y, g), LQ_OK);
        assert_memory_equal(x->grad->data, g->data, (size_t)lq_numel(g) * sizeof(float));
        lq_ctx_step_reset(ctx);
    }
    printf("nf4 / fp4 fake quantization: %d cases equal to bitsandbytes (bit-identical but for %lld zeros of "
           "opposite sign)\n", n_cases, (long long)signed_zeros);
    assert_true(n_cases >= 5); /* the generator had bitsandbytes: no silent skip */
    lq_tensor *x = lq_zeros(ctx, LQ_DTYPE_F32, 1, (int64_t[]){64});
    assert_null(lq_fake_quant_bnb4(ctx, x, LQ_DTYPE_NF4, 48));
    assert_non_null(strstr(lq_ctx_error(ctx)->msg, "block size 48"));
    lq_ctx_clear_error(ctx);
    assert_null(lq_fake_quant_bnb4(ctx, x, LQ_DTYPE_I4, 64));
    lq_ctx_clear_error(ctx);
    ((float *)x->data)[10] = NAN;
    assert_null(lq_fake_quant_bnb4(ctx, x, LQ_DTYPE_FP4, 64));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_NUMERIC);
    lq_ctx_free(ctx);
}

/* --- bad input ------------------------------------------------------------------------------------ */

static void test_nan_inf_rejected(void **state) {
    (void)state;
    float x[8] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, NAN, 0.7f, INFINITY}, y[8], sc = 0.1f;
    int32_t codes[8], zp = 0;
    int64_t n = 8;
    uint8_t mask[8];
    lq_affine_scheme s = lq_affine_scheme_make(8, true, LQ_GRAN_TENSOR, 0, 0);
    lq_err err = {0};
    assert_int_equal(lq_affine_fake_quantize(&s, 1, &n, x, &sc, &zp, y, mask, 1, &err), LQ_ERR_NUMERIC);
    assert_non_null(strstr(err.msg, "element 5 is NaN"));
    lq_err_clear(&err);
    x[5] = 0.6f;
    assert_int_equal(lq_affine_quantize(&s, 1, &n, x, &sc, &zp, codes, 2, &err), LQ_ERR_NUMERIC);
    assert_non_null(strstr(err.msg, "element 7 is +Inf"));
    lq_err_clear(&err);
    /* bad scales and zero points */
    float bad_scale = 0.0f;
    assert_int_equal(lq_affine_fake_quantize(&s, 1, &n, x, &bad_scale, NULL, y, NULL, 1, &err), LQ_ERR_NUMERIC);
    assert_non_null(strstr(err.msg, "scale 0"));
    lq_err_clear(&err);
    int32_t bad_zp = 300;
    assert_int_equal(lq_affine_dequantize(&s, 1, &n, codes, &sc, &bad_zp, y, 1, &err), LQ_ERR_ARG);
    assert_non_null(strstr(err.msg, "zero point 0 is 300"));
    lq_err_clear(&err);
    /* the traits rows */
    lq_qstate *qs = lq_qstate_alloc(1, 8, false, false, 0);
    qs->absmax[0] = 0.1f;
    int8_t c8[8];
    assert_int_equal(lq_dtype_info(LQ_DTYPE_I8)->from_f32(x, c8, 8, qs, 0, &err), LQ_ERR_NUMERIC);
    assert_non_null(strstr(err.msg, "element 7"));
    assert_non_null(strstr(err.msg, "Inf"));
    lq_err_clear(&err);
    x[7] = -INFINITY;
    x[2] = NAN;
    uint8_t c4[4];
    assert_int_equal(lq_dtype_info(LQ_DTYPE_I4)->from_f32(x, c4, 8, qs, 0, &err), LQ_ERR_NUMERIC);
    assert_non_null(strstr(err.msg, "element 2 (block 0) is NaN"));
    lq_err_clear(&err);
    assert_int_equal(lq_dtype_info(LQ_DTYPE_I8)->from_f32(x, c8, 8, NULL, 0, &err), LQ_ERR_ARG);
    lq_err_clear(&err);
    lq_qstate_free(qs);
    /* dynamic */
    float xr[6] = {1, 2, 3, 4, NAN, 6};
    assert_int_equal(lq_affine_fake_quantize_dynamic(xr, 2, 3, 8, false, y, NULL, NULL, 1, &err), LQ_ERR_NUMERIC);
    assert_non_null(strstr(err.msg, "element 4 (row 1)"));
    lq_err_clear(&err);

    /* the ops */
    lq_ctx *ctx = lq_test_ctx(1);
    lq_tensor *xt = lq_new_leaf(ctx, 1, (int64_t[]){4}, true);
    float *xd = xt->data;
    xd[0] = 0.5f, xd[1] = NAN, xd[2] = 1.0f, xd[3] = 2.0f;
    lq_tensor *st = lq_new(ctx, LQ_DTYPE_F32, 1, (int64_t[]){1}), *zt = lq_new(ctx, LQ_DTYPE_F32, 1, (int64_t[]){1});
    ((float *)st->data)[0] = 0.1f;
    ((float *)zt->data)[0] = 0.0f;
    lq_fq_params p = {s, st, zt};
    assert_null(lq_fake_quant(ctx, xt, &p));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_NUMERIC);
    assert_non_null(strstr(lq_ctx_error(ctx)->msg, "element 1"));
    lq_ctx_clear_error(ctx);
    assert_null(lq_fake_quant_dynamic(ctx, xt, 8, false));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_NUMERIC);
    lq_ctx_clear_error(ctx);
    xd[1] = 0.25f;
    ((float *)zt->data)[0] = 2.5f; /* a fixed zero point must be an integer */
    assert_null(lq_fake_quant(ctx, xt, &p));
    assert_non_null(strstr(lq_ctx_error(ctx)->msg, "integer"));
    lq_ctx_clear_error(ctx);
    ((float *)zt->data)[0] = 0.0f;
    st->flags |= LQ_TENSOR_REQUIRES_GRAD; /* learning a scale is lq_fake_quant_lsq's job */
    assert_null(lq_fake_quant(ctx, xt, &p));
    assert_non_null(strstr(lq_ctx_error(ctx)->msg, "lsq"));
    lq_ctx_clear_error(ctx);
    ((float *)st->data)[0] = -1.0f;
    lq_lsq_params lp = {-8, 7, false, 0, 1.0f};
    assert_null(lq_fake_quant_lsq(ctx, xt, st, NULL, &lp));
    assert_non_null(strstr(lq_ctx_error(ctx)->msg, "scale 0 is -1"));
    lq_ctx_clear_error(ctx);
    lq_ctx_free(ctx);
}

/* --- thread-count independence ------------------------------------------------------------------ */

static void grads_with_threads(int threads, float *out, float *gx, float *gs, float *gz) {
    lq_ctx *ctx = lq_test_ctx(threads);
    lq_rng rng;
    lq_rng_seed(&rng, 99);
    int64_t shape[2] = {300, 256};
    lq_tensor *x = lq_new_leaf(ctx, 2, shape, true);
    lq_fill_normal(x, &rng, 1.5f);
    lq_tensor *s = lq_new_leaf(ctx, 1, (int64_t[]){1}, true), *z = lq_new_leaf(ctx, 1, (int64_t[]){1}, true);
    ((float *)s->data)[0] = 0.21f;
    ((float *)z->data)[0] = 3.2f;
    lq_lsq_params p = {-8, 7, false, 0, lq_lsq_grad_factor(300 * 256, 7)};
    lq_tensor *y = lq_fake_quant_lsq(ctx, x, s, z, &p);
    lq_tensor *cs = lq_new(ctx, LQ_DTYPE_F32, 1, (int64_t[]){256});
    for (int j = 0; j < 256; j++) ((float *)cs->data)[j] = 0.02f + 0.001f * (float)j;
    lq_fq_params fp = {lq_affine_scheme_make(4, true, LQ_GRAN_CHANNEL, 1, 0), cs, NULL};
    lq_tensor *y2 = lq_fake_quant(ctx, y, &fp);
    lq_tensor *loss = lq_sum(ctx, lq_mul(ctx, y2, y2), LQ_AXIS_ALL, false);
    assert_int_equal(lq_backward(ctx, loss), LQ_OK);
    assert_ctx_ok(ctx);
    memcpy(out, y2->data, sizeof(float) * 300 * 256);
    memcpy(gx, x->grad->data, sizeof(float) * 300 * 256);
    *gs = ((float *)s->grad->data)[0];
    *gz = ((float *)z->grad->data)[0];
    lq_ctx_free(ctx);
}

static void test_thread_independence(void **state) {
    (void)state;
    size_t n = 300 * 256;
    float *o1 = malloc(n * 4), *o2 = malloc(n * 4), *g1 = malloc(n * 4), *g2 = malloc(n * 4), s1, s2, z1, z2;
    grads_with_threads(1, o1, g1, &s1, &z1);
    grads_with_threads(2, o2, g2, &s2, &z2);
    assert_memory_equal(o1, o2, n * 4);
    assert_memory_equal(g1, g2, n * 4);
    assert_memory_equal(&s1, &s2, 4);
    assert_memory_equal(&z1, &z2, 4);
    assert_true(s1 != 0.0f && z1 != 0.0f);
    free(o1), free(o2), free(g1), free(g2);
}

int main(void) {
    char path[512];
    g_fx = lq_fixture_load(lq_fixture_path("fakequant.lqfx", path, sizeof path));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_per_tensor_matches_torch),
        cmocka_unit_test(test_per_channel_matches_torch),
        cmocka_unit_test(test_per_group_matches_torch),
        cmocka_unit_test(test_group_and_token_layouts),
        cmocka_unit_test(test_lsq_matches_torch),
        cmocka_unit_test(test_lsq_grad_factor),
        cmocka_unit_test(test_pact),
        cmocka_unit_test(test_dynamic_per_token),
        cmocka_unit_test(test_bnb4_matches_bitsandbytes),
        cmocka_unit_test(test_nan_inf_rejected),
        cmocka_unit_test(test_thread_independence),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    lq_fixture_free(g_fx);
    return rc;
}
