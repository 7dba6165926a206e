/* quant/bnb4_simd.c: NF4 / FP4 block dequantization with AVX2 and AVX-512 (chosen at run time). */
#include <string.h>

#include "quant/kernels_bnb.h"
#include "quant/quant_impl.h"

/* Each kernel does what lq_bnb4_dequant_block does, 16 elements at a time: the nibbles of 8 bytes
 * interleaved high-then-low into 16 code indices, a table look-up, one float32 multiply by the
 * block's absmax (vmulps rounds like the scalar multiply, so the results are bit-identical); the
 * tail goes through the scalar kernel. Compiled with target attributes so the file builds without
 * -mavx2; callers check the CPU (lq_cpu_detect) first. */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

bool lq_bnb4_simd_built(void) { return true; }

/* 16 code indices, in element order, from 8 packed bytes. */
__attribute__((target("avx2,fma"))) static inline __m128i unpack16(const uint8_t *src) {
    uint64_t w;
    memcpy(&w, src, 8);
    const __m128i raw = _mm_cvtsi64_si128((long long)w);
    const __m128i m4 = _mm_set1_epi8(0x0f);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
    const __m128i lo = _mm_and_si128(raw, m4);
    return _mm_unpacklo_epi8(hi, lo);
}

/* code[idx] for 8 indices 0..15: two 8-entry permutes, picked by bit 3 of the index. */
__attribute__((target("avx2,fma"))) static inline __m256 lookup16(__m256 t_lo, __m256 t_hi, __m256i idx) {
    const __m256 a = _mm256_permutevar8x32_ps(t_lo, idx);
    const __m256 b = _mm256_permutevar8x32_ps(t_hi, idx);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

/* `stream`: write with non-temporal stores (when y is aligned for them), for outputs far larger
 * than the caches that nobody reads back soon; the caller ends the call with lq_bnb4_simd_fence. */
__attribute__((target("avx2,fma"))) static inline void block_avx2(const float *code, const uint8_t *src, int64_t n,
                                                                  float absmax, float *y, bool stream) {
    const __m256 t_lo = _mm256_loadu_ps(code), t_hi = _mm256_loadu_ps(code + 8);
    const __m256 s = _mm256_set1_ps(absmax);
    stream = stream && ((uintptr_t)y & 31) == 0;
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        const __m128i q = unpack16(src + (j >> 1));
        const __m256i i0 = _mm256_cvtepu8_epi32(q), i1 = _mm256_cvtepu8_epi32(_mm_srli_si128(q, 8));
        const __m256 a = _mm256_mul_ps(lookup16(t_lo, t_hi, i0), s), b = _mm256_mul_ps(lookup16(t_lo, t_hi, i1), s);
        if (stream) {
            _mm256_stream_ps(y + j, a);
            _mm256_stream_ps(y + j + 8, b);
        } else {
            _mm256_storeu_ps(y + j, a);
            _mm256_storeu_ps(y + j + 8, b);
        }
    }
    lq_bnb4_dequant_block(code, src + (j >> 1), n - j, absmax, y + j);
}

__attribute__((target("avx512f"))) static inline void block_avx512(const float *code, const uint8_t *src, int64_t n,
                                                                   float absmax, float *y, bool stream) {
    const __m512 t = _mm512_loadu_ps(code);
    const __m512 s = _mm512_set1_ps(absmax);
    const __m128i m4 = _mm_set1_epi8(0x0f);
    stream = stream && ((uintptr_t)y & 63) == 0;
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) { /* 16 bytes -> 32 elements */
        const __m128i raw = _mm_loadu_si128((const __m128i *)(const void *)(src + (j >> 1)));
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
        const __m128i lo = _mm_and_si128(raw, m4);
        const __m512i i0 = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(hi, lo));
        const __m512i i1 = _mm512_cvtepu8_epi32(_mm_unpackhi_epi8(hi, lo));
        const __m512 a = _mm512_mul_ps(_mm512_permutexvar_ps(i0, t), s);
        const __m512 b = _mm512_mul_ps(_mm512_permutexvar_ps(i1, t), s);
        if (stream) {
            _mm512_stream_ps(y + j, a);
            _mm512_stream_ps(y + j + 16, b);
        } else {
            _mm512_storeu_ps(y + j, a);
            _mm512_storeu_ps(y + j + 16, b);
        }
    }
    lq_bnb4_dequant_block(code, src + (j >> 1), n - j, absmax, y + j);
}

__attribute__((target("avx2,fma"))) void lq_bnb4_dequant_block_avx2(const float *code, const uint8_t *src, int64_t n,
                                                                     float absmax, float *y) {
    block_avx2(code, src, n, absmax, y, false);
}
__attribute__((target("avx2,fma"))) void lq_bnb4_dequant_block_avx2_nt(const float *code, const uint8_t *src,
                                                                        int64_t n, float absmax, float *y) {
    block_avx2(code, src, n, absmax, y, true);
}
__attribute__((target("avx512f"))) void lq_bnb4_dequant_block_avx512(const float *code, const uint8_t *src,
                                                                      int64_t n, float absmax, float *y) {
    block_avx512(code, src, n, absmax, y, false);
}
__attribute__((target("avx512f"))) void lq_bnb4_dequant_block_avx512_nt(const float *code, const uint8_t *src,
                                                                         int64_t n, float absmax, float *y) {
    block_avx512(code, src, n, absmax, y, true);
}
void lq_bnb4_simd_fence(void) { _mm_sfence(); }

#else /* other targets: the scalar kernel under the same names */

bool lq_bnb4_simd_built(void) { return false; }

void lq_bnb4_dequant_block_avx2(const float *code, const uint8_t *src, int64_t n, float absmax, float *y) {
    lq_bnb4_dequant_block(code, src, n, absmax, y);
}
void lq_bnb4_dequant_block_avx512(const float *code, const uint8_t *src, int64_t n, float absmax, float *y) {
    lq_bnb4_dequant_block(code, src, n, absmax, y);
}
void lq_bnb4_dequant_block_avx2_nt(const float *code, const uint8_t *src, int64_t n, float absmax, float *y) {
    lq_bnb4_dequant_block(code, src, n, absmax, y);
}
void lq_bnb4_dequant_block_avx512_nt(const float *code, const uint8_t *src, int64_t n, float absmax, float *y) {
    lq_bnb4_dequant_block(code, src, n, absmax, y);
}
void lq_bnb4_simd_fence(void) {}

#endif
