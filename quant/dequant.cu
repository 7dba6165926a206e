/* quant/dequant.cu: CUDA dequantization kernels for the traits-table formats, on quant/kernels_*.h. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>

extern "C" {
#include "quant/dequant_cuda.h"
}
#include "core/cuda_check.h"
#include "quant/kernels.h"

/* One thread per output element, grid-stride: consecutive threads write consecutive floats, so
 * the stores coalesce (a thread per block would write 32..256 floats at a block's stride). Each
 * element is the loop body of the shared block function for its format: the same code helpers,
 * scales and float operations from quant/kernels_*.h, so results match the CPU bit for bit (the
 * headers spell out rounding, e.g. lq_ggml_mul_add never fuses). The few reads of a block's
 * header that neighbouring threads repeat hit L1. */

#define DQ_THREADS 256
#define DQ_MAX_BLOCKS 65535

static int dq_blocks(int64_t n) {
    int64_t b = (n + DQ_THREADS - 1) / DQ_THREADS;
    return (int)(b < DQ_MAX_BLOCKS ? (b > 0 ? b : 1) : DQ_MAX_BLOCKS);
}

#define DQ_FOR_EACH(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

/* --- plain float formats ------------------------------------------------------------------------ */

__global__ static void k_f16(const uint16_t *src, float *dst, int64_t n) {
    DQ_FOR_EACH(i, n) dst[i] = lq_f16_to_f32(src[i]);
}

__global__ static void k_bf16(const uint16_t *src, float *dst, int64_t n) {
    DQ_FOR_EACH(i, n) dst[i] = lq_bf16_to_f32(src[i]);
}

/* --- ggml blocks (quant/kernels_ggml.h): element i of block b = the body of lq_ggml_dequant_* -- */

__global__ static void k_q4_0(const lq_block_q4_0 *src, float *dst, int64_t n) {
    DQ_FOR_EACH(i, n) {
        const lq_block_q4_0 *b = src + i / LQ_GGML_QK;
        dst[i] = (float)lq_ggml_q4_0_code(b, (int)(i % LQ_GGML_QK)) * lq_f16_to_f32(b->d);
    }
}

__global__ static void k_q4_1(const lq_block_q4_1 *src, float *dst, int64_t n) {
    DQ_FOR_EACH(i, n) {
        const lq_block_q4_1 *b = src + i / LQ_GGML_QK;
        dst[i] = lq_ggml_mul_add((float)lq_ggml_q4_1_code(b, (int)(i % LQ_GGML_QK)), lq_f16_to_f32(b->d),
                                 lq_f16_to_f32(b->m));
    }
}

__global__ static void k_q5_0(const lq_block_q5_0 *src, float *dst, int64_t n) {
    DQ_FOR_EACH(i, n) {
        const lq_block_q5_0 *b = src + i / LQ_GGML_QK;
        dst[i] = (float)lq_ggml_q5_0_code(b, (int)(i % LQ_GGML_QK)) * lq_f16_to_f32(b->d);
    }
}

__global__ static void k_q5_1(const lq_block_q5_1 *src, float *dst, int64_t n) {
    DQ_FOR_EACH(i, n) {
        const lq_block_q5_1 *b = src + i / LQ_GGML_QK;
        dst[i] = lq_ggml_mul_add((float)lq_ggml_q5_1_code(b, (int)(i % LQ_GGML_QK)), lq_f16_to_f32(b->d),
                                 lq_f16_to_f32(b->m));
    }
}

__global__ static void k_q8_0(const lq_block_q8_0 *src, float *dst, int64_t n) {
    DQ_FOR_EACH(i, n) {
        const lq_block_q8_0 *b = src + i / LQ_GGML_QK;
        dst[i] = (float)lq_ggml_q8_0_code(b, (int)(i % LQ_GGML_QK)) * lq_f16_to_f32(b->d);
    }
}

__global__ static void k_q4_k(const lq_block_q4_k *src, float *dst, int64_t n) {
    DQ_FOR_EACH(i, n) {
        const lq_block_q4_k *b = src + i / LQ_GGML_QK_K;
        const int j = (int)(i % LQ_GGML_QK_K);
        float f, o;
        lq_ggml_k_sub(b->d, b->dmin, b->scales, j / 32, &f, &o);
        dst[i] = lq_ggml_mul_sub(f, (float)lq_ggml_q4_k_code(b, j), o);
    }
}

__global__ static void k_q5_k(const lq_block_q5_k *src, float *dst, int64_t n) {
    DQ_FOR_EACH(i, n) {
        const lq_block_q5_k *b = src + i / LQ_GGML_QK_K;
        const int j = (int)(i % LQ_GGML_QK_K);
        float f, o;
        lq_ggml_k_sub(b->d, b->dmin, b->scales, j / 32, &f, &o);
        dst[i] = lq_ggml_mul_sub(f, (float)lq_ggml_q5_k_code(b, j), o);
    }
}

__global__ static void k_q6_k(const lq_block_q6_k *src, float *dst, int64_t n) {
    DQ_FOR_EACH(i, n) {
        const lq_block_q6_k *b = src + i / LQ_GGML_QK_K;
        const int j = (int)(i % LQ_GGML_QK_K);
        dst[i] = lq_ggml_q6_k_factor(b, j / 16) * (float)lq_ggml_q6_k_code(b, j);
    }
}

