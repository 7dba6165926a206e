/* tests/cuda/test_cuda_dequant.c: the CUDA dequant kernels (quant/dequant.cu) against the traits
 * table's to_f32, byte for byte: every format lq_cuda_dequant_supported accepts, NF4 / FP4 with and
 * without double quantization (and NF4 with blocks of 32, 96 and 256), I8 / I4 with and without
 * zero points, over windows that start at odd and mid-block offsets; NF4 / FP4 to bf16 against the
 * bf16 rounding of the CPU's result. NF4 / FP4 also over windows, code and output offsets that take
 * the wide kernel's whole groups, the per-byte kernel's tail, and the per-byte kernel alone (the
 * calls the wide one cannot take); outputs NaN-poisoned, the elements around the window checked
 * untouched; and NF4 / FP4 to bf16 as rows into a wider row stride (lq_cuda_dequant_bf16_rows).
 * Seeds come from the clock each run (printed); LOQUAT_CUDA_SEED=<n> replays a run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cuda.h"
#include "quant/dequant_cuda.h"
#include "quant/kernels.h"
#include "tests/cuda/cuda_testutil.h"
#include "tests/testutil.h"

static uint64_t g_seed;

/* --- the dequant kernels: lq_cuda_dequant against the traits table's to_f32, byte for byte ------ */

#define DQ_N 19200 /* elements: 75 K-blocks, 300 bnb blocks of 64 (two nested blocks of 256) */

/* One format case: bitsandbytes with or without double quantization, affine with or without zero
 * points; block: the state's block (0: 64 for bnb, 32 for affine). */
typedef struct dq_case {
    lq_dtype t;
    bool double_quant, zero;
    int64_t block;
} dq_case;

/* A random finite f16 in [lo, hi). */
static uint16_t rand_f16(lq_rng *r, float lo, float hi) { return lq_f32_to_f16(lo + (hi - lo) * lq_rng_uniform(r)); }

/* Host codes of DQ_N elements of v.t and their state (*qs NULL for formats without one): random
 * floats through the traits table's from_f32 where the format has one (bnb double quantization
 * then nests the float absmax as lq_bnb4_quantize does); random bytes with finite f16 scales
 * for the ggml blocks without an encoder, and random codes and scales for a bnb block that is
 * not a power of two (bnb's quantizer refuses one; the dequant takes any). NULL with err set. */
