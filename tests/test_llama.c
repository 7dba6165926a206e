/* tests/test_llama.c: Llama model loading (HF folders, GGUF) and logits against transformers.
 *
 * Also a tool mode for tools/check_llama_logits.py:
 *   test_llama --logits MODEL OUT.f32 ID...   writes the (T, V) f32 logits of the ids to OUT.f32 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "models/models.h"
#include "testutil.h"

#define IDS_T 10

static lq_fixture *g_fx;

static lq_fixture *fx(void) {
    if (!g_fx) {
        char p[512];
        g_fx = lq_fixture_load(lq_fixture_path("llama_tiny/logits.lqfx", p, sizeof p));
    }
    return g_fx;
}

static lq_llama_model *load(const char *rel) {
    char p[512];
    lq_err err;
    lq_err_clear(&err);
    lq_llama_model *m = NULL;
    lq_status s = lq_llama_load(lq_fixture_path(rel, p, sizeof p), &m, &err);
    if (s != LQ_OK) fail_msg("load %s: %s", rel, err.msg);
    return m;
}

/* Logits (1, T, V) of the first n fixture ids (modulo the vocabulary) into out (n * V floats). */
static void logits_of(lq_llama_model *m, int64_t n, float *out) {
    const lq_fx_tensor *ids = lq_fixture_find(fx(), "ids");
    assert_non_null(ids);
    lq_ctx *ctx = lq_test_ctx(2);
    int64_t s[2] = {1, n};
    lq_tensor *t = lq_new(ctx, LQ_DTYPE_I32, 2, s);
    assert_non_null(t);
    memcpy(t->data, ids->data, (size_t)n * sizeof(int32_t));
    int64_t V = lq_llama_model_config(m)->vocab_size;
    for (int64_t i = 0; i < n; i++) ((int32_t *)t->data)[i] %= (int32_t)V;
    lq_tensor *y = lq_llama_forward(ctx, m, t, 0, NULL);
    assert_ctx_ok(ctx);
    assert_int_equal(y->ne[2], V);
    memcpy(out, y->data, (size_t)(n * V) * sizeof(float));
    lq_ctx_free(ctx);
}

/* A fixture record's floats in an aligned heap copy (LQFX records need not be aligned). */
static float *fx_floats(const char *name) {
    const lq_fx_tensor *r = lq_fixture_find(fx(), "%s", name);
    assert_non_null(r);
    assert_int_equal(r->dtype, 0);
    float *p = malloc((size_t)r->numel * sizeof(float));
    memcpy(p, r->data, (size_t)r->numel * sizeof(float));
    return p;
}

