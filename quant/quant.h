/* quant/quant.h: number formats on plain buffers: the dtype-traits table and conversions. */
#ifndef LQ_QUANT_H
#define LQ_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "quant/half.h"

/* Every dtype loquat stores. Quantized block formats join this enum and the table in dtype.c;
 * nothing else in the code base switches on dtype to learn a size or a conversion. */
typedef enum lq_dtype {
    LQ_DTYPE_F32 = 0,
    LQ_DTYPE_F16,
    LQ_DTYPE_BF16,
    LQ_DTYPE_I32,
    LQ_DTYPE_U8,
    LQ_DTYPE_COUNT
} lq_dtype;

/* n counts elements and must be a multiple of block_size. */
typedef void (*lq_to_f32_fn)(const void *src, float *dst, int64_t n);
typedef void (*lq_from_f32_fn)(const float *src, void *dst, int64_t n);

typedef struct lq_dtype_traits {
    const char *name;
    int64_t block_size;  /* elements per block (1 for scalar types) */
    size_t block_bytes;  /* bytes per block */
    bool is_float;       /* a real-valued scalar type ops may read */
    lq_to_f32_fn to_f32;
    lq_from_f32_fn from_f32; /* NULL where the format has no direct encoder */
} lq_dtype_traits;

/* NULL for a value outside the enum. */
const lq_dtype_traits *lq_dtype_info(lq_dtype t);
const char *lq_dtype_name(lq_dtype t);
/* LQ_DTYPE_COUNT when the name is unknown. */
lq_dtype lq_dtype_from_name(const char *name);
/* Bytes for n elements (n a multiple of the block size), or 0 if it is not. */
size_t lq_dtype_bytes(lq_dtype t, int64_t n);

#endif