/* --- bitsandbytes NF4 / FP4 (quant/kernels_bnb.h): one thread per packed byte (two elements of
 * the same block, start being even); the 16-value code table is copied from constant memory into
 * shared memory, where the warp's scattered lookups do not serialize as they would in the
 * constant cache. The block's absmax (or its double quantization undone) is
 * lq_bnb4_block_absmax; qs arrays are device pointers, scalars come by value. */

__constant__ float c_nf4_code[16] = LQ_NF4_CODE_INIT;
__constant__ float c_fp4_code[16] = LQ_FP4_CODE_INIT;

typedef struct dq_state {
    const float *absmax, *zero, *absmax2, *code2;
    const uint8_t *absmax_q;
    int64_t block, block2;
    float offset;
} dq_state;

__device__ static inline float dq_absmax(const dq_state &q, int64_t e) {
    return lq_bnb4_block_absmax(q.absmax, q.absmax_q, q.absmax2, q.code2, q.block2, q.offset, e / q.block);
}

__global__ static void k_bnb4(const uint8_t *src, float *dst, int64_t n, int64_t start, dq_state q, int fp4) {
    __shared__ float code[16];
    if (threadIdx.x < 16) code[threadIdx.x] = fp4 ? c_fp4_code[threadIdx.x] : c_nf4_code[threadIdx.x];
    __syncthreads();
    DQ_FOR_EACH(j, n / 2) {
        float out[2];
        lq_bnb4_dequant_byte(code, src[j], dq_absmax(q, start + 2 * j), out);
        dst[2 * j] = out[0];
        dst[2 * j + 1] = out[1];
    }
}

/* The same per byte, each float32 then rounded to bf16 (nearest even): lq_cuda_dequant_bf16. */
__global__ static void k_bnb4_bf16(const uint8_t *src, __nv_bfloat16 *dst, int64_t n, int64_t start, dq_state q,
                                   int fp4) {
    __shared__ float code[16];
    if (threadIdx.x < 16) code[threadIdx.x] = fp4 ? c_fp4_code[threadIdx.x] : c_nf4_code[threadIdx.x];
    __syncthreads();
    DQ_FOR_EACH(j, n / 2) {
        float out[2];
        lq_bnb4_dequant_byte(code, src[j], dq_absmax(q, start + 2 * j), out);
        dst[2 * j] = __float2bfloat16_rn(out[0]);
        dst[2 * j + 1] = __float2bfloat16_rn(out[1]);
    }
}

/* --- integer affine I8 / I4 (quant/kernels_affine.h): (code - zero) * scale per element, the
 * scale per block as the bnb absmax (double quantization allowed, as lq_qstate_absmax), the zero
 * point a float in the signed code units (NULL = 0), as the CPU rows read it. */

__global__ static void k_i8(const int8_t *src, float *dst, int64_t n, int64_t start, dq_state q) {
    DQ_FOR_EACH(i, n) {
        const int64_t e = start + i;
        dst[i] = lq_affine_dequantize_zf(src[i], dq_absmax(q, e), q.zero ? q.zero[e / q.block] : 0.0f);
    }
}

__global__ static void k_i4(const uint8_t *src, float *dst, int64_t n, int64_t start, dq_state q) {
    DQ_FOR_EACH(i, n) {
        const int64_t e = start + i;
        dst[i] = lq_affine_dequantize_zf(lq_i4_nibble(src[i >> 1], (int)(i & 1)), dq_absmax(q, e),
                                         q.zero ? q.zero[e / q.block] : 0.0f);
    }
}

/* --- launch ------------------------------------------------------------------------------------ */

static lq_status launched(const char *what, lq_err *err) {
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return LQ_ERR(err, LQ_ERR_INTERNAL, "cuda dequant %s: kernel launch failed: %s (%s)", what,
                      cudaGetErrorName(e), cudaGetErrorString(e));
    return LQ_OK;
}

/* The hot path of both (QLoRA's base weights): a thread per float4 of output (two packed bytes),
 * so that a warp reads 64 contiguous bytes and writes 512 (f32) or 256 (bf16, a thread per eight
 * elements: four bytes in, one 16-byte store) with single wide instructions, four independent
 * groups per thread in flight. The same per-byte function and block absmax as above, so the values
 * are the same bits. Taken when the groups cannot straddle a block (block and start multiples of
 * the group) and the pointers are aligned for the wide accesses; the tail goes to the kernels above.
 * (A thread per 16 elements with streaming stores measured 0.42 of copy bandwidth against this
 * kernel's 0.77 on the H200, bench/RESULTS.md.) */
#define DQ_VEC_UNROLL 4

/* dq_absmax with the block and nested-block divisions as shifts (both powers of two, as bnb's 64
 * and 256 are; bnb4_launch_v0 checks): 64-bit divisions are long instruction sequences on the GPU and
 * were most of this kernel's time. The same value: the block index, then the shared formula. */
__device__ static inline float dq_absmax_pow2(const dq_state &q, int64_t e, int bs, int b2s) {
    int64_t i = e >> bs;
    if (q.absmax) return q.absmax[i];
    return lq_bnb4_nested_absmax(q.code2, q.absmax_q[i], q.absmax2[i >> b2s], q.offset);
}

