/* quant/qparams.c: affine quantization ranges and scale / zero point from an observed [min, max], as torch.ao. */
#include <float.h>
#include <math.h>

#include "quant/quant.h"

void lq_affine_range(int bits, bool symmetric, int32_t *qmin, int32_t *qmax)
{
    if (bits < 1) bits = 1;
    if (bits > 31) bits = 31;
    if (symmetric) {
        *qmin = -(int32_t)(1u << (bits - 1));
        *qmax = (int32_t)((1u << (bits - 1)) - 1u);
    } else {
        *qmin = 0;
        *qmax = (int32_t)((1u << bits) - 1u);
    }
}

/* torch.ao UniformQuantizationObserverBase._calculate_qparams, element for element. All arithmetic is
 * float32 as torch does it on float32 tensors: the python-float divisors (qmax - qmin) / 2 and
 * qmax - qmin are exact in float32 for every range up to 2^24, so dividing by the float32 value is
 * what torch's kernel computes. torch.round rounds half to even (nearbyintf in the default mode). */
void lq_affine_qparams_q(float min, float max, int32_t qmin, int32_t qmax, bool symmetric, int32_t sym_zero_point,
                         float *scale, int32_t *zero_point)
{
    /* check_min_max_valid: an observer that saw nothing (or a reversed range) gives 1.0 and 0 */
    if ((min == INFINITY && max == -INFINITY) || !(min <= max)) {
        *scale = 1.0f;
        *zero_point = 0;
        return;
    }
    const float eps = FLT_EPSILON; /* torch.finfo(torch.float32).eps */
    float min_neg = min < 0.0f ? min : 0.0f;
    float max_pos = max > 0.0f ? max : 0.0f;
    if (symmetric) {
        float m = -min_neg > max_pos ? -min_neg : max_pos;
        float half = (float)((double)(qmax - qmin) / 2.0);
        float s = m / half;
        *scale = s > eps ? s : eps;
        *zero_point = sym_zero_point;
        return;
    }
    float s = (max_pos - min_neg) / (float)(qmax - qmin);
    s = s > eps ? s : eps;
    float r = nearbyintf(min_neg / s);
    int64_t zp = (int64_t)qmin - (int64_t)r; /* r is in [-(qmax - qmin) - 1, 0] here: no overflow */
    if (zp < qmin) zp = qmin;
    if (zp > qmax) zp = qmax;
    *scale = s;
    *zero_point = (int32_t)zp;
}

void lq_affine_qparams(float min, float max, int bits, bool symmetric, float *scale, int32_t *zero_point)
{
    int32_t qmin, qmax;
    lq_affine_range(bits, symmetric, &qmin, &qmax);
    lq_affine_qparams_q(min, max, qmin, qmax, symmetric, 0, scale, zero_point);
}
