/* tests/fuzz/fuzz_tokenizer_json.c: libFuzzer target for the tokenizer.json loader
 * (datasets/tokenizer_json.c) and the encoder / decoder it builds (datasets/tokenizer.c): the
 * input is the JSON text, optionally followed by a NUL byte and a text to encode (else a fixed
 * probe text is encoded). */
#include "datasets/datasets.h"
#include "tests/fuzz/fuzz_util.h"

static volatile uint64_t sink;

static void encode_decode(const lq_tokenizer *tok, const char *text, size_t len) {
    for (int sp = 0; sp < 2; sp++) {
        int32_t *ids = NULL;
        size_t n = 0;
        lq_err e;
        lq_err_clear(&e);
        if (lq_tokenizer_encode(tok, text, len, sp, &ids, &n, &e) != LQ_OK) {
            if (e.status == LQ_OK) abort();
            continue;
        }
        if (!ids) abort(); /* never NULL on success */
        for (int skip = 0; skip < 2; skip++) {
            char *out = NULL;
            size_t out_len = 0;
            lq_err_clear(&e);
            /* ids that encode returned must all decode */
            if (lq_tokenizer_decode(tok, ids, n, skip, &out, &out_len, &e) != LQ_OK) abort();
            if (out[out_len] != 0) abort();
            char *fixed = NULL;
            size_t fl = 0, bad = 0;
            if (lq_utf8_lossy(out, out_len, &fixed, &fl, &bad, &e) == LQ_OK) sink += fl + bad;
            free(fixed);
            free(out);
        }
        free(ids);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char probe[] = "Hello, world! It's 2024: \xc3\xa9t\xc3\xa9 <|endoftext|> 12345  \t\n x\xff\xc0\x80";
    size_t jl = fuzz_split(data, size, "", 1);
    lq_tokenizer *tok = NULL;
    lq_err err;
    lq_err_clear(&err);
    if (lq_tokenizer_from_json(&tok, (const char *)data, jl, "tokenizer.json", &err) != LQ_OK) {
        fuzz_note(err.msg);
        if (err.status == LQ_OK || !strstr(err.msg, "tokenizer.json")) abort();
        return 0;
    }
    int32_t nid = lq_tokenizer_n_ids(tok);
    if (nid <= 0 || nid > LQ_TOK_MAX_ID) abort();
    for (int32_t i = 0; i < nid && i < 512; i++) {
        const char *t = lq_tokenizer_id_to_token(tok, i);
        if (t) sink += (uint32_t)lq_tokenizer_token_to_id(tok, t) + lq_tokenizer_is_special(tok, i);
    }
    if (lq_tokenizer_id_to_token(tok, nid) || lq_tokenizer_id_to_token(tok, -1)) abort();
    if (jl < size) encode_decode(tok, (const char *)data + jl + 1, size - jl - 1);
    else encode_decode(tok, probe, sizeof probe - 1);
    lq_tokenizer_free(tok);
    return 0;
}
