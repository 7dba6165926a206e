/* tests/test_datasets.c: text / JSONL / Alpaca / chat loaders and their masks, packing, shuffle, split, bad input. */
#include "tests/testutil.h"

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "datasets/datasets.h"

#define EOS 0 /* <|endoftext|> in tests/fixtures/tokenizer/llama3.json */
#define BOS 3 /* <|begin_of_text|> */
#define IM_END 2

static int setup(void **state) {
    char p[512];
    lq_err err = {0};
    lq_tokenizer *t = NULL;
    if (lq_tokenizer_load(&t, lq_fixture_path("tokenizer/llama3.json", p, sizeof p), &err) != LQ_OK) {
        fprintf(stderr, "tokenizer: %s\n", err.msg);
        return -1;
    }
    *state = t;
    return 0;
}

static int teardown(void **state) {
    lq_tokenizer_free(*state);
    return 0;
}

/* Encoded ids of s (test-side reference). */
static int32_t *enc(const lq_tokenizer *t, const char *s, bool special, size_t *n) {
    int32_t *ids = NULL;
    lq_err err = {0};
    if (lq_tokenizer_encode(t, s, strlen(s), special, &ids, n, &err) != LQ_OK) fail_msg("encode: %s", err.msg);
    return ids;
}

static void load_ok(const lq_tokenizer *t, const char *rel, lq_data_opts *o, lq_docs *docs) {
    char p[512];
    lq_err err = {0};
    lq_status st = lq_data_load(t, lq_fixture_path(rel, p, sizeof p), o, docs, &err);
    if (st != LQ_OK) fail_msg("%s: %s", rel, err.msg);
}

/* Expects doc->ids == a ++ b ++ [EOS], a masked when !train_a, b trained, EOS trained as told. */
static void expect_doc(const lq_doc *d, const int32_t *a, size_t na, bool train_a, const int32_t *b, size_t nb,
                       bool train_eos) {
    assert_int_equal(d->n, na + nb + 1);
    for (size_t i = 0; i < na; i++) {
        assert_int_equal(d->ids[i], a[i]);
        assert_int_equal(d->labels[i], train_a ? a[i] : LQ_IGNORE_INDEX);
    }
    for (size_t i = 0; i < nb; i++) {
        assert_int_equal(d->ids[na + i], b[i]);
        assert_int_equal(d->labels[na + i], b[i]);
    }
    assert_int_equal(d->ids[d->n - 1], EOS);
    assert_int_equal(d->labels[d->n - 1], train_eos ? EOS : LQ_IGNORE_INDEX);
}

static void test_text(void **state) {
    const lq_tokenizer *t = *state;
    lq_data_stats stats = {0};
    lq_data_opts o = {.format = LQ_DATA_TEXT, .eos_id = EOS, .stats = &stats};
    lq_docs docs = {0};
    load_ok(t, "datasets/text_dir", &o, &docs); /* a.txt, b.txt; notes.md ignored */
    assert_int_equal(docs.n, 2);
    assert_int_equal(stats.n_encode, 2);
    size_t na, nb;
    int32_t *a = enc(t, "Hello world.\n\nA new paragraph.\n", false, &na);
    int32_t *b = enc(t, "The second file.\n", false, &nb);
    expect_doc(&docs.doc[0], a, na, true, NULL, 0, true);
    expect_doc(&docs.doc[1], b, nb, true, NULL, 0, true);
    /* A single file, appended, with the BOS of the post-processor. */
    o.add_special = true;
    load_ok(t, "datasets/text_dir/b.txt", &o, &docs);
    assert_int_equal(docs.n, 3);
    free(b);
    b = enc(t, "The second file.\n", true, &nb);
    assert_int_equal(b[0], BOS);
    expect_doc(&docs.doc[2], b, nb, true, NULL, 0, true);
    free(a);
    free(b);
    lq_docs_free(&docs);
    assert_int_equal(docs.n, 0);
}

