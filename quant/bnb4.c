/* quant/bnb4.c: NF4 and FP4 byte-for-byte as bitsandbytes 0.50.2 quantizes them on the CPU. */
#include <math.h>
#include <stdlib.h>

#include "quant/kernels_bnb.h"
#include "quant/quant_impl.h"

/* bnb rounds every product and sum on its own; clang would otherwise fuse a * b + c. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* Facts this file reproduces (bitsandbytes 0.50.2, float32 input on the CPU):
 * - quantize_4bit runs bnb's "default" torch kernel. Full blocks: absmax = max |x|, s = x * r with
 *   r = the float32 reciprocal of max(absmax, 1e-38); the last partial block: s = x / max(absmax,
 *   1e-38) (true division) and the clamped value is what it stores as that block's absmax (an
 *   all-zero partial block keeps 1e-38, an all-zero full block 0). s is clamped to [-1, 1], and the
 *   code is torch.bucketize(s, midpoints) over the codes in value order: the number of float32
 *   midpoints (c[k] + c[k + 1]) / 2 strictly below s, so a value on a midpoint takes the lower
 *   code. FP4's value order comes from a stable sort, which puts code 0 (+0.0) before code 8 (also
 *   +0.0): s = 0 gets code 0, 0 < s <= 0.0026 gets code 8. An odd tensor is padded with 0.0.
 * - compress_statistics: offset = torch.mean(absmax) in float32 (torch's cascade sum, 8-lane
 *   vectors, then / n), then quantize_blockwise(absmax - offset, blocksize=256) in bnb's C++ CPU
 *   library: absmax2 = max(0, max |v|); an all-zero block gets codes 0; otherwise s = v * (1 / absmax2)
 *   clamped to [-1, 1], idx = (uint16)trunc(fma((s + 1) * 0.5, 65535, 0.5)) and the code is entry
 *   idx of a 65536-entry table: the number of the dynamic map's midpoints below -1 + 2 idx / 65535.
 * - dequantize: code[q] * absmax in float32; a double-quantized absmax is code2[q] * absmax2 + offset. */

static const float nf4_code[16] = LQ_NF4_CODE_INIT;
static const float fp4_code[16] = LQ_FP4_CODE_INIT;

