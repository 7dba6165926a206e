/* quant/kernels_affine.h: shared per-element logic of the integer affine formats and of fake
 * quantization (see quant/kernels.h): quantize, dequantize, fake-quantize, the LSQ gradients. */
#ifndef LQ_QUANT_KERNELS_AFFINE_H
#define LQ_QUANT_KERNELS_AFFINE_H

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define LQ_HD __host__ __device__
#else
#define LQ_HD
#endif

/* The arithmetic follows ATen's CPU kernels for torch.fake_quantize_per_tensor_affine and
 * fake_quantize_per_channel_affine (integer zero point), in float32, step for step:
 *   inv = 1.0f / scale                      (a float division, once per scale)
 *   qf  = (float)zp + nearbyint(x * inv)    (round half to even, THEN add the zero point)
 *   q   = clamp(qf, qmin, qmax)             (fmin / fmax, so +-Inf clamps)
 *   y   = (float)(q - zp) * scale           (an integer times the scale: exact then rounded once)
 *   in_range = qmin <= qf <= qmax           (the STE mask, on the rounded, unclamped value)
 * Adding zp after rounding matters: nearbyint(zp + v) differs from zp + nearbyint(v) when the
 * float sum zp + v rounds onto a tie (v = 0.50000006, zp = 128 gives 128.5). */

/* The unclamped code as a float (integral): zp + nearbyint(x * inv). */
LQ_HD static inline float lq_affine_code_f(float x, float inv, int32_t zp) {
    return (float)zp + nearbyintf(x * inv);
}

LQ_HD static inline float lq_affine_clamp_f(float qf, int32_t qmin, int32_t qmax) {
    return fminf(fmaxf(qf, (float)qmin), (float)qmax);
}

/* The clamped integer code of x. */
LQ_HD static inline int32_t lq_affine_quantize_one(float x, float inv, int32_t zp, int32_t qmin, int32_t qmax) {
    return (int32_t)lq_affine_clamp_f(lq_affine_code_f(x, inv, zp), qmin, qmax);
}

LQ_HD static inline float lq_affine_dequantize_one(int32_t code, float scale, int32_t zp) {
    return (float)(code - zp) * scale;
}

/* The stored formats (I8 / I4) keep the zero point as a float in code units: the same value as
 * lq_affine_dequantize_one for an integer zero point, and defined for any other. */
LQ_HD static inline float lq_affine_dequantize_zf(int32_t code, float scale, float zero) {
    return ((float)code - zero) * scale;
}

/* Quantize-dequantize one value; *in_range gets the STE mask (1 inside the code range). */
LQ_HD static inline float lq_affine_fake_one(float x, float scale, float inv, int32_t zp, int32_t qmin, int32_t qmax,
                                             uint8_t *in_range) {
    float qf = lq_affine_code_f(x, inv, zp);
    *in_range = (uint8_t)((float)qmin <= qf && qf <= (float)qmax);
    int32_t q = (int32_t)lq_affine_clamp_f(qf, qmin, qmax);
    return lq_affine_dequantize_one(q, scale, zp);
}

/* --- learned step size (LSQ): the per-element gradients of torch's
 * _fake_quantize_learnable_per_{tensor,channel}_affine backward, in its float32 order.
 * zp here is the zero point as the backward sees it (a float holding an integer): per tensor
 * torch takes (int)clamp(zp + 0.5f, qmin, qmax) (truncation, which is not the forward's
 * nearbyint), per channel clamp(round_half_even(zp), qmin, qmax), as the forward.
 *   qi = (int64)nearbyint(fma(x, inv, zp))  (the zero point is added BEFORE rounding here)
 *   dx = dy where qmin <= qi <= qmax, else 0
 *   in range:   ds = dy * fma(clamp(qi) - zp, scale, -x) * inv * g,  dz = 0
 *   below:      ds = dy * (qmin - zp) * g,                          dz = dy * -1 * scale * g
 *   above:      ds = dy * (qmax - zp) * g,                          dz = dy * -1 * scale * g
 * (each product taken left to right in float, as the kernel writes them). The two fused
 * multiply-adds are what PyTorch's CPU build computes: its source writes zp + x * inv and
 * (q - zp) * scale - x, but its vectorized kernels are compiled with FMA enabled and GCC's default
 * -ffp-contract=fast, which fuses both. The fixtures caught it: x = -12.85f, scale 0.1f, zp 128
 * gives x * inv = -128.5 exactly after rounding, so unfused zp + x * inv = -0.5 rounds to code 0
 * (in range), but the fused value is -0.5000038 and PyTorch masks the element.
 * One deliberate difference: where |zp + x * inv| >= 2^63 PyTorch's float-to-int64 conversion
 * overflows (undefined behaviour; x86 yields INT64_MIN, so +huge counts as below qmin and its
 * scale gradient uses qmin - zp); here +huge counts as above qmax. */
LQ_HD static inline void lq_lsq_grad_one(float x, float dy, float scale, float inv, float zp, int32_t qmin, int32_t qmax,
                                         float g, float *dx, float *ds, float *dz) {
    float v = nearbyintf(fmaf(x, inv, zp));
    /* v is integral; compare in float so that huge values cannot overflow a conversion */
    if (v < (float)qmin || v > (float)qmax) {
        *dx = 0.0f;
        *dz = dy * -1.0f * scale * g;
        float lim = (v < (float)qmin) ? ((float)qmin - zp) : ((float)qmax - zp);
        *ds = dy * lim * g;
    } else {
        *dx = dy;
        *ds = dy * fmaf((float)(int32_t)v - zp, scale, -x) * inv * g;
        *dz = 0.0f;
    }
}

/* --- integer codes in bytes ------------------------------------------------------------------- */

/* A signed 4-bit code from a nibble (two's complement). */
LQ_HD static inline int32_t lq_i4_nibble(uint8_t byte, int high) {
    int32_t v = high ? (byte >> 4) : (byte & 0x0F);
    return v >= 8 ? v - 16 : v;
}

/* Two signed 4-bit codes in one byte: element 2j (lo) in the low nibble. */
LQ_HD static inline uint8_t lq_i4_pack(int32_t lo, int32_t hi) {
    return (uint8_t)(((uint32_t)lo & 0x0Fu) | (((uint32_t)hi & 0x0Fu) << 4));
}

#endif
