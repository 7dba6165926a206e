/* quant/affine.c: integer affine quantization on buffers (per tensor / channel / group / token),
 * dynamic per-token fake quantization, and the I8 / I4 rows of the dtype-traits table. */
#include <float.h>
#include <math.h>

#include "quant/kernels_affine.h"
#include "quant/quant_impl.h"

#define AFFINE_PAR_MIN 32768 /* elements below which loops stay serial */
#define AFFINE_CODE_MIN (-32768)
#define AFFINE_CODE_MAX 65535

lq_affine_scheme lq_affine_scheme_make(int bits, bool symmetric, lq_granularity gran, int axis, int64_t group) {
    lq_affine_scheme s = {0, 0, gran, axis, group};
    if (bits < 2) bits = 2;
    if (bits > 16) bits = 16;
    lq_affine_range(bits, symmetric, &s.qmin, &s.qmax);
    return s;
}

static int64_t numel_of(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    return n;
}

lq_status lq_affine_check(const lq_affine_scheme *s, int ndim, const int64_t *shape, int64_t *n_slots, lq_err *err) {
    if (n_slots) *n_slots = 0;
    LQ_CHECK(err, s != NULL, LQ_ERR_ARG, "affine: no scheme given");
    LQ_CHECK(err, ndim >= 0 && ndim <= 4 && (ndim == 0 || shape), LQ_ERR_SHAPE,
             "affine: buffers have 0 to 4 dims, got %d", ndim);
    for (int d = 0; d < ndim; d++)
        LQ_CHECK(err, shape[d] >= 0, LQ_ERR_SHAPE, "affine: dim %d has negative size %lld", d, (long long)shape[d]);
    LQ_CHECK(err, s->qmin < s->qmax && s->qmin >= AFFINE_CODE_MIN && s->qmax <= AFFINE_CODE_MAX, LQ_ERR_ARG,
             "affine: code range [%d, %d] must have qmin < qmax within [%d, %d]", (int)s->qmin, (int)s->qmax,
             AFFINE_CODE_MIN, AFFINE_CODE_MAX);
    int64_t n = numel_of(ndim, shape), last = ndim > 0 ? shape[ndim - 1] : 1, slots = 1;
    switch (s->gran) {
    case LQ_GRAN_TENSOR:
        slots = 1;
        break;
    case LQ_GRAN_CHANNEL: {
        int a = s->axis < 0 ? s->axis + ndim : s->axis;
        LQ_CHECK(err, a >= 0 && a < ndim, LQ_ERR_ARG, "affine: channel axis %d is out of range for %d dims", s->axis,
                 ndim);
        slots = shape[a];
        break;
    }
    case LQ_GRAN_GROUP:
        LQ_CHECK(err, s->group > 0, LQ_ERR_ARG, "affine: group size %lld must be > 0", (long long)s->group);
        LQ_CHECK(err, last % s->group == 0, LQ_ERR_SHAPE,
                 "affine: group size %lld does not divide the last dim (%lld)", (long long)s->group, (long long)last);
        slots = n / s->group;
        break;
    case LQ_GRAN_TOKEN:
        slots = last > 0 ? n / last : 0;
        break;
    default:
        return LQ_ERR(err, LQ_ERR_ARG, "affine: unknown granularity %d", (int)s->gran);
    }
    if (n_slots) *n_slots = slots;
    return LQ_OK;
}

int64_t lq_affine_inner(const lq_affine_scheme *s, int ndim, const int64_t *shape) {
    int64_t n = numel_of(ndim, shape), last = ndim > 0 ? shape[ndim - 1] : 1;
    switch (s->gran) {
    case LQ_GRAN_CHANNEL: {
        int a = s->axis < 0 ? s->axis + ndim : s->axis;
        int64_t inner = 1;
        for (int d = a + 1; d < ndim; d++) inner *= shape[d];
        return inner;
    }
    case LQ_GRAN_GROUP: return s->group > 0 ? s->group : 1;
    case LQ_GRAN_TOKEN: return last > 0 ? last : 1;
    default: return n > 0 ? n : 1;
    }
}