/* bnb's create_dynamic_map() (signed, 7 exponent bits, 8 bits) as float32, sorted. */
static const float dynamic_map[256] = {
    -0x1.fc6666p-1f, -0x1.f53334p-1f, -0x1.eep-1f, -0x1.e6ccccp-1f, -0x1.df999ap-1f, -0x1.d86666p-1f,
    -0x1.d13334p-1f, -0x1.cap-1f, -0x1.c2ccccp-1f, -0x1.bb999ap-1f, -0x1.b46666p-1f, -0x1.ad3334p-1f,
    -0x1.a6p-1f, -0x1.9eccccp-1f, -0x1.97999ap-1f, -0x1.906666p-1f, -0x1.893334p-1f, -0x1.82p-1f,
    -0x1.7accccp-1f, -0x1.73999ap-1f, -0x1.6c6668p-1f, -0x1.653334p-1f, -0x1.5ep-1f, -0x1.56ccccp-1f,
    -0x1.4f999ap-1f, -0x1.486668p-1f, -0x1.413334p-1f, -0x1.3ap-1f, -0x1.32ccccp-1f, -0x1.2b999ap-1f,
    -0x1.246668p-1f, -0x1.1d3334p-1f, -0x1.16p-1f, -0x1.0eccccp-1f, -0x1.079998p-1f, -0x1.006666p-1f,
    -0x1.f26664p-2f, -0x1.e4p-2f, -0x1.d59998p-2f, -0x1.c73334p-2f, -0x1.b8ccccp-2f, -0x1.aa6666p-2f,
    -0x1.9cp-2f, -0x1.8d9998p-2f, -0x1.7f3334p-2f, -0x1.70ccccp-2f, -0x1.626666p-2f, -0x1.54p-2f,
    -0x1.459998p-2f, -0x1.373334p-2f, -0x1.28ccccp-2f, -0x1.1a6668p-2f, -0x1.0cp-2f, -0x1.fb3332p-3f,
    -0x1.de6666p-3f, -0x1.c1999ap-3f, -0x1.a4ccccp-3f, -0x1.88p-3f, -0x1.6b3334p-3f, -0x1.4e6666p-3f,
    -0x1.31999ap-3f, -0x1.14ccccp-3f, -0x1.fp-4f, -0x1.b66668p-4f, -0x1.93d70ap-4f, -0x1.8851eep-4f,
    -0x1.7ccccep-4f, -0x1.7147aep-4f, -0x1.65c29p-4f, -0x1.5a3d7p-4f, -0x1.4eb854p-4f, -0x1.433334p-4f,
    -0x1.37ae14p-4f, -0x1.2c28f6p-4f, -0x1.20a3d6p-4f, -0x1.151ebap-4f, -0x1.09999ap-4f, -0x1.fc28f6p-5f,
    -0x1.e51ebap-5f, -0x1.ce147ap-5f, -0x1.b70a3ep-5f, -0x1.ap-5f, -0x1.88f5c2p-5f, -0x1.71eb86p-5f,
    -0x1.5ae146p-5f, -0x1.43d70ap-5f, -0x1.2ccccep-5f, -0x1.15c29p-5f, -0x1.fd70a4p-6f, -0x1.cf5c2ap-6f,
    -0x1.a147aep-6f, -0x1.733334p-6f, -0x1.451ebap-6f, -0x1.170a3ep-6f, -0x1.d1eb86p-7f, -0x1.75c29p-7f,
    -0x1.3e76c8p-7f, -0x1.2c083p-7f, -0x1.19999ap-7f, -0x1.072b02p-7f, -0x1.e978d4p-8f, -0x1.c49ba6p-8f,
    -0x1.9fbe76p-8f, -0x1.7ae148p-8f, -0x1.56041ap-8f, -0x1.3126e8p-8f, -0x1.0c49bap-8f, -0x1.ced914p-9f,
    -0x1.851eb8p-9f, -0x1.3b645ap-9f, -0x1.e353f8p-10f, -0x1.4fdf3ap-10f, -0x1.eecbfep-11f, -0x1.b3d07cp-11f,
    -0x1.78d5p-11f, -0x1.3dd982p-11f, -0x1.02de02p-11f, -0x1.8fc506p-12f, -0x1.19ce0ap-12f, -0x1.47ae16p-13f,
    -0x1.743e96p-14f, -0x1.15df66p-14f, -0x1.6f0068p-15f, -0x1.64840cp-16f, -0x1.040bfep-17f, -0x1.b43528p-19f,
    -0x1.27476ep-21f, 0x0p+0f, 0x1.27476ep-21f, 0x1.b43528p-19f, 0x1.040bfep-17f, 0x1.64840cp-16f,
    0x1.6f0068p-15f, 0x1.15df66p-14f, 0x1.743e96p-14f, 0x1.47ae16p-13f, 0x1.19ce0ap-12f, 0x1.8fc506p-12f,
    0x1.02de02p-11f, 0x1.3dd982p-11f, 0x1.78d5p-11f, 0x1.b3d07cp-11f, 0x1.eecbfep-11f, 0x1.4fdf3ap-10f,
    0x1.e353f8p-10f, 0x1.3b645ap-9f, 0x1.851eb8p-9f, 0x1.ced914p-9f, 0x1.0c49bap-8f, 0x1.3126e8p-8f,
    0x1.56041ap-8f, 0x1.7ae148p-8f, 0x1.9fbe76p-8f, 0x1.c49ba6p-8f, 0x1.e978d4p-8f, 0x1.072b02p-7f,
    0x1.19999ap-7f, 0x1.2c083p-7f, 0x1.3e76c8p-7f, 0x1.75c29p-7f, 0x1.d1eb86p-7f, 0x1.170a3ep-6f,
    0x1.451ebap-6f, 0x1.733334p-6f, 0x1.a147aep-6f, 0x1.cf5c2ap-6f, 0x1.fd70a4p-6f, 0x1.15c29p-5f,
    0x1.2ccccep-5f, 0x1.43d70ap-5f, 0x1.5ae146p-5f, 0x1.71eb86p-5f, 0x1.88f5c2p-5f, 0x1.ap-5f,
    0x1.b70a3ep-5f, 0x1.ce147ap-5f, 0x1.e51ebap-5f, 0x1.fc28f6p-5f, 0x1.09999ap-4f, 0x1.151ebap-4f,
    0x1.20a3d6p-4f, 0x1.2c28f6p-4f, 0x1.37ae14p-4f, 0x1.433334p-4f, 0x1.4eb854p-4f, 0x1.5a3d7p-4f,
    0x1.65c29p-4f, 0x1.7147aep-4f, 0x1.7ccccep-4f, 0x1.8851eep-4f, 0x1.93d70ap-4f, 0x1.b66668p-4f,
    0x1.fp-4f, 0x1.14ccccp-3f, 0x1.31999ap-3f, 0x1.4e6666p-3f, 0x1.6b3334p-3f, 0x1.88p-3f,
    0x1.a4ccccp-3f, 0x1.c1999ap-3f, 0x1.de6666p-3f, 0x1.fb3332p-3f, 0x1.0cp-2f, 0x1.1a6668p-2f,
    0x1.28ccccp-2f, 0x1.373334p-2f, 0x1.459998p-2f, 0x1.54p-2f, 0x1.626666p-2f, 0x1.70ccccp-2f,
    0x1.7f3334p-2f, 0x1.8d9998p-2f, 0x1.9cp-2f, 0x1.aa6666p-2f, 0x1.b8ccccp-2f, 0x1.c73334p-2f,
    0x1.d59998p-2f, 0x1.e4p-2f, 0x1.f26664p-2f, 0x1.006666p-1f, 0x1.079998p-1f, 0x1.0eccccp-1f,
    0x1.16p-1f, 0x1.1d3334p-1f, 0x1.246668p-1f, 0x1.2b999ap-1f, 0x1.32ccccp-1f, 0x1.3ap-1f,
    0x1.413334p-1f, 0x1.486668p-1f, 0x1.4f999ap-1f, 0x1.56ccccp-1f, 0x1.5ep-1f, 0x1.653334p-1f,
    0x1.6c6668p-1f, 0x1.73999ap-1f, 0x1.7accccp-1f, 0x1.82p-1f, 0x1.893334p-1f, 0x1.906666p-1f,
    0x1.97999ap-1f, 0x1.9eccccp-1f, 0x1.a6p-1f, 0x1.ad3334p-1f, 0x1.b46666p-1f, 0x1.bb999ap-1f,
    0x1.c2ccccp-1f, 0x1.cap-1f, 0x1.d13334p-1f, 0x1.d86666p-1f, 0x1.df999ap-1f, 0x1.e6ccccp-1f,
    0x1.eep-1f, 0x1.f53334p-1f, 0x1.fc6666p-1f, 0x1p+0f,
};

