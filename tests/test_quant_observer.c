/* tests/test_quant_observer.c: qparams and observers against torch.ao fixtures, percentile / MSE observers,
 * per-group observation, freezing and errors (specs and the calibrator: test_quant_spec.c). */
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "quant/quant.h"

static lq_fixture *g_fx;

static int bits_of_range(int32_t qmin, int32_t qmax)
{
    int64_t n = (int64_t)qmax - qmin + 1;
    int b = 0;
    while ((1LL << b) < n) b++;
    return (1LL << b) == n ? b : -1;
}

/* A 4-byte aligned copy of a fixture record's data (records are packed, so unaligned); free() it. */
static void *fx_copy(const lq_fx_tensor *t)
{
    if (!t) fail_msg("fixture record missing");
    void *v = malloc((size_t)t->numel * 4);
    memcpy(v, t->data, (size_t)t->numel * 4);
    return v;
}

static bool same_bits(float a, float b)
{
    return memcmp(&a, &b, sizeof a) == 0;
}

static void assert_msg_has(const lq_err *e, const char *needle)
{
    if (!strstr(e->msg, needle)) fail_msg("error message \"%s\" lacks \"%s\"", e->msg, needle);
}

/* --- torch fixtures -------------------------------------------------------------------------------- */

static void test_affine_range(void **state)
{
    (void)state;
    int32_t lo, hi;
    for (int b = 2; b <= 8; b++) {
        lq_affine_range(b, true, &lo, &hi);
        assert_int_equal(lo, -(1 << (b - 1)));
        assert_int_equal(hi, (1 << (b - 1)) - 1);
        lq_affine_range(b, false, &lo, &hi);
        assert_int_equal(lo, 0);
        assert_int_equal(hi, (1 << b) - 1);
    }
    lq_affine_range(8, true, &lo, &hi);
    assert_int_equal(lo, -128); /* torch.qint8 */
    assert_int_equal(hi, 127);
}

/* calculate_qparams on (min, max) pairs: scale bit-identical, zero point equal. */
static void test_qparams_match_torch(void **state)
{
    (void)state;
    int sets = 0, pairs = 0, via_bits = 0;
    for (int j = 0;; j++) {
        const lq_fx_tensor *pr = lq_fixture_find(g_fx, "qp/%d/params", j);
        if (!pr) break;
        float *p = fx_copy(pr);
        const lq_fx_tensor *mm = lq_fixture_find(g_fx, "qp/%d/minmax", j);
        float *mmv = fx_copy(mm), *sc = fx_copy(lq_fixture_find(g_fx, "qp/%d/scale", j));
        int32_t *zp = fx_copy(lq_fixture_find(g_fx, "qp/%d/zero", j));
        bool sym = p[0] != 0.0f;
        int32_t qmin = (int32_t)p[1], qmax = (int32_t)p[2], symzero = (int32_t)p[3];
        int bits = bits_of_range(qmin, qmax);
        int32_t rl, rh;
        lq_affine_range(bits, sym, &rl, &rh);
        bool loquat_range = symzero == 0 && rl == qmin && rh == qmax;
        for (int64_t k = 0; k < mm->shape[0]; k++) {
            float mn = mmv[2 * k], mx = mmv[2 * k + 1], s;
            int32_t z;
            lq_affine_qparams_q(mn, mx, qmin, qmax, sym, symzero, &s, &z);
            if (!same_bits(s, sc[k]) || z != zp[k])
                fail_msg("qp set %d pair %lld [%.9g, %.9g] (sym %d, q %d..%d): loquat %.9g/%d, torch %.9g/%d", j,
                         (long long)k, mn, mx, sym, qmin, qmax, s, z, sc[k], zp[k]);
            if (loquat_range) {
                lq_affine_qparams(mn, mx, bits, sym, &s, &z);
                assert_true(same_bits(s, sc[k]) && z == zp[k]);
                via_bits++;
            }
            pairs++;
        }
        free(p);
        free(mmv);
        free(sc);
        free(zp);
        sets++;
    }
    assert_int_equal(sets, 21); /* 7 bit widths x (qint8 sym, quint8 affine, quint8 sym) */
    assert_true(via_bits >= 14 * 48);
    print_message("qparams: %d pairs in %d sets bit-identical to torch\n", pairs, sets);
    /* an observer that saw nothing: torch's default */
    float s;
    int32_t z;
    lq_affine_qparams_q(INFINITY, -INFINITY, 0, 255, false, 0, &s, &z);
    assert_true(s == 1.0f && z == 0);
}

