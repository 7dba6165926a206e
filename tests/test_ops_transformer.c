/* tests/test_ops_transformer.c: embedding, rope and attention against naive double-precision
 * references, their masks and layouts, error messages, and thread-count independence. */
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/autograd_impl.h"

/* --- helpers ------------------------------------------------------------------------------- */

static lq_tensor *rand_leaf(lq_ctx *ctx, lq_rng *rng, int ndim, const int64_t *shape, bool grad) {
    lq_tensor *t = lq_new_leaf(ctx, ndim, shape, grad);
    assert_non_null(t);
    lq_fill_uniform(t, rng, -1.0f, 1.0f);
    return t;
}

static lq_tensor *i32_tensor(lq_ctx *ctx, int ndim, const int64_t *shape, const int32_t *vals) {
    lq_tensor *t = lq_new(ctx, LQ_DTYPE_I32, ndim, shape);
    assert_non_null(t);
    memcpy(t->data, vals, (size_t)lq_numel(t) * sizeof(int32_t));
    return t;
}

static float *dup_f32(const lq_tensor *t) {
    size_t n = (size_t)lq_numel(t);
    float *p = malloc((n ? n : 1) * sizeof *p);
    assert_non_null(p);
    memcpy(p, t->data, n * sizeof *p);
    return p;
}

static void assert_msg_has(const lq_ctx *ctx, const char *needle) {
    const char *msg = lq_ctx_error(ctx)->msg;
    if (!strstr(msg, needle)) {
        print_error("error message \"%s\" lacks \"%s\"\n", msg, needle);
        fail();
    }
}

/* --- embedding ----------------------------------------------------------------------------- */

static void test_embedding_forward_backward(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(2);
    lq_rng rng;
    lq_rng_seed(&rng, 11);
    const int64_t V = 5, C = 3;
    lq_tensor *table = rand_leaf(ctx, &rng, 2, (int64_t[]){V, C}, true);
    const int32_t idv[6] = {4, 0, 4, 2, 4, 1}; /* id 4 three times, id 3 never */
    lq_tensor *ids = i32_tensor(ctx, 2, (int64_t[]){2, 3}, idv);
    lq_tensor *y = lq_embedding(ctx, table, ids);
    assert_ctx_ok(ctx);
    assert_int_equal(y->ndim, 3);
    assert_int_equal(y->ne[0], 2);
    assert_int_equal(y->ne[1], 3);
    assert_int_equal(y->ne[2], C);
    const float *w = table->data;
    float want[18];
    for (int t = 0; t < 6; t++)
        for (int c = 0; c < C; c++) want[t * C + c] = w[idv[t] * C + c];
    assert_allclose(y->data, want, 18, 0, 0, "embedding rows");

    /* backward: dW[v] = sum of the dY rows whose id is v, in double */
    lq_tensor *gy = rand_leaf(ctx, &rng, 3, y->ne, false);
    assert_int_equal(lq_backward_from(ctx, y, gy), LQ_OK);
    double ref[15] = {0};
    const float *g = gy->data;
    for (int t = 0; t < 6; t++)
        for (int c = 0; c < C; c++) ref[idv[t] * C + c] += g[t * C + c];
    float reff[15];
    for (int i = 0; i < 15; i++) reff[i] = (float)ref[i];
    assert_non_null(table->grad);
    assert_allclose(table->grad->data, reff, 15, 1e-6, 1e-6, "embedding scatter-add grad");
    const float *dw = table->grad->data;
    for (int c = 0; c < C; c++) assert_true(dw[3 * C + c] == 0.0f); /* unused row */

    /* a scalar id gives a (C) row; strided ids are read through their strides */
    lq_tensor *one = i32_tensor(ctx, 0, NULL, (int32_t[]){2});
    lq_tensor *y1 = lq_embedding(ctx, table, one);
    assert_ctx_ok(ctx);
    assert_int_equal(y1->ndim, 1);
    assert_allclose(y1->data, w + 2 * C, C, 0, 0, "embedding of a scalar id");
    lq_tensor idt = *ids; /* transposed view of ids: (3, 2) */
    idt.ne[0] = 3;
    idt.ne[1] = 2;
    idt.nb[0] = sizeof(int32_t);
    idt.nb[1] = 3 * sizeof(int32_t);
    lq_tensor *yt = lq_embedding(ctx, table, &idt);
    assert_ctx_ok(ctx);
    float want_t[18];
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 2; b++)
            for (int c = 0; c < C; c++) want_t[(a * 2 + b) * C + c] = w[idv[b * 3 + a] * C + c];
    assert_allclose(yt->data, want_t, 18, 0, 0, "embedding of transposed ids");
    lq_ctx_free(ctx);
}

