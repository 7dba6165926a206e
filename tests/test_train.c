/* tests/test_train.c: AdamW and SGD against double-precision references written here, gradient
 * clipping, config validation, and a small MLP trained end to end. */
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/train.h"

#define N_STEPS 5

/* --- a two-tensor parameter block ----------------------------------------------------------- */

/* w (3, 5) is weight-decayed, b (7) is not. b is declared first so the test also sees that the
 * block puts the decayed parameters first whatever the declaration order. */
typedef struct two_params {
    lq_params *p;
    lq_tensor *w, *b;
    int64_t w_off, b_off; /* float offsets in the block */
} two_params;

#define W_N 15
#define B_N 7
#define LOGICAL_N (W_N + B_N) /* reference arrays: w's elements, then b's */

static void two_params_init(two_params *tp, uint64_t seed) {
    lq_err err = {0};
    assert_int_equal(lq_params_init(&tp->p, &err), LQ_OK);
    tp->b = lq_params_add(tp->p, "b", 1, (int64_t[]){B_N}, LQ_TENSOR_NO_DECAY, &err);
    tp->w = lq_params_add(tp->p, "w", 2, (int64_t[]){3, 5}, 0, &err);
    assert_non_null(tp->b);
    assert_non_null(tp->w);
    assert_int_equal(lq_params_finalize(tp->p, &err), LQ_OK);
    tp->w_off = (float *)tp->w->data - lq_params_data(tp->p);
    tp->b_off = (float *)tp->b->data - lq_params_data(tp->p);
    assert_int_equal(tp->w_off, 0);
    assert_true(tp->b_off >= W_N);
    assert_int_equal(lq_params_decay_numel(tp->p), tp->b_off);
    assert_true(lq_params_numel(tp->p) > LOGICAL_N); /* there is padding to watch */
    lq_rng rng;
    lq_rng_seed(&rng, seed);
    lq_fill_uniform(tp->w, &rng, -1.0f, 1.0f);
    lq_fill_uniform(tp->b, &rng, -1.0f, 1.0f);
}

/* Element k of the logical (w then b) order: its float in the data or grad block. */
static float *elem(const two_params *tp, float *block, int k) {
    return block + (k < W_N ? tp->w_off + k : tp->b_off + (k - W_N));
}

static bool is_decayed(int k) { return k < W_N; }

/* Fresh random grads for step s, written into the tensors (not the padding), and copied out. */
static void set_grads(two_params *tp, lq_rng *rng, double *g) {
    float *gb = lq_params_grad(tp->p);
    for (int k = 0; k < LOGICAL_N; k++) {
        float v = lq_rng_normal(rng) * 0.5f;
        if (k % 7 == 3) v *= 1e-3f; /* some small grads, so eps matters a little */
        *elem(tp, gb, k) = v;
        g[k] = v;
    }
}

static void get_logical(const two_params *tp, float *block, float *out) {
    for (int k = 0; k < LOGICAL_N; k++) out[k] = *elem(tp, block, k);
}

/* Every block position outside the two tensors must still be zero. */
static void assert_padding_zero(const two_params *tp, const float *block, const char *what) {
    for (int64_t i = 0; i < lq_params_numel(tp->p); i++) {
        bool in_w = i >= tp->w_off && i < tp->w_off + W_N;
        bool in_b = i >= tp->b_off && i < tp->b_off + B_N;
        if (!in_w && !in_b && block[i] != 0.0f) {
            print_error("%s: padding element %lld is %g, not 0\n", what, (long long)i, (double)block[i]);
            fail();
        }
    }
}

static void to_float(const double *d, float *f, int n) {
    for (int i = 0; i < n; i++) f[i] = (float)d[i];
}

/* --- AdamW ------------------------------------------------------------------------------------ */

