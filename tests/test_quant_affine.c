/* tests/test_quant_affine.c: the I8 / I4 dtype-traits rows: codes and scales round trip through
 * from_f32 / to_f32 exactly as lq_affine_fake_quantize computes them, nibble order, offsets. */
#include "tests/testutil.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- I8 / I4 traits rows ------------------------------------------------------------------------- */

/* Per-row scales from each row's min / max (lq_affine_qparams), codes through the traits row and
 * back; the values must equal lq_affine_fake_quantize's on the unsigned / signed torch range. */
static void roundtrip_rows(lq_dtype t, int bits, bool symmetric, int64_t block) {
    const lq_dtype_traits *tr = lq_dtype_info(t);
    assert_non_null(tr);
    assert_true(tr->needs_qstate && tr->from_f32 && tr->to_f32);
    lq_rng rng;
    lq_rng_seed(&rng, (uint64_t)(bits * 10 + symmetric));
    const int64_t n = 8 * block, nblk = n / block;
    float *x = malloc((size_t)n * sizeof(float)), *y = malloc((size_t)n * sizeof(float));
    float *want = malloc((size_t)n * sizeof(float)), *sc = malloc((size_t)nblk * sizeof(float));
    int32_t *zp = malloc((size_t)nblk * sizeof(int32_t)), *codes = malloc((size_t)n * sizeof(int32_t));
    for (int64_t i = 0; i < n; i++) x[i] = 2.0f * lq_rng_normal(&rng) + (i / block % 3 == 0 ? 1.5f : 0.0f);
    x[3] = -40.0f; /* clamps in any scheme whose range it does not set */
    int32_t shift = symmetric ? 0 : 1 << (bits - 1); /* unsigned torch zero point -> signed codes */
    lq_qstate *qs = lq_qstate_alloc(nblk, block, !symmetric, false, 0);
    assert_non_null(qs);
    qs->bits = bits;
    for (int64_t b = 0; b < nblk; b++) {
        float mn = INFINITY, mx = -INFINITY;
        for (int64_t j = 0; j < block; j++) mn = fminf(mn, x[b * block + j]), mx = fmaxf(mx, x[b * block + j]);
        if (b == 0) mn = -1.0f, mx = 1.0f; /* block 0's range excludes x[3] */
        lq_affine_qparams(mn, mx, bits, symmetric, &sc[b], &zp[b]);
        qs->absmax[b] = sc[b];
        if (!symmetric) qs->zero[b] = (float)(zp[b] - shift);
    }
    size_t bytes = lq_dtype_bytes(t, n);
    assert_int_equal(bytes, t == LQ_DTYPE_I8 ? (size_t)n : (size_t)n / 2);
    uint8_t *buf = malloc(bytes), *buf2 = malloc(bytes);
    lq_err err = {0};
    assert_int_equal(tr->from_f32(x, buf, n, qs, 0, &err), LQ_OK);
    tr->to_f32(buf, y, n, qs, 0);
    lq_affine_scheme s = lq_affine_scheme_make(bits, symmetric, LQ_GRAN_GROUP, 0, block);
    assert_int_equal(lq_affine_fake_quantize(&s, 1, &n, x, sc, zp, want, NULL, 1, NULL), LQ_OK);
    assert_memory_equal(y, want, (size_t)n * sizeof(float));
    /* the stored codes are the torch codes shifted into the signed range, packed as documented */
    assert_int_equal(lq_affine_quantize(&s, 1, &n, x, sc, zp, codes, 1, NULL), LQ_OK);
    for (int64_t i = 0; i < n; i++) {
        int32_t c = codes[i] - shift, got;
        if (t == LQ_DTYPE_I8) got = ((int8_t *)buf)[i];
        else got = (int32_t)(((i & 1) ? buf[i / 2] >> 4 : buf[i / 2] & 15) ^ 8) - 8; /* sign-extend a nibble */
        if (got != c) fail_msg("%s int%d %s: code %lld is %d, want %d", tr->name, bits, symmetric ? "sym" : "asym", (long long)i, got, c);
    }
    assert_true(codes[3] == s.qmin); /* -40 clamped */
    /* converting the second half on its own (start offset) writes the same bytes */
    memset(buf2, 0xAB, bytes);
    assert_int_equal(tr->from_f32(x, buf2, n / 2, qs, 0, &err), LQ_OK);
    size_t half = lq_dtype_bytes(t, n / 2);
    assert_int_equal(tr->from_f32(x + n / 2, buf2 + half, n / 2, qs, n / 2, &err), LQ_OK);
    assert_memory_equal(buf, buf2, bytes);
    lq_qstate_free(qs);
    free(x), free(y), free(want), free(sc), free(zp), free(codes), free(buf), free(buf2);
}

static void test_int_rows_roundtrip(void **state) {
    (void)state;
    for (int sym = 0; sym <= 1; sym++) {
        roundtrip_rows(LQ_DTYPE_I8, 8, sym, 32);
        roundtrip_rows(LQ_DTYPE_I8, 3, sym, 16);
        roundtrip_rows(LQ_DTYPE_I4, 4, sym, 32);
        roundtrip_rows(LQ_DTYPE_I4, 2, sym, 8);
    }
    /* the nibble layout by hand: scale 1, zero 0, codes -1, 3, 7, -8 -> bytes 0x3F, 0x87 */
    lq_qstate *qs = lq_qstate_alloc(1, 4, false, false, 0);
    qs->absmax[0] = 1.0f;
    float x[4] = {-1.0f, 3.0f, 7.4f, -9.0f}, y[4];
    uint8_t b[2];
    assert_int_equal(lq_dtype_info(LQ_DTYPE_I4)->from_f32(x, b, 4, qs, 0, NULL), LQ_OK);
    assert_int_equal(b[0], 0x3F);
    assert_int_equal(b[1], 0x87);
    lq_dtype_info(LQ_DTYPE_I4)->to_f32(b, y, 4, qs, 0);
    float want[4] = {-1.0f, 3.0f, 7.0f, -8.0f};
    assert_memory_equal(y, want, sizeof want);
    assert_string_equal(lq_dtype_name(LQ_DTYPE_I4), "i4");
    assert_int_equal(lq_dtype_from_name("i8"), LQ_DTYPE_I8);
    lq_qstate_free(qs);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_int_rows_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
