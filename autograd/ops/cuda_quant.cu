/* autograd/ops/cuda_quant.cu: CUDA kernels of the quant ops (forward and backward), beside their CPU files. */
#include <cfloat>
#include <cmath>
#include <cstdint>

#include "autograd/cuda_impl.h"
#include "core/cuda.h"
#include "core/cuda_check.h"
#include "quant/kernels_affine.h"
#include "quant/kernels_bnb.h"

/* The CPU files are the reference: op_fake_quant.c, op_fake_quant_lsq.c, op_pact.c,
 * op_fake_quant_dynamic.c, op_fake_quant_bnb4.c, and quant/affine.c, quant/bnb4.c for the math.
 * Per element the kernels call the same __host__ __device__ helpers (quant/kernels_affine.h,
 * kernels_bnb.h); the few host-only helpers have device twins here with the same float operations
 * in the same order (no a * b + c pairs that nvcc could fuse). nearbyintf on the device rounds
 * half to even as the host's does; divisions are IEEE (no fast math in NVFLAGS).
 *
 * Errors the CPU forward reports (a NaN / Inf input, a scale that is not finite and > 0) are
 * found on the device: kernels atomicMin the first offending index into a flag word that the
 * forward downloads at its end (one small synchronous copy per op), so the same error comes back.
 * None of these ops keeps observer state: scales are inputs (fake_quant, lsq, pact) or computed
 * per call on the device and never leave it (dynamic per token, bnb4 absmax). */

#define FOR_EACH(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

#define NO_BAD 0xFFFFFFFFFFFFFFFFull

static cudaStream_t stream_of(lq_ctx *ctx) { return (cudaStream_t)lq_cuda_stream(ctx); }

/* grid for a kernel that loops over `items` with one block each */
static unsigned grid_for(int64_t items) { return (unsigned)(items < 1 ? 1 : items > 65535 ? 65535 : items); }

/* --- error flags --------------------------------------------------------------------------------- */

/* n flag words on the device, each NO_BAD until a kernel atomicMins an index into it. */
static lq_status flags_new(lq_ctx *ctx, unsigned long long **f, int n) {
    *f = (unsigned long long *)lq_ctx_dalloc(ctx, (size_t)n * sizeof(unsigned long long));
    if (!*f) return ctx->err.status ? ctx->err.status : LQ_ERR_OOM;
    return lq_cuda_memset(*f, 0xFF, (size_t)n * sizeof(unsigned long long), lq_cuda_stream(ctx), &ctx->err);
}

/* x[i] read back for an error message */
static float value_at(lq_ctx *ctx, const float *x, int64_t i) {
    float v = NAN;
    if (lq_cuda_download(ctx, &v, x + i, sizeof v) != LQ_OK) lq_ctx_clear_error(ctx);
    return v;
}

static const char *nonfinite_name(float v) { return isnan(v) ? "NaN" : (v > 0 ? "+Inf" : "-Inf"); }

__device__ static void flag_index(unsigned long long *f, int64_t i) { atomicMin(f, (unsigned long long)i); }

/* Any scale that is not finite and > 0: its slot into bad (quant/affine.c's check_qparams). */
__global__ static void k_check_scales(const float *scale, int64_t slots, unsigned long long *bad) {
    FOR_EACH(k, slots) {
        float s = scale[k];
        if (!(isfinite(s) && s > 0.0f)) flag_index(bad, k);
    }
}

/* --- deterministic per-slot sums ------------------------------------------------------------------ */

/* The device twin of lq_fq_slot_sums (autograd/fake_quant.h): out[k] += sum of t over slot k's
 * elements i = (o * slots + k) * inner + j, in double. Slot k's per = n / slots elements are
 * numbered e = o * inner + j and cut into chunks of SUM_CHUNK; one block sums one (slot, chunk)
 * into part[] (a shared-memory tree in double), then one thread per slot adds its chunks in
 * order. No atomics, so the result does not depend on scheduling. */
#define SUM_CHUNK 4096