static void test_embedding_bad_id(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_rng rng;
    lq_rng_seed(&rng, 12);
    lq_tensor *table = rand_leaf(ctx, &rng, 2, (int64_t[]){7, 2}, true);
    lq_tensor *ids = i32_tensor(ctx, 1, (int64_t[]){4}, (int32_t[]){1, 6, 9, 0});
    assert_null(lq_embedding(ctx, table, ids));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_ARG);
    assert_msg_has(ctx, "id 9");
    assert_msg_has(ctx, "position 2");
    assert_msg_has(ctx, "7");
    lq_ctx_clear_error(ctx);
    lq_tensor *neg = i32_tensor(ctx, 1, (int64_t[]){2}, (int32_t[]){0, -1});
    assert_null(lq_embedding(ctx, table, neg));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_ARG);
    assert_msg_has(ctx, "id -1");
    assert_msg_has(ctx, "position 1");
    lq_ctx_clear_error(ctx);
    /* f32 ids are refused, and a failed context stays failed */
    lq_tensor *fids = rand_leaf(ctx, &rng, 1, (int64_t[]){3}, false);
    assert_null(lq_embedding(ctx, table, fids));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_ARG);
    assert_null(lq_embedding(ctx, table, ids));
    lq_ctx_free(ctx);
}

/* --- rope ---------------------------------------------------------------------------------- */

/* Naive rope in double; inv_freq as theta^(-2i/rot) or given. */
static void ref_rope(const float *x, const int32_t *pos, bool per_batch, int64_t B, int64_t T, int64_t H, int64_t D,
                     int64_t rot, bool interleaved, double theta, const float *inv_freq, float *out) {
    int64_t half = rot / 2;
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < H; h++) {
                const float *xr = x + ((b * T + t) * H + h) * D;
                float *yr = out + ((b * T + t) * H + h) * D;
                double p = pos[per_batch ? b * T + t : t];
                for (int64_t d = 0; d < D; d++) yr[d] = xr[d];
                for (int64_t i = 0; i < half; i++) {
                    double f = inv_freq ? inv_freq[i] : pow(theta, -2.0 * (double)i / (double)rot);
                    double c = cos(p * f), s = sin(p * f);
                    int64_t ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
                    yr[ia] = (float)(xr[ia] * c - xr[ib] * s);
                    yr[ib] = (float)(xr[ib] * c + xr[ia] * s);
                }
            }
}

static void test_rope_against_reference(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(2);
    lq_rng rng;
    lq_rng_seed(&rng, 21);
    const int64_t B = 2, T = 5, H = 3, D = 8;
    lq_tensor *x = rand_leaf(ctx, &rng, 4, (int64_t[]){B, T, H, D}, true);
    const int32_t posv[10] = {0, 1, 2, 3, 4, 7, 8, 9, 100, 1000};
    lq_tensor *pos_t = i32_tensor(ctx, 1, (int64_t[]){T}, posv + 5);
    lq_tensor *pos_bt = i32_tensor(ctx, 2, (int64_t[]){B, T}, posv);
    float *want = malloc((size_t)lq_numel(x) * sizeof *want);
    assert_non_null(want);
    const float my_freq[3] = {0.9f, 0.3f, 0.01f};
    char what[96];
    for (int layout = 0; layout < 2; layout++)
        for (int rc = 0; rc < 3; rc++) {
            int rot = rc == 0 ? 0 : rc == 1 ? 6 : 4;
            int64_t r = rot ? rot : D;
            for (int pb = 0; pb < 2; pb++) {
                const float *fr = (rot == 6 && pb) ? my_freq : NULL;
                lq_rope_params p = {(lq_rope_layout)layout, rot, 10000.0f, fr};
                lq_tensor *y = lq_rope(ctx, x, pb ? pos_bt : pos_t, &p);
                assert_ctx_ok(ctx);
                ref_rope(x->data, pb ? posv : posv + 5, pb, B, T, H, D, r, layout == LQ_ROPE_INTERLEAVED, 10000.0,
                         fr, want);
                snprintf(what, sizeof what, "rope layout %d rot_dim %d pos %s%s", layout, rot, pb ? "(B, T)" : "(T)",
                         fr ? " inv_freq" : "");
                /* float32 angles like HF: at position 1000 the angle carries ~1e-4 absolute error */
                assert_allclose(y->data, want, lq_numel(x), 1e-4, 2e-4, what);
            }
        }
    free(want);
    lq_ctx_free(ctx);
}