__global__ static void k_bnb4_f32x4(const uint16_t *src, float4 *dst, int64_t groups, int64_t start, dq_state q,
                                    int fp4, int bs, int b2s) {
    __shared__ float code[16];
    if (threadIdx.x < 16) code[threadIdx.x] = fp4 ? c_fp4_code[threadIdx.x] : c_nf4_code[threadIdx.x];
    __syncthreads();
    const int64_t step = (int64_t)gridDim.x * blockDim.x * DQ_VEC_UNROLL;
    for (int64_t g0 = (int64_t)blockIdx.x * blockDim.x * DQ_VEC_UNROLL + threadIdx.x; g0 < groups; g0 += step) {
        uint16_t v[DQ_VEC_UNROLL];
#pragma unroll
        for (int k = 0; k < DQ_VEC_UNROLL; k++) {
            int64_t i = g0 + (int64_t)k * blockDim.x;
            v[k] = i < groups ? src[i] : 0;
        }
#pragma unroll
        for (int k = 0; k < DQ_VEC_UNROLL; k++) {
            int64_t i = g0 + (int64_t)k * blockDim.x;
            if (i >= groups) break;
            float a = dq_absmax_pow2(q, start + 4 * i, bs, b2s), o[4];
            lq_bnb4_dequant_byte(code, (uint8_t)(v[k] & 0xffu), a, o); /* the lower address is the low byte */
            lq_bnb4_dequant_byte(code, (uint8_t)(v[k] >> 8), a, o + 2);
            dst[i] = make_float4(o[0], o[1], o[2], o[3]);
        }
    }
}

__global__ static void k_bnb4_bf16x8(const uint32_t *src, uint4 *dst, int64_t groups, int64_t start, dq_state q,
                                     int fp4, int bs, int b2s) {
    __shared__ float code[16];
    if (threadIdx.x < 16) code[threadIdx.x] = fp4 ? c_fp4_code[threadIdx.x] : c_nf4_code[threadIdx.x];
    __syncthreads();
    const int64_t step = (int64_t)gridDim.x * blockDim.x * DQ_VEC_UNROLL;
    for (int64_t g0 = (int64_t)blockIdx.x * blockDim.x * DQ_VEC_UNROLL + threadIdx.x; g0 < groups; g0 += step) {
        uint32_t v[DQ_VEC_UNROLL];
#pragma unroll
        for (int k = 0; k < DQ_VEC_UNROLL; k++) {
            int64_t i = g0 + (int64_t)k * blockDim.x;
            v[k] = i < groups ? src[i] : 0;
        }
#pragma unroll
        for (int k = 0; k < DQ_VEC_UNROLL; k++) {
            int64_t i = g0 + (int64_t)k * blockDim.x;
            if (i >= groups) break;
            float a = dq_absmax_pow2(q, start + 8 * i, bs, b2s), o[8];
            for (int b = 0; b < 4; b++) lq_bnb4_dequant_byte(code, (uint8_t)(v[k] >> (8 * b)), a, o + 2 * b);
            uint32_t w[4];
            for (int b = 0; b < 4; b++) {
                __nv_bfloat16 lo = __float2bfloat16_rn(o[2 * b]), hi = __float2bfloat16_rn(o[2 * b + 1]);
                w[b] = (uint32_t)__bfloat16_as_ushort(lo) | ((uint32_t)__bfloat16_as_ushort(hi) << 16);
            }
            dst[i] = make_uint4(w[0], w[1], w[2], w[3]);
        }
    }
}

static int dq_vec_blocks(int64_t groups) {
    int64_t b = (groups + DQ_THREADS * DQ_VEC_UNROLL - 1) / (DQ_THREADS * DQ_VEC_UNROLL);
    return (int)(b < DQ_MAX_BLOCKS ? (b > 0 ? b : 1) : DQ_MAX_BLOCKS);
}

/* log2(v) for a power of two v > 0, else -1. */
static int pow2_shift(int64_t v) {
    if (v <= 0 || (v & (v - 1))) return -1;
    int k = 0;
    while (((int64_t)1 << k) < v) k++;
    return k;
}

/* NF4 / FP4 of n elements from start: the wide kernel over the whole groups of g elements when it
 * applies, the per-byte kernel over the rest. Variant 0 of the fast path (bnb4_launch picks). */
static lq_status bnb4_launch_v0(const void *d_src, void *d_dst, bool bf16, int64_t n, int64_t start, const dq_state &q,
                                int fp4, cudaStream_t s, lq_err *err) {
    const int64_t g = bf16 ? 8 : 4;
    const uintptr_t sa = (uintptr_t)d_src, da = (uintptr_t)d_dst;
    int64_t groups = 0;
    int bs = pow2_shift(q.block), b2s = q.absmax ? 0 : pow2_shift(q.block2);
    if (q.block % g == 0 && start % g == 0 && sa % (size_t)(g / 2) == 0 && da % 16 == 0 && bs >= 0 && b2s >= 0)
        groups = n / g;
    if (groups > 0) {
        if (bf16)
            k_bnb4_bf16x8<<<dq_vec_blocks(groups), DQ_THREADS, 0, s>>>((const uint32_t *)d_src, (uint4 *)d_dst, groups,
                                                                      start, q, fp4, bs, b2s);
        else
            k_bnb4_f32x4<<<dq_vec_blocks(groups), DQ_THREADS, 0, s>>>((const uint16_t *)d_src, (float4 *)d_dst, groups,
                                                                     start, q, fp4, bs, b2s);
        LQ_TRY(launched(bf16 ? "k_bnb4_bf16x8" : "k_bnb4_f32x4", err));
    }
    int64_t done = groups * g, rest = n - done;
    if (rest <= 0) return LQ_OK;
    const uint8_t *src = (const uint8_t *)d_src + done / 2;
    if (bf16)
        k_bnb4_bf16<<<dq_blocks(rest / 2), DQ_THREADS, 0, s>>>(src, (__nv_bfloat16 *)d_dst + done, rest, start + done,
                                                                q, fp4);
    else
        k_bnb4<<<dq_blocks(rest / 2), DQ_THREADS, 0, s>>>(src, (float *)d_dst + done, rest, start + done, q, fp4);
    return launched(bf16 ? "k_bnb4_bf16" : "k_bnb4", err);
}

