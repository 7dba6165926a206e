/* core/cuda_none.c: the CUDA query and device memory of a build made without CUDA (make CUDA=1
 * replaces it with core/cuda.cu): every device call says so. */
#include <stdio.h>

#include "core/cuda.h"

bool lq_cuda_built(void) { return false; }

int lq_cuda_devices(char *buf, size_t n) {
    if (buf && n) snprintf(buf, n, "built without CUDA (rebuild with make CUDA=1)");
    return 0;
}

#define NO_CUDA "loquat was built without CUDA (rebuild with make CUDA=1)"

void *lq_cuda_malloc(size_t bytes, lq_err *err) {
    LQ_ERR(err, LQ_ERR_UNSUPPORTED, "device allocation of %zu bytes: " NO_CUDA, bytes);
    return NULL;
}
void lq_cuda_free(void *p) { (void)p; }
uint64_t lq_cuda_free_epoch(void) { return 0; }
lq_status lq_cuda_copy(void *dst, const void *src, size_t bytes, lq_copy_kind kind, void *stream, lq_err *err) {
    (void)dst, (void)src, (void)bytes, (void)kind, (void)stream;
    return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "device copy: " NO_CUDA);
}
lq_status lq_cuda_memset(void *p, int v, size_t bytes, void *stream, lq_err *err) {
    (void)p, (void)v, (void)bytes, (void)stream;
    return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "device memset: " NO_CUDA);
}
lq_status lq_cuda_sync(void *stream, lq_err *err) {
    (void)stream;
    return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "device sync: " NO_CUDA);
}
lq_cuda_mem lq_cuda_mem_stats(void) { return (lq_cuda_mem){0, 0}; }
void lq_cuda_mem_reset_peak(void) {}
