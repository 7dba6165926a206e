/* tests/test_llama_export.c: a loaded model written back as GGUF: the file carries llama.cpp's
 * tensors byte for byte (compared with the GGUF files tools/gen_llama_fixtures.py wrote the way
 * llama.cpp's converter does, q / k rows permuted), and loads back to the same logits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "llama_testutil.h"

/* Every tensor of want appears in got with the same type, shape and bytes (and no others). */
static void same_tensors(const char *got_path, const char *want_path) {
    lq_err err;
    lq_err_clear(&err);
    lq_gguf_file *got = NULL, *want = NULL;
    if (lq_gguf_open(&got, got_path, &err) != LQ_OK) fail_msg("%s", err.msg);
    if (lq_gguf_open(&want, want_path, &err) != LQ_OK) fail_msg("%s", err.msg);
    assert_int_equal(lq_gguf_count(got), lq_gguf_count(want));
    for (int64_t i = 0; i < lq_gguf_count(want); i++) {
        const lq_gguf_tensor *w = lq_gguf_tensor_at(want, i);
        const lq_gguf_tensor *g = lq_gguf_find(got, w->name);
        if (!g) fail_msg("exported file lacks %s", w->name);
        if (g->ggml_type != w->ggml_type || g->nbytes != w->nbytes || g->ndim != w->ndim)
            fail_msg("%s: type %u / %zu bytes, want %u / %zu", w->name, g->ggml_type, g->nbytes, w->ggml_type,
                     w->nbytes);
        for (int d = 0; d < w->ndim; d++) assert_int_equal(g->shape[d], w->shape[d]);
        if (memcmp(g->data, w->data, w->nbytes) != 0) fail_msg("%s: bytes differ from the converter's", w->name);
    }
    const char *keys[] = {"llama.embedding_length", "llama.block_count", "llama.feed_forward_length",
                          "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.dimension_count"};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        uint32_t a, b;
        assert_int_equal(lq_gguf_get_u32(got, keys[k], &a, &err), LQ_OK);
        assert_int_equal(lq_gguf_get_u32(want, keys[k], &b, &err), LQ_OK);
        assert_int_equal(a, b);
    }
    lq_gguf_close(got);
    lq_gguf_close(want);
}

static void round_trip(const char *src_rel, const char *converter_rel) {
    char src[512], conv[512], out[256];
    fx(src_rel, src, sizeof src);
    fx(converter_rel, conv, sizeof conv);
    snprintf(out, sizeof out, "/tmp/loquat_export_%d.gguf", (int)getpid());
    lq_llama_model *m = load(src);
    lq_err err;
    lq_err_clear(&err);
    if (lq_llama_save_gguf(m, out, &err) != LQ_OK) fail_msg("export: %s", err.msg);
    same_tensors(out, conv);
    lq_llama_model *back = load(out);
    float *a = logits(m), *b = logits(back);
    int64_t n = T_IDS * lq_llama_model_config(m)->vocab_size;
    assert_memory_equal(a, b, (size_t)n * sizeof(float)); /* the same weights, the same arithmetic */
    free(a);
    free(b);
    lq_llama_free(back);
    lq_llama_free(m);
    unlink(out);
}

/* HF folder (f32, tied) -> GGUF: equals the converter's f32 file. */
static void test_hf_to_gguf(void **state) {
    (void)state;
    round_trip("llama_tiny/tied", "llama_tiny/tied.f32.gguf");
}

/* HF folder (f16, untied: separate output.weight) -> GGUF: equals the converter's f16 file. */
static void test_hf_f16_untied_to_gguf(void **state) {
    (void)state;
    round_trip("llama_tiny/untied", "llama_tiny/untied.f16.gguf");
}

/* GGUF Q8_0 -> GGUF: the blocks are written as loaded (q / k permuted back). */
static void test_gguf_q8_0_round_trip(void **state) {
    (void)state;
    round_trip("llama_tiny/tied.q8_0.gguf", "llama_tiny/tied.q8_0.gguf");
}

/* What GGUF's llama architecture cannot hold is refused, and nothing is left behind. */
static void test_refuses_biases(void **state) {
    (void)state;
    char src[512], out[256];
    snprintf(out, sizeof out, "/tmp/loquat_export_bias_%d.gguf", (int)getpid());
    lq_llama_model *m = load(fx("llama_tiny/qwen2_bf16", src, sizeof src));
    lq_err err;
    lq_err_clear(&err);
    assert_int_equal(lq_llama_save_gguf(m, out, &err), LQ_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "biases"));
    assert_int_equal(access(out, F_OK), -1);
    lq_llama_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hf_to_gguf),
        cmocka_unit_test(test_hf_f16_untied_to_gguf),
        cmocka_unit_test(test_gguf_q8_0_round_trip),
        cmocka_unit_test(test_refuses_biases),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
