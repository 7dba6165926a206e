/* quant/ggml_simd.c: AVX2 and AVX-512 dequantization of q4_0, q8_0, q4_K and q6_K, bit-identical to
 * the scalar path (the scales come from the shared helpers in kernels_ggml.h). */
#include "quant/kernels_ggml.h"
#include "quant/quant_impl.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LQ_GGML_X86 1
#include <immintrin.h>
#endif

#ifdef LQ_GGML_X86

/* Compiled for these targets whatever the build's -march, chosen at run time. "fma" is left out
 * on purpose: every product and difference must round on its own as in ggml, and -std=c11 keeps
 * gcc from contracting mul + sub into the FMA that AVX-512F brings. */
#define AVX2_FN __attribute__((target("avx2,f16c")))
#define AVX512_FN __attribute__((target("avx512f,avx2,f16c")))

/* --- AVX2 ---------------------------------------------------------------------------------------- */

/* 8 signed / unsigned bytes -> 8 floats (exact). */
AVX2_FN static inline __m256 i8x8_ps(__m128i q) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)); }
AVX2_FN static inline __m256 u8x8_ps(__m128i q) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q)); }

/* y[0..16) = bytes(q) * d for 16 signed bytes. */
AVX2_FN static inline void mul16_i8_avx2(__m128i q, __m256 d, float *y) {
    _mm256_storeu_ps(y, _mm256_mul_ps(i8x8_ps(q), d));
    _mm256_storeu_ps(y + 8, _mm256_mul_ps(i8x8_ps(_mm_srli_si128(q, 8)), d));
}

AVX2_FN static void q8_0_avx2(const lq_block_q8_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += LQ_GGML_QK) {
        const __m256 d = _mm256_set1_ps(lq_f16_to_f32(b[i].d));
        mul16_i8_avx2(_mm_loadu_si128((const __m128i *)b[i].qs), d, y);
        mul16_i8_avx2(_mm_loadu_si128((const __m128i *)(b[i].qs + 16)), d, y + 16);
    }
}

AVX2_FN static void q4_0_avx2(const lq_block_q4_0 *b, float *y, int64_t nb) {
    const __m128i m4 = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    for (int64_t i = 0; i < nb; i++, y += LQ_GGML_QK) {
        const __m256 d = _mm256_set1_ps(lq_f16_to_f32(b[i].d));
        const __m128i raw = _mm_loadu_si128((const __m128i *)b[i].qs);
        const __m128i lo = _mm_sub_epi8(_mm_and_si128(raw, m4), eight);
        const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), eight);
        mul16_i8_avx2(lo, d, y);
        mul16_i8_avx2(hi, d, y + 16);
    }
}

/* y[0..32) = f * bytes(q) - o for 32 unsigned bytes. */
AVX2_FN static inline void k_sub32_avx2(__m256i q, float f, float o, float *y) {
    const __m256 vf = _mm256_set1_ps(f), vo = _mm256_set1_ps(o);
    const __m128i h0 = _mm256_castsi256_si128(q), h1 = _mm256_extracti128_si256(q, 1);
    _mm256_storeu_ps(y, _mm256_sub_ps(_mm256_mul_ps(vf, u8x8_ps(h0)), vo));
    _mm256_storeu_ps(y + 8, _mm256_sub_ps(_mm256_mul_ps(vf, u8x8_ps(_mm_srli_si128(h0, 8))), vo));
    _mm256_storeu_ps(y + 16, _mm256_sub_ps(_mm256_mul_ps(vf, u8x8_ps(h1)), vo));
    _mm256_storeu_ps(y + 24, _mm256_sub_ps(_mm256_mul_ps(vf, u8x8_ps(_mm_srli_si128(h1, 8))), vo));
}

