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
#include "quant/quant.h"
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
        s = lq_cuda_to_bf16_pair(ctx, false, dd + L->doff, ds + L->soff, L->rows * L->cols, dd2 + L->doff,
                                 ds + L->soff, L->rows * L->cols / 2);
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

/* --- the shared bf16 copy of an activation (lq_cuda_act_bf16) ----------------------------------- */

enum { AM = 24, AK = 128, AN = 40, AR = 4 };

typedef struct act_weights {
    lq_tensor *w[2], *a[2], *b[2]; /* NF4 bases on the device; the adapters' host values */
} act_weights;

/* What one run gives, on the host: both outputs, then five gradients (act_step: of x, A0, B0, A1,
 * B1; act_segments: of x0, x1, A, B, A). */
#define ACT_PARTS 7
typedef struct act_run {
    float *p[ACT_PARTS];
    int64_t n[ACT_PARTS];
} act_run;

static void act_run_free(act_run *r) {
    for (int i = 0; i < ACT_PARTS; i++) free(r->p[i]);
}

static float *act_fetch(lq_ctx *ctx, const lq_tensor *t, int64_t *n) {
    *n = lq_numel(t);
    float *h = malloc((size_t)*n * sizeof *h);
    assert_non_null(h);
    if (lq_tensor_download(ctx, t, h) != LQ_OK) fail_msg("download: %s", lq_ctx_error(ctx)->msg);
    return h;
}

/* Two QLoRA linears (bf16 math) read one x, as q, k and v do, then a backward through
 * sum(y0 * c0) + sum(y1 * c1). shared: x = reshape(1 * x0), a recorded view of an op's output (the
 * model's x: rows() of the norm), whose bf16 copy the second forward and both backwards take from
 * lq_cuda_act_bf16's buffer; else x = x0, a leaf, converted by each call into scratch. */
static act_run act_step(lq_ctx *ctx, const act_weights *W, const lq_tensor *xh, bool shared) {
    act_run out;
    lq_tensor *x0 = lq_to_ctx_device(ctx, xh), *ad[2], *bd[2], *y[2];
    assert_non_null(x0);
    x0->flags |= LQ_TENSOR_REQUIRES_GRAD;
    lq_tensor *x = shared ? lq_reshape(ctx, lq_scale(ctx, x0, 1.0f), 2, (int64_t[]){AM, AK}) : x0;
    lq_tensor *loss = NULL;
    for (int j = 0; j < 2; j++) {
        ad[j] = lq_to_ctx_device(ctx, W->a[j]);
        bd[j] = lq_to_ctx_device(ctx, W->b[j]);
        assert_true(ad[j] && bd[j]);
        ad[j]->flags |= LQ_TENSOR_REQUIRES_GRAD;
        bd[j]->flags |= LQ_TENSOR_REQUIRES_GRAD;
        y[j] = lq_lora_linear_fused(ctx, x, W->w[j], NULL, ad[j], bd[j], 2.0f, 0.0f, NULL);
        lq_tensor *c = lq_scale(ctx, y[j], 0.5f + (float)j); /* distinct weights on the two outputs */
        lq_tensor *term = lq_sum(ctx, lq_mul(ctx, y[j], c), LQ_AXIS_ALL, false);
        loss = j ? lq_add(ctx, loss, term) : term;
    }
    if (!loss || lq_backward(ctx, loss) != LQ_OK) fail_msg("act step: %s", lq_ctx_error(ctx)->msg);
    const lq_tensor *parts[ACT_PARTS] = {y[0], y[1], x0->grad, ad[0]->grad, bd[0]->grad, ad[1]->grad, bd[1]->grad};
    for (int i = 0; i < ACT_PARTS; i++) {
        assert_non_null(parts[i]);
        out.p[i] = act_fetch(ctx, parts[i], &out.n[i]);
    }
    return out;
}

