/* quant/dtype.c: the dtype-traits table and the scalar conversions behind it. */
#include <string.h>

#include "quant/quant_impl.h"

/* The float formats carry NaN and Inf through unchanged: they are storage, not quantizers. */
static void f32_to_f32(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start) {
    (void)qs, (void)start;
    memmove(dst, src, (size_t)n * sizeof(float));
}
static lq_status f32_from_f32(const float *src, void *dst, int64_t n, lq_qstate *qs, int64_t start, lq_err *err) {
    (void)qs, (void)start, (void)err;
    memmove(dst, src, (size_t)n * sizeof(float));
    return LQ_OK;
}
static void f16_to_f32(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start) {
    (void)qs, (void)start;
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = lq_f16_to_f32(s[i]);
}
static lq_status f16_from_f32(const float *src, void *dst, int64_t n, lq_qstate *qs, int64_t start, lq_err *err) {
    (void)qs, (void)start, (void)err;
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = lq_f32_to_f16(src[i]);
    return LQ_OK;
}
static void bf16_to_f32(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start) {
    (void)qs, (void)start;
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = lq_bf16_to_f32(s[i]);
}
static lq_status bf16_from_f32(const float *src, void *dst, int64_t n, lq_qstate *qs, int64_t start, lq_err *err) {
    (void)qs, (void)start, (void)err;
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = lq_f32_to_bf16(src[i]);
    return LQ_OK;
}
static void i32_to_f32(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start) {
    (void)qs, (void)start;
    const int32_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = (float)s[i];
}
static void u8_to_f32(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start) {
    (void)qs, (void)start;
    const uint8_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = (float)s[i];
}

/* Rows of the quantized formats point at functions in their own files (see quant_impl.h). */
static const lq_dtype_traits traits[LQ_DTYPE_COUNT] = {
    [LQ_DTYPE_F32] = {"f32", 1, 4, true, false, f32_to_f32, f32_from_f32},
    [LQ_DTYPE_F16] = {"f16", 1, 2, true, false, f16_to_f32, f16_from_f32},
    [LQ_DTYPE_BF16] = {"bf16", 1, 2, true, false, bf16_to_f32, bf16_from_f32},
    [LQ_DTYPE_I32] = {"i32", 1, 4, false, false, i32_to_f32, NULL},
    [LQ_DTYPE_U8] = {"u8", 1, 1, false, false, u8_to_f32, NULL},
    /* integer affine (group: affine) */
    [LQ_DTYPE_I8] = {"i8", 1, 1, false, true, lq_i8_to_f32, lq_i8_from_f32},
    [LQ_DTYPE_I4] = {"i4", 2, 1, false, true, lq_i4_to_f32, lq_i4_from_f32},
    /* bitsandbytes 4-bit (group: bnb) */
    [LQ_DTYPE_NF4] = {"nf4", 2, 1, false, true, lq_nf4_to_f32, lq_nf4_from_f32},
    [LQ_DTYPE_FP4] = {"fp4", 2, 1, false, true, lq_fp4_to_f32, lq_fp4_from_f32},
    /* ggml blocks (group: ggml) */
    [LQ_DTYPE_Q4_0] = {"q4_0", 32, 18, false, false, lq_q4_0_to_f32, lq_q4_0_from_f32},
    [LQ_DTYPE_Q4_1] = {"q4_1", 32, 20, false, false, lq_q4_1_to_f32, NULL},
    [LQ_DTYPE_Q5_0] = {"q5_0", 32, 22, false, false, lq_q5_0_to_f32, NULL},
    [LQ_DTYPE_Q5_1] = {"q5_1", 32, 24, false, false, lq_q5_1_to_f32, NULL},
    [LQ_DTYPE_Q8_0] = {"q8_0", 32, 34, false, false, lq_q8_0_to_f32, lq_q8_0_from_f32},
    [LQ_DTYPE_Q4_K] = {"q4_K", 256, 144, false, false, lq_q4_k_to_f32, NULL},
    [LQ_DTYPE_Q5_K] = {"q5_K", 256, 176, false, false, lq_q5_k_to_f32, NULL},
    [LQ_DTYPE_Q6_K] = {"q6_K", 256, 210, false, false, lq_q6_k_to_f32, NULL},
};

const lq_dtype_traits *lq_dtype_info(lq_dtype t) {
    if ((unsigned)t >= LQ_DTYPE_COUNT || !traits[t].name) return NULL;
    return &traits[t];
}

const char *lq_dtype_name(lq_dtype t) {
    const lq_dtype_traits *tr = lq_dtype_info(t);
    return tr ? tr->name : "invalid";
}

lq_dtype lq_dtype_from_name(const char *name) {
    for (int i = 0; i < LQ_DTYPE_COUNT; i++)
        if (name && traits[i].name && strcmp(traits[i].name, name) == 0) return (lq_dtype)i;
    return LQ_DTYPE_COUNT;
}

size_t lq_dtype_bytes(lq_dtype t, int64_t n) {
    const lq_dtype_traits *tr = lq_dtype_info(t);
    if (!tr || n < 0 || n % tr->block_size != 0) return 0;
    return (size_t)(n / tr->block_size) * tr->block_bytes;
}
