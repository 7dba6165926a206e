/* tests/cuda/test_cuda_convert.c: the layout kernels, bit for bit against the CPU: the strided copy
 * (lq_cuda_strided, see test_strided_layouts), and the f32 -> bf16 conversions that the products in
 * bf16 math read (lq_cuda_to_bf16, lq_cuda_to_bf16_pair) against lq_f32_to_bf16 (round to
 * nearest even), over the layouts that pick each kernel: contiguous with and without 16-byte
 * alignment and with a tail under 8, row-strided with the 8-wide rows kernel's conditions met and
 * each one missed. The output is poisoned first; padding between rows must stay untouched. Without
 * CUDA it prints "SKIPPED: <reason>". */
#include <string.h>

#include "autograd/cuda_impl.h"
#include "core/rng.h"
#include "quant/half.h"
#include "tests/cuda/cuda_testutil.h"
#include "tests/testutil.h"

#define POISON 0x7fc1u /* a NaN no conversion of these inputs gives */

static uint64_t g_seed;

typedef struct layout {
    int64_t rows, cols, ldd, lds, doff, soff; /* strides in elements; offsets in elements from 256-aligned */
    const char *what;
} layout;

/* Inputs with every rounding case: random normals, values exactly halfway between two bf16s (ties
 * to even both ways), zeros of both signs, infinities and large values. */
