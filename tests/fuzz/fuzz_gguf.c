/* tests/fuzz/fuzz_gguf.c: libFuzzer target for the GGUF reader (io/gguf.c, io/gguf_meta.c) and
 * the tokenizer built from GGUF metadata (datasets/tokenizer_gguf.c): the input is a whole .gguf
 * file; every kv and tensor the reader accepts is read back through the public getters. */
#include <math.h>

#include "datasets/datasets.h"
#include "io/io.h"
#include "tests/fuzz/fuzz_util.h"

#define MAX_CONVERT ((int64_t)1 << 16) /* elements converted per tensor */
#define MAX_ELEMS 256                  /* array elements read per kv */

static volatile uint64_t sink;

static void read_kv(const lq_gguf_file *f, const lq_gguf_kv *kv) {
    if (!kv || !kv->key || !kv->key[0] || lq_gguf_find_kv(f, kv->key) != kv) abort();
    uint64_t n = kv->type == LQ_GGUF_ARRAY ? kv->n : 1;
    for (uint64_t i = 0; i < n && i < MAX_ELEMS; i++) {
        uint64_t u;
        int64_t s;
        double d;
        if (lq_gguf_kv_uint(kv, i, &u)) sink += u;
        if (lq_gguf_kv_int(kv, i, &s)) sink += (uint64_t)s;
        if (lq_gguf_kv_float(kv, i, &d)) sink += isnan(d);
        const lq_gguf_str *str = lq_gguf_kv_str(kv, i);
        if (str && str->len) sink += (uint8_t)str->s[str->len - 1];
    }
    uint64_t u;
    if (lq_gguf_kv_uint(kv, n, &u)) abort(); /* one past the end */
    /* the typed getters on every key: each either succeeds or sets an error naming the file */
    lq_err e;
    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    float f32;
    bool b;
    const char *s = NULL;
    lq_gguf_type et;
    lq_err_clear(&e), sink += lq_gguf_get_u32(f, kv->key, &u32, &e);
    lq_err_clear(&e), sink += lq_gguf_get_i32(f, kv->key, &i32, &e);
    lq_err_clear(&e), sink += lq_gguf_get_u64(f, kv->key, &u64, &e);
    lq_err_clear(&e), sink += lq_gguf_get_f32(f, kv->key, &f32, &e);
    lq_err_clear(&e), sink += lq_gguf_get_bool(f, kv->key, &b, &e);
    lq_err_clear(&e);
    if (lq_gguf_get_str(f, kv->key, &s, &e) == LQ_OK) sink += strlen(s);
    lq_err_clear(&e), sink += lq_gguf_get_arr(f, kv->key, &u64, &et, &e);
}

static void try_tokenizer(const lq_gguf_file *f) {
    lq_err e;
    lq_err_clear(&e);
    lq_tok_gguf_info info;
    if (lq_tokenizer_gguf_info(f, &info, &e) != LQ_OK) {
        fuzz_note(e.msg);
        return;
    }
    lq_tokenizer *tok = NULL;
    lq_err_clear(&e);
    if (lq_tokenizer_from_gguf(f, &tok, &e) != LQ_OK) {
        fuzz_note(e.msg);
        if (e.status == LQ_OK) abort();
        return;
    }
    static const char probe[] = "Hello world! 123 <|im_start|>user\n\xc3\xa9t\xc3\xa9 \xff\xfe  x";
    for (int sp = 0; sp < 2; sp++) {
        int32_t *ids = NULL;
        size_t n = 0;
        lq_err_clear(&e);
        if (lq_tokenizer_encode(tok, probe, sizeof probe - 1, sp, &ids, &n, &e) == LQ_OK) {
            char *out = NULL;
            size_t out_len = 0;
            lq_err_clear(&e);
            /* every id encode gives must decode */
            if (lq_tokenizer_decode(tok, ids, n, false, &out, &out_len, &e) != LQ_OK) abort();
            free(out);
            free(ids);
        }
    }
    int32_t nid = lq_tokenizer_n_ids(tok);
    for (int32_t i = 0; i < nid && i < 64; i++) {
        const char *t = lq_tokenizer_id_to_token(tok, i);
        if (t) sink += (uint32_t)lq_tokenizer_token_to_id(tok, t) + lq_tokenizer_is_special(tok, i);
    }
    lq_tokenizer_free(tok);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write("in.gguf", data, size);
    lq_err err;
    lq_err_clear(&err);
    lq_gguf_file *f = NULL;
    if (lq_gguf_open(&f, path, &err) != LQ_OK) {
        fuzz_note(err.msg);
        if (err.status == LQ_OK || !strstr(err.msg, path)) abort();
        return 0;
    }
    for (int64_t i = 0; i < lq_gguf_kv_count(f); i++) read_kv(f, lq_gguf_kv_at(f, i));
    static float buf[MAX_CONVERT];
    for (int64_t i = 0; i < lq_gguf_count(f); i++) {
        const lq_gguf_tensor *t = lq_gguf_tensor_at(f, i);
        if (!t || !t->name || lq_gguf_find(f, t->name) != t) abort();
        if (t->nbytes) sink += ((const uint8_t *)t->data)[0] + ((const uint8_t *)t->data)[t->nbytes - 1];
        if (t->dtype != LQ_DTYPE_COUNT && t->numel <= MAX_CONVERT) {
            lq_err e;
            lq_err_clear(&e);
            sink += lq_gguf_to_f32(t, buf, &e);
        }
    }
    try_tokenizer(f);
    lq_gguf_close(f);
    return 0;
}
