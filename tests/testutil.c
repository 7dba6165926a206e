/* tests/testutil.c: assertion and setup helpers shared by the suites. */
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

void lq_assert_allclose_impl(const float *a, const float *b, int64_t n, double rtol, double atol, const char *what,
                             const char *file, int line) {
    int64_t worst = -1;
    double worst_excess = 0.0;
    int64_t n_bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        double lim = atol + rtol * fabs((double)b[i]);
        bool bad = !(d <= lim); /* NaN counts as bad */
        if (bad) {
            n_bad++;
            double excess = isnan(d) ? INFINITY : d - lim;
            if (worst < 0 || excess > worst_excess) {
                worst = i;
                worst_excess = excess;
            }
        }
    }
    if (n_bad) {
        _fail(file, line);
        print_error("%s: %lld of %lld elements differ; worst at [%lld]: got %.9g, want %.9g (|diff| %.3g, "
                    "allowed %.3g)\n",
                    what, (long long)n_bad, (long long)n, (long long)worst, a[worst], b[worst],
                    fabs((double)a[worst] - (double)b[worst]), atol + rtol * fabs((double)b[worst]));
    }
}

void lq_assert_ctx_ok_impl(const lq_ctx *ctx, const char *file, int line) {
    const lq_err *e = lq_ctx_error(ctx);
    if (e->status != LQ_OK) {
        print_error("context error (%s) at %s:%d: %s\n", lq_status_name(e->status), e->file ? e->file : "?", e->line,
                    e->msg);
        _fail(file, line);
    }
}

lq_ctx *lq_test_ctx(int n_threads) {
    lq_ctx *ctx = NULL;
    lq_ctx_opts o = {.n_threads = n_threads, .arena_bytes = 1 << 20, .seed = 1234};
    lq_err err = {0};
    if (lq_ctx_init(&ctx, &o, &err) != LQ_OK) {
        print_error("lq_ctx_init: %s\n", err.msg);
        fail();
    }
    return ctx;
}

const char *lq_fixture_path(const char *name, char *buf, size_t n) {
    const char *dir = getenv("LOQUAT_FIXTURES");
    snprintf(buf, n, "%s/%s", dir && *dir ? dir : "tests/fixtures", name);
    return buf;
}