/* got against want, part by part: bit for bit when bound is 0, else nmse <= bound. */
static int act_same(const char *what, const act_run *got, const act_run *want, double bound) {
    static const char *const names[ACT_PARTS] = {"y0", "y1", "grad 0", "grad 1", "grad 2", "grad 3", "grad 4"};
    int bad = 0;
    for (int i = 0; i < ACT_PARTS; i++) {
        int64_t at = -1;
        double e = got->n[i] == want->n[i] ? lq_nmse(got->p[i], want->p[i], got->n[i], &at) : INFINITY;
        bool same = got->n[i] == want->n[i] && memcmp(got->p[i], want->p[i], (size_t)got->n[i] * sizeof(float)) == 0;
        if (at >= 0 || (bound > 0 ? !(e <= bound) : !same)) {
            print_error("%s: %s differs from the reference's (nmse %.3g, bound %.0e)\n", what, names[i], e, bound);
            bad++;
        }
    }
    return bad;
}

/* Checkpointed segments: each re-runs in backward in the checkpoint scratch arena, the second
 * segment's re-run (backward runs it first) then the first's in the same place, so the first's x
 * lands where the second's was, with other values. Two segments lora(reshape(1 * x)) on two inputs,
 * sharing one adapter, against the same graph without checkpointing: bit for bit. */
typedef struct act_seg {
    lq_tensor *w, *a, *b;
} act_seg;

static lq_tensor *act_segment(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const act_seg *u = user;
    lq_tensor *x = lq_reshape(ctx, lq_scale(ctx, in[0], 1.0f), 2, (int64_t[]){AM, AK});
    return lq_lora_linear_fused(ctx, x, u->w, NULL, u->a, u->b, 2.0f, 0.0f, NULL);
}

static act_run act_segments(lq_ctx *ctx, const act_weights *W, lq_tensor *const *xh, bool checkpoint) {
    act_run out;
    act_seg u = {W->w[0], lq_to_ctx_device(ctx, W->a[0]), lq_to_ctx_device(ctx, W->b[0])};
    assert_true(u.a && u.b);
    u.a->flags |= LQ_TENSOR_REQUIRES_GRAD;
    u.b->flags |= LQ_TENSOR_REQUIRES_GRAD;
    lq_tensor *x[2], *y[2], *loss = NULL;
    for (int j = 0; j < 2; j++) {
        x[j] = lq_to_ctx_device(ctx, xh[j]);
        assert_non_null(x[j]);
        x[j]->flags |= LQ_TENSOR_REQUIRES_GRAD;
        y[j] = checkpoint ? lq_checkpoint(ctx, act_segment, &u, 1, &x[j]) : act_segment(ctx, &x[j], 1, &u);
        lq_tensor *term = lq_sum(ctx, lq_mul(ctx, y[j], lq_scale(ctx, y[j], 0.5f + (float)j)), LQ_AXIS_ALL, false);
        loss = j ? lq_add(ctx, loss, term) : term;
    }
    if (!loss || lq_backward(ctx, loss) != LQ_OK) fail_msg("segments: %s", lq_ctx_error(ctx)->msg);
    const lq_tensor *parts[ACT_PARTS] = {y[0], y[1], x[0]->grad, x[1]->grad, u.a->grad, u.b->grad, u.a->grad}; /* 7: A again */
    for (int i = 0; i < ACT_PARTS; i++) {
        assert_non_null(parts[i]);
        out.p[i] = act_fetch(ctx, parts[i], &out.n[i]);
    }
    return out;
}

/* The shared copy changes no bit: outputs and gradients equal those of the same graph on a leaf x
 * (never shared), with the copy made once and taken three times (counted). Then x with new values
 * at the same addresses, after the step reset and after a rewind to a mark (tensors dropped, new
 * ones in their place), and a leaf overwritten in place, must be converted afresh: a stale copy
 * would give the old x's results. */
