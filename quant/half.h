/* quant/half.h: float16 and bfloat16 <-> float32 conversions (round to nearest even), host and device. */
#ifndef LQ_QUANT_HALF_H
#define LQ_QUANT_HALF_H

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define LQ_HD __host__ __device__
#else
#define LQ_HD
#endif

static inline LQ_HD uint32_t lq_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline LQ_HD float lq_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* IEEE binary16 -> binary32, exact (subnormals, inf and NaN kept). */
static inline LQ_HD float lq_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) return lq_bits_f32(sign | 0x7f800000u | (man << 13)); /* inf / nan */
    if (exp == 0) {
        if (man == 0) return lq_bits_f32(sign);
        /* subnormal: man * 2^-24 */
        float v = (float)man * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    return lq_bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

/* binary32 -> binary16 with round to nearest, ties to even; overflow gives inf, NaN stays NaN. */
static inline LQ_HD uint16_t lq_f32_to_f16(float f) {
    uint32_t u = lq_f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u));
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: inf */
    if (a < 0x38800000u) {                                    /* below 2^-14: subnormal or zero */
        if (a < 0x33000000u) return sign;                     /* < 2^-25 rounds to zero */
        uint32_t e = a >> 23;
        uint32_t m = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e; /* value = m * 2^(e-150); want units of 2^-24 */
        uint32_t q = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u); /* round mantissa to 10 bits, ties to even */
    return (uint16_t)(sign | (((r - 0x38000000u) >> 13) & 0x7fffu));
}

static inline LQ_HD float lq_bf16_to_f32(uint16_t b) { return lq_bits_f32((uint32_t)b << 16); }

/* binary32 -> bfloat16, round to nearest even; NaN stays a quiet NaN. */
static inline LQ_HD uint16_t lq_f32_to_bf16(float f) {
    uint32_t u = lq_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#endif
