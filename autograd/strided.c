/* autograd/strided.c: copy and accumulate between f32 layouts of one logical shape. */
#include "autograd/cuda_impl.h"

/* ne, dst_nb and src_nb are padded to 4 dims. Parallel over the outer two dims: every output
 * element is written by exactly one iteration, so the result does not depend on thread count. */
static void strided_apply(float *dst, const size_t *dst_nb, const float *src, const size_t *src_nb, const int64_t *ne,
                          int n_threads, bool accumulate) {
    int64_t outer = ne[0] * ne[1];
#pragma omp parallel for num_threads(n_threads) if (outer > 1 && outer * ne[2] * ne[3] > 32768)
    for (int64_t o = 0; o < outer; o++) {
        int64_t a = o / ne[1], b = o % ne[1];
        for (int64_t c = 0; c < ne[2]; c++) {
            char *d = (char *)dst + a * dst_nb[0] + b * dst_nb[1] + c * dst_nb[2];
            const char *s = (const char *)src + a * src_nb[0] + b * src_nb[1] + c * src_nb[2];
            if (dst_nb[3] == sizeof(float) && src_nb[3] == sizeof(float)) {
                const float *sf = (const float *)s;
                float *df = (float *)d;
                if (accumulate)
                    for (int64_t e = 0; e < ne[3]; e++) df[e] += sf[e];
                else
                    for (int64_t e = 0; e < ne[3]; e++) df[e] = sf[e];
            } else {
                for (int64_t e = 0; e < ne[3]; e++) {
                    float *de = (float *)(d + e * dst_nb[3]);
                    float v = *(const float *)(s + e * src_nb[3]);
                    *de = accumulate ? *de + v : v;
                }
            }
        }
    }
}

void lq_strided_copy(float *dst, const size_t *dst_nb, const float *src, const size_t *src_nb, const int64_t *ne,
                     int n_threads) {
    strided_apply(dst, dst_nb, src, src_nb, ne, n_threads, false);
}

void lq_strided_add(float *dst, const size_t *dst_nb, const float *src, const size_t *src_nb, const int64_t *ne,
                    int n_threads) {
    strided_apply(dst, dst_nb, src, src_nb, ne, n_threads, true);
}

lq_status lq_strided_to(lq_ctx *ctx, float *dst, const size_t *dst_nb, const float *src, const size_t *src_nb,
                        const int64_t *ne, bool accumulate) {
    if (ctx->device == LQ_DEVICE_CUDA) return lq_cuda_strided(ctx, dst, dst_nb, src, src_nb, ne, accumulate);
    strided_apply(dst, dst_nb, src, src_nb, ne, ctx->n_threads, accumulate);
    return LQ_OK;
}
