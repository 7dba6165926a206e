/* tests/test_grad_release.c: releasing intermediate gradients during backward
 * (lq_ctx_set_release_grads) gives bit-identical losses and gradients, with a lower peak. */
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/autograd_impl.h"
#include "lora/lora.h"
#include "models/models.h"

enum { B = 2, T = 8, C = 16, H = 2, D = 8, F = 32, V = 24, L = 6 };

typedef struct layer_w {
    lq_tensor *norm, *wq, *w1, *w2;
} layer_w;

typedef struct model {
    lq_params *p;
    lq_tensor *emb;
    layer_w layer[L];
} model;

static void model_init(model *m) {
    lq_err err = {0};
    assert_int_equal(lq_params_init(&m->p, &err), LQ_OK);
    m->emb = lq_params_add(m->p, "emb", 2, (int64_t[]){V, C}, 0, &err);
    for (int l = 0; l < L; l++) {
        char nm[32];
        snprintf(nm, sizeof nm, "l%d.norm", l);
        m->layer[l].norm = lq_params_add(m->p, nm, 1, (int64_t[]){C}, LQ_TENSOR_NO_DECAY, &err);
        snprintf(nm, sizeof nm, "l%d.wq", l);
        m->layer[l].wq = lq_params_add(m->p, nm, 2, (int64_t[]){C, C}, 0, &err);
        snprintf(nm, sizeof nm, "l%d.w1", l);
        m->layer[l].w1 = lq_params_add(m->p, nm, 2, (int64_t[]){F, C}, 0, &err);
        snprintf(nm, sizeof nm, "l%d.w2", l);
        m->layer[l].w2 = lq_params_add(m->p, nm, 2, (int64_t[]){C, F}, 0, &err);
    }
    assert_int_equal(lq_params_finalize(m->p, &err), LQ_OK);
    lq_rng rng;
    lq_rng_seed(&rng, 7);
    for (int i = 0; i < lq_params_count(m->p); i++) {
        lq_tensor *t = lq_params_at(m->p, i);
        if (t->flags & LQ_TENSOR_NO_DECAY) lq_fill_uniform(t, &rng, 0.8f, 1.2f);
        else lq_fill_normal(t, &rng, 0.3f);
    }
}

/* One block: attention whose q, k and v are the same tensor (a shared input used three times),
 * reached through reshape / transpose views, channel halves swapped by slice + concat, a gated
 * MLP whose pre-activation is used twice, dropout, and the residual reusing x. (B, T, C) -> same. */
static lq_tensor *block(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const layer_w *w = user;
    lq_tensor *x = in[0];
    lq_tensor *n = lq_rmsnorm(ctx, x, w->norm, 1e-5f);
    lq_tensor *q = lq_reshape(ctx, lq_matmul_t(ctx, n, w->wq, false, true), 4, (int64_t[]){B, T, H, D});
    lq_tensor *qt = lq_transpose(ctx, lq_transpose(ctx, q, 1, 2), 1, 2); /* two views, back to (B, T, H, D) */
    lq_tensor *a = lq_attention(ctx, qt, q, q, &(lq_attn_params){.causal = true});
    a = lq_reshape(ctx, a, 3, (int64_t[]){B, T, C});
    lq_tensor *halves[2] = {lq_slice(ctx, a, 2, C / 2, C), lq_slice(ctx, a, 2, 0, C / 2)};
    lq_tensor *h = lq_add(ctx, x, lq_concat(ctx, halves, 2, 2));
    lq_tensor *u = lq_matmul_t(ctx, lq_rmsnorm(ctx, h, w->norm, 1e-5f), w->w1, false, true);
    lq_tensor *g = lq_mul(ctx, lq_silu(ctx, u), u);
    lq_tensor *o = lq_dropout(ctx, lq_matmul_t(ctx, g, w->w2, false, true), 0.1f);
    return lq_add(ctx, h, o);
}

