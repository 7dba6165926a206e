/* tests/test_quant_ggml.c: the ggml block formats against the gguf package (fixtures from
 * tools/gen_gguf_fixtures.py): dequantization bit for bit on every kernel path, q8_0 / q4_0
 * quantization byte for byte, vector paths equal to the scalar one, the table, bad input. */
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "quant/kernels_ggml.h"
#include "quant/quant.h"

static lq_fixture *g_fx;

static int setup(void **state) {
    (void)state;
    char path[512];
    g_fx = lq_fixture_load(lq_fixture_path("ggml_blocks.lqfx", path, sizeof path));
    return g_fx ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    lq_fixture_free(g_fx);
    return 0;
}

typedef struct ggml_type {
    lq_dtype t;
    const char *name;
    int64_t block;
    size_t bytes;
    bool quantizes;
    bool vector; /* has AVX2 / AVX-512 kernels */
} ggml_type;

static const ggml_type types[] = {
    {LQ_DTYPE_Q4_0, "q4_0", 32, sizeof(lq_block_q4_0), true, true},
    {LQ_DTYPE_Q4_1, "q4_1", 32, sizeof(lq_block_q4_1), false, false},
    {LQ_DTYPE_Q5_0, "q5_0", 32, sizeof(lq_block_q5_0), false, false},
    {LQ_DTYPE_Q5_1, "q5_1", 32, sizeof(lq_block_q5_1), false, false},
    {LQ_DTYPE_Q8_0, "q8_0", 32, sizeof(lq_block_q8_0), true, true},
    {LQ_DTYPE_Q4_K, "q4_K", 256, sizeof(lq_block_q4_k), false, true},
    {LQ_DTYPE_Q5_K, "q5_K", 256, sizeof(lq_block_q5_k), false, false},
    {LQ_DTYPE_Q6_K, "q6_K", 256, sizeof(lq_block_q6_k), false, true},
};
#define N_TYPES ((int)(sizeof types / sizeof types[0]))

static const char *path_name[LQ_GGML_PATH_COUNT] = {"auto", "scalar", "avx2", "avx512"};

/* Parses "<prefix>/<type>/<case>/<field>" exactly (field must match). */
static bool parse_name(const char *name, const char *prefix, const char *field, char type[32], char cas[64]) {
    char fmt[64];
    int end = -1;
    snprintf(fmt, sizeof fmt, "%s/%%31[^/]/%%63[^/]/%s%%n", prefix, field);
    return sscanf(name, fmt, type, cas, &end) == 2 && end >= 0 && name[end] == '\0';
}

static void *copy_out(const lq_fx_tensor *t, size_t elem) {
    void *p = malloc((size_t)t->numel * elem + 1);
    assert_non_null(p);
    memcpy(p, t->data, (size_t)t->numel * elem);
    return p;
}

/* Bitwise equality of two float arrays (NaN matches any NaN when nan_any); names the first miss. */
static void assert_same_bits(const float *got, const float *want, int64_t n, bool nan_any, const char *what) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t a, b;
        memcpy(&a, &got[i], 4);
        memcpy(&b, &want[i], 4);
        if (a == b || (nan_any && isnan(got[i]) && isnan(want[i]))) continue;
        fail_msg("%s: element %lld is %.9g (0x%08x), gguf has %.9g (0x%08x)", what, (long long)i, got[i], a,
                 want[i], b);
    }
}