/* Every observer case: min / max after every batch and the final qparams, bit for bit. */
static void test_observers_match_torch(void **state)
{
    (void)state;
    int cases = 0, by_kind[2] = {0, 0}, by_gran[3] = {0, 0, 0};
    for (int i = 0;; i++) {
        const lq_fx_tensor *pr = lq_fixture_find(g_fx, "obs/%d/params", i);
        if (!pr) break;
        float *p = fx_copy(pr);
        const lq_fx_tensor *shp = lq_fixture_find(g_fx, "obs/%d/shape", i), *x = lq_fixture_find(g_fx, "obs/%d/x", i);
        const lq_fx_tensor *mins = lq_fixture_find(g_fx, "obs/%d/min", i), *maxs = lq_fixture_find(g_fx, "obs/%d/max", i);
        const lq_fx_tensor *sc = lq_fixture_find(g_fx, "obs/%d/scale", i);
        int32_t *shv = fx_copy(shp), *zpv = fx_copy(lq_fixture_find(g_fx, "obs/%d/zero", i));
        float *xv = fx_copy(x), *minv = fx_copy(mins), *maxv = fx_copy(maxs), *scv = fx_copy(sc);
        int64_t shape[4];
        int ndim = (int)shp->numel;
        for (int d = 0; d < ndim; d++) shape[d] = shv[d];

        lq_observer_config cfg = lq_observer_config_default();
        cfg.kind = p[0] == 1.0f ? LQ_OBSERVER_MOVING_AVG : LQ_OBSERVER_MINMAX;
        cfg.symmetric = p[3] != 0.0f;
        cfg.bits = bits_of_range((int32_t)p[4], (int32_t)p[5]);
        cfg.param = p[6] / 1e4; /* torch's averaging constant, a python float (double) */
        cfg.n_threads = 1 + (i % 2); /* results may not depend on it */
        if (p[7] > 0) {
            cfg.granularity = LQ_GRAN_GROUP;
            cfg.group_size = (int64_t)p[7];
        } else if (p[1] != 0) {
            cfg.granularity = LQ_GRAN_CHANNEL;
            cfg.axis = (int)p[2];
        }
        lq_observer obs;
        lq_err err;
        lq_err_clear(&err);
        assert_int_equal(lq_observer_init(&obs, &cfg, &err), LQ_OK);
        int64_t nb = x->shape[0], numel = x->shape[1], C = mins->shape[1];
        float *lo = malloc((size_t)C * sizeof(float)), *hi = malloc((size_t)C * sizeof(float));
        for (int64_t b = 0; b < nb; b++) {
            lq_status st = lq_observer_update(&obs, xv + b * numel, ndim, shape, &err);
            if (st != LQ_OK) fail_msg("case %d batch %lld: %s", i, (long long)b, err.msg);
            assert_int_equal(lq_observer_n_qparams(&obs), C);
            assert_int_equal(lq_observer_range(&obs, lo, hi, &err), LQ_OK);
            for (int64_t c = 0; c < C; c++) {
                float tl = minv[b * C + c], th = maxv[b * C + c];
                if (!same_bits(lo[c], tl) || !same_bits(hi[c], th))
                    fail_msg("obs case %d batch %lld slot %lld: loquat [%.9g, %.9g], torch [%.9g, %.9g]", i,
                             (long long)b, (long long)c, lo[c], hi[c], tl, th);
            }
        }
        float *s = malloc((size_t)C * sizeof(float));
        int32_t *z = malloc((size_t)C * sizeof(int32_t));
        assert_int_equal(lq_observer_qparams(&obs, s, z, &err), LQ_OK);
        assert_int_equal(sc->numel, C);
        for (int64_t c = 0; c < C; c++) {
            float ts = scv[c];
            int32_t tz = zpv[c];
            if (!same_bits(s[c], ts) || z[c] != tz)
                fail_msg("obs case %d slot %lld: loquat %.9g/%d, torch %.9g/%d", i, (long long)c, s[c], z[c], ts, tz);
        }
        free(lo);
        free(hi);
        free(s);
        free(z);
        free(p);
        free(shv);
        free(zpv);
        free(xv);
        free(minv);
        free(maxv);
        free(scv);
        lq_observer_free(&obs);
        cases++;
        by_kind[cfg.kind == LQ_OBSERVER_MOVING_AVG]++;
        by_gran[cfg.granularity]++;
    }
    assert_int_equal(cases, 94);
    assert_true(by_kind[1] >= 20 && by_gran[LQ_GRAN_CHANNEL] >= 16 && by_gran[LQ_GRAN_GROUP] >= 12);
    print_message("observers: %d torch cases bit-identical (%d moving average, %d per channel, %d per group)\n",
                  cases, by_kind[1], by_gran[LQ_GRAN_CHANNEL], by_gran[LQ_GRAN_GROUP]);
}