__global__ static void k_slot_partials(const float *t, int64_t slots, int64_t inner, int64_t per, int64_t nchunk,
                                       double *part) {
    __shared__ double sh[LQ_CUDA_THREADS];
    /* b is the same for every thread of the block, so the __syncthreads below are reached by all */
    for (int64_t b = blockIdx.x; b < slots * nchunk; b += gridDim.x) {
        int64_t k = b / nchunk, c = b % nchunk;
        int64_t e0 = c * SUM_CHUNK, e1 = e0 + SUM_CHUNK < per ? e0 + SUM_CHUNK : per;
        double acc = 0.0;
        for (int64_t e = e0 + threadIdx.x; e < e1; e += blockDim.x) {
            int64_t o = e / inner, j = e % inner;
            acc += (double)t[(o * slots + k) * inner + j];
        }
        sh[threadIdx.x] = acc;
        __syncthreads();
        for (int s = LQ_CUDA_THREADS / 2; s > 0; s >>= 1) {
            if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
            __syncthreads();
        }
        if (threadIdx.x == 0) part[b] = sh[0];
        __syncthreads(); /* sh[0] read before the next round overwrites sh */
    }
}

__global__ static void k_slot_finish(const double *part, int64_t slots, int64_t nchunk, float *out) {
    FOR_EACH(k, slots) {
        double acc = 0.0;
        for (int64_t c = 0; c < nchunk; c++) acc += part[k * nchunk + c];
        out[k] += (float)acc;
    }
}

static lq_status slot_sums(lq_ctx *ctx, const float *t, int64_t n, int64_t slots, int64_t inner, float *out) {
    if (!out || !t || n == 0 || slots == 0) return LQ_OK;
    int64_t per = n / slots, nchunk = (per + SUM_CHUNK - 1) / SUM_CHUNK;
    if (nchunk < 1) nchunk = 1;
    double *part = (double *)lq_ctx_dalloc(ctx, (size_t)(slots * nchunk) * sizeof(double));
    if (!part) return ctx->err.status ? ctx->err.status : LQ_ERR_OOM;
    k_slot_partials<<<grid_for(slots * nchunk), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(t, slots, inner, per, nchunk,
                                                                                       part);
    LQ_CUDA_LAUNCHED(ctx, "fake quant slot partial sums");
    k_slot_finish<<<lq_cuda_blocks(slots), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(part, slots, nchunk, out);
    LQ_CUDA_LAUNCHED(ctx, "fake quant slot sums");
    return LQ_OK;
}

/* --- fake_quant: fixed scale and zero point -------------------------------------------------------- */

/* lq_affine_fake_quantize's loop: element i uses slot (i / inner) % slots; a non-finite x gives 0
 * and is flagged; mask (optional) gets the STE mask on the rounded, unclamped code. */
__global__ static void k_fake_quant(const float *x, const float *scale, const int32_t *zp, float *y, uint8_t *mask,
                                    int64_t n, int64_t slots, int64_t inner, int32_t qmin, int32_t qmax,
                                    unsigned long long *bad) {
    FOR_EACH(i, n) {
        int64_t k = slots > 1 ? (i / inner) % slots : 0;
        float xi = x[i];
        uint8_t in = 0;
        if (!isfinite(xi)) {
            flag_index(bad, i);
            y[i] = 0.0f;
        } else {
            float sc = scale[k];
            y[i] = lq_affine_fake_one(xi, sc, 1.0f / sc, zp ? zp[k] : 0, qmin, qmax, &in);
        }
        if (mask) mask[i] = in;
    }
}

/* The device half of lq_affine_fake_quantize: checks the scales and x, as prepare() and the loop
 * do, and reports the first failure with the CPU's message. zp is a device int32 array or NULL. */