const float *lq_nf4_code(void) { return nf4_code; }
const float *lq_fp4_code(void) { return fp4_code; }
const float *lq_bnb_dynamic_map(void) { return dynamic_map; }

static const float *code_of(lq_dtype type) {
    return type == LQ_DTYPE_NF4 ? nf4_code : type == LQ_DTYPE_FP4 ? fp4_code : NULL;
}

/* --- 4-bit quantization ----------------------------------------------------------------------- */

/* Codes in value order and the midpoints between neighbours, as bnb's torch kernel builds them. */
typedef struct bnb4_encoder {
    float bounds[15];
    uint8_t order[16];
} bnb4_encoder;

static void bnb4_encoder_init(const float *code, bnb4_encoder *enc) {
    for (int i = 0; i < 16; i++) { /* stable insertion sort of the code indices by value */
        int j = i;
        for (; j > 0 && code[enc->order[j - 1]] > code[i]; j--) enc->order[j] = enc->order[j - 1];
        enc->order[j] = (uint8_t)i;
    }
    for (int i = 0; i < 15; i++) enc->bounds[i] = (code[enc->order[i]] + code[enc->order[i + 1]]) / 2.0f;
}

static inline uint8_t bnb4_encode(const bnb4_encoder *enc, float s) {
    int q = 0;
    for (int i = 0; i < 15; i++) q += enc->bounds[i] < s;
    return enc->order[q];
}

static inline float clamp1(float s) { return s < -1.0f ? -1.0f : s > 1.0f ? 1.0f : s; }

static bool block_size_ok(int64_t b) { return b >= 32 && b <= 4096 && (b & (b - 1)) == 0; }