static void test_rope_structure(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_rng rng;
    lq_rng_seed(&rng, 22);
    const int64_t T = 3, D = 10;
    lq_tensor *x = rand_leaf(ctx, &rng, 4, (int64_t[]){1, T, 2, D}, true);
    const float *xd = x->data;
    lq_tensor *pos = i32_tensor(ctx, 1, (int64_t[]){T}, (int32_t[]){0, 5, 11});
    for (int layout = 0; layout < 2; layout++) {
        lq_rope_params p = {(lq_rope_layout)layout, 6, 10000.0f, NULL};
        lq_tensor *y = lq_rope(ctx, x, pos, &p);
        assert_ctx_ok(ctx);
        const float *yd = y->data;
        /* position 0 is the identity */
        assert_allclose(yd, xd, 2 * D, 0, 0, "rope at position 0");
        /* dims >= rot_dim pass through at every position */
        for (int64_t r = 0; r < T * 2; r++) assert_allclose(yd + r * D + 6, xd + r * D + 6, D - 6, 0, 0, "rope tail");
        /* the rotated dims do change at position 5 */
        bool changed = false;
        for (int d = 0; d < 6; d++) changed |= yd[2 * D + d] != xd[2 * D + d];
        assert_true(changed);
    }
    /* which elements pair up: a one-hot x[0] = 1 at position p, rot_dim 8, freq 0 = 1 rad/step:
     * HALF moves it into element 4 (= rot_dim/2), INTERLEAVED into element 1 */
    lq_tensor *e = lq_zeros(ctx, LQ_DTYPE_F32, 4, (int64_t[]){1, 1, 1, 8});
    ((float *)e->data)[0] = 1.0f;
    lq_tensor *p1 = i32_tensor(ctx, 1, (int64_t[]){1}, (int32_t[]){1});
    const float freq[4] = {1.0f, 0.5f, 0.25f, 0.125f};
    lq_rope_params ph = {LQ_ROPE_HALF, 8, 0.0f, freq};
    const float *yh = lq_rope(ctx, e, p1, &ph)->data;
    float want_h[8] = {cosf(1.0f), 0, 0, 0, sinf(1.0f), 0, 0, 0};
    assert_allclose(yh, want_h, 8, 1e-6, 1e-7, "HALF pairs i with i + rot_dim/2");
    lq_rope_params pi = {LQ_ROPE_INTERLEAVED, 8, 0.0f, freq};
    const float *yi = lq_rope(ctx, e, p1, &pi)->data;
    float want_i[8] = {cosf(1.0f), sinf(1.0f), 0, 0, 0, 0, 0, 0};
    assert_allclose(yi, want_i, 8, 1e-6, 1e-7, "INTERLEAVED pairs 2i with 2i+1");
    assert_ctx_ok(ctx);
    lq_ctx_free(ctx);
}

/* The backward is the inverse rotation: feeding y = rope(x) back as dy gives dx = x. */
static void test_rope_backward_inverts(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(2);
    lq_rng rng;
    lq_rng_seed(&rng, 23);
    lq_tensor *x = rand_leaf(ctx, &rng, 4, (int64_t[]){2, 4, 2, 6}, true);
    lq_tensor *pos = i32_tensor(ctx, 2, (int64_t[]){2, 4}, (int32_t[]){3, 1, 4, 1, 5, 9, 2, 6});
    for (int layout = 0; layout < 2; layout++) {
        x->grad = NULL;
        lq_rope_params p = {(lq_rope_layout)layout, 4, 10.0f, NULL};
        lq_tensor *y = lq_rope(ctx, x, pos, &p);
        assert_ctx_ok(ctx);
        lq_tensor *gy = lq_new(ctx, LQ_DTYPE_F32, 4, y->ne);
        memcpy(gy->data, y->data, lq_nbytes(y));
        assert_int_equal(lq_backward_from(ctx, y, gy), LQ_OK);
        assert_allclose(x->grad->data, x->data, lq_numel(x), 1e-5, 1e-6, "rope backward = inverse rotation");
    }
    lq_ctx_free(ctx);
}