static double max_abs(const float *a, const float *b, int64_t n) {
    double d = 0;
    for (int64_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

static void check_against(const char *model, const char *ref, double atol) {
    lq_llama_model *m = load(model);
    int64_t n = lq_fixture_find(fx(), "%s", ref)->numel;
    float *want = fx_floats(ref);
    float *y = malloc((size_t)n * sizeof(float));
    logits_of(m, IDS_T, y);
    printf("  %s vs %s: max abs %.3g\n", model, ref, max_abs(y, want, n));
    assert_allclose(y, want, n, 0, atol, model);
    free(y);
    free(want);
    lq_llama_free(m);
}

static void test_hf_tied(void **state) {
    (void)state;
    check_against("llama_tiny/tied", "tied/logits", 1e-4);
}

static void test_hf_untied(void **state) {
    (void)state;
    check_against("llama_tiny/untied", "untied/logits", 1e-4);
}

/* Tied: no lm_head tensor, the embedding is the output projection; untied: its own. */
static void test_tied_vs_untied(void **state) {
    (void)state;
    const char *tied[] = {"llama_tiny/tied", "llama_tiny/tied.f32.gguf", "llama_tiny/tied.q8_0.gguf"};
    for (int i = 0; i < 3; i++) {
        lq_llama_model *m = load(tied[i]);
        assert_true(lq_llama_model_config(m)->tie_word_embeddings);
        lq_llama_free(m);
    }
    const char *untied[] = {"llama_tiny/untied", "llama_tiny/untied.f16.gguf"};
    for (int i = 0; i < 2; i++) {
        lq_llama_model *m = load(untied[i]);
        assert_false(lq_llama_model_config(m)->tie_word_embeddings);
        lq_llama_free(m);
    }
}

/* The GGUF file (q / k rows permuted by the converter, undone at load) gives the HF path's logits. */
static void test_gguf_f32_equals_hf(void **state) {
    (void)state;
    int64_t V = 128, n = IDS_T * V;
    float *a = malloc((size_t)n * sizeof(float)), *b = malloc((size_t)n * sizeof(float));
    lq_llama_model *hf = load("llama_tiny/tied"), *gg = load("llama_tiny/tied.f32.gguf");
    const lq_llama_config *c1 = lq_llama_model_config(hf), *c2 = lq_llama_model_config(gg);
    assert_int_equal(c1->hidden_size, c2->hidden_size);
    assert_int_equal(c1->head_dim, c2->head_dim);
    assert_int_equal(c1->num_key_value_heads, c2->num_key_value_heads);
    assert_int_equal(c1->vocab_size, c2->vocab_size);
    assert_int_equal(c1->intermediate_size, c2->intermediate_size);
    logits_of(hf, IDS_T, a);
    logits_of(gg, IDS_T, b);
    printf("  gguf f32 vs hf: max abs %.3g\n", max_abs(a, b, n));
    assert_allclose(b, a, n, 0, 1e-5, "gguf f32 vs hf");
    lq_llama_free(hf);
    lq_llama_free(gg);
    free(a);
    free(b);
}

/* Q8_0 and f16 weights through lq_qmatmul: against transformers run on the same dequantized
 * weights (so the tolerance is float rounding, not quantization error). */
static void test_gguf_q8_0(void **state) {
    (void)state;
    check_against("llama_tiny/tied.q8_0.gguf", "tied_q8_0/logits", 1e-4);
    /* and how far quantization moves the logits from the f32 model's */
    lq_llama_model *m = load("llama_tiny/tied.q8_0.gguf");
    int64_t n = lq_fixture_find(fx(), "tied/logits")->numel;
    float *want = fx_floats("tied/logits");
    float *y = malloc((size_t)n * sizeof(float));
    logits_of(m, IDS_T, y);
    double d = max_abs(y, want, n);
    free(want);
    printf("  gguf q8_0 vs f32 model: max abs %.3g\n", d);
    assert_true(d > 1e-4 && d < 0.1); /* really quantized, and still close */
    free(y);
    lq_llama_free(m);
}

/* f16 weights: the HF folder (float16 safetensors) and the GGUF file give the same logits. */
static void test_gguf_f16_untied(void **state) {
    (void)state;
    check_against("llama_tiny/untied.f16.gguf", "untied_f16/logits", 1e-4);
    int64_t n = IDS_T * 128;
    float *a = malloc((size_t)n * sizeof(float)), *b = malloc((size_t)n * sizeof(float));
    lq_llama_model *hf = load("llama_tiny/untied"), *gg = load("llama_tiny/untied.f16.gguf");
    logits_of(hf, IDS_T, a);
    logits_of(gg, IDS_T, b);
    printf("  gguf f16 vs hf f16: max abs %.3g\n", max_abs(a, b, n));
    assert_allclose(b, a, n, 0, 1e-5, "gguf f16 vs hf f16");
    lq_llama_free(hf);
    lq_llama_free(gg);
    free(a);
    free(b);
}

/* Qwen2: q / k / v biases, bf16 weights (kept bf16, through lq_qmatmul), tied bf16 lm_head. */
static void test_hf_qwen2_bf16(void **state) {
    (void)state;
    lq_llama_model *m = load("llama_tiny/qwen2_bf16");
    const lq_llama_config *c = lq_llama_model_config(m);
    assert_int_equal(c->arch, LQ_LLAMA_ARCH_QWEN2);
    assert_true(c->qkv_bias);
    lq_llama_free(m);
    check_against("llama_tiny/qwen2_bf16", "qwen2_bf16/logits", 1e-4);
}

/* Prefill then one token at a time with the cache == the full forward's rows. */
static void kv_check(const char *model) {
    lq_llama_model *m = load(model);
    int64_t V = lq_llama_model_config(m)->vocab_size;
    float *full = malloc((size_t)(IDS_T * V) * sizeof(float));
    logits_of(m, IDS_T, full);
    int32_t idv[IDS_T];
    memcpy(idv, lq_fixture_find(fx(), "ids")->data, sizeof idv);
    lq_kv_cache *kv = NULL;
    lq_err err;
    lq_err_clear(&err);
    assert_int_equal(lq_kv_cache_init(&kv, m, 16, &err), LQ_OK);
    lq_ctx *ctx = lq_test_ctx(2);
    for (int round = 0; round < 2; round++) { /* the second round after a reset */
        lq_kv_cache_reset(kv);
        int64_t pos = 0, step = 4;
        while (pos < IDS_T) {
            lq_ctx_mark mk = lq_ctx_get_mark(ctx);
            int64_t s[2] = {1, step};
            lq_tensor *t = lq_new(ctx, LQ_DTYPE_I32, 2, s);
            memcpy(t->data, idv + pos, (size_t)step * sizeof(int32_t));
            lq_tensor *y = lq_llama_forward(ctx, m, t, pos, kv);
            assert_ctx_ok(ctx);
            assert_int_equal(lq_kv_cache_len(kv), pos + step);
            assert_allclose(y->data, full + pos * V, step * V, 0, 1e-5, "kv decode vs full forward");
            lq_ctx_reset_to(ctx, mk);
            pos += step;
            step = 1;
        }
    }
    /* misuse: wrong pos0, overflow */
    int64_t s[2] = {1, 7};
    lq_tensor *t = lq_zeros(ctx, LQ_DTYPE_I32, 2, s);
    assert_null(lq_llama_forward(ctx, m, t, 3, kv));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_ARG);
    lq_ctx_clear_error(ctx);
    assert_null(lq_llama_forward(ctx, m, t, IDS_T, kv));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_ARG);
    lq_ctx_free(ctx);
    lq_kv_cache_free(kv);
    lq_llama_free(m);
    free(full);
}

