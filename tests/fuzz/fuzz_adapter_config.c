/* tests/fuzz/fuzz_adapter_config.c: libFuzzer target for the PEFT adapter loader (lora/peft.c,
 * lq_peft_load: adapter_config.json validation, then the tensors' names and shapes against it).
 * The input is the adapter_config.json text, optionally followed by a NUL byte and the bytes of
 * adapter_model.safetensors; without one, a fixed valid adapter (q_proj of layer 0, r = 2) is
 * used, so the config's checks are reached by every input. */
#include "lora/lora.h"
#include "tests/fuzz/fuzz_util.h"

/* A valid adapter_model.safetensors: lora_A (2, 4) and lora_B (4, 2), F32. */
static size_t fixed_adapter(uint8_t *out, size_t cap) {
    static const char hdr[] =
        "{\"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight\":{\"dtype\":\"F32\",\"shape\":[2,4],"
        "\"data_offsets\":[0,32]},\"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight\":{\"dtype\":"
        "\"F32\",\"shape\":[4,2],\"data_offsets\":[32,64]}}";
    uint64_t hl = sizeof hdr - 1;
    size_t n = 8 + hl + 64;
    if (n > cap) abort();
    for (int i = 0; i < 8; i++) out[i] = (uint8_t)(hl >> (8 * i));
    memcpy(out + 8, hdr, hl);
    for (int i = 0; i < 16; i++) {
        float v = 0.125f * (float)(i - 8);
        memcpy(out + 8 + hl + 4 * i, &v, 4);
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static uint8_t fixed[1024];
    static size_t fixed_n;
    if (!fixed_n) fixed_n = fixed_adapter(fixed, sizeof fixed);
    size_t cl = fuzz_split(data, size, "", 1);
    fuzz_write("adapter_config.json", data, cl);
    if (cl < size) fuzz_write("adapter_model.safetensors", data + cl + 1, size - cl - 1);
    else fuzz_write("adapter_model.safetensors", fixed, fixed_n);
    lq_lora_set *s = NULL;
    lq_err err;
    lq_err_clear(&err);
    if (lq_peft_load(&s, fuzz_dir(), &err) != LQ_OK) {
        fuzz_note(err.msg);
        if (err.status == LQ_OK || !strstr(err.msg, fuzz_dir()) || s) abort();
        return 0;
    }
    /* an accepted adapter: rank and scale as the config says, A (r, in) and B (out, r) */
    if (!s || s->cfg.r < 1 || s->n < 1) abort();
    for (int i = 0; i < s->n; i++)
        if (!s->mods[i].A || !s->mods[i].B) abort();
    lq_lora_set_free(s);
    return 0;
}