static lq_status affine_fake_dev(lq_ctx *ctx, const lq_affine_scheme *s, const lq_tensor *x, const float *scale,
                                 const int32_t *zp, float *y, uint8_t *mask) {
    int64_t slots;
    LQ_TRY(lq_affine_check(s, x->ndim, x->ne, &slots, &ctx->err));
    int64_t n = lq_numel(x), inner = lq_affine_inner(s, x->ndim, x->ne);
    unsigned long long *bad, hb[2];
    LQ_TRY(flags_new(ctx, &bad, 2));
    if (slots > 0) {
        k_check_scales<<<lq_cuda_blocks(slots), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(scale, slots, bad + 1);
        LQ_CUDA_LAUNCHED(ctx, "fake quant scale check");
    }
    if (n > 0) {
        k_fake_quant<<<lq_cuda_blocks(n), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(
            (const float *)x->data, scale, zp, y, mask, n, slots, inner, s->qmin, s->qmax, bad);
        LQ_CUDA_LAUNCHED(ctx, "fake quant");
    }
    LQ_TRY(lq_cuda_download(ctx, hb, bad, sizeof hb));
    if (hb[1] != NO_BAD) {
        int64_t k = (int64_t)hb[1];
        return LQ_ERR(&ctx->err, LQ_ERR_NUMERIC, "affine: scale %lld is %g; scales must be finite and > 0",
                      (long long)k, (double)value_at(ctx, scale, k));
    }
    if (hb[0] != NO_BAD) {
        int64_t i = (int64_t)hb[0];
        return LQ_ERR(&ctx->err, LQ_ERR_NUMERIC, "affine: element %lld is %s; quantization needs finite values",
                      (long long)i, nonfinite_name(value_at(ctx, (const float *)x->data, i)));
    }
    return LQ_OK;
}

/* Node as op_fake_quant.c: in[0] x, in[1] scale, in[2] zero point; ip 0 granularity, 1 axis,
 * 2 group, 3 qmin, 4 qmax; saved[0] the int32 zero points (uploaded to the device by the entry
 * function in a CUDA context) or NULL; saved[1] the uint8 mask (device) when recorded. */
static lq_affine_scheme fq_scheme(const lq_node *n) {
    lq_affine_scheme s = {(int32_t)n->ip[3], (int32_t)n->ip[4], (lq_granularity)n->ip[0], (int)n->ip[1], n->ip[2]};
    return s;
}

static lq_status fq_fwd(lq_ctx *ctx, lq_node *n) {
    lq_affine_scheme s = fq_scheme(n);
    const lq_tensor *x = n->in[0];
    uint8_t *mask = NULL;
    if (n->recorded) {
        mask = (uint8_t *)lq_ctx_dalloc(ctx, (size_t)(lq_numel(x) > 0 ? lq_numel(x) : 1));
        if (!mask) return ctx->err.status ? ctx->err.status : LQ_ERR_OOM;
        n->saved[1] = mask;
    }
    return affine_fake_dev(ctx, &s, x, (const float *)n->in[1]->data, (const int32_t *)n->saved[0],
                           (float *)n->out->data, mask);
}

__global__ static void k_masked_add(float *gx, const float *gy, const uint8_t *mask, int64_t n) {
    FOR_EACH(i, n) if (mask[i]) gx[i] += gy[i];
}

/* dx += dy where the rounded, unclamped code was inside [qmin, qmax] (op_fake_quant.c's bwd). */
static lq_status fq_bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    const lq_tensor *x = n->in[0];
    int64_t m = lq_numel(x);
    const uint8_t *mask = (const uint8_t *)n->saved[1];
    if (!mask) { /* not recorded with a mask (should not happen): recompute it */
        uint8_t *mk = (uint8_t *)lq_ctx_dalloc(ctx, (size_t)(m > 0 ? m : 1));
        float *tmp = (float *)lq_ctx_dalloc(ctx, (size_t)(m > 0 ? m : 1) * sizeof(float));
        if (!mk || !tmp) return ctx->err.status ? ctx->err.status : LQ_ERR_OOM;
        lq_affine_scheme s = fq_scheme(n);
        LQ_TRY(affine_fake_dev(ctx, &s, x, (const float *)n->in[1]->data, (const int32_t *)n->saved[0], tmp, mk));
        mask = mk;
    }
    if (m == 0) return LQ_OK;
    k_masked_add<<<lq_cuda_blocks(m), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(gx, (const float *)n->out->grad->data,
                                                                           mask, m);
    LQ_CUDA_LAUNCHED(ctx, "fake quant backward");
    return LQ_OK;
}

