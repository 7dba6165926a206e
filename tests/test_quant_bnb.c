/* tests/test_quant_bnb.c: NF4 / FP4 against bitsandbytes byte for byte (fixtures from
 * tools/gen_bnb_fixtures.py), the SIMD dequant against the scalar one, the traits rows, bad input. */
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "quant/kernels_bnb.h"
#include "quant/quant_impl.h"

static lq_fixture *g_fx;

/* Fixture data sits at unaligned offsets: copy it out. */
static void *fx_copy(const lq_fx_tensor *t) {
    size_t bytes = (size_t)t->numel * (t->dtype == 2 ? 1 : 4);
    void *v = malloc(bytes ? bytes : 1);
    assert_non_null(v);
    memcpy(v, t->data, bytes);
    return v;
}

static const lq_fx_tensor *need(const char *fmt, int i, const char *field) {
    char name[128];
    snprintf(name, sizeof name, fmt, i, field);
    const lq_fx_tensor *t = lq_fixture_find(g_fx, "%s", name);
    if (!t) fail_msg("fixture record %s is missing", name);
    return t;
}

/* The first element whose bits differ, or -1. */
static int64_t first_float_diff(const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], 4) != 0) return i;
    return -1;
}

static void assert_floats_identical(const float *got, const float *want, int64_t n, const char *what, int c) {
    int64_t i = first_float_diff(got, want, n);
    if (i >= 0) fail_msg("case %d %s[%lld]: got %a, bitsandbytes %a", c, what, (long long)i, got[i], want[i]);
}

static void assert_bytes_identical(const uint8_t *got, const uint8_t *want, int64_t n, const char *what, int c) {
    for (int64_t i = 0; i < n; i++)
        if (got[i] != want[i])
            fail_msg("case %d %s[%lld]: got 0x%02x, bitsandbytes 0x%02x", c, what, (long long)i, got[i], want[i]);
}

static void test_code_tables(void **state) {
    (void)state;
    const struct {
        const char *rec;
        const float *have;
        int64_t n;
    } tabs[] = {{"code/nf4", lq_nf4_code(), 16},
                {"code/fp4", lq_fp4_code(), 16},
                {"code/dynamic", lq_bnb_dynamic_map(), 256}};
    for (size_t t = 0; t < sizeof tabs / sizeof tabs[0]; t++) {
        const lq_fx_tensor *r = lq_fixture_find(g_fx, "%s", tabs[t].rec);
        assert_non_null(r);
        assert_int_equal(r->numel, tabs[t].n);
        float *want = fx_copy(r);
        assert_floats_identical(tabs[t].have, want, tabs[t].n, tabs[t].rec, -1);
        free(want);
    }
    /* the device-side initializers are the same tables */
    const float nf4[16] = LQ_NF4_CODE_INIT, fp4[16] = LQ_FP4_CODE_INIT;
    assert_memory_equal(nf4, lq_nf4_code(), sizeof nf4);
    assert_memory_equal(fp4, lq_fp4_code(), sizeof fp4);
}

/* Dequantized output: bitwise, with one exception: bitsandbytes' C++ scalar CPU kernel keeps FP4
 * code 8 as -0.0 while its code table (and its AVX-512 and torch paths, and loquat) have +0.0. So
 * an FP4 element with code 8 may differ in the sign of zero and in nothing else. */
static void check_dequant(lq_dtype type, const uint8_t *codes, const float *got, const float *want, int64_t n, int c,
                          int64_t *zero_sign_diffs) {
    for (int64_t i = 0; i < n; i++) {
        if (memcmp(&got[i], &want[i], 4) == 0) continue;
        const int q = i % 2 ? codes[i / 2] & 15 : codes[i / 2] >> 4;
        if (type == LQ_DTYPE_FP4 && q == 8 && got[i] == 0.0f && want[i] == 0.0f) {
            (*zero_sign_diffs)++;
            continue;
        }
        fail_msg("case %d deq[%lld] (code %d): got %a, bitsandbytes %a", c, (long long)i, q, got[i], want[i]);
    }
}