/* The AdamW update written from the paper / torch docs, in double. */
static void ref_adamw_step(double *x, double *m, double *v, const double *g, int t, double lr, const lq_adamw_cfg *c) {
    double bc1 = 1.0 - pow(c->beta1, t), bc2 = 1.0 - pow(c->beta2, t);
    for (int k = 0; k < LOGICAL_N; k++) {
        if (is_decayed(k)) x[k] *= 1.0 - lr * c->weight_decay;
        m[k] = c->beta1 * m[k] + (1.0 - c->beta1) * g[k];
        v[k] = c->beta2 * v[k] + (1.0 - c->beta2) * g[k] * g[k];
        double mhat = m[k] / bc1, vhat = v[k] / bc2;
        x[k] -= lr * mhat / (sqrt(vhat) + c->eps);
    }
}

static void check_adamw(const lq_adamw_cfg *cfg, uint64_t seed) {
    two_params tp;
    two_params_init(&tp, seed);
    lq_adamw opt;
    lq_err err = {0};
    assert_int_equal(lq_adamw_init(&opt, tp.p, cfg, &err), LQ_OK);
    double x[LOGICAL_N], m[LOGICAL_N] = {0}, v[LOGICAL_N] = {0}, g[LOGICAL_N];
    float got[LOGICAL_N], want[LOGICAL_N];
    for (int k = 0; k < LOGICAL_N; k++) x[k] = *elem(&tp, lq_params_data(tp.p), k);
    lq_rng rng;
    lq_rng_seed(&rng, seed + 100);
    for (int s = 1; s <= N_STEPS; s++) {
        set_grads(&tp, &rng, g);
        float lr = cfg->lr * (1.0f - 0.15f * (float)s); /* a schedule drives the step's lr */
        assert_int_equal(lq_adamw_step(&opt, tp.p, lr, &err), LQ_OK);
        ref_adamw_step(x, m, v, g, s, lr, cfg);
        assert_int_equal(opt.t, s);
        get_logical(&tp, lq_params_data(tp.p), got);
        to_float(x, want, LOGICAL_N);
        assert_allclose(got, want, LOGICAL_N, 1e-5, 1e-6, "adamw params");
        get_logical(&tp, opt.m, got);
        to_float(m, want, LOGICAL_N);
        assert_allclose(got, want, LOGICAL_N, 1e-5, 1e-7, "adamw m");
        get_logical(&tp, opt.v, got);
        to_float(v, want, LOGICAL_N);
        assert_allclose(got, want, LOGICAL_N, 1e-5, 1e-9, "adamw v");
        assert_padding_zero(&tp, lq_params_data(tp.p), "adamw params");
        assert_padding_zero(&tp, opt.m, "adamw m");
        assert_padding_zero(&tp, opt.v, "adamw v");
    }
    lq_adamw_free(&opt);
    lq_params_free(tp.p);
}

static void test_adamw_matches_reference(void **state) {
    (void)state;
    /* torch defaults with weight decay; then beta1 < 0.5, where torch's lerp takes its other form */
    check_adamw(&(lq_adamw_cfg){.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.1f}, 1);
    check_adamw(&(lq_adamw_cfg){.lr = 3e-2f, .beta1 = 0.3f, .beta2 = 0.95f, .eps = 1e-6f, .weight_decay = 0.5f,
                                .n_threads = 2},
                2);
    check_adamw(&(lq_adamw_cfg){.lr = 1e-3f, .beta1 = 0.0f, .beta2 = 0.0f, .eps = 1e-8f}, 3);
}