/* --- moving average, by hand ----------------------------------------------------------------------- */

static void test_moving_average_by_hand(void **state)
{
    (void)state;
    lq_observer_config cfg = lq_observer_config_default();
    cfg.kind = LQ_OBSERVER_MOVING_AVG;
    cfg.param = 0.5; /* exact in float: every step below is exact */
    lq_observer obs;
    assert_int_equal(lq_observer_init(&obs, &cfg, NULL), LQ_OK);
    float b1[] = {-1.0f, 0.5f, 1.0f}, b2[] = {-3.0f, 5.0f}, b3[] = {-2.0f, 1.0f};
    int64_t n3 = 3, n2 = 2;
    float lo, hi;
    assert_int_equal(lq_observer_update(&obs, b1, 1, &n3, NULL), LQ_OK);
    lq_observer_range(&obs, &lo, &hi, NULL);
    assert_true(lo == -1.0f && hi == 1.0f); /* the first batch initialises */
    assert_int_equal(lq_observer_update(&obs, b2, 1, &n2, NULL), LQ_OK);
    lq_observer_range(&obs, &lo, &hi, NULL);
    assert_true(lo == -2.0f && hi == 3.0f);
    assert_int_equal(lq_observer_update(&obs, b3, 1, &n2, NULL), LQ_OK);
    lq_observer_range(&obs, &lo, &hi, NULL);
    assert_true(lo == -2.0f && hi == 2.0f);
    lq_observer_free(&obs);
}

/* --- percentile ------------------------------------------------------------------------------------ */

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Reference percentile: sort, then linear interpolation at p / 100 (n - 1). */
static double ref_percentile(const float *x, int64_t n, double p, bool absval)
{
    float *s = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) s[i] = absval ? fabsf(x[i]) : x[i];
    qsort(s, (size_t)n, sizeof(float), cmp_float);
    double pos = p / 100.0 * (double)(n - 1);
    int64_t k = (int64_t)floor(pos);
    double f = pos - (double)k, v = s[k];
    if (k + 1 < n) v += f * ((double)s[k + 1] - (double)s[k]);
    free(s);
    return v;
}