static void test_quantize_4bit_cases(void **state) {
    (void)state;
    int n_cases = 0, n_dq = 0, n_deq = 0;
    int64_t bytes = 0, zero_sign = 0;
    for (int c = 0;; c++) {
        const lq_fx_tensor *pr = lq_fixture_find(g_fx, "q4/%d/params", c);
        if (!pr) break;
        int32_t p[4];
        memcpy(p, pr->data, sizeof p);
        const lq_dtype type = p[0] == 0 ? LQ_DTYPE_NF4 : LQ_DTYPE_FP4;
        const int64_t bs = p[1], n = p[3], nb = (n + bs - 1) / bs;
        const bool dq = p[2] != 0;
        const lq_fx_tensor *in_name = need("q4/%d/%s", c, "input");
        char in_rec[64] = {0};
        memcpy(in_rec, in_name->data, in_name->numel < 63 ? (size_t)in_name->numel : 63);
        const lq_fx_tensor *in = lq_fixture_find(g_fx, "%s", in_rec);
        assert_non_null(in);
        assert_int_equal(in->numel, n);
        float *x = fx_copy(in);
        uint8_t *want_packed = fx_copy(need("q4/%d/%s", c, "packed"));
        uint8_t *codes = malloc((size_t)(n + 1) / 2);
        lq_qstate *qs = NULL;
        lq_err err = {0};
        assert_int_equal(lq_bnb4_quantize(type, x, n, bs, dq, codes, &qs, &err), LQ_OK);
        assert_bytes_identical(codes, want_packed, (n + 1) / 2, "packed", c);
        bytes += (n + 1) / 2;

        /* the same through the allocation-free entry points */
        uint8_t *codes2 = malloc((size_t)(n + 1) / 2), *aq2 = malloc((size_t)nb);
        float *am2 = malloc((size_t)nb * sizeof(float)), *a22 = malloc((size_t)(nb / 256 + 1) * sizeof(float));
        assert_int_equal(lq_bnb4_quantize_into(type, x, n, bs, codes2, am2, &err), LQ_OK);
        assert_memory_equal(codes2, codes, (size_t)(n + 1) / 2);
        lq_qstate st = {.block = bs, .absmax = am2};

        if (dq) {
            n_dq++;
            uint8_t *want_q = fx_copy(need("q4/%d/%s", c, "absmax_q"));
            const lq_fx_tensor *a2r = need("q4/%d/%s", c, "absmax2");
            float *want_a2 = fx_copy(a2r), *want_deq_am = fx_copy(need("q4/%d/%s", c, "absmax_deq"));
            float want_off;
            memcpy(&want_off, need("q4/%d/%s", c, "offset")->data, 4);
            assert_null(qs->absmax);
            assert_int_equal(qs->block2, LQ_BNB_BLOCK2);
            assert_ptr_equal(qs->code2, lq_bnb_dynamic_map());
            assert_int_equal(a2r->numel, (nb + 255) / 256);
            assert_floats_identical(&qs->offset, &want_off, 1, "offset", c);
            assert_bytes_identical(qs->absmax_q, want_q, nb, "absmax_q", c);
            assert_floats_identical(qs->absmax2, want_a2, a2r->numel, "absmax2", c);
            float *am = malloc((size_t)nb * sizeof(float));
            for (int64_t b = 0; b < nb; b++) am[b] = lq_qstate_absmax(qs, b);
            assert_floats_identical(am, want_deq_am, nb, "dequantized absmax", c);
            lq_bnb_double_quant(am2, nb, aq2, a22, &st.offset);
            st = (lq_qstate){.block = bs, .absmax_q = aq2, .absmax2 = a22, .code2 = lq_bnb_dynamic_map(),
                             .block2 = LQ_BNB_BLOCK2, .offset = st.offset};
            assert_memory_equal(aq2, qs->absmax_q, (size_t)nb);
            free(am), free(want_q), free(want_a2), free(want_deq_am);
        } else {
            float *want_am = fx_copy(need("q4/%d/%s", c, "absmax"));
            assert_floats_identical(qs->absmax, want_am, nb, "absmax", c);
            free(want_am);
        }

        float *y = malloc((size_t)n * sizeof(float)), *y2 = malloc((size_t)n * sizeof(float));
        lq_bnb4_dequantize(type, codes, n, qs, y);
        lq_bnb4_dequantize(type, codes2, n, &st, y2);
        assert_memory_equal(y, y2, (size_t)n * sizeof(float));
        const lq_fx_tensor *dr = lq_fixture_find(g_fx, "q4/%d/deq", c);
        if (dr) {
            float *want_y = fx_copy(dr);
            check_dequant(type, codes, y, want_y, n, c, &zero_sign);
            n_deq++;
            free(want_y);
        }
        n_cases++;
        lq_qstate_free(qs);
        free(x), free(want_packed), free(codes), free(codes2), free(aq2), free(am2), free(a22), free(y), free(y2);
    }
    assert_true(n_cases >= 20);
    print_message("bitsandbytes quantize_4bit: %d cases (%d double-quantized), %lld packed bytes identical; "
                  "dequantize_4bit identical in %d cases (%lld elements differ only in the sign of zero)\n",
                  n_cases, n_dq, (long long)bytes, n_deq, (long long)zero_sign);
}

