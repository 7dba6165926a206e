/* tests/test_mem.c: `loquat mem`'s estimate: its parts computed by hand from the tiny model's shapes,
 * and its activation count against the arena a real training step fills. */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/io.h"
#include "lora/lora.h"
#include "models/models.h"
#include "train/config.h"
#include "train/mem.h"

/* tests/fixtures/qlora_tiny: hidden 64, 2 layers, 4 heads, 2 kv heads, head_dim 16, intermediate
 * 128, tied, f32 safetensors. */
static char model_dir[512], train_data[512];

static void base_cfg(lq_train_config *c) {
    lq_train_config_defaults(c);
    c->base_model = model_dir;
    c->load_in_4bit = true;
    c->bnb_4bit_use_double_quant = true;
    c->quant_block_size = 64;
    c->lora_r = 4;
    c->lora_dropout = 0;
    c->lora_targets = LQ_LORA_ALL_LINEAR;
    c->micro_batch_size = 2;
    c->sequence_len = 32;
    c->n_datasets = 1;
    c->datasets[0].path = train_data;
    c->datasets[0].type = LQ_DATA_JSONL;
}

/* Borrowed strings: nothing of c is freed. */
static void shapes(lq_llama_config *lc) {
    lq_err err = {0};
    assert_int_equal(lq_llama_config_load(lc, model_dir, &err), LQ_OK);
}

/* bitsandbytes' 4-bit storage of n elements in blocks of 64, double-quantized: n / 2 code bytes,
 * one u8 absmax code per block, one f32 per 256 blocks. */
static int64_t nf4_dq(int64_t n) {
    int64_t blocks = (n + 63) / 64;
    return n / 2 + blocks + (blocks + 255) / 256 * 4;
}

static void test_parts_by_hand(void **state) {
    (void)state;
    lq_llama_config lc;
    shapes(&lc);
    int64_t C = lc.hidden_size, F = lc.intermediate_size, L = lc.num_hidden_layers, V = lc.vocab_size;
    int64_t qo = lc.num_attention_heads * lc.head_dim, kv = lc.num_key_value_heads * lc.head_dim;
    /* (out, in) of q k v o gate up down */
    int64_t out[7] = {qo, kv, kv, C, F, F, C}, in[7] = {C, C, C, qo, C, C, F};

    lq_train_config c;
    base_cfg(&c);
    lq_mem_estimate e;
    lq_err err = {0};
    assert_int_equal(lq_mem_estimate_run(&c, &e, &err), LQ_OK);

    int64_t lin = 0, lora = 0;
    for (int t = 0; t < 7; t++) {
        lin += L * nf4_dq(out[t] * in[t]);
        lora += L * 4 * (in[t] + out[t]);
    }
    int64_t norms = (2 * L + 1) * C * 4, embed = V * C * 4; /* tied: the f32 embedding is the head */
    assert_int_equal(e.base, lin + embed + norms);
    assert_int_equal(e.adapters, lora * 4);
    assert_int_equal(e.grads, lora * 4);
    assert_int_equal(e.optimizer, 2 * lora * 4);
    struct stat sb;
    assert_int_equal(stat(train_data, &sb), 0);
    assert_int_equal(e.data, (int64_t)sb.st_size / 4 * 24);
    assert_int_equal(e.runtime, LQ_MEM_RUNTIME_BYTES + V * LQ_MEM_VOCAB_BYTES);
    /* the largest weight as f32: the transient while the load requantizes it (the tiles of a
     * weight this small are all of it) */
    int64_t biggest = 0;
    for (int t = 0; t < 7; t++)
        if (out[t] * in[t] > biggest) biggest = out[t] * in[t];
    assert_int_equal(e.workspace, biggest * 4);
    /* the f32 sources of the NF4 weights, read through the mapping at load */
    int64_t f32_lin = 0;
    for (int t = 0; t < 7; t++) f32_lin += L * out[t] * in[t] * 4;
    assert_int_equal(e.mapped, f32_lin);
    int64_t common = e.base + e.adapters + e.grads + e.optimizer + e.workspace + e.data + e.runtime + e.mapped;
    assert_int_equal(e.total, common + e.activations); /* gradient_checkpointing false */
    assert_int_equal(e.total_other, common + e.activations_ckpt);

    /* only q and v adapted, rank 8 */
    c.lora_targets = (1u << LQ_LORA_Q) | (1u << LQ_LORA_V);
    c.lora_r = 8;
    assert_int_equal(lq_mem_estimate_run(&c, &e, &err), LQ_OK);
    assert_int_equal(e.adapters, L * 8 * (in[0] + out[0] + in[2] + out[2]) * 4);

    /* without double quantization: one f32 absmax per block of 64 */
    c.bnb_4bit_use_double_quant = false;
    c.quant_block_size = 128;
    assert_int_equal(lq_mem_estimate_run(&c, &e, &err), LQ_OK);
    lin = 0;
    for (int t = 0; t < 7; t++) lin += L * (out[t] * in[t] / 2 + (out[t] * in[t] + 127) / 128 * 4);
    assert_int_equal(e.base, lin + embed + norms);
}

