/* tests/test_llama_save.c: merged exports (models/llama_save.c, lq_llama_save_gguf_as in
 * models/llama_export.c): converting GGUF exports equal the files llama.cpp's converter (the gguf
 * package, tools/gen_llama_fixtures.py) wrote from the same weights, byte for byte; Hugging Face
 * folder exports hold the source's tensors and load back to the same logits; what a format
 * cannot hold is refused without leaving files. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/file.h"
#include "llama_testutil.h"

static void test_dtype_parse(void **state) {
    (void)state;
    const char *names[] = {"f32", "f16", "bf16", "q8_0", "q4_0", "nf4"};
    for (int i = 0; i < 6; i++) {
        lq_export_dtype d = LQ_EXPORT_F32;
        assert_true(lq_export_dtype_parse(names[i], &d));
        assert_int_equal(d, (lq_export_dtype)i);
    }
    const char *bad[] = {"F32", "q4_1", "fp4", "", "f32 "};
    for (int i = 0; i < 5; i++) assert_false(lq_export_dtype_parse(bad[i], NULL));
    assert_false(lq_export_dtype_parse(NULL, NULL));
}

/* Every tensor of want appears in got with the same type, shape and bytes (and no others); the
 * general.file_type values agree. */
static void same_gguf(const char *got_path, const char *want_path) {
    lq_err err;
    lq_err_clear(&err);
    lq_gguf_file *got = NULL, *want = NULL;
    if (lq_gguf_open(&got, got_path, &err) != LQ_OK) fail_msg("%s", err.msg);
    if (lq_gguf_open(&want, want_path, &err) != LQ_OK) fail_msg("%s", err.msg);
    assert_int_equal(lq_gguf_count(got), lq_gguf_count(want));
    for (int64_t i = 0; i < lq_gguf_count(want); i++) {
        const lq_gguf_tensor *w = lq_gguf_tensor_at(want, i);
        const lq_gguf_tensor *g = lq_gguf_find(got, w->name);
        if (!g) fail_msg("export lacks %s", w->name);
        if (g->ggml_type != w->ggml_type || g->nbytes != w->nbytes || g->ndim != w->ndim)
            fail_msg("%s: type %u / %zu bytes, want %u / %zu", w->name, g->ggml_type, g->nbytes, w->ggml_type,
                     w->nbytes);
        for (int d = 0; d < w->ndim; d++) assert_int_equal(g->shape[d], w->shape[d]);
        if (memcmp(g->data, w->data, w->nbytes) != 0) fail_msg("%s: bytes differ from the converter's", w->name);
    }
    uint32_t a, b;
    assert_int_equal(lq_gguf_get_u32(got, "general.file_type", &a, &err), LQ_OK);
    assert_int_equal(lq_gguf_get_u32(want, "general.file_type", &b, &err), LQ_OK);
    assert_int_equal(a, b);
    lq_gguf_close(got);
    lq_gguf_close(want);
}

static int n_reports;
static void count_report(void *user, const char *name, double rmse, double max_abs, double sqnr_db) {
    (void)user, (void)name;
    assert_true(rmse >= 0 && max_abs >= rmse && sqnr_db > 20);
    n_reports++;
}

static void gguf_as(const char *src_rel, lq_export_dtype dt, const char *converter_rel, int want_reports) {
    char src[512], conv[512], out[256];
    snprintf(out, sizeof out, "/tmp/loquat_save_%d.gguf", (int)getpid());
    lq_llama_model *m = load(fx(src_rel, src, sizeof src));
    lq_err err;
    lq_err_clear(&err);
    n_reports = 0;
    if (lq_llama_save_gguf_as(m, out, dt, count_report, NULL, &err) != LQ_OK) fail_msg("export: %s", err.msg);
    assert_int_equal(n_reports, want_reports);
    same_gguf(out, fx(converter_rel, conv, sizeof conv));
    lq_llama_free(m);
    unlink(out);
}