/* Forward of the whole model; layers 1 and 4 checkpointed. bias is a leaf added to the
 * embeddings so that a non-parameter leaf gets a gradient too. Returns the logits (B, T, V). */
static lq_tensor *forward(lq_ctx *ctx, const model *m, lq_tensor *ids, lq_tensor *bias) {
    lq_tensor *x = lq_add(ctx, lq_embedding(ctx, m->emb, ids), bias);
    for (int l = 0; l < L; l++) {
        if (l == 1 || l == 4) x = lq_checkpoint(ctx, block, (void *)&m->layer[l], 1, &x);
        else x = block(ctx, &x, 1, (void *)&m->layer[l]);
    }
    return lq_matmul_t(ctx, x, m->emb, false, true); /* tied head: emb read twice */
}

typedef struct step_out {
    float loss;
    float *grads; /* the parameter block's grads, then bias's */
    size_t peak;  /* arena high water, plus the pool's when it was used */
    lq_arena_stats st;
} step_out;

/* Steps with the mode on or off from a fresh context; from_grad: backward from the logits with a
 * fixed upstream gradient instead of from the loss. Records the last step. */
static void run(const model *m, bool release, bool from_grad, int steps, step_out *r) {
    lq_ctx *ctx = lq_test_ctx(2);
    lq_ctx_set_training(ctx, true);
    assert_false(lq_ctx_set_release_grads(ctx, release));
    int64_t np = lq_params_numel(m->p);
    r->grads = malloc((size_t)(np + B * T * C) * sizeof(float));
    uint64_t allocs_after_first = 0;
    for (int s = 0; s < steps; s++) {
        lq_ctx_step_reset(ctx);
        lq_ctx_set_seed(ctx, 1234 + (uint64_t)s);
        lq_params_zero_grad(m->p);
        lq_tensor *ids = lq_new(ctx, LQ_DTYPE_I32, 2, (int64_t[]){B, T});
        lq_tensor *lab = lq_new(ctx, LQ_DTYPE_I32, 2, (int64_t[]){B, T});
        lq_tensor *bias = lq_new_leaf(ctx, 3, (int64_t[]){B, T, C}, true);
        lq_rng rng;
        lq_rng_seed(&rng, 99 + (uint64_t)s);
        for (int i = 0; i < B * T; i++) {
            ((int32_t *)ids->data)[i] = (int32_t)lq_rng_int(&rng, 0, V - 1);
            ((int32_t *)lab->data)[i] = i % T == T - 1 ? LQ_IGNORE_INDEX : (int32_t)lq_rng_int(&rng, 0, V - 1);
        }
        lq_fill_uniform(bias, &rng, -0.1f, 0.1f);
        lq_tensor *logits = forward(ctx, m, ids, bias);
        if (from_grad) {
            lq_tensor *go = lq_new(ctx, LQ_DTYPE_F32, 3, (int64_t[]){B, T, V});
            lq_fill_uniform(go, &rng, -1, 1);
            r->loss = 0;
            assert_int_equal(lq_backward_from(ctx, logits, go), LQ_OK);
        } else {
            lq_tensor *loss = lq_cross_entropy(ctx, logits, lab, LQ_IGNORE_INDEX, LQ_REDUCE_MEAN);
            assert_non_null(loss);
            r->loss = *(float *)loss->data;
            assert_int_equal(lq_backward(ctx, loss), LQ_OK);
        }
        assert_non_null(bias->grad);
        memcpy(r->grads, lq_params_grad(m->p), (size_t)np * sizeof(float));
        memcpy(r->grads + np, bias->grad->data, (size_t)(B * T * C) * sizeof(float));
        r->st = lq_ctx_arena_stats(ctx);
        /* every pool gradient went back: each one belongs to a node that backward visited */
        assert_int_equal(r->st.pool_in_use, 0);
        if (s == 0) allocs_after_first = r->st.pool_sys_allocs;
    }
    if (release) {
        assert_true(r->st.pool_sys_allocs > 0);
        assert_int_equal(r->st.pool_sys_allocs, allocs_after_first); /* later steps reuse blocks */
    } else {
        assert_int_equal(r->st.pool_capacity, 0);
    }
    r->peak = r->st.high_water + r->st.pool_high_water;
    lq_ctx_free(ctx);
}

