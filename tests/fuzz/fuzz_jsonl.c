/* tests/fuzz/fuzz_jsonl.c: libFuzzer target for the training-data loaders (datasets/data_text.c:
 * text, JSONL "text", Alpaca, chat; then packing, datasets/pack.c). The first input byte picks
 * the format (bits 0-1: text, jsonl, alpaca, chat), add_special (bit 2), a ChatML-family chat
 * template (bit 3) and the packing length (bits 4-7); the rest is the data file. */
#include "datasets/datasets.h"
#include "tests/fuzz/fuzz_tok_small.h"
#include "tests/fuzz/fuzz_util.h"

/* SmolLM2's kind of template: ChatML with a default system prompt literal. */
static const char chatml_template[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
    "'<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + "
    "message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";

static void check_text(const lq_tokenizer *tok, const lq_doc *d, const char *line, size_t len) {
    char *z = malloc(len + 1);
    if (!z) abort();
    memcpy(z, line, len);
    z[len] = 0;
    cJSON *o = cJSON_ParseWithLength(z, len);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "text");
    if (cJSON_IsString(t)) {
        char *want = NULL, *got = NULL;
        size_t wl = 0, gl = 0;
        lq_err e;
        lq_err_clear(&e);
        if (lq_utf8_lossy(t->valuestring, strlen(t->valuestring), &want, &wl, NULL, &e) != LQ_OK) abort();
        if (lq_tokenizer_decode(tok, d->ids, d->n - 1, false, &got, &gl, &e) != LQ_OK) abort();
        if (gl != wl || memcmp(got, want, wl) != 0) {
            fprintf(stderr, "jsonl: the ids decode to \"%.*s\", the text is \"%.*s\"\n", (int)gl, got, (int)wl, want);
            abort();
        }
        free(want);
        free(got);
    }
    cJSON_Delete(o);
    free(z);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const lq_tokenizer *tok = fuzz_small_tokenizer();
    uint8_t mode = data[0];
    static const lq_data_format formats[4] = {LQ_DATA_TEXT, LQ_DATA_JSONL, LQ_DATA_ALPACA, LQ_DATA_CHAT};
    lq_data_opts o = {.format = formats[mode & 3],
                      .eos_id = 260,
                      .add_special = (mode >> 2) & 1,
                      .chat_template = (mode >> 3) & 1 ? chatml_template : NULL};
    const char *path = fuzz_write("data.jsonl", data + 1, size - 1);
    lq_docs docs = {0};
    lq_err err;
    lq_err_clear(&err);
    if (lq_data_load(tok, path, &o, &docs, &err) != LQ_OK) {
        fuzz_note(err.msg);
        if (err.status == LQ_OK || !strstr(err.msg, path) || docs.n != 0) abort();
        lq_docs_free(&docs);
        return 0;
    }
    int32_t n_ids = lq_tokenizer_n_ids(tok);
    for (size_t i = 0; i < docs.n; i++) {
        const lq_doc *d = &docs.doc[i];
        /* every document ends with EOS; labels are the id or masked */
        if (d->n < 1 || d->ids[d->n - 1] != o.eos_id) abort();
        for (size_t k = 0; k < d->n; k++)
            if (d->ids[k] < 0 || d->ids[k] >= n_ids || (d->labels[k] != d->ids[k] && d->labels[k] != LQ_IGNORE_INDEX))
                abort();
    }
    /* one JSONL document without the post-processor: its ids (less the EOS) decode to exactly
     * its "text" (the byte-level tokenizer has every byte; invalid UTF-8 comes back as U+FFFD) */
    if (o.format == LQ_DATA_JSONL && !o.add_special && docs.n == 1 && !memchr(data + 1, '\n', size - 1))
        check_text(tok, &docs.doc[0], (const char *)data + 1, size - 1);
    lq_packed p;
    int64_t seq_len = 1 + (mode >> 4) * 3;
    lq_err_clear(&err);
    if (docs.n && lq_pack(&docs, NULL, docs.n, seq_len, 0, &p, &err) == LQ_OK) {
        for (int64_t k = 0; k < p.n_rows * p.seq_len; k++)
            if (p.ids[k] < 0 || p.ids[k] >= n_ids) abort();
        lq_packed_free(&p);
    }
    lq_docs_free(&docs);
    return 0;
}