static void test_kv_cache(void **state) {
    (void)state;
    kv_check("llama_tiny/untied");
    kv_check("llama_tiny/tied.q8_0.gguf");
}

/* --- bad inputs ------------------------------------------------------------------------------ */

static void expect_fail(const char *path, lq_status want, const char *needle) {
    lq_err err;
    lq_err_clear(&err);
    lq_llama_model *m = NULL;
    lq_status s = lq_llama_load(path, &m, &err);
    if (s != want || !strstr(err.msg, path) || (needle && !strstr(err.msg, needle)))
        fail_msg("%s: got %s '%s', wanted %s naming '%s'", path, lq_status_name(s), err.msg, lq_status_name(want),
                 needle ? needle : "");
    assert_null(m);
}

/* Rewrites tied.f32.gguf: arch as given, `drop` left out, `reshape` given its transposed shape. */
static void write_gguf_variant(const char *out, const char *arch, const char *drop, const char *reshape) {
    char p[512];
    lq_err err;
    lq_err_clear(&err);
    lq_gguf_file *f = NULL;
    assert_int_equal(lq_gguf_open(&f, lq_fixture_path("llama_tiny/tied.f32.gguf", p, sizeof p), &err), LQ_OK);
    lq_gguf_wkv kv[10];
    memset(kv, 0, sizeof kv);
    const char *ukeys[] = {"llama.embedding_length", "llama.block_count", "llama.feed_forward_length",
                           "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.dimension_count"};
    const uint64_t uvals[] = {32, 2, 64, 4, 2, 8};
    kv[0].key = "general.architecture";
    kv[0].type = LQ_GGUF_STRING;
    kv[0].v.s = arch;
    for (int i = 0; i < 6; i++) {
        kv[1 + i].key = ukeys[i];
        kv[1 + i].type = LQ_GGUF_UINT32;
        kv[1 + i].v.u = uvals[i];
    }
    kv[7].key = "llama.attention.layer_norm_rms_epsilon";
    kv[7].type = LQ_GGUF_FLOAT32;
    kv[7].v.f = 1e-5;
    kv[8].key = "llama.rope.freq_base";
    kv[8].type = LQ_GGUF_FLOAT32;
    kv[8].v.f = 10000;
    int64_t n = lq_gguf_count(f), k = 0;
    lq_gguf_wtensor *wt = calloc((size_t)n, sizeof *wt);
    for (int64_t i = 0; i < n; i++) {
        const lq_gguf_tensor *t = lq_gguf_tensor_at(f, i);
        if (drop && strcmp(t->name, drop) == 0) continue;
        wt[k].name = t->name;
        wt[k].dtype = t->dtype;
        wt[k].ndim = t->ndim;
        bool tr = reshape && !strcmp(t->name, reshape);
        for (int d = 0; d < t->ndim; d++) wt[k].shape[d] = t->shape[tr ? t->ndim - 1 - d : d];
        wt[k].data = t->data;
        k++;
    }
    assert_int_equal(lq_gguf_write(out, kv, 9, wt, k, &err), LQ_OK);
    free(wt);
    lq_gguf_close(f);
}