static void check_same(bool from_grad) {
    model m;
    model_init(&m);
    step_out off, on;
    run(&m, false, from_grad, 3, &off);
    run(&m, true, from_grad, 3, &on);
    int64_t n = lq_params_numel(m.p) + B * T * C;
    assert_memory_equal(&off.loss, &on.loss, sizeof(float));
    assert_memory_equal(off.grads, on.grads, (size_t)n * sizeof(float));
    /* the gradients are not trivially zero */
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += (double)off.grads[i] * off.grads[i];
    assert_true(sum > 1e-6);
    printf("%s: peak %zu bytes kept (arena) vs %zu (arena %zu + pool %zu) with release\n",
           from_grad ? "backward_from" : "backward", off.peak, on.peak, on.st.high_water, on.st.pool_high_water);
    /* released: arena peak plus pool peak (an upper bound on what coexisted) under the plain peak */
    assert_true(on.peak < off.peak);
    free(off.grads);
    free(on.grads);
    lq_params_free(m.p);
}

static void test_release_bit_identical(void **state) {
    (void)state;
    check_same(false);
}

static void test_release_backward_from(void **state) {
    (void)state;
    check_same(true);
}

/* What a caller sees: intermediates' grads are gone after backward in release mode (kept with it
 * off), a grad the caller set on an intermediate is kept and filled, leaves keep theirs. */
static void test_release_semantics(void **state) {
    (void)state;
    for (int release = 0; release < 2; release++) {
        lq_ctx *ctx = lq_test_ctx(1);
        lq_ctx_set_release_grads(ctx, release);
        lq_tensor *x = lq_new_leaf(ctx, 2, (int64_t[]){3, 4}, true);
        lq_rng rng;
        lq_rng_seed(&rng, 3);
        lq_fill_uniform(x, &rng, -1, 1);
        lq_tensor *a = lq_silu(ctx, x);
        lq_tensor *b = lq_mul(ctx, a, a);
        lq_tensor *own = lq_zeros(ctx, LQ_DTYPE_F32, 2, (int64_t[]){3, 4});
        b->grad = own; /* set by the caller: never pooled, never released */
        lq_tensor *c = lq_scale(ctx, lq_transpose(ctx, b, 0, 1), 2.0f);
        lq_tensor *loss = lq_sum(ctx, c, LQ_AXIS_ALL, false);
        assert_int_equal(lq_backward(ctx, loss), LQ_OK);
        assert_non_null(x->grad);
        assert_ptr_equal(b->grad, own);
        for (int i = 0; i < 12; i++) assert_true(((float *)own->data)[i] == 2.0f);
        if (release) {
            assert_null(a->grad);
            assert_null(c->grad);
            assert_null(loss->grad);
        } else {
            assert_non_null(a->grad);
            assert_non_null(c->grad);
        }
        lq_arena_stats st = lq_ctx_arena_stats(ctx);
        assert_int_equal(st.pool_in_use, 0);
        assert_true(release ? st.pool_high_water > 0 : st.pool_high_water == 0);
        lq_ctx_free(ctx);
    }
}

/* Gradients requested outside any walk stay out until the step reset takes them back, blocks
 * come back zeroed, and a step of other shapes trims the sizes it did not need. */