/* --- fake_quant_lsq: learned scale and zero point --------------------------------------------------- */

/* Node as op_fake_quant_lsq.c: in[0] x, in[1] scale, in[2] zero point (when ip[3]); ip 0 qmin,
 * 1 qmax, 2 per channel, 3 has zero point, 4 axis; fp[0] grad factor. The entry function has
 * checked (on the host) that every scale is finite and > 0 and every zero point finite. */

/* zp_forward / zp_backward of op_fake_quant_lsq.c, on the device (zp NULL = no zero point). */
__device__ static float lsq_zp_forward(const float *zp, int64_t k, int32_t qmin, int32_t qmax) {
    if (!zp) return 0.0f;
    return (float)(int64_t)fminf(fmaxf(nearbyintf(zp[k]), (float)qmin), (float)qmax);
}

__device__ static float lsq_zp_backward(const float *zp, int64_t k, int per_channel, int32_t qmin, int32_t qmax) {
    if (!zp) return 0.0f;
    float z = zp[k];
    if (per_channel) return (float)(int64_t)fminf(fmaxf(nearbyintf(z), (float)qmin), (float)qmax);
    return (float)(int64_t)fminf(fmaxf(z + 0.5f, (float)qmin), (float)qmax);
}

__global__ static void k_lsq_zp(const float *zp, int32_t *zi, int64_t slots, int32_t qmin, int32_t qmax) {
    FOR_EACH(k, slots) zi[k] = (int32_t)lsq_zp_forward(zp, k, qmin, qmax);
}

static void lsq_layout(const lq_node *n, int64_t *slots, int64_t *inner) {
    const lq_tensor *x = n->in[0];
    if (!n->ip[2]) {
        *slots = 1;
        *inner = lq_numel(x) > 0 ? lq_numel(x) : 1;
        return;
    }
    int axis = (int)n->ip[4];
    *slots = x->ne[axis];
    *inner = 1;
    for (int d = axis + 1; d < x->ndim; d++) *inner *= x->ne[d];
}

static lq_status lsq_fwd(lq_ctx *ctx, lq_node *n) {
    int64_t slots, inner;
    lsq_layout(n, &slots, &inner);
    int32_t *zi = (int32_t *)lq_ctx_dalloc(ctx, (size_t)(slots > 0 ? slots : 1) * sizeof(int32_t));
    if (!zi) return ctx->err.status ? ctx->err.status : LQ_ERR_OOM;
    const float *zp = n->ip[3] ? (const float *)n->in[2]->data : NULL;
    if (slots > 0) {
        k_lsq_zp<<<lq_cuda_blocks(slots), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(zp, zi, slots, (int32_t)n->ip[0],
                                                                               (int32_t)n->ip[1]);
        LQ_CUDA_LAUNCHED(ctx, "lsq zero points");
    }
    lq_affine_scheme s = {(int32_t)n->ip[0], (int32_t)n->ip[1], n->ip[2] ? LQ_GRAN_CHANNEL : LQ_GRAN_TENSOR,
                          (int)n->ip[4], 0};
    return affine_fake_dev(ctx, &s, n->in[0], (const float *)n->in[1]->data, zi, (float *)n->out->data, NULL);
}

/* Per element lq_lsq_grad_one (PyTorch's float32 order); ts / tz get the scale and zero-point
 * terms for the per-slot sums. */
__global__ static void k_lsq_bwd(const float *x, const float *gy, const float *scale, const float *zp, int per_channel,
                                 int64_t n, int64_t slots, int64_t inner, int32_t qmin, int32_t qmax, float g, float *gx,
                                 float *ts, float *tz) {
    FOR_EACH(i, n) {
        int64_t k = slots > 1 ? (i / inner) % slots : 0;
        float dx, ds, dz, s = scale[k];
        float zb = lsq_zp_backward(zp, k, per_channel, qmin, qmax);
        lq_lsq_grad_one(x[i], gy[i], s, 1.0f / s, zb, qmin, qmax, g, &dx, &ds, &dz);
        if (gx) gx[i] += dx;
        if (ts) ts[i] = ds;
        if (tz) tz[i] = dz;
    }
}

