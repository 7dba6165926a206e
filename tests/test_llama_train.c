/* tests/test_llama_train.c: QLoRA on a Llama: NF4 base at load, LoRA attach / create / merge, the
 * training forward and the chunked loss against transformers + PEFT (tools/gen_llama_train_fixtures.py).
 *
 * Also a timing mode (not part of the suite):
 *   test_llama_train --bench [MODEL [B T r threads iters ckpt]]   forward + backward of lq_llama_loss with
 *   an NF4 base and r-rank all-linear adapters, checkpointing off and on (default: SmolLM2 Q4_1
 *   from the cache, 4 256 16, 2 threads, 1 iteration) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "models/models_impl.h"
#include "testutil.h"

#define FX_B 2
#define FX_T 12

static lq_fixture *g_fx;

static lq_fixture *fx(void) {
    if (!g_fx) {
        char p[512];
        g_fx = lq_fixture_load(lq_fixture_path("llama_train/train.lqfx", p, sizeof p));
    }
    return g_fx;
}

static const lq_fx_tensor *rec(const char *name) {
    const lq_fx_tensor *r = lq_fixture_find(fx(), "%s", name);
    if (!r) fail_msg("fixture record '%s' missing", name);
    return r;
}

/* A fixture record's floats in an aligned heap copy (LQFX records need not be aligned). */
static float *fx_floats(const char *name) {
    const lq_fx_tensor *r = rec(name);
    assert_int_equal(r->dtype, 0);
    float *p = malloc((size_t)r->numel * sizeof(float));
    memcpy(p, r->data, (size_t)r->numel * sizeof(float));
    return p;
}

static lq_llama_model *load_nf4(const char *rel, lq_base_quant q) {
    char p[512];
    lq_err err;
    lq_err_clear(&err);
    lq_llama_load_opts o = {.quant = q, .block_size = 64, .double_quant = true};
    lq_llama_model *m = NULL;
    if (lq_llama_load_ex(lq_fixture_path(rel, p, sizeof p), &o, &m, &err) != LQ_OK) fail_msg("load %s: %s", rel, err.msg);
    return m;
}

static lq_lora_set *load_adapter(void) {
    char p[512];
    lq_err err;
    lq_err_clear(&err);
    lq_lora_set *s = NULL;
    if (lq_peft_load(&s, lq_fixture_path("llama_train/adapter", p, sizeof p), &err) != LQ_OK)
        fail_msg("peft load: %s", err.msg);
    return s;
}

/* An i32 (B, T) arena tensor from a fixture record. */
static lq_tensor *fx_i32(lq_ctx *ctx, const char *name) {
    const lq_fx_tensor *r = rec(name);
    assert_int_equal(r->dtype, 1);
    int64_t s[2] = {FX_B, FX_T};
    lq_tensor *t = lq_new(ctx, LQ_DTYPE_I32, 2, s);
    assert_non_null(t);
    assert_int_equal(r->numel, FX_B * FX_T);
    memcpy(t->data, r->data, (size_t)r->numel * sizeof(int32_t));
    return t;
}

static lq_tensor **layer_weights(lq_llama_layer *L, int t) {
    lq_tensor **w[LQ_LORA_N_TARGETS] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->wgate, &L->wup, &L->wdown};
    return w[t];
}

static double max_rel(const float *a, const float *b, int64_t n) {
    double d = 0, s = 0;
    for (int64_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        s = fmax(s, fabs((double)b[i]));
    }
    return d / (s > 0 ? s : 1);
}