static void test_pool_step_reset(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(1);
    lq_ctx_set_release_grads(ctx, true);
    size_t cap[2] = {0, 0};
    for (int s = 0; s < 3; s++) {
        lq_ctx_step_reset(ctx);
        if (s > 0) cap[s - 1] = lq_ctx_arena_stats(ctx).pool_capacity;
        if (s == 2) break;
        int64_t n = s == 0 ? 64 : 48;
        lq_tensor *x = lq_new_leaf(ctx, 1, (int64_t[]){n}, true);
        lq_tensor *y = lq_silu(ctx, lq_scale(ctx, x, 3.0f));
        assert_int_equal(lq_backward(ctx, lq_sum(ctx, y, LQ_AXIS_ALL, false)), LQ_OK);
        assert_int_equal(lq_ctx_arena_stats(ctx).pool_in_use, 0);
        lq_tensor *z = lq_scale(ctx, x, 2.0f);
        float *g;
        assert_int_equal(lq_grad_get(ctx, z, &g), LQ_OK);
        assert_non_null(g);
        for (int64_t i = 0; i < n; i++) assert_true(g[i] == 0.0f); /* zeroed, though reused */
        for (int64_t i = 0; i < n; i++) g[i] = 5.0f;
        assert_true(lq_ctx_arena_stats(ctx).pool_in_use > 0);
    }
    assert_int_equal(lq_ctx_arena_stats(ctx).pool_in_use, 0);
    /* the same graph with 48 instead of 64 floats: the 64-float blocks were freed */
    assert_true(cap[1] > 0 && cap[1] < cap[0]);
    lq_ctx_free(ctx);
}

/* The real training forward: the tiny Llama fixture with an NF4 base and the PEFT adapter, LoRA
 * dropout on, the loss in chunks of 5 rows, a packed row with two documents; every combination of
 * checkpointing and release gives the same loss and adapter gradients bit for bit. */
static void test_release_llama(void **state) {
    (void)state;
    char p[512];
    lq_err err;
    lq_err_clear(&err);
    lq_llama_load_opts lo = {.quant = LQ_BASE_NF4, .block_size = 64, .double_quant = true};
    lq_llama_model *m = NULL;
    lq_lora_set *set = NULL;
    if (lq_llama_load_ex(lq_fixture_path("llama_tiny/tied", p, sizeof p), &lo, &m, &err) != LQ_OK)
        fail_msg("load: %s", err.msg);
    if (lq_peft_load(&set, lq_fixture_path("llama_train/adapter", p, sizeof p), &err) != LQ_OK)
        fail_msg("peft load: %s", err.msg);
    for (int i = 0; i < set->n; i++) set->mods[i].dropout = 0.3f;
    assert_int_equal(lq_llama_lora_attach(m, set, &err), LQ_OK);
    int64_t vocab = lq_llama_model_config(m)->vocab_size, n = lq_params_numel(set->params);
    enum { LB = 2, LT = 12 };
    float *g[4], loss[4];
    size_t peak[4];
    for (int k = 0; k < 4; k++) {
        bool ckpt = k & 1, release = k & 2;
        lq_ctx *ctx = lq_test_ctx(2);
        lq_ctx_set_training(ctx, true);
        lq_ctx_set_release_grads(ctx, release);
        lq_ctx_set_seed(ctx, 77);
        lq_params_zero_grad(set->params);
        lq_tensor *ids = lq_new(ctx, LQ_DTYPE_I32, 2, (int64_t[]){LB, LT});
        lq_tensor *lab = lq_new(ctx, LQ_DTYPE_I32, 2, (int64_t[]){LB, LT});
        lq_tensor *pos = lq_new(ctx, LQ_DTYPE_I32, 2, (int64_t[]){LB, LT});
        lq_tensor *doc = lq_new(ctx, LQ_DTYPE_I32, 2, (int64_t[]){LB, LT});
        lq_rng rng;
        lq_rng_seed(&rng, 5);
        for (int i = 0; i < LB * LT; i++) {
            int t = i % LT, d = t >= 7; /* documents [0, 7) and [7, 12) in each row */
            ((int32_t *)ids->data)[i] = (int32_t)lq_rng_int(&rng, 0, vocab - 1);
            ((int32_t *)pos->data)[i] = d ? t - 7 : t;
            ((int32_t *)doc->data)[i] = d;
        }
        for (int i = 0; i < LB * LT; i++)
            ((int32_t *)lab->data)[i] = i % LT == LT - 1 || i % LT == 6 ? LQ_IGNORE_INDEX : ((int32_t *)ids->data)[i + 1];
        lq_llama_fwd_opts o = {.positions = pos, .doc = doc, .checkpoint = ckpt, .chunk_rows = 5};
        lq_tensor *l = lq_llama_loss(ctx, m, ids, lab, &o, NULL);
        assert_ctx_ok(ctx);
        loss[k] = *(float *)l->data;
        assert_int_equal(lq_backward(ctx, l), LQ_OK);
        g[k] = malloc((size_t)n * sizeof(float));
        memcpy(g[k], lq_params_grad(set->params), (size_t)n * sizeof(float));
        lq_arena_stats st = lq_ctx_arena_stats(ctx);
        assert_int_equal(st.pool_in_use, 0);
        peak[k] = st.high_water + st.pool_high_water;
        lq_ctx_free(ctx);
    }
    printf("llama: loss %.9g; peak plain %zu, checkpointed %zu; with release %zu, %zu bytes\n", (double)loss[0],
           peak[0], peak[1], peak[2], peak[3]);
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += fabs((double)g[0][i]);
    assert_true(sum > 0);
    for (int k = 1; k < 4; k++) {
        assert_memory_equal(&loss[0], &loss[k], sizeof(float));
        assert_memory_equal(g[0], g[k], (size_t)n * sizeof(float));
    }
    assert_true(peak[2] < peak[0]);
    assert_true(peak[3] < peak[1]);
    for (int k = 0; k < 4; k++) free(g[k]);
    lq_llama_free(m);
    lq_lora_set_free(set);
}