/* tied (2 layers): 7 projections per layer + token_embd are 2-D (f32 reports nothing) */
static void test_gguf_f32_as_converter(void **state) {
    (void)state;
    gguf_as("llama_tiny/tied", LQ_EXPORT_F32, "llama_tiny/tied.f32.gguf", 0);
}
static void test_gguf_q8_0_as_converter(void **state) {
    (void)state;
    gguf_as("llama_tiny/tied", LQ_EXPORT_Q8_0, "llama_tiny/tied.q8_0.gguf", 15);
}
/* untied: its f16 weights converted to f32 and back to f16 are the same bits; + output.weight */
static void test_gguf_f16_as_converter(void **state) {
    (void)state;
    gguf_as("llama_tiny/untied", LQ_EXPORT_F16, "llama_tiny/untied.f16.gguf", 16);
}

/* Every tensor of the source folder's model.safetensors is in the export with the same dtype,
 * shape and bytes (the conversion is exact for these dtypes), and the folder loads back to the
 * same logits. */
static void hf_round_trip(const char *src_rel, lq_export_dtype dt) {
    char src[512], path[512], dir[256];
    snprintf(dir, sizeof dir, "/tmp/loquat_save_hf_%d", (int)getpid());
    fx(src_rel, src, sizeof src);
    lq_llama_model *m = load(src);
    lq_err err;
    lq_err_clear(&err);
    if (lq_llama_save_hf(m, dir, dt, NULL, NULL, &err) != LQ_OK) fail_msg("export: %s", err.msg);
    lq_st_model *a = NULL, *b = NULL;
    if (lq_st_model_open(&a, src, &err) != LQ_OK) fail_msg("%s", err.msg);
    if (lq_st_model_open(&b, dir, &err) != LQ_OK) fail_msg("%s", err.msg);
    const lq_llama_config *c = lq_llama_model_config(m);
    int64_t n_want = lq_st_model_count(a) - (c->tie_word_embeddings && lq_st_model_find(a, "lm_head.weight") ? 1 : 0);
    assert_int_equal(lq_st_model_count(b), n_want);
    for (int64_t i = 0; i < lq_st_model_count(a); i++) {
        const lq_st_tensor *w = lq_st_model_tensor_at(a, i);
        if (c->tie_word_embeddings && strcmp(w->name, "lm_head.weight") == 0) continue;
        const lq_st_tensor *g = lq_st_model_find(b, w->name);
        if (!g) fail_msg("export lacks %s", w->name);
        if (g->dtype != w->dtype || g->nbytes != w->nbytes || memcmp(g->data, w->data, w->nbytes) != 0)
            fail_msg("%s: %s / %zu bytes differ from the source's %s / %zu", w->name, lq_st_dtype_name(g->dtype),
                     g->nbytes, lq_st_dtype_name(w->dtype), w->nbytes);
    }
    lq_st_model_close(a);
    lq_st_model_close(b);
    lq_llama_config back_cfg;
    if (lq_llama_config_load(&back_cfg, dir, &err) != LQ_OK) fail_msg("config.json: %s", err.msg);
    assert_int_equal(back_cfg.arch, c->arch);
    assert_int_equal(back_cfg.head_dim, c->head_dim);
    assert_int_equal(back_cfg.num_key_value_heads, c->num_key_value_heads);
    assert_int_equal(back_cfg.tie_word_embeddings, c->tie_word_embeddings);
    assert_int_equal(back_cfg.qkv_bias, c->qkv_bias);
    assert_true(back_cfg.rope_theta == c->rope_theta && back_cfg.rms_norm_eps == c->rms_norm_eps);
    assert_int_equal(back_cfg.n_bos, c->n_bos);
    lq_llama_model *back = load(dir);
    float *x = logits(m), *y = logits(back);
    assert_memory_equal(x, y, (size_t)(T_IDS * c->vocab_size) * sizeof(float));
    free(x), free(y);
    lq_llama_free(back);
    lq_llama_free(m);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/config.json", dir);
    unlink(path);
    assert_int_equal(rmdir(dir), 0); /* nothing else (no temporaries) was left in it */
}

