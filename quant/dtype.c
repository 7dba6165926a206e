/* quant/dtype.c: the dtype-traits table and the scalar conversions behind it. */
#include <string.h>

#include "quant/quant.h"

static void f32_to_f32(const void *src, float *dst, int64_t n) { memmove(dst, src, (size_t)n * sizeof(float)); }
static void f32_from_f32(const float *src, void *dst, int64_t n) { memmove(dst, src, (size_t)n * sizeof(float)); }

static void f16_to_f32(const void *src, float *dst, int64_t n) {
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = lq_f16_to_f32(s[i]);
}
static void f16_from_f32(const float *src, void *dst, int64_t n) {
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = lq_f32_to_f16(src[i]);
}
static void bf16_to_f32(const void *src, float *dst, int64_t n) {
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = lq_bf16_to_f32(s[i]);
}
static void bf16_from_f32(const float *src, void *dst, int64_t n) {
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = lq_f32_to_bf16(src[i]);
}
static void i32_to_f32(const void *src, float *dst, int64_t n) {
    const int32_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = (float)s[i];
}
static void u8_to_f32(const void *src, float *dst, int64_t n) {
    const uint8_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = (float)s[i];
}

static const lq_dtype_traits traits[LQ_DTYPE_COUNT] = {
    [LQ_DTYPE_F32] = {"f32", 1, 4, true, f32_to_f32, f32_from_f32},
    [LQ_DTYPE_F16] = {"f16", 1, 2, true, f16_to_f32, f16_from_f32},
    [LQ_DTYPE_BF16] = {"bf16", 1, 2, true, bf16_to_f32, bf16_from_f32},
    [LQ_DTYPE_I32] = {"i32", 1, 4, false, i32_to_f32, NULL},
    [LQ_DTYPE_U8] = {"u8", 1, 1, false, u8_to_f32, NULL},
};

const lq_dtype_traits *lq_dtype_info(lq_dtype t) {
    if ((unsigned)t >= LQ_DTYPE_COUNT) return NULL;
    return &traits[t];
}

const char *lq_dtype_name(lq_dtype t) {
    const lq_dtype_traits *tr = lq_dtype_info(t);
    return tr ? tr->name : "invalid";
}

lq_dtype lq_dtype_from_name(const char *name) {
    for (int i = 0; i < LQ_DTYPE_COUNT; i++)
        if (name && strcmp(traits[i].name, name) == 0) return (lq_dtype)i;
    return LQ_DTYPE_COUNT;
}

size_t lq_dtype_bytes(lq_dtype t, int64_t n) {
    const lq_dtype_traits *tr = lq_dtype_info(t);
    if (!tr || n < 0 || n % tr->block_size != 0) return 0;
    return (size_t)(n / tr->block_size) * tr->block_bytes;
}