static void test_jsonl(void **state) {
    const lq_tokenizer *t = *state;
    lq_data_opts o = {.format = LQ_DATA_JSONL, .eos_id = EOS};
    lq_docs docs = {0};
    load_ok(t, "datasets/plain.jsonl", &o, &docs); /* the blank line is skipped */
    assert_int_equal(docs.n, 3);
    const char *want[] = {"The quick brown fox.", "Jumps over the lazy dog.", "Third one."};
    for (int i = 0; i < 3; i++) {
        size_t n;
        int32_t *ids = enc(t, want[i], false, &n);
        expect_doc(&docs.doc[i], ids, n, true, NULL, 0, true);
        free(ids);
    }
    lq_docs_free(&docs);
}

static void test_alpaca(void **state) {
    const lq_tokenizer *t = *state;
    lq_data_opts o = {.format = LQ_DATA_ALPACA, .eos_id = EOS, .add_special = true};
    lq_docs docs = {0};
    load_ok(t, "datasets/alpaca.jsonl", &o, &docs);
    assert_int_equal(docs.n, 3);
    const char *prompts[] = {
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd the numbers.\n\n"
        "### Input:\n2 and 3\n\n### Response:\n",
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nSay hello.\n\n### Response:\n",
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nName a color.\n\n### Response:\n"};
    const char *outs[] = {"5", "Hello there!", "Blue."};
    for (int i = 0; i < 3; i++) {
        size_t np, no;
        int32_t *p = enc(t, prompts[i], true, &np), *r = enc(t, outs[i], false, &no);
        assert_int_equal(p[0], BOS);
        expect_doc(&docs.doc[i], p, np, false, r, no, true);
        size_t trained = 0;
        for (size_t k = 0; k < docs.doc[i].n; k++) trained += docs.doc[i].labels[k] != LQ_IGNORE_INDEX;
        assert_int_equal(trained, no + 1); /* output + EOS */
        free(p);
        free(r);
    }
    lq_docs_free(&docs);
}

static void test_chat(void **state) {
    const lq_tokenizer *t = *state;
    lq_data_stats stats = {0};
    lq_data_opts o = {.format = LQ_DATA_CHAT, .eos_id = EOS, .stats = &stats};
    lq_docs docs = {0};
    load_ok(t, "datasets/chat.jsonl", &o, &docs);
    assert_int_equal(docs.n, 2);
    assert_int_equal(stats.n_encode, 3 * 7); /* three pieces per message */
    lq_chat_msg c0[] = {{"system", "You are terse."}, {"user", "Hi?"}, {"assistant", "Hello."}};
    lq_chat_msg c1[] = {{"user", "2+2?"}, {"assistant", "4"}, {"user", "And 3+3?"}, {"assistant", "6, of course."}};
    const lq_chat_msg *convs[] = {c0, c1};
    size_t lens[] = {3, 4};
    for (int c = 0; c < 2; c++) {
        const lq_doc *d = &docs.doc[c];
        /* The ids decode to the ChatML rendering (+ EOS). */
        char *want = NULL, *got = NULL;
        size_t wl, gl;
        lq_err err = {0};
        assert_int_equal(lq_chat_render_chatml(convs[c], lens[c], false, &want, &wl, &err), LQ_OK);
        assert_int_equal(lq_tokenizer_decode(t, d->ids, d->n - 1, false, &got, &gl, &err), LQ_OK);
        assert_string_equal(got, want);
        free(want);
        free(got);
        /* Trained: exactly the assistant contents + <|im_end|>, in order. */
        size_t k = 0, want_trained = 0;
        for (size_t m = 0; m < lens[c]; m++) {
            char buf[256];
            size_t nh, nb, nn;
            snprintf(buf, sizeof buf, "<|im_start|>%s\n", convs[c][m].role);
            int32_t *h = enc(t, buf, false, &nh);
            snprintf(buf, sizeof buf, "%s<|im_end|>", convs[c][m].content);
            int32_t *b = enc(t, buf, false, &nb), *nl = enc(t, "\n", false, &nn);
            bool asst = strcmp(convs[c][m].role, "assistant") == 0;
            assert_int_equal(b[nb - 1], IM_END);
            for (size_t i = 0; i < nh; i++, k++) assert_int_equal(d->labels[k], LQ_IGNORE_INDEX);
            for (size_t i = 0; i < nb; i++, k++) assert_int_equal(d->labels[k], asst ? b[i] : LQ_IGNORE_INDEX);
            for (size_t i = 0; i < nn; i++, k++) assert_int_equal(d->labels[k], LQ_IGNORE_INDEX);
            if (asst) want_trained += nb;
            free(h);
            free(b);
            free(nl);
        }
        assert_int_equal(k + 1, d->n);
        assert_int_equal(d->ids[k], EOS);
        assert_int_equal(d->labels[k], LQ_IGNORE_INDEX);
        size_t trained = 0;
        for (size_t i = 0; i < d->n; i++) trained += d->labels[i] != LQ_IGNORE_INDEX;
        assert_int_equal(trained, want_trained);
    }
    lq_docs_free(&docs);
    /* A ChatML-family template is accepted, anything else is not. */
    o.chat_template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";
    load_ok(t, "datasets/chat.jsonl", &o, &docs);
    assert_int_equal(docs.n, 2);
    lq_docs_free(&docs);
    o.chat_template = "{{ bos_token }}{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}";
    char p[512];
    lq_err err = {0};
    assert_int_equal(lq_data_load(t, lq_fixture_path("datasets/chat.jsonl", p, sizeof p), &o, &docs, &err),
                     LQ_ERR_UNSUPPORTED);
    assert_int_equal(docs.n, 0);
}

/* Loading rel as fmt fails with want and a message holding both needles; docs stay as they were. */
static void expect_fail(const lq_tokenizer *t, const char *rel, lq_data_format fmt, lq_status want, const char *n1,
                        const char *n2) {
    char p[512];
    lq_err err = {0};
    lq_data_opts o = {.format = fmt, .eos_id = EOS};
    lq_docs docs = {0};
    lq_status st = lq_data_load(t, lq_fixture_path(rel, p, sizeof p), &o, &docs, &err);
    if (st != want) fail_msg("%s: got %s (%s), want %s", rel, lq_status_name(st), err.msg, lq_status_name(want));
    if (!strstr(err.msg, n1) || (n2 && !strstr(err.msg, n2))) fail_msg("%s: message \"%s\"", rel, err.msg);
    assert_int_equal(docs.n, 0);
    lq_docs_free(&docs);
}

static void test_bad_input(void **state) {
    const lq_tokenizer *t = *state;
    expect_fail(t, "datasets/bad_json.jsonl", LQ_DATA_JSONL, LQ_ERR_INPUT, "bad_json.jsonl:2:", "bad JSON");
    expect_fail(t, "datasets/missing_field.jsonl", LQ_DATA_ALPACA, LQ_ERR_INPUT, "missing_field.jsonl:3:",
                "missing field \"output\"");
    expect_fail(t, "datasets/plain.jsonl", LQ_DATA_ALPACA, LQ_ERR_INPUT, "plain.jsonl:1:", "\"instruction\"");
    expect_fail(t, "datasets/plain.jsonl", LQ_DATA_CHAT, LQ_ERR_INPUT, "plain.jsonl:1:", "\"messages\"");
    expect_fail(t, "datasets/alpaca.jsonl", LQ_DATA_JSONL, LQ_ERR_INPUT, "alpaca.jsonl:1:", "\"text\"");
    expect_fail(t, "datasets/chat_bad.jsonl", LQ_DATA_CHAT, LQ_ERR_INPUT, "chat_bad.jsonl:1:",
                "\"content\" is not a string");
    expect_fail(t, "datasets/chat_empty.jsonl", LQ_DATA_CHAT, LQ_ERR_INPUT, "chat_empty.jsonl:2:", "non-empty array");
    expect_fail(t, "datasets/chat_notobj.jsonl", LQ_DATA_CHAT, LQ_ERR_INPUT, "chat_notobj.jsonl:1:",
                "messages[1] is not an object");
    expect_fail(t, "datasets/not_object.jsonl", LQ_DATA_JSONL, LQ_ERR_INPUT, "not_object.jsonl:1:",
                "not a JSON object");
    expect_fail(t, "datasets/no_such_file.jsonl", LQ_DATA_JSONL, LQ_ERR_INPUT, "no_such_file.jsonl", NULL);
    expect_fail(t, "datasets/no_such_dir", LQ_DATA_TEXT, LQ_ERR_INPUT, "no_such_dir", NULL);
    expect_fail(t, "datasets", LQ_DATA_TEXT, LQ_ERR_INPUT, "no .txt files", NULL);
    expect_fail(t, "datasets/text_dir", LQ_DATA_JSONL, LQ_ERR_INPUT, "not a regular file", NULL);
    /* An empty file has no records. */
    char path[] = "/tmp/lq_ds_emptyXXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("\n  \n", f);
    fclose(f);
    lq_err err = {0};
    lq_docs docs = {0};
    lq_data_opts o = {.format = LQ_DATA_JSONL, .eos_id = EOS};
    assert_int_equal(lq_data_load(t, path, &o, &docs, &err), LQ_ERR_INPUT);
    assert_non_null(strstr(err.msg, "no records"));
    remove(path);
    /* A bad EOS id. */
    lq_err_clear(&err);
    o.eos_id = lq_tokenizer_n_ids(t);
    assert_int_equal(lq_data_load(t, path, &o, &docs, &err), LQ_ERR_ARG);
    /* A failure after good documents leaves the earlier ones alone. */
    char p[512];
    o.eos_id = EOS;
    load_ok(t, "datasets/plain.jsonl", &o, &docs);
    lq_err_clear(&err);
    assert_int_equal(lq_data_load(t, lq_fixture_path("datasets/bad_json.jsonl", p, sizeof p), &o, &docs, &err),
                     LQ_ERR_INPUT);
    assert_int_equal(docs.n, 3);
    lq_docs_free(&docs);
}

/* A document with ids base, base+1, ... and labels = ids except the first n_masked. */
static lq_doc mkdoc(int32_t base, size_t n, size_t n_masked) {
    lq_doc d = {malloc(n * sizeof(int32_t)), malloc(n * sizeof(int32_t)), n};
    for (size_t i = 0; i < n; i++) {
        d.ids[i] = base + (int32_t)i;
        d.labels[i] = i < n_masked ? LQ_IGNORE_INDEX : d.ids[i];
    }
    return d;
}

static void test_pack(void **state) {
    (void)state;
    lq_docs docs = {calloc(3, sizeof(lq_doc)), 3, 3};
    docs.doc[0] = mkdoc(10, 3, 0);
    docs.doc[1] = mkdoc(20, 4, 2);
    docs.doc[2] = mkdoc(30, 6, 0);
    lq_packed pk;
    lq_err err = {0};
    assert_int_equal(lq_pack(&docs, NULL, 0, 4, 99, &pk, &err), LQ_OK);
    assert_int_equal(pk.n_rows, 4);
    assert_int_equal(pk.seq_len, 4);
    const int32_t I = LQ_IGNORE_INDEX;
    const int32_t ids[] = {10, 11, 12, 20, 21, 22, 23, 30, 31, 32, 33, 34, 35, 99, 99, 99};
    const int32_t lab[] = {11, 12, I, I, 22, 23, I, I, 32, 33, 34, I, I, I, I, I};
    const int32_t doc[] = {0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, -1, -1, -1};
    const int32_t pos[] = {0, 1, 2, 0, 0, 1, 2, 0, 0, 1, 2, 3, 0, 0, 0, 0};
    for (int i = 0; i < 16; i++) {
        assert_int_equal(pk.ids[i], ids[i]);
        assert_int_equal(pk.labels[i], lab[i]);
        assert_int_equal(pk.doc_ids[i], doc[i]);
        assert_int_equal(pk.positions[i], pos[i]);
    }
    lq_packed_free(&pk);
    /* In a given order: doc 2 then doc 0 exactly fill... 6 + 3 = 9 tokens, rows of 3. */
    size_t order[] = {2, 0};
    assert_int_equal(lq_pack(&docs, order, 2, 3, 0, &pk, &err), LQ_OK);
    assert_int_equal(pk.n_rows, 3);
    const int32_t ids2[] = {30, 31, 32, 33, 34, 35, 10, 11, 12};
    const int32_t lab2[] = {31, 32, I, 34, 35, I, 11, 12, I};
    for (int i = 0; i < 9; i++) {
        assert_int_equal(pk.ids[i], ids2[i]);
        assert_int_equal(pk.labels[i], lab2[i]);
        assert_int_equal(pk.doc_ids[i], 0);
        assert_int_equal(pk.positions[i], i % 3);
    }
    lq_packed_free(&pk);
    /* Bad arguments. */
    size_t bad[] = {0, 3};
    assert_int_equal(lq_pack(&docs, bad, 2, 4, 0, &pk, &err), LQ_ERR_ARG);
    lq_err_clear(&err);
    assert_int_equal(lq_pack(&docs, NULL, 0, 1, 0, &pk, &err), LQ_ERR_ARG);
    lq_docs_free(&docs);
    /* Nothing to pack: zero rows. */
    assert_int_equal(lq_pack(&docs, NULL, 0, 8, 0, &pk, &err), LQ_OK);
    assert_int_equal(pk.n_rows, 0);
    lq_packed_free(&pk);
}

static bool is_perm(const size_t *a, size_t n) {
    bool *seen = calloc(n, 1);
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        if (a[i] >= n || seen[a[i]]) ok = false;
        else seen[a[i]] = true;
    }
    free(seen);
    return ok;
}