/* With zero grads the update is pure decoupled decay: exactly (1 - lr wd) on w, nothing on b. */
static void test_adamw_decay_only_where_flagged(void **state) {
    (void)state;
    two_params tp;
    two_params_init(&tp, 5);
    lq_adamw opt;
    lq_err err = {0};
    lq_adamw_cfg cfg = {.lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.5f};
    assert_int_equal(lq_adamw_init(&opt, tp.p, &cfg, &err), LQ_OK);
    float before[LOGICAL_N], after[LOGICAL_N];
    get_logical(&tp, lq_params_data(tp.p), before);
    for (int s = 0; s < 3; s++) assert_int_equal(lq_adamw_step(&opt, tp.p, cfg.lr, &err), LQ_OK);
    get_logical(&tp, lq_params_data(tp.p), after);
    for (int k = 0; k < LOGICAL_N; k++) {
        double want = is_decayed(k) ? before[k] * pow(1.0 - 0.1 * 0.5, 3) : before[k];
        if (fabs(after[k] - want) > 1e-6) {
            print_error("element %d (%s): %g, want %g\n", k, is_decayed(k) ? "w" : "b", (double)after[k], want);
            fail();
        }
    }
    assert_padding_zero(&tp, lq_params_data(tp.p), "params");
    lq_adamw_free(&opt);
    lq_params_free(tp.p);
}

/* --- SGD ------------------------------------------------------------------------------------ */

static void ref_sgd_step(double *x, double *buf, const double *g_in, int t, double lr, const lq_sgd_cfg *c) {
    for (int k = 0; k < LOGICAL_N; k++) {
        double g = g_in[k];
        if (is_decayed(k)) g += c->weight_decay * x[k];
        if (c->momentum != 0) {
            buf[k] = t == 1 ? g : c->momentum * buf[k] + (1.0 - c->dampening) * g;
            g = c->nesterov ? g + c->momentum * buf[k] : buf[k];
        }
        x[k] -= lr * g;
    }
}

static void check_sgd(const lq_sgd_cfg *cfg, uint64_t seed) {
    two_params tp;
    two_params_init(&tp, seed);
    lq_sgd opt;
    lq_err err = {0};
    assert_int_equal(lq_sgd_init(&opt, tp.p, cfg, &err), LQ_OK);
    assert_true((opt.buf != NULL) == (cfg->momentum != 0));
    double x[LOGICAL_N], buf[LOGICAL_N] = {0}, g[LOGICAL_N];
    float got[LOGICAL_N], want[LOGICAL_N], gcopy[LOGICAL_N];
    for (int k = 0; k < LOGICAL_N; k++) x[k] = *elem(&tp, lq_params_data(tp.p), k);
    lq_rng rng;
    lq_rng_seed(&rng, seed + 200);
    for (int s = 1; s <= N_STEPS; s++) {
        set_grads(&tp, &rng, g);
        get_logical(&tp, lq_params_grad(tp.p), gcopy);
        float lr = cfg->lr / (float)s;
        assert_int_equal(lq_sgd_step(&opt, tp.p, lr, &err), LQ_OK);
        ref_sgd_step(x, buf, g, s, lr, cfg);
        get_logical(&tp, lq_params_data(tp.p), got);
        to_float(x, want, LOGICAL_N);
        assert_allclose(got, want, LOGICAL_N, 1e-5, 1e-6, "sgd params");
        get_logical(&tp, lq_params_grad(tp.p), got);
        assert_memory_equal(got, gcopy, sizeof got); /* the grads are read, not changed */
        if (opt.buf) {
            get_logical(&tp, opt.buf, got);
            to_float(buf, want, LOGICAL_N);
            assert_allclose(got, want, LOGICAL_N, 1e-5, 1e-6, "sgd momentum buffer");
            assert_padding_zero(&tp, opt.buf, "sgd momentum buffer");
        }
        assert_padding_zero(&tp, lq_params_data(tp.p), "sgd params");
    }
    lq_sgd_free(&opt);
    lq_params_free(tp.p);
}

static void test_sgd_matches_reference(void **state) {
    (void)state;
    check_sgd(&(lq_sgd_cfg){.lr = 0.1f}, 11);
    check_sgd(&(lq_sgd_cfg){.lr = 0.1f, .weight_decay = 0.2f}, 12);
    check_sgd(&(lq_sgd_cfg){.lr = 0.05f, .momentum = 0.9f}, 13);
    check_sgd(&(lq_sgd_cfg){.lr = 0.05f, .momentum = 0.8f, .dampening = 0.3f, .weight_decay = 0.1f}, 14);
    check_sgd(&(lq_sgd_cfg){.lr = 0.05f, .momentum = 0.9f, .nesterov = true, .weight_decay = 0.05f, .n_threads = 2},
              15);
}