static float input(lq_rng *r, int64_t i) {
    switch (i % 11) {
    case 3: { /* a bf16 plus half an ulp: the tie */
        uint32_t u = (uint32_t)(lq_rng_u64(r) & 0x7f7f0000u) | 0x8000u;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    case 5: return i % 2 ? -0.0f : 0.0f;
    case 7: return i % 3 ? INFINITY : -INFINITY;
    case 9: return 65504.0f * (lq_rng_uniform(r) - 0.5f);
    default: return 4.0f * (lq_rng_uniform(r) - 0.5f);
    }
}

/* One layout: returns the number of wrong elements (printed). */
static int check(lq_ctx *ctx, lq_rng *r, const layout *L, bool pair) {
    int64_t sn = L->soff + (L->rows - 1) * L->lds + L->cols, dn = L->doff + (L->rows - 1) * L->ldd + L->cols;
    float *hs = malloc(sizeof(float) * (size_t)sn);
    uint16_t *hd = malloc(sizeof(uint16_t) * (size_t)dn), *hd2 = malloc(sizeof(uint16_t) * (size_t)dn);
    lq_err err;
    lq_err_clear(&err);
    float *ds = lq_cuda_malloc(sizeof(float) * (size_t)sn, &err);
    uint16_t *dd = lq_cuda_malloc(sizeof(uint16_t) * (size_t)dn, &err);
    uint16_t *dd2 = lq_cuda_malloc(sizeof(uint16_t) * (size_t)dn, &err);
    if (!hs || !hd || !hd2 || !ds || !dd || !dd2) fail_msg("allocation: %s", err.msg);
    for (int64_t i = 0; i < sn; i++) hs[i] = input(r, i);
    for (int64_t i = 0; i < dn; i++) hd[i] = POISON;
    if (lq_cuda_copy(ds, hs, sizeof(float) * (size_t)sn, LQ_COPY_H2D, NULL, &err) != LQ_OK ||
        lq_cuda_copy(dd, hd, sizeof(uint16_t) * (size_t)dn, LQ_COPY_H2D, NULL, &err) != LQ_OK ||
        lq_cuda_copy(dd2, hd, sizeof(uint16_t) * (size_t)dn, LQ_COPY_H2D, NULL, &err) != LQ_OK)
        fail_msg("upload: %s", err.msg);
    lq_status s;
    if (pair) /* contiguous: the pair kernel, the second array half as long, from another offset */
        s = lq_cuda_to_bf16_pair(ctx, dd + L->doff, ds + L->soff, L->rows * L->cols, dd2 + L->doff, ds + L->soff,
                                 L->rows * L->cols / 2);
    else
        s = lq_cuda_to_bf16(ctx, dd + L->doff, L->ldd, ds + L->soff, L->lds, L->rows, L->cols);
    if (s != LQ_OK || lq_cuda_sync(NULL, &err) != LQ_OK) fail_msg("%s: %s", L->what, lq_ctx_error(ctx)->msg);
    if (lq_cuda_copy(hd, dd, sizeof(uint16_t) * (size_t)dn, LQ_COPY_D2H, NULL, &err) != LQ_OK ||
        lq_cuda_copy(hd2, dd2, sizeof(uint16_t) * (size_t)dn, LQ_COPY_D2H, NULL, &err) != LQ_OK)
        fail_msg("download: %s", err.msg);
    int bad = 0;
    for (int64_t i = 0; i < dn; i++) {
        int64_t o = i - L->doff, row = o >= 0 ? o / L->ldd : -1, col = o >= 0 ? o % L->ldd : -1;
        bool in = pair ? (o >= 0 && o < L->rows * L->cols) : (row >= 0 && row < L->rows && col < L->cols);
        uint16_t want = in ? lq_f32_to_bf16(hs[L->soff + (pair ? o : row * L->lds + col)]) : POISON;
        if (hd[i] != want && bad++ < 3)
            print_error("%s: element %lld: 0x%04x, want 0x%04x\n", L->what, (long long)i, hd[i], want);
        if (pair) {
            bool in2 = o >= 0 && o < L->rows * L->cols / 2;
            uint16_t want2 = in2 ? lq_f32_to_bf16(hs[L->soff + o]) : POISON;
            if (hd2[i] != want2 && bad++ < 3)
                print_error("%s (second): element %lld: 0x%04x, want 0x%04x\n", L->what, (long long)i, hd2[i], want2);
        }
    }
    print_message("  %-44s %lld x %lld: %d wrong\n", L->what, (long long)L->rows, (long long)L->cols, bad);
    lq_cuda_free(ds);
    lq_cuda_free(dd);
    lq_cuda_free(dd2);
    free(hs);
    free(hd);
    free(hd2);
    return bad;
}

static void test_to_bf16_layouts(void **state) {
    (void)state;
    lq_ctx *ctx = NULL;
    lq_ctx_opts o = {.n_threads = 1, .arena_bytes = 1 << 20, .device = LQ_DEVICE_CUDA, .cuda_math = LQ_CUDA_MATH_BF16};
    lq_err err;
    lq_err_clear(&err);
    if (lq_ctx_init(&ctx, &o, &err) != LQ_OK) fail_msg("ctx: %s", err.msg);
    lq_rng r;
    lq_rng_seed(&r, g_seed);
    int64_t w = 8 * lq_rng_int(&r, 2, 40); /* a multiple of 8 columns */
    const layout ls[] = {
        {1, 4096 + lq_rng_int(&r, 0, 7), 0, 0, 0, 0, "contiguous, aligned (x8 + tail)"},
        {1, 1000 + lq_rng_int(&r, 0, 99), 0, 0, 3, 1, "contiguous, unaligned (scalar)"},
        {1, 5, 0, 0, 0, 0, "contiguous, under 8"},
        {lq_rng_int(&r, 2, 40), w, w + 16, w, 0, 0, "rows: x8 kernel ([dY | du] with r 16)"},
        {lq_rng_int(&r, 2, 40), 16, w + 16, 16, w, 0, "rows: x8 kernel (du beside dY)"},
        {lq_rng_int(&r, 2, 40), w + 4, w + 12, w + 4, 0, 0, "rows: cols % 8 != 0 (scalar)"},
        {lq_rng_int(&r, 2, 40), w, w + 4, w, 0, 0, "rows: ldd % 8 != 0 (scalar)"},
        {lq_rng_int(&r, 2, 40), w, w + 8, w + 2, 0, 0, "rows: lds % 4 != 0 (scalar)"},
        {lq_rng_int(&r, 2, 40), w, w + 8, w, 4, 0, "rows: destination unaligned (scalar)"},
        {lq_rng_int(&r, 2, 40), w, w + 8, w + 4, 0, 2, "rows: source unaligned (scalar)"},
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof ls / sizeof ls[0]; i++) {
        layout L = ls[i];
        if (!L.ldd) L.ldd = L.lds = L.cols;
        bad += check(ctx, &r, &L, false);
    }
    layout P = {1, 3000 + lq_rng_int(&r, 0, 99), 0, 0, 0, 0, "pair (two arrays, one launch)"};
    P.ldd = P.lds = P.cols;
    bad += check(ctx, &r, &P, true);
    lq_ctx_free(ctx);
    if (bad) fail_msg("%d element(s) wrong", bad);
}

/* lq_cuda_strided (copy and accumulate between f32 layouts of one logical shape) against the CPU's
 * lq_strided_copy / lq_strided_add, exactly. The 4-wide kernel takes a unit-stride innermost dim of
 * a multiple of 4 with 16-byte strides elsewhere (attention's head transposes); each case below
 * meets or misses one of those conditions. Source and destination are strided views of padded
 * buffers: elements outside the destination view must keep their values. */
typedef struct sl_case {
    int64_t ne[4];
    int perm[4];      /* the source's storage order: perm[0] outermost */
    int64_t pad, off; /* floats of padding after each destination row, and the source's offset */
    bool acc;
    const char *what;
} sl_case;

static int strided_case(lq_ctx *ctx, lq_rng *r, const sl_case *c) {
    const int64_t *ne = c->ne;
    int64_t n = ne[0] * ne[1] * ne[2] * ne[3];
    size_t snb[4], dnb[4];
    int64_t st = 1;
    for (int k = 3; k >= 0; k--) { /* source: contiguous in perm order */
        snb[c->perm[k]] = (size_t)st * sizeof(float);
        st *= ne[c->perm[k]];
    }
    int64_t ld = ne[3] + c->pad; /* destination: rows of ld floats */
    dnb[3] = sizeof(float);
    dnb[2] = (size_t)ld * sizeof(float);
    dnb[1] = dnb[2] * (size_t)ne[2];
    dnb[0] = dnb[1] * (size_t)ne[1];
    int64_t sn = n + c->off, dn = ne[0] * ne[1] * ne[2] * ld;
    float *hs = malloc(sizeof(float) * (size_t)sn), *hd = malloc(sizeof(float) * (size_t)dn);
    float *want = malloc(sizeof(float) * (size_t)dn), *got = malloc(sizeof(float) * (size_t)dn);
    lq_err err;
    lq_err_clear(&err);
    float *ds = lq_cuda_malloc(sizeof(float) * (size_t)sn, &err);
    float *dd = lq_cuda_malloc(sizeof(float) * (size_t)dn, &err);
    if (!hs || !hd || !want || !got || !ds || !dd) fail_msg("allocation: %s", err.msg);
    for (int64_t i = 0; i < sn; i++) hs[i] = lq_rng_uniform(r) - 0.5f;
    for (int64_t i = 0; i < dn; i++) hd[i] = want[i] = lq_rng_uniform(r) + 1.0f;
    if (c->acc) lq_strided_add(want, dnb, hs + c->off, snb, ne, 1);
    else lq_strided_copy(want, dnb, hs + c->off, snb, ne, 1);
    if (lq_cuda_copy(ds, hs, sizeof(float) * (size_t)sn, LQ_COPY_H2D, NULL, &err) != LQ_OK ||
        lq_cuda_copy(dd, hd, sizeof(float) * (size_t)dn, LQ_COPY_H2D, NULL, &err) != LQ_OK)
        fail_msg("upload: %s", err.msg);
    if (lq_cuda_strided(ctx, dd, dnb, ds + c->off, snb, ne, c->acc) != LQ_OK || lq_cuda_sync(NULL, &err) != LQ_OK ||
        lq_cuda_copy(got, dd, sizeof(float) * (size_t)dn, LQ_COPY_D2H, NULL, &err) != LQ_OK)
        fail_msg("%s: %s %s", c->what, lq_ctx_error(ctx)->msg, err.msg);
    int bad = 0;
    for (int64_t i = 0; i < dn; i++)
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0 && bad++ < 3)
            print_error("%s: element %lld: %.9g, want %.9g\n", c->what, (long long)i, (double)got[i], (double)want[i]);
    print_message("  %-44s (%lld, %lld, %lld, %lld): %d wrong\n", c->what, (long long)ne[0], (long long)ne[1],
                  (long long)ne[2], (long long)ne[3], bad);
    lq_cuda_free(ds);
    lq_cuda_free(dd);
    free(hs);
    free(hd);
    free(want);
    free(got);
    return bad;
}

