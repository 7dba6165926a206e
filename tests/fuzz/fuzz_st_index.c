/* tests/fuzz/fuzz_st_index.c: libFuzzer target for sharded safetensors models
 * (io/safetensors_index.c, lq_st_model_open on a model.safetensors.index.json): the input is the
 * index JSON; the scratch folder holds two valid shards (model-00001-of-00002.safetensors with
 * tensors "a.weight" and "b.bias", model-00002-of-00002.safetensors with "c.weight") for its weight_map to name. */
#include "io/io.h"
#include "tests/fuzz/fuzz_util.h"

/* A safetensors file of n F32 tensors of 2 elements each, named by names[]. */
static void write_shard(const char *file, const char *const *names, int n) {
    char hdr[512];
    int hl = 0;
    hl += snprintf(hdr + hl, sizeof hdr - (size_t)hl, "{");
    for (int i = 0; i < n; i++)
        hl += snprintf(hdr + hl, sizeof hdr - (size_t)hl, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[%d,%d]}",
                       i ? "," : "", names[i], 8 * i, 8 * i + 8);
    hl += snprintf(hdr + hl, sizeof hdr - (size_t)hl, "}");
    uint8_t buf[1024];
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, hdr, (size_t)hl);
    memset(buf + 8 + hl, 0, (size_t)(8 * n));
    fuzz_write(file, buf, 8 + (size_t)hl + 8 * (size_t)n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready;
    if (!ready) {
        static const char *const s1[] = {"a.weight", "b.bias"}, *const s2[] = {"c.weight"};
        write_shard("model-00001-of-00002.safetensors", s1, 2);
        write_shard("model-00002-of-00002.safetensors", s2, 1);
        ready = 1;
    }
    const char *path = fuzz_write("model.safetensors.index.json", data, size);
    lq_st_model *m = NULL;
    lq_err err;
    lq_err_clear(&err);
    if (lq_st_model_open(&m, path, &err) != LQ_OK) {
        fuzz_note(err.msg);
        if (err.status == LQ_OK || !strstr(err.msg, fuzz_dir()) || m) abort();
        return 0;
    }
    /* accepted: names sorted and unique, each found by name, shards listed */
    int64_t n = lq_st_model_count(m);
    for (int64_t i = 0; i < n; i++) {
        const lq_st_tensor *t = lq_st_model_tensor_at(m, i);
        if (!t || lq_st_model_find(m, t->name) != t) abort();
        if (i > 0 && strcmp(lq_st_model_tensor_at(m, i - 1)->name, t->name) >= 0) abort();
    }
    for (int64_t i = 0; i < lq_st_model_shard_count(m); i++)
        if (!lq_st_model_shard(m, i)) abort();
    lq_st_model_close(m);
    return 0;
}
