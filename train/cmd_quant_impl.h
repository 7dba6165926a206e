/* train/cmd_quant_impl.h: helpers shared by the quantize and dequantize commands. */
#ifndef LQ_CMD_QUANT_IMPL_H
#define LQ_CMD_QUANT_IMPL_H

#include <stdbool.h>
#include <stdint.h>

#include "io/io.h"

/* The file layouts both commands know (documented in train/cmd_quantize.c):
 *   bitsandbytes 4-bit, as transformers saves a Linear4bit weight W:
 *     W (U8 [(n+1)/2, 1] packed codes), W.absmax, W.quant_map, [W.nested_absmax,
 *     W.nested_quant_map,] W.quant_state.bitsandbytes__nf4|fp4 (U8: JSON)
 *   loquat integer affine:
 *     W (I8 [rows, cols] for int8; U8 [(n+1)/2] for int4, element 2j in the low nibble),
 *     W.scale (F32), [W.zero_point (I8),] W.quant_state.loquat__int8|int4 (U8: JSON) */
#define QS_INFIX ".quant_state."
#define QS_BNB_PREFIX "bitsandbytes__"
#define QS_LOQUAT_PREFIX "loquat__"
#define QS_MAX_JSON 4096

/* Tensors to write: names and (optionally) data owned here. */
typedef struct qout {
    lq_st_wtensor *t;
    int64_t n, cap;
    void **owned;
    int64_t n_owned, cap_owned;
    bool failed; /* an allocation failed */
} qout;

/* Adds a tensor named prefix + suffix (copied). data is borrowed, or owned (freed by qout_free)
 * when own is true. Returns false (and frees an owned data) when out of memory. */
bool qout_add(qout *o, const char *prefix, const char *suffix, lq_st_dtype dtype, int ndim, const int64_t *shape,
              const void *data, bool own);
void qout_free(qout *o);

/* A growing text buffer (for the quant-state JSON and --json output). */
typedef struct jbuf {
    char *p;
    size_t n, cap;
    bool failed;
} jbuf;
void jb_printf(jbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A JSON string literal. */
void jb_str(jbuf *b, const char *s);
/* A float32 value as Python's json.dumps writes float(x) (shortest repr; NaN/Inf as null). */
void jb_pyfloat(jbuf *b, double v);

/* "float32" / "float16" / "bfloat16" (torch's names, as bitsandbytes records them) for a
 * safetensors float dtype, and back (LQ_ST_DTYPE_COUNT when unknown). */
const char *qs_torch_dtype_name(lq_st_dtype t);
lq_st_dtype qs_dtype_from_torch_name(const char *s);

/* Converts n floats to dtype (F32, F16 or BF16; round to nearest even) into a new buffer. */
void *qs_from_f32(const float *x, int64_t n, lq_st_dtype dtype);

/* Error accumulation for the per-tensor and overall report. */
typedef struct qstats {
    double sum_sq_err, sum_sq_ref, max_abs;
    int64_t n;
} qstats;
void qstats_add(qstats *s, const float *ref, const float *got, int64_t n);
double qstats_rmse(const qstats *s);
/* 10 log10(signal / noise); +inf when the error is zero. */
double qstats_sqnr_db(const qstats *s);

#endif