static void test_table_matches_structs(void **state) {
    (void)state;
    for (int k = 0; k < N_TYPES; k++) {
        const ggml_type *g = &types[k];
        const lq_dtype_traits *tr = lq_dtype_info(g->t);
        if (!tr) fail_msg("%s has no traits row", g->name);
        assert_string_equal(tr->name, g->name);
        assert_int_equal(lq_dtype_from_name(g->name), g->t);
        assert_int_equal(tr->block_size, g->block);
        assert_int_equal(tr->block_bytes, g->bytes);
        assert_false(tr->needs_qstate);
        assert_false(tr->is_float);
        assert_non_null(tr->to_f32);
        assert_true((tr->from_f32 != NULL) == g->quantizes);
        assert_int_equal(lq_dtype_bytes(g->t, 3 * g->block), 3 * g->bytes);
        assert_int_equal(lq_dtype_bytes(g->t, g->block + 2), 0);
        assert_true(lq_ggml_path_available(g->t, LQ_GGML_PATH_SCALAR));
        assert_true(lq_ggml_path_available(g->t, LQ_GGML_PATH_AUTO));
        if (!g->vector) assert_false(lq_ggml_path_available(g->t, LQ_GGML_PATH_AVX2));
    }
    /* bits per weight as ggml documents them */
    assert_int_equal(lq_dtype_bytes(LQ_DTYPE_Q4_K, 256) * 8, 144 * 8); /* 4.5 bpw */
    assert_int_equal(lq_dtype_bytes(LQ_DTYPE_Q6_K, 256 * 4), 210 * 4); /* 6.5625 bpw */
    assert_false(lq_ggml_path_available(LQ_DTYPE_F32, LQ_GGML_PATH_SCALAR));
}

/* Dequantizes one fixture case on every path this CPU has, from an aligned and a misaligned
 * copy, and through the traits table; all must equal gguf's floats bit for bit. */
static void check_deq_case(const ggml_type *g, const lq_fx_tensor *tb, const lq_fx_tensor *tf, int *n_paths) {
    const int64_t nb = tb->shape[0];
    assert_int_equal(tb->ndim, 2);
    assert_int_equal(tb->shape[1], (int64_t)g->bytes);
    assert_int_equal(tf->numel, nb * g->block);
    const int64_t n = tf->numel;
    uint8_t *raw = malloc((size_t)tb->numel + 2);
    float *want = copy_out(tf, 4), *got = malloc((size_t)n * 4);
    assert_non_null(raw);
    assert_non_null(got);
    char what[256];
    for (int misalign = 0; misalign <= 1; misalign++) {
        uint8_t *src = raw + misalign; /* malloc is 16-aligned: +1 is an odd address */
        memcpy(src, tb->data, (size_t)tb->numel);
        for (int p = 0; p < LQ_GGML_PATH_COUNT; p++) {
            if (!lq_ggml_path_available(g->t, (lq_ggml_path)p)) continue;
            lq_err err = {0};
            memset(got, 0xA5, (size_t)n * 4); /* poison */
            lq_status s = lq_ggml_dequantize(g->t, src, n, got, (lq_ggml_path)p, &err);
            if (s != LQ_OK) fail_msg("%s: %s", tb->name, err.msg);
            snprintf(what, sizeof what, "%s on path %s%s", tb->name, path_name[p], misalign ? " (odd address)" : "");
            assert_same_bits(got, want, n, false, what);
            (*n_paths)++;
        }
        memset(got, 0xA5, (size_t)n * 4);
        lq_dtype_info(g->t)->to_f32(src, got, n, NULL, 0);
        snprintf(what, sizeof what, "%s through the traits table%s", tb->name, misalign ? " (odd address)" : "");
        assert_same_bits(got, want, n, false, what);
    }
    free(raw);
    free(want);
    free(got);
}

static void test_dequant_matches_gguf(void **state) {
    (void)state;
    int cases[N_TYPES] = {0}, n_paths = 0;
    for (int i = 0; i < g_fx->n; i++) {
        const lq_fx_tensor *tb = &g_fx->t[i];
        char type[32], cas[64];
        if (!parse_name(tb->name, "deq", "bytes", type, cas)) continue;
        const lq_fx_tensor *tf = lq_fixture_find(g_fx, "deq/%s/%s/f32", type, cas);
        if (!tf) fail_msg("%s has no f32 record", tb->name);
        for (int k = 0; k < N_TYPES; k++) {
            if (strcmp(types[k].name, type) != 0) continue;
            check_deq_case(&types[k], tb, tf, &n_paths);
            cases[k]++;
        }
    }
    for (int k = 0; k < N_TYPES; k++) {
        /* random + edge for all; + quantized for the types gguf quantizes */
        const int want = types[k].block == 32 ? 3 : 2;
        if (cases[k] != want) fail_msg("%s: %d fixture cases, expected %d", types[k].name, cases[k], want);
    }
    print_message("dequantized %d fixture cases x paths bit-identical to gguf\n", n_paths);
}