/* --- variants of the NF4 / FP4 fast path, measured side by side by `bench_gpu dequant` -----------
 * Variant 0 is bnb4_launch_v0 above (the default). The others produce the same bits: the same
 * lq_bnb4_dequant_byte per packed byte, the same block scale (lq_bnb4_nested_absmax on the same
 * operands as dq_absmax_pow2), the same bf16 rounding; only the work split and the order of the
 * memory accesses differ. A call a variant cannot take (alignment, block size) goes through
 * variant 0's path whole, and the pieces around a variant's whole units go through it too.
 *
 * hoist4 / hoist8: variant 0's layout (a thread per 4 f32 or 8 bf16 outputs, 4 or 8 groups per
 *   thread at a stride of the block's width, so each store instruction of a warp is 512 contiguous
 *   bytes), but every load of a thread (codes, absmax codes, nested scales, then the code2 entries)
 *   is issued before its first store, through the read-only path, from __restrict__ pointers.
 *   Why: in variant 0 a store through dst may alias the state arrays for all the compiler knows,
 *   so group k + 1's absmax loads (two dependent ones with double quantization) wait for group k's
 *   store: up to 2 x 4 serial memory latencies per thread. An exact grid (one pass per thread).
 * warp / warp2-persist: a warp owns chunks of DQ_CHUNK = 1024 elements (512 code bytes): one
 *   16-byte load per lane, staged in shared memory, then read back so that consecutive lanes write
 *   consecutive 16-byte outputs (8 f32 or 4 bf16 store instructions of 512 bytes per chunk). A
 *   chunk spans at most 17 state blocks (block >= 64): lane j computes block j's scale once and
 *   each output group takes it by __shfl_sync, rather than every thread loading it. `warp`: one
 *   chunk per warp, exact grid; `warp2-persist`: two chunks per warp per pass, a grid of as many
 *   blocks as the device holds at once, grid-stride.
 * (A thread per 8 or 16 contiguous elements, two or four 16-byte stores at a 32- or 64-byte
 * stride, is left out: each store instruction then covers half or a quarter of each sector it
 * touches; the 16-element one measured 0.42 of copy, bench/RESULTS.md.) */

enum { DQ_V0, DQ_HOIST, DQ_WARP };
typedef struct dq_variant {
    const char *name;
    int kind, per_thread; /* groups per thread (hoist) or chunks per warp per pass (warp) */
    bool persist;         /* grid of resident blocks only, grid-stride (else an exact grid) */
} dq_variant;
static const dq_variant dq_variants[] = {
    {"v0", DQ_V0, 0, false},     {"hoist4", DQ_HOIST, 4, false},     {"hoist8", DQ_HOIST, 8, false},
    {"warp", DQ_WARP, 1, false}, {"warp2-persist", DQ_WARP, 2, true},
};
#define DQ_N_VARIANTS ((int)(sizeof dq_variants / sizeof dq_variants[0]))
static_assert(DQ_N_VARIANTS <= LQ_CUDA_DEQUANT_MAX_VARIANTS, "raise LQ_CUDA_DEQUANT_MAX_VARIANTS");

/* Block i's scale from the read-only path: dq_absmax_pow2's value for an element of block i. The
 * code2 entry is loaded first and handed to the shared formula as a one-element table. */
__device__ static inline float dq_block_absmax_ro(const dq_state &q, int64_t i, int b2s) {
    if (q.absmax) return __ldg(q.absmax + i);
    const float c2 = __ldg(q.code2 + __ldg(q.absmax_q + i));
    return lq_bnb4_nested_absmax(&c2, 0, __ldg(q.absmax2 + (i >> b2s)), q.offset);
}

/* G = 4 (f32: one float4 per group, 2 code bytes) or 8 (bf16: one uint4 of 8 bf16, 4 code bytes);
 * U groups per thread. src: the groups' code units (uint16 or uint32), dst: float4 or uint4. */
template <bool BF16, int U>
__global__ static void __launch_bounds__(DQ_THREADS)
    k_bnb4_hoist(const void *__restrict__ src, void *__restrict__ dst, int64_t groups, int64_t start, dq_state q,
                 int fp4, int bs, int b2s) {
    constexpr int G = BF16 ? 8 : 4;
    __shared__ float code[16];
    if (threadIdx.x < 16) code[threadIdx.x] = fp4 ? c_fp4_code[threadIdx.x] : c_nf4_code[threadIdx.x];
    __syncthreads();
    const int64_t step = (int64_t)gridDim.x * blockDim.x * U;
    for (int64_t g0 = (int64_t)blockIdx.x * blockDim.x * U + threadIdx.x; g0 < groups; g0 += step) {
        uint32_t v[U];
        uint8_t aq[U];
        float a[U], s2[U];
#pragma unroll
        for (int k = 0; k < U; k++) { /* every load first: codes, then the state of each group's block */
            const int64_t i = g0 + (int64_t)k * blockDim.x, b = (start + G * i) >> bs;
            const bool in = i < groups;
            if constexpr (BF16) v[k] = in ? __ldg((const unsigned int *)src + i) : 0u;
            else v[k] = in ? __ldg((const unsigned short *)src + i) : 0u;
            a[k] = s2[k] = 0.0f;
            aq[k] = 0;
            if (q.absmax) {
                if (in) a[k] = __ldg(q.absmax + b);
            } else if (in) {
                aq[k] = __ldg(q.absmax_q + b);
                s2[k] = __ldg(q.absmax2 + (b >> b2s));
            }
        }
        if (!q.absmax) {
#pragma unroll
            for (int k = 0; k < U; k++) { /* code2 (1 KiB) stays in L1: these are short waits */
                const float c2 = __ldg(q.code2 + aq[k]);
                a[k] = lq_bnb4_nested_absmax(&c2, 0, s2[k], q.offset);
            }
        }
#pragma unroll
        for (int k = 0; k < U; k++) {
            const int64_t i = g0 + (int64_t)k * blockDim.x;
            if (i >= groups) break;
            float o[G];
#pragma unroll
            for (int b = 0; b < G / 2; b++) lq_bnb4_dequant_byte(code, (uint8_t)(v[k] >> (8 * b)), a[k], o + 2 * b);
            if constexpr (BF16) {
                uint32_t w[4];
#pragma unroll
                for (int b = 0; b < 4; b++)
                    w[b] = (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(o[2 * b])) |
                           ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(o[2 * b + 1])) << 16);
                ((uint4 *)dst)[i] = make_uint4(w[0], w[1], w[2], w[3]);
            } else {
                ((float4 *)dst)[i] = make_float4(o[0], o[1], o[2], o[3]);
            }
        }
    }
}

