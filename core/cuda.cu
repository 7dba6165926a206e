/* core/cuda.cu: the CUDA runtime's view of the devices, and checked device memory (make CUDA=1). */
#include <cuda_runtime.h>
#include <stdio.h>

#include "core/cuda.h"
#include "core/cuda_check.h"

extern "C" bool lq_cuda_built(void) { return true; }

extern "C" int lq_cuda_devices(char *buf, size_t n) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        if (buf && n) snprintf(buf, n, "no CUDA device: %s", cudaGetErrorString(e));
        return 0;
    }
    size_t k = 0;
    if (buf && n) k += (size_t)snprintf(buf, n, "%d device%s", count, count == 1 ? "" : "s");
    for (int i = 0; i < count && buf && k < n; i++) {
        cudaDeviceProp p;
        if (cudaGetDeviceProperties(&p, i) == cudaSuccess)
            k += (size_t)snprintf(buf + k, n - k, "%s %d: %s (sm_%d%d, %.1f GiB)", i ? ";" : ":", i, p.name, p.major,
                                  p.minor, (double)p.totalGlobalMem / (1 << 30));
    }
    return count;
}

/* The allocation counters: a process-wide tally of what this library holds on the device (the
 * device itself is process-wide state; the counters only mirror it). Each block carries its size
 * in a 256-byte header so that lq_cuda_free can count it back. */
#define HDR 256
static size_t g_in_use, g_peak;

extern "C" void *lq_cuda_malloc(size_t bytes, lq_err *err) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes + HDR);
    if (e != cudaSuccess) {
        (void)cudaGetLastError(); /* clear the sticky-free error so later calls work */
        lq_err_set(err, e == cudaErrorMemoryAllocation ? LQ_ERR_OOM : LQ_ERR_INTERNAL, __FILE__, __LINE__,
                   "cudaMalloc of %zu bytes failed: %s (%s)", bytes, cudaGetErrorName(e), cudaGetErrorString(e));
        return NULL;
    }
    size_t sz = bytes;
    if (cudaMemcpy(p, &sz, sizeof sz, cudaMemcpyHostToDevice) != cudaSuccess) {
        cudaFree(p);
        lq_err_set(err, LQ_ERR_INTERNAL, __FILE__, __LINE__, "cudaMemcpy of a block header failed");
        return NULL;
    }
    __atomic_add_fetch(&g_in_use, bytes, __ATOMIC_RELAXED);
    size_t now = __atomic_load_n(&g_in_use, __ATOMIC_RELAXED);
    if (now > g_peak) g_peak = now;
    return (char *)p + HDR;
}

static uint64_t g_free_epoch;

extern "C" uint64_t lq_cuda_free_epoch(void) { return __atomic_load_n(&g_free_epoch, __ATOMIC_ACQUIRE); }

extern "C" void lq_cuda_free(void *p) {
    if (!p) return;
    __atomic_add_fetch(&g_free_epoch, 1, __ATOMIC_ACQ_REL);
    char *base = (char *)p - HDR;
    size_t sz = 0;
    if (cudaMemcpy(&sz, base, sizeof sz, cudaMemcpyDeviceToHost) == cudaSuccess)
        __atomic_sub_fetch(&g_in_use, sz, __ATOMIC_RELAXED);
    cudaFree(base);
}

static cudaMemcpyKind kind_of(lq_copy_kind k) {
    return k == LQ_COPY_H2D ? cudaMemcpyHostToDevice : k == LQ_COPY_D2H ? cudaMemcpyDeviceToHost : cudaMemcpyDeviceToDevice;
}

extern "C" lq_status lq_cuda_copy(void *dst, const void *src, size_t bytes, lq_copy_kind kind, void *stream, lq_err *err) {
    if (!bytes) return LQ_OK;
    LQ_CU(err, cudaMemcpyAsync(dst, src, bytes, kind_of(kind), (cudaStream_t)stream));
    LQ_CU(err, cudaStreamSynchronize((cudaStream_t)stream));
    return LQ_OK;
}

extern "C" lq_status lq_cuda_memset(void *p, int v, size_t bytes, void *stream, lq_err *err) {
    if (!bytes) return LQ_OK;
    LQ_CU(err, cudaMemsetAsync(p, v, bytes, (cudaStream_t)stream));
    return LQ_OK;
}

extern "C" lq_status lq_cuda_sync(void *stream, lq_err *err) {
    if (stream) LQ_CU(err, cudaStreamSynchronize((cudaStream_t)stream));
    else LQ_CU(err, cudaDeviceSynchronize());
    return LQ_OK;
}

extern "C" lq_cuda_mem lq_cuda_mem_stats(void) {
    lq_cuda_mem m = {__atomic_load_n(&g_in_use, __ATOMIC_RELAXED), g_peak};
    return m;
}

extern "C" void lq_cuda_mem_reset_peak(void) { g_peak = __atomic_load_n(&g_in_use, __ATOMIC_RELAXED); }
