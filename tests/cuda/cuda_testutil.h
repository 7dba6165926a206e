/* tests/cuda/cuda_testutil.h: what the GPU parity suites share: the skip rule without a GPU, the
 * run's seed, and the normalized-MSE comparison of a CUDA result with the CPU reference. */
#ifndef LQ_CUDA_TESTUTIL_H
#define LQ_CUDA_TESTUTIL_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "autograd/autograd.h"
#include "core/cuda.h"

/* Without CUDA (build or device) the binary prints exactly one line "SKIPPED: <reason>" and exits
 * 0: tools/run_tests.sh counts that line as a skip (never as a pass: no cmocka PASSED line).
 * LOQUAT_CUDA_REQUIRED=1 (make test-cuda sets it) turns the skip into a failure, so a GPU run
 * that silently found no GPU cannot look green. Returns true when the suite should run. */
static inline bool lq_cuda_test_should_run(int *exit_code) {
    char why[512] = "";
    const char *reason = NULL;
    char buf[600];
    if (!lq_cuda_built()) {
        reason = "built without CUDA";
    } else if (lq_cuda_devices(why, sizeof why) <= 0) {
        /* lq_cuda_devices' line may already say "no CUDA device: ..." */
        snprintf(buf, sizeof buf, "%s%s", strncmp(why, "no CUDA device", 14) == 0 ? "" : "no CUDA device: ", why);
        reason = buf;
    }
    if (!reason) {
#ifdef LQ_CUDA_EMU
        /* make EMU=1: the "device" is tools/cuda_emu, a pass here is never GPU parity */
        printf("CUDA device: emulated on the CPU (kernel logic only; not a GPU run)\n");
        fflush(stdout);
#endif
        return true;
    }
    const char *req = getenv("LOQUAT_CUDA_REQUIRED");
    if (req && *req && *req != '0') {
        printf("FAILED: LOQUAT_CUDA_REQUIRED is set but %s\n", reason);
        *exit_code = 1;
    } else {
        printf("SKIPPED: %s\n", reason);
        *exit_code = 0;
    }
    fflush(stdout);
    return false;
}

/* The run's seed: LOQUAT_CUDA_SEED when set (to replay a failure), else fresh from the clock. */
static inline uint64_t lq_cuda_test_seed(const char *suite) {
    const char *e = getenv("LOQUAT_CUDA_SEED");
    uint64_t s;
    if (e && *e) {
        s = strtoull(e, NULL, 0);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        s = ((uint64_t)ts.tv_sec * 1000003u) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 20);
        s &= 0xffffffffffffull; /* short enough to type back in */
    }
    printf("%s: seed %llu (replay with LOQUAT_CUDA_SEED=%llu)\n", suite, (unsigned long long)s,
           (unsigned long long)s);
    fflush(stdout);
    return s;
}

/* A context of the parity suites: one thread, a 1 MiB arena, fixed seed; on the device in the given
 * math with freshly allocated outputs poisoned (NaN), so an element a kernel skips shows. NULL
 * (the reason on stderr) when it cannot be made. */
static inline lq_ctx *lq_cuda_test_ctx(lq_device_kind dev, lq_cuda_math math) {
    lq_ctx *ctx = NULL;
    lq_ctx_opts o = {.n_threads = 1, .arena_bytes = 1 << 20, .seed = 1234, .device = dev, .cuda_math = math,
                     .poison = dev == LQ_DEVICE_CUDA};
    lq_err err;
    lq_err_clear(&err);
    if (lq_ctx_init(&ctx, &o, &err) != LQ_OK) {
        fprintf(stderr, "lq_ctx_init (%s): %s\n", dev == LQ_DEVICE_CUDA ? "cuda" : "cpu", err.msg);
        return NULL;
    }
    return ctx;
}

/* sum((a - b)^2) / max(sum(b^2), tiny), with b the CPU reference, in double. Non-finite values in
 * either (an unwritten, NaN-poisoned output shows up here) make it +inf with *bad_index set. */
static inline double lq_nmse(const float *a, const float *b, int64_t n, int64_t *bad_index) {
    double num = 0.0, den = 0.0;
    *bad_index = -1;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) {
            *bad_index = i;
            return INFINITY;
        }
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return num / (den > 1e-30 ? den : 1e-30);
}

#endif