static void test_shuffle(void **state) {
    (void)state;
    enum { N = 50 };
    size_t a[N], b[N], c[N];
    lq_err err = {0};
    assert_int_equal(lq_data_shuffle(N, 42, a, &err), LQ_OK);
    assert_int_equal(lq_data_shuffle(N, 42, b, &err), LQ_OK);
    assert_int_equal(lq_data_shuffle(N, 43, c, &err), LQ_OK);
    assert_true(is_perm(a, N));
    assert_true(is_perm(c, N));
    assert_memory_equal(a, b, sizeof a);
    assert_memory_not_equal(a, c, sizeof a);
    size_t fixed = 0;
    for (size_t i = 0; i < N; i++) fixed += a[i] == i;
    assert_true(fixed < N / 4); /* it does shuffle */
    assert_int_equal(lq_data_shuffle(0, 1, NULL, &err), LQ_OK);
}

static void test_split(void **state) {
    (void)state;
    lq_err err = {0};
    size_t *tr, *ev, *tr2, *ev2, nt, ne, nt2, ne2;
    assert_int_equal(lq_data_split(10, 0.2, 7, &tr, &nt, &ev, &ne, &err), LQ_OK);
    assert_int_equal(nt, 8);
    assert_int_equal(ne, 2);
    size_t all[10];
    memcpy(all, ev, 2 * sizeof *all);
    memcpy(all + 2, tr, 8 * sizeof *all);
    assert_true(is_perm(all, 10));
    assert_int_equal(lq_data_split(10, 0.2, 7, &tr2, &nt2, &ev2, &ne2, &err), LQ_OK);
    assert_memory_equal(ev, ev2, 2 * sizeof *ev);
    assert_memory_equal(tr, tr2, 8 * sizeof *tr);
    free(tr2);
    free(ev2);
    /* Another seed, another eval set (for this seed pair). */
    assert_int_equal(lq_data_split(10, 0.2, 8, &tr2, &nt2, &ev2, &ne2, &err), LQ_OK);
    assert_true(memcmp(all, ev2, 2 * sizeof *ev2) != 0 || memcmp(all + 2, tr2, 8 * sizeof *tr2) != 0);
    free(tr);
    free(ev);
    free(tr2);
    free(ev2);
    /* A small fraction still gives one; zero gives none; never all. */
    assert_int_equal(lq_data_split(10, 0.01, 1, &tr, &nt, &ev, &ne, &err), LQ_OK);
    assert_int_equal(ne, 1);
    free(tr);
    free(ev);
    assert_int_equal(lq_data_split(10, 0.0, 1, &tr, &nt, &ev, &ne, &err), LQ_OK);
    assert_int_equal(ne, 0);
    assert_null(ev);
    assert_int_equal(nt, 10);
    free(tr);
    assert_int_equal(lq_data_split(4, 0.99, 1, &tr, &nt, &ev, &ne, &err), LQ_OK);
    assert_int_equal(ne, 3);
    assert_int_equal(nt, 1);
    free(tr);
    free(ev);
    assert_int_equal(lq_data_split(1, 0.5, 1, &tr, &nt, &ev, &ne, &err), LQ_OK);
    assert_int_equal(ne, 0);
    assert_int_equal(nt, 1);
    free(tr);
    assert_int_equal(lq_data_split(10, 1.0, 1, &tr, &nt, &ev, &ne, &err), LQ_ERR_ARG);
    lq_err_clear(&err);
    assert_int_equal(lq_data_split(10, -0.1, 1, &tr, &nt, &ev, &ne, &err), LQ_ERR_ARG);
}

