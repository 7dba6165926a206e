/* core/cuda.h: what CUDA support this build has, which devices it sees, and device memory:
 * plain cudaMalloc'd buffers (never managed memory), copies and fills, every call checked with
 * file:line. A build without CUDA (core/cuda_none.c) answers LQ_ERR_UNSUPPORTED. */
#ifndef LQ_CORE_CUDA_H
#define LQ_CORE_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* True when loquat was built with CUDA=1. */
bool lq_cuda_built(void);
/* Number of CUDA devices usable now (0 when none, or when built without CUDA); a one-line
 * description (device names, or why there are none) goes into buf. */
int lq_cuda_devices(char *buf, size_t n);

typedef enum lq_copy_kind {
    LQ_COPY_H2D = 0, /* host -> device */
    LQ_COPY_D2H,     /* device -> host */
    LQ_COPY_D2D,     /* device -> device */
} lq_copy_kind;

/* Device memory of `bytes` (256-byte aligned); NULL with err set (the size, and what CUDA said)
 * when the device is out of memory or absent. Counted in lq_cuda_mem_stats. */
void *lq_cuda_malloc(size_t bytes, lq_err *err);
void lq_cuda_free(void *p);
/* How many blocks lq_cuda_free has released so far in this process: a cache keyed by a device
 * address is stale once it moves (the address may now hold something else). */
uint64_t lq_cuda_free_epoch(void);
/* Copies bytes and waits for the copy (and everything before it on `stream`, NULL = default). */
lq_status lq_cuda_copy(void *dst, const void *src, size_t bytes, lq_copy_kind kind, void *stream, lq_err *err);
/* Sets bytes of device memory to the byte value v, on stream (asynchronous). */
lq_status lq_cuda_memset(void *p, int v, size_t bytes, void *stream, lq_err *err);
/* Waits for everything queued on stream (NULL = the whole device); reports a kernel's fault. */
lq_status lq_cuda_sync(void *stream, lq_err *err);

/* Bytes of device memory that lq_cuda_malloc handed out: now and at most at once; reset_peak
 * sets the peak to the current figure. */
typedef struct lq_cuda_mem {
    size_t in_use, peak;
} lq_cuda_mem;
lq_cuda_mem lq_cuda_mem_stats(void);
void lq_cuda_mem_reset_peak(void);

#ifdef __cplusplus
}
#endif

#endif