static void test_blockwise8_and_mean(void **state) {
    (void)state;
    int cases = 0;
    for (int c = 0;; c++, cases++) {
        const lq_fx_tensor *in = lq_fixture_find(g_fx, "bw8/%d/input", c);
        if (!in) break;
        const int64_t n = in->numel, nb = (n + 255) / 256;
        float *x = fx_copy(in), *want_am = fx_copy(need("bw8/%d/%s", c, "absmax")), *am = malloc((size_t)nb * 4);
        uint8_t *want_q = fx_copy(need("bw8/%d/%s", c, "codes")), *q = malloc((size_t)n);
        lq_bnb_quantize_blockwise8(x, n, 256, q, am);
        assert_bytes_identical(q, want_q, n, "blockwise codes", c);
        assert_floats_identical(am, want_am, nb, "blockwise absmax", c);
        free(x), free(want_am), free(am), free(want_q), free(q);
    }
    assert_true(cases >= 2);
    const lq_fx_tensor *xr = lq_fixture_find(g_fx, "mean/x"), *lr = lq_fixture_find(g_fx, "mean/len"),
                       *mr = lq_fixture_find(g_fx, "mean/mean");
    assert_true(xr && lr && mr && lr->numel == mr->numel);
    float *x = fx_copy(xr), *want = fx_copy(mr);
    int32_t *len = fx_copy(lr);
    for (int64_t k = 0; k < lr->numel; k++) {
        float m = lq_bnb_mean_f32(x, len[k]);
        if (memcmp(&m, &want[k], 4) != 0) fail_msg("mean of %d values: got %a, torch %a", len[k], m, want[k]);
    }
    print_message("quantize_blockwise: %d cases identical; torch float32 mean: %lld lengths identical\n", cases,
                  (long long)lr->numel);
    free(x), free(want), free(len);
}

