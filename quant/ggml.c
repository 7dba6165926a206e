/* quant/ggml.c: ggml block formats: traits-table conversions, kernel-path choice, and the q8_0 / q4_0
 * quantizers exactly as ggml's quantize_row_q8_0_ref / quantize_row_q4_0_ref. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "quant/kernels_ggml.h"
#include "quant/quant_impl.h"

/* Block dequantizers over untyped pointers, so one table serves every format. */
static void deq_q4_0(const void *b, float *y) { lq_ggml_dequant_q4_0((const lq_block_q4_0 *)b, y); }
static void deq_q4_1(const void *b, float *y) { lq_ggml_dequant_q4_1((const lq_block_q4_1 *)b, y); }
static void deq_q5_0(const void *b, float *y) { lq_ggml_dequant_q5_0((const lq_block_q5_0 *)b, y); }
static void deq_q5_1(const void *b, float *y) { lq_ggml_dequant_q5_1((const lq_block_q5_1 *)b, y); }
static void deq_q8_0(const void *b, float *y) { lq_ggml_dequant_q8_0((const lq_block_q8_0 *)b, y); }
static void deq_q4_k(const void *b, float *y) { lq_ggml_dequant_q4_k((const lq_block_q4_k *)b, y); }
static void deq_q5_k(const void *b, float *y) { lq_ggml_dequant_q5_k((const lq_block_q5_k *)b, y); }
static void deq_q6_k(const void *b, float *y) { lq_ggml_dequant_q6_k((const lq_block_q6_k *)b, y); }

typedef struct ggml_fmt {
    lq_dtype type;
    int64_t block; /* elements per block */
    size_t bytes;  /* bytes per block */
    void (*deq)(const void *b, float *y);
} ggml_fmt;

static const ggml_fmt fmts[] = {
    {LQ_DTYPE_Q4_0, LQ_GGML_QK, sizeof(lq_block_q4_0), deq_q4_0},
    {LQ_DTYPE_Q4_1, LQ_GGML_QK, sizeof(lq_block_q4_1), deq_q4_1},
    {LQ_DTYPE_Q5_0, LQ_GGML_QK, sizeof(lq_block_q5_0), deq_q5_0},
    {LQ_DTYPE_Q5_1, LQ_GGML_QK, sizeof(lq_block_q5_1), deq_q5_1},
    {LQ_DTYPE_Q8_0, LQ_GGML_QK, sizeof(lq_block_q8_0), deq_q8_0},
    {LQ_DTYPE_Q4_K, LQ_GGML_QK_K, sizeof(lq_block_q4_k), deq_q4_k},
    {LQ_DTYPE_Q5_K, LQ_GGML_QK_K, sizeof(lq_block_q5_k), deq_q5_k},
    {LQ_DTYPE_Q6_K, LQ_GGML_QK_K, sizeof(lq_block_q6_k), deq_q6_k},
};

static const ggml_fmt *find_fmt(lq_dtype t) {
    for (size_t i = 0; i < sizeof fmts / sizeof fmts[0]; i++)
        if (fmts[i].type == t) return &fmts[i];
    return NULL;
}

/* Aligned blocks: the chosen path (a vector one if asked and present, else scalar). */
static void run_aligned(const ggml_fmt *f, const uint8_t *src, float *dst, int64_t nb, lq_ggml_path path) {
    if (path != LQ_GGML_PATH_SCALAR && lq_ggml_dequant_simd(f->type, src, dst, nb, path)) return;
    for (int64_t i = 0; i < nb; i++) f->deq(src + (size_t)i * f->bytes, dst + i * f->block);
}

/* Blocks at an odd address (a GGUF tensor slice need not be 2-byte aligned) go through an aligned
 * stack buffer a few blocks at a time, on the same path. */