/* NF4 load: every decoder-layer linear holds bitsandbytes' codes and dequantizes to its values. */
static void test_nf4_load_matches_bnb(void **state) {
    (void)state;
    lq_llama_model *m = load_nf4("llama_tiny/tied", LQ_BASE_NF4);
    const lq_llama_config *c = lq_llama_model_config(m);
    int checked = 0;
    for (int64_t l = 0; l < c->num_hidden_layers; l++) {
        for (int t = 0; t < LQ_LORA_N_TARGETS; t++) {
            const lq_tensor *w = *layer_weights(&m->layers[l], t);
            char name[128];
            snprintf(name, sizeof name, "model.layers.%lld.%s.%s.weight", (long long)l,
                     lq_lora_target_parent((lq_lora_target)t), lq_lora_target_name((lq_lora_target)t));
            assert_string_equal(w->name, name);
            assert_int_equal(w->dtype, LQ_DTYPE_NF4);
            assert_non_null(w->qs);
            assert_null(w->grad);
            char rn[160];
            snprintf(rn, sizeof rn, "nf4/%s/codes", name);
            const lq_fx_tensor *codes = rec(rn);
            assert_int_equal(codes->numel, (int64_t)lq_nbytes(w));
            assert_memory_equal(w->data, codes->data, (size_t)codes->numel);
            snprintf(rn, sizeof rn, "nf4/%s/deq", name);
            float *want = fx_floats(rn);
            int64_t n = lq_numel(w);
            float *got = malloc((size_t)n * sizeof(float));
            lq_dtype_info(w->dtype)->to_f32(w->data, got, n, w->qs, 0);
            assert_allclose(got, want, n, 0, 0, name);
            free(got);
            free(want);
            checked++;
        }
    }
    assert_int_equal(checked, 14);
    /* the embedding / lm_head and norms are untouched */
    assert_int_equal(m->lm_head->dtype, LQ_DTYPE_F32);
    lq_llama_free(m);
}

/* The file's dtype does not matter: a Q8_0 GGUF's weights are dequantized, then quantized as bnb
 * would quantize those floats; names stay the file's. FP4 likewise. */
static void test_nf4_from_gguf_and_fp4(void **state) {
    (void)state;
    lq_llama_model *keep = load_nf4("llama_tiny/tied.q8_0.gguf", LQ_BASE_KEEP);
    for (int q = 0; q < 2; q++) {
        lq_llama_model *m = load_nf4("llama_tiny/tied.q8_0.gguf", q ? LQ_BASE_FP4 : LQ_BASE_NF4);
        lq_dtype type = q ? LQ_DTYPE_FP4 : LQ_DTYPE_NF4;
        for (int t = 0; t < LQ_LORA_N_TARGETS; t++) {
            const lq_tensor *k = *layer_weights(&keep->layers[1], t), *w = *layer_weights(&m->layers[1], t);
            assert_int_equal(k->dtype, LQ_DTYPE_Q8_0);
            assert_int_equal(w->dtype, type);
            assert_string_equal(w->name, k->name);
            int64_t n = lq_numel(k);
            float *f = malloc((size_t)n * sizeof(float));
            uint8_t *codes = malloc((size_t)(n + 1) / 2);
            lq_dtype_info(k->dtype)->to_f32(k->data, f, n, NULL, 0);
            lq_qstate *qs = NULL;
            lq_err err;
            lq_err_clear(&err);
            assert_int_equal(lq_bnb4_quantize(type, f, n, 64, true, codes, &qs, &err), LQ_OK);
            assert_memory_equal(w->data, codes, (size_t)(n + 1) / 2);
            for (int64_t b = 0; b < n / 64; b++) assert_true(lq_qstate_absmax(w->qs, b) == lq_qstate_absmax(qs, b));
            lq_qstate_free(qs);
            free(codes);
            free(f);
        }
        assert_true(lq_llama_weight_bytes(m) < lq_llama_weight_bytes(keep));
        lq_llama_free(m);
    }
    lq_llama_free(keep);
    /* a bad block size is refused with the file's name */
    char p[512];
    lq_err err;
    lq_err_clear(&err);
    lq_llama_load_opts o = {.quant = LQ_BASE_NF4, .block_size = 48};
    lq_llama_model *m = NULL;
    assert_int_equal(lq_llama_load_ex(lq_fixture_path("llama_tiny/tied", p, sizeof p), &o, &m, &err), LQ_ERR_ARG);
    assert_null(m);
    assert_non_null(strstr(err.msg, "block size 48"));
}

/* The packed batch: logits of forward_train with the PEFT adapter = each document alone through PEFT. */
static void test_forward_train_matches_peft(void **state) {
    (void)state;
    lq_llama_model *m = load_nf4("llama_tiny/tied", LQ_BASE_NF4);
    lq_lora_set *s = load_adapter();
    lq_err err;
    lq_err_clear(&err);
    assert_int_equal(lq_llama_lora_attach(m, s, &err), LQ_OK);
    lq_ctx *ctx = lq_test_ctx(2);
    lq_llama_fwd_opts o = {.positions = fx_i32(ctx, "positions"), .doc = fx_i32(ctx, "doc")};
    lq_tensor *y = lq_llama_forward_train(ctx, m, fx_i32(ctx, "ids"), &o);
    assert_ctx_ok(ctx);
    assert_int_equal(y->ndim, 3);
    assert_int_equal(y->ne[2], 128);
    float *want = fx_floats("logits");
    int64_t n = lq_numel(y);
    assert_int_equal(n, rec("logits")->numel);
    double rel = max_rel(y->data, want, n);
    printf("  forward_train vs PEFT: max abs err / max |logit| = %.3g\n", rel);
    assert_true(rel <= 1e-5);
    /* without the document mask and positions the packed row 0 differs: the mask matters */
    lq_tensor *y2 = lq_llama_forward_train(ctx, m, fx_i32(ctx, "ids"), NULL);
    assert_ctx_ok(ctx);
    assert_true(max_rel(y2->data, want, n) > 1e-3);
    free(want);
    lq_ctx_free(ctx);
    lq_llama_free(m);
    lq_lora_set_free(s);
}