/* Random packed codes and states: every kernel this CPU runs gives the scalar kernel's bits. */
static void test_simd_matches_scalar(void **state) {
    (void)state;
    lq_cpu_features f = lq_cpu_detect();
    const bool have[3] = {true, lq_bnb4_simd_built() && f.avx2 && f.fma, lq_bnb4_simd_built() && f.avx512f};
    if (!have[1] && !have[2]) skip(); /* nothing vectorized to compare on this CPU / build */
    lq_rng r;
    lq_rng_seed(&r, 77);
    const int64_t blocks[] = {32, 64, 128, 256, 4096};
    int64_t compared = 0;
    for (int t = 0; t < 2; t++)
        for (size_t bi = 0; bi < sizeof blocks / sizeof blocks[0]; bi++)
            for (int dq = 0; dq < 2; dq++) {
                const lq_dtype type = t ? LQ_DTYPE_FP4 : LQ_DTYPE_NF4;
                const int64_t bs = blocks[bi], n = 3 * bs + 2 * lq_rng_int(&r, 0, bs / 2) + 1, nb = (n + bs - 1) / bs;
                uint8_t *codes = malloc((size_t)(n + 1) / 2), aq[64];
                float am[64], a2[1] = {lq_rng_uniform(&r) * 0.1f};
                for (int64_t i = 0; i < (n + 1) / 2; i++) codes[i] = (uint8_t)lq_rng_u64(&r);
                for (int64_t b = 0; b < nb; b++) am[b] = lq_rng_uniform(&r) * 3.0f, aq[b] = (uint8_t)lq_rng_u64(&r);
                lq_qstate qs = {.block = bs, .absmax = am};
                if (dq)
                    qs = (lq_qstate){.block = bs, .absmax_q = aq, .absmax2 = a2, .code2 = lq_bnb_dynamic_map(),
                                     .block2 = LQ_BNB_BLOCK2, .offset = 0.37f};
                float *ref = malloc((size_t)n * 4), *got = malloc((size_t)n * 4);
                /* whole tensor, and a tile that starts and ends inside blocks */
                const int64_t starts[2] = {0, 2 * lq_rng_int(&r, 1, bs / 2)};
                for (int s = 0; s < 2; s++) {
                    const int64_t st = starts[s], len = s ? n - st - 7 : n;
                    assert_true(lq_bnb4_dequant_isa(type, codes + st / 2, st, len, &qs, ref, LQ_BNB_ISA_SCALAR));
                    for (int isa = 1; isa <= 2; isa++) {
                        if (!have[isa]) continue;
                        memset(got, 0xff, (size_t)n * 4); /* NaN poison */
                        assert_true(lq_bnb4_dequant_isa(type, codes + st / 2, st, len, &qs, got, isa));
                        if (memcmp(got, ref, (size_t)len * 4) != 0) {
                            int64_t i = first_float_diff(got, ref, len);
                            fail_msg("%s isa %d block %lld start %lld: element %lld got %a, scalar %a",
                                     lq_dtype_name(type), isa, (long long)bs, (long long)st, (long long)i, got[i],
                                     ref[i]);
                        }
                        compared += len;
                    }
                }
                free(codes), free(ref), free(got);
            }
    print_message("SIMD dequant (avx2: %s, avx512: %s) matched the scalar kernel on %lld elements\n",
                  have[1] ? "yes" : "not on this CPU", have[2] ? "yes" : "not on this CPU", (long long)compared);
    assert_true(compared > 0);
}

/* Outputs of 32 MB and more are written with non-temporal stores: still bit-identical. */
static void test_streaming_matches_scalar(void **state) {
    (void)state;
    lq_cpu_features f = lq_cpu_detect();
    const bool have[3] = {true, lq_bnb4_simd_built() && f.avx2 && f.fma, lq_bnb4_simd_built() && f.avx512f};
    if (!have[1] && !have[2]) skip();
    const int64_t n = (int64_t)9 << 20, bs = 64, nb = n / bs;
    uint8_t *codes = malloc((size_t)n / 2);
    float *am = malloc((size_t)nb * 4), *ref = aligned_alloc(64, (size_t)n * 4), *got = aligned_alloc(64, (size_t)n * 4);
    lq_rng r;
    lq_rng_seed(&r, 78);
    for (int64_t i = 0; i < n / 2; i++) codes[i] = (uint8_t)lq_rng_u64(&r);
    for (int64_t b = 0; b < nb; b++) am[b] = lq_rng_uniform(&r) * 3.0f;
    lq_qstate qs = {.block = bs, .absmax = am};
    assert_true(lq_bnb4_dequant_isa(LQ_DTYPE_NF4, codes, 0, n, &qs, ref, LQ_BNB_ISA_SCALAR));
    for (int isa = 1; isa <= 2; isa++) {
        if (!have[isa]) continue;
        memset(got, 0xff, (size_t)n * 4);
        assert_true(lq_bnb4_dequant_isa(LQ_DTYPE_NF4, codes, 0, n, &qs, got, isa));
        if (memcmp(got, ref, (size_t)n * 4) != 0) {
            int64_t i = first_float_diff(got, ref, n);
            fail_msg("streaming isa %d: element %lld got %a, scalar %a", isa, (long long)i, got[i], ref[i]);
        }
    }
    free(codes), free(am), free(ref), free(got);
}

