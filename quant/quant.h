/* quant/quant.h: number formats on plain buffers: the dtype-traits table and conversions. */
#ifndef LQ_QUANT_H
#define LQ_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/status.h"
#include "quant/half.h"

/* Every dtype loquat stores. Quantized block formats join this enum and the table in dtype.c;
 * nothing else in the code base switches on dtype to learn a size or a conversion. */
typedef enum lq_dtype {
    LQ_DTYPE_F32 = 0,
    LQ_DTYPE_F16,
    LQ_DTYPE_BF16,
    LQ_DTYPE_I32,
    LQ_DTYPE_U8,
    /* integer affine codes; scale (and zero point) per block in an lq_qstate */
    LQ_DTYPE_I8,   /* one int8 per element */
    LQ_DTYPE_I4,   /* two signed 4-bit codes per byte, element 2j in the low nibble */
    /* bitsandbytes 4-bit: two codes per byte, element 2j in the HIGH nibble; absmax per block
     * (optionally double-quantized) in an lq_qstate */
    LQ_DTYPE_NF4,
    LQ_DTYPE_FP4,
    /* ggml blocks: self-contained (scales inside the block), as in GGUF files */
    LQ_DTYPE_Q4_0,
    LQ_DTYPE_Q4_1,
    LQ_DTYPE_Q5_0,
    LQ_DTYPE_Q5_1,
    LQ_DTYPE_Q8_0,
    LQ_DTYPE_Q4_K,
    LQ_DTYPE_Q5_K,
    LQ_DTYPE_Q6_K,
    LQ_DTYPE_COUNT
} lq_dtype;

/* What a format keeps beside its codes: one scale per block of `block` consecutive elements
 * (of the flattened tensor; rows are whole blocks). bitsandbytes calls the scale absmax and may
 * double-quantize it: absmax[i] = code2[absmax_q[i]] * absmax2[i / block2] + offset. */
typedef struct lq_qstate {
    int64_t block;    /* elements per scale */
    float *absmax;    /* per block: bnb absmax or affine scale; NULL when double-quantized */
    float *zero;      /* affine zero point per block (in code units); NULL = symmetric */
    int bits;         /* affine code width, 2..8 */
    uint8_t *absmax_q;   /* double quantization: per block 8-bit code of absmax - offset */
    float *absmax2;      /* per nested block */
    const float *code2;  /* 256-entry map the nested codes index */
    int64_t block2;      /* nested block size (bitsandbytes: 256) */
    float offset;        /* mean of absmax subtracted before nested quantization */
    bool device;         /* the arrays are device memory (lq_tensor_to_device), code2 a device copy the
                            state owns; lq_qstate_free releases them with lq_cuda_free */
} lq_qstate;

/* Convert n elements starting at element `start` of a tensor (src points at that element's
 * bytes; start and n are multiples of the block size, and of 2 for packed nibbles). qs is the
 * tensor's state, NULL for formats that need none. from_f32 writes codes and, where the format
 * keeps them, the scales into qs; it refuses NaN / Inf input with a message. */
typedef void (*lq_to_f32_fn)(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start);
typedef lq_status (*lq_from_f32_fn)(const float *src, void *dst, int64_t n, lq_qstate *qs, int64_t start,
                                    lq_err *err);

typedef struct lq_dtype_traits {
    const char *name;
    int64_t block_size;  /* elements per block (1 for scalar types) */
    size_t block_bytes;  /* bytes per block */
    bool is_float;       /* a real-valued scalar type ops may read */
    bool needs_qstate;   /* scales live in an lq_qstate beside the codes */
    lq_to_f32_fn to_f32;
    lq_from_f32_fn from_f32; /* NULL where the format has no direct encoder */
} lq_dtype_traits;

/* NULL for a value outside the enum (or a format this build has no row for). */
const lq_dtype_traits *lq_dtype_info(lq_dtype t);
const char *lq_dtype_name(lq_dtype t);
/* LQ_DTYPE_COUNT when the name is unknown. */
lq_dtype lq_dtype_from_name(const char *name);
/* Bytes for n elements (n a multiple of the block size), or 0 if it is not. */
size_t lq_dtype_bytes(lq_dtype t, int64_t n);

/* --- quant state ------------------------------------------------------------------------------ */

