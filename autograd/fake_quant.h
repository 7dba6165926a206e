/* autograd/fake_quant.h: private helpers shared by the fake-quantization ops (op_fake_quant*.c,
 * op_pact.c): deterministic per-slot sums, zero-point conversion and gradcheck input shaping. */
#ifndef LQ_AUTOGRAD_FAKE_QUANT_H
#define LQ_AUTOGRAD_FAKE_QUANT_H

#include <math.h>

#include "autograd/autograd_impl.h"

#define LQ_FQ_SUM_BLOCK 4096 /* elements per partial sum of a one-slot reduction */

/* out[k] += sum of t[i] over the elements of slot k, where slot(i) = (i / inner) % slots, i.e.
 * i = (o * slots + k) * inner + j. Sums run in double in a fixed order (one-slot sums in fixed
 * blocks), so the result does not depend on the thread count. */
static inline lq_status lq_fq_slot_sums(lq_ctx *ctx, const float *t, int64_t n, int64_t slots, int64_t inner,
                                        float *out) {
    if (!out || n == 0 || slots == 0) return LQ_OK;
    if (slots == 1) {
        int64_t nb = (n + LQ_FQ_SUM_BLOCK - 1) / LQ_FQ_SUM_BLOCK;
        double *part = lq_ctx_alloc(ctx, (size_t)nb * sizeof(double));
        if (!part) return ctx->err.status;
#pragma omp parallel for num_threads(ctx->n_threads) if (nb > 1)
        for (int64_t b = 0; b < nb; b++) {
            int64_t i1 = (b + 1) * LQ_FQ_SUM_BLOCK < n ? (b + 1) * LQ_FQ_SUM_BLOCK : n;
            double acc = 0.0;
            for (int64_t i = b * LQ_FQ_SUM_BLOCK; i < i1; i++) acc += t[i];
            part[b] = acc;
        }
        double acc = 0.0;
        for (int64_t b = 0; b < nb; b++) acc += part[b];
        out[0] += (float)acc;
        return LQ_OK;
    }
    int64_t outer = n / (slots * inner);
#pragma omp parallel for num_threads(ctx->n_threads) if (n > 65536)
    for (int64_t k = 0; k < slots; k++) {
        double acc = 0.0;
        for (int64_t o = 0; o < outer; o++) {
            const float *r = t + (o * slots + k) * inner;
            for (int64_t j = 0; j < inner; j++) acc += r[j];
        }
        out[k] += (float)acc;
    }
    return LQ_OK;
}

/* The slot count and run length of a per-channel (or per-tensor) layout of x. */
static inline void lq_fq_layout(const lq_tensor *x, bool per_channel, int axis, int64_t *slots, int64_t *inner) {
    if (!per_channel) {
        *slots = 1;
        *inner = lq_numel(x) > 0 ? lq_numel(x) : 1;
        return;
    }
    *slots = x->ne[axis];
    *inner = 1;
    for (int d = axis + 1; d < x->ndim; d++) *inner *= x->ne[d];
}

/* A gradcheck input away from the points where a piecewise-linear surrogate has kinks: every
 * element of t is redrawn (up to 64 times) while too_close(value, slot) says it sits within the
 * finite-difference reach of one. */
typedef bool (*lq_fq_near_fn)(float v, int64_t slot, const void *aux);
static inline void lq_fq_redraw(lq_tensor *t, lq_rng *rng, float lo, float hi, int64_t slots, int64_t inner,
                                lq_fq_near_fn too_close, const void *aux) {
    float *d = t->data;
    for (int64_t i = 0; i < lq_numel(t); i++) {
        int64_t k = slots > 1 ? (i / inner) % slots : 0;
        for (int tries = 0; tries < 64 && too_close(d[i], k, aux); tries++)
            d[i] = lo + (hi - lo) * lq_rng_uniform(rng);
    }
}

#endif