static void test_rope_errors(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_rng rng;
    lq_rng_seed(&rng, 24);
    lq_tensor *x = rand_leaf(ctx, &rng, 4, (int64_t[]){2, 3, 1, 6}, true);
    lq_tensor *pos = i32_tensor(ctx, 1, (int64_t[]){4}, (int32_t[]){0, 1, 2, 3});
    lq_rope_params p = {LQ_ROPE_HALF, 0, 10000.0f, NULL};
    assert_null(lq_rope(ctx, x, pos, &p));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_SHAPE);
    assert_msg_has(ctx, "(2, 3, 1, 6)");
    assert_msg_has(ctx, "(4,)");
    lq_ctx_clear_error(ctx);
    lq_tensor *pos3 = i32_tensor(ctx, 1, (int64_t[]){3}, (int32_t[]){0, 1, 2});
    p.rot_dim = 3; /* odd */
    assert_null(lq_rope(ctx, x, pos3, &p));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_ARG);
    lq_ctx_clear_error(ctx);
    p.rot_dim = 8; /* > D */
    assert_null(lq_rope(ctx, x, pos3, &p));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_ARG);
    lq_ctx_free(ctx);
}

/* --- attention ----------------------------------------------------------------------------- */

/* Naive attention in double on (B, T, H, D) layouts. */
static void ref_attention(const float *q, const float *k, const float *v, const int32_t *doc, int64_t B, int64_t T,
                          int64_t Hq, int64_t Hkv, int64_t D, double scale, bool causal, float *out) {
    double *s = malloc((size_t)T * sizeof *s);
    assert_non_null(s);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++) {
            int64_t kh = h / (Hq / Hkv);
            for (int64_t i = 0; i < T; i++) {
                const float *qi = q + ((b * T + i) * Hq + h) * D;
                double mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < T; j++) {
                    bool ok = (!causal || j <= i) && (!doc || doc[b * T + i] == doc[b * T + j]);
                    const float *kj = k + ((b * T + j) * Hkv + kh) * D;
                    double dot = 0;
                    for (int64_t d = 0; d < D; d++) dot += (double)qi[d] * kj[d];
                    s[j] = ok ? scale * dot : -INFINITY;
                    if (s[j] > mx) mx = s[j];
                }
                for (int64_t j = 0; j < T; j++) {
                    s[j] = s[j] == -INFINITY ? 0.0 : exp(s[j] - mx);
                    sum += s[j];
                }
                float *oi = out + ((b * T + i) * Hq + h) * D;
                for (int64_t d = 0; d < D; d++) {
                    double acc = 0;
                    for (int64_t j = 0; j < T; j++) acc += s[j] / sum * v[((b * T + j) * Hkv + kh) * D + d];
                    oi[d] = (float)acc;
                }
            }
        }
    free(s);
}