/* Allocates a state for n_blocks blocks of `block` elements: absmax (or, with double_quant,
 * absmax_q and absmax2 for ceil(n_blocks / block2) nested blocks), zero when asked. All zeroed.
 * NULL when out of memory. */
lq_qstate *lq_qstate_alloc(int64_t n_blocks, int64_t block, bool zero, bool double_quant, int64_t block2);
void lq_qstate_free(lq_qstate *qs);
/* The scale of block i, undoing double quantization when there is one. */
float lq_qstate_absmax(const lq_qstate *qs, int64_t i);

/* --- CPU features, for the vectorized kernels (checked at run time) ---------------------------- */

typedef struct lq_cpu_features {
    bool avx2, fma, f16c, avx512f, avx512bw;
} lq_cpu_features;
lq_cpu_features lq_cpu_detect(void);

/* --- bitsandbytes 4-bit: NF4 and FP4 (group: bnb) -------------------------------------------- */

#define LQ_BNB_BLOCK2 256 /* bitsandbytes' block for the nested (double) quantization of absmax */
/* The 16 values a 4-bit code stands for (index = code), exactly as bitsandbytes has them. */
const float *lq_nf4_code(void);
const float *lq_fp4_code(void);
/* bitsandbytes' signed 8-bit dynamic map (256 values) used for the nested quantization. */
const float *lq_bnb_dynamic_map(void);
/* Quantizes n floats to NF4 or FP4 byte-for-byte as bitsandbytes' quantize_4bit (float32 input):
 * codes gets (n + 1) / 2 bytes, *qs a new state (free with lq_qstate_free) with absmax per block
 * of block_size (32..4096, a power of two) or its double quantization. NaN / Inf is an error. */
lq_status lq_bnb4_quantize(lq_dtype type, const float *x, int64_t n, int64_t block_size, bool double_quant,
                           uint8_t *codes, lq_qstate **qs, lq_err *err);
/* Inverse: n floats from codes and state (as bitsandbytes' dequantize_4bit). */
void lq_bnb4_dequantize(lq_dtype type, const uint8_t *codes, int64_t n, const lq_qstate *qs, float *y);
/* The same quantization without allocation, for callers that own the buffers (fake-quant nodes,
 * one row block at a time): codes gets (n + 1) / 2 bytes, absmax ceil(n / block_size) floats. The
 * n elements are quantized as bnb quantizes a whole tensor of n, so a last partial block follows
 * bnb's partial-block rule. For double quantization follow with lq_bnb_double_quant and
 * dequantize through an lq_qstate (it may live on the stack) that points at the buffers. */
lq_status lq_bnb4_quantize_into(lq_dtype type, const float *x, int64_t n, int64_t block_size, uint8_t *codes,
                                float *absmax, lq_err *err);
/* bitsandbytes' double quantization of n_blocks absmax values (compress_statistics=True), without
 * allocation: *offset = their float32 mean (torch's CPU sum on one thread, exact for fewer than
 * 32768 values), absmax_q (n_blocks bytes) and absmax2 (ceil(n_blocks / LQ_BNB_BLOCK2) floats) =
 * quantize_blockwise(absmax - offset, blocksize=256) over lq_bnb_dynamic_map(). */
void lq_bnb_double_quant(const float *absmax, int64_t n_blocks, uint8_t *absmax_q, float *absmax2, float *offset);

/* --- integer affine (group: affine) ----------------------------------------------------------- */

/* torch's quant_min / quant_max for a bit width: [-2^(b-1), 2^(b-1) - 1] signed (symmetric),
 * [0, 2^b - 1] unsigned (asymmetric). */
void lq_affine_range(int bits, bool symmetric, int32_t *qmin, int32_t *qmax);
/* Scale and zero point for an observed [min, max], as torch.ao's MinMaxObserver computes them
 * (range widened to include 0; symmetric uses max(|min|, |max|); scale floored at float eps). */
void lq_affine_qparams(float min, float max, int bits, bool symmetric, float *scale, int32_t *zero_point);
/* The same for an explicit code range [qmin, qmax] (torch's quant_min / quant_max). Symmetric uses
 * sym_zero_point as the zero point: 0 for signed ranges; torch's symmetric quint8 uses 128 for the
 * default [0, 255] and (qmin + qmax) / 2 (floor) for a customized range. An observer that saw nothing
 * (min = +inf, max = -inf) or min > max gives scale 1 and zero point 0, as torch's default. */
