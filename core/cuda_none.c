/* core/cuda_none.c: the CUDA query of a build made without CUDA (make CUDA=1 replaces it). */
#include <stdio.h>

#include "core/cuda.h"

bool lq_cuda_built(void) { return false; }

int lq_cuda_devices(char *buf, size_t n) {
    if (buf && n) snprintf(buf, n, "built without CUDA (rebuild with make CUDA=1)");
    return 0;
}