#define DQ_CHUNK 1024 /* elements per warp chunk: 32 lanes x 16 code bytes */
#define DQ_WARPS (DQ_THREADS / 32)

/* CH chunks per warp per pass. src: the chunks' codes (32 uint4 each), dst: 256 float4 (f32) or
 * 128 uint4 (bf16) per chunk; start: element index of chunk 0 (a multiple of G); bs >= 6, so a
 * chunk's elements [e0, e0 + 1024) lie in at most 17 blocks (e0 >> bs) + 0..16. Every branch on
 * c is uniform across the warp (c depends on the warp only), as __shfl_sync and __syncwarp need. */
template <bool BF16, int CH>
__global__ static void __launch_bounds__(DQ_THREADS)
    k_bnb4_warp(const uint4 *__restrict__ src, void *__restrict__ dst, int64_t chunks, int64_t start, dq_state q,
                int fp4, int bs, int b2s) {
    __shared__ float code[16];
    __shared__ __align__(16) uint32_t stage[DQ_WARPS][CH][128]; /* a warp's chunks' codes, 512 bytes each */
    if (threadIdx.x < 16) code[threadIdx.x] = fp4 ? c_fp4_code[threadIdx.x] : c_nf4_code[threadIdx.x];
    __syncthreads();
    const int lane = threadIdx.x & 31, wb = threadIdx.x >> 5;
    const int64_t warp = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int64_t nwarps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t c0 = warp * CH; c0 < chunks; c0 += nwarps * CH) {
        uint4 v[CH];
        float a[CH];
#pragma unroll
        for (int h = 0; h < CH; h++) { /* the loads: 16 code bytes per lane, then one block scale per lane */
            const int64_t c = c0 + h;
            v[h] = c < chunks ? __ldg(src + c * 32 + lane) : make_uint4(0u, 0u, 0u, 0u);
        }
#pragma unroll
        for (int h = 0; h < CH; h++) {
            const int64_t c = c0 + h, e0 = start + c * DQ_CHUNK, b = (e0 >> bs) + lane;
            a[h] = c < chunks && b <= ((e0 + DQ_CHUNK - 1) >> bs) ? dq_block_absmax_ro(q, b, b2s) : 0.0f;
        }
#pragma unroll
        for (int h = 0; h < CH; h++) reinterpret_cast<uint4 *>(stage[wb][h])[lane] = v[h];
        __syncwarp();
#pragma unroll
        for (int h = 0; h < CH; h++) {
            const int64_t c = c0 + h, e0 = start + c * DQ_CHUNK, fb = e0 >> bs;
            if (c >= chunks) break;
            if constexpr (BF16) { /* store s: lane writes uint4 j = 32 s + lane, elements 8j..8j+7 = code word j */
                uint4 *d = (uint4 *)dst + c * (DQ_CHUNK / 8);
#pragma unroll
                for (int s = 0; s < 4; s++) {
                    const int j = 32 * s + lane;
                    const float am = __shfl_sync(0xffffffffu, a[h], (int)(((e0 + 8 * j) >> bs) - fb));
                    const uint32_t w = stage[wb][h][j];
                    uint32_t p[4];
#pragma unroll
                    for (int b = 0; b < 4; b++) {
                        float o[2];
                        lq_bnb4_dequant_byte(code, (uint8_t)(w >> (8 * b)), am, o);
                        p[b] = (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(o[0])) |
                               ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(o[1])) << 16);
                    }
                    d[j] = make_uint4(p[0], p[1], p[2], p[3]);
                }
            } else { /* store s: lane writes float4 j = 32 s + lane, elements 4j..4j+3 = code halfword j */
                float4 *d = (float4 *)dst + c * (DQ_CHUNK / 4);
#pragma unroll
                for (int s = 0; s < 8; s++) {
                    const int j = 32 * s + lane;
                    const float am = __shfl_sync(0xffffffffu, a[h], (int)(((e0 + 4 * j) >> bs) - fb));
                    const uint32_t hw = stage[wb][h][j >> 1] >> (16 * (j & 1)); /* little endian: byte 2j low */
                    float o[4];
                    lq_bnb4_dequant_byte(code, (uint8_t)(hw & 0xffu), am, o);
                    lq_bnb4_dequant_byte(code, (uint8_t)((hw >> 8) & 0xffu), am, o + 2);
                    d[j] = make_float4(o[0], o[1], o[2], o[3]);
                }
            }
        }
        __syncwarp(); /* every lane has read the stage before the next pass overwrites it */
    }
}

