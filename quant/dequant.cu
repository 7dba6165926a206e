/* quant/dequant.cu: CUDA dequantization kernels for the traits-table formats, on quant/kernels_*.h. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <stdint.h>

extern "C" {
#include "quant/dequant_cuda.h"
}
#include "core/cuda_check.h"
#include "quant/kernels.h"

/* One thread per output element, grid-stride (NF4 / FP4's hot path has its own layout, below):
 * consecutive threads write consecutive floats, so the stores coalesce (a thread per block would
 * write 32..256 floats at a block's stride). Each element is the loop body of the shared block
 * function for its format: the same code helpers, scales and float operations from
 * quant/kernels_*.h, so results match the CPU bit for bit (the headers spell out rounding, e.g.
 * lq_ggml_mul_add never fuses). The few reads of a block's header that neighbouring threads
 * repeat hit L1. */

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

/* --- bitsandbytes NF4 / FP4 (quant/kernels_bnb.h) -----------------------------------------------
 * The hot path of QLoRA (the frozen base, dequantized per call): k_bnb4_hoist, a thread per group
 * of G outputs (4 f32 = one float4 from two code bytes, or 8 bf16 = one uint4 from four), DQ_UNROLL
 * groups per thread at a stride of the block's width, so each store instruction of a warp writes
 * 512 contiguous bytes. Every load of a thread (codes, absmax codes, nested scales, then the code2
 * entries) is issued before its first store, through the read-only path (__ldg, __restrict__):
 * with a store first, the compiler must assume it may alias the state arrays, and group k + 1's
 * absmax loads (two dependent ones with double quantization) wait for group k's store, up to
 * 2 x 4 serial memory latencies per thread. An exact grid: one pass per thread.
 * `bench_gpu dequant` (double quant, block 64; bandwidth as a fraction of a device-to-device
 * copy's; 0 mismatches): 0.90-0.91 with f32 output and 0.87-0.89 with bf16 on an H100, as the
 * kernel it replaced (the same layout, each group's scale loaded after the previous group's
 * store); 0.87 and 0.86 on an H200, where that one gave 0.79 and 0.84. Measured in the same runs
 * and dropped: 8 groups per thread (H200 0.86 / 0.84-0.86), a warp per 1024-element chunk staged
 * in shared memory with the block scales shuffled across lanes (0.87 / 0.85), the same two chunks
 * at a time on a persistent grid (0.81 / 0.82). Those figures counted the host's launch latency in
 * the dequant's interval; timed from a queued launch (bench_gpu --lead-us, 2026-11-27, H200) this
 * kernel gives 0.90-0.91 (f32), 0.88-0.92 (bf16), 0.87-0.90 (bf16 rows). Swept in that run, each
 * within 1-2% of it or worse: 2 groups per thread (0.92 flat, 0.87-0.88 rows), 8 groups, 128 or
 * 512 threads a block, streaming stores (__stcs); the grid capped at one full residency: 0.82.
 *
 * It takes the whole groups of a call when no group can straddle a state block (block and start
 * multiples of G), the pointers are aligned for the wide accesses (codes to G / 2 bytes, output to
 * 16) and the block sizes are powers of two (shifts for the block index: a 64-bit division is a
 * long instruction sequence on the GPU and was most of an earlier kernel's time). k_bnb4_byte, a
 * thread per packed byte, takes the rest: the last n % G elements, or the whole call when those
 * conditions fail. Both are lq_bnb4_dequant_byte per byte on the block's scale (the operands of
 * lq_bnb4_block_absmax), then for bf16 __float2bfloat16_rn of each float32, so every path gives
 * the CPU's bits. The 16-value code table is copied from constant memory into shared memory, where
 * a warp's scattered lookups do not serialize as they would in the constant cache. qs arrays are
 * device pointers, scalars come by value. (A thread per 16 elements with streaming stores gave
 * 0.42 of copy on the H200, bench/RESULTS.md.) */

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

/* The format's code table into the block's shared code[16]. */
__device__ static inline void dq_code_table(float *code, int fp4) {
    if (threadIdx.x < 16) code[threadIdx.x] = fp4 ? c_fp4_code[threadIdx.x] : c_nf4_code[threadIdx.x];
    __syncthreads();
}

