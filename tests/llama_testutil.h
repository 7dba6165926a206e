/* tests/llama_testutil.h: helpers the Llama export / save tests share: load a model or fail, and
 * the logits of a fixed id sequence. */
#ifndef LQ_TESTS_LLAMA_TESTUTIL_H
#define LQ_TESTS_LLAMA_TESTUTIL_H

#include <stdlib.h>
#include <string.h>

#include "models/models.h"
#include "testutil.h"

#define T_IDS 7

static inline lq_llama_model *load(const char *path) {
    lq_err err;
    lq_err_clear(&err);
    lq_llama_model *m = NULL;
    if (lq_llama_load(path, &m, &err) != LQ_OK) fail_msg("load %s: %s", path, err.msg);
    return m;
}

static inline const char *fx(const char *rel, char *buf, size_t n) { return lq_fixture_path(rel, buf, n); }

/* Logits of a fixed id sequence, (T_IDS, V) floats; caller frees. */
static inline float *logits(lq_llama_model *m) {
    lq_ctx *ctx = lq_test_ctx(2);
    lq_tensor *ids = lq_new(ctx, LQ_DTYPE_I32, 2, (int64_t[]){1, T_IDS});
    int64_t V = lq_llama_model_config(m)->vocab_size;
    for (int i = 0; i < T_IDS; i++) ((int32_t *)ids->data)[i] = (int32_t)((i * 37 + 5) % V);
    lq_tensor *y = lq_llama_forward(ctx, m, ids, 0, NULL);
    assert_ctx_ok(ctx);
    float *out = malloc((size_t)(T_IDS * V) * sizeof(float));
    memcpy(out, y->data, (size_t)(T_IDS * V) * sizeof(float));
    lq_ctx_free(ctx);
    return out;
}

#endif
