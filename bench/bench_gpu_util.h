/* bench/bench_gpu_util.h: what the GPU benchmarks share: a checked CUDA runtime call, the lead
 * before a timed span and the median of a run's times. Define BENCH_NAME (the program's name, for
 * messages) first. */
#ifndef LQ_BENCH_GPU_UTIL_H
#define LQ_BENCH_GPU_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <cuda_runtime_api.h>

/* A CUDA runtime call that must succeed: else file:line, the call and CUDA's message on stderr,
 * and the calling function returns 1. */
#define CK(call)                                                                                             \
    do {                                                                                                     \
        cudaError_t ck_e_ = (call);                                                                          \
        if (ck_e_ != cudaSuccess) {                                                                          \
            fprintf(stderr, BENCH_NAME ": %s:%d: %s failed: %s (%s)\n", __FILE__, __LINE__, #call,           \
                    cudaGetErrorName(ck_e_), cudaGetErrorString(ck_e_));                                     \
            return 1;                                                                                        \
        }                                                                                                    \
    } while (0)

static void CUDART_CB lq_bench_hold(void *arg) {
    const int us = *(const int *)arg;
    struct timespec t = {.tv_sec = us / 1000000, .tv_nsec = (long)(us % 1000000) * 1000};
    nanosleep(&t, NULL);
}

/* Queued before a timed span's first event: a host function that holds stream s *us microseconds
 * (none for 0), while the host queues the event and the work behind it. The span is then GPU time:
 * on an idle stream the first event is stamped at once and the span also holds the host's launch
 * latency (about 4 us a kernel on an H200 host; 5% of an 80 us dequant). *us must outlive the call. */
static inline cudaError_t lq_bench_lead(cudaStream_t s, const int *us) {
    return *us > 0 ? cudaLaunchHostFunc(s, lq_bench_hold, (void *)us) : cudaSuccess;
}

static inline int lq_bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median of n values (sorts them). */
static inline double lq_bench_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof v[0], lq_bench_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#endif