static void test_percentile_clips_outlier(void **state)
{
    (void)state;
    enum { N = 20000 };
    float *x = malloc(N * sizeof(float));
    lq_rng r;
    lq_rng_seed(&r, 77);
    for (int i = 0; i < N; i++) x[i] = lq_rng_normal(&r);
    x[1234] = 1000.0f; /* the planted outlier */
    x[777] = -400.0f;
    int64_t n = N;
    for (int sym = 1; sym >= 0; sym--) {
        lq_observer_config cfg = lq_observer_config_default();
        cfg.kind = LQ_OBSERVER_PERCENTILE;
        cfg.param = 99.9;
        cfg.symmetric = sym;
        lq_observer obs, mm;
        assert_int_equal(lq_observer_init(&obs, &cfg, NULL), LQ_OK);
        cfg.kind = LQ_OBSERVER_MINMAX;
        assert_int_equal(lq_observer_init(&mm, &cfg, NULL), LQ_OK);
        assert_int_equal(lq_observer_update(&obs, x, 1, &n, NULL), LQ_OK);
        assert_int_equal(lq_observer_update(&mm, x, 1, &n, NULL), LQ_OK);
        float lo, hi, mlo, mhi;
        lq_observer_range(&obs, &lo, &hi, NULL);
        lq_observer_range(&mm, &mlo, &mhi, NULL);
        assert_true(mhi == 1000.0f && mlo == -400.0f);
        if (sym) {
            double want = ref_percentile(x, N, 99.9, true);
            assert_true(fabs(hi - want) <= 1e-6 * fabs(want) && lo == -hi);
        } else {
            double wl = ref_percentile(x, N, 0.1, false), wh = ref_percentile(x, N, 99.9, false);
            assert_true(fabs(lo - wl) <= 1e-6 * fabs(wl) && fabs(hi - wh) <= 1e-6 * fabs(wh));
        }
        assert_true(hi > 2.5f && hi < 4.5f && lo < -2.5f && lo > -4.5f); /* the normal's tails, not the outliers */
        float s, ms;
        int32_t z, mz;
        lq_observer_qparams(&obs, &s, &z, NULL);
        lq_observer_qparams(&mm, &ms, &mz, NULL);
        assert_true(s < ms / 50.0f);
        lq_observer_free(&obs);
        lq_observer_free(&mm);
    }
    /* per channel (axis 1 of (N/4, 4)): only channel 2 holds the outlier, channel 0 is all equal */
    int64_t shape[2] = {N / 4, 4};
    for (int i = 0; i < N / 4; i++) x[4 * i] = 0.25f;
    x[4 * 100 + 2] = 1e6f;
    lq_observer_config cfg = lq_observer_config_default();
    cfg.kind = LQ_OBSERVER_PERCENTILE;
    cfg.granularity = LQ_GRAN_CHANNEL;
    cfg.axis = -1;
    cfg.param = 99.5;
    cfg.n_threads = 2;
    lq_observer obs;
    assert_int_equal(lq_observer_init(&obs, &cfg, NULL), LQ_OK);
    assert_int_equal(lq_observer_update(&obs, x, 2, shape, NULL), LQ_OK);
    float lo[4], hi[4], col[N / 4];
    lq_observer_range(&obs, lo, hi, NULL);
    for (int c = 0; c < 4; c++) {
        for (int i = 0; i < N / 4; i++) col[i] = x[4 * i + c];
        double want = ref_percentile(col, N / 4, 99.5, true);
        if (fabs(hi[c] - want) > 1e-6 * fabs(want)) fail_msg("channel %d: %.9g, want %.9g", c, hi[c], want);
    }
    assert_true(hi[0] == 0.25f && hi[2] < 10.0f);
    lq_observer_free(&obs);
    free(x);
}

/* --- MSE search ------------------------------------------------------------------------------------ */

/* The test's own fake quantization: round half to even of x / scale, clamp, back. */
static double qdq_mse(const float *x, int64_t n, int64_t stride, float s, int32_t z, int32_t qmin, int32_t qmax)
{
    double e = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double v = x[i * stride];
        double q = nearbyint(v * (double)(1.0f / s)) + z;
        q = fmin(fmax(q, qmin), qmax);
        double d = (q - z) * s - v;
        e += d * d;
    }
    return e / (double)n;
}