static void test_act_bf16_shared(void **state) {
    (void)state;
    lq_err err;
    lq_err_clear(&err);
    lq_ctx *ctx = lq_cuda_test_ctx(LQ_DEVICE_CUDA, LQ_CUDA_MATH_BF16);
    assert_non_null(ctx);
    lq_rng r;
    lq_rng_seed(&r, g_seed ^ 0xac7u);
    act_weights W;
    lq_tensor *xh[2];
    for (int j = 0; j < 2; j++) {
        lq_tensor *wf = lq_tensor_alloc(LQ_DTYPE_F32, 2, (int64_t[]){AN, AK}, "w", &err);
        W.w[j] = lq_tensor_alloc(LQ_DTYPE_NF4, 2, (int64_t[]){AN, AK}, j ? "w1" : "w0", &err);
        W.a[j] = lq_tensor_alloc(LQ_DTYPE_F32, 2, (int64_t[]){AR, AK}, "A", &err);
        W.b[j] = lq_tensor_alloc(LQ_DTYPE_F32, 2, (int64_t[]){AN, AR}, "B", &err);
        xh[j] = lq_tensor_alloc(LQ_DTYPE_F32, 2, (int64_t[]){AM, AK}, "x", &err);
        if (!wf || !W.w[j] || !W.a[j] || !W.b[j] || !xh[j]) fail_msg("alloc: %s", err.msg);
        lq_fill_normal(wf, &r, 0.1f);
        lq_fill_normal(W.a[j], &r, 0.1f);
        lq_fill_normal(W.b[j], &r, 0.1f);
        lq_fill_normal(xh[j], &r, 1.0f);
        if (lq_bnb4_quantize(LQ_DTYPE_NF4, wf->data, AN * AK, 64, true, W.w[j]->data, &W.w[j]->qs, &err) != LQ_OK ||
            lq_tensor_to_device(W.w[j], &err) != LQ_OK)
            fail_msg("NF4 weight: %s", err.msg);
        lq_tensor_free(wf);
    }
    int bad = 0;
    uint64_t s0, c0, s1, c1;
    act_run ref[2];
    for (int v = 0; v < 2; v++) { /* the references: leaf x, nothing shared */
        lq_ctx_step_reset(ctx);
        ref[v] = act_step(ctx, &W, xh[v], false);
    }
    lq_ctx_step_reset(ctx);
    lq_cuda_act_bf16_counts(ctx, &s0, &c0);
    act_run got = act_step(ctx, &W, xh[0], true);
    lq_cuda_act_bf16_counts(ctx, &s1, &c1);
    print_message("  shared x: %llu conversion(s), %llu use(s) of the kept copy\n", (unsigned long long)(c1 - c0),
                  (unsigned long long)(s1 - s0));
    if (c1 - c0 != 1 || s1 - s0 != 3) {
        print_error("shared x: %llu conversions and %llu shared uses; want 1 and 3\n", (unsigned long long)(c1 - c0),
                    (unsigned long long)(s1 - s0));
        bad++;
    }
    bad += act_same("shared x", &got, &ref[0], 0);
    act_run_free(&got);
    lq_ctx_step_reset(ctx); /* the next step's x sits where this one's did */
    got = act_step(ctx, &W, xh[1], true);
    bad += act_same("new values after the step reset", &got, &ref[1], 0);
    act_run_free(&got);
    lq_ctx_mark m = lq_ctx_get_mark(ctx);
    got = act_step(ctx, &W, xh[0], true);
    act_run_free(&got);
    lq_ctx_reset_to(ctx, m); /* drops that run's tensors: the next ones take their place */
    got = act_step(ctx, &W, xh[1], true);
    bad += act_same("new values after a rewind to a mark", &got, &ref[1], 0);
    act_run_free(&got);
    /* a leaf's data is its owner's to overwrite: never kept (x0 gets x1's values, then the same call) */
    lq_tensor *x0 = lq_to_ctx_device(ctx, xh[0]), *a0 = lq_to_ctx_device(ctx, W.a[0]), *b0 = lq_to_ctx_device(ctx, W.b[0]);
    assert_true(x0 && a0 && b0);
    lq_tensor *y = lq_lora_linear_fused(ctx, x0, W.w[0], NULL, a0, b0, 2.0f, 0.0f, NULL);
    if (!y || lq_tensor_upload(ctx, x0, xh[1]->data) != LQ_OK ||
        !(y = lq_lora_linear_fused(ctx, x0, W.w[0], NULL, a0, b0, 2.0f, 0.0f, NULL)))
        fail_msg("leaf x: %s", lq_ctx_error(ctx)->msg);
    int64_t ny;
    float *hy = act_fetch(ctx, y, &ny);
    if (ny != ref[1].n[0] || memcmp(hy, ref[1].p[0], (size_t)ny * sizeof(float)) != 0) {
        print_error("a leaf x overwritten in place: y0 is not the new values' y0\n");
        bad++;
    }
    free(hy);
    lq_ctx_step_reset(ctx);
    act_run plain = act_segments(ctx, &W, xh, false);
    lq_ctx_step_reset(ctx);
    got = act_segments(ctx, &W, xh, true);
    bad += act_same("checkpointed segments", &got, &plain, 0);
    act_run_free(&got);
    act_run_free(&plain);
    for (int j = 0; j < 2; j++) {
        act_run_free(&ref[j]);
        lq_qstate_free(W.w[j]->qs);
        lq_tensor_free(W.w[j]);
        lq_tensor_free(W.a[j]);
        lq_tensor_free(W.b[j]);
        lq_tensor_free(xh[j]);
    }
    lq_ctx_free(ctx);
    if (bad) fail_msg("%d check(s) failed", bad);
}

