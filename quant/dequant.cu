/* quant/dequant.cu: CUDA dequantization kernels for the traits-table formats, on quant/kernels_*.h. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "quant/dequant_cuda.h"
}
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
 * and 256 are; bnb4_launch checks): 64-bit divisions are long instruction sequences on the GPU and
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
 * applies, the per-byte kernel over the rest. */
static lq_status bnb4_launch(const void *d_src, void *d_dst, bool bf16, int64_t n, int64_t start, const dq_state &q,
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