/* --- gradient clipping ---------------------------------------------------------------------- */

static double ref_norm(const two_params *tp) {
    double s = 0;
    for (int k = 0; k < LOGICAL_N; k++) {
        double g = *elem(tp, lq_params_grad(tp->p), k);
        s += g * g;
    }
    return sqrt(s);
}

static void test_clip_grad_norm(void **state) {
    (void)state;
    two_params tp;
    two_params_init(&tp, 21);
    lq_rng rng;
    lq_rng_seed(&rng, 22);
    double g[LOGICAL_N];
    set_grads(&tp, &rng, g);
    float orig[LOGICAL_N], got[LOGICAL_N], want[LOGICAL_N];
    get_logical(&tp, lq_params_grad(tp.p), orig);
    double norm = ref_norm(&tp);
    assert_true(norm > 0.5);

    /* under the limit: the norm comes back and nothing changes */
    double r = lq_clip_grad_norm(tp.p, (float)(2 * norm), 1);
    assert_true(fabs(r - norm) <= 1e-12 * norm);
    get_logical(&tp, lq_params_grad(tp.p), got);
    assert_memory_equal(got, orig, sizeof got);
    /* clipping off */
    r = lq_clip_grad_norm(tp.p, 0.0f, 1);
    assert_true(fabs(r - norm) <= 1e-12 * norm);
    get_logical(&tp, lq_params_grad(tp.p), got);
    assert_memory_equal(got, orig, sizeof got);

    /* over the limit: scaled by max / (norm + 1e-6), the pre-clip norm returned */
    float max_norm = (float)(norm / 3);
    r = lq_clip_grad_norm(tp.p, max_norm, 2);
    assert_true(fabs(r - norm) <= 1e-12 * norm);
    double scale = max_norm / (norm + 1e-6);
    for (int k = 0; k < LOGICAL_N; k++) want[k] = (float)(orig[k] * scale);
    get_logical(&tp, lq_params_grad(tp.p), got);
    assert_allclose(got, want, LOGICAL_N, 1e-6, 1e-9, "clipped grads");
    assert_true(fabs(ref_norm(&tp) - max_norm) < 1e-5 * max_norm);
    assert_padding_zero(&tp, lq_params_grad(tp.p), "clipped grads");

    /* a non-finite norm is returned as is, grads untouched */
    float *g0 = elem(&tp, lq_params_grad(tp.p), 4);
    get_logical(&tp, lq_params_grad(tp.p), orig);
    *g0 = NAN;
    orig[4] = NAN;
    r = lq_clip_grad_norm(tp.p, 1e-3f, 1);
    assert_true(isnan(r));
    get_logical(&tp, lq_params_grad(tp.p), got);
    assert_memory_equal(got, orig, sizeof got);
    *g0 = INFINITY;
    orig[4] = INFINITY;
    r = lq_clip_grad_norm(tp.p, 1e-3f, 2);
    assert_true(isinf(r));
    get_logical(&tp, lq_params_grad(tp.p), got);
    assert_memory_equal(got, orig, sizeof got);
    lq_params_free(tp.p);
}

