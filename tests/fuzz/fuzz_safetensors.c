/* tests/fuzz/fuzz_safetensors.c: libFuzzer target for the safetensors reader (io/safetensors.c):
 * the input is a whole .safetensors file; every tensor the reader accepts is then read back. */
#include <math.h>

#include "io/io.h"
#include "tests/fuzz/fuzz_util.h"

/* Tensors above this many elements are not converted (the data range was validated by open;
 * converting a huge one only costs time). */
#define MAX_CONVERT ((int64_t)1 << 16)

static volatile uint64_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("in.safetensors", data, size);
    lq_err err;
    lq_err_clear(&err);
    lq_st_file *f = NULL;
    if (lq_st_open(&f, path, &err) != LQ_OK) {
        fuzz_note(err.msg);
        /* a refusal must say why and name the file */
        if (err.status == LQ_OK || !strstr(err.msg, path)) abort();
        return 0;
    }
    static float buf[MAX_CONVERT];
    int64_t n = lq_st_count(f);
    uint64_t end = 0; /* a sink, so the reads are not optimised away */
    for (int64_t i = 0; i < n; i++) {
        const lq_st_tensor *t = lq_st_tensor_at(f, i);
        if (!t || !t->name || !t->name[0] || lq_st_find(f, t->name) != t) abort();
        if ((uint64_t)t->numel * lq_st_dtype_size(t->dtype) != t->nbytes) abort();
        /* the data must lie inside the file: touch its first and last byte */
        if (t->nbytes) {
            const uint8_t *d = t->data;
            end ^= d[0] ^ d[t->nbytes - 1];
        }
        if (t->numel <= MAX_CONVERT) {
            lq_err e;
            lq_err_clear(&e);
            if (lq_st_to_f32(t, buf, &e) == LQ_OK)
                for (int64_t k = 0; k < t->numel; k++) end += isnan(buf[k]);
        }
    }
    if (lq_st_tensor_at(f, n) != NULL || lq_st_tensor_at(f, -1) != NULL) abort();
    int64_t nm = lq_st_metadata_count(f);
    for (int64_t i = 0; i < nm; i++) {
        const char *k = NULL, *v = NULL;
        if (!lq_st_metadata_at(f, i, &k, &v) || !k || !v) abort();
        if (!lq_st_metadata(f, k)) abort();
    }
    lq_st_close(f);
    sink += end;
    return 0;
}