/* n elements from element start (even): byte j -> elements 2j, 2j + 1 of dst (float or bf16). */
template <bool BF16>
__global__ static void k_bnb4_byte(const uint8_t *src, void *dst, int64_t n, int64_t start, dq_state q, int fp4) {
    __shared__ float code[16];
    dq_code_table(code, fp4);
    DQ_FOR_EACH(j, n / 2) {
        float out[2];
        lq_bnb4_dequant_byte(code, src[j], dq_absmax(q, start + 2 * j), out);
        if constexpr (BF16) {
            ((__nv_bfloat16 *)dst)[2 * j] = __float2bfloat16_rn(out[0]);
            ((__nv_bfloat16 *)dst)[2 * j + 1] = __float2bfloat16_rn(out[1]);
        } else {
            ((float *)dst)[2 * j] = out[0];
            ((float *)dst)[2 * j + 1] = out[1];
        }
    }
}

#define DQ_UNROLL 4 /* groups per thread */

/* groups groups of G = 4 (f32) or 8 (bf16) elements from element start (a multiple of G); src: the
 * groups' codes as uint16 (f32) or uint32 (bf16), the lower address the low byte; dst: float4 or
 * uint4 per group; bs, b2s: log2 of q.block and q.block2 (b2s unused without double quant).
 * ROWS: the output is rows of gpr groups with a row stride of ldg groups (group i goes to
 * (i / gpr) ldg + i % gpr: a 32-bit division, the group count checked to fit on the host), so
 * a row of W can be followed by other columns of the same operand; else group i goes to i. */
template <bool BF16, bool ROWS>
__global__ static void __launch_bounds__(DQ_THREADS)
    k_bnb4_hoist(const void *__restrict__ src, void *__restrict__ dst, int64_t groups, int64_t start, dq_state q,
                 int fp4, int bs, int b2s, uint32_t gpr, int64_t ldg) {
    constexpr int G = BF16 ? 8 : 4, U = DQ_UNROLL;
    __shared__ float code[16];
    dq_code_table(code, fp4);
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
                a[k] = lq_bnb4_nested_absmax(&c2, 0, s2[k], q.offset); /* c2 as a one-entry table */
            }
        }
#pragma unroll
        for (int k = 0; k < U; k++) {
            const int64_t i = g0 + (int64_t)k * blockDim.x;
            if (i >= groups) break;
            float o[G];
#pragma unroll
            for (int b = 0; b < G / 2; b++) lq_bnb4_dequant_byte(code, (uint8_t)(v[k] >> (8 * b)), a[k], o + 2 * b);
            int64_t di = i;
            if constexpr (ROWS) {
                const uint32_t i32 = (uint32_t)i, row = i32 / gpr;
                di = (int64_t)row * ldg + (i32 - row * gpr);
            }
            if constexpr (BF16) {
                uint32_t w[4];
#pragma unroll
                for (int b = 0; b < 4; b++)
                    w[b] = (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(o[2 * b])) |
                           ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(o[2 * b + 1])) << 16);
                ((uint4 *)dst)[di] = make_uint4(w[0], w[1], w[2], w[3]);
            } else {
                ((float4 *)dst)[di] = make_float4(o[0], o[1], o[2], o[3]);
            }
        }
    }
}

/* log2(v) for a power of two v > 0, else -1. */
static int pow2_shift(int64_t v) {
    if (v <= 0 || (v & (v - 1))) return -1;
    int k = 0;
    while (((int64_t)1 << k) < v) k++;
    return k;
}

/* Whether k_bnb4_hoist takes a call's whole groups of g elements (see above): state blocks that are
 * powers of two and multiples of g, start a multiple of g, codes g / 2- and the output 16-byte
 * aligned. */
static bool hoist_takes(const dq_state &q, int64_t start, const void *src, const void *dst, int64_t g) {
    return q.block % g == 0 && start % g == 0 && (uintptr_t)src % (uintptr_t)(g / 2) == 0 &&
           (uintptr_t)dst % 16 == 0 && pow2_shift(q.block) >= 0 && (q.absmax || pow2_shift(q.block2) >= 0);
}

/* k_bnb4_hoist's grid for `groups` groups (its grid-stride loop covers any rest). */
static int hoist_blocks(int64_t groups) {
    const int64_t per = (int64_t)DQ_THREADS * DQ_UNROLL, nb = (groups + per - 1) / per;
    return (int)(nb < INT_MAX ? nb : INT_MAX);
}