/* A block big enough for the parallel path: 1, 2 and 3 threads give the same bits. */
static void test_clip_thread_independent(void **state) {
    (void)state;
    lq_err err = {0};
    lq_params *p;
    assert_int_equal(lq_params_init(&p, &err), LQ_OK);
    lq_tensor *a = lq_params_add(p, "a", 2, (int64_t[]){300, 701}, 0, &err);
    lq_tensor *b = lq_params_add(p, "b", 1, (int64_t[]){1001}, LQ_TENSOR_NO_DECAY, &err);
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(lq_params_finalize(p, &err), LQ_OK);
    int64_t n = lq_params_numel(p);
    lq_rng rng;
    lq_rng_seed(&rng, 31);
    lq_fill_normal(a->grad, &rng, 1.0f);
    lq_fill_normal(b->grad, &rng, 3.0f);
    float *orig = malloc((size_t)n * sizeof *orig), *first = malloc((size_t)n * sizeof *first);
    assert_non_null(orig);
    assert_non_null(first);
    memcpy(orig, lq_params_grad(p), (size_t)n * sizeof *orig);
    double ref = 0;
    for (int64_t i = 0; i < n; i++) ref += (double)orig[i] * orig[i];
    ref = sqrt(ref);
    double norms[3];
    for (int t = 1; t <= 3; t++) {
        memcpy(lq_params_grad(p), orig, (size_t)n * sizeof *orig);
        norms[t - 1] = lq_clip_grad_norm(p, 10.0f, t);
        if (t == 1) memcpy(first, lq_params_grad(p), (size_t)n * sizeof *first);
        else assert_memory_equal(lq_params_grad(p), first, (size_t)n * sizeof *first);
    }
    assert_memory_equal(&norms[0], &norms[1], sizeof(double));
    assert_memory_equal(&norms[0], &norms[2], sizeof(double));
    assert_true(fabs(norms[0] - ref) < 1e-9 * ref);
    assert_true(norms[0] > 10.0); /* it really clipped */
    assert_true(memcmp(first, orig, (size_t)n * sizeof *orig) != 0);
    free(orig);
    free(first);
    lq_params_free(p);
}

/* --- configuration errors ------------------------------------------------------------------- */

static void expect_adamw_error(lq_adamw_cfg c, const char *field, const lq_params *p) {
    lq_adamw opt;
    lq_err err = {0};
    assert_int_equal(lq_adamw_init(&opt, p, &c, &err), LQ_ERR_ARG);
    if (!strstr(err.msg, field)) {
        print_error("adamw error does not name '%s': %s\n", field, err.msg);
        fail();
    }
    assert_null(opt.m);
    lq_adamw_free(&opt); /* safe after a failed init */
}

static void expect_sgd_error(lq_sgd_cfg c, const char *field, const lq_params *p) {
    lq_sgd opt;
    lq_err err = {0};
    assert_int_equal(lq_sgd_init(&opt, p, &c, &err), LQ_ERR_ARG);
    if (!strstr(err.msg, field)) {
        print_error("sgd error does not name '%s': %s\n", field, err.msg);
        fail();
    }
    lq_sgd_free(&opt);
}