/* The first NaN / Inf of x, or -1. */
static int64_t first_nonfinite(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return i;
    return -1;
}

static lq_status check_input(const char *who, const float *x, int64_t n, int64_t base, lq_err *err) {
    int64_t bad = first_nonfinite(x, n);
    if (bad < 0) return LQ_OK;
    return LQ_ERR(err, LQ_ERR_NUMERIC, "%s: element %lld is %s; NF4/FP4 need finite input", who,
                  (long long)(base + bad), isnan(x[bad]) ? "NaN" : x[bad] > 0 ? "+Inf" : "-Inf");
}

/* Quantizes finite x[0, n) as one tensor: codes (n + 1) / 2 bytes, absmax per block. */
static void bnb4_quantize(const float *code, const float *x, int64_t n, int64_t block, uint8_t *codes,
                          float *absmax) {
    bnb4_encoder enc;
    bnb4_encoder_init(code, &enc);
    const int64_t full = n - n % block; /* elements in full blocks */
    const uint8_t pad = bnb4_encode(&enc, 0.0f);
    for (int64_t b0 = 0; b0 < n; b0 += block) {
        const int64_t len = n - b0 < block ? n - b0 : block;
        const float *xb = x + b0;
        float am = 0.0f;
        for (int64_t i = 0; i < len; i++) am = fmaxf(am, fabsf(xb[i]));
        const float am_c = am < 1e-38f ? 1e-38f : am; /* torch: absmax.clamp(min=1e-38) */
        const bool partial = b0 >= full;
        const float r = 1.0f / am_c;
        absmax[b0 / block] = partial ? am_c : am;
        for (int64_t i = 0; i < len; i += 2) {
            float s0 = partial ? xb[i] / am_c : xb[i] * r;
            uint8_t hi = bnb4_encode(&enc, clamp1(s0)), lo = pad;
            if (i + 1 < len) {
                float s1 = partial ? xb[i + 1] / am_c : xb[i + 1] * r;
                lo = bnb4_encode(&enc, clamp1(s1));
            }
            codes[(b0 + i) >> 1] = (uint8_t)(hi << 4 | lo);
        }
    }
}

lq_status lq_bnb4_quantize_into(lq_dtype type, const float *x, int64_t n, int64_t block_size, uint8_t *codes,
                                float *absmax, lq_err *err) {
    const float *code = code_of(type);
    LQ_CHECK(err, code, LQ_ERR_ARG, "bnb4 quantize: dtype %s is not nf4 or fp4", lq_dtype_name(type));
    LQ_CHECK(err, block_size_ok(block_size), LQ_ERR_ARG,
             "bnb4 quantize: block size %lld (bitsandbytes allows powers of two from 32 to 4096)",
             (long long)block_size);
    LQ_CHECK(err, n >= 0 && (n == 0 || (x && codes && absmax)), LQ_ERR_ARG, "bnb4 quantize: n = %lld", (long long)n);
    LQ_TRY(check_input("bnb4 quantize", x, n, 0, err));
    bnb4_quantize(code, x, n, block_size, codes, absmax);
    return LQ_OK;
}

/* --- double quantization ---------------------------------------------------------------------- */

static int64_t ceil_log2(int64_t x) {
    if (x <= 2) return 1;
    int64_t b = 0;
    for (uint64_t v = (uint64_t)(x - 1); v; v >>= 1) b++;
    return b;
}

/* torch's multi_row_sum: 4 "rows" of `lanes` floats at a time, over `size` groups of 4 rows (row
 * (i, k) = x + (4 i + k) lanes), in 4 levels of partial sums; out = 4 rows of lane sums. */
