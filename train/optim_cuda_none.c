/* train/optim_cuda_none.c: the optimizers' device kernels in a build without CUDA (make CUDA=1 uses
 * train/optim_cuda.cu): a parameter block cannot be on a device here, so each says so. */
#include "train/optim_cuda.h"

#define NO_CUDA "loquat was built without CUDA (rebuild with make CUDA=1)"

lq_status lq_adamw_step_cuda(float *x, const float *g, float *m, float *v, int64_t n, int64_t nd,
                             const lq_adamw_scalars *s, lq_err *err) {
    (void)x, (void)g, (void)m, (void)v, (void)n, (void)nd, (void)s;
    return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "adamw on the device: " NO_CUDA);
}

lq_status lq_sgd_step_cuda(float *x, const float *g, float *buf, int64_t n, int64_t nd, const lq_sgd_scalars *s,
                           lq_err *err) {
    (void)x, (void)g, (void)buf, (void)n, (void)nd, (void)s;
    return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "sgd on the device: " NO_CUDA);
}

lq_status lq_sumsq_cuda(const float *g, int64_t n, int chunks, double *part, lq_err *err) {
    (void)g, (void)n, (void)chunks, (void)part;
    return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "gradient norm on the device: " NO_CUDA);
}

lq_status lq_scale_cuda(float *g, int64_t n, float s, lq_err *err) {
    (void)g, (void)n, (void)s;
    return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "gradient scale on the device: " NO_CUDA);
}