void lq_affine_qparams_q(float min, float max, int32_t qmin, int32_t qmax, bool symmetric, int32_t sym_zero_point,
                         float *scale, int32_t *zero_point);

/* --- observers, calibration and per-layer specs (group: affine; quant/observer.c, quant/spec.c) --- */

/* How an observer turns the values it sees into a clipping range [min, max] per slot. */
typedef enum lq_observer_kind {
    LQ_OBSERVER_MINMAX = 0, /* running min / max: torch MinMaxObserver / PerChannelMinMaxObserver */
    LQ_OBSERVER_MOVING_AVG, /* first batch sets min / max, then min += c (batch min - min): torch's
                             * MovingAverage(PerChannel)MinMaxObserver, c = param (default 0.01) */
    LQ_OBSERVER_PERCENTILE, /* per batch: the p-th percentile (p = param, default 99.99, linear
                             * interpolation as numpy / torch.quantile) of |x| when symmetric, the
                             * (100 - p)-th and p-th of x when not; kept as the mean over batches */
    LQ_OBSERVER_MSE,        /* per batch: of the ranges r [min, max], r = k / N for k = 1..N (N = param,
                             * default 100), the one whose quantize-dequantize has the least squared
                             * error (ties go to the larger r); kept as the mean over batches */
    LQ_OBSERVER_KIND_COUNT
} lq_observer_kind;

/* Which elements share a scale. Slots are numbered: tensor 1; channel c = index along `axis`;
 * group = consecutive runs of group_size elements of the flattened tensor (rows are whole groups),
 * i.e. the lq_qstate block order. Token (one scale per row, computed per batch) is dynamic
 * quantization: specs carry it, observers refuse it. */
typedef enum lq_granularity {
    LQ_GRAN_TENSOR = 0,
    LQ_GRAN_CHANNEL,
    LQ_GRAN_GROUP,
    LQ_GRAN_TOKEN,
    LQ_GRAN_COUNT
} lq_granularity;

typedef struct lq_observer_config {
    lq_observer_kind kind;
    int bits;                   /* 2..8; the range is lq_affine_range(bits, symmetric) */
    bool symmetric;
    lq_granularity granularity;
    int axis;                   /* channel axis, negative counts from the end */
    int64_t group_size;         /* elements per group along the last dim (must divide it) */
    double param;               /* the kind's parameter (see lq_observer_kind); 0 = its default */
    int64_t freeze_step;        /* > 0: lq_observer_step(obs, s) with s >= freeze_step freezes it */
    int n_threads;              /* OpenMP threads over slots (results do not depend on it); <= 1 serial */
} lq_observer_config;

/* Observer state: fields are read-only for callers; use the functions. Percentile and MSE
 * observers keep a scratch copy of the input (grown with realloc in lq_observer_update: a
 * calibration path, not a training step). */
typedef struct lq_observer {
    lq_observer_config cfg;
    int32_t qmin, qmax;
    int64_t n_slots;       /* scales this observer produces; 0 until the first update */
    int64_t n_batches;     /* updates taken into account */
    bool frozen;           /* updates are ignored */
    float *lo, *hi;        /* per slot: the range the qparams come from */
    float *cur_lo, *cur_hi; /* per slot: this batch's range */
    double *sum_lo, *sum_hi; /* percentile / MSE: sum of the per-batch ranges */
    float *scratch;
    int64_t scratch_cap;
} lq_observer;

/* A config with the defaults: min-max, 8 bits, symmetric, per tensor. */
lq_observer_config lq_observer_config_default(void);
/* Checks cfg (bits 2..8, kind / granularity, group size, param range) and sets *obs up. On failure
 * *obs owns nothing. Free with lq_observer_free. */
lq_status lq_observer_init(lq_observer *obs, const lq_observer_config *cfg, lq_err *err);
void lq_observer_free(lq_observer *obs);
/* Forgets everything seen (and unfreezes); keeps the config. */
void lq_observer_reset(lq_observer *obs);
/* Observes x: contiguous float32 with ndim (0..4) dims `shape`, PyTorch order. NaN / Inf is an
 * error naming the element; so is a group size that does not divide the last dim, or a channel /
 * group count different from earlier updates. A frozen observer returns LQ_OK and ignores x. */