enum { SUM_LANES = 8, SUM_ROWS = 4, SUM_LEVELS = 4 };
static void multi_row_sum(const float *x, int64_t size, int lanes, float out[SUM_ROWS][SUM_LANES]) {
    float acc[SUM_LEVELS][SUM_ROWS][SUM_LANES] = {{{0}}};
    const int64_t lp = ceil_log2(size) / SUM_LEVELS > 4 ? ceil_log2(size) / SUM_LEVELS : 4;
    const int64_t step = (int64_t)1 << lp, mask = step - 1;
    int64_t i = 0;
    for (; i + step <= size;) {
        for (int64_t j = 0; j < step; j++, i++)
            for (int k = 0; k < SUM_ROWS; k++)
                for (int l = 0; l < lanes; l++) acc[0][k][l] += x[(i * SUM_ROWS + k) * lanes + l];
        for (int j = 1; j < SUM_LEVELS; j++) {
            for (int k = 0; k < SUM_ROWS; k++)
                for (int l = 0; l < lanes; l++) {
                    acc[j][k][l] += acc[j - 1][k][l];
                    acc[j - 1][k][l] = 0.0f;
                }
            if ((i & (mask << (j * lp))) != 0) break;
        }
    }
    for (; i < size; i++)
        for (int k = 0; k < SUM_ROWS; k++)
            for (int l = 0; l < lanes; l++) acc[0][k][l] += x[(i * SUM_ROWS + k) * lanes + l];
    for (int j = 1; j < SUM_LEVELS; j++)
        for (int k = 0; k < SUM_ROWS; k++)
            for (int l = 0; l < lanes; l++) acc[0][k][l] += acc[j][k][l];
    for (int k = 0; k < SUM_ROWS; k++)
        for (int l = 0; l < lanes; l++) out[k][l] = acc[0][k][l];
}

/* torch's row_sum over `units` units of `lanes` floats: lane sums. */
static void row_sum(const float *x, int64_t units, int lanes, float *sum) {
    float p[SUM_ROWS][SUM_LANES];
    const int64_t groups = units / SUM_ROWS;
    multi_row_sum(x, groups, lanes, p);
    for (int64_t u = groups * SUM_ROWS; u < units; u++)
        for (int l = 0; l < lanes; l++) p[0][l] += x[u * lanes + l];
    for (int k = 1; k < SUM_ROWS; k++)
        for (int l = 0; l < lanes; l++) p[0][l] += p[k][l];
    for (int l = 0; l < lanes; l++) sum[l] = p[0][l];
}

/* torch.sum of a contiguous float32 vector on the CPU, one thread (cascade_sum): 8-lane vectors
 * (torch's Vectorized<float> for this kernel on AVX2 and AVX-512 builds alike) with the scalar
 * tail summed first and the lanes added to it in order; under 8 elements, the scalar row sum. */
static float torch_sum_f32(const float *x, int64_t n) {
    float lanes[SUM_LANES];
    if (n < SUM_LANES) {
        row_sum(x, n, 1, lanes);
        return 0.0f + lanes[0];
    }
    const int64_t vecs = n / SUM_LANES;
    row_sum(x, vecs, SUM_LANES, lanes);
    float acc = 0.0f;
    for (int64_t k = vecs * SUM_LANES; k < n; k++) acc += x[k];
    for (int l = 0; l < SUM_LANES; l++) acc += lanes[l];
    return 0.0f + acc;
}

float lq_bnb_mean_f32(const float *x, int64_t n) { return n > 0 ? torch_sum_f32(x, n) / (float)n : NAN; }

/* Entry idx of bnb's 65536-entry quantize table: the number of map midpoints below its grid value. */
static uint8_t dyn_table_code(const float *mids, uint16_t idx) {
    const float val = 2.0f * (float)idx / 65535.0f - 1.0f;
    int lo = 0, hi = 255; /* count of mids[j] < val; mids ascend */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (mids[mid] < val) lo = mid + 1;
        else hi = mid;
    }
    return (uint8_t)lo;
}

/* bnb's C++ quantize_blockwise on x[i] - sub (finite). */
static void blockwise8(const float *x, float sub, int64_t n, int64_t block, uint8_t *codes, float *absmax) {
    float mids[255];
    for (int j = 0; j < 255; j++) mids[j] = (dynamic_map[j] + dynamic_map[j + 1]) * 0.5f;
    for (int64_t b0 = 0; b0 < n; b0 += block) {
        const int64_t len = n - b0 < block ? n - b0 : block;
        float am = 0.0f;
        for (int64_t i = 0; i < len; i++) am = fmaxf(am, fabsf(x[b0 + i] - sub));
        absmax[b0 / block] = am;
        if (am == 0.0f) {
            for (int64_t i = 0; i < len; i++) codes[b0 + i] = 0;
            continue;
        }
        const float r = 1.0f / am;
        for (int64_t i = 0; i < len; i++) {
            const float s = clamp1((x[b0 + i] - sub) * r);
            const uint16_t idx = (uint16_t)(int32_t)fmaf((s + 1.0f) * 0.5f, 65535.0f, 0.5f);
            codes[b0 + i] = dyn_table_code(mids, idx);
        }
    }
}