/* f16 and bf16 (already in the table) against gguf's conversions; NaN payloads are not compared
 * (x86's F16C quiets them). */
static void test_float_types_match_gguf(void **state) {
    (void)state;
    const char *names[] = {"f16", "bf16"};
    const lq_dtype dt[] = {LQ_DTYPE_F16, LQ_DTYPE_BF16};
    for (int k = 0; k < 2; k++) {
        const lq_fx_tensor *tb = lq_fixture_find(g_fx, "deq/%s/random/bytes", names[k]);
        const lq_fx_tensor *tf = lq_fixture_find(g_fx, "deq/%s/random/f32", names[k]);
        assert_non_null(tb);
        assert_non_null(tf);
        assert_int_equal(tb->numel, 2 * tf->numel);
        uint8_t *src = copy_out(tb, 1);
        float *want = copy_out(tf, 4), *got = malloc((size_t)tf->numel * 4);
        lq_dtype_info(dt[k])->to_f32(src, got, tf->numel, NULL, 0);
        assert_same_bits(got, want, tf->numel, true, tb->name);
        free(src);
        free(want);
        free(got);
    }
}

static void test_quantize_matches_gguf(void **state) {
    (void)state;
    int n_cases = 0;
    for (int i = 0; i < g_fx->n; i++) {
        const lq_fx_tensor *tx = &g_fx->t[i];
        char type[32], cas[64];
        if (!parse_name(tx->name, "quant", "x", type, cas)) continue;
        const lq_fx_tensor *tb = lq_fixture_find(g_fx, "quant/%s/%s/bytes", type, cas);
        assert_non_null(tb);
        const lq_dtype t = lq_dtype_from_name(type);
        const lq_dtype_traits *tr = lq_dtype_info(t);
        assert_non_null(tr);
        assert_int_equal(tb->numel, tx->numel / 32 * (int64_t)tr->block_bytes);
        float *x = copy_out(tx, 4);
        uint8_t *want = copy_out(tb, 1);
        uint8_t *got = malloc((size_t)tb->numel + 1);
        for (int via_table = 0; via_table <= 1; via_table++) {
            uint8_t *dst = got + via_table; /* the table path writes to an odd address */
            memset(dst, 0x5A, (size_t)tb->numel);
            lq_err err = {0};
            lq_status s = via_table ? tr->from_f32(x, dst, tx->numel, NULL, 0, &err)
                                    : lq_ggml_quantize(t, x, tx->numel, dst, &err);
            if (s != LQ_OK) fail_msg("%s: %s", tx->name, err.msg);
            for (int64_t j = 0; j < tb->numel; j++) {
                if (dst[j] == want[j]) continue;
                const int64_t blk = j / (int64_t)tr->block_bytes;
                fail_msg("%s%s: block %lld byte %lld is 0x%02x, gguf wrote 0x%02x (block input starts %.9g %.9g)",
                         tx->name, via_table ? " (traits table)" : "", (long long)blk,
                         (long long)(j % (int64_t)tr->block_bytes), dst[j], want[j], x[blk * 32], x[blk * 32 + 1]);
            }
        }
        n_cases++;
        free(x);
        free(want);
        free(got);
    }
    /* normal, heavy, ties, zeros, large, tiny for each of q8_0 and q4_0 */
    assert_int_equal(n_cases, 12);
}

/* The one case where ggml and gguf differ: ggml's q4_0 starts from max = +0, so a block of zeros
 * gets d = 0 / -8 = -0 whatever the sign of its first element; gguf takes the first element. */