static uint8_t *dq_make(const dq_case *v, lq_rng *rng, lq_qstate **qs, lq_err *err) {
    const lq_dtype_traits *tr = lq_dtype_info(v->t);
    size_t bytes = lq_dtype_bytes(v->t, DQ_N);
    uint8_t *codes = calloc(bytes ? bytes : 1, 1);
    float *x = malloc(DQ_N * sizeof *x);
    *qs = NULL;
    if (!codes || !x) goto oom;
    for (int64_t i = 0; i < DQ_N; i++) x[i] = 4.0f * lq_rng_uniform(rng) - 2.0f;
    if (!tr->from_f32) {
        for (size_t i = 0; i < bytes; i++) codes[i] = (uint8_t)lq_rng_u64(rng);
        int64_t nblk = DQ_N / tr->block_size;
        for (int64_t b = 0; b < nblk; b++) {
            uint8_t *blk = codes + (size_t)b * tr->block_bytes;
            switch (v->t) {
            case LQ_DTYPE_Q4_1: ((lq_block_q4_1 *)blk)->d = rand_f16(rng, 1e-3f, 0.1f);
                                ((lq_block_q4_1 *)blk)->m = rand_f16(rng, -1.0f, 1.0f); break;
            case LQ_DTYPE_Q5_0: ((lq_block_q5_0 *)blk)->d = rand_f16(rng, 1e-3f, 0.1f); break;
            case LQ_DTYPE_Q5_1: ((lq_block_q5_1 *)blk)->d = rand_f16(rng, 1e-3f, 0.1f);
                                ((lq_block_q5_1 *)blk)->m = rand_f16(rng, -1.0f, 1.0f); break;
            case LQ_DTYPE_Q4_K: ((lq_block_q4_k *)blk)->d = rand_f16(rng, 1e-3f, 0.1f);
                                ((lq_block_q4_k *)blk)->dmin = rand_f16(rng, 1e-3f, 0.1f); break;
            case LQ_DTYPE_Q5_K: ((lq_block_q5_k *)blk)->d = rand_f16(rng, 1e-3f, 0.1f);
                                ((lq_block_q5_k *)blk)->dmin = rand_f16(rng, 1e-3f, 0.1f); break;
            case LQ_DTYPE_Q6_K: ((lq_block_q6_k *)blk)->d = rand_f16(rng, 1e-3f, 0.1f); break;
            default:
                LQ_ERR(err, LQ_ERR_UNSUPPORTED, "dequant test: %s has no encoder and no random-block rule", tr->name);
                goto fail;
            }
        }
        free(x);
        return codes;
    }
    if (tr->needs_qstate) {
        bool bnb = v->t == LQ_DTYPE_NF4 || v->t == LQ_DTYPE_FP4;
        int64_t block = v->block ? v->block : bnb ? 64 : 32, nblk = DQ_N / block;
        lq_qstate *q = lq_qstate_alloc(nblk, block, v->zero, false, 0);
        if (!q) goto oom;
        *qs = q;
        if (!bnb) { /* affine: a scale per block; zero points integers in the signed code range */
            q->bits = v->t == LQ_DTYPE_I4 ? 4 : 8;
            int32_t half = 1 << (q->bits - 1);
            for (int64_t b = 0; b < nblk; b++) {
                q->absmax[b] = 0.005f + 0.05f * lq_rng_uniform(rng);
                if (q->zero) q->zero[b] = (float)lq_rng_int(rng, -half / 2, half / 2 - 1);
            }
        }
        if (bnb && (block & (block - 1))) {
            for (size_t i = 0; i < bytes; i++) codes[i] = (uint8_t)lq_rng_u64(rng);
            for (int64_t b = 0; b < nblk; b++) q->absmax[b] = 0.1f + 2.0f * lq_rng_uniform(rng);
        } else if (tr->from_f32(x, codes, DQ_N, q, 0, err) != LQ_OK) {
            goto fail;
        }
        if (bnb && v->double_quant) {
            lq_qstate *d = lq_qstate_alloc(nblk, block, false, true, LQ_BNB_BLOCK2);
            if (!d) goto oom;
            lq_bnb_double_quant(q->absmax, nblk, d->absmax_q, d->absmax2, &d->offset);
            d->code2 = lq_bnb_dynamic_map();
            lq_qstate_free(q);
            *qs = d;
        }
    } else if (tr->from_f32(x, codes, DQ_N, NULL, 0, err) != LQ_OK) {
        goto fail;
    }
    free(x);
    return codes;
oom:
    LQ_ERR(err, LQ_ERR_OOM, "dequant test: out of memory");
fail:
    free(x);
    free(codes);
    lq_qstate_free(*qs);
    *qs = NULL;
    return NULL;
}

/* A host lq_qstate whose arrays are device copies of q's (dequant_cuda.h's convention). */
static lq_status dq_device_state(const lq_qstate *q, lq_qstate *d, lq_err *err) {
    memset(d, 0, sizeof *d);
    *d = *q;
    d->absmax = d->zero = d->absmax2 = NULL;
    d->absmax_q = NULL;
    d->code2 = NULL;
    int64_t nblk = DQ_N / q->block, nb2 = q->block2 > 0 ? (nblk + q->block2 - 1) / q->block2 : 0;
    struct {
        const void *src;
        void **dst;
        size_t bytes;
    } arr[] = {{q->absmax, (void **)&d->absmax, (size_t)nblk * 4}, {q->zero, (void **)&d->zero, (size_t)nblk * 4},
               {q->absmax_q, (void **)&d->absmax_q, (size_t)nblk}, {q->absmax2, (void **)&d->absmax2, (size_t)nb2 * 4},
               {q->code2, (void **)&d->code2, 256 * 4}};
    for (size_t i = 0; i < sizeof arr / sizeof arr[0]; i++) {
        if (!arr[i].src) continue;
        *arr[i].dst = lq_cuda_malloc(arr[i].bytes, err);
        if (!*arr[i].dst) return err->status;
        LQ_TRY(lq_cuda_copy(*arr[i].dst, arr[i].src, arr[i].bytes, LQ_COPY_H2D, NULL, err));
    }
    return LQ_OK;
}

static void dq_device_state_free(lq_qstate *d) {
    lq_cuda_free(d->absmax);
    lq_cuda_free(d->zero);
    lq_cuda_free(d->absmax_q);
    lq_cuda_free(d->absmax2);
    lq_cuda_free((void *)d->code2);
}