/* loss + backward; returns the loss and copies every adapter grad into *grads (params block order). */
static double loss_and_grads(lq_llama_model *m, lq_lora_set *s, const lq_llama_fwd_opts *base, bool ckpt,
                             int64_t chunk, float **grads, int64_t *n_counted) {
    lq_ctx *ctx = lq_test_ctx(2);
    lq_llama_fwd_opts o = base ? *base : (lq_llama_fwd_opts){0};
    o.positions = fx_i32(ctx, "positions");
    o.doc = fx_i32(ctx, "doc");
    o.checkpoint = ckpt;
    o.chunk_rows = chunk;
    lq_params_zero_grad(s->params);
    lq_tensor *loss = lq_llama_loss(ctx, m, fx_i32(ctx, "ids"), fx_i32(ctx, "labels"), &o, n_counted);
    assert_ctx_ok(ctx);
    assert_int_equal(loss->ndim == 0 || lq_numel(loss) == 1, 1);
    double v = *(float *)loss->data;
    assert_int_equal(lq_backward(ctx, loss), LQ_OK);
    int64_t n = lq_params_numel(s->params);
    *grads = malloc((size_t)n * sizeof(float));
    memcpy(*grads, lq_params_grad(s->params), (size_t)n * sizeof(float));
    lq_ctx_free(ctx);
    return v;
}

/* Summed CE and every lora_A / lora_B gradient against PEFT + torch (the issue asks 1e-4 relative). */
static void test_loss_and_grads_match_peft(void **state) {
    (void)state;
    lq_llama_model *m = load_nf4("llama_tiny/tied", LQ_BASE_NF4);
    lq_lora_set *s = load_adapter();
    lq_err err;
    lq_err_clear(&err);
    assert_int_equal(lq_llama_lora_attach(m, s, &err), LQ_OK);
    float *g = NULL;
    int64_t counted = -1;
    double loss = loss_and_grads(m, s, NULL, false, 0, &g, &counted);
    float wf;
    memcpy(&wf, rec("loss")->data, sizeof wf); /* LQFX records need not be aligned */
    double want = wf;
    int32_t lab[FX_B * FX_T];
    memcpy(lab, rec("labels")->data, sizeof lab);
    int64_t nc = 0;
    for (int i = 0; i < FX_B * FX_T; i++) nc += lab[i] != LQ_IGNORE_INDEX;
    assert_int_equal(counted, nc);
    printf("  loss %.7g vs PEFT %.7g: rel err %.3g (%lld counted labels)\n", loss, want, fabs(loss - want) / fabs(want),
           (long long)counted);
    assert_true(fabs(loss - want) <= 1e-5 * fabs(want));
    double worst = 0;
    int n_checked = 0;
    for (int i = 0; i < lq_params_count(s->params); i++) {
        const lq_tensor *p = lq_params_at(s->params, i);
        char rn[160];
        snprintf(rn, sizeof rn, "grad/%s", p->name);
        float *w = fx_floats(rn);
        int64_t n = lq_numel(p);
        assert_int_equal(n, rec(rn)->numel);
        const float *got = g + ((const float *)p->data - lq_params_data(s->params));
        double r = max_rel(got, w, n);
        worst = fmax(worst, r);
        if (r > 1e-4) fail_msg("%s: relative error %.3g", p->name, r);
        free(w);
        n_checked++;
    }
    assert_int_equal(n_checked, 28);
    printf("  28 LoRA grads vs PEFT: worst max-abs-err / max |grad| = %.3g\n", worst);
    free(g);
    lq_llama_free(m);
    lq_lora_set_free(s);
}

