/* quant/kernels_ggml.h: shared per-block dequant logic of the ggml formats (see quant/kernels.h). */
#ifndef LQ_QUANT_KERNELS_GGML_H
#define LQ_QUANT_KERNELS_GGML_H

/* The block layouts are ggml's (ggml-common.h), as they lie in a GGUF file: little-endian, f16
 * fields as raw IEEE binary16 bits. This header is plain C that nvcc also compiles as C++ (no
 * compound literals, no designated initializers), so the CUDA kernels call the same functions.
 *
 * Arithmetic. Each value is ggml's expression rounded once to float32. An f16 scale has 11
 * significant bits; a code adds at most 8 (q8_0), a K-quant sub-scale and code 6 + 5, so those
 * products stay within float32's 24 bits and are exact: only the final multiply, add or subtract
 * rounds (q6_K's (d * sc) * q rounds once, in its last product). A fused multiply-add would give
 * the same bits; lq_ggml_mul_add / lq_ggml_mul_sub still spell out ggml's unfused form
 * (__fmul_rn / __fadd_rn on the device, where nvcc would fuse). Pointers to blocks must be 2-byte
 * aligned (the f16 fields); quant/ggml.c copies misaligned blocks before calling in here. */

#include <stdint.h>

#include "quant/half.h"

#if defined(__CUDACC__)
#define LQ_HD __host__ __device__
#else
#define LQ_HD
#endif

#if defined(__cplusplus)
#define LQ_GGML_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define LQ_GGML_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

#define LQ_GGML_QK 32    /* elements per block of the legacy formats (q4_0 .. q8_0) */
#define LQ_GGML_QK_K 256 /* elements per super-block of the K-quants */
#define LQ_GGML_K_SCALE_SIZE 12

/* q4_0: x = (q - 8) * d. Element j < 16 in the low nibble of qs[j], element j + 16 in the high. */
typedef struct lq_block_q4_0 {
    uint16_t d;
    uint8_t qs[LQ_GGML_QK / 2];
} lq_block_q4_0;

/* q4_1: x = q * d + m, nibbles as q4_0. */
typedef struct lq_block_q4_1 {
    uint16_t d, m;
    uint8_t qs[LQ_GGML_QK / 2];
} lq_block_q4_1;

/* q5_0: x = (q - 16) * d; low 4 bits as q4_0, bit 4 of element j is bit j of the
 * little-endian 32-bit word qh. */
typedef struct lq_block_q5_0 {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[LQ_GGML_QK / 2];
} lq_block_q5_0;

/* q5_1: x = q * d + m, bits as q5_0. */
typedef struct lq_block_q5_1 {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[LQ_GGML_QK / 2];
} lq_block_q5_1;

/* q8_0: x = q * d. */
typedef struct lq_block_q8_0 {
    uint16_t d;
    int8_t qs[LQ_GGML_QK];
} lq_block_q8_0;

/* q4_K: 8 sub-blocks of 32; sub-block s has a 6-bit scale and a 6-bit min packed in scales[12];
 * x = (d * sc_s) * q - (dmin * m_s). Chunk c of 64 elements: qs[32c + l] holds element
 * 64c + l in its low nibble and element 64c + 32 + l in its high nibble. */
typedef struct lq_block_q4_k {
    uint16_t d, dmin;
    uint8_t scales[LQ_GGML_K_SCALE_SIZE];
    uint8_t qs[LQ_GGML_QK_K / 2];
} lq_block_q4_k;

/* q5_K: q4_K plus a fifth bit: bit s of qh[l] is bit 4 of element 32s + l. */
typedef struct lq_block_q5_k {
    uint16_t d, dmin;
    uint8_t scales[LQ_GGML_K_SCALE_SIZE];
    uint8_t qh[LQ_GGML_QK_K / 8];
    uint8_t qs[LQ_GGML_QK_K / 2];
} lq_block_q5_k;

/* q6_K: 16 sub-blocks of 16 with an int8 scale each; x = (d * scales[i / 16]) * (q - 32).
 * Half h (128 elements) uses ql[64h ..], qh[32h ..]: element 128h + 32g + l (g 0..3, l 0..31)
 * takes 4 bits from ql[64h + l + 32(g & 1)] (low nibble for g < 2, high for g >= 2) and 2 bits
 * from qh[32h + l] at bit 2g. */