static void test_invalid_config(void **state) {
    (void)state;
    two_params tp;
    two_params_init(&tp, 41);
    const lq_adamw_cfg ok = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f};
    lq_adamw_cfg c = ok;
    c.lr = -1e-3f;
    expect_adamw_error(c, "lr = ", tp.p);
    c = ok, c.lr = NAN;
    expect_adamw_error(c, "lr = ", tp.p);
    c = ok, c.beta1 = 1.0f;
    expect_adamw_error(c, "beta1 = ", tp.p);
    c = ok, c.beta2 = -0.1f;
    expect_adamw_error(c, "beta2 = ", tp.p);
    c = ok, c.eps = 0.0f;
    expect_adamw_error(c, "eps = ", tp.p);
    c = ok, c.weight_decay = -0.01f;
    expect_adamw_error(c, "weight_decay = ", tp.p);

    const lq_sgd_cfg sok = {.lr = 0.1f, .momentum = 0.9f};
    lq_sgd_cfg s = sok;
    s.lr = -0.1f;
    expect_sgd_error(s, "lr = ", tp.p);
    s = sok, s.momentum = -0.5f;
    expect_sgd_error(s, "momentum = ", tp.p);
    s = sok, s.weight_decay = -1.0f;
    expect_sgd_error(s, "weight_decay = ", tp.p);
    s = sok, s.dampening = 1.5f;
    expect_sgd_error(s, "dampening = ", tp.p);
    s = sok, s.momentum = 0.0f, s.nesterov = true;
    expect_sgd_error(s, "nesterov", tp.p);
    s = sok, s.dampening = 0.1f, s.nesterov = true;
    expect_sgd_error(s, "nesterov", tp.p);

    /* a bad per-step lr, and a block the optimizer was not made for */
    lq_adamw opt;
    lq_err err = {0};
    assert_int_equal(lq_adamw_init(&opt, tp.p, &ok, &err), LQ_OK);
    assert_int_equal(lq_adamw_step(&opt, tp.p, -1.0f, &err), LQ_ERR_ARG);
    assert_non_null(strstr(err.msg, "lr"));
    assert_int_equal(opt.t, 0);
    lq_params *q;
    lq_err e2 = {0};
    assert_int_equal(lq_params_init(&q, &e2), LQ_OK);
    assert_non_null(lq_params_add(q, "big", 1, (int64_t[]){100}, 0, &e2));
    assert_int_equal(lq_params_finalize(q, &e2), LQ_OK);
    lq_err e3 = {0};
    assert_int_equal(lq_adamw_step(&opt, q, 1e-3f, &e3), LQ_ERR_ARG);
    assert_non_null(strstr(e3.msg, "elements"));
    lq_sgd never = {0};
    lq_err e4 = {0};
    assert_int_not_equal(lq_sgd_step(&never, tp.p, 0.1f, &e4), LQ_OK);
    lq_params_free(q);
    lq_adamw_free(&opt);
    lq_params_free(tp.p);
}

/* --- end to end: a small MLP fits y = sin(3 x1) x2 ------------------------------------------ */

#define MLP_N 64
#define MLP_H 32
#define MLP_STEPS 3000
#define MLP_LR 2e-2f

typedef struct mlp_run {
    float loss[MLP_STEPS];
    uint64_t sys_allocs[MLP_STEPS];
    uint64_t sys_allocs_start;
} mlp_run;

