/* quant/intgemm.c: the integer product of a converted QAT layer: int16 centred codes, int32
 * accumulation per weight group, one float rescale per group (lq_int_linear). */
#include "quant/quant.h"

/* Rows of y at a time that share a pass over one weight row (x rows stay in cache). */
#define INT_ROW_TILE 8

/* One group's dot product: exact in int32. The int16 x int16 -> int32 multiply-add is the shape
 * compilers turn into pmaddwd / vpmaddwd. */
static inline int32_t dot_i16(const int16_t *a, const int16_t *b, int64_t n) {
    int32_t acc = 0;
    for (int64_t i = 0; i < n; i++) acc += (int32_t)a[i] * (int32_t)b[i];
    return acc;
}

/* Built for AVX-512BW, AVX2 and the baseline, chosen at load time by the CPU (GCC's function
 * multiversioning): the int16 multiply-add doubles or quadruples its width on newer CPUs. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("arch=skylake-avx512", "avx2", "default")))
#endif
void lq_int_linear(int64_t M, int64_t N, int64_t K, int64_t group, const int16_t *xd, const float *x_scale,
                   const int16_t *wd, const float *w_scale, const float *bias, float *y, int n_threads) {
    if (M <= 0 || N <= 0 || K <= 0) return;
    if (group <= 0 || group > K) group = K;
    int64_t G = K / group;
    int64_t n_tiles = (M + INT_ROW_TILE - 1) / INT_ROW_TILE;
    int nt = n_threads > 1 ? n_threads : 1;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (M * N * K > 65536)
    for (int64_t t = 0; t < n_tiles; t++) {
        int64_t m0 = t * INT_ROW_TILE, m1 = m0 + INT_ROW_TILE < M ? m0 + INT_ROW_TILE : M;
        for (int64_t n = 0; n < N; n++) {
            const int16_t *w = wd + n * K;
            const float *ws = w_scale + n * G;
            float b = bias ? bias[n] : 0.0f;
            for (int64_t m = m0; m < m1; m++) {
                const int16_t *x = xd + m * K;
                float acc = 0.0f;
                for (int64_t g = 0; g < G; g++)
                    acc += ws[g] * (float)dot_i16(x + g * group, w + g * group, group);
                y[m * N + n] = b + x_scale[m] * acc;
            }
        }
    }
}
