/* core/cuda.cu: the CUDA query of a make CUDA=1 build: the runtime's view of the devices. */
#include <cuda_runtime.h>
#include <stdio.h>

extern "C" {
#include "core/cuda.h"
}

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
