/* core/cuda.h: what CUDA support this build has, and which devices it sees. */
#ifndef LQ_CORE_CUDA_H
#define LQ_CORE_CUDA_H

#include <stdbool.h>
#include <stddef.h>

/* True when loquat was built with CUDA=1. */
bool lq_cuda_built(void);
/* Number of CUDA devices usable now (0 when none, or when built without CUDA); a one-line
 * description (device names, or why there are none) goes into buf. */
int lq_cuda_devices(char *buf, size_t n);

#endif