static void fill(float *x, int64_t n, int kind, lq_rng *r)
{
    for (int64_t i = 0; i < n; i++) {
        float g = lq_rng_normal(r);
        if (kind == 0) x[i] = g;
        else if (kind == 1) x[i] = 3.0f * lq_rng_uniform(r) - 1.0f;
        else { /* heavy tailed: normal / sqrt(chi2(2) / 2), a Student t with 2 dof */
            float a = lq_rng_normal(r), b = lq_rng_normal(r);
            x[i] = g / sqrtf((a * a + b * b) / 2.0f + 1e-4f);
        }
    }
}

static void test_mse_beats_minmax(void **state)
{
    (void)state;
    enum { N = 8192 };
    float *x = malloc(N * sizeof(float));
    lq_rng r;
    lq_rng_seed(&r, 4242);
    fill(x, N, 2, &r);
    int64_t n = N;
    for (int sym = 1; sym >= 0; sym--) {
        lq_observer_config cfg = lq_observer_config_default();
        cfg.bits = 4;
        cfg.symmetric = sym;
        lq_observer mm, ms;
        assert_int_equal(lq_observer_init(&mm, &cfg, NULL), LQ_OK);
        cfg.kind = LQ_OBSERVER_MSE;
        assert_int_equal(lq_observer_init(&ms, &cfg, NULL), LQ_OK);
        assert_int_equal(lq_observer_update(&mm, x, 1, &n, NULL), LQ_OK);
        assert_int_equal(lq_observer_update(&ms, x, 1, &n, NULL), LQ_OK);
        float s1, s2;
        int32_t z1, z2;
        lq_observer_qparams(&mm, &s1, &z1, NULL);
        lq_observer_qparams(&ms, &s2, &z2, NULL);
        double e1 = qdq_mse(x, N, 1, s1, z1, mm.qmin, mm.qmax), e2 = qdq_mse(x, N, 1, s2, z2, ms.qmin, ms.qmax);
        print_message("int4 %s heavy-tailed: MSE min-max %.5g, MSE search %.5g (scale %.4g vs %.4g)\n",
                      sym ? "sym" : "asym", e1, e2, s1, s2);
        assert_true(e2 < 0.85 * e1); /* measured: 25% (sym) and more (asym) below min-max */
        lq_observer_free(&mm);
        lq_observer_free(&ms);
    }
    free(x);
}

/* Never worse than min-max, per slot, over data kinds, bit widths, schemes and granularities. */
static void test_mse_never_worse(void **state)
{
    (void)state;
    enum { R = 16, K = 96 };
    float x[R * K];
    int64_t shape[2] = {R, K};
    lq_rng r;
    lq_rng_seed(&r, 99);
    int checks = 0, better = 0;
    for (int kind = 0; kind < 3; kind++) {
        fill(x, R * K, kind, &r);
        for (int bits = 2; bits <= 8; bits += 3) {
            for (int sym = 0; sym < 2; sym++) {
                for (int g = 0; g < 2; g++) {
                    lq_observer_config cfg = lq_observer_config_default();
                    cfg.bits = bits;
                    cfg.symmetric = sym;
                    cfg.granularity = g ? LQ_GRAN_GROUP : LQ_GRAN_CHANNEL;
                    cfg.group_size = 32;
                    cfg.n_threads = 2;
                    lq_observer mm, ms;
                    assert_int_equal(lq_observer_init(&mm, &cfg, NULL), LQ_OK);
                    cfg.kind = LQ_OBSERVER_MSE;
                    cfg.param = 50;
                    assert_int_equal(lq_observer_init(&ms, &cfg, NULL), LQ_OK);
                    assert_int_equal(lq_observer_update(&mm, x, 2, shape, NULL), LQ_OK);
                    assert_int_equal(lq_observer_update(&ms, x, 2, shape, NULL), LQ_OK);
                    int64_t ns = lq_observer_n_qparams(&ms);
                    assert_int_equal(ns, g ? R * K / 32 : R);
                    float s1[R * K / 32], s2[R * K / 32];
                    int32_t z1[R * K / 32], z2[R * K / 32];
                    lq_observer_qparams(&mm, s1, z1, NULL);
                    lq_observer_qparams(&ms, s2, z2, NULL);
                    for (int64_t c = 0; c < ns; c++) {
                        int64_t len = g ? 32 : K;
                        const float *seg = x + c * len;
                        double e1 = qdq_mse(seg, len, 1, s1[c], z1[c], mm.qmin, mm.qmax);
                        double e2 = qdq_mse(seg, len, 1, s2[c], z2[c], ms.qmin, ms.qmax);
                        if (e2 > e1 * (1.0 + 1e-12))
                            fail_msg("kind %d bits %d sym %d gran %d slot %lld: MSE search %.9g > min-max %.9g", kind,
                                     bits, sym, g, (long long)c, e2, e1);
                        better += e2 < e1;
                        checks++;
                    }
                    lq_observer_free(&mm);
                    lq_observer_free(&ms);
                }
            }
        }
    }
    assert_true(better > checks / 4);
    print_message("MSE search: never worse than min-max in %d slots, better in %d\n", checks, better);
}

