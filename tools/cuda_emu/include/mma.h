/* tools/cuda_emu/include/mma.h: nvcuda::wmma for the CPU emulator (found before CUDA's own mma.h).
 * A fragment is the whole matrix, held by every lane: loads and the multiply are computed
 * redundantly per lane (bf16 / half inputs, fp32 accumulation, k in increasing order); a store is
 * warp-collective: the warp meets, its lowest live lane writes, the warp meets again, so no lane's
 * later writes to the destination can be undone by another lane's late copy. Loads, multiplies and
 * stores warn when the warp has fewer than 32 live lanes (lq_emu_wmma_lanes). */
#ifndef LQ_CUDA_EMU_MMA_H
#define LQ_CUDA_EMU_MMA_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <type_traits>

#include "lq_cuda_emu.h" /* __ballot_sync, __syncwarp, lq_emu_lane (already force-included) */

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

/* WMMA's rules for a load or a store address (CUDA C++ Programming Guide, warp matrix functions):
 * the pointer 256-bit aligned, ldm a multiple of 16 bytes. The GPU gives garbage or a fault when
 * they are broken; here the call aborts with the offending values. */
static inline void lq_emu_wmma_check(const void *p, unsigned ldm, size_t elem, const char *what) {
    if ((uintptr_t)p % 32 != 0 || ((size_t)ldm * elem) % 16 != 0) {
        fprintf(stderr, "cuda emulator: wmma::%s at %p (%zu bytes past a 32-byte boundary) with ldm %u (%zu bytes): "
                "the pointer must be 32-byte aligned and ldm a multiple of 16 bytes\n",
                what, p, (size_t)((uintptr_t)p % 32), ldm, (size_t)ldm * elem);
        abort();
    }
}

static inline float lq_emu_f(float v) { return v; }
static inline float lq_emu_f(__nv_bfloat16 v) { return __bfloat162float(v); }
static inline float lq_emu_f(__half v) { return __half2float(v); }

/* Use x M x N x K, element type T; Layout only matters to a load of matrix_a / matrix_b. The
 * matrix is a (M x K), b (K x N), accumulator (M x N), kept row-major in x[]. */
template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
    static constexpr int rows = std::is_same<Use, matrix_b>::value ? K : M;
    static constexpr int cols = std::is_same<Use, matrix_a>::value ? K : N;
    static constexpr int num_elements = rows * cols;
    T x[num_elements];
};

template <typename Use, int M, int N, int K, typename T, typename L, typename V>
static inline void fill_fragment(fragment<Use, M, N, K, T, L> &f, const V &v) {
    for (int i = 0; i < f.num_elements; i++) f.x[i] = (T)v;
}

/* a / b with the layout in the type: element (r, c) is p[r * ldm + c] row-major, p[c * ldm + r]
 * column-major */
template <typename Use, int M, int N, int K, typename T, typename L>
static inline void load_matrix_sync(fragment<Use, M, N, K, T, L> &f, const T *p, unsigned ldm) {
    typedef fragment<Use, M, N, K, T, L> F;
    lq_emu_wmma_check(p, ldm, sizeof(T), "load_matrix_sync");
    lq_emu_wmma_lanes("load_matrix_sync", -1);
    const bool rm = std::is_same<L, row_major>::value;
    for (int r = 0; r < F::rows; r++)
        for (int c = 0; c < F::cols; c++) f.x[r * F::cols + c] = rm ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
}

template <int M, int N, int K, typename T>
static inline void load_matrix_sync(fragment<accumulator, M, N, K, T, void> &f, const T *p, unsigned ldm,
                                    layout_t l) {
    lq_emu_wmma_check(p, ldm, sizeof(T), "load_matrix_sync");
    lq_emu_wmma_lanes("load_matrix_sync", -1);
    for (int r = 0; r < M; r++)
        for (int c = 0; c < N; c++) f.x[r * N + c] = l == mem_row_major ? p[(size_t)r * ldm + c] : p[(size_t)c * ldm + r];
}

template <int M, int N, int K, typename T>
static inline void store_matrix_sync(T *p, const fragment<accumulator, M, N, K, T, void> &f, unsigned ldm,
                                     layout_t l) {
    lq_emu_wmma_check(p, ldm, sizeof(T), "store_matrix_sync");
    const unsigned live = __ballot_sync(0xffffffffu, 1); /* also the warp's first meeting */
    lq_emu_wmma_lanes("store_matrix_sync", __builtin_popcount(live));
    if (lq_emu_lane() == __builtin_ctz(live)) {
        for (int r = 0; r < M; r++)
            for (int c = 0; c < N; c++) {
                if (l == mem_row_major) p[(size_t)r * ldm + c] = f.x[r * N + c];
                else p[(size_t)c * ldm + r] = f.x[r * N + c];
            }
    }
    __syncwarp();
}

/* d = a b + c, each element summed over k in order in fp32 (products of bf16 / half are exact) */
template <int M, int N, int K, typename TA, typename LA, typename LB, typename TC>
static inline void mma_sync(fragment<accumulator, M, N, K, TC, void> &d, const fragment<matrix_a, M, N, K, TA, LA> &a,
                            const fragment<matrix_b, M, N, K, TA, LB> &b,
                            const fragment<accumulator, M, N, K, TC, void> &c) {
    lq_emu_wmma_lanes("mma_sync", -1);
    float out[M * N];
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float s = lq_emu_f(c.x[i * N + j]);
            for (int k = 0; k < K; k++) s += lq_emu_f(a.x[i * K + k]) * lq_emu_f(b.x[k * N + j]);
            out[i * N + j] = s;
        }
    for (int i = 0; i < M * N; i++) d.x[i] = (TC)out[i];
}

} // namespace wmma
} // namespace nvcuda

#endif