/* NF4 / FP4 of n elements from start into f32 or bf16: k_bnb4_hoist over the whole groups when it
 * can take them, k_bnb4_byte over the rest (see above). */
static lq_status bnb4_launch(const void *d_src, void *d_dst, bool bf16, int64_t n, int64_t start, const dq_state &q,
                             int fp4, cudaStream_t s, lq_err *err) {
    const int64_t g = bf16 ? 8 : 4;
    const int bs = pow2_shift(q.block), b2s = q.absmax ? 0 : pow2_shift(q.block2);
    const int64_t groups = hoist_takes(q, start, d_src, d_dst, g) ? n / g : 0;
    if (groups > 0) {
        const int blocks = hoist_blocks(groups);
        if (bf16)
            k_bnb4_hoist<true, false><<<blocks, DQ_THREADS, 0, s>>>(d_src, d_dst, groups, start, q, fp4, bs, b2s, 0, 0);
        else
            k_bnb4_hoist<false, false><<<blocks, DQ_THREADS, 0, s>>>(d_src, d_dst, groups, start, q, fp4, bs, b2s, 0,
                                                                     0);
        LQ_CU_LAUNCHED(err, bf16 ? "k_bnb4_hoist<bf16>" : "k_bnb4_hoist<f32>");
    }
    const int64_t done = groups * g, rest = n - done;
    if (rest <= 0) return LQ_OK;
    const uint8_t *src = (const uint8_t *)d_src + done / 2;
    void *dst = (char *)d_dst + done * (bf16 ? 2 : 4);
    if (bf16) k_bnb4_byte<true><<<dq_blocks(rest / 2), DQ_THREADS, 0, s>>>(src, dst, rest, start + done, q, fp4);
    else k_bnb4_byte<false><<<dq_blocks(rest / 2), DQ_THREADS, 0, s>>>(src, dst, rest, start + done, q, fp4);
    LQ_CU_LAUNCHED(err, bf16 ? "k_bnb4_byte<bf16>" : "k_bnb4_byte<f32>");
    return LQ_OK;
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

/* --- entry points ------------------------------------------------------------------------------ */

/* A one-thread-per-element kernel over the call's n elements (extra arguments after n). */
#define DQ_LAUNCH(kernel, T, ...)                                                                   \
    do {                                                                                            \
        kernel<<<dq_blocks(n), DQ_THREADS, 0, s>>>((const T *)d_src, d_dst, n, ##__VA_ARGS__);      \
        LQ_CU_LAUNCHED(err, #kernel);                                                               \
        return LQ_OK;                                                                               \
    } while (0)

/* The checks both calls share (what: "" or " to bf16", for the messages) and the kernels' copy of
 * the state. LQ_OK with nothing to do when n is 0: the caller returns then. */
static lq_status dq_args(const lq_dtype_traits *tr, const char *what, const void *d_src, const void *d_dst, int64_t n,
                         int64_t start, const lq_qstate *qs, dq_state *q, lq_err *err) {
    if (n < 0 || start < 0 || n % tr->block_size || start % tr->block_size)
        return LQ_ERR(err, LQ_ERR_ARG, "cuda dequant %s%s: n = %lld and start = %lld must be multiples of %lld",
                      tr->name, what, (long long)n, (long long)start, (long long)tr->block_size);
    if (n == 0) return LQ_OK;
    if (!d_src || !d_dst)
        return LQ_ERR(err, LQ_ERR_ARG, "cuda dequant %s%s: NULL %s", tr->name, what, d_src ? "dst" : "src");
    /* the ggml blocks start with f16 scales; packed nibbles (1-byte blocks) may start anywhere */
    if (tr->block_bytes % 2 == 0 && tr->block_size > 1 && ((uintptr_t)d_src & 1u))
        return LQ_ERR(err, LQ_ERR_ARG, "cuda dequant %s%s: blocks must be 2-byte aligned", tr->name, what);
    *q = dq_state{};
    if (!tr->needs_qstate) return LQ_OK;
    if (!qs) return LQ_ERR(err, LQ_ERR_ARG, "cuda dequant %s%s: needs its quant state", tr->name, what);
    if (qs->block <= 0)
        return LQ_ERR(err, LQ_ERR_ARG, "cuda dequant %s%s: quant state block = %lld", tr->name, what,
                      (long long)qs->block);
    if (!qs->absmax && !(qs->absmax_q && qs->absmax2 && qs->code2 && qs->block2 > 0))
        return LQ_ERR(err, LQ_ERR_ARG,
                      "cuda dequant %s%s: the quant state has neither absmax nor a whole double quantization "
                      "(absmax_q, absmax2, code2, block2 > 0)",
                      tr->name, what);
    q->absmax = qs->absmax;
    q->zero = qs->zero;
    q->absmax_q = qs->absmax_q;
    q->absmax2 = qs->absmax2;
    q->code2 = qs->code2;
    q->block = qs->block;
    q->block2 = qs->block2;
    q->offset = qs->offset;
    return LQ_OK;
}

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
    dq_state q;
    LQ_TRY(dq_args(tr, "", d_src, d_dst, n, start, qs, &q, err));
    if (n == 0) return LQ_OK;
    cudaStream_t s = (cudaStream_t)stream;
    switch (t) {
    case LQ_DTYPE_F32:
        LQ_CU(err, cudaMemcpyAsync(d_dst, d_src, (size_t)n * sizeof(float), cudaMemcpyDeviceToDevice, s));
        return LQ_OK;
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
    dq_state q;
    LQ_TRY(dq_args(tr, " to bf16", d_src, d_dst, n, start, qs, &q, err));
    if (n == 0) return LQ_OK;
    return bnb4_launch(d_src, d_dst, true, n, start, q, t == LQ_DTYPE_FP4 ? 1 : 0, (cudaStream_t)stream, err);
}

/* The vector kernel's conditions (hoist_takes) for a whole call of rows x K elements into rows of
 * stride ld (whole groups per row), and the 32-bit group index. */
extern "C" bool lq_cuda_dequant_bf16_rows_ok(lq_dtype t, const void *d_src, const void *d_dst, int64_t rows,
                                            int64_t K, int64_t ld, int64_t start, const lq_qstate *qs) {
    if ((t != LQ_DTYPE_NF4 && t != LQ_DTYPE_FP4) || !qs || rows <= 0 || K <= 0) return false;
    dq_state q{};
    q.absmax = qs->absmax;
    q.block = qs->block;
    q.block2 = qs->block2;
    return K % 8 == 0 && ld % 8 == 0 && ld >= K && hoist_takes(q, start, d_src, d_dst, 8) &&
           rows * (K / 8) <= (int64_t)UINT32_MAX;
}

extern "C" lq_status lq_cuda_dequant_bf16_rows(lq_dtype t, const void *d_src, uint16_t *d_dst, int64_t rows, int64_t K,
                                               int64_t ld, int64_t start, const lq_qstate *qs, void *stream,
                                               lq_err *err) {
    const lq_dtype_traits *tr = lq_dtype_info(t);
    if (!tr) return LQ_ERR(err, LQ_ERR_ARG, "cuda dequant to bf16 rows: unknown dtype %d", (int)t);
    if (!lq_cuda_dequant_bf16_rows_ok(t, d_src, d_dst, rows, K, ld, start, qs))
        return LQ_ERR(err, LQ_ERR_ARG,
                      "cuda dequant %s to bf16 rows: %lld x %lld into a row stride of %lld from %lld is not a call "
                      "the row kernel takes (lq_cuda_dequant_bf16_rows_ok)",
                      tr->name, (long long)rows, (long long)K, (long long)ld, (long long)start);
    dq_state q;
    LQ_TRY(dq_args(tr, " to bf16 rows", d_src, d_dst, rows * K, start, qs, &q, err));
    const int bs = pow2_shift(q.block), b2s = q.absmax ? 0 : pow2_shift(q.block2);
    const int64_t groups = rows * (K / 8);
    k_bnb4_hoist<true, true><<<hoist_blocks(groups), DQ_THREADS, 0, (cudaStream_t)stream>>>(
        d_src, d_dst, groups, start, q, t == LQ_DTYPE_FP4 ? 1 : 0, bs, b2s, (uint32_t)(K / 8), ld / 8);
    LQ_CU_LAUNCHED(err, "k_bnb4_hoist<bf16, rows>");
    return LQ_OK;
}