/* Scales finite and > 0, zero points inside the range: checked once per slot. */
static lq_status check_qparams(const lq_affine_scheme *s, int64_t n_slots, const float *scale, const int32_t *zp,
                               lq_err *err) {
    LQ_CHECK(err, n_slots == 0 || scale, LQ_ERR_ARG, "affine: no scales given");
    for (int64_t k = 0; k < n_slots; k++) {
        if (!(isfinite(scale[k]) && scale[k] > 0.0f))
            return LQ_ERR(err, LQ_ERR_NUMERIC, "affine: scale %lld is %g; scales must be finite and > 0", (long long)k,
                          (double)scale[k]);
        if (zp && (zp[k] < s->qmin || zp[k] > s->qmax))
            return LQ_ERR(err, LQ_ERR_ARG, "affine: zero point %lld is %d, outside the code range [%d, %d]",
                          (long long)k, (int)zp[k], (int)s->qmin, (int)s->qmax);
    }
    return LQ_OK;
}

static lq_status bad_element(const float *x, int64_t i, lq_err *err) {
    return LQ_ERR(err, LQ_ERR_NUMERIC, "affine: element %lld is %s; quantization needs finite values", (long long)i,
                  isnan(x[i]) ? "NaN" : (x[i] > 0 ? "+Inf" : "-Inf"));
}

static lq_status prepare(const lq_affine_scheme *s, int ndim, const int64_t *shape, const float *scale,
                         const int32_t *zp, int64_t *n, int64_t *slots, int64_t *inner, lq_err *err) {
    LQ_TRY(lq_affine_check(s, ndim, shape, slots, err));
    LQ_TRY(check_qparams(s, *slots, scale, zp, err));
    *n = numel_of(ndim, shape);
    *inner = lq_affine_inner(s, ndim, shape);
    return LQ_OK;
}

lq_status lq_affine_quantize(const lq_affine_scheme *s, int ndim, const int64_t *shape, const float *x,
                             const float *scale, const int32_t *zero_point, int32_t *codes, int n_threads, lq_err *err) {
    int64_t n, slots, inner;
    LQ_TRY(prepare(s, ndim, shape, scale, zero_point, &n, &slots, &inner, err));
    int64_t first_bad = INT64_MAX;
    int nt = n_threads > 1 ? n_threads : 1;
    const int32_t qmin = s->qmin, qmax = s->qmax;
#pragma omp parallel for num_threads(nt) reduction(min : first_bad) if (n > AFFINE_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        int64_t k = slots > 1 ? (i / inner) % slots : 0;
        if (!isfinite(x[i])) {
            if (i < first_bad) first_bad = i;
            codes[i] = 0;
            continue;
        }
        codes[i] = lq_affine_quantize_one(x[i], 1.0f / scale[k], zero_point ? zero_point[k] : 0, qmin, qmax);
    }
    return first_bad == INT64_MAX ? LQ_OK : bad_element(x, first_bad, err);
}

lq_status lq_affine_dequantize(const lq_affine_scheme *s, int ndim, const int64_t *shape, const int32_t *codes,
                               const float *scale, const int32_t *zero_point, float *y, int n_threads, lq_err *err) {
    int64_t n, slots, inner;
    LQ_TRY(prepare(s, ndim, shape, scale, zero_point, &n, &slots, &inner, err));
    int nt = n_threads > 1 ? n_threads : 1;
#pragma omp parallel for num_threads(nt) if (n > AFFINE_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        int64_t k = slots > 1 ? (i / inner) % slots : 0;
        y[i] = lq_affine_dequantize_one(codes[i], scale[k], zero_point ? zero_point[k] : 0);
    }
    return LQ_OK;
}

lq_status lq_affine_fake_quantize(const lq_affine_scheme *s, int ndim, const int64_t *shape, const float *x,
                                  const float *scale, const int32_t *zero_point, float *y, uint8_t *mask,
                                  int n_threads, lq_err *err) {
    int64_t n, slots, inner;
    LQ_TRY(prepare(s, ndim, shape, scale, zero_point, &n, &slots, &inner, err));
    int64_t first_bad = INT64_MAX;
    int nt = n_threads > 1 ? n_threads : 1;
    const int32_t qmin = s->qmin, qmax = s->qmax;
#pragma omp parallel for num_threads(nt) reduction(min : first_bad) if (n > AFFINE_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        int64_t k = slots > 1 ? (i / inner) % slots : 0;
        float xi = x[i];
        uint8_t in = 0;
        if (!isfinite(xi)) {
            if (i < first_bad) first_bad = i;
            y[i] = 0.0f;
        } else {
            float sc = scale[k];
            y[i] = lq_affine_fake_one(xi, sc, 1.0f / sc, zero_point ? zero_point[k] : 0, qmin, qmax, &in);
        }
        if (mask) mask[i] = in;
    }
    if (first_bad == INT64_MAX) return LQ_OK;
    if (y != x) return bad_element(x, first_bad, err);
    /* y aliases x: the bad element was overwritten, so the message cannot say which it was */
    return LQ_ERR(err, LQ_ERR_NUMERIC, "affine: element %lld is NaN or Inf; quantization needs finite values",
                  (long long)first_bad);
}