static void run(const ggml_fmt *f, const void *src, float *dst, int64_t nb, lq_ggml_path path) {
    const uint8_t *s = src;
    if (((uintptr_t)s & 1u) == 0) {
        run_aligned(f, s, dst, nb, path);
        return;
    }
    union {
        uint16_t align;
        uint8_t bytes[4096];
    } tmp;
    const int64_t chunk = (int64_t)(sizeof tmp.bytes / f->bytes);
    for (int64_t i = 0; i < nb; i += chunk) {
        const int64_t k = nb - i < chunk ? nb - i : chunk;
        memcpy(tmp.bytes, s + (size_t)i * f->bytes, (size_t)k * f->bytes);
        run_aligned(f, tmp.bytes, dst + i * f->block, k, path);
    }
}

/* Traits-table entries: no quant state (the scales live in the blocks); n whole blocks (a partial
 * tail, which the table's contract excludes, is left untouched). */
#define GGML_TO_F32(name, dtype)                                                                 \
    void lq_##name##_to_f32(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start) { \
        (void)qs, (void)start;                                                                   \
        const ggml_fmt *f = find_fmt(dtype);                                                     \
        run(f, src, dst, n / f->block, LQ_GGML_PATH_AUTO);                                       \
    }
GGML_TO_F32(q4_0, LQ_DTYPE_Q4_0)
GGML_TO_F32(q4_1, LQ_DTYPE_Q4_1)
GGML_TO_F32(q5_0, LQ_DTYPE_Q5_0)
GGML_TO_F32(q5_1, LQ_DTYPE_Q5_1)
GGML_TO_F32(q8_0, LQ_DTYPE_Q8_0)
GGML_TO_F32(q4_k, LQ_DTYPE_Q4_K)
GGML_TO_F32(q5_k, LQ_DTYPE_Q5_K)
GGML_TO_F32(q6_k, LQ_DTYPE_Q6_K)
#undef GGML_TO_F32

bool lq_ggml_path_available(lq_dtype t, lq_ggml_path path) {
    if (!find_fmt(t)) return false;
    if (path == LQ_GGML_PATH_AUTO || path == LQ_GGML_PATH_SCALAR) return true;
    if (path != LQ_GGML_PATH_AVX2 && path != LQ_GGML_PATH_AVX512) return false;
    return lq_ggml_dequant_simd(t, NULL, NULL, 0, path); /* zero blocks: asks, converts nothing */
}

lq_status lq_ggml_dequantize(lq_dtype t, const void *src, int64_t n, float *dst, lq_ggml_path path, lq_err *err) {
    const ggml_fmt *f = find_fmt(t);
    if (!f) return LQ_ERR(err, LQ_ERR_ARG, "ggml dequantize: %s is not a ggml block type", lq_dtype_name(t));
    if (n < 0 || n % f->block != 0)
        return LQ_ERR(err, LQ_ERR_ARG, "ggml dequantize: %lld elements is not a whole number of %s blocks of %lld",
                      (long long)n, lq_dtype_name(t), (long long)f->block);
    if ((unsigned)path >= LQ_GGML_PATH_COUNT || !lq_ggml_path_available(t, path))
        return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "ggml dequantize: kernel path %d is not available for %s on this CPU",
                      (int)path, lq_dtype_name(t));
    if (n > 0 && (!src || !dst)) return LQ_ERR(err, LQ_ERR_ARG, "ggml dequantize: NULL buffer");
    run(f, src, dst, n / f->block, path);
    return LQ_OK;
}

/* --- quantization -------------------------------------------------------------------------------- */

/* float -> int8_t as ggml's `(int8_t)v` compiles on x86-64: a truncating conversion to 32 bits
 * (NaN and out-of-range give 0x80000000) whose low byte is kept. Only reachable out of range when
 * a block's scale is so small that its reciprocal overflows; the gguf package gives the same 0. */
static int8_t trunc_i8(float v) {
    if (!(v > -2147483648.0f && v < 2147483648.0f)) return 0;
    return (int8_t)(uint8_t)((uint32_t)(int32_t)v & 0xffu);
}

/* The first NaN / Inf among n floats, or -1. */
static int64_t first_nonfinite(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return i;
    return -1;
}

