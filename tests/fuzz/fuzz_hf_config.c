/* tests/fuzz/fuzz_hf_config.c: libFuzzer target for the Hugging Face config.json reader
 * (io/hf_config.c, lq_llama_config_parse): the input is the JSON text; an accepted config must
 * satisfy what the models rely on, and its RoPE frequencies are computed. */
#include <math.h>

#include "io/io.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lq_llama_config c;
    lq_err err;
    lq_err_clear(&err);
    if (lq_llama_config_parse(&c, (const char *)data, size, "config.json", &err) != LQ_OK) {
        fuzz_note(err.msg);
        if (err.status == LQ_OK || !strstr(err.msg, "config.json")) abort();
        return 0;
    }
    /* the invariants io.h promises for an accepted config */
    if (c.hidden_size <= 0 || c.intermediate_size <= 0 || c.num_hidden_layers <= 0 || c.num_attention_heads <= 0 ||
        c.num_key_value_heads <= 0 || c.head_dim <= 0 || c.vocab_size <= 0 || c.max_position_embeddings <= 0)
        abort();
    if (c.num_attention_heads % c.num_key_value_heads != 0 || c.head_dim % 2 != 0) abort();
    if (c.n_bos < 0 || c.n_bos > LQ_LLAMA_MAX_TOKEN_IDS || c.n_eos < 0 || c.n_eos > LQ_LLAMA_MAX_TOKEN_IDS) abort();
    if ((unsigned)c.arch >= LQ_LLAMA_ARCH_COUNT || (unsigned)c.rope_type >= LQ_ROPE_TYPE_COUNT) abort();
    if (!(c.rms_norm_eps > 0) || !(c.rope_theta > 0) || !isfinite(c.rope_theta)) abort();
    if (c.head_dim <= 4096) {
        float inv[2048];
        if (lq_llama_rope_inv_freq(&c, inv) != LQ_OK) abort();
    }
    return 0;
}
