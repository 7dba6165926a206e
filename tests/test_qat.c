/* tests/test_qat.c: quantization-aware layers: the integer product against a double reference,
 * integer evaluation equal to fake-quant evaluation (linear and conv, static / dynamic / PACT / LSQ),
 * the safetensors export read back, and short QAT runs of the Fashion-MNIST models whose loss falls. */
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/rng.h"
#include "models/qat.h"
#include "train/qat_impl.h"
#include "train/train.h"

static lq_ctx *new_ctx(void) {
    lq_ctx *ctx;
    lq_err err = {0};
    lq_ctx_opts o = {.n_threads = 2, .seed = 7};
    assert_int_equal(lq_ctx_init(&ctx, &o, &err), LQ_OK);
    return ctx;
}

static lq_qspec spec(const char *s) {
    lq_qspec q;
    lq_err err = {0};
    assert_int_equal(lq_qspec_parse(s, &q, &err), LQ_OK);
    return q;
}

/* --- lq_int_linear ------------------------------------------------------------------------------- */

static void test_int_linear_reference(void **state) {
    (void)state;
    lq_rng rng;
    lq_rng_seed(&rng, 11);
    const int64_t M = 7, N = 5, K = 96, G = 32;
    int16_t xd[7 * 96], wd[5 * 96];
    float xs[7], ws[5 * 3], bias[5], y[35];
    for (int64_t i = 0; i < M * K; i++) xd[i] = (int16_t)lq_rng_int(&rng, -255, 256);
    for (int64_t i = 0; i < N * K; i++) wd[i] = (int16_t)lq_rng_int(&rng, -255, 256);
    for (int64_t i = 0; i < M; i++) xs[i] = 0.01f + lq_rng_uniform(&rng);
    for (int64_t i = 0; i < N * (K / G); i++) ws[i] = 0.01f + lq_rng_uniform(&rng);
    for (int64_t i = 0; i < N; i++) bias[i] = lq_rng_uniform(&rng) - 0.5f;
    lq_int_linear(M, N, K, G, xd, xs, wd, ws, bias, y, 2);
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double ref = bias[n];
            for (int64_t g = 0; g < K / G; g++) {
                long long acc = 0;
                for (int64_t k = g * G; k < (g + 1) * G; k++) acc += (long long)xd[m * K + k] * wd[n * K + k];
                ref += (double)xs[m] * (double)ws[n * (K / G) + g] * (double)acc;
            }
            assert_true(fabs(y[m * N + n] - ref) <= 1e-5 * (fabs(ref) + 1.0));
        }
}

/* --- fake-quant vs integer evaluation ---------------------------------------------------------------- */

typedef struct layer_case {
    const char *w, *a;
    bool pact, conv;
} layer_case;

/* A layer with random weights; its activation quantizer calibrated on x; FAKE and INT forwards of x. */
static void check_case(const layer_case *lc) {
    lq_err err = {0};
    lq_ctx *ctx = new_ctx();
    lq_params *p;
    assert_int_equal(lq_params_init(&p, &err), LQ_OK);
    lq_qlayer l = {0};
    snprintf(l.name, sizeof l.name, "case");
    l.kind = lc->conv ? LQ_QLAYER_CONV2D : LQ_QLAYER_LINEAR;
    int64_t wl[2] = {24, 64}, wc[4] = {6, 3, 3, 3}, bn = lc->conv ? 6 : 24;
    l.weight = lq_params_add(p, "w", lc->conv ? 4 : 2, lc->conv ? wc : wl, 0, &err);
    l.bias = lq_params_add(p, "b", 1, &bn, LQ_TENSOR_NO_DECAY, &err);
    l.conv = (lq_conv2d_params){.pad_h = 1, .pad_w = 1};
    l.wspec = spec(lc->w), l.aspec = spec(lc->a), l.pact = lc->pact;
    assert_int_equal(lq_qlayer_declare_params(&l, p, &err), LQ_OK);
    assert_int_equal(lq_params_finalize(p, &err), LQ_OK);
    lq_rng rng;
    lq_rng_seed(&rng, 3);
    lq_fill_uniform(l.weight, &rng, -0.5f, 0.5f);
    lq_fill_uniform(l.bias, &rng, -0.1f, 0.1f);
    assert_int_equal(lq_qlayer_setup(&l, 2, &err), LQ_OK);
    int64_t xl[2] = {16, 64}, xc[4] = {2, 3, 9, 9};
    lq_tensor *x = lq_new(ctx, LQ_DTYPE_F32, lc->conv ? 4 : 2, lc->conv ? xc : xl);
    lq_fill_uniform(x, &rng, lc->pact ? 0.0f : -1.0f, 2.0f);
    lq_ctx_set_grad(ctx, false);
    assert_non_null(lq_qlayer_forward(ctx, &l, x, LQ_QAT_CALIBRATE));
    assert_int_equal(lq_qlayer_init_learned(&l, &err), LQ_OK);
    lq_tensor *yf = lq_qlayer_forward(ctx, &l, x, LQ_QAT_FAKE);
    assert_ctx_ok(ctx);
    assert_int_equal(lq_qlayer_convert(&l, &err), LQ_OK);
    lq_tensor *yi = lq_qlayer_forward(ctx, &l, x, LQ_QAT_INT);
    assert_ctx_ok(ctx);
    assert_int_equal(lq_numel(yf), lq_numel(yi));
    /* the same codes; only the summation differs (float sgemm vs exact int32 sums) */
    assert_allclose(yi->data, yf->data, lq_numel(yf), 1e-4, 1e-4, lc->w);
    /* and the float model differs: the check is not vacuous */
    lq_tensor *y0 = lq_qlayer_forward(ctx, &l, x, LQ_QAT_FLOAT);
    double diff = 0;
    for (int64_t i = 0; i < lq_numel(y0); i++) diff = fmax(diff, fabs(((float *)y0->data)[i] - ((float *)yf->data)[i]));
    if (l.wspec.enabled || l.aspec.enabled) assert_true(diff > 1e-4);

    /* export, scramble the integer form, read it back: the same integer outputs */
    char dir[] = "/tmp/lq_test_qat_XXXXXX", st_path[256], h5_path[256];
    assert_non_null(mkdtemp(dir));
    snprintf(st_path, sizeof st_path, "%s/x.safetensors", dir);
    snprintf(h5_path, sizeof h5_path, "%s/x.h5", dir);
    lq_qlayer *ls[1] = {&l};
    int64_t bytes = 0;
    assert_int_equal(lq_qat_export(st_path, h5_path, ls, 1, "test", &bytes, &err), LQ_OK);
    assert_true(bytes > 0);
    if (l.q.w_codes) memset(l.q.w_codes, 0, (size_t)(l.q.n * l.q.k));
    if (l.q.w_scale) l.q.w_scale[0] = 123.0f;
    l.q.a_scale = 0.5f;
    assert_int_equal(lq_qat_import(st_path, ls, 1, &err), LQ_OK);
    lq_tensor *yr = lq_qlayer_forward(ctx, &l, x, LQ_QAT_INT);
    assert_ctx_ok(ctx);
    assert_memory_equal(yr->data, yi->data, lq_nbytes(yi));
    unlink(st_path), unlink(h5_path), rmdir(dir);
    lq_qlayer_free(&l);
    lq_params_free(p);
    lq_ctx_free(ctx);
}