/* Results do not depend on the thread count (inputs large enough to run in parallel). */
static void test_threads_independent(void **state)
{
    (void)state;
    enum { R = 64, K = 256 };
    float *x = malloc(R * K * sizeof(float));
    lq_rng r;
    lq_rng_seed(&r, 31);
    fill(x, R * K, 2, &r);
    int64_t shape[3] = {4, R / 4, K};
    for (int kind = 0; kind < LQ_OBSERVER_KIND_COUNT; kind++) {
        for (int g = 0; g < 3; g++) {
            float lo[2][R * K / 64], hi[2][R * K / 64];
            memset(lo, 0, sizeof lo);
            memset(hi, 0, sizeof hi);
            for (int t = 0; t < 2; t++) {
                lq_observer_config cfg = lq_observer_config_default();
                cfg.kind = (lq_observer_kind)kind;
                cfg.symmetric = g != 1;
                cfg.granularity = g < 2 ? LQ_GRAN_CHANNEL : LQ_GRAN_GROUP;
                cfg.axis = g == 0 ? 1 : -1;
                cfg.group_size = 64;
                cfg.n_threads = t ? 3 : 1;
                lq_observer obs;
                assert_int_equal(lq_observer_init(&obs, &cfg, NULL), LQ_OK);
                for (int b = 0; b < 2; b++) assert_int_equal(lq_observer_update(&obs, x, 3, shape, NULL), LQ_OK);
                assert_true(lq_observer_n_qparams(&obs) <= R * K / 64);
                lq_observer_range(&obs, lo[t], hi[t], NULL);
                lq_observer_free(&obs);
            }
            assert_memory_equal(lo[0], lo[1], sizeof lo[0]);
            assert_memory_equal(hi[0], hi[1], sizeof hi[0]);
        }
    }
    free(x);
}

/* --- per group, freezing, errors ------------------------------------------------------------------- */

