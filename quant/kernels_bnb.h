/* quant/kernels_bnb.h: shared per-block dequant logic of the bnb formats (see quant/kernels.h). */
#ifndef LQ_QUANT_KERNELS_BNB_H
#define LQ_QUANT_KERNELS_BNB_H

#include <stdint.h>

#if defined(__CUDACC__)
#define LQ_HD __host__ __device__
#else
#define LQ_HD
#endif

/* The layout: two 4-bit codes per byte, element 2j in the HIGH nibble and 2j + 1 in the low one
 * (an odd tensor's last low nibble is padding). Element e of the tensor belongs to block e / B and
 * is worth code[q] * absmax[e / B], one float32 multiply. With double quantization the block's
 * absmax is first rebuilt as code2[absmax_q[i]] * absmax2[i / block2] + offset, a float32 multiply
 * and a float32 add, each rounded (never fused: bitsandbytes rounds both).
 *
 * The code tables, index = code, are plain initializers so each user can place them where it
 * wants them (host: a static const array; CUDA: __constant__ float t[16] = LQ_NF4_CODE_INIT;).
 * Values as bitsandbytes' get_4bit_type has them in float32: NF4 = quantiles of N(0, 1) scaled
 * to [-1, 1]; FP4 = E2M1 bit patterns {0, 0.0625, 8, 12, 4, 6, 2, 3} / 12, codes 8..15 negated,
 * where code 8 is +0.0 (bnb writes the integer -0). */
#define LQ_NF4_CODE_INIT                                                           \
    {                                                                              \
        -0x1p+0f, -0x1.647362p-1f, -0x1.0cd66p-1f, -0x1.94654p-2f,                 \
        -0x1.23449ap-2f, -0x1.7a6a7ep-3f, -0x1.74f0e2p-4f, 0x0p+0f,                \
        0x1.45f5fep-4f, 0x1.4995c6p-3f, 0x1.f809bap-3f, 0x1.5a0674p-2f,            \
        0x1.c3497p-2f, 0x1.200f56p-1f, 0x1.722766p-1f, 0x1p+0f                     \
    }
#define LQ_FP4_CODE_INIT                                                           \
    {                                                                              \
        0x0p+0f, 0x1.555556p-8f, 0x1.555556p-1f, 0x1p+0f,                          \
        0x1.555556p-2f, 0x1p-1f, 0x1.555556p-3f, 0x1p-2f,                          \
        0x0p+0f, -0x1.555556p-8f, -0x1.555556p-1f, -0x1p+0f,                       \
        -0x1.555556p-2f, -0x1p-1f, -0x1.555556p-3f, -0x1p-2f                       \
    }

/* Separately rounded float32 multiply and add: nvcc would otherwise fuse a * b + c into an FMA,
 * and so would GCC in GNU C mode (-std=gnu*) on an FMA target. LQ_BNB_ROUNDED(v) keeps a product
 * in a register the optimizer cannot see through (an empty asm), so it is rounded before use. */
#if defined(__CUDA_ARCH__)
#define LQ_BNB_MUL(a, b) __fmul_rn((a), (b))
#define LQ_BNB_ADD(a, b) __fadd_rn((a), (b))
#define LQ_BNB_ROUNDED(v) ((void)0)
#else
#define LQ_BNB_MUL(a, b) ((a) * (b))
#define LQ_BNB_ADD(a, b) ((a) + (b))
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define LQ_BNB_ROUNDED(v) __asm__("" : "+x"(v))
#elif defined(__GNUC__) && defined(__aarch64__)
#define LQ_BNB_ROUNDED(v) __asm__("" : "+w"(v))
#else
#define LQ_BNB_ROUNDED(v) ((void)0)
#endif
#endif

#if defined(__cplusplus)
static_assert(sizeof(float) == 4, "bnb formats need IEEE binary32 floats");
#else
_Static_assert(sizeof(float) == 4, "bnb formats need IEEE binary32 floats");
#endif

/* The scale of block i: absmax[i] when it is stored as floats (absmax != NULL), else its double
 * quantization undone. */
/* The double-quantized absmax from its parts: nested code q, its nested block's scale s2. */
LQ_HD static inline float lq_bnb4_nested_absmax(const float *code2, uint8_t q, float s2, float offset) {
    float scaled = LQ_BNB_MUL(code2[q], s2);
    LQ_BNB_ROUNDED(scaled);
    return LQ_BNB_ADD(scaled, offset);
}

LQ_HD static inline float lq_bnb4_block_absmax(const float *absmax, const uint8_t *absmax_q, const float *absmax2,
                                               const float *code2, int64_t block2, float offset, int64_t i) {
    if (absmax) return absmax[i];
    return lq_bnb4_nested_absmax(code2, absmax_q[i], absmax2[i / block2], offset);
}

/* The two elements of one packed byte. */
LQ_HD static inline void lq_bnb4_dequant_byte(const float *code, uint8_t b, float absmax, float *out) {
    out[0] = LQ_BNB_MUL(code[b >> 4], absmax);
    out[1] = LQ_BNB_MUL(code[b & 15], absmax);
}

/* n elements sharing one absmax, starting at an even element whose byte is src[0] (n odd only at
 * the tensor's end). */
LQ_HD static inline void lq_bnb4_dequant_block(const float *code, const uint8_t *src, int64_t n, float absmax,
                                               float *y) {
    int64_t j = 0;
    for (; j + 1 < n; j += 2) lq_bnb4_dequant_byte(code, src[j >> 1], absmax, y + j);
    if (j < n) y[j] = LQ_BNB_MUL(code[src[j >> 1] >> 4], absmax);
}

#endif