/* swiglu and rmsnorm in bf16 math write their output's bf16 copy in the same pass
 * (lq_cuda_act_bf16_claim): the copy equals y rounded to nearest even, bit for bit, and a reader
 * (lq_cuda_act_bf16, then a QLoRA linear on y, as the MLP's down projection or q / k / v) takes it
 * without a conversion (counted), its output equal to the one on a leaf copy of y (converted as
 * usual). producer 0: swiglu(gate, up); 1: rmsnorm(gate, up's first row as the weight). */
static int act_claimed(int producer) {
    enum { M = AM, K = AK };
    lq_err err;
    lq_err_clear(&err);
    lq_ctx *ctx = lq_cuda_test_ctx(LQ_DEVICE_CUDA, LQ_CUDA_MATH_BF16);
    assert_non_null(ctx);
    lq_rng r;
    lq_rng_seed(&r, g_seed ^ 0xc1a1u);
    lq_tensor *gh = lq_tensor_alloc(LQ_DTYPE_F32, 2, (int64_t[]){M, K}, "gate", &err);
    lq_tensor *uh = lq_tensor_alloc(LQ_DTYPE_F32, 2, (int64_t[]){M, K}, "up", &err);
    lq_tensor *wf = lq_tensor_alloc(LQ_DTYPE_F32, 2, (int64_t[]){AN, K}, "w", &err);
    lq_tensor *w = lq_tensor_alloc(LQ_DTYPE_NF4, 2, (int64_t[]){AN, K}, "w", &err);
    lq_tensor *ah = lq_tensor_alloc(LQ_DTYPE_F32, 2, (int64_t[]){AR, K}, "A", &err);
    lq_tensor *bh = lq_tensor_alloc(LQ_DTYPE_F32, 2, (int64_t[]){AN, AR}, "B", &err);
    if (!gh || !uh || !wf || !w || !ah || !bh) fail_msg("alloc: %s", err.msg);
    lq_fill_normal(gh, &r, 2.0f);
    lq_fill_normal(uh, &r, 2.0f);
    lq_fill_normal(wf, &r, 0.1f);
    lq_fill_normal(ah, &r, 0.1f);
    lq_fill_normal(bh, &r, 0.1f);
    if (lq_bnb4_quantize(LQ_DTYPE_NF4, wf->data, AN * K, 64, true, w->data, &w->qs, &err) != LQ_OK ||
        lq_tensor_to_device(w, &err) != LQ_OK)
        fail_msg("NF4 weight: %s", err.msg);
    lq_tensor *g = lq_to_ctx_device(ctx, gh), *u = lq_to_ctx_device(ctx, uh);
    lq_tensor *a = lq_to_ctx_device(ctx, ah), *b = lq_to_ctx_device(ctx, bh);
    assert_true(g && u && a && b);
    g->flags |= LQ_TENSOR_REQUIRES_GRAD; /* recorded: y is an op's output */
    lq_tensor *y = producer ? lq_rmsnorm(ctx, g, lq_reshape(ctx, lq_slice(ctx, u, 0, 0, 1), 1, (int64_t[]){K}), 1e-5f)
                            : lq_swiglu(ctx, g, u);
    const char *name = producer ? "rmsnorm" : "swiglu";
    if (!y) fail_msg("%s: %s", name, lq_ctx_error(ctx)->msg);
    uint64_t s0, c0, s1, c1;
    lq_cuda_act_bf16_counts(ctx, &s0, &c0);
    int64_t ld = 0;
    const void *h = lq_cuda_act_bf16(ctx, y, &ld);
    lq_cuda_act_bf16_counts(ctx, &s1, &c1);
    if (!h) fail_msg("act copy: %s", lq_ctx_error(ctx)->msg);
    int bad = 0;
    if (s1 - s0 != 1 || c1 != c0) {
        print_error("the reader converted (%llu conversions, %llu shared uses): %s wrote no copy\n",
                    (unsigned long long)(c1 - c0), (unsigned long long)(s1 - s0), name);
        bad++;
    }
    float *yv = malloc(sizeof(float) * M * K);
    uint16_t *hv = malloc(sizeof(uint16_t) * M * (size_t)ld);
    assert_true(yv && hv);
    if (lq_tensor_download(ctx, y, yv) != LQ_OK ||
        lq_cuda_copy(hv, h, sizeof(uint16_t) * M * (size_t)ld, LQ_COPY_D2H, lq_cuda_stream(ctx), &err) != LQ_OK)
        fail_msg("download: %s %s", lq_ctx_error(ctx)->msg, err.msg);
    int64_t wrong = 0, first = -1;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < K; j++)
            if (hv[i * ld + j] != lq_f32_to_bf16(yv[i * K + j]) && wrong++ == 0) first = i * K + j;
    if (wrong) {
        print_error("%s: %lld of %d elements of the claimed copy differ from y rounded to bf16 (first %lld)\n", name,
                    (long long)wrong, M * K, (long long)first);
        bad++;
    }
    lq_tensor *ylh = lq_tensor_alloc(LQ_DTYPE_F32, 2, (int64_t[]){M, K}, "y leaf", &err);
    assert_non_null(ylh);
    memcpy(ylh->data, yv, sizeof(float) * M * K);
    lq_tensor *yl = lq_to_ctx_device(ctx, ylh);
    assert_non_null(yl);
    lq_tensor *o1 = lq_lora_linear_fused(ctx, y, w, NULL, a, b, 2.0f, 0.0f, NULL);
    lq_tensor *o2 = lq_lora_linear_fused(ctx, yl, w, NULL, a, b, 2.0f, 0.0f, NULL);
    if (!o1 || !o2) fail_msg("linear: %s", lq_ctx_error(ctx)->msg);
    int64_t n1, n2;
    float *p1 = act_fetch(ctx, o1, &n1), *p2 = act_fetch(ctx, o2, &n2);
    if (n1 != n2 || memcmp(p1, p2, (size_t)n1 * sizeof(float)) != 0) {
        print_error("%s: the linear on y (claimed copy) differs from the linear on a leaf copy of y\n", name);
        bad++;
    }
    print_message("  %s's claimed copy: %lld of %d elements off, reader converted %llu time(s)\n", name,
                  (long long)wrong, M * K, (unsigned long long)(c1 - c0));
    free(p1), free(p2), free(yv), free(hv);
    lq_qstate_free(w->qs);
    lq_tensor_free(w), lq_tensor_free(wf), lq_tensor_free(gh), lq_tensor_free(uh), lq_tensor_free(ah),
        lq_tensor_free(bh), lq_tensor_free(ylh);
    lq_ctx_free(ctx);
    return bad;
}

static void test_act_bf16_claimed(void **state) {
    (void)state;
    int bad = act_claimed(0) + act_claimed(1);
    if (bad) fail_msg("%d check(s) failed", bad);
}

int main(void) {
    int rc = 0;
    if (!lq_cuda_test_should_run(&rc)) return rc;
    g_seed = lq_cuda_test_seed("test_cuda_convert");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_to_bf16_layouts),
        cmocka_unit_test(test_strided_layouts),
        cmocka_unit_test(test_act_bf16_shared),
        cmocka_unit_test(test_act_bf16_claimed),
    };
    return cmocka_run_group_tests_name("test_cuda_convert", tests, NULL, NULL);
}