static void test_bad_gguf(void **state) {
    (void)state;
    char out[] = "/tmp/lq_test_llama_XXXXXX";
    assert_non_null(mkdtemp(out));
    char path[600];
    snprintf(path, sizeof path, "%s/ok.gguf", out);
    write_gguf_variant(path, "llama", NULL, NULL); /* the writer itself is sound */
    lq_llama_model *m = NULL;
    lq_err err;
    lq_err_clear(&err);
    assert_int_equal(lq_llama_load(path, &m, &err), LQ_OK);
    lq_llama_free(m);
    unlink(path);
    snprintf(path, sizeof path, "%s/arch.gguf", out);
    write_gguf_variant(path, "gpt2", NULL, NULL);
    expect_fail(path, LQ_ERR_INPUT, "gpt2");
    unlink(path);
    snprintf(path, sizeof path, "%s/missing.gguf", out);
    write_gguf_variant(path, "llama", "blk.1.ffn_up.weight", NULL);
    expect_fail(path, LQ_ERR_INPUT, "blk.1.ffn_up.weight");
    unlink(path);
    snprintf(path, sizeof path, "%s/shape.gguf", out);
    write_gguf_variant(path, "llama", NULL, "blk.0.attn_v.weight");
    expect_fail(path, LQ_ERR_INPUT, "blk.0.attn_v.weight");
    unlink(path);
    rmdir(out);
}

/* An HF folder with the tied model's config and its tensors, less `drop`, `reshape` transposed. */
static void write_hf_variant(const char *dir, const char *drop, const char *reshape) {
    char p[512], q[700];
    lq_err err;
    lq_err_clear(&err);
    FILE *in = fopen(lq_fixture_path("llama_tiny/tied/config.json", p, sizeof p), "rb");
    snprintf(q, sizeof q, "%s/config.json", dir);
    FILE *o = fopen(q, "wb");
    assert_true(in && o);
    char buf[4096];
    size_t r;
    while ((r = fread(buf, 1, sizeof buf, in)) > 0) assert_int_equal(fwrite(buf, 1, r, o), r);
    fclose(in);
    fclose(o);
    lq_st_model *st = NULL;
    assert_int_equal(lq_st_model_open(&st, lq_fixture_path("llama_tiny/tied", p, sizeof p), &err), LQ_OK);
    int64_t n = lq_st_model_count(st), k = 0;
    lq_st_wtensor *wt = calloc((size_t)n, sizeof *wt);
    for (int64_t i = 0; i < n; i++) {
        const lq_st_tensor *t = lq_st_model_tensor_at(st, i);
        if (drop && !strcmp(t->name, drop)) continue;
        wt[k].name = t->name;
        wt[k].dtype = t->dtype;
        wt[k].ndim = t->ndim;
        bool tr = reshape && !strcmp(t->name, reshape);
        for (int d = 0; d < t->ndim; d++) wt[k].shape[d] = t->shape[tr ? t->ndim - 1 - d : d];
        wt[k].data = t->data;
        k++;
    }
    snprintf(q, sizeof q, "%s/model.safetensors", dir);
    assert_int_equal(lq_st_write(q, wt, k, NULL, 0, &err), LQ_OK);
    free(wt);
    lq_st_model_close(st);
}

