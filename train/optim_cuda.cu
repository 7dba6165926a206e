/* train/optim_cuda.cu: AdamW, SGD and gradient-norm clipping over a parameter block on the CUDA
 * device: one elementwise kernel per update, with the CPU loop's arithmetic in the same order. */
#include <cuda_runtime.h>

#include "core/cuda.h"
#include "core/cuda_check.h"
#include "train/optim_cuda.h"

#define THREADS 256 /* a power of two: the reduction halves it */

#define FOR_EACH(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

static unsigned blocks_for(int64_t n) {
    int64_t b = (n + THREADS - 1) / THREADS;
    return (unsigned)(b < 1 ? 1 : b > 65535 * 8 ? 65535 * 8 : b);
}

/* The explicit _rn intrinsics keep nvcc from fusing a multiply and an add into an FMA: the CPU
 * build (x86-64-v2, no FMA) rounds each operation, and so does this, so both give the same bits. */
__global__ static void k_adamw(float *x, const float *g, float *m, float *v, int64_t n, int64_t nd,
                               lq_adamw_scalars s) {
    FOR_EACH(i, n) {
        float xi = x[i];
        if (i < nd) xi = __fmul_rn(xi, s.decay);
        const float gi = g[i];
        float mi = m[i];
        mi = s.w_small ? __fadd_rn(mi, __fmul_rn(s.w, __fsub_rn(gi, mi)))
                       : __fsub_rn(gi, __fmul_rn(__fsub_rn(gi, mi), s.one_minus_w));
        const float vi = __fadd_rn(__fmul_rn(v[i], s.b2), __fmul_rn(__fmul_rn(s.one_minus_b2, gi), gi));
        const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bc2_sqrt), s.eps);
        m[i] = mi;
        v[i] = vi;
        x[i] = __fadd_rn(xi, __fdiv_rn(__fmul_rn(s.neg_step, mi), denom));
    }
}

__global__ static void k_sgd(float *x, const float *g, float *buf, int64_t n, int64_t nd, lq_sgd_scalars s) {
    FOR_EACH(i, n) {
        const float xi = x[i];
        float gi = g[i];
        if (s.use_wd && i < nd) gi = __fadd_rn(gi, __fmul_rn(s.wd, xi));
        if (s.use_mom) {
            const float b = s.first ? gi : __fadd_rn(__fmul_rn(buf[i], s.mom), __fmul_rn(s.one_minus_damp, gi));
            buf[i] = b;
            gi = s.nesterov ? __fadd_rn(gi, __fmul_rn(s.mom, b)) : b;
        }
        x[i] = __fadd_rn(xi, __fmul_rn(s.neg_lr, gi));
    }
}

/* Block c sums g[i]^2 in double over its chunk [n c / chunks, n (c + 1) / chunks): each thread a
 * strided share, then a tree over shared memory (every thread reaches every barrier). */
__global__ static void k_sumsq(const float *g, int64_t n, int chunks, double *part) {
    __shared__ double sh[THREADS];
    const int64_t c = blockIdx.x;
    const int64_t lo = n * c / chunks, hi = n * (c + 1) / chunks;
    double acc = 0.0;
    for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) acc += (double)g[i] * (double)g[i];
    sh[threadIdx.x] = acc;
    __syncthreads();
    for (int s = THREADS / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) part[c] = sh[0];
}

__global__ static void k_scale(float *g, int64_t n, float s) {
    FOR_EACH(i, n) g[i] = __fmul_rn(g[i], s);
}

/* Waits for the launch and the default stream; the launch's own error first. */
static lq_status finish(const char *what, lq_err *err) {
    LQ_CU_LAUNCHED(err, what);
    LQ_CU(err, cudaStreamSynchronize(0));
    return LQ_OK;
}

extern "C" lq_status lq_adamw_step_cuda(float *x, const float *g, float *m, float *v, int64_t n, int64_t nd,
                                        const lq_adamw_scalars *s, lq_err *err) {
    if (n <= 0) return LQ_OK;
    /* no wait before the launch: the legacy default stream (0) waits for the context's blocking
     * stream, where the backward that wrote g was queued (autograd/cuda_ctx.cu) */
    k_adamw<<<blocks_for(n), THREADS, 0, 0>>>(x, g, m, v, n, nd, *s);
    return finish("adamw", err);
}

extern "C" lq_status lq_sgd_step_cuda(float *x, const float *g, float *buf, int64_t n, int64_t nd,
                                      const lq_sgd_scalars *s, lq_err *err) {
    if (n <= 0) return LQ_OK;
    k_sgd<<<blocks_for(n), THREADS, 0, 0>>>(x, g, buf, n, nd, *s);
    return finish("sgd", err);
}

extern "C" lq_status lq_sumsq_cuda(const float *g, int64_t n, int chunks, double *part, lq_err *err) {
    LQ_CHECK(err, chunks >= 1 && chunks <= 1024, LQ_ERR_ARG, "sumsq: %d chunks (1..1024)", chunks);
    double *d = (double *)lq_cuda_malloc((size_t)chunks * sizeof(double), err);
    if (!d) return err->status ? err->status : LQ_ERR_OOM;
    k_sumsq<<<(unsigned)chunks, THREADS, 0, 0>>>(g, n, chunks, d);
    lq_status st = finish("grad norm", err);
    if (st == LQ_OK) st = lq_cuda_copy(part, d, (size_t)chunks * sizeof(double), LQ_COPY_D2H, NULL, err);
    lq_cuda_free(d);
    return st;
}

extern "C" lq_status lq_scale_cuda(float *g, int64_t n, float s, lq_err *err) {
    if (n <= 0) return LQ_OK;
    k_scale<<<blocks_for(n), THREADS, 0, 0>>>(g, n, s);
    return finish("grad scale", err);
}
