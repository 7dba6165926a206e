/* tests/cuda/test_cuda_dequant.c: the CUDA dequant kernels (quant/dequant.cu) against the traits
 * table's to_f32, byte for byte: every format lq_cuda_dequant_supported accepts, NF4 / FP4 with and
 * without double quantization, I8 / I4 with and without zero points, over windows that start at
 * odd and mid-block offsets; NF4 / FP4 to bf16 against the bf16 rounding of the CPU's result.
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

/* One format variant: bitsandbytes with or without double quantization, affine with or without
 * zero points. */
typedef struct dq_variant {
    lq_dtype t;
    bool double_quant, zero;
} dq_variant;

/* A random finite f16 in [lo, hi). */
static uint16_t rand_f16(lq_rng *r, float lo, float hi) { return lq_f32_to_f16(lo + (hi - lo) * lq_rng_uniform(r)); }

/* Host codes of DQ_N elements of v.t and their state (*qs NULL for formats without one): random
 * floats through the traits table's from_f32 where the format has one (bnb double quantization
 * then nests the float absmax as lq_bnb4_quantize does); random bytes with finite f16 scales
 * for the ggml blocks without an encoder. NULL with err set. */
static uint8_t *dq_make(const dq_variant *v, lq_rng *rng, lq_qstate **qs, lq_err *err) {
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
        int64_t block = bnb ? 64 : 32, nblk = DQ_N / block;
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
        if (tr->from_f32(x, codes, DQ_N, q, 0, err) != LQ_OK) goto fail;
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

static int n_variants(dq_variant *out) {
    int n = 0;
    for (int t = 0; t < LQ_DTYPE_COUNT; t++) {
        if (!lq_cuda_dequant_supported((lq_dtype)t) || !lq_dtype_info((lq_dtype)t)) continue;
        bool bnb = t == LQ_DTYPE_NF4 || t == LQ_DTYPE_FP4, aff = t == LQ_DTYPE_I8 || t == LQ_DTYPE_I4;
        out[n++] = (dq_variant){(lq_dtype)t, false, false};
        if (bnb) out[n++] = (dq_variant){(lq_dtype)t, true, false};
        if (aff) out[n++] = (dq_variant){(lq_dtype)t, false, true};
    }
    return n;
}

/* Every supported format and variant over four windows: all of it, from a start that is odd or
 * inside a state block, from a third of the way, and five units past that. to_bf16 compares
 * lq_cuda_dequant_bf16 with the bf16 rounding (RNE) of the CPU's float32 result instead. */
static void dequant_parity(bool to_bf16) {
    dq_variant vs[2 * LQ_DTYPE_COUNT];
    int nv = n_variants(vs), fails = 0, checked = 0;
    lq_rng rng;
    lq_rng_seed(&rng, lq_mix64(g_seed ^ (to_bf16 ? 0xbf16u : 0xdeu)));
    for (int vi = 0; vi < nv; vi++) {
        const dq_variant *v = &vs[vi];
        const lq_dtype_traits *tr = lq_dtype_info(v->t);
        if (to_bf16 && !lq_cuda_dequant_bf16_supported(v->t)) continue;
        char name[64];
        snprintf(name, sizeof name, "%s%s%s", tr->name, v->double_quant ? " (double quant)" : "",
                 v->zero ? " (zero points)" : "");
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
        void *d_codes = lq_cuda_malloc(bytes, &err);
        float *d_out = lq_cuda_malloc(DQ_N * sizeof(float), &err);
        float *ref = malloc(DQ_N * sizeof *ref), *got = malloc(DQ_N * sizeof *got);
        uint16_t *ref16 = malloc(DQ_N * sizeof *ref16);
        bool ok = d_codes && d_out && ref && got && ref16 &&
                  lq_cuda_copy(d_codes, codes, bytes, LQ_COPY_H2D, NULL, &err) == LQ_OK &&
                  (!qs || dq_device_state(qs, &dqs, &err) == LQ_OK);
        if (!ok) {
            print_error("dequant %s: setting up: %s\n", name, err.msg[0] ? err.msg : "out of memory");
            fails++;
        }
        int64_t u = tr->block_size, nb = DQ_N / u;
        const int64_t win[4][2] = {
            {0, DQ_N}, {3 * u, DQ_N - 4 * u}, {u * (nb / 3), u * (nb / 4)}, {u * (nb / 3 + 1), 5 * u}};
        for (int w = 0; ok && w < 4; w++) {
            int64_t start = win[w][0], cnt = win[w][1];
            size_t off = lq_dtype_bytes(v->t, start);
            tr->to_f32(codes + off, ref, cnt, qs, start);
            lq_status s = to_bf16 ? lq_cuda_dequant_bf16(v->t, (const uint8_t *)d_codes + off, (uint16_t *)d_out, cnt,
                                                         start, qs ? &dqs : NULL, NULL, &err)
                                  : lq_cuda_dequant(v->t, (const uint8_t *)d_codes + off, d_out, cnt, start,
                                                    qs ? &dqs : NULL, NULL, &err);
            size_t out_bytes = (size_t)cnt * (to_bf16 ? sizeof(uint16_t) : sizeof(float));
            if (s == LQ_OK) s = lq_cuda_sync(NULL, &err);
            if (s == LQ_OK) s = lq_cuda_copy(got, d_out, out_bytes, LQ_COPY_D2H, NULL, &err);
            checked++;
            if (s != LQ_OK) {
                print_error("dequant %s [%lld, +%lld): %s\n", name, (long long)start, (long long)cnt, err.msg);
                fails++;
                lq_err_clear(&err);
                continue;
            }
            if (to_bf16) {
                for (int64_t i = 0; i < cnt; i++) ref16[i] = lq_f32_to_bf16(ref[i]);
                const uint16_t *g16 = (const uint16_t *)got;
                if (memcmp(g16, ref16, out_bytes) != 0) {
                    int64_t i = 0;
                    while (g16[i] == ref16[i]) i++;
                    print_error("dequant bf16 %s [%lld, +%lld): element %lld is 0x%04x on the GPU, 0x%04x = bf16(%.9g) "
                                "on the CPU\n", name, (long long)start, (long long)cnt, (long long)(start + i),
                                (unsigned)g16[i], (unsigned)ref16[i], (double)ref[i]);
                    fails++;
                }
            } else if (memcmp(got, ref, out_bytes) != 0) {
                int64_t i = 0;
                while (memcmp(&got[i], &ref[i], sizeof(float)) == 0) i++;
                print_error("dequant %s [%lld, +%lld): element %lld is %.9g (0x%08x) on the GPU, %.9g (0x%08x) on the "
                            "CPU\n", name, (long long)start, (long long)cnt, (long long)(start + i), (double)got[i],
                            lq_f32_bits(got[i]), (double)ref[i], lq_f32_bits(ref[i]));
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

int main(void) {
    int rc = 0;
    if (!lq_cuda_test_should_run(&rc)) return rc;
    g_seed = lq_cuda_test_seed("test_cuda_dequant");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dequant),
        cmocka_unit_test(test_dequant_bf16),
    };
    return cmocka_run_group_tests_name("test_cuda_dequant", tests, NULL, NULL);
}