/* Loaded chat documents packed: the trained targets are the documents' trained tokens but the first. */
static void test_pack_loaded(void **state) {
    const lq_tokenizer *t = *state;
    lq_data_opts o = {.format = LQ_DATA_ALPACA, .eos_id = EOS};
    lq_docs docs = {0};
    load_ok(t, "datasets/alpaca.jsonl", &o, &docs);
    size_t want = 0, total = 0;
    for (size_t i = 0; i < docs.n; i++) {
        total += docs.doc[i].n;
        for (size_t k = 1; k < docs.doc[i].n; k++) want += docs.doc[i].labels[k] != LQ_IGNORE_INDEX;
    }
    lq_packed pk;
    lq_err err = {0};
    assert_int_equal(lq_pack(&docs, NULL, 0, (int64_t)total, EOS, &pk, &err), LQ_OK);
    assert_int_equal(pk.n_rows, 1);
    size_t got = 0, eos = 0;
    for (size_t i = 0; i < total; i++) {
        got += pk.labels[i] != LQ_IGNORE_INDEX;
        eos += pk.ids[i] == EOS;
    }
    assert_int_equal(got, want);
    assert_int_equal(eos, docs.n); /* one EOS between (after) each document */
    assert_int_equal(pk.doc_ids[total - 1], (int32_t)docs.n - 1);
    lq_packed_free(&pk);
    lq_docs_free(&docs);
}

