/* train/optim_cuda.h: the optimizers' device kernels (train/optim_cuda.cu; train/optim_cuda_none.c
 * in a build without CUDA answers LQ_ERR_UNSUPPORTED), called by train/optim.c for a parameter
 * block on the CUDA device. Each waits for all work queued on the device (the trainer's backward
 * runs on its context's stream), runs on the default stream and waits for its own work, so the
 * next step's kernels on any stream see the update. */
#ifndef LQ_TRAIN_OPTIM_CUDA_H
#define LQ_TRAIN_OPTIM_CUDA_H

#include <stdbool.h>
#include <stdint.h>

#include "core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* AdamW's per-step scalars, computed on the host exactly as the CPU loop computes them. */
typedef struct lq_adamw_scalars {
    float decay;        /* 1 - lr wd */
    float w, one_minus_w; /* lerp weight 1 - b1 and 1 - w */
    bool w_small;       /* w < 0.5: torch's lerp form */
    float b2, one_minus_b2;
    float neg_step;     /* -lr / (1 - b1^t) */
    float bc2_sqrt;     /* sqrt(1 - b2^t) */
    float eps;
} lq_adamw_scalars;

/* x, g, m, v: n floats on the device; decay applies to [0, nd). */
lq_status lq_adamw_step_cuda(float *x, const float *g, float *m, float *v, int64_t n, int64_t nd,
                             const lq_adamw_scalars *s, lq_err *err);

typedef struct lq_sgd_scalars {
    float wd, mom, one_minus_damp, neg_lr;
    bool nesterov, use_wd, use_mom, first;
} lq_sgd_scalars;

/* x, g, buf (NULL without momentum): n floats on the device; decay applies to [0, nd). */
lq_status lq_sgd_step_cuda(float *x, const float *g, float *buf, int64_t n, int64_t nd, const lq_sgd_scalars *s,
                           lq_err *err);

/* The sum of squares of g (n floats on the device) in `chunks` chunks [n c / chunks, n (c + 1) /
 * chunks), each summed in double; the chunk sums come back in part[chunks] (the caller adds them
 * in order). chunks <= 1024. */
lq_status lq_sumsq_cuda(const float *g, int64_t n, int chunks, double *part, lq_err *err);
/* g *= s over n floats on the device. */
lq_status lq_scale_cuda(float *g, int64_t n, float s, lq_err *err);

#ifdef __cplusplus
}
#endif

#endif