void lq_bnb_quantize_blockwise8(const float *x, int64_t n, int64_t block, uint8_t *codes, float *absmax) {
    blockwise8(x, 0.0f, n, block, codes, absmax);
}

void lq_bnb_double_quant(const float *absmax, int64_t n_blocks, uint8_t *absmax_q, float *absmax2, float *offset) {
    *offset = lq_bnb_mean_f32(absmax, n_blocks);
    if (n_blocks > 0) blockwise8(absmax, *offset, n_blocks, LQ_BNB_BLOCK2, absmax_q, absmax2);
}

lq_status lq_bnb4_quantize(lq_dtype type, const float *x, int64_t n, int64_t block_size, bool double_quant,
                           uint8_t *codes, lq_qstate **qs, lq_err *err) {
    LQ_CHECK(err, qs, LQ_ERR_ARG, "bnb4 quantize: no place for the state");
    *qs = NULL;
    LQ_CHECK(err, code_of(type), LQ_ERR_ARG, "bnb4 quantize: dtype %s is not nf4 or fp4", lq_dtype_name(type));
    LQ_CHECK(err, block_size_ok(block_size), LQ_ERR_ARG,
             "bnb4 quantize: block size %lld (bitsandbytes allows powers of two from 32 to 4096)",
             (long long)block_size);
    LQ_CHECK(err, n >= 0 && (n == 0 || (x && codes)), LQ_ERR_ARG, "bnb4 quantize: n = %lld", (long long)n);
    LQ_TRY(check_input("bnb4 quantize", x, n, 0, err));
    const int64_t nb = (n + block_size - 1) / block_size;
    lq_qstate *s = lq_qstate_alloc(nb, block_size, false, double_quant, LQ_BNB_BLOCK2);
    float *am = double_quant ? malloc((size_t)(nb > 0 ? nb : 1) * sizeof(float)) : NULL;
    if (!s || (double_quant && !am)) {
        lq_qstate_free(s);
        free(am);
        return LQ_ERR(err, LQ_ERR_OOM, "bnb4 quantize: no memory for the state of %lld blocks", (long long)nb);
    }
    bnb4_quantize(code_of(type), x, n, block_size, codes, double_quant ? am : s->absmax);
    if (double_quant) {
        lq_bnb_double_quant(am, nb, s->absmax_q, s->absmax2, &s->offset);
        s->code2 = dynamic_map;
        free(am);
    }
    *qs = s;
    return LQ_OK;
}

/* --- dequantization --------------------------------------------------------------------------- */

typedef void (*bnb4_block_fn)(const float *code, const uint8_t *src, int64_t n, float absmax, float *y);

static void dequant_block_scalar(const float *code, const uint8_t *src, int64_t n, float absmax, float *y) {
    lq_bnb4_dequant_block(code, src, n, absmax, y);
}

static bnb4_block_fn block_fn(int isa) {
    lq_cpu_features f = lq_cpu_detect();
    bool simd = lq_bnb4_simd_built();
    if (isa == LQ_BNB_ISA_AUTO)
        isa = simd && f.avx512f ? LQ_BNB_ISA_AVX512 : simd && f.avx2 && f.fma ? LQ_BNB_ISA_AVX2 : LQ_BNB_ISA_SCALAR;
    switch (isa) {
    case LQ_BNB_ISA_SCALAR: return dequant_block_scalar;
    case LQ_BNB_ISA_AVX2: return simd && f.avx2 && f.fma ? lq_bnb4_dequant_block_avx2 : NULL;
    case LQ_BNB_ISA_AVX512: return simd && f.avx512f ? lq_bnb4_dequant_block_avx512 : NULL;
    default: return NULL;
    }
}