/* --- dynamic per token ------------------------------------------------------------------------ */

void lq_affine_token_qparams(float min, float max, int32_t qmin, int32_t qmax, bool symmetric, float *scale,
                             float *zero_point) {
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

lq_status lq_affine_fake_quantize_dynamic(const float *x, int64_t rows, int64_t cols, int bits, bool symmetric, float *y,
                                          float *scale, float *zero_point, int n_threads, lq_err *err) {
    LQ_CHECK(err, bits >= 2 && bits <= 8, LQ_ERR_ARG, "affine dynamic: bits = %d must be 2..8", bits);
    LQ_CHECK(err, rows >= 0 && cols >= 0, LQ_ERR_SHAPE, "affine dynamic: negative size (%lld, %lld)", (long long)rows,
             (long long)cols);
    int32_t qmin, qmax;
    lq_affine_range(bits, true, &qmin, &qmax); /* torchao keeps signed codes for both mappings */
    int64_t first_bad = INT64_MAX;
    int nt = n_threads > 1 ? n_threads : 1;
#pragma omp parallel for num_threads(nt) reduction(min : first_bad) if (rows > 1 && rows * cols > AFFINE_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * cols;
        float *yr = y + r * cols;
        float mn = INFINITY, mx = -INFINITY;
        int64_t bad = -1;
        for (int64_t j = 0; j < cols; j++) {
            if (!isfinite(xr[j])) {
                bad = r * cols + j;
                break;
            }
            mn = fminf(mn, xr[j]);
            mx = fmaxf(mx, xr[j]);
        }
        if (bad >= 0) {
            if (bad < first_bad) first_bad = bad;
            continue;
        }
        float s, z;
        lq_affine_token_qparams(mn, mx, qmin, qmax, symmetric, &s, &z);
        if (scale) scale[r] = s;
        if (zero_point) zero_point[r] = z;
        float inv = 1.0f / s;
        int32_t zi = (int32_t)z;
        uint8_t in;
        for (int64_t j = 0; j < cols; j++) yr[j] = lq_affine_fake_one(xr[j], s, inv, zi, qmin, qmax, &in);
    }
    if (first_bad != INT64_MAX)
        return LQ_ERR(err, LQ_ERR_NUMERIC, "affine dynamic: element %lld (row %lld) is NaN or Inf",
                      (long long)first_bad, (long long)(cols > 0 ? first_bad / cols : 0));
    return LQ_OK;
}

/* --- I8 / I4 traits rows ------------------------------------------------------------------------ */

/* Scale and zero point of element e of a tensor whose state is qs. */
static inline void elem_qparams(const lq_qstate *qs, int64_t e, float *scale, float *zero) {
    int64_t b = e / qs->block;
    *scale = qs->absmax ? qs->absmax[b] : lq_qstate_absmax(qs, b);
    *zero = qs->zero ? qs->zero[b] : 0.0f;
}

/* Runs BODY for each i of [0, n) with s and z the scale and zero point of element start + i,
 * looked up once per block rather than once per element. */
#define FOR_EACH_BLOCK_RUN(qs, start, n, BODY)                                                   \
    for (int64_t i0 = 0; i0 < (n);) {                                                          \
        const int64_t e0 = (start) + i0, b = e0 / (qs)->block;                                 \
        const int64_t run_end = (b + 1) * (qs)->block - (start) < (n) ? (b + 1) * (qs)->block - (start) : (n); \
        const float s = (qs)->absmax ? (qs)->absmax[b] : lq_qstate_absmax((qs), b);            \
        const float z = (qs)->zero ? (qs)->zero[b] : 0.0f;                                     \
        for (int64_t i = i0; i < run_end; i++) BODY;                                           \
        i0 = run_end;                                                                          \
    }

void lq_i8_to_f32(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start) {
    const int8_t *c = src;
    FOR_EACH_BLOCK_RUN(qs, start, n, dst[i] = lq_affine_dequantize_zf(c[i], s, z))
}