/* Blocks for `items` work items at `per_block` each: all of them (an exact grid, capped at the
 * grid's limit; the kernels' grid-stride loops cover any rest), or with persist only as many as
 * the device holds at once (SMs x resident blocks of this kernel). */
static lq_status dq_grid(const void *kernel, int64_t items, int64_t per_block, bool persist, int *blocks,
                         lq_err *err) {
    int64_t b = (items + per_block - 1) / per_block;
    if (persist) {
        int dev = 0, sms = 0, per_sm = 0;
        LQ_CU(err, cudaGetDevice(&dev));
        LQ_CU(err, cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
        LQ_CU(err, cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, DQ_THREADS, 0));
        const int64_t cap = (int64_t)sms * (per_sm > 0 ? per_sm : 1);
        if (b > cap) b = cap;
    }
    *blocks = (int)(b < 1 ? 1 : b < INT_MAX ? b : INT_MAX);
    return LQ_OK;
}

/* Launches kernel(a...) over `items` at `per_block` a block (dq_grid). */
template <typename... P, typename... A>
static lq_status dq_go(void (*kernel)(P...), const char *name, int64_t items, int64_t per_block, bool persist,
                       cudaStream_t s, lq_err *err, A... a) {
    int nb = 0;
    LQ_TRY(dq_grid((const void *)kernel, items, per_block, persist, &nb, err));
    kernel<<<nb, DQ_THREADS, 0, s>>>(a...);
    return launched(name, err);
}

/* Variant v (not 0) of NF4 / FP4: its kernel over the whole units it can take, variant 0's path
 * over the pieces before and after them; variant 0's path for all of it when it takes nothing. */
static lq_status bnb4_launch_variant(const dq_variant &v, const void *d_src, void *d_dst, bool bf16, int64_t n,
                                     int64_t start, const dq_state &q, int fp4, cudaStream_t s, lq_err *err) {
    const int64_t g = bf16 ? 8 : 4, esz = bf16 ? 2 : 4;
    const uintptr_t sa = (uintptr_t)d_src, da = (uintptr_t)d_dst;
    const int bs = pow2_shift(q.block), b2s = q.absmax ? 0 : pow2_shift(q.block2);
    const char *src = (const char *)d_src;
    char *dst = (char *)d_dst;
    if (v.kind == DQ_HOIST) { /* variant 0's conditions, the same groups */
        if (!(q.block % g == 0 && start % g == 0 && sa % (size_t)(g / 2) == 0 && da % 16 == 0 && bs >= 0 &&
              b2s >= 0 && n >= g))
            return bnb4_launch_v0(d_src, d_dst, bf16, n, start, q, fp4, s, err);
        const int64_t groups = n / g, per = (int64_t)DQ_THREADS * v.per_thread;
        auto k = bf16 ? (v.per_thread == 4 ? k_bnb4_hoist<true, 4> : k_bnb4_hoist<true, 8>)
                      : (v.per_thread == 4 ? k_bnb4_hoist<false, 4> : k_bnb4_hoist<false, 8>);
        LQ_TRY(dq_go(k, v.name, groups, per, v.persist, s, err, d_src, d_dst, groups, start, q, fp4, bs, b2s));
        const int64_t done = groups * g;
        if (done == n) return LQ_OK;
        return bnb4_launch_v0(src + done / 2, dst + done * esz, bf16, n - done, start + done, q, fp4, s, err);
    }
    /* DQ_WARP: the head up to the first 16-byte aligned code byte, whole chunks, the tail */
    const int64_t head = (int64_t)((16 - sa % 16) % 16) * 2;
    const int64_t chunks = n > head ? (n - head) / DQ_CHUNK : 0;
    if (chunks == 0 || bs < 6 || b2s < 0 || (start + head) % g || (da + (uintptr_t)(head * esz)) % 16)
        return bnb4_launch_v0(d_src, d_dst, bf16, n, start, q, fp4, s, err);
    if (head) LQ_TRY(bnb4_launch_v0(d_src, d_dst, bf16, head, start, q, fp4, s, err));
    const uint4 *src4 = (const uint4 *)(src + head / 2);
    void *dstc = dst + head * esz;
    const int64_t e0 = start + head, per = DQ_WARPS * v.per_thread;
    auto k = bf16 ? (v.per_thread == 1 ? k_bnb4_warp<true, 1> : k_bnb4_warp<true, 2>)
                  : (v.per_thread == 1 ? k_bnb4_warp<false, 1> : k_bnb4_warp<false, 2>);
    LQ_TRY(dq_go(k, v.name, chunks, per, v.persist, s, err, src4, dstc, chunks, e0, q, fp4, bs, b2s));
    const int64_t done = head + chunks * DQ_CHUNK;
    if (done == n) return LQ_OK;
    return bnb4_launch_v0(src + done / 2, dst + done * esz, bf16, n - done, start + done, q, fp4, s, err);
}

/* The process-wide choice: -1 until LOQUAT_DEQUANT_VARIANT has been read (once, at the first NF4 /
 * FP4 call, unless lq_cuda_dequant_set_variant came first), -2 when its value named no variant. */
static std::atomic<int> g_dq_variant{-1};

