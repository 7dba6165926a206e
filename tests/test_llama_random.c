/* tests/test_llama_random.c: random Llama models (lq_llama_init_random): shapes and init values,
 * determinism, the 4-bit base quantized as a loaded base is (threads or not), bad shapes; and
 * lq_llama_to_device: refused without a device (the model stays usable), or with one the device
 * forward against the CPU forward of the same model. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cuda.h"
#include "models/models_impl.h"
#include "testutil.h"

static lq_llama_config tiny_cfg(bool tied) {
    lq_llama_config c;
    memset(&c, 0, sizeof c);
    c.arch = LQ_LLAMA_ARCH_LLAMA;
    c.hidden_size = 64;
    c.intermediate_size = 96;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 16;
    c.vocab_size = 100;
    c.max_position_embeddings = 64;
    c.rms_norm_eps = 1e-5;
    c.rope_theta = 10000.0;
    c.rope_type = LQ_ROPE_DEFAULT;
    c.rope_factor = 1.0;
    c.tie_word_embeddings = tied;
    c.qkv_bias = true;
    c.dtype = LQ_DTYPE_F32;
    return c;
}

static lq_llama_model *make_model(const lq_llama_config *c, lq_base_quant q, uint64_t seed) {
    lq_llama_load_opts o = {.quant = q, .block_size = 64, .double_quant = true};
    lq_llama_model *m = NULL;
    lq_err err = {0};
    if (lq_llama_init_random(c, &o, seed, &m, &err) != LQ_OK) fail_msg("init_random: %s", err.msg);
    return m;
}

static void test_shapes_and_values(void **state) {
    (void)state;
    lq_llama_config c = tiny_cfg(false);
    lq_llama_model *m = make_model(&c, LQ_BASE_KEEP, 7);
    assert_int_equal(m->embed->ne[0], 100);
    assert_int_equal(m->embed->ne[1], 64);
    assert_ptr_not_equal(m->lm_head, m->embed);
    const lq_llama_layer *L = &m->layers[1];
    assert_int_equal(L->wq->ne[0], 64);
    assert_int_equal(L->wk->ne[0], 32);
    assert_int_equal(L->wv->ne[1], 64);
    assert_int_equal(L->wo->ne[1], 64);
    assert_int_equal(L->wgate->ne[0], 96);
    assert_int_equal(L->wdown->ne[1], 96);
    assert_int_equal(L->wq->dtype, LQ_DTYPE_F32);
    assert_non_null(L->bq);
    assert_null(L->bo);
    assert_string_equal(L->wq->name, "model.layers.1.self_attn.q_proj.weight");
    for (int64_t i = 0; i < 64; i++) {
        assert_true(((const float *)L->attn_norm->data)[i] == 1.0f);
        assert_true(((const float *)m->out_norm->data)[i] == 1.0f);
    }
    for (int64_t i = 0; i < 32; i++) assert_true(((const float *)L->bk->data)[i] == 0.0f);
    /* std 0.02 over the 100 x 64 embedding, mean near 0 */
    double s = 0, s2 = 0;
    const float *e = m->embed->data;
    for (int64_t i = 0; i < 6400; i++) s += e[i], s2 += (double)e[i] * e[i];
    double mean = s / 6400, sd = sqrt(s2 / 6400 - mean * mean);
    assert_true(fabs(mean) < 0.002);
    assert_true(sd > 0.018 && sd < 0.022);
    /* deterministic in the seed, different across seeds */
    lq_llama_model *m2 = make_model(&c, LQ_BASE_KEEP, 7), *m3 = make_model(&c, LQ_BASE_KEEP, 8);
    assert_memory_equal(m->layers[0].wup->data, m2->layers[0].wup->data, lq_nbytes(m->layers[0].wup));
    assert_true(memcmp(m->layers[0].wup->data, m3->layers[0].wup->data, lq_nbytes(m->layers[0].wup)) != 0);
    /* a forward runs and gives finite logits */
    lq_ctx *ctx = lq_test_ctx(2);
    int64_t is[2] = {1, 5};
    lq_tensor *ids = lq_new(ctx, LQ_DTYPE_I32, 2, is);
    for (int i = 0; i < 5; i++) ((int32_t *)ids->data)[i] = 3 * i + 1;
    lq_tensor *lg = lq_llama_forward(ctx, m, ids, 0, NULL);
    assert_ctx_ok(ctx);
    for (int64_t i = 0; i < lq_numel(lg); i++) assert_true(isfinite(((const float *)lg->data)[i]));
    lq_ctx_free(ctx);
    lq_llama_free(m);
    lq_llama_free(m2);
    lq_llama_free(m3);

    c = tiny_cfg(true);
    m = make_model(&c, LQ_BASE_KEEP, 7);
    assert_ptr_equal(m->lm_head, m->embed);
    lq_llama_free(m);
}

/* The NF4 base of a random model is the f32 random model's projections quantized one by one, as
 * lq_llama_load_ex quantizes a loaded base: the same codes and the same dequantized values. */