static void test_q4_0_zero_block_follows_ggml(void **state) {
    (void)state;
    float x[32];
    for (int i = 0; i < 32; i++) x[i] = (i % 3) ? 0.0f : -0.0f; /* starts with -0 */
    lq_block_q4_0 b;
    lq_err err = {0};
    assert_int_equal(lq_ggml_quantize(LQ_DTYPE_Q4_0, x, 32, &b, &err), LQ_OK);
    assert_int_equal(b.d, 0x8000);
    for (int j = 0; j < 16; j++) assert_int_equal(b.qs[j], 0x88);
    lq_block_q8_0 c;
    assert_int_equal(lq_ggml_quantize(LQ_DTYPE_Q8_0, x, 32, &c, &err), LQ_OK);
    assert_int_equal(c.d, 0x0000); /* 0 / 127 = +0 */
    for (int j = 0; j < 32; j++) assert_int_equal(c.qs[j], 0);
}

/* Random blocks (any code bits, finite f16 scales) on every vector path against the scalar one. */
static void test_vector_paths_match_scalar(void **state) {
    (void)state;
    lq_rng rng;
    lq_rng_seed(&rng, 77);
    int compared = 0;
    for (int k = 0; k < N_TYPES; k++) {
        const ggml_type *g = &types[k];
        if (!g->vector) continue;
        const int64_t nb = g->block == 32 ? 1531 : 197, n = nb * g->block;
        uint8_t *src = malloc((size_t)nb * g->bytes);
        float *ref = malloc((size_t)n * 4), *got = malloc((size_t)n * 4);
        for (size_t j = 0; j < (size_t)nb * g->bytes; j++) src[j] = (uint8_t)(lq_rng_u64(&rng) >> 56);
        /* keep the f16 fields finite: clear one exponent bit where all five are set */
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *blk = src + b * (int64_t)g->bytes;
            const size_t offs[2] = {g->t == LQ_DTYPE_Q6_K ? 208u : 0u, 2u};
            const int nf = (g->t == LQ_DTYPE_Q4_K) ? 2 : 1;
            for (int f = 0; f < nf; f++)
                if ((blk[offs[f] + 1] & 0x7c) == 0x7c) blk[offs[f] + 1] &= (uint8_t)~0x40;
        }
        lq_err err = {0};
        assert_int_equal(lq_ggml_dequantize(g->t, src, n, ref, LQ_GGML_PATH_SCALAR, &err), LQ_OK);
        for (int p = LQ_GGML_PATH_AVX2; p < LQ_GGML_PATH_COUNT; p++) {
            if (!lq_ggml_path_available(g->t, (lq_ggml_path)p)) {
                print_message("%s: path %s not on this CPU\n", g->name, path_name[p]);
                continue;
            }
            memset(got, 0xA5, (size_t)n * 4);
            assert_int_equal(lq_ggml_dequantize(g->t, src, n, got, (lq_ggml_path)p, &err), LQ_OK);
            char what[96];
            snprintf(what, sizeof what, "%s %s vs scalar", g->name, path_name[p]);
            assert_same_bits(got, ref, n, false, what);
            compared++;
        }
        free(src);
        free(ref);
        free(got);
    }
    if (compared == 0) skip(); /* no vector unit: nothing compared, so not a pass */
}

/* dequant(quant(x)) is within half a step of x for q8_0: |err| <= d/2 + 127 |f16(d) - d|, and
 * f16 rounds d by at most 2^-11 relative. */
static void test_round_trip_error(void **state) {
    (void)state;
    lq_rng rng;
    lq_rng_seed(&rng, 5);
    enum { N = 32 * 64 };
    float x[N], y[N];
    uint8_t q[64 * 34];
    for (int i = 0; i < N; i++) x[i] = lq_rng_normal(&rng) * (float)(1 + i / 32);
    lq_err err = {0};
    assert_int_equal(lq_ggml_quantize(LQ_DTYPE_Q8_0, x, N, q, &err), LQ_OK);
    assert_int_equal(lq_ggml_dequantize(LQ_DTYPE_Q8_0, q, N, y, LQ_GGML_PATH_AUTO, &err), LQ_OK);
    for (int b = 0; b < N / 32; b++) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
        const float bound = amax / 127 * (0.5f + 127.0f / 2048.0f) * 1.001f;
        for (int j = 0; j < 32; j++) assert_true(fabsf(y[b * 32 + j] - x[b * 32 + j]) <= bound);
    }
}

