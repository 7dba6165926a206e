/* autograd/profile.c: per-op timing of forward and backward (lq_ctx_opts.profile): each op is timed
 * on the host clock after waiting for the device, so the figures are each op's own time. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "autograd/cuda_impl.h"
#include "core/cuda.h"

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

double lq_prof_begin(lq_ctx *ctx) {
    if (!ctx->prof_ms) return 0.0;
    if (ctx->device == LQ_DEVICE_CUDA) (void)lq_cuda_sync(lq_cuda_stream(ctx), &ctx->err);
    return now_ms();
}

void lq_prof_end(lq_ctx *ctx, const lq_op_def *op, bool backward, double t0) {
    if (!ctx->prof_ms) return;
    if (ctx->device == LQ_DEVICE_CUDA) (void)lq_cuda_sync(lq_cuda_stream(ctx), &ctx->err);
    double dt = now_ms() - t0;
    for (int i = 0; i < lq_op_table_len; i++)
        if (lq_op_table[i] == op) {
            ctx->prof_ms[2 * i + backward] += dt;
            ctx->prof_calls[2 * i + backward]++;
            return;
        }
}

typedef struct row {
    int slot;
    double ms;
} row;

static int by_time(const void *a, const void *b) {
    double d = ((const row *)b)->ms - ((const row *)a)->ms;
    return d > 0 ? 1 : d < 0 ? -1 : 0;
}

void lq_ctx_profile_report(lq_ctx *ctx, char *buf, size_t n, bool reset) {
    if (!buf || !n) return;
    buf[0] = '\0';
    if (!ctx->prof_ms) {
        snprintf(buf, n, "(profiling is off: lq_ctx_opts.profile)\n");
        return;
    }
    int m = 2 * lq_op_table_len, k = 0;
    row *r = malloc((size_t)m * sizeof *r);
    if (!r) return;
    double total = 0;
    for (int i = 0; i < m; i++)
        if (ctx->prof_calls[i]) {
            r[k++] = (row){i, ctx->prof_ms[i]};
            total += ctx->prof_ms[i];
        }
    qsort(r, (size_t)k, sizeof *r, by_time);
    size_t used = (size_t)snprintf(buf, n, "%-20s %-8s %10s %8s %6s\n", "op", "pass", "ms", "calls", "share");
    for (int j = 0; j < k && used < n; j++) {
        int s = r[j].slot;
        used += (size_t)snprintf(buf + used, n - used, "%-20s %-8s %10.3f %8lld %5.1f%%\n", lq_op_table[s / 2]->name,
                                 s % 2 ? "backward" : "forward", r[j].ms, (long long)ctx->prof_calls[s],
                                 total > 0 ? 100.0 * r[j].ms / total : 0.0);
    }
    if (used < n) snprintf(buf + used, n - used, "%-20s %-8s %10.3f\n", "all ops", "", total);
    free(r);
    if (reset)
        for (int i = 0; i < m; i++) ctx->prof_ms[i] = 0, ctx->prof_calls[i] = 0;
}