static void clean_hf(const char *dir) {
    char q[700];
    snprintf(q, sizeof q, "%s/config.json", dir);
    unlink(q);
    snprintf(q, sizeof q, "%s/model.safetensors", dir);
    unlink(q);
    rmdir(dir);
}

static void test_bad_hf(void **state) {
    (void)state;
    char d1[] = "/tmp/lq_test_llama_XXXXXX";
    assert_non_null(mkdtemp(d1));
    write_hf_variant(d1, "model.layers.1.mlp.up_proj.weight", NULL);
    expect_fail(d1, LQ_ERR_INPUT, "model.layers.1.mlp.up_proj.weight");
    clean_hf(d1);
    char d2[] = "/tmp/lq_test_llama_XXXXXX";
    assert_non_null(mkdtemp(d2));
    write_hf_variant(d2, NULL, "model.layers.0.self_attn.k_proj.weight");
    expect_fail(d2, LQ_ERR_INPUT, "model.layers.0.self_attn.k_proj.weight");
    clean_hf(d2);
    expect_fail("/nonexistent/loquat/model", LQ_ERR_INPUT, NULL);
    /* bad forward inputs */
    lq_llama_model *m = load("llama_tiny/tied");
    lq_ctx *ctx = lq_test_ctx(1);
    int64_t s[2] = {1, 3};
    lq_tensor *t = lq_zeros(ctx, LQ_DTYPE_I32, 2, s);
    ((int32_t *)t->data)[1] = 128; /* == vocab */
    assert_null(lq_llama_forward(ctx, m, t, 0, NULL));
    assert_int_equal(lq_ctx_status(ctx), LQ_ERR_ARG);
    lq_ctx_free(ctx);
    lq_llama_free(m);
}