static void test_per_group(void **state)
{
    (void)state;
    float x[3 * 8];
    for (int i = 0; i < 24; i++) x[i] = (float)((i * 7) % 11) - 5.0f;
    int64_t shape[2] = {3, 8};
    lq_observer_config cfg = lq_observer_config_default();
    cfg.granularity = LQ_GRAN_GROUP;
    cfg.group_size = 4;
    cfg.symmetric = false;
    lq_observer obs;
    lq_err err;
    lq_err_clear(&err);
    assert_int_equal(lq_observer_init(&obs, &cfg, &err), LQ_OK);
    assert_int_equal(lq_observer_update(&obs, x, 2, shape, &err), LQ_OK);
    assert_int_equal(lq_observer_n_qparams(&obs), 6);
    float lo[6], hi[6];
    lq_observer_range(&obs, lo, hi, NULL);
    for (int g = 0; g < 6; g++) {
        float mn = x[4 * g], mx = x[4 * g];
        for (int i = 1; i < 4; i++) {
            mn = fminf(mn, x[4 * g + i]);
            mx = fmaxf(mx, x[4 * g + i]);
        }
        assert_true(lo[g] == mn && hi[g] == mx);
    }
    /* a 3-D input with the same number of groups is fine; a different count is not */
    int64_t s3[3] = {3, 2, 4};
    assert_int_equal(lq_observer_update(&obs, x, 3, s3, &err), LQ_OK);
    int64_t s_other[2] = {2, 8};
    assert_int_equal(lq_observer_update(&obs, x, 2, s_other, &err), LQ_ERR_SHAPE);
    assert_msg_has(&err, "4 groups, earlier inputs had 6");
    lq_observer_free(&obs);

    cfg.group_size = 3;
    lq_err_clear(&err);
    assert_int_equal(lq_observer_init(&obs, &cfg, &err), LQ_OK);
    assert_int_equal(lq_observer_update(&obs, x, 2, shape, &err), LQ_ERR_SHAPE);
    assert_msg_has(&err, "group size 3 does not divide the last dim 8");
    lq_observer_free(&obs);
}

static void test_freeze(void **state)
{
    (void)state;
    float a[] = {-1.0f, 2.0f}, big[] = {-50.0f, 70.0f};
    int64_t n = 2;
    float lo, hi;
    lq_observer_config cfg = lq_observer_config_default();
    lq_observer obs;
    assert_int_equal(lq_observer_init(&obs, &cfg, NULL), LQ_OK);
    assert_int_equal(lq_observer_update(&obs, a, 1, &n, NULL), LQ_OK);
    lq_observer_freeze(&obs);
    assert_int_equal(lq_observer_update(&obs, big, 1, &n, NULL), LQ_OK);
    lq_observer_range(&obs, &lo, &hi, NULL);
    assert_true(lo == -1.0f && hi == 2.0f);
    lq_observer_reset(&obs); /* forgets and unfreezes */
    assert_int_equal(lq_observer_n_qparams(&obs), 0);
    assert_int_equal(lq_observer_update(&obs, big, 1, &n, NULL), LQ_OK);
    lq_observer_range(&obs, &lo, &hi, NULL);
    assert_true(lo == -50.0f && hi == 70.0f);
    lq_observer_free(&obs);

    /* freeze_step: steps before it update, the step itself and later ones do not */
    cfg.freeze_step = 3;
    cfg.kind = LQ_OBSERVER_MOVING_AVG;
    assert_int_equal(lq_observer_init(&obs, &cfg, NULL), LQ_OK);
    for (int64_t step = 0; step < 6; step++) {
        lq_observer_step(&obs, step);
        float v[] = {-(float)(step + 1), (float)(step + 1)};
        assert_int_equal(lq_observer_update(&obs, v, 1, &n, NULL), LQ_OK);
    }
    assert_int_equal(obs.n_batches, 3);
    assert_true(obs.frozen);
    lq_observer_free(&obs);
}