/* Elements [start, start + n), start even, src at start's byte: one kernel call per block. */
static void dequant_range(const float *code, const uint8_t *src, int64_t start, int64_t n, const lq_qstate *qs,
                          float *y, bnb4_block_fn fn) {
    const int64_t bs = qs->block;
    for (int64_t e = 0; e < n;) {
        const int64_t g = start + e, b = g / bs;
        const int64_t len = (b + 1) * bs - g < n - e ? (b + 1) * bs - g : n - e;
        const float am = lq_bnb4_block_absmax(qs->absmax, qs->absmax_q, qs->absmax2, qs->code2, qs->block2,
                                              qs->offset, b);
        fn(code, src + (e >> 1), len, am, y + e);
        e += len;
    }
}

/* Outputs at least this large bypass the caches (non-temporal stores): a whole-tensor dequant
 * writes far more than the caches hold and nothing reads it back at once, while the tiles the
 * quantized matmul dequantizes are smaller and stay cached for the sgemm that follows. */
#define BNB4_STREAM_BYTES ((int64_t)32 << 20)

bool lq_bnb4_dequant_isa(lq_dtype type, const uint8_t *src, int64_t start, int64_t n, const lq_qstate *qs, float *y,
                         int isa) {
    const float *code = code_of(type);
    bnb4_block_fn fn = block_fn(isa);
    if (!code || !fn || !qs || qs->block <= 0 || (qs->block & 1) || (start & 1)) return false;
    if (!qs->absmax && !(qs->absmax_q && qs->absmax2 && qs->code2 && qs->block2 > 0)) return false;
    bool stream = n * (int64_t)sizeof(float) >= BNB4_STREAM_BYTES;
    if (stream && fn == lq_bnb4_dequant_block_avx512) fn = lq_bnb4_dequant_block_avx512_nt;
    else if (stream && fn == lq_bnb4_dequant_block_avx2) fn = lq_bnb4_dequant_block_avx2_nt;
    else stream = false;
    dequant_range(code, src, start, n, qs, y, fn);
    if (stream) lq_bnb4_simd_fence();
    return true;
}

void lq_bnb4_dequantize(lq_dtype type, const uint8_t *codes, int64_t n, const lq_qstate *qs, float *y) {
    lq_bnb4_dequant_isa(type, codes, 0, n, qs, y, LQ_BNB_ISA_AUTO);
}

/* --- dtype-traits rows ------------------------------------------------------------------------ */

void lq_nf4_to_f32(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start) {
    lq_bnb4_dequant_isa(LQ_DTYPE_NF4, src, start, n, qs, dst, LQ_BNB_ISA_AUTO);
}
void lq_fp4_to_f32(const void *src, float *dst, int64_t n, const lq_qstate *qs, int64_t start) {
    lq_bnb4_dequant_isa(LQ_DTYPE_FP4, src, start, n, qs, dst, LQ_BNB_ISA_AUTO);
}

/* Quantizes a block-aligned range into the caller's state (float absmax, block from qs). */
static lq_status bnb4_from_f32(lq_dtype type, const float *src, void *dst, int64_t n, lq_qstate *qs, int64_t start,
                               lq_err *err) {
    const char *who = type == LQ_DTYPE_NF4 ? "nf4 from_f32" : "fp4 from_f32";
    LQ_CHECK(err, qs && qs->absmax, LQ_ERR_ARG,
             "%s: needs an lq_qstate with float absmax (double quantization is lq_bnb4_quantize's)", who);
    LQ_CHECK(err, block_size_ok(qs->block), LQ_ERR_ARG, "%s: state block size %lld (powers of two 32..4096)", who,
             (long long)qs->block);
    LQ_CHECK(err, start >= 0 && start % qs->block == 0 && n >= 0, LQ_ERR_ARG,
             "%s: start %lld is not a multiple of the block size %lld", who, (long long)start, (long long)qs->block);
    LQ_TRY(check_input(who, src, n, start, err));
    bnb4_quantize(code_of(type), src, n, qs->block, dst, qs->absmax + start / qs->block);
    return LQ_OK;
}

lq_status lq_nf4_from_f32(const float *src, void *dst, int64_t n, lq_qstate *qs, int64_t start, lq_err *err) {
    return bnb4_from_f32(LQ_DTYPE_NF4, src, dst, n, qs, start, err);
}
lq_status lq_fp4_from_f32(const float *src, void *dst, int64_t n, lq_qstate *qs, int64_t start, lq_err *err) {
    return bnb4_from_f32(LQ_DTYPE_FP4, src, dst, n, qs, start, err);
}