static void test_quantize_rejects_nonfinite(void **state) {
    (void)state;
    float x[96];
    for (int i = 0; i < 96; i++) x[i] = 0.01f * (float)i;
    uint8_t dst[3 * 34], before[3 * 34];
    memset(dst, 0x33, sizeof dst);
    memcpy(before, dst, sizeof dst);
    const lq_dtype qt[2] = {LQ_DTYPE_Q8_0, LQ_DTYPE_Q4_0};
    for (int k = 0; k < 2; k++) {
        lq_err err = {0};
        x[37] = NAN;
        assert_int_equal(lq_ggml_quantize(qt[k], x, 96, dst, &err), LQ_ERR_NUMERIC);
        assert_non_null(strstr(err.msg, "element 37"));
        assert_non_null(strstr(err.msg, "block 1"));
        assert_non_null(strstr(err.msg, "NaN"));
        assert_memory_equal(dst, before, sizeof dst); /* nothing written */
        x[37] = 1.0f;
        x[95] = -INFINITY;
        lq_err_clear(&err);
        /* through the table, at element 64 of a tensor: the message counts from the tensor start */
        assert_int_equal(lq_dtype_info(qt[k])->from_f32(x, dst, 96, NULL, 64, &err), LQ_ERR_NUMERIC);
        assert_non_null(strstr(err.msg, "element 159"));
        assert_non_null(strstr(err.msg, "Inf"));
        x[95] = 0.5f;
    }
}

static void test_bad_arguments(void **state) {
    (void)state;
    float x[64] = {0}, y[64];
    uint8_t q[256];
    lq_err err = {0};
    assert_int_equal(lq_ggml_quantize(LQ_DTYPE_Q8_0, x, 33, q, &err), LQ_ERR_ARG);
    assert_non_null(strstr(err.msg, "33"));
    lq_err_clear(&err);
    assert_int_equal(lq_ggml_quantize(LQ_DTYPE_Q4_K, x, 64, q, &err), LQ_ERR_UNSUPPORTED);
    lq_err_clear(&err);
    assert_int_equal(lq_ggml_quantize(LQ_DTYPE_F32, x, 64, q, &err), LQ_ERR_ARG);
    lq_err_clear(&err);
    memset(q, 0, sizeof q);
    assert_int_equal(lq_ggml_dequantize(LQ_DTYPE_Q8_0, q, 48, y, LQ_GGML_PATH_AUTO, &err), LQ_ERR_ARG);
    lq_err_clear(&err);
    assert_int_equal(lq_ggml_dequantize(LQ_DTYPE_Q5_1, q, 32, y, LQ_GGML_PATH_AVX2, &err), LQ_ERR_UNSUPPORTED);
    lq_err_clear(&err);
    assert_int_equal(lq_ggml_dequantize(LQ_DTYPE_Q8_0, q, 32, y, (lq_ggml_path)42, &err), LQ_ERR_UNSUPPORTED);
    lq_err_clear(&err);
    assert_int_equal(lq_ggml_dequantize(LQ_DTYPE_BF16, q, 32, y, LQ_GGML_PATH_AUTO, &err), LQ_ERR_ARG);
    lq_err_clear(&err);
    assert_int_equal(lq_ggml_dequantize(LQ_DTYPE_Q8_0, q, 0, y, LQ_GGML_PATH_SCALAR, &err), LQ_OK);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_matches_structs),
        cmocka_unit_test(test_dequant_matches_gguf),
        cmocka_unit_test(test_float_types_match_gguf),
        cmocka_unit_test(test_quantize_matches_gguf),
        cmocka_unit_test(test_q4_0_zero_block_follows_ggml),
        cmocka_unit_test(test_vector_paths_match_scalar),
        cmocka_unit_test(test_round_trip_error),
        cmocka_unit_test(test_quantize_rejects_nonfinite),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