/* Checkpointing recomputes the same numbers: loss and grads bit for bit; the chunked loss equals the
 * one-chunk loss and lq_cross_entropy over the full logits up to summation order. */
static void test_checkpoint_and_chunks(void **state) {
    (void)state;
    lq_llama_model *m = load_nf4("llama_tiny/tied", LQ_BASE_NF4);
    lq_lora_set *s = load_adapter();
    lq_err err;
    lq_err_clear(&err);
    assert_int_equal(lq_llama_lora_attach(m, s, &err), LQ_OK);
    int64_t n = lq_params_numel(s->params);
    float *g0, *g1, *g2, *g3;
    double l0 = loss_and_grads(m, s, NULL, false, 0, &g0, NULL);
    double l1 = loss_and_grads(m, s, NULL, true, 0, &g1, NULL);
    double l2 = loss_and_grads(m, s, NULL, false, 5, &g2, NULL); /* 24 rows: chunks 5 5 5 5 4 */
    double l3 = loss_and_grads(m, s, NULL, true, 7, &g3, NULL);
    assert_true(l0 == l1);
    assert_memory_equal(g0, g1, (size_t)n * sizeof(float));
    printf("  checkpoint on == off bitwise; chunks of 5 rows: loss %.9g vs %.9g, grads max rel %.3g; chunks of 7 "
           "with checkpoint: %.9g, %.3g\n", l2, l0, max_rel(g2, g0, n), l3, max_rel(g3, g0, n));
    assert_true(fabs(l2 - l0) <= 1e-6 * fabs(l0));
    assert_true(max_rel(g2, g0, n) <= 1e-6);
    assert_true(fabs(l3 - l0) <= 1e-6 * fabs(l0));
    assert_true(max_rel(g3, g0, n) <= 1e-6);
    free(g0), free(g1), free(g2), free(g3);
    /* value of the chunked loss = lq_cross_entropy(SUM) over forward_train's full logits */
    lq_ctx *ctx = lq_test_ctx(2);
    lq_llama_fwd_opts o = {.positions = fx_i32(ctx, "positions"), .doc = fx_i32(ctx, "doc"), .chunk_rows = 5};
    lq_tensor *logits = lq_llama_forward_train(ctx, m, fx_i32(ctx, "ids"), &o);
    lq_tensor *full = lq_cross_entropy(ctx, logits, fx_i32(ctx, "labels"), LQ_IGNORE_INDEX, LQ_REDUCE_SUM);
    lq_tensor *chunked = lq_llama_loss(ctx, m, fx_i32(ctx, "ids"), fx_i32(ctx, "labels"), &o, NULL);
    assert_ctx_ok(ctx);
    double a = *(float *)full->data, b = *(float *)chunked->data;
    printf("  full CE %.9g, chunked %.9g\n", a, b);
    assert_true(fabs(a - b) <= 1e-6 * fabs(a));
    lq_ctx_free(ctx);
    lq_llama_free(m);
    lq_lora_set_free(s);
}

/* Dropout on: checkpointing replays the masks, so loss and grads still match bit for bit. */
static void test_checkpoint_with_dropout(void **state) {
    (void)state;
    lq_llama_model *m = load_nf4("llama_tiny/tied", LQ_BASE_NF4);
    lq_lora_set *s = load_adapter();
    for (int i = 0; i < s->n; i++) s->mods[i].dropout = 0.3f;
    lq_err err;
    lq_err_clear(&err);
    assert_int_equal(lq_llama_lora_attach(m, s, &err), LQ_OK);
    int64_t n = lq_params_numel(s->params);
    float *g[3];
    double l[3];
    for (int k = 0; k < 3; k++) {
        lq_ctx *ctx = lq_test_ctx(2);
        lq_ctx_set_training(ctx, true);
        lq_ctx_set_seed(ctx, 77);
        lq_llama_fwd_opts o = {.positions = fx_i32(ctx, "positions"), .doc = fx_i32(ctx, "doc"), .checkpoint = k == 1};
        if (k == 2) lq_ctx_set_training(ctx, false);
        lq_params_zero_grad(s->params);
        lq_tensor *loss = lq_llama_loss(ctx, m, fx_i32(ctx, "ids"), fx_i32(ctx, "labels"), &o, NULL);
        assert_ctx_ok(ctx);
        l[k] = *(float *)loss->data;
        assert_int_equal(lq_backward(ctx, loss), LQ_OK);
        g[k] = malloc((size_t)n * sizeof(float));
        memcpy(g[k], lq_params_grad(s->params), (size_t)n * sizeof(float));
        lq_ctx_free(ctx);
    }
    printf("  dropout 0.3: loss %.9g (checkpoint %.9g), without dropout %.9g\n", l[0], l[1], l[2]);
    assert_true(l[0] == l[1]);
    assert_memory_equal(g[0], g[1], (size_t)n * sizeof(float));
    assert_true(l[0] != l[2]); /* dropout did something */
    for (int k = 0; k < 3; k++) free(g[k]);
    lq_llama_free(m);
    lq_lora_set_free(s);
}