static int dq_cases(dq_case *out) {
    int n = 0;
    for (int t = 0; t < LQ_DTYPE_COUNT; t++) {
        if (!lq_cuda_dequant_supported((lq_dtype)t) || !lq_dtype_info((lq_dtype)t)) continue;
        bool bnb = t == LQ_DTYPE_NF4 || t == LQ_DTYPE_FP4, aff = t == LQ_DTYPE_I8 || t == LQ_DTYPE_I4;
        out[n++] = (dq_case){(lq_dtype)t, false, false, 0};
        if (bnb) out[n++] = (dq_case){(lq_dtype)t, true, false, 0};
        if (aff) out[n++] = (dq_case){(lq_dtype)t, false, true, 0};
        /* blocks under 64 and over it, and one that is not a power of two (the wide kernel's block
         * index is a shift: such a block goes to the per-byte kernel whole) */
        static const int64_t blocks[] = {32, 256, 96};
        for (int b = 0; t == LQ_DTYPE_NF4 && b < 3; b++)
            for (int d = 0; d < 2; d++) out[n++] = (dq_case){(lq_dtype)t, d == 1, false, blocks[b]};
    }
    return n;
}

/* A window of a parity case: elements [start, start + cnt) of the tensor, written to the output
 * from element dst_off (0: the allocation's start, 256-byte aligned), the tensor's codes placed
 * src_shift bytes past an aligned address. */
typedef struct dq_window {
    int64_t start, cnt, dst_off, src_shift;
} dq_window;

#define DQ_MAX_WINDOWS 24
#define DQ_GUARD 16 /* poisoned output elements after a window that must stay untouched */
#define DQ_OUT_N (DQ_N + 32) /* output elements allocated: room for dst_off + cnt + DQ_GUARD */
#define DQ_SRC_PAD 16        /* code bytes allocated past the tensor's: room for src_shift */

/* The windows of a format of block size u: all of it, from a start that is odd or inside a state
 * block, from a third of the way, and five units past that. For NF4 / FP4 (u = 2 elements) also
 * the shapes that split a call between quant/dequant.cu's two kernels: the wide one takes the whole
 * groups (4 f32 or 8 bf16 elements) when block and start are multiples of a group, the codes are 2-
 * (f32) or 4-byte (bf16) aligned and the output 16-byte aligned; the per-byte one the tail, or the
 * whole call. Starts inside a state block with whole groups for both (96, 1000, 8); a start 4 mod 8
 * (whole f32 groups, none for bf16) and starts 2 mod 4 (none: 2, the tensor's end); whole groups
 * only (448: 7 blocks in; 1024 from 0); sizes 2, 4 and 6 mod 8 (per-byte tails); one byte; outputs
 * 1, 2, 4 and 8 elements in (4- to 32-byte offsets: aligned or not for 16-byte stores); codes 1
 * and 2 bytes past an aligned address (aligned for neither load, or for f32's only). */
static int dq_windows(const lq_dtype_traits *tr, bool bnb, dq_window *w) {
    const int64_t u = tr->block_size, nb = DQ_N / u;
    int n = 0;
    w[n++] = (dq_window){0, DQ_N, 0, 0};
    w[n++] = (dq_window){3 * u, DQ_N - 4 * u, 0, 0};
    w[n++] = (dq_window){u * (nb / 3), u * (nb / 4), 0, 0};
    w[n++] = (dq_window){u * (nb / 3 + 1), 5 * u, 0, 0};
    if (!bnb) return n;
    static const dq_window extra[] = {
        {8, DQ_N - 18, 0, 0},      {96, 5 * 1024 + 4, 0, 0}, {1000, 3002, 0, 0}, {4, 2052, 0, 0},
        {448, 3 * 1024, 0, 0},     {0, 1024, 0, 0},          {0, 1022, 0, 0},    {2, 2, 0, 0},
        {DQ_N - 2050, 2050, 0, 0}, {0, DQ_N, 1, 0},          {96, 4096, 2, 0},   {1000, 3002, 4, 0},
        {1000, 3002, 8, 0},        {64, 8192 + 6, 1, 0},     {8, DQ_N - 18, 0, 1}, {1000, 3002, 8, 2},
    };
    for (size_t i = 0; i < sizeof extra / sizeof extra[0] && n < DQ_MAX_WINDOWS; i++) w[n++] = extra[i];
    return n;
}

/* The first of n bytes that is not the poison 0xff, or -1. */
static int64_t dq_first_unpoisoned(const uint8_t *p, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (p[i] != 0xffu) return i;
    return -1;
}