lq_status lq_observer_update(lq_observer *obs, const float *x, int ndim, const int64_t *shape, lq_err *err);
/* Freezes the observer now, or (lq_observer_step) once step >= cfg.freeze_step when that is > 0. */
void lq_observer_freeze(lq_observer *obs);
void lq_observer_step(lq_observer *obs, int64_t step);
/* Number of scales / zero points lq_observer_qparams writes (0 before the first update). */
int64_t lq_observer_n_qparams(const lq_observer *obs);
/* Scale and zero point per slot (lq_affine_qparams of each slot's range); LQ_ERR_STATE before any update. */
lq_status lq_observer_qparams(const lq_observer *obs, float *scale, int32_t *zero_point, lq_err *err);
/* The per-slot range the qparams come from (either pointer may be NULL); LQ_ERR_STATE before any update. */
lq_status lq_observer_range(const lq_observer *obs, float *min, float *max, lq_err *err);

/* A per-layer quantization spec: what a config says about one tensor. */
typedef struct lq_qspec {
    bool enabled;               /* false: the tensor stays float */
    int bits;                   /* 2..8 */
    bool symmetric;
    lq_granularity granularity;
    int axis;                   /* channel axis (per channel) */
    int64_t group_size;         /* per group */
    lq_observer_kind observer;
    double observer_param;      /* 0 = the kind's default */
    bool learnable;             /* scale (and zero point) trained with LSQ */
} lq_qspec;

/* Parses the compact form: "float", or "int<b>" followed by ':'-separated tokens in any order:
 *   sym | asym            (default sym)
 *   tensor | channel | channel<axis> | g<size> | token    (default tensor; channel = axis 0)
 *   minmax | movavg[=c] | pct[=p] | mse[=n]              (default minmax)
 *   lsq                   (learnable)
 * e.g. "int4:g32:sym", "int8:channel", "int8:asym:movavg=0.05:token", "float". Errors name the bad token. */
lq_status lq_qspec_parse(const char *s, lq_qspec *out, lq_err *err);
/* Writes the compact form of *spec (parseable back to the same spec); returns snprintf's count. */
int lq_qspec_format(const lq_qspec *spec, char *buf, size_t n);
/* Checks a spec's fields (bits, granularity, group size, observer and its parameter). */
lq_status lq_qspec_validate(const lq_qspec *spec, lq_err *err);
/* The observer config a spec asks for. */
lq_observer_config lq_qspec_observer_config(const lq_qspec *spec);

/* Ordered (glob pattern, spec) rules. A tensor name gets the spec of the LAST rule whose pattern
 * matches it (fnmatch(3), no flags: '*' also matches dots), so write the general rule first and the
 * exceptions after it: "*_proj.weight" int4:g32, then "lm_head.weight" int8:channel, then
 * "*norm*" float. A name no rule matches stays float. */
typedef struct lq_qrules lq_qrules;
lq_status lq_qrules_init(lq_qrules **rules, lq_err *err);
void lq_qrules_free(lq_qrules *rules);
lq_status lq_qrules_add(lq_qrules *rules, const char *pattern, const lq_qspec *spec, lq_err *err);
/* As lq_qrules_add with the spec in compact form; errors name the pattern and the bad token. */
lq_status lq_qrules_add_str(lq_qrules *rules, const char *pattern, const char *spec, lq_err *err);
int lq_qrules_count(const lq_qrules *rules);
/* The spec for name; returns the index of the deciding rule, -1 when none matched (spec disabled). */
int lq_qrules_resolve(const lq_qrules *rules, const char *name, lq_qspec *spec);

/* Static post-training calibration: one observer per tensor name, made on first sight from the
 * spec the rules give that name (names resolved to float are remembered and skipped). The caller
 * runs N batches through its model and feeds each weight / activation it wants quantized. */
typedef struct lq_calibrator lq_calibrator;
/* rules is borrowed (must outlive the calibrator); n_threads goes to every observer. */
lq_status lq_calibrator_init(lq_calibrator **cal, const lq_qrules *rules, int n_threads, lq_err *err);
void lq_calibrator_free(lq_calibrator *cal);
lq_status lq_calibrator_observe(lq_calibrator *cal, const char *name, const float *x, int ndim, const int64_t *shape,
                                lq_err *err);