static void test_attention_against_reference(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(2);
    lq_rng rng;
    lq_rng_seed(&rng, 31);
    const int64_t B = 2, T = 7, Hq = 4, Hkv = 2, D = 5;
    lq_tensor *q = rand_leaf(ctx, &rng, 4, (int64_t[]){B, T, Hq, D}, true);
    lq_tensor *k = rand_leaf(ctx, &rng, 4, (int64_t[]){B, T, Hkv, D}, true);
    lq_tensor *v = rand_leaf(ctx, &rng, 4, (int64_t[]){B, T, Hkv, D}, true);
    lq_tensor *doc = i32_tensor(ctx, 2, (int64_t[]){B, T}, (int32_t[]){0, 0, 0, 1, 1, 2, 2, 5, 5, 5, 5, 5, 5, 5});
    float *want = malloc((size_t)lq_numel(q) * sizeof *want);
    assert_non_null(want);
    char what[96];
    for (int causal = 0; causal < 2; causal++)
        for (int with_doc = 0; with_doc < 2; with_doc++)
            for (int sc = 0; sc < 2; sc++) {
                lq_attn_params p = {sc ? 0.37f : 0.0f, causal, with_doc ? doc : NULL};
                lq_tensor *o = lq_attention(ctx, q, k, v, &p);
                assert_ctx_ok(ctx);
                assert_int_equal(o->ndim, 4);
                assert_true(lq_same_shape(o, q));
                ref_attention(q->data, k->data, v->data, with_doc ? doc->data : NULL, B, T, Hq, Hkv, D,
                              sc ? 0.37 : 1.0 / sqrt((double)D), causal, want);
                snprintf(what, sizeof what, "attention causal=%d doc=%d scale=%s", causal, with_doc,
                         sc ? "0.37" : "default");
                assert_allclose(o->data, want, lq_numel(q), 1e-5, 1e-6, what);
            }
    /* p = NULL means causal with the default scale */
    lq_tensor *o = lq_attention(ctx, q, k, v, NULL);
    assert_ctx_ok(ctx);
    ref_attention(q->data, k->data, v->data, NULL, B, T, Hq, Hkv, D, 1.0 / sqrt((double)D), true, want);
    assert_allclose(o->data, want, lq_numel(q), 1e-5, 1e-6, "attention with p = NULL");
    /* a strided q (stored (B, Hq, T, D), viewed as (B, T, Hq, D)) gives the same result */
    lq_tensor *qs = lq_new_leaf(ctx, 4, (int64_t[]){B, Hq, T, D}, true);
    lq_tensor *qv = lq_transpose(ctx, qs, 1, 2);
    int64_t ne4[4];
    size_t nb4[4], cnb[4];
    lq_pad4(q, ne4, cnb);
    lq_pad4(qv, ne4, nb4);
    lq_strided_copy(qv->data, nb4, q->data, cnb, ne4, 1);
    lq_tensor *ov = lq_attention(ctx, qv, k, v, NULL);
    assert_ctx_ok(ctx);
    assert_allclose(ov->data, want, lq_numel(q), 1e-5, 1e-6, "attention with a strided q");
    free(want);
    lq_ctx_free(ctx);
}

/* Document masking: a token of document 2 must not see document 1, even without causality. */
static void test_attention_doc_mask(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_rng rng;
    lq_rng_seed(&rng, 32);
    const int64_t T = 6, H = 2, D = 3;
    lq_tensor *q = rand_leaf(ctx, &rng, 4, (int64_t[]){1, T, H, D}, false);
    lq_tensor *k = rand_leaf(ctx, &rng, 4, (int64_t[]){1, T, H, D}, false);
    lq_tensor *v = rand_leaf(ctx, &rng, 4, (int64_t[]){1, T, H, D}, false);
    lq_tensor *doc = i32_tensor(ctx, 2, (int64_t[]){1, T}, (int32_t[]){1, 1, 1, 2, 2, 2});
    for (int causal = 0; causal < 2; causal++) {
        lq_attn_params p = {0, causal, doc};
        float *o1 = dup_f32(lq_attention(ctx, q, k, v, &p));
        /* change document 1's keys and values wildly: document 2's outputs must not move */
        float *kd = k->data, *vd = v->data;
        for (int64_t i = 0; i < 3 * H * D; i++) {
            kd[i] += 5.0f;
            vd[i] -= 7.0f;
        }
        float *o2 = dup_f32(lq_attention(ctx, q, k, v, &p));
        assert_ctx_ok(ctx);
        assert_allclose(o2 + 3 * H * D, o1 + 3 * H * D, 3 * H * D, 0, 0, "document 2 ignores document 1");
        bool moved = false;
        for (int64_t i = 0; i < 3 * H * D; i++) moved |= o1[i] != o2[i];
        assert_true(moved); /* and document 1's outputs do depend on its own keys and values */
        /* the first token of document 2 sees only itself: its output is its own value row */
        assert_allclose(o2 + 3 * H * D, vd + 3 * H * D, causal ? H * D : 0, 1e-6, 1e-7, "first token of doc 2");
        free(o1);
        free(o2);
    }
    lq_ctx_free(ctx);
}

