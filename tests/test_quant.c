/* tests/test_quant.c: the dtype-traits table and the f16 / bf16 conversions. */
#include "tests/testutil.h"

#include <math.h>
#include <string.h>

#include "quant/quant.h"

static void test_traits_table(void **state) {
    (void)state;
    for (int t = 0; t < LQ_DTYPE_COUNT; t++) {
        const lq_dtype_traits *tr = lq_dtype_info((lq_dtype)t);
        if (!tr) fail_msg("dtype %d has no row in the traits table", t);
        assert_non_null(tr->name);
        assert_true(tr->block_size >= 1);
        assert_true(tr->block_bytes >= 1);
        assert_non_null(tr->to_f32);
        assert_int_equal(lq_dtype_from_name(tr->name), t);
    }
    assert_null(lq_dtype_info(LQ_DTYPE_COUNT));
    assert_int_equal(lq_dtype_from_name("nope"), LQ_DTYPE_COUNT);
    assert_int_equal(lq_dtype_bytes(LQ_DTYPE_F32, 10), 40);
    assert_int_equal(lq_dtype_bytes(LQ_DTYPE_BF16, 10), 20);
    assert_int_equal(lq_dtype_bytes(LQ_DTYPE_U8, 10), 10);
}

/* Known binary16 encodings (IEEE 754). */
static void test_f16_known_values(void **state) {
    (void)state;
    struct { float f; uint16_t h; } cases[] = {
        {0.0f, 0x0000}, {-0.0f, 0x8000}, {1.0f, 0x3c00}, {-2.0f, 0xc000}, {0.5f, 0x3800},
        {65504.0f, 0x7bff},          /* largest finite */
        {65519.0f, 0x7bff},          /* rounds down */
        {65520.0f, 0x7c00},          /* halfway to 2^16: ties to even = inf */
        {1e9f, 0x7c00},              /* overflow */
        {0.1f, 0x2e66},              /* 0.0999755859375 */
        {5.9604644775390625e-08f, 0x0001}, /* 2^-24, smallest subnormal */
        {2.98023223876953125e-08f, 0x0000}, /* 2^-25: tie between 0 and 2^-24, to even = 0 */
        {4.4703483581542969e-08f, 0x0001},  /* 1.5 * 2^-25 rounds up */
        {6.103515625e-05f, 0x0400},  /* 2^-14, smallest normal */
        {1.0009765625f, 0x3c01},     /* 1 + 2^-10 */
        {1.00048828125f, 0x3c00},    /* 1 + 2^-11: tie, to even */
        {1.00146484375f, 0x3c02},    /* 1 + 3 * 2^-11: tie, to even (up) */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t h = lq_f32_to_f16(cases[i].f);
        if (h != cases[i].h) print_error("f16(%.10g) = 0x%04x, want 0x%04x\n", cases[i].f, h, cases[i].h);
        assert_int_equal(h, cases[i].h);
    }
    assert_true(isinf(lq_f16_to_f32(0x7c00)) && lq_f16_to_f32(0x7c00) > 0);
    assert_true(isnan(lq_f16_to_f32(0x7e00)));
    assert_true(isnan(lq_f16_to_f32(lq_f32_to_f16(NAN))));
}

/* Every finite binary16 value survives f16 -> f32 -> f16 exactly, and the f32 value is exact:
 * checked against ldexp of its fields. */
static void test_f16_round_trip_exhaustive(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
        if (exp == 0x1f) continue;
        double want = exp == 0 ? ldexp((double)man, -24) : ldexp(1024.0 + man, (int)exp - 25);
        if (h & 0x8000) want = -want;
        float f = lq_f16_to_f32((uint16_t)h);
        assert_true((double)f == want);
        assert_int_equal(lq_f32_to_f16(f), h);
    }
}

static void test_bf16(void **state) {
    (void)state;
    assert_int_equal(lq_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(lq_f32_to_bf16(-2.0f), 0xc000);
    /* 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even -> 1 */
    assert_int_equal(lq_f32_to_bf16(1.00390625f), 0x3f80);
    /* 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even -> up */
    assert_int_equal(lq_f32_to_bf16(1.01171875f), 0x3f82);
    assert_int_equal(lq_f32_to_bf16(lq_bits_f32(0x3f808001u)), 0x3f81); /* one ulp above the tie */
    assert_true(isnan(lq_bf16_to_f32(lq_f32_to_bf16(NAN))));
    assert_true(isinf(lq_bf16_to_f32(lq_f32_to_bf16(INFINITY))));
    for (uint32_t b = 0; b < 65536; b++) {
        if (((b >> 7) & 0xff) == 0xff) continue;
        assert_int_equal(lq_f32_to_bf16(lq_bf16_to_f32((uint16_t)b)), b);
    }
    /* table entries convert whole rows */
    float src[4] = {1.5f, -0.25f, 3.0f, 1e-3f}, back[4];
    uint16_t packed[4];
    assert_int_equal(lq_dtype_info(LQ_DTYPE_BF16)->from_f32(src, packed, 4, NULL, 0, NULL), LQ_OK);
    lq_dtype_info(LQ_DTYPE_BF16)->to_f32(packed, back, 4, NULL, 0);
    assert_allclose(back, src, 4, 4e-3, 0, "bf16 row round trip");
    assert_int_equal(lq_dtype_info(LQ_DTYPE_F16)->from_f32(src, packed, 4, NULL, 0, NULL), LQ_OK);
    lq_dtype_info(LQ_DTYPE_F16)->to_f32(packed, back, 4, NULL, 0);
    assert_allclose(back, src, 4, 5e-4, 0, "f16 row round trip");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_traits_table),
        cmocka_unit_test(test_f16_known_values),
        cmocka_unit_test(test_f16_round_trip_exhaustive),
        cmocka_unit_test(test_bf16),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