static bool docs_equal(const lq_docs *a, const lq_docs *b) {
    if (a->n != b->n) return false;
    for (size_t i = 0; i < a->n; i++)
        if (a->doc[i].n != b->doc[i].n || memcmp(a->doc[i].ids, b->doc[i].ids, a->doc[i].n * 4) ||
            memcmp(a->doc[i].labels, b->doc[i].labels, a->doc[i].n * 4))
            return false;
    return true;
}

/* One cached load: returns whether it hit, checks the tokenizer ran exactly when it missed. */
static bool cached(const lq_tokenizer *t, const char *data, lq_data_opts *o, const char *cpath, lq_docs *ref,
                   const char *note) {
    lq_docs docs = {0};
    lq_err err = {0};
    bool hit = true;
    o->stats->n_encode = 0;
    lq_status st = lq_data_load_cached(t, data, o, cpath, &docs, &hit, &err);
    if (st != LQ_OK) fail_msg("%s: %s", data, err.msg);
    if (hit) assert_int_equal(o->stats->n_encode, 0);
    else assert_true(o->stats->n_encode > 0);
    if (note && !strstr(o->stats->cache_note, note)) fail_msg("note \"%s\", want \"%s\"", o->stats->cache_note, note);
    if (ref->n == 0) *ref = docs;
    else {
        assert_true(docs_equal(&docs, ref));
        lq_docs_free(&docs);
    }
    return hit;
}

