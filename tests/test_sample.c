/* tests/test_sample.c: greedy / temperature / top-k / top-p sampling against probabilities computed here. */
#include "tests/testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train/train.h"

static const float L[5] = {1.0f, 2.0f, 3.0f, 0.5f, 2.0f};

static lq_sampler make(float t, int k, float p, uint64_t seed) {
    lq_sampler s;
    lq_sampler_cfg c = {t, k, p, seed};
    lq_err err = {0};
    if (lq_sampler_init(&s, &c, 5, &err) != LQ_OK) fail_msg("%s", err.msg);
    return s;
}

static void check_probs(lq_sampler *s, const double *want, const char *what) {
    double got[5];
    assert_int_equal(lq_sampler_probs(s, L, got, NULL), LQ_OK);
    for (int i = 0; i < 5; i++)
        if (fabs(got[i] - want[i]) > 1e-12) fail_msg("%s: p[%d] = %.15g, want %.15g", what, i, got[i], want[i]);
}

static void test_greedy(void **state) {
    (void)state;
    lq_sampler s = make(0, 0, 1, 1);
    int32_t id;
    assert_int_equal(lq_sampler_sample(&s, L, &id, NULL), LQ_OK);
    assert_int_equal(id, 2);
    const float tie[5] = {1, 3, 3, NAN, -INFINITY};
    assert_int_equal(lq_sampler_sample(&s, tie, &id, NULL), LQ_OK);
    assert_int_equal(id, 1); /* lowest id on ties; NaN never wins */
    double want[5] = {0, 0, 1, 0, 0};
    check_probs(&s, want, "greedy");
    lq_sampler_free(&s);
}

static void test_temperature(void **state) {
    (void)state;
    /* T = 1: plain softmax (computed from the definition) */
    double e[5], sum = 0, want[5];
    for (int i = 0; i < 5; i++) sum += e[i] = exp((double)L[i]);
    for (int i = 0; i < 5; i++) want[i] = e[i] / sum;
    lq_sampler s = make(1, 0, 1, 1);
    check_probs(&s, want, "T=1");
    lq_sampler_free(&s);
    /* T = 0.5: softmax(2 x) */
    sum = 0;
    for (int i = 0; i < 5; i++) sum += e[i] = exp(2.0 * L[i]);
    for (int i = 0; i < 5; i++) want[i] = e[i] / sum;
    s = make(0.5f, 0, 1, 1);
    check_probs(&s, want, "T=0.5");
    lq_sampler_free(&s);
}

static void test_top_k(void **state) {
    (void)state;
    /* T = 0.5, k = 3 keeps ids 2, 1, 4 (logits 3, 2, 2): softmax of (6, 4, 4) */
    double d = exp(6.0) + 2 * exp(4.0);
    double want[5] = {0, exp(4.0) / d, exp(6.0) / d, 0, exp(4.0) / d};
    lq_sampler s = make(0.5f, 3, 1, 1);
    check_probs(&s, want, "top_k=3");
    lq_sampler_free(&s);
    /* k = 2 with a tie at the cut: the lower id (1) is kept, 4 dropped */
    d = exp(3.0) + exp(2.0);
    double want2[5] = {0, exp(2.0) / d, exp(3.0) / d, 0, 0};
    s = make(1, 2, 1, 1);
    check_probs(&s, want2, "top_k=2 tie");
    int32_t id;
    for (int i = 0; i < 200; i++) {
        assert_int_equal(lq_sampler_sample(&s, L, &id, NULL), LQ_OK);
        assert_true(id == 1 || id == 2);
    }
    lq_sampler_free(&s);
    /* k = 1 is greedy */
    s = make(3, 1, 1, 7);
    for (int i = 0; i < 50; i++) {
        assert_int_equal(lq_sampler_sample(&s, L, &id, NULL), LQ_OK);
        assert_int_equal(id, 2);
    }
    lq_sampler_free(&s);
}