typedef struct lq_block_q6_k {
    uint8_t ql[LQ_GGML_QK_K / 2];
    uint8_t qh[LQ_GGML_QK_K / 4];
    int8_t scales[LQ_GGML_QK_K / 16];
    uint16_t d;
} lq_block_q6_k;

LQ_GGML_STATIC_ASSERT(sizeof(lq_block_q4_0) == 18, "q4_0 block is 18 bytes");
LQ_GGML_STATIC_ASSERT(sizeof(lq_block_q4_1) == 20, "q4_1 block is 20 bytes");
LQ_GGML_STATIC_ASSERT(sizeof(lq_block_q5_0) == 22, "q5_0 block is 22 bytes");
LQ_GGML_STATIC_ASSERT(sizeof(lq_block_q5_1) == 24, "q5_1 block is 24 bytes");
LQ_GGML_STATIC_ASSERT(sizeof(lq_block_q8_0) == 34, "q8_0 block is 34 bytes");
LQ_GGML_STATIC_ASSERT(sizeof(lq_block_q4_k) == 144, "q4_K block is 144 bytes");
LQ_GGML_STATIC_ASSERT(sizeof(lq_block_q5_k) == 176, "q5_K block is 176 bytes");
LQ_GGML_STATIC_ASSERT(sizeof(lq_block_q6_k) == 210, "q6_K block is 210 bytes");

/* --- arithmetic -------------------------------------------------------------------------------- */

/* a * b + c and a * b - c with the product rounded first (never fused; see the top). */
static inline LQ_HD float lq_ggml_mul_add(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
    return __fadd_rn(__fmul_rn(a, b), c);
#else
    const float p = a * b;
    return p + c;
#endif
}

static inline LQ_HD float lq_ggml_mul_sub(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
    return __fsub_rn(__fmul_rn(a, b), c);
#else
    const float p = a * b;
    return p - c;
#endif
}

/* --- codes: the integer each element stands for (element index i inside its block) ------------- */

static inline LQ_HD int lq_ggml_nibble(const uint8_t *qs, int i) { /* legacy 32-blocks */
    return i < LQ_GGML_QK / 2 ? (qs[i] & 0x0F) : (qs[i - LQ_GGML_QK / 2] >> 4);
}

static inline LQ_HD uint32_t lq_ggml_qh32(const uint8_t *qh) {
    return (uint32_t)qh[0] | ((uint32_t)qh[1] << 8) | ((uint32_t)qh[2] << 16) | ((uint32_t)qh[3] << 24);
}

static inline LQ_HD int lq_ggml_q4_0_code(const lq_block_q4_0 *b, int i) { return lq_ggml_nibble(b->qs, i) - 8; }
static inline LQ_HD int lq_ggml_q4_1_code(const lq_block_q4_1 *b, int i) { return lq_ggml_nibble(b->qs, i); }
static inline LQ_HD int lq_ggml_q5_0_code(const lq_block_q5_0 *b, int i) {
    return (lq_ggml_nibble(b->qs, i) | (int)(((lq_ggml_qh32(b->qh) >> i) & 1u) << 4)) - 16;
}
static inline LQ_HD int lq_ggml_q5_1_code(const lq_block_q5_1 *b, int i) {
    return lq_ggml_nibble(b->qs, i) | (int)(((lq_ggml_qh32(b->qh) >> i) & 1u) << 4);
}
static inline LQ_HD int lq_ggml_q8_0_code(const lq_block_q8_0 *b, int i) { return b->qs[i]; }

/* q4_K / q5_K low 4 bits of element i (0..255). */
static inline LQ_HD int lq_ggml_k_nibble(const uint8_t *qs, int i) {
    const int c = i >> 6, r = i & 63;
    return (qs[32 * c + (r & 31)] >> (r & 32 ? 4 : 0)) & 0x0F;
}
static inline LQ_HD int lq_ggml_q4_k_code(const lq_block_q4_k *b, int i) { return lq_ggml_k_nibble(b->qs, i); }
static inline LQ_HD int lq_ggml_q5_k_code(const lq_block_q5_k *b, int i) {
    return lq_ggml_k_nibble(b->qs, i) | (((b->qh[i & 31] >> (i >> 5)) & 1) << 4);
}
static inline LQ_HD int lq_ggml_q6_k_code(const lq_block_q6_k *b, int i) {
    const int h = i >> 7, g = (i >> 5) & 3, l = i & 31;
    const int lo = (b->ql[64 * h + l + 32 * (g & 1)] >> (g >= 2 ? 4 : 0)) & 0x0F;
    const int hi = (b->qh[32 * h + l] >> (2 * g)) & 3;
    return (lo | (hi << 4)) - 32;
}