static void write_bytes(const char *path, const char *s, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(s, 1, n, f), n);
    fclose(f);
}

/* One jsonl line written to a scratch file and loaded: NULL want_msg = must load (one document),
 * else must fail with LQ_ERR_INPUT and a message holding want_msg. */
static void jsonl_line(const lq_tokenizer *t, lq_data_format fmt, const char *line, size_t len, const char *want_msg) {
    char dir[] = "/tmp/lq_ds_lineXXXXXX", path[256];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/x.jsonl", dir);
    write_bytes(path, line, len);
    lq_err err = {0};
    lq_data_opts o = {.format = fmt, .eos_id = EOS};
    lq_docs docs = {0};
    lq_status st = lq_data_load(t, path, &o, &docs, &err);
    unlink(path);
    rmdir(dir);
    if (!want_msg) {
        if (st != LQ_OK) fail_msg("line %.40s: %s", line, err.msg);
        assert_int_equal(docs.n, 1);
    } else {
        if (st != LQ_ERR_INPUT || !strstr(err.msg, "x.jsonl:1: ") || !strstr(err.msg, want_msg))
            fail_msg("line %.40s: got %s \"%s\", want INPUT with \"%s\"", line, lq_status_name(st), err.msg, want_msg);
        assert_int_equal(docs.n, 0);
    }
    lq_docs_free(&docs);
}
#define JSONL_LINE(t, fmt, lit, want) jsonl_line((t), (fmt), (lit), sizeof(lit) - 1, (want))