/* silu(x) through k reshapes; with from_grad the backward starts there from a gradient of ones,
 * else it goes on: x + x, then x - x + x / 2 (each uses its input twice, so an adopted block is read
 * and added to by the same op), loss = sum of squares. Returns x's gradient; *pool_hw the pool's
 * high water. */
static float *adopt_case(int k, bool release, bool from_grad, size_t *pool_hw) {
    lq_ctx *ctx = lq_test_ctx(1);
    lq_ctx_set_release_grads(ctx, release);
    lq_tensor *x = lq_new_leaf(ctx, 2, (int64_t[]){6, 10}, true);
    lq_rng rng;
    lq_rng_seed(&rng, 11);
    lq_fill_uniform(x, &rng, -1, 1);
    lq_tensor *h = lq_silu(ctx, x);
    for (int i = 0; i < k; i++)
        h = lq_reshape(ctx, h, 2, i % 2 ? (int64_t[]){6, 10} : (int64_t[]){12, 5});
    if (from_grad) {
        lq_tensor *go = lq_new(ctx, LQ_DTYPE_F32, h->ndim, h->ne);
        for (int i = 0; i < 60; i++) ((float *)go->data)[i] = 1.0f;
        assert_int_equal(lq_backward_from(ctx, h, go), LQ_OK);
    } else {
        h = lq_add(ctx, h, h);
        h = lq_add(ctx, lq_sub(ctx, h, h), lq_scale(ctx, h, 0.5f));
        assert_int_equal(lq_backward(ctx, lq_sum(ctx, lq_mul(ctx, h, h), LQ_AXIS_ALL, false)), LQ_OK);
    }
    float *g = malloc(60 * sizeof(float));
    memcpy(g, x->grad->data, 60 * sizeof(float));
    lq_arena_stats st = lq_ctx_arena_stats(ctx);
    assert_int_equal(st.pool_in_use, 0);
    *pool_hw = st.pool_high_water;
    lq_ctx_free(ctx);
    return g;
}