/* The real SmolLM2-135M-Instruct Q4_1 GGUF, when fetched (tools/fetch_model.sh). */
static void test_smollm2(void **state) {
    (void)state;
    char path[512];
    lq_cache_path("models/SmolLM2-135M-Instruct.Q4_1.gguf", path, sizeof path);
    struct stat sb;
    if (stat(path, &sb) != 0) skip();
    lq_llama_model *m = NULL;
    lq_err err;
    lq_err_clear(&err);
    if (lq_llama_load(path, &m, &err) != LQ_OK) fail_msg("%s", err.msg);
    const lq_llama_config *c = lq_llama_model_config(m);
    assert_int_equal(c->num_hidden_layers, 30);
    assert_int_equal(c->hidden_size, 576);
    lq_ctx *ctx = lq_test_ctx(2);
    const int32_t prompt[] = {504, 3575, 282, 4649, 314}; /* "The capital of France is" */
    int64_t s[2] = {1, 5};
    lq_tensor *t = lq_new(ctx, LQ_DTYPE_I32, 2, s);
    memcpy(t->data, prompt, sizeof prompt);
    lq_tensor *y = lq_llama_forward(ctx, m, t, 0, NULL);
    assert_ctx_ok(ctx);
    const float *last = (const float *)y->data + 4 * c->vocab_size;
    int64_t best = 0;
    for (int64_t i = 0; i < c->vocab_size; i++) {
        assert_true(isfinite(last[i]));
        if (last[i] > last[best]) best = i;
    }
    printf("  SmolLM2 next token after \"The capital of France is\": %lld\n", (long long)best);
    assert_int_equal(best, 7042); /* " Paris" */
    /* a few logits from transformers (from_pretrained(gguf_file=...) dequantizes to float32),
     * see tools/check_llama_logits.py, which compares all of them (max abs 4.3e-5) */
    const struct { int t, id; float v; } ref[] = {{0, 7042, 10.902419f}, {0, 0, 15.655293f},  {0, 1000, 19.620970f},
                                                {0, 30000, 11.394974f}, {4, 7042, 17.371265f}, {4, 0, 1.613645f},
                                                {4, 1000, 2.867236f},   {4, 30000, -4.338645f}};
    for (size_t i = 0; i < sizeof ref / sizeof ref[0]; i++) {
        float got = ((const float *)y->data)[ref[i].t * c->vocab_size + ref[i].id];
        if (fabsf(got - ref[i].v) > 1e-3f) fail_msg("SmolLM2 logit [%d, %d] = %f, transformers %f", ref[i].t, ref[i].id, got, ref[i].v);
    }
    /* the KV cache on the real model (9 query heads over 3 kv heads): 3 tokens, then 1, then 1 */
    lq_kv_cache *kv = NULL;
    assert_int_equal(lq_kv_cache_init(&kv, m, 8, &err), LQ_OK);
    const int64_t steps[3][2] = {{0, 3}, {3, 1}, {4, 1}};
    for (int i = 0; i < 3; i++) {
        int64_t s1[2] = {1, steps[i][1]};
        lq_tensor *ti = lq_new(ctx, LQ_DTYPE_I32, 2, s1);
        memcpy(ti->data, prompt + steps[i][0], (size_t)steps[i][1] * sizeof(int32_t));
        lq_tensor *yi = lq_llama_forward(ctx, m, ti, steps[i][0], kv);
        assert_ctx_ok(ctx);
        assert_allclose(yi->data, (const float *)y->data + steps[i][0] * c->vocab_size, steps[i][1] * c->vocab_size, 0,
                        1e-4, "SmolLM2 kv decode vs full forward");
    }
    lq_kv_cache_free(kv);
    lq_ctx_free(ctx);
    lq_llama_free(m);
}

static int dump_logits(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: test_llama --logits MODEL OUT.f32 ID...\n");
        return 2;
    }
    lq_err err;
    lq_err_clear(&err);
    lq_llama_model *m = NULL;
    if (lq_llama_load(argv[2], &m, &err) != LQ_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    int64_t T = argc - 4;
    lq_ctx *ctx = NULL;
    lq_ctx_opts o = {0};
    if (lq_ctx_init(&ctx, &o, &err) != LQ_OK) return 1;
    int64_t s[2] = {1, T};
    lq_tensor *t = lq_new(ctx, LQ_DTYPE_I32, 2, s);
    for (int64_t i = 0; i < T; i++) ((int32_t *)t->data)[i] = atoi(argv[4 + i]);
    lq_tensor *y = lq_llama_forward(ctx, m, t, 0, NULL);
    if (!y) {
        fprintf(stderr, "%s\n", lq_ctx_error(ctx)->msg);
        return 1;
    }
    FILE *f = fopen(argv[3], "wb");
    size_t n = (size_t)lq_numel(y);
    int rc = f && fwrite(y->data, sizeof(float), n, f) == n ? 0 : 1;
    if (f) fclose(f);
    lq_ctx_free(ctx);
    lq_llama_free(m);
    return rc;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--logits")) return dump_logits(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hf_tied),          cmocka_unit_test(test_hf_untied),
        cmocka_unit_test(test_tied_vs_untied),   cmocka_unit_test(test_gguf_f32_equals_hf),
        cmocka_unit_test(test_gguf_q8_0),        cmocka_unit_test(test_gguf_f16_untied),
        cmocka_unit_test(test_kv_cache),         cmocka_unit_test(test_bad_gguf),
        cmocka_unit_test(test_bad_hf),           cmocka_unit_test(test_smollm2),
        cmocka_unit_test(test_hf_qwen2_bf16),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    lq_fixture_free(g_fx);
    return rc;
}