/* Raw bytes in a jsonl line: RFC 3629 UTF-8 only (no overlong forms, surrogates, code points past
 * U+10FFFF, sequences cut by the line end), no NUL byte (cJSON would cut the string there), nothing
 * after the object but spaces; a chat message's role is one of ChatML's. */
static void test_jsonl_bytes(void **state) {
    const lq_tokenizer *t = *state;
    JSONL_LINE(t, LQ_DATA_JSONL, "{\"text\": \"h\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf\"}  \r\n", NULL);
    JSONL_LINE(t, LQ_DATA_JSONL, "{\"text\": \"\xc0\x80\"}\n", "not valid UTF-8 at byte 11");
    JSONL_LINE(t, LQ_DATA_JSONL, "{\"text\": \"\xe0\x9f\xbf\"}\n", "not valid UTF-8");
    JSONL_LINE(t, LQ_DATA_JSONL, "{\"text\": \"\xed\xa0\x80\"}\n", "not valid UTF-8");
    JSONL_LINE(t, LQ_DATA_JSONL, "{\"text\": \"\xf4\x90\x80\x80\"}\n", "not valid UTF-8");
    JSONL_LINE(t, LQ_DATA_JSONL, "{\"text\": \"\xf5\x80\x80\x80\"}\n", "not valid UTF-8");
    JSONL_LINE(t, LQ_DATA_JSONL, "{\"text\": \"a\"} \xe2\x82\n", "not valid UTF-8 at byte 15");
    JSONL_LINE(t, LQ_DATA_JSONL, "{\"text\": \"a\xc3\"}\n", "not valid UTF-8");
    JSONL_LINE(t, LQ_DATA_JSONL, "{\"text\": \"a\x00\x62\"}\n", "a NUL byte at byte 12");
    JSONL_LINE(t, LQ_DATA_JSONL, "{\"text\": \"a\"} {\"text\": \"b\"}\n", "text after the JSON object");
    JSONL_LINE(t, LQ_DATA_JSONL, "{\"text\": \"a\"} x\n", "text after the JSON object");
    JSONL_LINE(t, LQ_DATA_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n", NULL);
    JSONL_LINE(t, LQ_DATA_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"robot\", \"content\": \"yo\"}]}\n",
               "messages[1].role \"robot\"");
}

static void test_cache(void **state) {
    const lq_tokenizer *t = *state;
    char dir[] = "/tmp/lq_ds_cacheXXXXXX", cpath[256], data[256], p[512];
    assert_non_null(mkdtemp(dir));
    snprintf(cpath, sizeof cpath, "%s/alpaca.h5", dir);
    snprintf(data, sizeof data, "%s/alpaca.jsonl", dir);
    /* A private copy of the fixture, so that it can be changed. */
    FILE *in = fopen(lq_fixture_path("datasets/alpaca.jsonl", p, sizeof p), "rb");
    assert_non_null(in);
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf, in);
    fclose(in);
    write_bytes(data, buf, n);

    lq_data_stats stats = {0};
    lq_data_opts o = {.format = LQ_DATA_ALPACA, .eos_id = EOS, .stats = &stats};
    lq_docs ref = {0};
    lq_err err = {0};
    assert_int_equal(lq_data_load(t, data, &o, &ref, &err), LQ_OK); /* the uncached documents */
    assert_false(cached(t, data, &o, cpath, &ref, "no cache yet"));
    assert_true(cached(t, data, &o, cpath, &ref, NULL));
    assert_int_equal(stats.cache_hits, 1);
    assert_int_equal(stats.cache_misses, 1);
    assert_string_equal(stats.cache_note, "");

    /* Other loader options: a miss, then a hit for them. */
    lq_docs ref2 = {0};
    o.add_special = true;
    assert_false(cached(t, data, &o, cpath, &ref2, "another tokenizer, data or loader"));
    assert_true(cached(t, data, &o, cpath, &ref2, NULL));
    lq_docs_free(&ref2);
    o.add_special = false;
    assert_false(cached(t, data, &o, cpath, &ref, "another"));

    /* Garbage, then a truncated file: ignored and rebuilt. */
    write_bytes(cpath, "not hdf5 at all", 15);
    assert_false(cached(t, data, &o, cpath, &ref, "not a readable HDF5 file"));
    assert_true(cached(t, data, &o, cpath, &ref, NULL));
    assert_int_equal(truncate(cpath, 600), 0);
    assert_false(cached(t, data, &o, cpath, &ref, "rebuilding"));
    assert_true(cached(t, data, &o, cpath, &ref, NULL));

    /* The right key over tampered arrays: an id out of range, then a label that is neither. */
    for (int k = 0; k < 2; k++) {
        hid_t f = H5Fopen(cpath, H5F_ACC_RDWR, H5P_DEFAULT);
        assert_true(f >= 0);
        hid_t ds = H5Dopen2(f, k ? "labels" : "ids", H5P_DEFAULT);
        assert_true(ds >= 0);
        hsize_t one = 1, at = 2;
        hid_t fs = H5Dget_space(ds), ms = H5Screate_simple(1, &one, NULL);
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, &at, NULL, &one, NULL);
        int32_t v = k ? 7 : 1 << 20;
        assert_true(H5Dwrite(ds, H5T_NATIVE_INT32, ms, fs, H5P_DEFAULT, &v) >= 0);
        H5Sclose(ms);
        H5Sclose(fs);
        H5Dclose(ds);
        H5Fclose(f);
        assert_false(cached(t, data, &o, cpath, &ref, "bad ids or labels"));
        assert_true(cached(t, data, &o, cpath, &ref, NULL));
    }

    /* Changed data: a miss with the new documents. */
    write_bytes(data, "{\"instruction\": \"x\", \"output\": \"y\"}\n", 36);
    lq_docs fresh = {0};
    assert_false(cached(t, data, &o, cpath, &fresh, "another"));
    assert_int_equal(fresh.n, 1);
    lq_docs_free(&fresh);

    /* A cache that cannot be written: LQ_ERR_IO, nothing returned. */
    char bad[300];
    snprintf(bad, sizeof bad, "%s/no/such/dir/c.h5", dir);
    lq_docs docs = {0};
    lq_err_clear(&err);
    assert_int_equal(lq_data_load_cached(t, data, &o, bad, &docs, NULL, &err), LQ_ERR_IO);
    assert_int_equal(docs.n, 0);
    lq_docs_free(&docs);
    /* Missing data: LQ_ERR_INPUT. */
    lq_err_clear(&err);
    snprintf(bad, sizeof bad, "%s/missing.jsonl", dir);
    assert_int_equal(lq_data_load_cached(t, bad, &o, cpath, &docs, NULL, &err), LQ_ERR_INPUT);

    lq_docs_free(&ref);
    remove(cpath);
    remove(data);
    assert_int_equal(rmdir(dir), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text),    cmocka_unit_test(test_jsonl),     cmocka_unit_test(test_alpaca),
        cmocka_unit_test(test_chat),    cmocka_unit_test(test_bad_input), cmocka_unit_test(test_pack),
        cmocka_unit_test(test_shuffle), cmocka_unit_test(test_split),     cmocka_unit_test(test_pack_loaded), cmocka_unit_test(test_cache),
        cmocka_unit_test(test_jsonl_bytes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
