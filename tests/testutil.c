/* tests/testutil.c: assertion and setup helpers shared by the suites. */
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Element i of a float array that may sit at any address (fixture records are not aligned). */
static float at(const float *p, int64_t i) {
    float v;
    memcpy(&v, (const char *)p + (size_t)i * sizeof v, sizeof v);
    return v;
}

void lq_assert_allclose_impl(const float *a, const float *b, int64_t n, double rtol, double atol, const char *what,
                             const char *file, int line) {
    int64_t worst = -1;
    double worst_excess = 0.0;
    int64_t n_bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)at(a, i) - (double)at(b, i));
        double lim = atol + rtol * fabs((double)at(b, i));
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
        /* print before failing: _fail leaves the test at once */
        print_error("%s: %lld of %lld elements differ; worst at [%lld]: got %.9g, want %.9g (|diff| %.3g, "
                    "allowed %.3g)\n",
                    what, (long long)n_bad, (long long)n, (long long)worst, at(a, worst), at(b, worst),
                    fabs((double)at(a, worst) - (double)at(b, worst)), atol + rtol * fabs((double)at(b, worst)));
        _fail(file, line);
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

const char *lq_cache_path(const char *rel, char *buf, size_t n) {
    const char *cache = getenv("LOQUAT_CACHE"), *home = getenv("HOME");
    if (cache && *cache) snprintf(buf, n, "%s/%s", cache, rel);
    else snprintf(buf, n, "%s/.cache/loquat/%s", home ? home : "", rel);
    return buf;
}

const char *lq_fixture_path(const char *name, char *buf, size_t n) {
    const char *dir = getenv("LOQUAT_FIXTURES");
    snprintf(buf, n, "%s/%s", dir && *dir ? dir : "tests/fixtures", name);
    return buf;
}

/* --- fixtures ------------------------------------------------------------------------------ */

lq_fixture *lq_fixture_load(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        print_error("cannot open fixture %s (generate it with tools/gen_torch_fixtures.py)\n", path);
        fail();
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = size > 0 ? malloc((size_t)size) : NULL;
    bool ok = b && fread(b, 1, (size_t)size, f) == (size_t)size;
    fclose(f);
    if (!ok) {
        print_error("cannot read fixture %s\n", path);
        fail();
    }
    uint32_t version, n;
    if (size < 12 || memcmp(b, "LQFX", 4) != 0) {
        print_error("%s: not an LQFX fixture\n", path);
        fail();
    }
    memcpy(&version, b + 4, 4);
    memcpy(&n, b + 8, 4);
    if (version != 1) {
        print_error("%s: fixture format version %u, this test reads 1\n", path, version);
        fail();
    }
    lq_fixture *fx = calloc(1, sizeof *fx);
    fx->t = calloc(n ? n : 1, sizeof *fx->t);
    fx->n = (int)n;
    fx->blob = b;
    size_t off = 12;
#define NEED(k)                                                                 \
    do {                                                                        \
        if (off + (size_t)(k) > (size_t)size) {                                 \
            print_error("%s: truncated at byte %zu (record %u)\n", path, off, i); \
            fail();                                                             \
        }                                                                       \
    } while (0)
    for (uint32_t i = 0; i < n; i++) {
        lq_fx_tensor *t = &fx->t[i];
        uint16_t len;
        NEED(2);
        memcpy(&len, b + off, 2);
        off += 2;
        NEED(len + 2u);
        if (len >= sizeof t->name) fail_msg("%s: record name too long", path);
        memcpy(t->name, b + off, len);
        t->name[len] = '\0';
        off += len;
        t->dtype = b[off];
        t->ndim = b[off + 1];
        off += 2;
        if (t->ndim > LQ_MAX_DIMS || t->dtype > 2) fail_msg("%s: record %s has a bad header", path, t->name);
        NEED(8u * (size_t)t->ndim);
        t->numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            memcpy(&t->shape[d], b + off, 8);
            off += 8;
            t->numel *= t->shape[d];
        }
        size_t bytes = (size_t)t->numel * (t->dtype == 2 ? 1 : 4);
        NEED(bytes);
        t->data = b + off;
        off += bytes;
    }
#undef NEED
    return fx;
}

void lq_fixture_free(lq_fixture *fx) {
    if (!fx) return;
    free(fx->blob);
    free(fx->t);
    free(fx);
}

const lq_fx_tensor *lq_fixture_find(const lq_fixture *fx, const char *fmt, ...) {
    char name[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    for (int i = 0; i < fx->n; i++)
        if (strcmp(fx->t[i].name, name) == 0) return &fx->t[i];
    return NULL;
}