/* Every supported format case over its windows (dq_windows). The output is poisoned (0xff bytes:
 * NaN) before each call; the elements before and after the window must come back poisoned, the
 * window equal to the CPU's bit for bit. to_bf16 compares lq_cuda_dequant_bf16 with the bf16
 * rounding (RNE) of the CPU's float32 result instead. */
static void dequant_parity(bool to_bf16) {
    dq_case vs[2 * LQ_DTYPE_COUNT + 6];
    int nv = dq_cases(vs), fails = 0, checked = 0;
    const size_t esz = to_bf16 ? sizeof(uint16_t) : sizeof(float);
    lq_rng rng;
    lq_rng_seed(&rng, lq_mix64(g_seed ^ (to_bf16 ? 0xbf16u : 0xdeu)));
    for (int vi = 0; vi < nv; vi++) {
        const dq_case *v = &vs[vi];
        const lq_dtype_traits *tr = lq_dtype_info(v->t);
        const bool bnb = v->t == LQ_DTYPE_NF4 || v->t == LQ_DTYPE_FP4;
        if (to_bf16 && !lq_cuda_dequant_bf16_supported(v->t)) continue;
        char name[80];
        snprintf(name, sizeof name, "%s%s%s", tr->name, v->double_quant ? " (double quant)" : "",
                 v->zero ? " (zero points)" : "");
        if (v->block) snprintf(name + strlen(name), sizeof name - strlen(name), " (block %lld)", (long long)v->block);
        lq_err err;
        lq_err_clear(&err);
        lq_qstate *qs = NULL, dqs;
        uint8_t *codes = dq_make(v, &rng, &qs, &err);
        if (!codes) {
            print_error("dequant %s: making the codes: %s\n", name, err.msg);
            fails++;
            continue;
        }
        size_t bytes = lq_dtype_bytes(v->t, DQ_N);
        uint8_t *d_codes = lq_cuda_malloc(bytes + DQ_SRC_PAD, &err);
        float *d_out = lq_cuda_malloc(DQ_OUT_N * sizeof(float), &err);
        float *ref = malloc(DQ_N * sizeof *ref), *got = malloc(DQ_OUT_N * sizeof *got);
        uint16_t *ref16 = malloc(DQ_N * sizeof *ref16);
        bool ok = d_codes && d_out && ref && got && ref16 && (!qs || dq_device_state(qs, &dqs, &err) == LQ_OK);
        if (!ok) {
            print_error("dequant %s: setting up: %s\n", name, err.msg[0] ? err.msg : "out of memory");
            fails++;
        }
        dq_window win[DQ_MAX_WINDOWS];
        int nw = ok ? dq_windows(tr, bnb, win) : 0;
        for (int w = 0; w < nw; w++) {
            const int64_t start = win[w].start, cnt = win[w].cnt, off = win[w].dst_off;
            const size_t src_off = lq_dtype_bytes(v->t, start);
            uint8_t *d_tensor = d_codes + win[w].src_shift;
            tr->to_f32(codes + src_off, ref, cnt, qs, start);
            if (to_bf16)
                for (int64_t i = 0; i < cnt; i++) ref16[i] = lq_f32_to_bf16(ref[i]);
            const void *want = to_bf16 ? (const void *)ref16 : (const void *)ref;
            char where[192];
            snprintf(where, sizeof where, "dequant%s %s [%lld, +%lld) to output + %lld, codes + %lld bytes",
                     to_bf16 ? " bf16" : "", name, (long long)start, (long long)cnt, (long long)off,
                     (long long)win[w].src_shift);
            void *dst = (uint8_t *)d_out + (size_t)off * esz;
            const size_t back = (size_t)(off + cnt + DQ_GUARD) * esz;
            lq_status s = lq_cuda_copy(d_tensor, codes, bytes, LQ_COPY_H2D, NULL, &err);
            if (s == LQ_OK) s = lq_cuda_memset(d_out, 0xff, DQ_OUT_N * sizeof(float), NULL, &err);
            if (s == LQ_OK)
                s = to_bf16 ? lq_cuda_dequant_bf16(v->t, d_tensor + src_off, (uint16_t *)dst, cnt, start,
                                                   qs ? &dqs : NULL, NULL, &err)
                            : lq_cuda_dequant(v->t, d_tensor + src_off, (float *)dst, cnt, start, qs ? &dqs : NULL,
                                              NULL, &err);
            if (s == LQ_OK) s = lq_cuda_sync(NULL, &err);
            if (s == LQ_OK) s = lq_cuda_copy(got, d_out, back, LQ_COPY_D2H, NULL, &err);
            checked++;
            if (s != LQ_OK) {
                print_error("%s: %s\n", where, err.msg);
                fails++;
                lq_err_clear(&err);
                continue;
            }
            const uint8_t *g8 = (const uint8_t *)got, *inside = g8 + (size_t)off * esz;
            int64_t before = dq_first_unpoisoned(g8, off * (int64_t)esz);
            int64_t after = dq_first_unpoisoned(inside + (size_t)cnt * esz, DQ_GUARD * (int64_t)esz);
            if (before >= 0 || after >= 0) {
                print_error("%s: output element %lld, %s the window, was written\n", where,
                            (long long)(before >= 0 ? before / (int64_t)esz - off : cnt + after / (int64_t)esz),
                            before >= 0 ? "before" : "after");
                fails++;
            } else if (memcmp(inside, want, (size_t)cnt * esz) != 0) {
                int64_t i = 0;
                while (memcmp(inside + (size_t)i * esz, (const uint8_t *)want + (size_t)i * esz, esz) == 0) i++;
                if (to_bf16) {
                    uint16_t g16;
                    memcpy(&g16, inside + (size_t)i * 2, 2);
                    print_error("%s: element %lld is 0x%04x on the GPU, 0x%04x = bf16(%.9g) on the CPU\n", where,
                                (long long)(start + i), (unsigned)g16, (unsigned)ref16[i], (double)ref[i]);
                } else {
                    float g32;
                    memcpy(&g32, inside + (size_t)i * 4, 4);
                    print_error("%s: element %lld is %.9g (0x%08x) on the GPU, %.9g (0x%08x) on the CPU\n", where,
                                (long long)(start + i), (double)g32, lq_f32_bits(g32), (double)ref[i],
                                lq_f32_bits(ref[i]));
                }
                fails++;
            }
        }
        if (qs && ok) dq_device_state_free(&dqs);
        lq_cuda_free(d_codes);
        lq_cuda_free(d_out);
        free(ref);
        free(got);
        free(ref16);
        free(codes);
        lq_qstate_free(qs);
    }
    if (to_bf16 && checked == 0) print_message("dequant_bf16: no format has a bf16 kernel in this build\n");
    if (!to_bf16 && checked == 0) fail_msg("dequant: lq_cuda_dequant_supported says no to every format");
    if (fails) fail_msg("dequant%s: %d of %d windows differ (or failed)", to_bf16 ? " bf16" : "", fails, checked);
}