static void test_nonfinite_rejected(void **state) {
    (void)state;
    const int64_t n = 1000;
    float *x = malloc((size_t)n * 4);
    uint8_t *codes = malloc((size_t)n / 2);
    float am[32];
    const float bad[3] = {NAN, INFINITY, -INFINITY};
    const char *word[3] = {"NaN", "+Inf", "-Inf"};
    for (int k = 0; k < 3; k++) {
        for (int64_t i = 0; i < n; i++) x[i] = (float)(i % 13) - 6.0f;
        x[537] = bad[k];
        x[900] = NAN; /* only the first is named */
        lq_qstate *qs = (lq_qstate *)1;
        lq_err err = {0};
        assert_int_equal(lq_bnb4_quantize(LQ_DTYPE_NF4, x, n, 64, k == 1, codes, &qs, &err), LQ_ERR_NUMERIC);
        assert_null(qs);
        if (!strstr(err.msg, "element 537") || !strstr(err.msg, word[k])) fail_msg("message: %s", err.msg);
        lq_err_clear(&err);
        assert_int_equal(lq_bnb4_quantize_into(LQ_DTYPE_FP4, x, n, 32, codes, am, &err), LQ_ERR_NUMERIC);
        assert_non_null(strstr(err.msg, "element 537"));
        /* the traits row names the element of the whole tensor: start + index */
        lq_qstate *st = lq_qstate_alloc(32, 64, false, false, 0);
        lq_err_clear(&err);
        assert_int_equal(lq_dtype_info(LQ_DTYPE_NF4)->from_f32(x + 512, codes, 256, st, 512, &err), LQ_ERR_NUMERIC);
        if (!strstr(err.msg, "element 537")) fail_msg("message: %s", err.msg);
        lq_qstate_free(st);
    }
    free(x), free(codes);
}

static void test_bad_arguments(void **state) {
    (void)state;
    float x[64] = {1.0f};
    uint8_t codes[32];
    lq_qstate *qs = NULL;
    const int64_t bad_blocks[] = {0, 16, 48, 8192};
    for (size_t i = 0; i < sizeof bad_blocks / sizeof bad_blocks[0]; i++) {
        lq_err err = {0};
        assert_int_equal(lq_bnb4_quantize(LQ_DTYPE_NF4, x, 64, bad_blocks[i], false, codes, &qs, &err), LQ_ERR_ARG);
        assert_non_null(strstr(err.msg, "block size"));
    }
    lq_err err = {0};
    assert_int_equal(lq_bnb4_quantize(LQ_DTYPE_Q8_0, x, 64, 64, false, codes, &qs, &err), LQ_ERR_ARG);
    assert_null(qs);
    /* from_f32 wants a float-absmax state and a block-aligned start */
    lq_qstate *dq = lq_qstate_alloc(2, 64, false, true, 256), *st = lq_qstate_alloc(2, 64, false, false, 0);
    lq_err_clear(&err);
    assert_int_equal(lq_dtype_info(LQ_DTYPE_FP4)->from_f32(x, codes, 64, dq, 0, &err), LQ_ERR_ARG);
    lq_err_clear(&err);
    assert_int_equal(lq_dtype_info(LQ_DTYPE_FP4)->from_f32(x, codes, 32, st, 32, &err), LQ_ERR_ARG);
    lq_qstate_free(dq), lq_qstate_free(st);
}