/* Freezes every observer (a QAT trainer calls it at its freeze step). */
void lq_calibrator_freeze(lq_calibrator *cal);
/* Observed (quantized) names, in first-seen order. */
int lq_calibrator_count(const lq_calibrator *cal);
const char *lq_calibrator_name(const lq_calibrator *cal, int i);
/* The observer of name, NULL when the name was not seen or stays float. */
const lq_observer *lq_calibrator_find(const lq_calibrator *cal, const char *name);
/* Scale and zero point of name into arrays of capacity cap (*n gets the count); LQ_ERR_ARG when the
 * name is unknown or stays float, LQ_ERR_SHAPE when cap is too small. */
lq_status lq_calibrator_qparams(const lq_calibrator *cal, const char *name, float *scale, int32_t *zero_point,
                                int64_t cap, int64_t *n, lq_err *err);

/* --- integer affine quantization on buffers (group: affine; quant/affine.c) ------------------- */

/* Which (scale, zero point) each element of a contiguous buffer (PyTorch order, up to 4 dims)
 * uses, and the code range. Slots as lq_granularity numbers them: TENSOR one; CHANNEL one per
 * index along axis (any axis, negative counts from the end); GROUP one per `group` consecutive
 * elements of the last dim (group divides it: scales (rows, cols / group)); TOKEN one per row of
 * the last dim. The arithmetic is torch.fake_quantize_per_tensor_affine / _per_channel_affine's in
 * float32 (quant/kernels_affine.h): q = clamp(zp + nearbyint(x * (1.0f / scale)), qmin, qmax),
 * ties to even, y = (q - zp) * scale. */
typedef struct lq_affine_scheme {
    int32_t qmin, qmax;   /* code range, qmin < qmax, both within [-32768, 65535] (lq_affine_range) */
    lq_granularity gran;
    int axis;             /* CHANNEL */
    int64_t group;        /* GROUP */
} lq_affine_scheme;

/* A scheme for a bit width (2..16) and lq_affine_range's range. */
lq_affine_scheme lq_affine_scheme_make(int bits, bool symmetric, lq_granularity gran, int axis, int64_t group);
/* Checks the scheme against a shape and gives the number of slots (scales). Errors name the
 * problem: bad range, axis out of range, a group that does not divide the last dim. */
lq_status lq_affine_check(const lq_affine_scheme *s, int ndim, const int64_t *shape, int64_t *n_slots, lq_err *err);
/* The slot of every element is (i / inner) % n_slots: inner = elements per slot run. */
int64_t lq_affine_inner(const lq_affine_scheme *s, int ndim, const int64_t *shape);

/* Quantizes x to codes (int32, any range), dequantizes codes, or fake-quantizes x (quantize then
 * dequantize, y may alias x) with per-slot scales and zero points (zero_point NULL = 0). mask,
 * when not NULL, gets 1 where the rounded, unclamped code lay inside [qmin, qmax] (torch's
 * fake-quantize gradient mask). Scales must be finite and > 0, zero points inside [qmin, qmax];
 * NaN / Inf in x is an error naming the first such element. n_threads <= 1 runs serially; results
 * do not depend on it. */
lq_status lq_affine_quantize(const lq_affine_scheme *s, int ndim, const int64_t *shape, const float *x,
                             const float *scale, const int32_t *zero_point, int32_t *codes, int n_threads, lq_err *err);
lq_status lq_affine_dequantize(const lq_affine_scheme *s, int ndim, const int64_t *shape, const int32_t *codes,
                               const float *scale, const int32_t *zero_point, float *y, int n_threads, lq_err *err);
lq_status lq_affine_fake_quantize(const lq_affine_scheme *s, int ndim, const int64_t *shape, const float *x,
                                  const float *scale, const int32_t *zero_point, float *y, uint8_t *mask,
                                  int n_threads, lq_err *err);