/* The base as loaded: the estimate against the bytes lq_llama_load_ex's model holds. */
static void test_base_matches_loaded_model(void **state) {
    (void)state;
    lq_train_config c;
    base_cfg(&c);
    lq_mem_estimate nf4, native;
    lq_err err = {0};
    assert_int_equal(lq_mem_estimate_run(&c, &nf4, &err), LQ_OK);
    c.load_in_4bit = false;
    c.base_quant_native = true;
    assert_int_equal(lq_mem_estimate_run(&c, &native, &err), LQ_OK);
    assert_true(nf4.base < native.base);
    assert_int_equal(native.mapped, 0); /* f32 weights used in place: nothing read besides them */

    lq_llama_model *m = NULL;
    lq_llama_load_opts o = {.quant = LQ_BASE_NF4, .block_size = 64, .double_quant = true};
    assert_int_equal(lq_llama_load_ex(model_dir, &o, &m, &err), LQ_OK);
    int64_t held = lq_llama_weight_bytes(m);
    lq_llama_free(m);
    /* the loaded model also counts its tensors' quant-state structs: within 1% */
    assert_true(llabs(held - nf4.base) <= nf4.base / 100);
    assert_int_equal(lq_llama_load_ex(model_dir, NULL, &m, &err), LQ_OK);
    held = lq_llama_weight_bytes(m);
    lq_llama_free(m);
    assert_true(llabs(held - native.base) <= native.base / 100);
}

/* A GGUF base: shapes from the llama.* keys, sizes from the tensor infos; native keeps the
 * file's Q8_0 blocks. */
static void test_gguf_native(void **state) {
    (void)state;
    char path[512];
    lq_fixture_path("llama_tiny/tied.q8_0.gguf", path, sizeof path);
    lq_train_config c;
    base_cfg(&c);
    c.base_model = path;
    c.load_in_4bit = false;
    c.base_quant_native = true;
    lq_mem_estimate e;
    lq_err err = {0};
    assert_int_equal(lq_mem_estimate_run(&c, &e, &err), LQ_OK);
    lq_llama_model *m = NULL;
    assert_int_equal(lq_llama_load_ex(path, NULL, &m, &err), LQ_OK);
    int64_t held = lq_llama_weight_bytes(m);
    lq_llama_free(m);
    assert_true(llabs(held - e.base) <= e.base / 100);
}

static void test_checkpointing_lowers_activations(void **state) {
    (void)state;
    lq_train_config c;
    base_cfg(&c);
    c.micro_batch_size = 4;
    c.sequence_len = 128;
    lq_mem_estimate e;
    lq_err err = {0};
    assert_int_equal(lq_mem_estimate_run(&c, &e, &err), LQ_OK);
    assert_true(e.activations_ckpt < e.activations);
    assert_true(e.total_other < e.total);
    c.gradient_checkpointing = true;
    lq_mem_estimate e2;
    assert_int_equal(lq_mem_estimate_run(&c, &e2, &err), LQ_OK);
    assert_int_equal(e2.total, e.total_other);
    assert_int_equal(e2.total_other, e.total);
    /* attention's P alone is (B, Hq, T, T) floats per layer: the activations grow faster than the
     * sequence */
    c.sequence_len = 256;
    lq_mem_estimate e3;
    assert_int_equal(lq_mem_estimate_run(&c, &e3, &err), LQ_OK);
    assert_true(e3.activations > 2 * e.activations);
}

/* The arenas' high water (main + scratch: an arena keeps the pages it has touched) after what the
 * trainer does: an evaluation batch (no grad), then a training step. */