static void test_errors(void **state)
{
    (void)state;
    lq_err err;
    lq_observer obs;
    lq_observer_config cfg = lq_observer_config_default();
    int bad_bits[] = {1, 9, 0, 16};
    for (size_t i = 0; i < sizeof bad_bits / sizeof bad_bits[0]; i++) {
        cfg.bits = bad_bits[i];
        lq_err_clear(&err);
        assert_int_equal(lq_observer_init(&obs, &cfg, &err), LQ_ERR_ARG);
        char want[32];
        snprintf(want, sizeof want, "bits %d outside 2..8", bad_bits[i]);
        assert_msg_has(&err, want);
    }
    cfg = lq_observer_config_default();
    cfg.granularity = LQ_GRAN_TOKEN;
    lq_err_clear(&err);
    assert_int_equal(lq_observer_init(&obs, &cfg, &err), LQ_ERR_UNSUPPORTED);
    cfg = lq_observer_config_default();
    cfg.kind = LQ_OBSERVER_PERCENTILE;
    cfg.param = 120;
    lq_err_clear(&err);
    assert_int_equal(lq_observer_init(&obs, &cfg, &err), LQ_ERR_ARG);
    assert_msg_has(&err, "percentile 120");
    cfg.kind = LQ_OBSERVER_MOVING_AVG;
    cfg.param = 1.5;
    lq_err_clear(&err);
    assert_int_equal(lq_observer_init(&obs, &cfg, &err), LQ_ERR_ARG);
    cfg.kind = LQ_OBSERVER_MSE;
    cfg.param = 2.5;
    lq_err_clear(&err);
    assert_int_equal(lq_observer_init(&obs, &cfg, &err), LQ_ERR_ARG);

    /* NaN / Inf: the element and its index */
    cfg = lq_observer_config_default();
    assert_int_equal(lq_observer_init(&obs, &cfg, NULL), LQ_OK);
    float x[2 * 3] = {0, 1, 2, 3, 4, 5};
    int64_t shape[2] = {2, 3};
    float s;
    int32_t z;
    lq_err_clear(&err);
    assert_int_equal(lq_observer_qparams(&obs, &s, &z, &err), LQ_ERR_STATE);
    x[5] = NAN;
    lq_err_clear(&err);
    assert_int_equal(lq_observer_update(&obs, x, 2, shape, &err), LQ_ERR_NUMERIC);
    assert_msg_has(&err, "element 5 [1, 2] is NaN");
    x[5] = 5;
    x[1] = -INFINITY;
    lq_err_clear(&err);
    assert_int_equal(lq_observer_update(&obs, x, 2, shape, &err), LQ_ERR_NUMERIC);
    assert_msg_has(&err, "element 1 [0, 1] is Inf");
    assert_int_equal(lq_observer_n_qparams(&obs), 0); /* nothing was taken in */
    lq_observer_free(&obs);

    /* channel axis outside the input; channel count changing */
    cfg.granularity = LQ_GRAN_CHANNEL;
    cfg.axis = 2;
    assert_int_equal(lq_observer_init(&obs, &cfg, NULL), LQ_OK);
    x[1] = 1;
    lq_err_clear(&err);
    assert_int_equal(lq_observer_update(&obs, x, 2, shape, &err), LQ_ERR_SHAPE);
    assert_msg_has(&err, "channel axis 2 outside a 2-dim input");
    lq_observer_free(&obs);
    cfg.axis = -1;
    assert_int_equal(lq_observer_init(&obs, &cfg, NULL), LQ_OK);
    assert_int_equal(lq_observer_update(&obs, x, 2, shape, NULL), LQ_OK);
    int64_t shape2[2] = {3, 2};
    lq_err_clear(&err);
    assert_int_equal(lq_observer_update(&obs, x, 2, shape2, &err), LQ_ERR_SHAPE);
    assert_msg_has(&err, "2 channels, earlier inputs had 3");
    int64_t shape3[3] = {1, 2, 3}; /* other dims may vary (activations: batch and time) */
    assert_int_equal(lq_observer_update(&obs, x, 3, shape3, NULL), LQ_OK);
    lq_observer_free(&obs);
}

int main(void)
{
    char path[512];
    g_fx = lq_fixture_load(lq_fixture_path("observers.lqfx", path, sizeof path));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_affine_range),
        cmocka_unit_test(test_qparams_match_torch),
        cmocka_unit_test(test_observers_match_torch),
        cmocka_unit_test(test_moving_average_by_hand),
        cmocka_unit_test(test_percentile_clips_outlier),
        cmocka_unit_test(test_mse_beats_minmax),
        cmocka_unit_test(test_mse_never_worse),
        cmocka_unit_test(test_threads_independent),
        cmocka_unit_test(test_per_group),
        cmocka_unit_test(test_freeze),
        cmocka_unit_test(test_errors),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    lq_fixture_free(g_fx);
    return rc;
}