static void test_nf4_as_load(void **state) {
    (void)state;
    lq_llama_config c = tiny_cfg(false);
    lq_llama_model *f = make_model(&c, LQ_BASE_KEEP, 3), *q = make_model(&c, LQ_BASE_NF4, 3);
    lq_err err = {0};
    for (int64_t l = 0; l < c.num_hidden_layers; l++)
        for (int t = 0; t < LQ_LORA_N_TARGETS; t++) {
            const lq_tensor *wf = *lq_llama_weight_slot(&f->layers[l], (lq_lora_target)t);
            const lq_tensor *wq = *lq_llama_weight_slot(&q->layers[l], (lq_lora_target)t);
            assert_int_equal(wq->dtype, LQ_DTYPE_NF4);
            assert_string_equal(wq->name, wf->name);
            int64_t n = lq_numel(wf);
            uint8_t *codes = malloc((size_t)(n + 1) / 2);
            lq_qstate *qs = NULL;
            assert_int_equal(lq_bnb4_quantize(LQ_DTYPE_NF4, wf->data, n, 64, true, codes, &qs, &err), LQ_OK);
            assert_memory_equal(codes, wq->data, (size_t)(n + 1) / 2);
            float *a = malloc((size_t)n * sizeof(float)), *b = malloc((size_t)n * sizeof(float));
            lq_bnb4_dequantize(LQ_DTYPE_NF4, codes, n, qs, a);
            lq_bnb4_dequantize(LQ_DTYPE_NF4, wq->data, n, wq->qs, b);
            assert_memory_equal(a, b, (size_t)n * sizeof(float));
            free(a);
            free(b);
            free(codes);
            lq_qstate_free(qs);
        }
    /* the embedding, norms and lm_head stay f32 */
    assert_int_equal(q->lm_head->dtype, LQ_DTYPE_F32);
    assert_memory_equal(q->embed->data, f->embed->data, lq_nbytes(f->embed));
    lq_llama_free(f);
    lq_llama_free(q);
}

static void test_bad_shapes(void **state) {
    (void)state;
    lq_llama_model *m = NULL;
    lq_err err = {0};
    lq_llama_config c = tiny_cfg(false);
    c.num_key_value_heads = 3; /* 4 heads are not a multiple of 3 */
    assert_int_equal(lq_llama_init_random(&c, NULL, 1, &m, &err), LQ_ERR_ARG);
    assert_null(m);
    assert_non_null(strstr(err.msg, "not a model shape"));
    lq_err_clear(&err);
    c = tiny_cfg(false);
    c.vocab_size = 0;
    assert_int_equal(lq_llama_init_random(&c, NULL, 1, &m, &err), LQ_ERR_ARG);
    lq_err_clear(&err);
    lq_llama_load_opts o = {.quant = LQ_BASE_NF4, .block_size = 48};
    c = tiny_cfg(false);
    assert_int_equal(lq_llama_init_random(&c, &o, 1, &m, &err), LQ_ERR_ARG);
    assert_null(m);
}

/* Without a device the move is refused and the model still runs on the CPU; with one, the device
 * forward (fp32 products) matches the CPU forward of the same random NF4 model. */
static void test_to_device(void **state) {
    (void)state;
    lq_llama_config c = tiny_cfg(false);
    lq_llama_model *cpu = make_model(&c, LQ_BASE_NF4, 11), *dev = make_model(&c, LQ_BASE_NF4, 11);
    int64_t is[2] = {2, 7};
    lq_ctx *ctx = lq_test_ctx(2);
    lq_tensor *ids = lq_new(ctx, LQ_DTYPE_I32, 2, is);
    for (int i = 0; i < 14; i++) ((int32_t *)ids->data)[i] = (7 * i + 3) % 100;
    lq_tensor *want = lq_llama_forward(ctx, cpu, ids, 0, NULL);
    assert_ctx_ok(ctx);
    lq_err err = {0};
    char why[256];
    if (lq_cuda_devices(why, sizeof why) < 1) {
        assert_int_not_equal(lq_llama_to_device(dev, &err), LQ_OK);
        lq_tensor *again = lq_llama_forward(ctx, dev, ids, 0, NULL); /* nothing moved */
        assert_ctx_ok(ctx);
        assert_memory_equal(again->data, want->data, lq_nbytes(want));
        lq_ctx_free(ctx);
        lq_llama_free(cpu);
        lq_llama_free(dev);
        print_message("no CUDA device (%s): the device forward is not compared\n", why);
        return;
    }
    assert_int_equal(lq_llama_to_device(dev, &err), LQ_OK);
    assert_int_equal(dev->embed->device, LQ_DEVICE_CUDA);
    assert_int_equal(dev->layers[1].wdown->device, LQ_DEVICE_CUDA);
    assert_true(dev->layers[1].wdown->qs && dev->layers[1].wdown->qs->device);
    assert_int_equal(dev->layers[0].bq->device, LQ_DEVICE_CUDA);
    lq_ctx *dctx = NULL;
    lq_ctx_opts o = {.n_threads = 1, .seed = 1234, .device = LQ_DEVICE_CUDA, .cuda_math = LQ_CUDA_MATH_FP32};
    assert_int_equal(lq_ctx_init(&dctx, &o, &err), LQ_OK);
    lq_tensor *dids = lq_new(dctx, LQ_DTYPE_I32, 2, is);
    memcpy(dids->data, ids->data, 14 * sizeof(int32_t));
    lq_tensor *got = lq_contiguous(dctx, lq_llama_forward(dctx, dev, dids, 0, NULL));
    assert_ctx_ok(dctx);
    float *h = malloc(lq_nbytes(want));
    assert_int_equal(lq_tensor_download(dctx, got, h), LQ_OK);
    assert_allclose(h, want->data, lq_numel(want), 1e-3, 1e-4, "device logits");
    free(h);
    lq_ctx_free(dctx);
    lq_ctx_free(ctx);
    lq_llama_free(cpu);
    lq_llama_free(dev);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shapes_and_values),
        cmocka_unit_test(test_nf4_as_load),
        cmocka_unit_test(test_bad_shapes),
        cmocka_unit_test(test_to_device),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