/* op_fake_quant_lsq.c's bwd: dx per element, ds and dz summed per slot (in double). */
static lq_status lsq_bwd(lq_ctx *ctx, lq_node *n) {
    float *gx, *gs, *gz = NULL;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    LQ_TRY(lq_grad_get(ctx, n->in[1], &gs));
    if (n->ip[3]) LQ_TRY(lq_grad_get(ctx, n->in[2], &gz));
    if (!gx && !gs && !gz) return LQ_OK;
    const lq_tensor *x = n->in[0];
    int64_t m = lq_numel(x), slots, inner;
    lsq_layout(n, &slots, &inner);
    if (m == 0) return LQ_OK;
    float *ts = gs ? (float *)lq_ctx_dalloc(ctx, (size_t)m * sizeof(float)) : NULL;
    float *tz = gz ? (float *)lq_ctx_dalloc(ctx, (size_t)m * sizeof(float)) : NULL;
    if ((gs && !ts) || (gz && !tz)) return ctx->err.status ? ctx->err.status : LQ_ERR_OOM;
    k_lsq_bwd<<<lq_cuda_blocks(m), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(
        (const float *)x->data, (const float *)n->out->grad->data, (const float *)n->in[1]->data,
        n->ip[3] ? (const float *)n->in[2]->data : NULL, n->ip[2] != 0, m, slots, inner, (int32_t)n->ip[0],
        (int32_t)n->ip[1], n->fp[0], gx, ts, tz);
    LQ_CUDA_LAUNCHED(ctx, "lsq backward");
    LQ_TRY(slot_sums(ctx, ts, m, slots, inner, gs));
    LQ_TRY(slot_sums(ctx, tz, m, slots, inner, gz));
    return LQ_OK;
}

/* --- pact ------------------------------------------------------------------------------------------ */

/* op_pact.c's fwd: s = alpha / (2^b - 1), inv = 1 / s, y = clamp(nearbyint(clamp(x, 0, alpha) inv),
 * 0, 2^b - 1) s; alpha read from the device (1 element). */
__global__ static void k_pact_fwd(const float *x, const float *alpha_p, float *y, int64_t n, float levels,
                                  unsigned long long *bad) {
    float alpha = alpha_p[0];
    float s = alpha / levels, inv = 1.0f / s;
    FOR_EACH(i, n) {
        float xi = x[i];
        if (!isfinite(xi)) {
            flag_index(bad, i);
            y[i] = 0.0f;
            continue;
        }
        float xc = fminf(fmaxf(xi, 0.0f), alpha);
        float q = fminf(fmaxf(nearbyintf(xc * inv), 0.0f), levels);
        y[i] = q * s;
    }
}

static lq_status pact_fwd(lq_ctx *ctx, lq_node *n) {
    int64_t m = lq_numel(n->out);
    if (m == 0) return LQ_OK;
    const float *x = (const float *)n->in[0]->data;
    unsigned long long *bad, hb;
    LQ_TRY(flags_new(ctx, &bad, 1));
    float levels = (float)((1 << n->ip[0]) - 1);
    k_pact_fwd<<<lq_cuda_blocks(m), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(x, (const float *)n->in[1]->data,
                                                                         (float *)n->out->data, m, levels, bad);
    LQ_CUDA_LAUNCHED(ctx, "pact");
    LQ_TRY(lq_cuda_download(ctx, &hb, bad, sizeof hb));
    if (hb != NO_BAD)
        return LQ_ERR(&ctx->err, LQ_ERR_NUMERIC, "pact: element %lld of x is %s", (long long)hb,
                      isnan(value_at(ctx, x, (int64_t)hb)) ? "NaN" : "Inf");
    return LQ_OK;
}