static void test_strided_layouts(void **state) {
    (void)state;
    lq_ctx *ctx = NULL;
    lq_ctx_opts o = {.n_threads = 1, .arena_bytes = 1 << 20, .device = LQ_DEVICE_CUDA, .cuda_math = LQ_CUDA_MATH_FP32};
    lq_err err;
    lq_err_clear(&err);
    if (lq_ctx_init(&ctx, &o, &err) != LQ_OK) fail_msg("ctx: %s", err.msg);
    lq_rng r;
    lq_rng_seed(&r, g_seed ^ 0x5751u);
    int64_t B = lq_rng_int(&r, 1, 3), T = lq_rng_int(&r, 3, 40), H = lq_rng_int(&r, 1, 6), D = 4 * lq_rng_int(&r, 1, 8);
    const sl_case cs[] = {
        /* (B, H, T, D) from (B, T, H, D) storage: attention's transpose */
        {{B, H, T, D}, {0, 2, 1, 3}, 0, 0, false, "head transpose (x4)"},
        {{B, H, T, D}, {0, 2, 1, 3}, 4, 0, true, "head transpose, accumulate, padded rows (x4)"},
        {{1, H, T, D}, {0, 2, 1, 3}, 0, 0, false, "batch of one (x4)"},
        {{B, H, T, D + 1}, {0, 2, 1, 3}, 0, 0, false, "D % 4 != 0 (scalar)"},
        {{B, H, T, D}, {0, 2, 1, 3}, 2, 0, false, "destination rows off 16 bytes (scalar)"},
        {{B, H, T, D}, {0, 2, 1, 3}, 0, 1, false, "source off 16 bytes (scalar)"},
        {{B, H, D, T}, {0, 1, 3, 2}, 0, 0, true, "innermost stride not 1 (scalar)"},
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) bad += strided_case(ctx, &r, &cs[i]);
    lq_ctx_free(ctx);
    if (bad) fail_msg("%d element(s) wrong", bad);
}

int main(void) {
    int rc = 0;
    if (!lq_cuda_test_should_run(&rc)) return rc;
    g_seed = lq_cuda_test_seed("test_cuda_convert");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_to_bf16_layouts),
        cmocka_unit_test(test_strided_layouts),
    };
    return cmocka_run_group_tests_name("test_cuda_convert", tests, NULL, NULL);
}