/* A variant by index ("2") or name ("hoist8"); -1 for neither. */
static int dq_variant_parse(const char *t) {
    char *end = NULL;
    long k = strtol(t, &end, 10);
    if (end != t && *end == '\0') return k >= 0 && k < DQ_N_VARIANTS ? (int)k : -1;
    for (int i = 0; i < DQ_N_VARIANTS; i++)
        if (!strcmp(t, dq_variants[i].name)) return i;
    return -1;
}

static const char *dq_variant_list(char *buf, size_t n) {
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < DQ_N_VARIANTS && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%s%d = %s", i ? ", " : "", i, dq_variants[i].name);
    return buf;
}

static lq_status bnb4_launch(const void *d_src, void *d_dst, bool bf16, int64_t n, int64_t start, const dq_state &q,
                             int fp4, cudaStream_t s, lq_err *err) {
    int v = g_dq_variant.load(std::memory_order_relaxed);
    if (v == -1) {
        const char *e = getenv("LOQUAT_DEQUANT_VARIANT");
        int expect = -1, p = e && *e ? dq_variant_parse(e) : 0;
        g_dq_variant.compare_exchange_strong(expect, p >= 0 ? p : -2);
        v = g_dq_variant.load(std::memory_order_relaxed);
    }
    if (v == -2) {
        const char *e = getenv("LOQUAT_DEQUANT_VARIANT");
        char list[256];
        return LQ_ERR(err, LQ_ERR_ARG, "LOQUAT_DEQUANT_VARIANT=%s names no NF4/FP4 dequant variant (%s)", e ? e : "",
                      dq_variant_list(list, sizeof list));
    }
    if (v <= 0 || v >= DQ_N_VARIANTS) return bnb4_launch_v0(d_src, d_dst, bf16, n, start, q, fp4, s, err);
    return bnb4_launch_variant(dq_variants[v], d_src, d_dst, bf16, n, start, q, fp4, s, err);
}

extern "C" int lq_cuda_dequant_variants(const char **names) {
    if (names)
        for (int i = 0; i < DQ_N_VARIANTS; i++) names[i] = dq_variants[i].name;
    return DQ_N_VARIANTS;
}

extern "C" lq_status lq_cuda_dequant_set_variant(int v, lq_err *err) {
    if (v < 0 || v >= DQ_N_VARIANTS) {
        char list[256];
        return LQ_ERR(err, LQ_ERR_ARG, "cuda dequant: variant %d does not exist (%s)", v,
                      dq_variant_list(list, sizeof list));
    }
    g_dq_variant.store(v, std::memory_order_relaxed);
    return LQ_OK;
}


