/* tests/test_core.c: status codes, the error record and check macros, the random generators. */
#include "tests/testutil.h"

#include <math.h>
#include <string.h>

#include "core/rng.h"
#include "core/status.h"

static lq_status checked_positive(int v, lq_err *err) {
    LQ_CHECK(err, v > 0, LQ_ERR_ARG, "v must be positive, got %d", v);
    return LQ_OK;
}

static lq_status try_twice(int a, int b, lq_err *err) {
    LQ_TRY(checked_positive(a, err));
    LQ_TRY(checked_positive(b, err));
    return LQ_OK;
}

static void test_check_macro_reports_site(void **state) {
    (void)state;
    lq_err e;
    lq_err_clear(&e);
    assert_int_equal(try_twice(1, 2, &e), LQ_OK);
    assert_int_equal(e.status, LQ_OK);
    assert_int_equal(try_twice(3, -4, &e), LQ_ERR_ARG);
    assert_int_equal(e.status, LQ_ERR_ARG);
    assert_non_null(strstr(e.msg, "v > 0"));
    assert_non_null(strstr(e.msg, "got -4"));
    assert_non_null(strstr(e.file, "test_core.c"));
    assert_true(e.line > 0);
    /* the first error is kept */
    LQ_ERR(&e, LQ_ERR_IO, "later failure");
    assert_int_equal(e.status, LQ_ERR_ARG);
    assert_null(strstr(e.msg, "later"));
    /* a NULL record is allowed and only returns the status */
    assert_int_equal(checked_positive(0, NULL), LQ_ERR_ARG);
}

static void test_exit_codes(void **state) {
    (void)state;
    assert_int_equal(lq_status_exit_code(LQ_OK), 0);
    assert_int_equal(lq_status_exit_code(LQ_ERR_ARG), 2);
    assert_int_equal(lq_status_exit_code(LQ_ERR_INPUT), 2);
    assert_int_equal(lq_status_exit_code(LQ_ERR_SHAPE), 2);
    assert_int_equal(lq_status_exit_code(LQ_ERR_IO), 1);
    assert_int_equal(lq_status_exit_code(LQ_ERR_OOM), 1);
    for (int s = 0; s < LQ_STATUS_COUNT; s++) assert_string_not_equal(lq_status_name((lq_status)s), "unknown status");
    assert_string_equal(lq_status_name((lq_status)999), "unknown status");
}

static void test_rng(void **state) {
    (void)state;
    lq_rng a, b;
    lq_rng_seed(&a, 42);
    lq_rng_seed(&b, 42);
    for (int i = 0; i < 100; i++) assert_true(lq_rng_u64(&a) == lq_rng_u64(&b));
    lq_rng_seed(&b, 43);
    int same = 0;
    for (int i = 0; i < 100; i++) same += lq_rng_u64(&a) == lq_rng_u64(&b);
    assert_true(same < 2);
    /* uniform in [0,1), normal with roughly unit moments */
    double s = 0, s2 = 0;
    int n = 200000;
    for (int i = 0; i < n; i++) {
        float u = lq_rng_uniform(&a);
        assert_true(u >= 0.0f && u < 1.0f);
        float z = lq_rng_normal(&a);
        s += z;
        s2 += (double)z * z;
    }
    assert_true(fabs(s / n) < 0.02);
    assert_true(fabs(s2 / n - 1.0) < 0.02);
    for (int i = 0; i < 1000; i++) {
        int64_t k = lq_rng_int(&a, -3, 5);
        assert_true(k >= -3 && k <= 5);
    }
    /* the counter hash is a pure function of its arguments */
    assert_true(lq_hash3(1, 2, 3) == lq_hash3(1, 2, 3));
    assert_true(lq_hash3(1, 2, 3) != lq_hash3(1, 2, 4));
    assert_true(lq_hash3(1, 2, 3) != lq_hash3(1, 3, 3));
    assert_true(lq_hash3(1, 2, 3) != lq_hash3(2, 2, 3));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_macro_reports_site),
        cmocka_unit_test(test_exit_codes),
        cmocka_unit_test(test_rng),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
