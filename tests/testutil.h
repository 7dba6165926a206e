/* tests/testutil.h: shared helpers for the cmocka suites. */
#ifndef LQ_TEST_UTIL_H
#define LQ_TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "autograd/autograd.h"

/* Fails the test if any |a[i] - b[i]| > atol + rtol |b[i]|, naming the worst element. */
void lq_assert_allclose_impl(const float *a, const float *b, int64_t n, double rtol, double atol, const char *what,
                             const char *file, int line);
#define assert_allclose(a, b, n, rtol, atol, what) lq_assert_allclose_impl((a), (b), (n), (rtol), (atol), (what), __FILE__, __LINE__)

/* Fails the test, printing the context's error, unless the context is error-free. */
void lq_assert_ctx_ok_impl(const lq_ctx *ctx, const char *file, int line);
#define assert_ctx_ok(ctx) lq_assert_ctx_ok_impl((ctx), __FILE__, __LINE__)

/* A context with n threads, seed 1234 (fails the test if it cannot be made). */
lq_ctx *lq_test_ctx(int n_threads);

/* Path of a file in loquat's cache ($LOQUAT_CACHE, default ~/.cache/loquat), where
 * tools/fetch_model.sh and the other fetch tools put models and data. */
const char *lq_cache_path(const char *rel, char *buf, size_t n);

/* Path of a file under tests/fixtures/, resolved against LOQUAT_FIXTURES or the source tree. */
const char *lq_fixture_path(const char *name, char *buf, size_t n);


/* --- reference fixtures written by tools/gen_torch_fixtures.py (format "LQFX" version 1) --- */

typedef struct lq_fx_tensor {
    char name[128];
    int dtype; /* 0 f32, 1 i32, 2 bytes */
    int ndim;
    int64_t shape[LQ_MAX_DIMS];
    int64_t numel;
    void *data;
} lq_fx_tensor;

typedef struct lq_fixture {
    int n;
    lq_fx_tensor *t;
    void *blob;
} lq_fixture;

/* Loads and validates a fixture file; fails the test with a message if it cannot. */
lq_fixture *lq_fixture_load(const char *path);
void lq_fixture_free(lq_fixture *fx);
/* The record named by the printf-style name, or NULL. */
const lq_fx_tensor *lq_fixture_find(const lq_fixture *fx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