/* dx += dy where 0 <= x < alpha; t = dy where x >= alpha (else 0), summed into dalpha. */
__global__ static void k_pact_bwd(const float *x, const float *gy, const float *alpha_p, float *gx, float *t,
                                  int64_t n) {
    float alpha = alpha_p[0];
    FOR_EACH(i, n) {
        if (gx && x[i] >= 0.0f && x[i] < alpha) gx[i] += gy[i];
        if (t) t[i] = x[i] >= alpha ? gy[i] : 0.0f;
    }
}

static lq_status pact_bwd(lq_ctx *ctx, lq_node *n) {
    float *gx, *ga;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    LQ_TRY(lq_grad_get(ctx, n->in[1], &ga));
    if (!gx && !ga) return LQ_OK;
    int64_t m = lq_numel(n->out);
    if (m == 0) return LQ_OK;
    float *t = ga ? (float *)lq_ctx_dalloc(ctx, (size_t)m * sizeof(float)) : NULL;
    if (ga && !t) return ctx->err.status ? ctx->err.status : LQ_ERR_OOM;
    k_pact_bwd<<<lq_cuda_blocks(m), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(
        (const float *)n->in[0]->data, (const float *)n->out->grad->data, (const float *)n->in[1]->data, gx, t, m);
    LQ_CUDA_LAUNCHED(ctx, "pact backward");
    return slot_sums(ctx, t, m, 1, m, ga);
}

/* --- fake_quant_dynamic: per-token scales from each row's min / max --------------------------------- */

/* The device twin of lq_affine_token_qparams (quant/affine.c), operation for operation. */
__device__ static void token_qparams_dev(float min, float max, int32_t qmin, int32_t qmax, bool symmetric,
                                         float *scale, float *zero_point) {
    const float eps = FLT_EPSILON;
    float lo = fminf(min, 0.0f), hi = fmaxf(max, 0.0f);
    if (symmetric) {
        float m = fmaxf(-lo, hi);
        float s = m / (float)((double)(qmax - qmin) / 2.0);
        *scale = fmaxf(s, eps);
        *zero_point = 0.0f;
        return;
    }
    float s = fmaxf((hi - lo) / (float)(qmax - qmin), eps);
    float dmin = lo / s, dmax = hi / s;
    float from_min = (float)qmin + dmin, from_max = (float)qmax + dmax;
    float z = (from_min + from_max > 0.0f) ? (float)qmin - dmin : (float)qmax - dmax;
    z = fminf(fmaxf(z, (float)qmin), (float)qmax);
    *scale = s;
    *zero_point = nearbyintf(z);
}

/* One block per row (grid-stride over rows): min / max by a shared-memory tree (exact, so the
 * order does not matter), then every element fake-quantized as lq_affine_fake_quantize_dynamic
 * does. A row holding a NaN / Inf is flagged (its first bad element by atomicMin, which makes the
 * global minimum the CPU's first_bad) and written as zeros. */
__global__ static void k_fq_dynamic(const float *x, float *y, int64_t rows, int64_t cols, int32_t qmin, int32_t qmax,
                                    int symmetric, unsigned long long *bad) {
    __shared__ float smn[LQ_CUDA_THREADS], smx[LQ_CUDA_THREADS];
    __shared__ int sbad[LQ_CUDA_THREADS];
    const int tid = (int)threadIdx.x;
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) { /* uniform across the block */
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        float mn = INFINITY, mx = -INFINITY;
        int b = 0;
        for (int64_t j = tid; j < cols; j += blockDim.x) {
            float v = xr[j];
            if (!isfinite(v)) {
                b = 1;
                flag_index(bad, r * cols + j);
                continue;
            }
            mn = fminf(mn, v);
            mx = fmaxf(mx, v);
        }
        smn[tid] = mn;
        smx[tid] = mx;
        sbad[tid] = b;
        __syncthreads();
        for (int s = LQ_CUDA_THREADS / 2; s > 0; s >>= 1) {
            if (tid < s) {
                smn[tid] = fminf(smn[tid], smn[tid + s]);
                smx[tid] = fmaxf(smx[tid], smx[tid + s]);
                sbad[tid] |= sbad[tid + s];
            }
            __syncthreads();
        }
        float rmn = smn[0], rmx = smx[0];
        int rbad = sbad[0];
        __syncthreads(); /* every thread has read the row's result before the next row overwrites it */
        if (rbad) {
            for (int64_t j = tid; j < cols; j += blockDim.x) yr[j] = 0.0f;
            continue;
        }
        float s, z;
        token_qparams_dev(rmn, rmx, qmin, qmax, symmetric != 0, &s, &z);
        float inv = 1.0f / s;
        int32_t zi = (int32_t)z;
        uint8_t in;
        for (int64_t j = tid; j < cols; j += blockDim.x) yr[j] = lq_affine_fake_one(xr[j], s, inv, zi, qmin, qmax, &in);
    }
}