/* Merge: W' = deq(W) + s B A in f32; the merged model's logits equal the adapted model's. */
static void test_merge(void **state) {
    (void)state;
    lq_llama_model *m = load_nf4("llama_tiny/tied", LQ_BASE_NF4);
    lq_lora_set *s = load_adapter();
    lq_err err;
    lq_err_clear(&err);
    assert_int_equal(lq_llama_lora_merge(m, &err), LQ_ERR_STATE); /* nothing attached */
    lq_err_clear(&err);
    assert_int_equal(lq_llama_lora_attach(m, s, &err), LQ_OK);
    lq_ctx *ctx = lq_test_ctx(2);
    int64_t sh[2] = {1, FX_T};
    lq_tensor *ids = lq_new(ctx, LQ_DTYPE_I32, 2, sh);
    memcpy(ids->data, (const char *)rec("ids")->data + FX_T * sizeof(int32_t), FX_T * sizeof(int32_t)); /* row 1: one document */
    lq_tensor *ya = lq_llama_forward(ctx, m, ids, 0, NULL);
    assert_ctx_ok(ctx);
    int64_t n = lq_numel(ya);
    /* the adapted inference forward agrees with the PEFT reference too (row 1 of the fixture) */
    float *want = fx_floats("logits");
    double rp = max_rel(ya->data, want + n, n);
    assert_true(rp <= 1e-5);
    free(want);
    assert_int_equal(lq_llama_lora_merge(m, &err), LQ_OK);
    for (int64_t l = 0; l < 2; l++)
        for (int t = 0; t < LQ_LORA_N_TARGETS; t++) {
            assert_null(m->layers[l].lora[t]);
            assert_int_equal((*layer_weights(&m->layers[l], t))->dtype, LQ_DTYPE_F32);
        }
    assert_string_equal(m->layers[1].wdown->name, "model.layers.1.mlp.down_proj.weight");
    lq_tensor *yb = lq_llama_forward(ctx, m, ids, 0, NULL);
    assert_ctx_ok(ctx);
    double r = max_rel(yb->data, ya->data, n);
    printf("  merged vs adapted logits: max rel %.3g\n", r);
    assert_true(r <= 1e-5);
    lq_ctx_free(ctx);
    lq_llama_free(m);
    lq_lora_set_free(s); /* after the model: it was detached, but the order is the documented one */
}

static lq_lora_set *one_module_set(const char *module, int64_t in, int64_t out) {
    lq_lora_cfg c = {.r = 2, .alpha = 4, .targets = LQ_LORA_ALL_LINEAR};
    lq_lora_set *s = NULL;
    lq_err err;
    lq_err_clear(&err);
    assert_int_equal(lq_lora_set_init(&s, &c, &err), LQ_OK);
    assert_non_null(lq_lora_set_add(s, "model.layers.0.self_attn.q_proj", 32, 32, &err));
    assert_non_null(lq_lora_set_add(s, module, in, out, &err));
    assert_int_equal(lq_lora_set_finalize(s, 1, &err), LQ_OK);
    return s;
}