static int64_t measure(lq_llama_model *m, int64_t B, int64_t T, bool ckpt, float dropout, int threads) {
    lq_ctx_opts co = {.n_threads = threads, .seed = 3};
    lq_ctx *ctx = NULL;
    lq_err err = {0};
    assert_int_equal(lq_ctx_init(&ctx, &co, &err), LQ_OK);
    lq_ctx_set_release_grads(ctx, true); /* as the trainer runs */
    for (int pass = 0; pass < 2; pass++) {
        bool train = pass == 1;
        lq_ctx_set_training(ctx, train && dropout > 0);
        lq_ctx_set_grad(ctx, train);
        int64_t s[2] = {B, T};
        lq_tensor *ids = lq_new(ctx, LQ_DTYPE_I32, 2, s), *labels = lq_new(ctx, LQ_DTYPE_I32, 2, s);
        lq_tensor *pos = lq_new(ctx, LQ_DTYPE_I32, 2, s), *doc = lq_new(ctx, LQ_DTYPE_I32, 2, s);
        int64_t V = lq_llama_model_config(m)->vocab_size;
        for (int64_t i = 0; i < B * T; i++) {
            ((int32_t *)ids->data)[i] = (int32_t)((i * 7 + 3) % V);
            ((int32_t *)labels->data)[i] = (int32_t)((i * 5 + 1) % V);
            ((int32_t *)pos->data)[i] = (int32_t)(i % T);
            ((int32_t *)doc->data)[i] = 0;
        }
        lq_llama_fwd_opts fo = {.positions = pos, .doc = doc, .checkpoint = ckpt};
        lq_tensor *loss = lq_llama_loss(ctx, m, ids, labels, &fo, NULL);
        assert_ctx_ok(ctx);
        if (train) assert_int_equal(lq_backward(ctx, loss), LQ_OK);
        lq_ctx_step_reset(ctx);
    }
    lq_arena_stats st = lq_ctx_arena_stats(ctx);
    int64_t hw = (int64_t)(st.high_water + st.pool_capacity); /* the pool keeps its blocks */
    lq_ctx_free(ctx);
    return hw;
}

/* est within [got * (1 - lo), got * (1 + hi)]. */
static void check_range(const char *what, int64_t est, int64_t got, double lo, double hi) {
    double rel = (double)(est - got) / (double)got;
    printf("  %-40s estimate %9.3f MiB, arena + pool high water %9.3f MiB (%+.1f%%)\n", what, est / 1048576.0,
           got / 1048576.0, 100 * rel);
    assert_true(rel <= hi && rel >= -lo);
}

/* The activation tally against what the arenas really hold, with and without checkpointing,
 * with and without dropout. */
static void test_activations_match_arena(void **state) {
    (void)state;
    lq_err err = {0};
    lq_llama_model *m = NULL;
    lq_llama_load_opts o = {.quant = LQ_BASE_NF4, .block_size = 64, .double_quant = true};
    assert_int_equal(lq_llama_load_ex(model_dir, &o, &m, &err), LQ_OK);
    lq_lora_cfg lcfg = {.r = 4, .alpha = 8, .dropout = 0.05f, .targets = LQ_LORA_ALL_LINEAR};
    lq_lora_set *set = NULL;
    assert_int_equal(lq_llama_lora_create(m, &lcfg, 1, &set, &err), LQ_OK);

    /* (B, T, threads): attention's backward keeps one (T, T) buffer per thread from T = 64 on */
    static const int64_t cases[][3] = {{2, 32, 1}, {4, 64, 1}, {4, 64, 2}};
    for (int i = 0; i < 3; i++) {
        int64_t B = cases[i][0], T = cases[i][1];
        int th = (int)cases[i][2];
        lq_train_config c;
        base_cfg(&c);
        c.micro_batch_size = B;
        c.sequence_len = T;
        c.lora_dropout = 0.05;
        c.threads = th;
        lq_mem_estimate e;
        assert_int_equal(lq_mem_estimate_run(&c, &e, &err), LQ_OK);
        int64_t plain = measure(m, B, T, false, 0.05f, th), ck = measure(m, B, T, true, 0.05f, th);
        char what[96];
        snprintf(what, sizeof what, "(%lld, %lld) %d thr eval + training step", (long long)B, (long long)T, th);
        /* release mode: the pool's share is bounded by one layer's gradients, which on a model
         * this small is a large part of the whole: an upper bound here, not a close estimate */
        check_range(what, e.activations, plain, 0.05, 0.35);
        snprintf(what, sizeof what, "(%lld, %lld) %d thr eval + checkpointed step", (long long)B, (long long)T, th);
        check_range(what, e.activations_ckpt, ck, 0.05, 0.35);
    }
    lq_llama_free(m);
    lq_lora_set_free(set);
}