void lq_i4_to_f32(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start) {
    const uint8_t *c = src;
    FOR_EACH_BLOCK_RUN(qs, start, n, dst[i] = lq_affine_dequantize_zf(lq_i4_nibble(c[i / 2], (int)(i & 1)), s, z))
}

/* Quantizes n elements (from element `start`) with the scales in qs into codes[]; width is the
 * format's own bit width (8 or 4). */
static lq_status affine_from_f32(const char *fmt, int width, const float *src, int32_t *codes, int64_t n,
                                 const lq_qstate *qs, int64_t start, lq_err *err) {
    LQ_CHECK(err, qs != NULL && qs->block > 0, LQ_ERR_ARG,
             "%s: quantizing needs a quant state with a block size and a scale per block", fmt);
    LQ_CHECK(err, qs->absmax || (qs->absmax_q && qs->absmax2 && qs->code2 && qs->block2 > 0), LQ_ERR_ARG,
             "%s: the quant state has no scales", fmt);
    int bits = qs->bits ? qs->bits : width;
    LQ_CHECK(err, bits >= 2 && bits <= width, LQ_ERR_ARG, "%s: bits = %d must be 2..%d", fmt, bits, width);
    int32_t qmin, qmax;
    lq_affine_range(bits, true, &qmin, &qmax);
    int64_t last_block = -1;
    float s = 1.0f, z = 0.0f, inv = 1.0f;
    int32_t zi = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t e = start + i;
        if (e / qs->block != last_block) {
            last_block = e / qs->block;
            elem_qparams(qs, e, &s, &z);
            if (!(isfinite(s) && s > 0.0f))
                return LQ_ERR(err, LQ_ERR_NUMERIC, "%s: block %lld has scale %g; it must be finite and > 0", fmt,
                              (long long)last_block, (double)s);
            if (!(z == nearbyintf(z) && z >= (float)qmin && z <= (float)qmax))
                return LQ_ERR(err, LQ_ERR_ARG,
                              "%s: block %lld has zero point %g; it must be an integer in the signed code range "
                              "[%d, %d]", fmt, (long long)last_block, (double)z, (int)qmin, (int)qmax);
            inv = 1.0f / s;
            zi = (int32_t)z;
        }
        if (!isfinite(src[i]))
            return LQ_ERR(err, LQ_ERR_NUMERIC, "%s: element %lld (block %lld) is %s; quantization needs finite values",
                          fmt, (long long)e, (long long)last_block,
                          isnan(src[i]) ? "NaN" : (src[i] > 0 ? "+Inf" : "-Inf"));
        codes[i] = lq_affine_quantize_one(src[i], inv, zi, qmin, qmax);
    }
    return LQ_OK;
}

#define CODE_CHUNK 256

lq_status lq_i8_from_f32(const float *src, void *dst, int64_t n, lq_qstate *qs, int64_t start, lq_err *err) {
    int8_t *d = dst;
    int32_t codes[CODE_CHUNK];
    for (int64_t i0 = 0; i0 < n; i0 += CODE_CHUNK) {
        int64_t m = n - i0 < CODE_CHUNK ? n - i0 : CODE_CHUNK;
        LQ_TRY(affine_from_f32("i8", 8, src + i0, codes, m, qs, start + i0, err));
        for (int64_t j = 0; j < m; j++) d[i0 + j] = (int8_t)codes[j];
    }
    return LQ_OK;
}

lq_status lq_i4_from_f32(const float *src, void *dst, int64_t n, lq_qstate *qs, int64_t start, lq_err *err) {
    LQ_CHECK(err, n % 2 == 0 && start % 2 == 0, LQ_ERR_ARG,
             "i4: start (%lld) and count (%lld) must be even (two codes per byte)", (long long)start, (long long)n);
    uint8_t *d = dst;
    int32_t codes[CODE_CHUNK];
    for (int64_t i0 = 0; i0 < n; i0 += CODE_CHUNK) {
        int64_t m = n - i0 < CODE_CHUNK ? n - i0 : CODE_CHUNK;
        LQ_TRY(affine_from_f32("i4", 4, src + i0, codes, m, qs, start + i0, err));
        for (int64_t j = 0; j < m; j += 2) d[(i0 + j) / 2] = lq_i4_pack(codes[j], codes[j + 1]);
    }
    return LQ_OK;
}