AVX2_FN static void q4_k_avx2(const lq_block_q4_k *b, float *y, int64_t nb) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int64_t i = 0; i < nb; i++, y += LQ_GGML_QK_K) {
        float f[8], o[8];
        for (int s = 0; s < 8; s++) lq_ggml_k_sub(b[i].d, b[i].dmin, b[i].scales, s, &f[s], &o[s]);
        for (int c = 0; c < 4; c++) {
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(b[i].qs + 32 * c));
            k_sub32_avx2(_mm256_and_si256(raw, m4), f[2 * c], o[2 * c], y + 64 * c);
            k_sub32_avx2(_mm256_and_si256(_mm256_srli_epi16(raw, 4), m4), f[2 * c + 1], o[2 * c + 1], y + 64 * c + 32);
        }
    }
}

/* The four groups of 32 codes (q - 32, as signed bytes) of q6_K half h. */
AVX2_FN static inline void q6_k_codes(const lq_block_q6_k *b, int h, __m256i q[4]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3), off = _mm256_set1_epi8(32);
    const __m256i l0 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h));
    const __m256i l1 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h + 32));
    const __m256i hb = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
    /* 16-bit shifts are safe: every byte is masked right after, and (x & 3) << 4 stays in its byte */
    const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(hb, m2), 4);
    const __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m2), 4);
    const __m256i h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m2), 4);
    const __m256i h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m2), 4);
    q[0] = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(l0, m4), h0), off);
    q[1] = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(l1, m4), h1), off);
    q[2] = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), h2), off);
    q[3] = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), h3), off);
}

AVX2_FN static void q6_k_avx2(const lq_block_q6_k *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += LQ_GGML_QK_K) {
        float f[16];
        for (int s = 0; s < 16; s++) f[s] = lq_ggml_q6_k_factor(&b[i], s);
        for (int h = 0; h < 2; h++) {
            __m256i q[4];
            q6_k_codes(&b[i], h, q);
            for (int g = 0; g < 4; g++) { /* elements 128h + 32g + [0, 32): sub-blocks 8h + 2g, +1 */
                float *yg = y + 128 * h + 32 * g;
                const int s = 8 * h + 2 * g;
                mul16_i8_avx2(_mm256_castsi256_si128(q[g]), _mm256_set1_ps(f[s]), yg);
                mul16_i8_avx2(_mm256_extracti128_si256(q[g], 1), _mm256_set1_ps(f[s + 1]), yg + 16);
            }
        }
    }
}

/* --- AVX-512F (byte work in AVX2, 16 floats per conversion) -------------------------------------- */

AVX512_FN static inline void mul16_i8_avx512(__m128i q, __m512 d, float *y) {
    _mm512_storeu_ps(y, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), d));
}

AVX512_FN static inline void k_sub16_avx512(__m128i q, __m512 f, __m512 o, float *y) {
    _mm512_storeu_ps(y, _mm512_sub_ps(_mm512_mul_ps(f, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q))), o));
}

AVX512_FN static void q8_0_avx512(const lq_block_q8_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += LQ_GGML_QK) {
        const __m512 d = _mm512_set1_ps(lq_f16_to_f32(b[i].d));
        mul16_i8_avx512(_mm_loadu_si128((const __m128i *)b[i].qs), d, y);
        mul16_i8_avx512(_mm_loadu_si128((const __m128i *)(b[i].qs + 16)), d, y + 16);
    }
}

AVX512_FN static void q4_0_avx512(const lq_block_q4_0 *b, float *y, int64_t nb) {
    const __m128i m4 = _mm_set1_epi8(0x0F), eight = _mm_set1_epi8(8);
    for (int64_t i = 0; i < nb; i++, y += LQ_GGML_QK) {
        const __m512 d = _mm512_set1_ps(lq_f16_to_f32(b[i].d));
        const __m128i raw = _mm_loadu_si128((const __m128i *)b[i].qs);
        mul16_i8_avx512(_mm_sub_epi8(_mm_and_si128(raw, m4), eight), d, y);
        mul16_i8_avx512(_mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), eight), d, y + 16);
    }
}