static void test_dequant(void **state) {
    (void)state;
    dequant_parity(false);
}

static void test_dequant_bf16(void **state) {
    (void)state;
    dequant_parity(true);
}

/* lq_cuda_dequant_bf16_rows: NF4 / FP4 with and without double quantization (block 64) as rows of
 * K elements into a row stride ld > K, from a start that is whole rows in (state blocks then fall
 * mid-row for K 96): each row equal to the bf16 of the CPU's float32 bit for bit, the ld - K
 * columns between rows and the elements after the last row left poisoned. Also the calls the
 * kernel must refuse (lq_cuda_dequant_bf16_rows_ok false): K or ld not a multiple of 8, a
 * misaligned output. */
static void test_dequant_bf16_rows(void **state) {
    (void)state;
    static const struct {
        int64_t rows, K, ld, row0;
    } shapes[] = {{37, 192, 208, 0}, {50, 96, 160, 3}, {16, 1024, 1088, 2}, {75, 256, 264, 0}};
    lq_rng rng;
    lq_rng_seed(&rng, lq_mix64(g_seed ^ 0x7005u));
    int fails = 0, checked = 0;
    for (int t = 0; t < 2; t++)
        for (int dq = 0; dq < 2; dq++) {
            dq_case v = {t ? LQ_DTYPE_FP4 : LQ_DTYPE_NF4, dq == 1, false, 0};
            lq_err err;
            lq_err_clear(&err);
            lq_qstate *qs = NULL, dqs;
            uint8_t *codes = dq_make(&v, &rng, &qs, &err), *d_codes = NULL;
            uint16_t *d_out = NULL, *got = NULL;
            float *ref = malloc(DQ_N * sizeof *ref);
            const size_t out_n = 80 * 1088; /* the largest rows x ld above, and more */
            bool ok = codes && ref && (d_codes = lq_cuda_malloc(lq_dtype_bytes(v.t, DQ_N), &err)) &&
                      (d_out = lq_cuda_malloc(out_n * 2, &err)) && (got = malloc(out_n * 2)) &&
                      dq_device_state(qs, &dqs, &err) == LQ_OK &&
                      lq_cuda_copy(d_codes, codes, lq_dtype_bytes(v.t, DQ_N), LQ_COPY_H2D, NULL, &err) == LQ_OK;
            if (!ok) fail_msg("dequant rows %s: setting up: %s", lq_dtype_name(v.t), err.msg);
            for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
                const int64_t rows = shapes[k].rows, K = shapes[k].K, ld = shapes[k].ld, start = shapes[k].row0 * K;
                if (start + rows * K > DQ_N) fail_msg("shape %zu does not fit the tensor", k);
                char where[160];
                snprintf(where, sizeof where, "dequant bf16 rows %s%s: %lld x %lld (ld %lld) from %lld",
                         lq_dtype_name(v.t), dq ? " (double quant)" : "", (long long)rows, (long long)K,
                         (long long)ld, (long long)start);
                checked++;
                const uint8_t *src = d_codes + lq_dtype_bytes(v.t, start);
                if (!lq_cuda_dequant_bf16_rows_ok(v.t, src, d_out, rows, K, ld, start, &dqs)) {
                    print_error("%s: refused\n", where);
                    fails++;
                    continue;
                }
                lq_status s = lq_cuda_memset(d_out, 0xff, out_n * 2, NULL, &err);
                if (s == LQ_OK) s = lq_cuda_dequant_bf16_rows(v.t, src, d_out, rows, K, ld, start, &dqs, NULL, &err);
                if (s == LQ_OK) s = lq_cuda_sync(NULL, &err);
                if (s == LQ_OK) s = lq_cuda_copy(got, d_out, out_n * 2, LQ_COPY_D2H, NULL, &err);
                if (s != LQ_OK) {
                    print_error("%s: %s\n", where, err.msg);
                    lq_err_clear(&err);
                    fails++;
                    continue;
                }
                lq_dtype_info(v.t)->to_f32(codes + lq_dtype_bytes(v.t, start), ref, rows * K, qs, start);
                int64_t bad = -1;
                for (int64_t i = 0; i < rows * ld && bad < 0; i++) {
                    int64_t r = i / ld, c = i % ld;
                    uint16_t want = c < K ? lq_f32_to_bf16(ref[r * K + c]) : 0xffffu;
                    if (got[i] != want) bad = i;
                }
                for (size_t i = (size_t)(rows * ld); i < out_n && bad < 0; i++)
                    if (got[i] != 0xffffu) bad = (int64_t)i;
                if (bad >= 0) {
                    print_error("%s: output element %lld (row %lld, column %lld) is 0x%04x\n", where, (long long)bad,
                                (long long)(bad / ld), (long long)(bad % ld), (unsigned)got[bad]);
                    fails++;
                }
            }
            /* refusals: a K or ld off the group of 8, an output off 16 bytes */
            if (lq_cuda_dequant_bf16_rows_ok(v.t, d_codes, d_out, 4, 100, 112, 0, &dqs) ||
                lq_cuda_dequant_bf16_rows_ok(v.t, d_codes, d_out, 4, 96, 100, 0, &dqs) ||
                lq_cuda_dequant_bf16_rows_ok(v.t, d_codes, d_out + 4, 4, 96, 104, 0, &dqs)) {
                print_error("dequant bf16 rows %s: a call the kernel cannot take was accepted\n", lq_dtype_name(v.t));
                fails++;
            }
            dq_device_state_free(&dqs);
            lq_cuda_free(d_codes);
            lq_cuda_free(d_out);
            free(got);
            free(ref);
            free(codes);
            lq_qstate_free(qs);
        }
    if (fails) fail_msg("dequant bf16 rows: %d of %d calls differ (or failed)", fails, checked);
}

int main(void) {
    int rc = 0;
    if (!lq_cuda_test_should_run(&rc)) return rc;
    g_seed = lq_cuda_test_seed("test_cuda_dequant");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dequant),
        cmocka_unit_test(test_dequant_bf16),
        cmocka_unit_test(test_dequant_bf16_rows),
    };
    return cmocka_run_group_tests_name("test_cuda_dequant", tests, NULL, NULL);
}