static void train_mlp(mlp_run *out, int n_threads) {
    lq_err err = {0};
    lq_ctx *ctx = NULL;
    /* a small first arena, so the first step has to grow it */
    lq_ctx_opts o = {.n_threads = n_threads, .arena_bytes = 4096, .seed = 7};
    assert_int_equal(lq_ctx_init(&ctx, &o, &err), LQ_OK);
    lq_params *p;
    assert_int_equal(lq_params_init(&p, &err), LQ_OK);
    lq_tensor *w1 = lq_params_add(p, "fc1.weight", 2, (int64_t[]){MLP_H, 2}, 0, &err);
    lq_tensor *b1 = lq_params_add(p, "fc1.bias", 1, (int64_t[]){MLP_H}, LQ_TENSOR_NO_DECAY, &err);
    lq_tensor *w2 = lq_params_add(p, "fc2.weight", 2, (int64_t[]){1, MLP_H}, 0, &err);
    lq_tensor *b2 = lq_params_add(p, "fc2.bias", 1, (int64_t[]){1}, LQ_TENSOR_NO_DECAY, &err);
    assert_true(w1 && b1 && w2 && b2);
    assert_int_equal(lq_params_finalize(p, &err), LQ_OK);
    lq_rng rng;
    lq_rng_seed(&rng, 2024);
    lq_fill_uniform(w1, &rng, -1.5f, 1.5f);
    lq_fill_uniform(b1, &rng, -1.0f, 1.0f);
    lq_fill_uniform(w2, &rng, -0.18f, 0.18f); /* ~ 1/sqrt(H) */

    /* 64 points on an 8 x 8 grid over [-1, 1]^2; targets y = sin(3 x1) x2 */
    lq_tensor *x = lq_tensor_alloc(LQ_DTYPE_F32, 2, (int64_t[]){MLP_N, 2}, "x", &err);
    lq_tensor *y = lq_tensor_alloc(LQ_DTYPE_F32, 2, (int64_t[]){MLP_N, 1}, "y", &err);
    assert_true(x && y);
    float *xd = x->data, *yd = y->data;
    for (int i = 0; i < MLP_N; i++) {
        float x1 = -1.0f + 2.0f * (float)(i / 8) / 7.0f, x2 = -1.0f + 2.0f * (float)(i % 8) / 7.0f;
        xd[2 * i] = x1;
        xd[2 * i + 1] = x2;
        yd[i] = sinf(3.0f * x1) * x2;
    }
    lq_adamw opt;
    lq_adamw_cfg cfg = {.lr = MLP_LR, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 1e-4f,
                        .n_threads = n_threads};
    assert_int_equal(lq_adamw_init(&opt, p, &cfg, &err), LQ_OK);
    out->sys_allocs_start = lq_ctx_arena_stats(ctx).sys_allocs;
    for (int s = 0; s < MLP_STEPS; s++) {
        lq_params_zero_grad(p);
        lq_tensor *h = lq_silu(ctx, lq_add(ctx, lq_matmul_t(ctx, x, w1, false, true), b1)); /* (N, H) */
        lq_tensor *pred = lq_add(ctx, lq_matmul_t(ctx, h, w2, false, true), b2);            /* (N, 1) */
        lq_tensor *d = lq_sub(ctx, pred, y);
        lq_tensor *loss = lq_mean(ctx, lq_mul(ctx, d, d), LQ_AXIS_ALL, false);
        assert_ctx_ok(ctx);
        assert_int_equal(lq_numel(loss), 1);
        out->loss[s] = *(float *)loss->data;
        assert_int_equal(lq_backward(ctx, loss), LQ_OK);
        /* cosine decay to 10% of the peak */
        float lr = MLP_LR * (0.55f + 0.45f * cosf(3.14159265f * (float)s / (float)MLP_STEPS));
        assert_int_equal(lq_adamw_step(&opt, p, lr, &err), LQ_OK);
        lq_ctx_step_reset(ctx);
        out->sys_allocs[s] = lq_ctx_arena_stats(ctx).sys_allocs;
    }
    lq_adamw_free(&opt);
    lq_tensor_free(x);
    lq_tensor_free(y);
    lq_params_free(p);
    lq_ctx_free(ctx);
}

static void test_mlp_end_to_end(void **state) {
    (void)state;
    mlp_run *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    assert_non_null(a);
    assert_non_null(b);
    train_mlp(a, 2);
    float first = a->loss[0], last = a->loss[MLP_STEPS - 1];
    printf("mlp: loss %.6g -> %.6g after %d steps\n", (double)first, (double)last, MLP_STEPS);
    assert_true(first > 0.1f); /* the untrained net really is off */
    assert_true(last < 1e-3f);
    assert_true(last < 0.01f * first);
    /* the arena grew while it found its size, then never again from the third step on */
    assert_true(a->sys_allocs[0] > a->sys_allocs_start);
    for (int s = 2; s < MLP_STEPS; s++)
        if (a->sys_allocs[s] != a->sys_allocs[1]) {
            print_error("arena called malloc at step %d (%llu -> %llu system allocations)\n", s + 1,
                        (unsigned long long)a->sys_allocs[1], (unsigned long long)a->sys_allocs[s]);
            fail();
        }
    /* the same run again: the same bits */
    train_mlp(b, 2);
    assert_memory_equal(a->loss, b->loss, sizeof a->loss);
    free(a);
    free(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adamw_matches_reference),
        cmocka_unit_test(test_adamw_decay_only_where_flagged),
        cmocka_unit_test(test_sgd_matches_reference),
        cmocka_unit_test(test_clip_grad_norm),
        cmocka_unit_test(test_clip_thread_independent),
        cmocka_unit_test(test_invalid_config),
        cmocka_unit_test(test_mlp_end_to_end),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