AVX512_FN static void q4_k_avx512(const lq_block_q4_k *b, float *y, int64_t nb) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    for (int64_t i = 0; i < nb; i++, y += LQ_GGML_QK_K) {
        float f[8], o[8];
        for (int s = 0; s < 8; s++) lq_ggml_k_sub(b[i].d, b[i].dmin, b[i].scales, s, &f[s], &o[s]);
        for (int c = 0; c < 4; c++) {
            const __m256i raw = _mm256_loadu_si256((const __m256i *)(b[i].qs + 32 * c));
            const __m256i lo = _mm256_and_si256(raw, m4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            const __m512 f0 = _mm512_set1_ps(f[2 * c]), o0 = _mm512_set1_ps(o[2 * c]);
            const __m512 f1 = _mm512_set1_ps(f[2 * c + 1]), o1 = _mm512_set1_ps(o[2 * c + 1]);
            float *yc = y + 64 * c;
            k_sub16_avx512(_mm256_castsi256_si128(lo), f0, o0, yc);
            k_sub16_avx512(_mm256_extracti128_si256(lo, 1), f0, o0, yc + 16);
            k_sub16_avx512(_mm256_castsi256_si128(hi), f1, o1, yc + 32);
            k_sub16_avx512(_mm256_extracti128_si256(hi, 1), f1, o1, yc + 48);
        }
    }
}

AVX512_FN static void q6_k_avx512(const lq_block_q6_k *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += LQ_GGML_QK_K) {
        float f[16];
        for (int s = 0; s < 16; s++) f[s] = lq_ggml_q6_k_factor(&b[i], s);
        for (int h = 0; h < 2; h++) {
            __m256i q[4];
            q6_k_codes(&b[i], h, q);
            for (int g = 0; g < 4; g++) {
                float *yg = y + 128 * h + 32 * g;
                const int s = 8 * h + 2 * g;
                mul16_i8_avx512(_mm256_castsi256_si128(q[g]), _mm512_set1_ps(f[s]), yg);
                mul16_i8_avx512(_mm256_extracti128_si256(q[g], 1), _mm512_set1_ps(f[s + 1]), yg + 16);
            }
        }
    }
}

static bool has_vector_kernel(lq_dtype t) {
    return t == LQ_DTYPE_Q4_0 || t == LQ_DTYPE_Q8_0 || t == LQ_DTYPE_Q4_K || t == LQ_DTYPE_Q6_K;
}

bool lq_ggml_dequant_simd(lq_dtype t, const void *src, float *dst, int64_t nb, lq_ggml_path path) {
    if (!has_vector_kernel(t)) return false;
    const lq_cpu_features cpu = lq_cpu_detect();
    const bool avx2 = cpu.avx2, avx512 = cpu.avx512f && cpu.avx2;
    if (path == LQ_GGML_PATH_AUTO) path = avx512 ? LQ_GGML_PATH_AVX512 : LQ_GGML_PATH_AVX2;
    if (path == LQ_GGML_PATH_AVX2 && !avx2) return false;
    if (path == LQ_GGML_PATH_AVX512 && !avx512) return false;
    if (path != LQ_GGML_PATH_AVX2 && path != LQ_GGML_PATH_AVX512) return false;
    if (nb <= 0) return true;
    const bool wide = path == LQ_GGML_PATH_AVX512;
    switch (t) {
    case LQ_DTYPE_Q4_0: wide ? q4_0_avx512(src, dst, nb) : q4_0_avx2(src, dst, nb); break;
    case LQ_DTYPE_Q8_0: wide ? q8_0_avx512(src, dst, nb) : q8_0_avx2(src, dst, nb); break;
    case LQ_DTYPE_Q4_K: wide ? q4_k_avx512(src, dst, nb) : q4_k_avx2(src, dst, nb); break;
    case LQ_DTYPE_Q6_K: wide ? q6_k_avx512(src, dst, nb) : q6_k_avx2(src, dst, nb); break;
    default: return false;
    }
    return true;
}

#else /* no x86 vector path in this build */

bool lq_ggml_dequant_simd(lq_dtype t, const void *src, float *dst, int64_t nb, lq_ggml_path path) {
    (void)t, (void)src, (void)dst, (void)nb, (void)path;
    return false;
}

#endif