/* The traits rows against the fixture case of the same tensor, whole and in block-aligned pieces,
 * and to_f32 on tiles against the whole-tensor dequantization. */
static void test_traits_rows(void **state) {
    (void)state;
    const lq_dtype_traits *tr = lq_dtype_info(LQ_DTYPE_NF4);
    assert_non_null(tr);
    assert_string_equal(tr->name, "nf4");
    assert_int_equal(tr->block_size, 2);
    assert_int_equal(tr->block_bytes, 1);
    assert_true(tr->needs_qstate && !tr->is_float && tr->from_f32);
    assert_string_equal(lq_dtype_info(LQ_DTYPE_FP4)->name, "fp4");
    assert_int_equal(lq_dtype_from_name("fp4"), LQ_DTYPE_FP4);
    assert_int_equal(lq_dtype_bytes(LQ_DTYPE_NF4, 1024), 512);
    int found = 0;
    for (int c = 0;; c++) {
        const lq_fx_tensor *pr = lq_fixture_find(g_fx, "q4/%d/params", c);
        if (!pr) break;
        int32_t p[4];
        memcpy(p, pr->data, sizeof p);
        if (p[2] != 0 || p[3] % 2 != 0) continue; /* float absmax, even length */
        const lq_dtype type = p[0] == 0 ? LQ_DTYPE_NF4 : LQ_DTYPE_FP4;
        const lq_dtype_traits *t = lq_dtype_info(type);
        const int64_t bs = p[1], n = p[3], nb = (n + bs - 1) / bs;
        char in_rec[64] = {0};
        const lq_fx_tensor *in_name = need("q4/%d/%s", c, "input");
        memcpy(in_rec, in_name->data, in_name->numel < 63 ? (size_t)in_name->numel : 63);
        float *x = fx_copy(lq_fixture_find(g_fx, "%s", in_rec)), *want_am = fx_copy(need("q4/%d/%s", c, "absmax"));
        uint8_t *want = fx_copy(need("q4/%d/%s", c, "packed")), *codes = malloc((size_t)n / 2);
        lq_qstate *qs = lq_qstate_alloc(nb, bs, false, false, 0);
        lq_err err = {0};
        const int64_t half = (nb / 2) * bs; /* two calls split at a block boundary; the second ends
                                               * with the tensor (and its partial block, if any) */
        assert_int_equal(t->from_f32(x, codes, half, qs, 0, &err), LQ_OK);
        assert_int_equal(t->from_f32(x + half, codes + half / 2, n - half, qs, half, &err), LQ_OK);
        assert_bytes_identical(codes, want, n / 2, "traits packed", c);
        assert_floats_identical(qs->absmax, want_am, nb, "traits absmax", c);
        float *y = malloc((size_t)n * 4), *tile = malloc((size_t)n * 4);
        lq_bnb4_dequantize(type, codes, n, qs, y);
        const int64_t tiles[][2] = {{0, n}, {2, 6}, {bs - 2, bs + 4}, {n - bs - 10, bs + 10}};
        for (size_t k = 0; k < sizeof tiles / sizeof tiles[0]; k++) {
            t->to_f32(codes + tiles[k][0] / 2, tile, tiles[k][1], qs, tiles[k][0]);
            assert_memory_equal(tile, y + tiles[k][0], (size_t)tiles[k][1] * 4);
        }
        const lq_fx_tensor *dr = lq_fixture_find(g_fx, "q4/%d/deq", c);
        if (dr) {
            float *want_y = fx_copy(dr);
            int64_t zs = 0;
            check_dequant(type, codes, y, want_y, n, c, &zs);
            free(want_y);
        }
        found++;
        lq_qstate_free(qs);
        free(x), free(want_am), free(want), free(codes), free(y), free(tile);
    }
    assert_true(found >= 8);
}