static void test_attach_rejects_foreign_modules(void **state) {
    (void)state;
    lq_llama_model *m = load_nf4("llama_tiny/tied", LQ_BASE_NF4);
    lq_lora_set *good = load_adapter();
    lq_err err;
    lq_err_clear(&err);
    assert_int_equal(lq_llama_lora_attach(m, good, &err), LQ_OK);
    struct {
        const char *module;
        int64_t in, out;
        const char *says;
    } bad[] = {
        {"model.layers.2.self_attn.q_proj", 32, 32, "not a projection"}, /* 2 layers only */
        {"model.layers.0.mlp.q_proj", 32, 32, "not a projection"},
        {"model.layers.01.mlp.up_proj", 32, 64, "not a projection"},
        {"layers.0.mlp.up_proj", 32, 64, "not a projection"},
        {"model.layers.0.self_attn.k_proj", 32, 32, "is (16, 32)"}, /* k has 2 kv heads of 8 */
        {"model.layers.1.mlp.down_proj", 32, 64, "maps 32 -> 64"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        lq_lora_set *s = one_module_set(bad[i].module, bad[i].in, bad[i].out);
        lq_err_clear(&err);
        assert_int_equal(lq_llama_lora_attach(m, s, &err), LQ_ERR_INPUT);
        if (!strstr(err.msg, bad[i].module) || !strstr(err.msg, bad[i].says))
            fail_msg("attach '%s': message '%s' lacks the module or '%s'", bad[i].module, err.msg, bad[i].says);
        /* the model keeps its previous adapters */
        assert_ptr_equal(m->layers[1].lora[LQ_LORA_DOWN], lq_lora_set_find(good, "model.layers.1.mlp.down_proj"));
        lq_lora_set_free(s);
    }
    lq_err_clear(&err);
    assert_int_equal(lq_llama_lora_attach(m, NULL, &err), LQ_OK);
    assert_null(m->layers[1].lora[LQ_LORA_DOWN]);
    lq_llama_free(m);
    lq_lora_set_free(good);
}

/* create: modules in layer order then target order, PEFT's init (A bounded, B zero): the output is
 * the base's until B moves. */
static void test_lora_create(void **state) {
    (void)state;
    lq_llama_model *m = load_nf4("llama_tiny/tied", LQ_BASE_NF4);
    lq_lora_cfg c = {.r = 2, .alpha = 4, .targets = (1u << LQ_LORA_DOWN) | (1u << LQ_LORA_Q) | (1u << LQ_LORA_V)};
    lq_lora_set *s = NULL;
    lq_err err;
    lq_err_clear(&err);
    lq_ctx *ctx = lq_test_ctx(2);
    int64_t sh[2] = {1, 8};
    lq_tensor *ids = lq_new(ctx, LQ_DTYPE_I32, 2, sh);
    for (int i = 0; i < 8; i++) ((int32_t *)ids->data)[i] = 3 + 11 * i;
    lq_tensor *y0 = lq_llama_forward(ctx, m, ids, 0, NULL);
    assert_int_equal(lq_llama_lora_create(m, &c, 42, &s, &err), LQ_OK);
    const char *want[] = {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.0.mlp.down_proj",
                          "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj", "model.layers.1.mlp.down_proj"};
    assert_int_equal(s->n, 6);
    for (int i = 0; i < 6; i++) assert_string_equal(s->mods[i].module, want[i]);
    assert_int_equal(s->mods[2].in, 64);
    assert_int_equal(s->mods[2].out, 32);
    assert_int_equal(s->mods[1].out, 16);
    assert_ptr_equal(m->layers[1].lora[LQ_LORA_V], &s->mods[4]);
    assert_null(m->layers[1].lora[LQ_LORA_K]);
    float bound = 1.0f / sqrtf(64.0f);
    const float *a = s->mods[2].A->data;
    bool nonzero = false;
    for (int64_t i = 0; i < lq_numel(s->mods[2].A); i++) {
        assert_true(fabsf(a[i]) <= bound);
        nonzero |= a[i] != 0;
    }
    assert_true(nonzero);
    lq_tensor *y1 = lq_llama_forward(ctx, m, ids, 0, NULL);
    assert_ctx_ok(ctx);
    assert_memory_equal(y0->data, y1->data, (size_t)lq_numel(y0) * sizeof(float));
    lq_ctx_free(ctx);
    lq_llama_free(m);
    lq_lora_set_free(s);
}

static const char *smollm_path(char *buf, size_t n) {
    lq_cache_path("models/SmolLM2-135M-Instruct.Q4_1.gguf", buf, n);
    return access(buf, R_OK) == 0 ? buf : NULL;
}

/* The real model: NF4 over a Q4_1 GGUF holds far less than f32, and trains. */
static void test_smollm2_nf4(void **state) {
    (void)state;
    char p[1024];
    if (!smollm_path(p, sizeof p)) {
        printf("  SKIPPED: %s is absent (tools/fetch_model.sh fetches it)\n", p);
        skip();
    }
    lq_err err;
    lq_err_clear(&err);
    lq_llama_load_opts o = {.quant = LQ_BASE_NF4, .block_size = 64, .double_quant = true};
    lq_llama_model *m = NULL;
    if (lq_llama_load_ex(p, &o, &m, &err) != LQ_OK) fail_msg("%s", err.msg);
    const lq_llama_config *c = lq_llama_model_config(m);
    int64_t C = c->hidden_size, F = c->intermediate_size, V = c->vocab_size, D = c->head_dim;
    int64_t per_layer = C * D * (c->num_attention_heads * 2 + c->num_key_value_heads * 2) + 3 * C * F + 2 * C;
    int64_t f32 = 4 * (c->num_hidden_layers * per_layer + V * C + C);
    int64_t wb = lq_llama_weight_bytes(m);
    printf("  SmolLM2 NF4: %.1f MB of weights (f32 would be %.1f MB)\n", wb / 1e6, f32 / 1e6);
    assert_true(wb < f32 / 2);
    assert_int_equal(m->layers[0].wq->dtype, LQ_DTYPE_NF4);
    lq_lora_cfg lc = {.r = 16, .alpha = 32, .targets = LQ_LORA_ALL_LINEAR};
    lq_lora_set *s = NULL;
    assert_int_equal(lq_llama_lora_create(m, &lc, 7, &s, &err), LQ_OK);
    /* the opening of Pride and Prejudice and what transformers + bitsandbytes make of it */
    char fp[512];
    lq_fixture *ref = lq_fixture_load(lq_fixture_path("llama_train/smollm2.lqfx", fp, sizeof fp));
    const lq_fx_tensor *rids = lq_fixture_find(ref, "ids");
    assert_non_null(rids);
    const int64_t NT = rids->numel;
    assert_true(NT >= 2 && NT <= 256);
    int32_t text[256];
    memcpy(text, rids->data, (size_t)NT * sizeof(int32_t)); /* LQFX records need not be aligned */
    float wq41, wnf4;
    memcpy(&wq41, lq_fixture_find(ref, "q4_1_loss")->data, sizeof wq41);
    memcpy(&wnf4, lq_fixture_find(ref, "nf4_loss")->data, sizeof wnf4);
    double want_q41 = wq41, want_nf4 = wnf4;
    lq_ctx *ctx = lq_test_ctx(2);
    int64_t sh[2] = {1, NT};
    lq_tensor *ids = lq_new(ctx, LQ_DTYPE_I32, 2, sh), *lab = lq_new(ctx, LQ_DTYPE_I32, 2, sh);
    for (int i = 0; i < NT; i++) ((int32_t *)ids->data)[i] = text[i];
    for (int i = 0; i < NT; i++) ((int32_t *)lab->data)[i] = i + 1 < NT ? text[i + 1] : LQ_IGNORE_INDEX;
    /* the file's own Q4_1 weights, for comparison: NF4 of them should predict about as well */
    lq_llama_model *keep = NULL;
    if (lq_llama_load_ex(p, NULL, &keep, &err) != LQ_OK) fail_msg("%s", err.msg);
    bool g = lq_ctx_set_grad(ctx, false);
    lq_tensor *lk = lq_llama_loss(ctx, keep, ids, lab, NULL, NULL);
    assert_ctx_ok(ctx);
    double keep_loss = *(float *)lk->data / (NT - 1);
    lq_ctx_set_grad(ctx, g);
    lq_llama_free(keep);
    lq_llama_fwd_opts fo = {.checkpoint = true};
    int64_t nc = 0;
    lq_tensor *loss = lq_llama_loss(ctx, m, ids, lab, &fo, &nc);
    assert_ctx_ok(ctx);
    assert_int_equal(nc, NT - 1);
    double lv = *(float *)loss->data / (NT - 1);
    printf("  SmolLM2 on Austen's first sentence: %.5f nats/token with the NF4 base (transformers + bnb: %.5f), "
           "%.5f with the file's Q4_1 (transformers: %.5f)\n", lv, want_nf4, keep_loss, want_q41);
    assert_true(fabs(lv - want_nf4) <= 1e-4 * want_nf4);
    assert_true(fabs(keep_loss - want_q41) <= 1e-4 * want_q41);
    lq_fixture_free(ref);
    assert_int_equal(lq_backward(ctx, loss), LQ_OK);
    const float *gr = lq_params_grad(s->params);
    double gn = 0;
    for (int64_t i = 0; i < lq_params_numel(s->params); i++) gn += (double)gr[i] * gr[i];
    assert_true(gn > 0 && isfinite(gn)); /* B = 0: A's grads are 0, B's are not */
    lq_ctx_free(ctx);
    lq_llama_free(m);
    lq_lora_set_free(s);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int bench(int argc, char **argv) {
    char p[1024];
    const char *path = argc > 2 ? argv[2] : smollm_path(p, sizeof p);
    if (!path) {
        fprintf(stderr, "no model\n");
        return 1;
    }
    int64_t B = argc > 3 ? atoll(argv[3]) : 4, T = argc > 4 ? atoll(argv[4]) : 256;
    int r = argc > 5 ? atoi(argv[5]) : 16, threads = argc > 6 ? atoi(argv[6]) : 2;
    int iters = argc > 7 ? atoi(argv[7]) : 1;
    int ck_from = 0, ck_to = 1; /* argv[8]: 0 = checkpointing off only, 1 = on only; default both */
    if (argc > 8) ck_from = ck_to = atoi(argv[8]) != 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    lq_err err;
    lq_err_clear(&err);
    lq_llama_load_opts o = {.quant = LQ_BASE_NF4, .block_size = 64, .double_quant = true};
    lq_llama_model *m = NULL;
    double t0 = now_s();
    if (lq_llama_load_ex(path, &o, &m, &err) != LQ_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    printf("load + NF4: %.2f s, %.1f MB weights\n", now_s() - t0, lq_llama_weight_bytes(m) / 1e6);
    lq_lora_cfg lc = {.r = r, .alpha = 2.0f * r, .targets = LQ_LORA_ALL_LINEAR};
    lq_lora_set *s = NULL;
    if (lq_llama_lora_create(m, &lc, 7, &s, &err) != LQ_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    lq_ctx_opts co = {.n_threads = threads, .seed = 1};
    lq_ctx *ctx = NULL;
    lq_ctx_init(&ctx, &co, &err);
    int64_t sh[2] = {B, T};
    int64_t V = lq_llama_model_config(m)->vocab_size;
    for (int ck = ck_from; ck <= ck_to; ck++) {
        for (int it = 0; it < iters; it++) {
            lq_ctx_step_reset(ctx);
            lq_tensor *ids = lq_new(ctx, LQ_DTYPE_I32, 2, sh), *lab = lq_new(ctx, LQ_DTYPE_I32, 2, sh);
            for (int64_t i = 0; i < B * T; i++) {
                ((int32_t *)ids->data)[i] = (int32_t)((i * 7919 + 13) % V);
                ((int32_t *)lab->data)[i] = (int32_t)(((i + 1) * 7919 + 13) % V);
            }
            lq_llama_fwd_opts fo = {.checkpoint = ck};
            double a = now_s();
            lq_tensor *loss = lq_llama_loss(ctx, m, ids, lab, &fo, NULL);
            double b = now_s();
            size_t fwd_hw = lq_ctx_arena_stats(ctx).high_water;
            lq_status st = loss ? lq_backward(ctx, loss) : lq_ctx_status(ctx);
            double c = now_s();
            if (st != LQ_OK) {
                fprintf(stderr, "%s\n", lq_ctx_error(ctx)->msg);
                return 1;
            }
            lq_arena_stats as = lq_ctx_arena_stats(ctx);
            printf("(%lld, %lld) r=%d checkpoint=%d: forward %.2f s, backward %.2f s, total %.2f s (%.0f tok/s), "
                   "loss/token %.3f, arena high water %.0f MB (%.0f MB after the forward)\n",
                   (long long)B, (long long)T, r, ck, b - a, c - b, c - a, B * T / (c - a), *(float *)loss->data / (B * T),
                   as.high_water / 1e6, fwd_hw / 1e6);
        }
    }
    lq_ctx_free(ctx);
    lq_llama_free(m);
    lq_lora_set_free(s);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--bench") == 0) return bench(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nf4_load_matches_bnb),
        cmocka_unit_test(test_nf4_from_gguf_and_fp4),
        cmocka_unit_test(test_forward_train_matches_peft),
        cmocka_unit_test(test_loss_and_grads_match_peft),
        cmocka_unit_test(test_checkpoint_and_chunks),
        cmocka_unit_test(test_checkpoint_with_dropout),
        cmocka_unit_test(test_merge),
        cmocka_unit_test(test_attach_rejects_foreign_modules),
        cmocka_unit_test(test_lora_create),
        cmocka_unit_test(test_smollm2_nf4),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    lq_fixture_free(g_fx);
    return rc;
}