static void test_attention_errors(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_rng rng;
    lq_rng_seed(&rng, 33);
    lq_tensor *q = rand_leaf(ctx, &rng, 4, (int64_t[]){2, 3, 4, 5}, true);
    lq_tensor *k = rand_leaf(ctx, &rng, 4, (int64_t[]){2, 3, 2, 6}, true);
    lq_tensor *v = rand_leaf(ctx, &rng, 4, (int64_t[]){2, 3, 2, 6}, true);
    assert_null(lq_attention(ctx, q, k, v, NULL));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_SHAPE);
    assert_msg_has(ctx, "attention");
    assert_msg_has(ctx, "(2, 3, 4, 5)");
    assert_msg_has(ctx, "(2, 3, 2, 6)");
    lq_ctx_clear_error(ctx);
    lq_tensor *k3 = rand_leaf(ctx, &rng, 4, (int64_t[]){2, 3, 3, 5}, true);
    assert_null(lq_attention(ctx, q, k3, k3, NULL)); /* Hq = 4 is not a multiple of Hkv = 3 */
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_SHAPE);
    assert_msg_has(ctx, "(2, 3, 3, 5)");
    lq_ctx_clear_error(ctx);
    lq_tensor *k2 = rand_leaf(ctx, &rng, 4, (int64_t[]){2, 3, 2, 5}, true);
    lq_tensor *v2 = rand_leaf(ctx, &rng, 4, (int64_t[]){2, 3, 1, 5}, true);
    assert_null(lq_attention(ctx, q, k2, v2, NULL)); /* k and v differ */
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_SHAPE);
    lq_ctx_clear_error(ctx);
    lq_tensor *doc = i32_tensor(ctx, 2, (int64_t[]){2, 2}, (int32_t[]){0, 0, 1, 1});
    lq_attn_params p = {0, true, doc};
    assert_null(lq_attention(ctx, q, k2, k2, &p)); /* doc is (2, 2), not (B, T) = (2, 3) */
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_SHAPE);
    assert_msg_has(ctx, "(2, 2)");
    lq_ctx_clear_error(ctx);
    assert_non_null(lq_attention(ctx, q, k2, k2, NULL));
    assert_ctx_ok(ctx);
    lq_ctx_free(ctx);
}

/* No-grad mode processes (b, h) pairs in chunks with a reused buffer; it must agree with the
 * recorded forward, also when the pairs do not fit one chunk. */
static void test_attention_no_grad_chunks(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(2);
    lq_rng rng;
    lq_rng_seed(&rng, 34);
    const int64_t T = 1100, D = 2; /* 4 pairs of T*T floats > 2^22: chunks of 3 pairs and 1 */
    lq_tensor *q = rand_leaf(ctx, &rng, 4, (int64_t[]){1, T, 4, D}, true);
    lq_tensor *k = rand_leaf(ctx, &rng, 4, (int64_t[]){1, T, 2, D}, true);
    lq_tensor *v = rand_leaf(ctx, &rng, 4, (int64_t[]){1, T, 2, D}, true);
    lq_attn_params p = {0, true, NULL};
    lq_tensor *o = lq_attention(ctx, q, k, v, &p);
    assert_ctx_ok(ctx);
    assert_non_null(o->node); /* recorded */
    float *a = dup_f32(o);
    lq_ctx_set_grad(ctx, false);
    lq_tensor *o2 = lq_attention(ctx, q, k, v, &p);
    assert_ctx_ok(ctx);
    assert_null(o2->node);
    assert_allclose(o2->data, a, lq_numel(o2), 0, 0, "no-grad attention = recorded attention");
    free(a);
    lq_ctx_free(ctx);
}

/* --- thread-count independence ------------------------------------------------------------- */

/* Forward and backward of all three ops at sizes that take their parallel paths; returns the
 * concatenated outputs and grads (malloc'd) and their count. */