static void test_top_p(void **state) {
    (void)state;
    /* T = 1: p(2) = .512, p(1) = p(4) = .188, p(0) = .069, p(3) = .042. top_p = 0.7: 0.512 < 0.7,
     * 0.512 + 0.188 = 0.700... >= 0.7: ids 2 and 1 (the lower id of the tie), renormalized. */
    double sum = 0;
    for (int i = 0; i < 5; i++) sum += exp((double)L[i]);
    assert_true(exp(3.0) / sum < 0.7 && (exp(3.0) + exp(2.0)) / sum >= 0.7);
    double d = exp(3.0) + exp(2.0);
    double want[5] = {0, exp(2.0) / d, exp(3.0) / d, 0, 0};
    lq_sampler s = make(1, 0, 0.7f, 1);
    check_probs(&s, want, "top_p=0.7");
    lq_sampler_free(&s);
    /* top_p = 0.9: 2, 1, 4, then 0 (cum .957) */
    d = exp(3.0) + 2 * exp(2.0) + exp(1.0);
    double want2[5] = {exp(1.0) / d, exp(2.0) / d, exp(3.0) / d, 0, exp(2.0) / d};
    s = make(1, 0, 0.9f, 1);
    check_probs(&s, want2, "top_p=0.9");
    lq_sampler_free(&s);
    /* tiny top_p keeps the top one; top_k then top_p */
    double want3[5] = {0, 0, 1, 0, 0};
    s = make(1, 0, 1e-6f, 1);
    check_probs(&s, want3, "top_p=1e-6");
    lq_sampler_free(&s);
    /* k = 4 (drops id 3), T = 2, p = 0.8: z = L / 2 */
    double z[5], zs = 0;
    for (int i = 0; i < 5; i++) z[i] = i == 3 ? 0 : exp(L[i] / 2.0), zs += z[i];
    /* sorted: 2 (.386), 1 (.234), 4 (.234), 0 (.142): cum .386, .620, .854 >= .8 -> 2, 1, 4 */
    assert_true((z[2] + z[1]) / zs < 0.8 && (z[2] + z[1] + z[4]) / zs >= 0.8);
    d = z[2] + z[1] + z[4];
    double want4[5] = {0, z[1] / d, z[2] / d, 0, z[4] / d};
    s = make(2, 4, 0.8f, 1);
    check_probs(&s, want4, "k=4 T=2 p=0.8");
    lq_sampler_free(&s);
}

/* Empirical frequencies over many draws match the distribution; a seed fixes the sequence. */
static void test_draws(void **state) {
    (void)state;
    enum { N = 200000 };
    double want[5];
    lq_sampler s = make(1.5f, 0, 0.95f, 42);
    assert_int_equal(lq_sampler_probs(&s, L, want, NULL), LQ_OK);
    int cnt[5] = {0};
    int32_t seq[64], id;
    for (int i = 0; i < N; i++) {
        assert_int_equal(lq_sampler_sample(&s, L, &id, NULL), LQ_OK);
        assert_true(id >= 0 && id < 5);
        cnt[id]++;
        if (i < 64) seq[i] = id;
    }
    for (int i = 0; i < 5; i++) {
        double f = (double)cnt[i] / N, sd = sqrt(want[i] * (1 - want[i]) / N);
        if (fabs(f - want[i]) > 5 * sd + 1e-9) fail_msg("id %d: frequency %.5f, probability %.5f", i, f, want[i]);
        if (want[i] == 0) assert_int_equal(cnt[i], 0);
    }
    lq_sampler_free(&s);
    lq_sampler a = make(1.5f, 0, 0.95f, 42), b = make(1.5f, 0, 0.95f, 43);
    int differ = 0;
    for (int i = 0; i < 64; i++) {
        int32_t x, y;
        assert_int_equal(lq_sampler_sample(&a, L, &x, NULL), LQ_OK);
        assert_int_equal(lq_sampler_sample(&b, L, &y, NULL), LQ_OK);
        assert_int_equal(x, seq[i]);
        differ += x != y;
    }
    assert_true(differ > 0);
    lq_sampler_free(&a), lq_sampler_free(&b);
}

static void test_bad(void **state) {
    (void)state;
    lq_sampler s;
    lq_err err = {0};
    lq_sampler_cfg bad[] = {{1, -1, 1, 0}, {1, 0, 0, 0}, {1, 0, 1.5f, 0}, {NAN, 0, 1, 0}, {1, 0, NAN, 0}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err = (lq_err){0};
        assert_int_equal(lq_sampler_init(&s, &bad[i], 5, &err), LQ_ERR_ARG);
        assert_null(s.cand);
    }
    lq_sampler_cfg ok = {1, 0, 1, 0};
    assert_int_equal(lq_sampler_init(&s, &ok, 0, &err), LQ_ERR_ARG);
    s = make(1, 0, 1, 1);
    err = (lq_err){0};
    const float dead[5] = {-INFINITY, NAN, -INFINITY, NAN, -INFINITY};
    int32_t id;
    assert_int_equal(lq_sampler_sample(&s, dead, &id, &err), LQ_ERR_ARG);
    assert_non_null(strstr(err.msg, "finite"));
    const float one[5] = {NAN, -INFINITY, 0.25f, NAN, -INFINITY};
    assert_int_equal(lq_sampler_sample(&s, one, &id, NULL), LQ_OK);
    assert_int_equal(id, 2);
    lq_sampler_free(&s);
    s = make(0, 0, 1, 1);
    assert_int_equal(lq_sampler_sample(&s, dead, &id, NULL), LQ_ERR_ARG);
    lq_sampler_free(&s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy), cmocka_unit_test(test_temperature), cmocka_unit_test(test_top_k),
        cmocka_unit_test(test_top_p),  cmocka_unit_test(test_draws),       cmocka_unit_test(test_bad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
