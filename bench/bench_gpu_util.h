/* bench/bench_gpu_util.h: what the GPU benchmarks share: a checked CUDA runtime call and the
 * median of a run's times. Define BENCH_NAME (the program's name, for messages) first. */
#ifndef LQ_BENCH_GPU_UTIL_H
#define LQ_BENCH_GPU_UTIL_H

#include <stdio.h>
#include <stdlib.h>

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