/* --- scales ------------------------------------------------------------------------------------ */

/* The 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes of q4_K / q5_K:
 * j < 4: low 6 bits of bytes j and j + 4; j >= 4: a nibble of byte j + 4 and the top two bits
 * of bytes j - 4 (scale) and j (min). */
static inline LQ_HD void lq_ggml_k_scale_min(int j, const uint8_t *s, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Factor and offset of q4_K / q5_K sub-block j: element = factor * q - offset. */
static inline LQ_HD void lq_ggml_k_sub(uint16_t d, uint16_t dmin, const uint8_t *scales, int j, float *factor,
                                       float *offset) {
    int sc, m;
    lq_ggml_k_scale_min(j, scales, &sc, &m);
    *factor = lq_f16_to_f32(d) * (float)sc;
    *offset = lq_f16_to_f32(dmin) * (float)m;
}

/* Factor of q6_K sub-block j (0..15): element = factor * code. */
static inline LQ_HD float lq_ggml_q6_k_factor(const lq_block_q6_k *b, int j) {
    return lq_f16_to_f32(b->d) * (float)b->scales[j];
}

/* --- whole blocks, as ggml's dequantize_row_* ---------------------------------------------------- */

static inline LQ_HD void lq_ggml_dequant_q4_0(const lq_block_q4_0 *b, float *y) {
    const float d = lq_f16_to_f32(b->d);
    for (int i = 0; i < LQ_GGML_QK; i++) y[i] = (float)lq_ggml_q4_0_code(b, i) * d;
}

static inline LQ_HD void lq_ggml_dequant_q4_1(const lq_block_q4_1 *b, float *y) {
    const float d = lq_f16_to_f32(b->d), m = lq_f16_to_f32(b->m);
    for (int i = 0; i < LQ_GGML_QK; i++) y[i] = lq_ggml_mul_add((float)lq_ggml_q4_1_code(b, i), d, m);
}

static inline LQ_HD void lq_ggml_dequant_q5_0(const lq_block_q5_0 *b, float *y) {
    const float d = lq_f16_to_f32(b->d);
    for (int i = 0; i < LQ_GGML_QK; i++) y[i] = (float)lq_ggml_q5_0_code(b, i) * d;
}

static inline LQ_HD void lq_ggml_dequant_q5_1(const lq_block_q5_1 *b, float *y) {
    const float d = lq_f16_to_f32(b->d), m = lq_f16_to_f32(b->m);
    for (int i = 0; i < LQ_GGML_QK; i++) y[i] = lq_ggml_mul_add((float)lq_ggml_q5_1_code(b, i), d, m);
}

static inline LQ_HD void lq_ggml_dequant_q8_0(const lq_block_q8_0 *b, float *y) {
    const float d = lq_f16_to_f32(b->d);
    for (int i = 0; i < LQ_GGML_QK; i++) y[i] = (float)lq_ggml_q8_0_code(b, i) * d;
}

static inline LQ_HD void lq_ggml_dequant_q4_k(const lq_block_q4_k *b, float *y) {
    for (int s = 0; s < LQ_GGML_QK_K / 32; s++) {
        float f, o;
        lq_ggml_k_sub(b->d, b->dmin, b->scales, s, &f, &o);
        for (int l = 0; l < 32; l++) y[32 * s + l] = lq_ggml_mul_sub(f, (float)lq_ggml_q4_k_code(b, 32 * s + l), o);
    }
}

static inline LQ_HD void lq_ggml_dequant_q5_k(const lq_block_q5_k *b, float *y) {
    for (int s = 0; s < LQ_GGML_QK_K / 32; s++) {
        float f, o;
        lq_ggml_k_sub(b->d, b->dmin, b->scales, s, &f, &o);
        for (int l = 0; l < 32; l++) y[32 * s + l] = lq_ggml_mul_sub(f, (float)lq_ggml_q5_k_code(b, 32 * s + l), o);
    }
}

static inline LQ_HD void lq_ggml_dequant_q6_k(const lq_block_q6_k *b, float *y) {
    for (int s = 0; s < LQ_GGML_QK_K / 16; s++) {
        const float f = lq_ggml_q6_k_factor(b, s);
        for (int l = 0; l < 16; l++) y[16 * s + l] = f * (float)lq_ggml_q6_k_code(b, 16 * s + l);
    }
}

#endif