/* A reshape's or an unbroadcast add's input takes the output's gradient block instead of a copy
 * (lq_grad_adopt): the gradients are the plain mode's bit for bit and match a hand-derived value;
 * a backward through five reshapes holds one block at a time, as one with none does (copying,
 * each reshape's backward would hold two). */
static void test_adopt_views_and_adds(void **state) {
    (void)state;
    size_t hw, hw0, hw5;
    float *plain = adopt_case(5, false, false, &hw), *l = adopt_case(5, true, false, &hw);
    assert_memory_equal(plain, l, 60 * sizeof(float));
    /* h = 2 silu(x), then (h - h) + h / 2 = silu(x): loss = sum silu(x)^2, dx = 2 silu(x) silu'(x) */
    lq_ctx *ctx = lq_test_ctx(1);
    lq_tensor *x = lq_new_leaf(ctx, 2, (int64_t[]){6, 10}, false);
    lq_rng rng;
    lq_rng_seed(&rng, 11);
    lq_fill_uniform(x, &rng, -1, 1);
    for (int i = 0; i < 60; i++) {
        double v = ((float *)x->data)[i], sg = 1 / (1 + exp(-v)), si = v * sg, d = sg * (1 + v * (1 - sg));
        assert_true(fabs(l[i] - 2 * si * d) <= 1e-5 * (1 + fabs(2 * si * d)));
    }
    lq_ctx_free(ctx);
    free(plain);
    free(l);
    float *g0 = adopt_case(0, true, true, &hw0), *g5 = adopt_case(5, true, true, &hw5);
    assert_memory_equal(g0, g5, 60 * sizeof(float)); /* reshapes change no value */
    printf("adopt: pool high water %zu bytes through 5 reshapes, %zu through none\n", hw5, hw0);
    assert_true(hw0 > 0);
    assert_int_equal(hw5, hw0);
    free(g0);
    free(g5);
}

/* lq_grad_get_fresh: an intermediate's first gradient in release mode comes from the pool
 * unzeroed and flagged fresh (the CUDA backwards then assign instead of adding); a second request,
 * a leaf, or a context without release gets the usual zeroed gradient, flagged not fresh. */
static void test_grad_get_fresh(void **state) {
    (void)state;
    for (int release = 0; release < 2; release++) {
        lq_ctx *ctx = lq_test_ctx(1);
        lq_ctx_set_release_grads(ctx, release);
        lq_tensor *x = lq_new_leaf(ctx, 1, (int64_t[]){40}, true);
        lq_rng rng;
        lq_rng_seed(&rng, 21);
        lq_fill_uniform(x, &rng, -1, 1);
        lq_tensor *y = lq_silu(ctx, x);
        assert_non_null(y);
        float *g, *g2, *gx;
        bool fresh = !release, fresh2 = true, fx = true;
        assert_int_equal(lq_grad_get_fresh(ctx, y, &g, &fresh), LQ_OK);
        assert_non_null(g);
        assert_true(fresh == (release == 1));
        if (!fresh)
            for (int i = 0; i < 40; i++) assert_true(g[i] == 0.0f);
        assert_int_equal(lq_grad_get_fresh(ctx, y, &g2, &fresh2), LQ_OK);
        assert_ptr_equal(g, g2);
        assert_false(fresh2);
        assert_int_equal(lq_grad_get_fresh(ctx, x, &gx, &fx), LQ_OK); /* a leaf: never pooled */
        assert_false(fx);
        for (int i = 0; i < 40; i++) assert_true(gx[i] == 0.0f);
        lq_ctx_free(ctx);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_release_bit_identical),
        cmocka_unit_test(test_release_backward_from),
        cmocka_unit_test(test_release_semantics),
        cmocka_unit_test(test_release_llama),
        cmocka_unit_test(test_pool_step_reset),
        cmocka_unit_test(test_adopt_views_and_adds),
        cmocka_unit_test(test_grad_get_fresh),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