/* Dynamic per-token quantization (torchao's QAT recipe for activations): for each of `rows` rows
 * of `cols` values, a scale and zero point from the row's own min / max, then fake-quantization
 * with them on the signed range [-2^(bits-1), 2^(bits-1) - 1] (bits 2..8). Asymmetric follows
 * torchao's _choose_qparams_per_token_asymmetric (XNNPACK's rule): with lo = min(min, 0),
 * hi = max(max, 0), scale = max((hi - lo) / (qmax - qmin), eps), and the zero point taken from
 * whichever end has the smaller error, clamped to the range and rounded half to even. Symmetric
 * follows torchao's choose_qparams_affine SYMMETRIC: scale = max(max(-lo, hi) / ((qmax - qmin) / 2),
 * eps), zero point 0. eps = FLT_EPSILON. scale / zero_point (may be NULL) get the per-row values.
 * NaN / Inf is an error naming the element. */
lq_status lq_affine_fake_quantize_dynamic(const float *x, int64_t rows, int64_t cols, int bits, bool symmetric, float *y,
                                          float *scale, float *zero_point, int n_threads, lq_err *err);
/* One row's dynamic scale and zero point (as above) for a row whose min and max are given. */
void lq_affine_token_qparams(float min, float max, int32_t qmin, int32_t qmax, bool symmetric, float *scale,
                             float *zero_point);

/* The I8 / I4 traits rows keep signed codes: [-2^(b-1), 2^(b-1) - 1] with b = qs->bits (0 = 8 for
 * I8, 4 for I4); to_f32 = (code - zero) * scale with qs->absmax[block] the scale and qs->zero
 * (NULL = 0) the zero point in those signed code units. An asymmetric zero point z from
 * lq_affine_qparams (unsigned range [0, 2^b - 1]) is stored as z - 2^(b-1): codes shift by the
 * same amount and dequantize to the same values. from_f32 uses the scales already in qs. */

/* --- integer linear (group: affine; quant/intgemm.c) ---------------------------------------- */

/* The integer matrix product behind a converted QAT layer: for x codes (M, K) and weight codes
 * (N, K), both given centred (code - zero point, so within [-255, 255] for up to 8 bits),
 *   y[m, n] = bias[n] + sum over groups g of  x_scale[m] * w_scale[n, g] * acc[m, n, g],
 *   acc[m, n, g] = sum over k in group g (K / group consecutive columns) of xd[m, k] * wd[n, k]
 * with acc exact in int32 (group * 255^2 < 2^31: group <= 32768). bias may be NULL. Rows of y run
 * in parallel; each y element is summed in a fixed order, so results do not depend on n_threads. */
void lq_int_linear(int64_t M, int64_t N, int64_t K, int64_t group, const int16_t *xd, const float *x_scale,
                   const int16_t *wd, const float *w_scale, const float *bias, float *y, int n_threads);

/* --- ggml blocks (group: ggml) ---------------------------------------------------------------- */

/* The ggml dtypes' traits rows (q4_0 .. q6_K) dequantize bit for bit as ggml's dequantize_row_*
 * (and the gguf package); q8_0 and q4_0 also quantize byte for byte as quantize_row_*_ref. The
 * functions below add a choice of kernel path (tests and benchmarks compare them) and errors. */
typedef enum lq_ggml_path {
    LQ_GGML_PATH_AUTO = 0, /* the best this CPU has for the type */
    LQ_GGML_PATH_SCALAR,
    LQ_GGML_PATH_AVX2,     /* q4_0, q8_0, q4_K, q6_K */
    LQ_GGML_PATH_AVX512,   /* the same types, AVX-512F */
    LQ_GGML_PATH_COUNT
} lq_ggml_path;
/* Whether path can run on this CPU for t (AUTO and SCALAR can for every ggml block type). */
bool lq_ggml_path_available(lq_dtype t, lq_ggml_path path);
/* Dequantizes n elements (whole blocks) from src (any alignment) into dst. LQ_ERR_ARG for a type
 * that is not a ggml block type or a partial block, LQ_ERR_UNSUPPORTED for a path this CPU lacks. */
lq_status lq_ggml_dequantize(lq_dtype t, const void *src, int64_t n, float *dst, lq_ggml_path path, lq_err *err);
/* Quantizes n floats (whole blocks of 32) to q8_0 or q4_0 blocks at dst. NaN / Inf input is
 * refused (LQ_ERR_NUMERIC, naming the element); a finite block whose scale overflows f16 gets an
 * infinite scale, as in ggml. */
lq_status lq_ggml_quantize(lq_dtype t, const float *src, int64_t n, void *dst, lq_err *err);

#endif