static lq_status dyn_fwd(lq_ctx *ctx, lq_node *n) {
    const lq_tensor *x = n->in[0];
    int64_t cols = x->ndim > 0 ? x->ne[x->ndim - 1] : 1;
    int64_t rows = cols > 0 ? lq_numel(x) / cols : 0;
    int bits = (int)n->ip[0];
    LQ_CHECK(&ctx->err, bits >= 2 && bits <= 8, LQ_ERR_ARG, "affine dynamic: bits = %d must be 2..8", bits);
    if (rows == 0) return LQ_OK;
    int32_t qmin, qmax;
    lq_affine_range(bits, true, &qmin, &qmax); /* torchao keeps signed codes for both mappings */
    unsigned long long *bad, hb;
    LQ_TRY(flags_new(ctx, &bad, 1));
    k_fq_dynamic<<<grid_for(rows), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>(
        (const float *)x->data, (float *)n->out->data, rows, cols, qmin, qmax, n->ip[1] != 0, bad);
    LQ_CUDA_LAUNCHED(ctx, "fake quant dynamic");
    LQ_TRY(lq_cuda_download(ctx, &hb, bad, sizeof hb));
    if (hb != NO_BAD)
        return LQ_ERR(&ctx->err, LQ_ERR_NUMERIC, "affine dynamic: element %lld (row %lld) is NaN or Inf",
                      (long long)hb, (long long)((int64_t)hb / cols));
    return LQ_OK;
}

/* dx = dy (scales constant, torchao's all-ones mask), as op_fake_quant_dynamic.c and
 * op_fake_quant_bnb4.c; lq_grad_add accumulates on the device. */
static lq_status identity_bwd(lq_ctx *ctx, lq_node *n) {
    return lq_grad_add(ctx, n->in[0], (const float *)n->out->grad->data);
}

/* --- fake_quant_bnb4: NF4 / FP4 quantize-dequantize ------------------------------------------------- */

/* The code values and bnb4.c's encoder: the codes in value order (stable sort) and the float32
 * midpoints between neighbours; passed to the kernel by value. */
typedef struct bnb4_enc {
    float code[16];
    float bounds[15];
    uint8_t order[16];
} bnb4_enc;

/* bnb4_encoder_init of quant/bnb4.c, on the host, the same operations. */
static void bnb4_enc_init(const float *code, bnb4_enc *enc) {
    for (int i = 0; i < 16; i++) enc->code[i] = code[i];
    for (int i = 0; i < 16; i++) {
        int j = i;
        for (; j > 0 && code[enc->order[j - 1]] > code[i]; j--) enc->order[j] = enc->order[j - 1];
        enc->order[j] = (uint8_t)i;
    }
    for (int i = 0; i < 15; i++) enc->bounds[i] = (code[enc->order[i]] + code[enc->order[i + 1]]) / 2.0f;
}

/* One block per bnb block (grid-stride): absmax = max |x| by a shared-memory tree, then each
 * element as bnb4_quantize + lq_bnb4_dequantize do it: full blocks s = x * (1 / absmax_c), the
 * last partial block s = x / absmax_c and it dequantizes with absmax_c; code = order[number of
 * midpoints below clamp(s, -1, 1)]; y = code value * absmax (one rounded multiply). */