/* One q8_0 block: d = amax / 127, q = roundf(x / d) (half away from zero), d stored as f16. */
static void quant_block_q8_0(const float *x, lq_block_q8_0 *y) {
    float amax = 0.0f;
    for (int j = 0; j < LQ_GGML_QK; j++) {
        const float a = fabsf(x[j]);
        amax = amax > a ? amax : a;
    }
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y->d = lq_f32_to_f16(d);
    for (int j = 0; j < LQ_GGML_QK; j++) {
        const float x0 = x[j] * id; /* the product is rounded before roundf, as in ggml */
        y->qs[j] = trunc_i8(roundf(x0));
    }
}

/* One q4_0 block: d = max / -8 where max is the first element of largest magnitude (signed),
 * q = min(15, trunc(x / d + 8.5)). An all-zero block keeps max = +0, so d = -0 (f16 0x8000). */
static void quant_block_q4_0(const float *x, lq_block_q4_0 *y) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < LQ_GGML_QK; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y->d = lq_f32_to_f16(d);
    for (int j = 0; j < LQ_GGML_QK / 2; j++) {
        /* x * id is rounded before 8.5 is added (fusing them changes codes near ties: the "ties"
         * fixture has such a block; -std=c11 keeps gcc from contracting) */
        const float x0 = x[j] * id;
        const float x1 = x[j + LQ_GGML_QK / 2] * id;
        const int q0 = trunc_i8(x0 + 8.5f), q1 = trunc_i8(x1 + 8.5f);
        const uint8_t xi0 = (uint8_t)(q0 < 15 ? q0 : 15), xi1 = (uint8_t)(q1 < 15 ? q1 : 15);
        y->qs[j] = (uint8_t)(xi0 | (xi1 << 4));
    }
}

/* Validates everything first (dst is untouched on error); blocks are built aligned and copied. */
static lq_status quantize(lq_dtype t, const float *src, void *dst, int64_t n, int64_t start, lq_err *err) {
    const char *name = lq_dtype_name(t);
    if (t != LQ_DTYPE_Q8_0 && t != LQ_DTYPE_Q4_0)
        return LQ_ERR(err, find_fmt(t) ? LQ_ERR_UNSUPPORTED : LQ_ERR_ARG,
                      "ggml quantize: %s has no encoder here (q8_0 and q4_0 do)", name);
    if (n < 0 || n % LQ_GGML_QK != 0)
        return LQ_ERR(err, LQ_ERR_ARG, "ggml quantize %s: %lld elements is not a whole number of blocks of %d", name,
                      (long long)n, LQ_GGML_QK);
    if (n > 0 && (!src || !dst)) return LQ_ERR(err, LQ_ERR_ARG, "ggml quantize %s: NULL buffer", name);
    const int64_t bad = first_nonfinite(src, n);
    if (bad >= 0)
        return LQ_ERR(err, LQ_ERR_NUMERIC, "ggml quantize %s: element %lld (block %lld) is %s", name,
                      (long long)(start + bad), (long long)((start + bad) / LQ_GGML_QK),
                      isnan(src[bad]) ? "NaN" : "Inf");
    uint8_t *out = dst;
    for (int64_t i = 0; i < n / LQ_GGML_QK; i++) {
        const float *x = src + i * LQ_GGML_QK;
        if (t == LQ_DTYPE_Q8_0) {
            lq_block_q8_0 b;
            quant_block_q8_0(x, &b);
            memcpy(out + (size_t)i * sizeof b, &b, sizeof b);
        } else {
            lq_block_q4_0 b;
            quant_block_q4_0(x, &b);
            memcpy(out + (size_t)i * sizeof b, &b, sizeof b);
        }
    }
    return LQ_OK;
}

lq_status lq_ggml_quantize(lq_dtype t, const float *src, int64_t n, void *dst, lq_err *err) {
    return quantize(t, src, dst, n, 0, err);
}

lq_status lq_q8_0_from_f32(const float *src, void *dst, int64_t n, lq_qstate *qs, int64_t start, lq_err *err) {
    (void)qs;
    return quantize(LQ_DTYPE_Q8_0, src, dst, n, start, err);
}

lq_status lq_q4_0_from_f32(const float *src, void *dst, int64_t n, lq_qstate *qs, int64_t start, lq_err *err) {
    (void)qs;
    return quantize(LQ_DTYPE_Q4_0, src, dst, n, start, err);
}