/* threads: how many work items the kernel's grid-stride loop has (elements, or bytes for bnb) */
#define DQ_LAUNCH_N(threads, kernel, T, ...)                                                            \
    do {                                                                                                \
        kernel<<<dq_blocks(threads), DQ_THREADS, 0, s>>>((const T *)d_src, d_dst, n, ##__VA_ARGS__);    \
        return launched(#kernel, err);                                                                  \
    } while (0)
#define DQ_LAUNCH(kernel, T, ...) DQ_LAUNCH_N(n, kernel, T, ##__VA_ARGS__)

extern "C" bool lq_cuda_dequant_supported(lq_dtype t) {
    switch (t) {
    case LQ_DTYPE_F32: case LQ_DTYPE_F16: case LQ_DTYPE_BF16:
    case LQ_DTYPE_Q4_0: case LQ_DTYPE_Q4_1: case LQ_DTYPE_Q5_0: case LQ_DTYPE_Q5_1: case LQ_DTYPE_Q8_0:
    case LQ_DTYPE_Q4_K: case LQ_DTYPE_Q5_K: case LQ_DTYPE_Q6_K:
    case LQ_DTYPE_NF4: case LQ_DTYPE_FP4: case LQ_DTYPE_I8: case LQ_DTYPE_I4:
        return true;
    default:
        return false;
    }
}

extern "C" lq_status lq_cuda_dequant(lq_dtype t, const void *d_src, float *d_dst, int64_t n, int64_t start,
                                     const lq_qstate *qs, void *stream, lq_err *err) {
    const lq_dtype_traits *tr = lq_dtype_info(t);
    if (!tr) return LQ_ERR(err, LQ_ERR_ARG, "cuda dequant: unknown dtype %d", (int)t);
    if (!lq_cuda_dequant_supported(t))
        return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "cuda dequant: no kernel for %s", tr->name);
    if (n < 0 || start < 0 || n % tr->block_size || start % tr->block_size)
        return LQ_ERR(err, LQ_ERR_ARG, "cuda dequant %s: n = %lld and start = %lld must be multiples of %lld",
                      tr->name, (long long)n, (long long)start, (long long)tr->block_size);
    if (n == 0) return LQ_OK;
    if (!d_src || !d_dst) return LQ_ERR(err, LQ_ERR_ARG, "cuda dequant %s: NULL %s", tr->name, d_src ? "dst" : "src");
    /* the ggml blocks start with f16 scales; packed nibbles (1-byte blocks) may start anywhere */
    if (tr->block_bytes % 2 == 0 && tr->block_size > 1 && ((uintptr_t)d_src & 1u))
        return LQ_ERR(err, LQ_ERR_ARG, "cuda dequant %s: blocks must be 2-byte aligned", tr->name);
    if (tr->needs_qstate && !qs) return LQ_ERR(err, LQ_ERR_ARG, "cuda dequant %s: needs its quant state", tr->name);
    dq_state q = {};
    if (tr->needs_qstate) {
        if (qs->block <= 0)
            return LQ_ERR(err, LQ_ERR_ARG, "cuda dequant %s: quant state block = %lld", tr->name, (long long)qs->block);
        if (!qs->absmax && !(qs->absmax_q && qs->absmax2 && qs->code2 && qs->block2 > 0))
            return LQ_ERR(err, LQ_ERR_ARG,
                          "cuda dequant %s: the quant state has neither absmax nor a whole double quantization "
                          "(absmax_q, absmax2, code2, block2 > 0)",
                          tr->name);
        q.absmax = qs->absmax;
        q.zero = qs->zero;
        q.absmax_q = qs->absmax_q;
        q.absmax2 = qs->absmax2;
        q.code2 = qs->code2;
        q.block = qs->block;
        q.block2 = qs->block2;
        q.offset = qs->offset;
    }
    cudaStream_t s = (cudaStream_t)stream;
    switch (t) {
    case LQ_DTYPE_F32: {
        cudaError_t e = cudaMemcpyAsync(d_dst, d_src, (size_t)n * sizeof(float), cudaMemcpyDeviceToDevice, s);
        if (e != cudaSuccess)
            return LQ_ERR(err, LQ_ERR_INTERNAL, "cuda dequant f32: cudaMemcpyAsync: %s", cudaGetErrorString(e));
        return LQ_OK;
    }
    case LQ_DTYPE_F16: DQ_LAUNCH(k_f16, uint16_t);
    case LQ_DTYPE_BF16: DQ_LAUNCH(k_bf16, uint16_t);
    case LQ_DTYPE_Q4_0: DQ_LAUNCH(k_q4_0, lq_block_q4_0);
    case LQ_DTYPE_Q4_1: DQ_LAUNCH(k_q4_1, lq_block_q4_1);
    case LQ_DTYPE_Q5_0: DQ_LAUNCH(k_q5_0, lq_block_q5_0);
    case LQ_DTYPE_Q5_1: DQ_LAUNCH(k_q5_1, lq_block_q5_1);
    case LQ_DTYPE_Q8_0: DQ_LAUNCH(k_q8_0, lq_block_q8_0);
    case LQ_DTYPE_Q4_K: DQ_LAUNCH(k_q4_k, lq_block_q4_k);
    case LQ_DTYPE_Q5_K: DQ_LAUNCH(k_q5_k, lq_block_q5_k);
    case LQ_DTYPE_Q6_K: DQ_LAUNCH(k_q6_k, lq_block_q6_k);
    case LQ_DTYPE_NF4: return bnb4_launch(d_src, d_dst, false, n, start, q, 0, s, err);
    case LQ_DTYPE_FP4: return bnb4_launch(d_src, d_dst, false, n, start, q, 1, s, err);
    case LQ_DTYPE_I8: DQ_LAUNCH(k_i8, int8_t, start, q);
    case LQ_DTYPE_I4: DQ_LAUNCH(k_i4, uint8_t, start, q);
    default:
        return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "cuda dequant: no kernel for %s", tr->name);
    }
}

extern "C" bool lq_cuda_dequant_bf16_supported(lq_dtype t) { return t == LQ_DTYPE_NF4 || t == LQ_DTYPE_FP4; }

extern "C" lq_status lq_cuda_dequant_bf16(lq_dtype t, const void *d_src, uint16_t *d_dst, int64_t n, int64_t start,
                                          const lq_qstate *qs, void *stream, lq_err *err) {
    const lq_dtype_traits *tr = lq_dtype_info(t);
    if (!tr) return LQ_ERR(err, LQ_ERR_ARG, "cuda dequant to bf16: unknown dtype %d", (int)t);
    if (!lq_cuda_dequant_bf16_supported(t))
        return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "cuda dequant to bf16: no kernel for %s (only nf4, fp4)", tr->name);
    if (n < 0 || start < 0 || n % tr->block_size || start % tr->block_size)
        return LQ_ERR(err, LQ_ERR_ARG, "cuda dequant %s to bf16: n = %lld and start = %lld must be multiples of %lld",
                      tr->name, (long long)n, (long long)start, (long long)tr->block_size);
    if (n == 0) return LQ_OK;
    if (!d_src || !d_dst)
        return LQ_ERR(err, LQ_ERR_ARG, "cuda dequant %s to bf16: NULL %s", tr->name, d_src ? "dst" : "src");
    if (!qs) return LQ_ERR(err, LQ_ERR_ARG, "cuda dequant %s to bf16: needs its quant state", tr->name);
    if (qs->block <= 0)
        return LQ_ERR(err, LQ_ERR_ARG, "cuda dequant %s to bf16: quant state block = %lld", tr->name,
                      (long long)qs->block);
    if (!qs->absmax && !(qs->absmax_q && qs->absmax2 && qs->code2 && qs->block2 > 0))
        return LQ_ERR(err, LQ_ERR_ARG,
                      "cuda dequant %s to bf16: the quant state has neither absmax nor a whole double quantization "
                      "(absmax_q, absmax2, code2, block2 > 0)",
                      tr->name);
    dq_state q = {};
    q.absmax = qs->absmax;
    q.zero = qs->zero;
    q.absmax_q = qs->absmax_q;
    q.absmax2 = qs->absmax2;
    q.code2 = qs->code2;
    q.block = qs->block;
    q.block2 = qs->block2;
    q.offset = qs->offset;
    return bnb4_launch(d_src, d_dst, true, n, start, q, t == LQ_DTYPE_FP4 ? 1 : 0, (cudaStream_t)stream, err);
}