__global__ static void k_bnb4(const float *x, float *y, int64_t n, int64_t block, bnb4_enc e,
                              unsigned long long *bad) {
    __shared__ float sm[LQ_CUDA_THREADS];
    const int tid = (int)threadIdx.x;
    const int64_t nblk = (n + block - 1) / block, full = n - n % block;
    for (int64_t b = blockIdx.x; b < nblk; b += gridDim.x) { /* uniform across the block */
        const int64_t b0 = b * block, len = n - b0 < block ? n - b0 : block;
        float am = 0.0f;
        for (int64_t i = tid; i < len; i += blockDim.x) {
            float v = x[b0 + i];
            if (!isfinite(v)) flag_index(bad, b0 + i);
            am = fmaxf(am, fabsf(v));
        }
        sm[tid] = am;
        __syncthreads();
        for (int s = LQ_CUDA_THREADS / 2; s > 0; s >>= 1) {
            if (tid < s) sm[tid] = fmaxf(sm[tid], sm[tid + s]);
            __syncthreads();
        }
        am = sm[0];
        __syncthreads(); /* read before the next block's round overwrites sm */
        const float am_c = am < 1e-38f ? 1e-38f : am; /* torch: absmax.clamp(min=1e-38) */
        const bool partial = b0 >= full;
        const float r = 1.0f / am_c;
        const float scale = partial ? am_c : am;
        for (int64_t i = tid; i < len; i += blockDim.x) {
            float v = x[b0 + i];
            float s = partial ? v / am_c : v * r;
            s = s < -1.0f ? -1.0f : s > 1.0f ? 1.0f : s;
            int q = 0;
            for (int k = 0; k < 15; k++) q += e.bounds[k] < s;
            y[b0 + i] = LQ_BNB_MUL(e.code[e.order[q]], scale);
        }
    }
}

static lq_status bnb4_fwd(lq_ctx *ctx, lq_node *n) {
    const lq_tensor *x = n->in[0];
    int64_t m = lq_numel(x), block = n->ip[1];
    lq_dtype type = (lq_dtype)n->ip[0];
    const float *code = type == LQ_DTYPE_NF4 ? lq_nf4_code() : type == LQ_DTYPE_FP4 ? lq_fp4_code() : NULL;
    LQ_CHECK(&ctx->err, code, LQ_ERR_ARG, "bnb4 quantize: dtype %s is not nf4 or fp4", lq_dtype_name(type));
    LQ_CHECK(&ctx->err, block >= 32 && block <= 4096 && (block & (block - 1)) == 0, LQ_ERR_ARG,
             "bnb4 quantize: block size %lld (bitsandbytes allows powers of two from 32 to 4096)", (long long)block);
    if (m == 0) return LQ_OK;
    bnb4_enc enc;
    bnb4_enc_init(code, &enc);
    unsigned long long *bad, hb;
    LQ_TRY(flags_new(ctx, &bad, 1));
    int64_t nblk = (m + block - 1) / block;
    k_bnb4<<<grid_for(nblk), LQ_CUDA_THREADS, 0, stream_of(ctx)>>>((const float *)x->data, (float *)n->out->data, m,
                                                                    block, enc, bad);
    LQ_CUDA_LAUNCHED(ctx, "fake quant bnb4");
    LQ_TRY(lq_cuda_download(ctx, &hb, bad, sizeof hb));
    if (hb != NO_BAD)
        return LQ_ERR(&ctx->err, LQ_ERR_NUMERIC, "bnb4 quantize: element %lld is %s; NF4/FP4 need finite input",
                      (long long)hb, nonfinite_name(value_at(ctx, (const float *)x->data, (int64_t)hb)));
    return LQ_OK;
}

extern "C" const lq_cuda_op lq_cuda_ops_quant[] = {
    {"fake_quant", fq_fwd, fq_bwd},
    {"fake_quant_lsq", lsq_fwd, lsq_bwd},
    {"pact", pact_fwd, pact_bwd},
    {"fake_quant_dynamic", dyn_fwd, identity_bwd},
    {"fake_quant_bnb4", bnb4_fwd, identity_bwd},
    {NULL, NULL, NULL},
};