static void test_fake_equals_int(void **state) {
    (void)state;
    static const layer_case cases[] = {
        {"int8:channel", "int8:asym:movavg", false, false},
        {"int4:channel", "int8:asym", false, false},
        {"int4:g32", "int8:asym:token", false, false},
        {"int4:g16:asym", "int8:sym:token", false, false},
        {"int2:channel", "int8:asym", false, false},
        {"int3:tensor", "int4:asym", false, false},
        {"int8:channel:lsq", "int8:asym:lsq", false, false},
        {"int4:channel", "int8:asym", true, false},
        {"int4:channel", "float", false, false},
        {"float", "int8:asym", false, false},
        {"int8:channel", "int8:asym", false, true},
        {"int4:channel", "int8:asym:token", false, true},
        {"int4:g9", "int8:asym", false, true},
        {"int4:channel", "int8:asym", true, true},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) check_case(&cases[i]);
}

static void test_bad_specs(void **state) {
    (void)state;
    lq_err err = {0};
    lq_params *p;
    assert_int_equal(lq_params_init(&p, &err), LQ_OK);
    int64_t s[2] = {4, 8};
    lq_tensor *w = lq_params_add(p, "w", 2, s, 0, &err);
    assert_int_equal(lq_params_finalize(p, &err), LQ_OK);
    struct {
        const char *w, *a;
        bool pact;
        const char *msg;
    } bad[] = {
        {"int4:token", "float", false, "per token"},
        {"int4:g8:lsq", "float", false, "lsq"},
        {"int4:channel:asym:lsq", "float", false, "symmetric"},
        {"int4:channel", "int8:asym:token", true, "PACT"},
        {"int4:channel", "int8:sym", true, "PACT"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        lq_qlayer l = {.kind = LQ_QLAYER_LINEAR, .weight = w};
        err = (lq_err){0};
        snprintf(l.name, sizeof l.name, "fc");
        l.wspec = spec(bad[i].w), l.aspec = spec(bad[i].a), l.pact = bad[i].pact;
        assert_int_not_equal(lq_qlayer_setup(&l, 1, &err), LQ_OK);
        if (!strstr(err.msg, bad[i].msg)) fail_msg("case %zu: '%s' lacks '%s'", i, err.msg, bad[i].msg);
        assert_non_null(strstr(err.msg, "fc"));
        lq_qlayer_free(&l);
    }
    lq_params_free(p);
}

/* --- short QAT runs of the Fashion-MNIST models on synthetic data ------------------------------------- */

typedef struct scheme_user {
    const char *w, *a;
    bool pact;
} scheme_user;

static void resolve(const char *name, int index, int n, lq_qspec *w, lq_qspec *a, bool *pact, void *user) {
    (void)name, (void)index, (void)n;
    const scheme_user *u = user;
    *w = spec(u->w), *a = spec(u->a), *pact = u->pact;
}

/* A batch of ten classes of 28x28 images: class c is a bright band at rows 2c..2c+5 plus noise. */
static void synth_batch(lq_ctx *ctx, lq_rng *rng, int64_t B, lq_tensor **x, lq_tensor **y) {
    int64_t xs[4] = {B, 1, 28, 28};
    *x = lq_new(ctx, LQ_DTYPE_F32, 4, xs), *y = lq_new(ctx, LQ_DTYPE_I32, 1, &B);
    for (int64_t i = 0; i < B; i++) {
        int c = (int)lq_rng_int(rng, 0, 9);
        ((int32_t *)(*y)->data)[i] = c;
        float *img = (float *)(*x)->data + i * 784;
        for (int r = 0; r < 28; r++)
            for (int k = 0; k < 28; k++) img[r * 28 + k] = 0.3f * lq_rng_uniform(rng) + ((r >= 2 * c && r < 2 * c + 6) ? 0.7f : 0.0f);
    }
}

/* QAT as `loquat qat` runs it, in small: 8 float steps, observers calibrated on 2 batches (no grad),
 * then 40 fake-quantized steps whose loss must fall well below where they started. */
static void run_qat(lq_cls_arch arch, const scheme_user *u) {
    lq_err err = {0};
    lq_ctx *ctx = new_ctx();
    lq_classifier m;
    assert_int_equal(lq_classifier_init(&m, arch, resolve, (void *)u, 5, 2, &err), LQ_OK);
    lq_adamw opt;
    lq_adamw_cfg ac = {.lr = 2e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .n_threads = 2};
    assert_int_equal(lq_adamw_init(&opt, m.params, &ac, &err), LQ_OK);
    lq_rng rng;
    lq_rng_seed(&rng, 9);
    const int64_t B = 32;
    double first = 0, last = 0;
    float alpha0 = 0;
    lq_tensor *x, *y;
    for (int step = 0; step < 48; step++) {
        if (step == 8) { /* PTQ-style calibration of the float model, then the learned tensors' start */
            bool g = lq_ctx_set_grad(ctx, false);
            for (int k = 0; k < 2; k++) {
                synth_batch(ctx, &rng, B, &x, &y);
                assert_non_null(lq_classifier_forward(ctx, &m, x, LQ_QAT_CALIBRATE));
                lq_ctx_step_reset(ctx);
            }
            lq_ctx_set_grad(ctx, g);
            for (int i = 0; i < m.n_layers; i++) assert_int_equal(lq_qlayer_init_learned(&m.layers[i], &err), LQ_OK);
            if (u->pact) alpha0 = ((float *)m.layers[1].pact_alpha->data)[0];
        }
        lq_ctx_set_training(ctx, true);
        synth_batch(ctx, &rng, B, &x, &y);
        lq_params_zero_grad(m.params);
        lq_tensor *loss = lq_cross_entropy(ctx, lq_classifier_forward(ctx, &m, x, step < 8 ? LQ_QAT_FLOAT : LQ_QAT_FAKE), y,
                                           LQ_IGNORE_INDEX, LQ_REDUCE_MEAN);
        assert_ctx_ok(ctx);
        assert_int_equal(lq_backward(ctx, loss), LQ_OK);
        double lv = *(float *)loss->data;
        if (step == 8) first = lv;
        if (step >= 44) last += lv / 4;
        assert_int_equal(lq_adamw_step(&opt, m.params, 2e-3f, &err), LQ_OK);
        lq_ctx_step_reset(ctx);
    }
    print_message("%s %s %s%s: fake-quant loss %.3f -> %.3f\n", lq_cls_arch_name(arch), u->w, u->a, u->pact ? " pact" : "",
                  first, last);
    assert_true(first > 0.5);        /* far from trained when fake quantization turns on */
    assert_true(last < 0.5 * first); /* and it learns with it */
    if (u->pact) { /* PACT's alpha is trained: it moved from where calibration put it */
        float a = ((float *)m.layers[1].pact_alpha->data)[0];
        assert_true(alpha0 > 0 && isfinite(a) && a > 0 && a != alpha0);
    }
    lq_adamw_free(&opt);
    lq_classifier_free(&m);
    lq_ctx_free(ctx);
}

static void test_qat_mlp_w4a8_pact(void **state) {
    (void)state;
    scheme_user u = {"int4:channel", "int8:asym", true};
    run_qat(LQ_CLS_MLP, &u);
}

static void test_qat_cnn_w4a8(void **state) {
    (void)state;
    scheme_user u = {"int4:channel", "int8:asym", false};
    run_qat(LQ_CLS_CNN, &u);
}

static void test_qat_cnn_lsq(void **state) {
    (void)state;
    scheme_user u = {"int4:channel:lsq", "int8:asym:lsq", false};
    run_qat(LQ_CLS_CNN, &u);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_int_linear_reference),
        cmocka_unit_test(test_fake_equals_int),
        cmocka_unit_test(test_bad_specs),
        cmocka_unit_test(test_qat_mlp_w4a8_pact),
        cmocka_unit_test(test_qat_cnn_w4a8),
        cmocka_unit_test(test_qat_cnn_lsq),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