static void test_hf_f32_tied(void **state) {
    (void)state;
    hf_round_trip("llama_tiny/tied", LQ_EXPORT_F32);
}
static void test_hf_f16_untied(void **state) {
    (void)state;
    hf_round_trip("llama_tiny/untied", LQ_EXPORT_F16);
}
static void test_hf_bf16_qwen2_biases(void **state) {
    (void)state;
    hf_round_trip("llama_tiny/qwen2_bf16", LQ_EXPORT_BF16);
}

/* NF4: the decoder projections in bitsandbytes' layout, the rest f32, and a quantization_config. */
static void test_hf_nf4_layout(void **state) {
    (void)state;
    char src[512], path[512], dir[256];
    snprintf(dir, sizeof dir, "/tmp/loquat_save_nf4_%d", (int)getpid());
    lq_llama_model *m = load(fx("llama_tiny/tied", src, sizeof src));
    lq_err err;
    lq_err_clear(&err);
    n_reports = 0;
    if (lq_llama_save_hf(m, dir, LQ_EXPORT_NF4, count_report, NULL, &err) != LQ_OK) fail_msg("export: %s", err.msg);
    assert_int_equal(n_reports, 14);
    lq_st_model *b = NULL;
    if (lq_st_model_open(&b, dir, &err) != LQ_OK) fail_msg("%s", err.msg);
    const lq_st_tensor *q = lq_st_model_find(b, "model.layers.1.mlp.down_proj.weight");
    assert_non_null(q);
    assert_int_equal(q->dtype, LQ_ST_U8);
    assert_int_equal(q->shape[0], 32 * 64 / 2);
    assert_non_null(lq_st_model_find(b, "model.layers.1.mlp.down_proj.weight.quant_state.bitsandbytes__nf4"));
    assert_non_null(lq_st_model_find(b, "model.layers.1.mlp.down_proj.weight.nested_absmax"));
    const lq_st_tensor *e = lq_st_model_find(b, "model.embed_tokens.weight");
    assert_non_null(e);
    assert_int_equal(e->dtype, LQ_ST_F32);
    lq_st_model_close(b);
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *text = NULL;
    size_t n = 0;
    assert_int_equal(lq_read_file(path, 1 << 20, "config", &text, &n, &err), LQ_OK);
    assert_non_null(strstr(text, "\"quant_method\": \"bitsandbytes\""));
    assert_non_null(strstr(text, "\"bnb_4bit_quant_type\": \"nf4\""));
    free(text);
    unlink(path);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unlink(path);
    assert_int_equal(rmdir(dir), 0);
    lq_llama_free(m);
}

/* GGUF has no NF4; safetensors no ggml blocks: refused, nothing written. */
static void test_refusals(void **state) {
    (void)state;
    char src[512], out[256];
    lq_llama_model *m = load(fx("llama_tiny/tied", src, sizeof src));
    lq_err err;
    lq_err_clear(&err);
    snprintf(out, sizeof out, "/tmp/loquat_save_refused_%d.gguf", (int)getpid());
    assert_int_equal(lq_llama_save_gguf_as(m, out, LQ_EXPORT_NF4, NULL, NULL, &err), LQ_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "NF4"));
    assert_int_equal(access(out, F_OK), -1);
    lq_err_clear(&err);
    snprintf(out, sizeof out, "/tmp/loquat_save_refused_%d", (int)getpid());
    assert_int_equal(lq_llama_save_hf(m, out, LQ_EXPORT_Q8_0, NULL, NULL, &err), LQ_ERR_UNSUPPORTED);
    assert_int_equal(access(out, F_OK), -1);
    lq_llama_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtype_parse),
        cmocka_unit_test(test_gguf_f32_as_converter),
        cmocka_unit_test(test_gguf_q8_0_as_converter),
        cmocka_unit_test(test_gguf_f16_as_converter),
        cmocka_unit_test(test_hf_f32_tied),
        cmocka_unit_test(test_hf_f16_untied),
        cmocka_unit_test(test_hf_bf16_qwen2_biases),
        cmocka_unit_test(test_hf_nf4_layout),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