/* SmolLM2-135M (the demo's GGUF: Q4_1 linears, Q8_0 tied embedding, 9 / 3 heads), when cached:
 * the base as loaded and a short training step's arena. */
static void test_smollm2(void **state) {
    (void)state;
    char path[512];
    lq_cache_path("models/SmolLM2-135M-Instruct.Q4_1.gguf", path, sizeof path);
    struct stat sb;
    if (stat(path, &sb) != 0) skip();
    lq_train_config c;
    base_cfg(&c);
    c.base_model = path;
    c.lora_r = 16;
    c.lora_dropout = 0.05;
    c.micro_batch_size = 1;
    c.sequence_len = 32;
    c.threads = 1;
    lq_mem_estimate e;
    lq_err err = {0};
    assert_int_equal(lq_mem_estimate_run(&c, &e, &err), LQ_OK);
    lq_llama_model *m = NULL;
    lq_llama_load_opts o = {.quant = LQ_BASE_NF4, .block_size = 64, .double_quant = true};
    assert_int_equal(lq_llama_load_ex(path, &o, &m, &err), LQ_OK);
    int64_t held = lq_llama_weight_bytes(m);
    printf("  SmolLM2 NF4 base: estimate %.2f MiB, loaded %.2f MiB\n", e.base / 1048576.0, held / 1048576.0);
    assert_true(llabs(held - e.base) <= e.base / 100);
    lq_lora_cfg lcfg = {.r = 16, .alpha = 32, .dropout = 0.05f, .targets = LQ_LORA_ALL_LINEAR};
    lq_lora_set *set = NULL;
    assert_int_equal(lq_llama_lora_create(m, &lcfg, 1, &set, &err), LQ_OK);
    check_range("SmolLM2 (1, 32) eval + training step", e.activations, measure(m, 1, 32, false, 0.05f, 1), 0.05, 0.05);
    check_range("SmolLM2 (1, 32) eval + checkpointed step", e.activations_ckpt, measure(m, 1, 32, true, 0.05f, 1), 0.05, 0.05);
    lq_llama_free(m);
    lq_lora_set_free(set);
}

static void test_bad_input_and_check(void **state) {
    (void)state;
    lq_train_config c;
    base_cfg(&c);
    c.base_model = (char *)"/nonexistent/model.gguf";
    lq_mem_estimate e;
    lq_err err = {0};
    assert_int_equal(lq_mem_estimate_run(&c, &e, &err), LQ_ERR_INPUT);
    assert_non_null(strstr(err.msg, "/nonexistent/model.gguf"));

    base_cfg(&c);
    c.datasets[0].path = (char *)"/nonexistent/data.jsonl";
    lq_err_clear(&err);
    assert_int_equal(lq_mem_estimate_run(&c, &e, &err), LQ_ERR_INPUT);
    assert_non_null(strstr(err.msg, "/nonexistent/data.jsonl"));

    int64_t avail = lq_mem_available();
    assert_true(avail > 0);
    memset(&e, 0, sizeof e);
    e.total = 1 << 20;
    e.total_other = e.total;
    lq_err_clear(&err);
    assert_int_equal(lq_mem_check(&e, &err), LQ_OK);
    e.total = avail + ((int64_t)1 << 40);
    e.total_other = avail / 2;
    assert_int_equal(lq_mem_check(&e, &err), LQ_ERR_OOM);
    assert_non_null(strstr(err.msg, "MemAvailable"));
    assert_non_null(strstr(err.msg, "gradient_checkpointing"));
}

int main(void) {
    lq_fixture_path("qlora_tiny", model_dir, sizeof model_dir);
    lq_fixture_path("qlora_tiny/train.jsonl", train_data, sizeof train_data);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parts_by_hand),
        cmocka_unit_test(test_base_matches_loaded_model),
        cmocka_unit_test(test_gguf_native),
        cmocka_unit_test(test_checkpointing_lowers_activations),
        cmocka_unit_test(test_activations_match_arena),
        cmocka_unit_test(test_smollm2),
        cmocka_unit_test(test_bad_input_and_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