/* Error sanity on N(0, 1) data, with bounds from the code spacing alone: every element is within
 * half the widest gap between neighbouring codes (times its block's absmax) of its value, and the
 * mean squared error is near that of a uniform error across each element's decision interval,
 * sum (absmax * width)^2 / 12. */
static void test_error_from_code_spacing(void **state) {
    (void)state;
    const int64_t n = 1 << 16, bs = 64, nb = n / bs;
    float *x = malloc((size_t)n * 4), *y = malloc((size_t)n * 4);
    uint8_t *codes = malloc((size_t)n / 2);
    lq_rng r;
    lq_rng_seed(&r, 2024);
    for (int64_t i = 0; i < n; i++) x[i] = lq_rng_normal(&r);
    for (int t = 0; t < 2; t++) {
        const lq_dtype type = t ? LQ_DTYPE_FP4 : LQ_DTYPE_NF4;
        const float *code = t ? lq_fp4_code() : lq_nf4_code();
        float v[16]; /* sorted code values */
        memcpy(v, code, sizeof v);
        for (int i = 1; i < 16; i++)
            for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
                float tmp = v[j];
                v[j] = v[j - 1], v[j - 1] = tmp;
            }
        double max_gap = 0;
        for (int i = 0; i < 15; i++) max_gap = fmax(max_gap, (double)v[i + 1] - v[i]);
        lq_qstate *qs = NULL;
        lq_err err = {0};
        assert_int_equal(lq_bnb4_quantize(type, x, n, bs, false, codes, &qs, &err), LQ_OK);
        lq_bnb4_dequantize(type, codes, n, qs, y);
        double mse = 0, predicted = 0;
        for (int64_t i = 0; i < n; i++) {
            const double am = qs->absmax[i / bs], e = (double)y[i] - x[i], s = x[i] / am;
            if (fabs(e) > am * (max_gap / 2 + 1e-6))
                fail_msg("%s element %lld: |error| %g above half the widest code gap %g", lq_dtype_name(type),
                         (long long)i, fabs(e), am * max_gap / 2);
            int k = 0; /* decision interval of s: between the midpoints around its nearest code */
            while (k < 15 && s > (v[k] + v[k + 1]) / 2.0) k++;
            const double lo = k > 0 ? (v[k - 1] + v[k]) / 2.0 : v[0], hi = k < 15 ? (v[k] + v[k + 1]) / 2.0 : v[15];
            predicted += am * am * (hi - lo) * (hi - lo) / 12.0;
            mse += e * e;
        }
        mse /= n, predicted /= n;
        print_message("%s on N(0,1), block %lld: RMSE %.4f, predicted from the code spacing %.4f (%lld blocks)\n",
                      lq_dtype_name(type), (long long)bs, sqrt(mse), sqrt(predicted), (long long)nb);
        assert_true(mse > 0.5 * predicted && mse < 2.0 * predicted);
        lq_qstate_free(qs);
    }
    free(x), free(y), free(codes);
}

int main(void) {
    char path[512];
    g_fx = lq_fixture_load(lq_fixture_path("bnb4.lqfx", path, sizeof path));
    const lq_fx_tensor *v = lq_fixture_find(g_fx, "meta/versions");
    if (v) printf("reference: %.*s\n", (int)v->numel, (const char *)v->data);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_code_tables),
        cmocka_unit_test(test_quantize_4bit_cases),
        cmocka_unit_test(test_blockwise8_and_mean),
        cmocka_unit_test(test_simd_matches_scalar),
        cmocka_unit_test(test_streaming_matches_scalar),
        cmocka_unit_test(test_nonfinite_rejected),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_traits_rows),
        cmocka_unit_test(test_error_from_code_spacing),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    lq_fixture_free(g_fx);
    return rc;
}