static float *run_all(int n_threads, int64_t *count) {
    lq_ctx *ctx = lq_test_ctx(n_threads);
    lq_rng rng;
    lq_rng_seed(&rng, 41);
    const int64_t B = 2, T = 72, Hq = 4, Hkv = 2, D = 8, V = 50, C = Hq * D;
    lq_tensor *table = rand_leaf(ctx, &rng, 2, (int64_t[]){V, 3 * C}, true);
    lq_tensor *ids = lq_gc_ids(ctx, &rng, 2, (int64_t[]){B, T * 8}, 0, (int32_t)V - 1);
    lq_tensor *e = lq_embedding(ctx, table, ids); /* (B, 8T, 3C): 2*576*96 > 65536 elements */
    /* rope on all 8T positions of a strided q (B*8T*C > 32768 elements), then keep T of them */
    lq_tensor *q = lq_reshape(ctx, lq_slice(ctx, e, 2, 0, C), 4, (int64_t[]){B, 8 * T, Hq, D});
    lq_tensor *k = lq_reshape(ctx, lq_contiguous(ctx, lq_slice(ctx, lq_slice(ctx, e, 2, C, C + Hkv * D), 1, 0, T)),
                              4, (int64_t[]){B, T, Hkv, D});
    lq_tensor *v = lq_reshape(ctx, lq_contiguous(ctx, lq_slice(ctx, lq_slice(ctx, e, 2, 2 * C, 2 * C + Hkv * D), 1, 0, T)),
                              4, (int64_t[]){B, T, Hkv, D});
    int32_t pv[2 * 8 * 72], dv[2 * 72];
    for (int i = 0; i < 2 * 8 * 72; i++) pv[i] = (i * 7) % 997;
    for (int i = 0; i < 2 * 72; i++) dv[i] = (i % 72) / 20;
    lq_tensor *pos = i32_tensor(ctx, 2, (int64_t[]){B, 8 * T}, pv);
    lq_tensor *doc = i32_tensor(ctx, 2, (int64_t[]){B, T}, dv);
    lq_rope_params rp = {LQ_ROPE_HALF, 6, 10000.0f, NULL};
    q = lq_slice(ctx, lq_rope(ctx, q, pos, &rp), 1, 0, T);
    lq_attn_params ap = {0, true, doc};
    lq_tensor *o = lq_attention(ctx, q, k, v, &ap);
    assert_ctx_ok(ctx);
    lq_tensor *gy = rand_leaf(ctx, &rng, 4, o->ne, false);
    assert_int_equal(lq_backward_from(ctx, o, gy), LQ_OK);
    int64_t n = lq_numel(o) + lq_numel(table);
    float *all = malloc((size_t)n * sizeof *all);
    assert_non_null(all);
    memcpy(all, o->data, lq_nbytes(o));
    memcpy(all + lq_numel(o), table->grad->data, lq_nbytes(table));
    *count = n;
    lq_ctx_free(ctx);
    return all;
}

static void test_thread_count_independence(void **state) {
    (void)state;
    int64_t n1, n2;
    float *a = run_all(1, &n1), *b = run_all(2, &n2);
    assert_int_equal(n1, n2);
    assert_allclose(b, a, n1, 0, 0, "2 threads vs 1 thread (outputs and embedding grads)");
    assert_true(memcmp(a, b, (size_t)n1 * sizeof *a) == 0);
    free(a);
    free(b);
}

/* --- gradcheck over many random cases (the suite-wide check draws only a few) ---------------- */

static void test_gradcheck_many_cases(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(2);
    const char *ops[3] = {"embedding", "rope", "attention"};
    for (int o = 0; o < 3; o++) {
        int op = lq_op_find(ops[o]);
        assert_true(op >= 0);
        double worst = 0;
        for (uint64_t seed = 1; seed <= 40; seed++) {
            lq_gc_result r;
            char desc[128];
            lq_status s = lq_gradcheck_op(ctx, op, seed * 7919u, &r, desc, sizeof desc);
            if (s != LQ_OK) {
                print_error("%s case %s: %s\n", ops[o], desc, lq_ctx_error(ctx)->msg);
                fail();
            }
            if (r.error >= 1e-2) {
                print_error("%s case %s: error %.3e\n", ops[o], desc, r.error);
                fail();
            }
            if (r.error > worst) worst = r.error;
        }
        printf("%-10s 40 cases, max error %.3e\n", ops[o], worst);
        lq_ctx_step_reset(ctx);
    }
    lq_ctx_free(ctx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embedding_forward_backward),
        cmocka_unit_test(test_embedding_bad_id),
        cmocka_unit_test(test_rope_against_reference),
        cmocka_unit_test(test_rope_structure),
        cmocka_unit_test(test_rope_backward_inverts),
        cmocka_unit_test(test_rope_errors),
        cmocka_unit_test(test_attention_against_reference),
        cmocka_unit_test(test_attention_doc_mask),
        cmocka_unit_test(test_attention_errors),
        cmocka_unit_test(test_attention_no_grad_chunks),
        cmocka_unit_test(test_thread_count_independence),
        cmocka_unit_test(test_gradcheck_many_cases),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
