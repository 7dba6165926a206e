/* tests/test_tokenizer_gguf.c: the tokenizer read from GGUF metadata against the tokenizer.json path, hostile GGUF tokenizers, chat templates. */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "datasets/datasets.h"
#include "io/io.h"

static char *read_text(size_t *n) {
    char p[512];
    FILE *f = fopen(lq_fixture_path("tokenizer/text.txt", p, sizeof p), "rb");
    assert_non_null(f);
    char *buf = malloc(1 << 16);
    *n = fread(buf, 1, (1 << 16) - 1, f);
    buf[*n] = 0;
    fclose(f);
    return buf;
}

static const lq_fx_tensor *rec(const lq_fixture *fx, const char *name) {
    const lq_fx_tensor *r = lq_fixture_find(fx, "%s", name);
    if (!r) fail_msg("fixture record %s missing", name);
    return r;
}

static int32_t ref_i32(const lq_fx_tensor *r, int64_t i) {
    int32_t v;
    memcpy(&v, (const char *)r->data + 4 * i, 4);
    return v;
}

static lq_tokenizer *gguf_tok(const char *path, lq_gguf_file **gf) {
    lq_err err = {0};
    lq_gguf_file *g = NULL;
    lq_tokenizer *t = NULL;
    if (lq_gguf_open(&g, path, &err) != LQ_OK) fail_msg("%s", err.msg);
    if (lq_tokenizer_from_gguf(g, &t, &err) != LQ_OK) fail_msg("%s", err.msg);
    if (gf) *gf = g;
    else lq_gguf_close(g);
    return t;
}

/* Both tokenizers give the same ids for text (with and without add_special); returns the count. */
static size_t same_ids(const lq_tokenizer *a, const lq_tokenizer *b, const char *text, size_t len, const char *what) {
    size_t n_total = 0;
    for (int sp = 0; sp < 2; sp++) {
        int32_t *ia, *ib;
        size_t na, nb;
        assert_int_equal(lq_tokenizer_encode(a, text, len, sp, &ia, &na, NULL), LQ_OK);
        assert_int_equal(lq_tokenizer_encode(b, text, len, sp, &ib, &nb, NULL), LQ_OK);
        for (size_t i = 0; i < na && i < nb; i++)
            if (ia[i] != ib[i]) fail_msg("%s (add_special=%d): id %zu is %d, tokenizer.json gives %d", what, sp, i, ia[i], ib[i]);
        if (na != nb) fail_msg("%s (add_special=%d): %zu ids, tokenizer.json gives %zu", what, sp, na, nb);
        n_total += na;
        free(ia), free(ib);
    }
    return n_total;
}

static void test_llama3_matches_json(void **state) {
    (void)state;
    char p[512], name[64];
    lq_gguf_file *g;
    lq_tokenizer *tg = gguf_tok(lq_fixture_path("tokenizer_gguf/llama3.gguf", p, sizeof p), &g);
    lq_tokenizer *tj = NULL;
    assert_int_equal(lq_tokenizer_load(&tj, lq_fixture_path("tokenizer/llama3.json", p, sizeof p), NULL), LQ_OK);
    assert_int_equal(lq_tokenizer_n_ids(tg), lq_tokenizer_n_ids(tj));
    for (int32_t i = 0; i < lq_tokenizer_n_ids(tj); i++) {
        assert_string_equal(lq_tokenizer_id_to_token(tg, i), lq_tokenizer_id_to_token(tj, i));
        assert_int_equal(lq_tokenizer_is_special(tg, i), lq_tokenizer_is_special(tj, i));
    }
    size_t len;
    char *text = read_text(&len);
    size_t n = same_ids(tg, tj, text, len, "whole text");
    lq_fixture *fx = lq_fixture_load(lq_fixture_path("tokenizer/tokenizer_ref.lqfx", p, sizeof p));
    int n_lines = ref_i32(rec(fx, "n_lines"), 0), n_bad = ref_i32(rec(fx, "n_bad"), 0);
    for (int i = 0; i < n_lines; i++) {
        snprintf(name, sizeof name, "llama3/line/%d/text", i);
        const lq_fx_tensor *tx = rec(fx, name);
        n += same_ids(tg, tj, tx->data, (size_t)tx->numel, name);
    }
    for (int i = 0; i < n_bad; i++) {
        snprintf(name, sizeof name, "llama3/bad/%d/bytes", i);
        const lq_fx_tensor *tx = rec(fx, name);
        n += same_ids(tg, tj, tx->data, (size_t)tx->numel, name);
    }
    /* the text with the special tokens spliced in */
    const char *sp = "<|im_start|>user\nHello there<|im_end|>\n<|endoftext|>";
    n += same_ids(tg, tj, sp, strlen(sp), "special tokens");
    lq_tok_gguf_info info;
    assert_int_equal(lq_tokenizer_gguf_info(g, &info, NULL), LQ_OK);
    assert_int_equal(info.bos_id, 3);
    assert_int_equal(info.eos_id, 0);
    assert_int_equal(info.pad_id, -1);
    assert_true(info.add_bos);
    assert_false(info.add_eos);
    assert_non_null(info.chat_template);
    print_message("llama3.gguf: %zu ids identical to llama3.json over %d lines, %d bad-UTF-8 strings and the whole text\n",
                  n, n_lines, n_bad);
    lq_fixture_free(fx);
    free(text);
    lq_tokenizer_free(tg), lq_tokenizer_free(tj);
    lq_gguf_close(g);
}

/* The tiny model's tokenizer (pre "gpt-2", BOS added): GGUF metadata against its tokenizer.json. */
static void test_tiny_matches_json(void **state) {
    (void)state;
    char p[512];
    lq_tokenizer *tg = gguf_tok(lq_fixture_path("tokenizer_gguf/tiny_chat.gguf", p, sizeof p), NULL);
    lq_tokenizer *tj = NULL;
    assert_int_equal(lq_tokenizer_load(&tj, lq_fixture_path("tokenizer_gguf/tiny_tokenizer.json", p, sizeof p), NULL), LQ_OK);
    assert_int_equal(lq_tokenizer_n_ids(tg), 128);
    size_t len;
    char *text = read_text(&len);
    size_t n = same_ids(tg, tj, text, len, "tiny: whole text");
    const char *s = "the cat sat on the mat, and then?  123 'll <|im_start|>x<|im_end|>\n";
    n += same_ids(tg, tj, s, strlen(s), "tiny: probe");
    int32_t *ids;
    size_t ni;
    assert_int_equal(lq_tokenizer_encode(tg, "the", 3, true, &ids, &ni, NULL), LQ_OK);
    assert_int_equal(ni, 3); /* BOS (add_bos_token), "t", "he" (no "t h" merge) */
    assert_int_equal(ids[0], 1);
    assert_string_equal(lq_tokenizer_id_to_token(tg, ids[1]), "t");
    assert_string_equal(lq_tokenizer_id_to_token(tg, ids[2]), "he");
    free(ids), free(text);
    print_message("tiny_chat.gguf: %zu ids identical to tiny_tokenizer.json\n", n);
    lq_tokenizer_free(tg), lq_tokenizer_free(tj);
}

/* SmolLM2-135M-Instruct's GGUF (not committed; skipped when absent) against the ids tokenizers gives. */
static void test_smollm2_gguf(void **state) {
    (void)state;
    char path[512], rp[512], name[64];
    const char *env = getenv("LOQUAT_SMOLLM2_GGUF");
    if (env) snprintf(path, sizeof path, "%s", env);
    else lq_cache_path("models/SmolLM2-135M-Instruct.Q4_1.gguf", path, sizeof path);
    if (access(path, R_OK) != 0) {
        print_message("skipped: %s not found (tools/fetch_model.sh fetches it)\n", path);
        skip();
    }
    lq_gguf_file *g;
    lq_tokenizer *t = gguf_tok(path, &g);
    lq_fixture *fx = lq_fixture_load(lq_fixture_path("tokenizer/smollm2_ref.lqfx", rp, sizeof rp));
    lq_fixture *lines = lq_fixture_load(lq_fixture_path("tokenizer/tokenizer_ref.lqfx", rp, sizeof rp));
    assert_int_equal(lq_tokenizer_n_ids(t), ref_i32(rec(fx, "smollm2/n_ids"), 0));
    size_t len, total = 0;
    char *text = read_text(&len);
    int n_lines = ref_i32(rec(fx, "smollm2/n_lines"), 0);
    for (int i = -1; i < n_lines; i++) {
        const char *s = text;
        size_t sl = len;
        if (i >= 0) {
            snprintf(name, sizeof name, "llama3/line/%d/text", i);
            const lq_fx_tensor *tx = rec(lines, name);
            s = tx->data, sl = (size_t)tx->numel;
            snprintf(name, sizeof name, "smollm2/line/%d/ids", i);
        } else {
            snprintf(name, sizeof name, "smollm2/whole/ids");
        }
        const lq_fx_tensor *ref = rec(fx, name);
        int32_t *ids;
        size_t n;
        assert_int_equal(lq_tokenizer_encode(t, s, sl, true, &ids, &n, NULL), LQ_OK); /* add_bos_token is false */
        if ((int64_t)n != ref->numel) fail_msg("%s: %zu ids, tokenizers gives %lld", name, n, (long long)ref->numel);
        for (size_t k = 0; k < n; k++)
            if (ids[k] != ref_i32(ref, (int64_t)k)) fail_msg("%s: id %zu is %d, tokenizers gives %d", name, k, ids[k], ref_i32(ref, (int64_t)k));
        total += n;
        free(ids);
    }
    /* and against the tokenizer.json exported from it, where cached, on strings that tell the
     * pre-tokenizers apart (digit runs, contractions, whitespace runs, non-ASCII, specials) */
    char jp[512];
    const char *jenv = getenv("LOQUAT_SMOLLM2_TOKENIZER");
    if (jenv) snprintf(jp, sizeof jp, "%s", jenv);
    else lq_cache_path("models/SmolLM2-135M-Instruct.tokenizer.json", jp, sizeof jp);
    lq_tokenizer *tj = NULL;
    if (access(jp, R_OK) == 0 && lq_tokenizer_load(&tj, jp, NULL) == LQ_OK) {
        static const char *const probe[] = {
            "In 2024, 12345 people paid $1,234.56 (about 3.5%) for 007 tickets.",
            "DON'T you'll WE'RE it's I'M they'd", "  leading\n\n\ttabs   and   trailing   ",
            "caf\xc3\xa9 na\xc3\xafve \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80 \xd9\xa3\xd9\xa4 x\xc2\xb2",
            "<|im_start|>user\nHi<|im_end|>\n<|endoftext|>", "a1b22c333d4444 x1.5e10 0x1F"};
        for (size_t i = 0; i < sizeof probe / sizeof probe[0]; i++) total += same_ids(t, tj, probe[i], strlen(probe[i]), probe[i]);
        total += same_ids(t, tj, text, len, "whole text vs tokenizer.json");
        lq_tokenizer_free(tj);
    } else {
        print_message("note: %s not found; compared with the reference ids only\n", jp);
    }
    lq_tok_gguf_info info;
    assert_int_equal(lq_tokenizer_gguf_info(g, &info, NULL), LQ_OK);
    assert_int_equal(info.bos_id, 1);
    assert_int_equal(info.eos_id, 2);
    assert_false(info.add_bos);
    assert_true(lq_tokenizer_is_special(t, 2));
    char *chat;
    size_t cl;
    lq_chat_msg m = {"user", "Hi"};
    assert_int_equal(lq_chat_render_template(info.chat_template, &m, 1, true, &chat, &cl, NULL), LQ_OK);
    assert_string_equal(chat, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
                              "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    print_message("smollm2 gguf: %zu ids identical to tokenizers (the text, %d lines, probes vs tokenizer.json)\n", total, n_lines);
    free(chat), free(text);
    lq_fixture_free(fx), lq_fixture_free(lines);
    lq_tokenizer_free(t);
    lq_gguf_close(g);
}

/* --- hostile GGUF tokenizers: a small valid base, one thing broken at a time -------------------- */

typedef struct base {
    const char *toks[5];
    int32_t types[5];
    const char *merges[2];
    int n_tok, n_merge;
    const char *model, *pre;
    int64_t bos;
    int n_types; /* token_type length */
} base;

static base make_base(void) {
    base b = {{"a", "b", "ab", "<|s|>", "c"}, {1, 1, 1, 3, 1}, {"a b", NULL}, 5, 1, "gpt2", "gpt-2", 3, 5};
    return b;
}

static lq_status load_base(const base *b, lq_tokenizer **t, lq_err *err) {
    char path[256];
    snprintf(path, sizeof path, "/tmp/lq_tokgguf_%d.gguf", (int)getpid());
    lq_gguf_wkv kv[8];
    int n = 0;
    if (b->model) kv[n++] = (lq_gguf_wkv){.key = "tokenizer.ggml.model", .type = LQ_GGUF_STRING, .v.s = b->model};
    if (b->pre) kv[n++] = (lq_gguf_wkv){.key = "tokenizer.ggml.pre", .type = LQ_GGUF_STRING, .v.s = b->pre};
    kv[n++] = (lq_gguf_wkv){.key = "tokenizer.ggml.tokens", .type = LQ_GGUF_ARRAY, .elem_type = LQ_GGUF_STRING,
                            .n = (uint64_t)b->n_tok, .arr = b->toks};
    kv[n++] = (lq_gguf_wkv){.key = "tokenizer.ggml.token_type", .type = LQ_GGUF_ARRAY, .elem_type = LQ_GGUF_INT32,
                            .n = (uint64_t)b->n_types, .arr = b->types};
    kv[n++] = (lq_gguf_wkv){.key = "tokenizer.ggml.merges", .type = LQ_GGUF_ARRAY, .elem_type = LQ_GGUF_STRING,
                            .n = (uint64_t)b->n_merge, .arr = b->merges};
    kv[n++] = (lq_gguf_wkv){.key = "tokenizer.ggml.bos_token_id", .type = LQ_GGUF_UINT32, .v.u = (uint64_t)b->bos};
    kv[n++] = (lq_gguf_wkv){.key = "tokenizer.ggml.add_bos_token", .type = LQ_GGUF_BOOL, .v.b = true};
    lq_err werr = {0};
    if (lq_gguf_write(path, kv, n, NULL, 0, &werr) != LQ_OK) fail_msg("writing %s: %s", path, werr.msg);
    lq_gguf_file *g = NULL;
    if (lq_gguf_open(&g, path, &werr) != LQ_OK) fail_msg("%s", werr.msg);
    lq_status st = lq_tokenizer_from_gguf(g, t, err);
    lq_gguf_close(g);
    unlink(path);
    return st;
}

static void expect_fail(const base *b, lq_status want, const char *needle) {
    lq_tokenizer *t = (lq_tokenizer *)1;
    lq_err err = {0};
    lq_status st = load_base(b, &t, &err);
    if (st != want) fail_msg("expected status %d, got %d (%s) [%s]", (int)want, (int)st, err.msg, needle);
    assert_null(t);
    if (!strstr(err.msg, needle)) fail_msg("message \"%s\" does not name \"%s\"", err.msg, needle);
}

static void test_hostile(void **state) {
    (void)state;
    base b = make_base();
    lq_tokenizer *t = NULL;
    lq_err err = {0};
    if (load_base(&b, &t, &err) != LQ_OK) fail_msg("base: %s", err.msg);
    int32_t *ids;
    size_t n;
    assert_int_equal(lq_tokenizer_encode(t, "ab<|s|>ca", 9, true, &ids, &n, NULL), LQ_OK);
    int32_t want[] = {3, 2, 3, 4, 0};
    assert_int_equal(n, 5);
    assert_memory_equal(ids, want, sizeof want);
    free(ids);
    lq_tokenizer_free(t);

    b = make_base(), b.model = "llama";
    expect_fail(&b, LQ_ERR_UNSUPPORTED, "tokenizer.ggml.model");
    b = make_base(), b.model = NULL;
    expect_fail(&b, LQ_ERR_INPUT, "tokenizer.ggml.model");
    b = make_base(), b.pre = "no-such-pre";
    expect_fail(&b, LQ_ERR_UNSUPPORTED, "tokenizer.ggml.pre");
    b = make_base(), b.merges[0] = "a z";
    expect_fail(&b, LQ_ERR_INPUT, "tokenizer.ggml.merges[0]");
    b = make_base(), b.merges[0] = "ab";
    expect_fail(&b, LQ_ERR_INPUT, "tokenizer.ggml.merges[0]");
    b = make_base(), b.merges[0] = "a ";
    expect_fail(&b, LQ_ERR_INPUT, "tokenizer.ggml.merges[0]");
    b = make_base(), b.bos = 5;
    expect_fail(&b, LQ_ERR_INPUT, "bos_token_id");
    b = make_base(), b.n_types = 4;
    expect_fail(&b, LQ_ERR_INPUT, "token_type");
    b = make_base(), b.toks[4] = "a";
    expect_fail(&b, LQ_ERR_INPUT, "appears twice");
    b = make_base(), b.n_tok = 0, b.n_types = 0;
    expect_fail(&b, LQ_ERR_INPUT, "tokenizer.ggml.tokens");
    b = make_base(), b.toks[3] = "";
    expect_fail(&b, LQ_ERR_INPUT, "empty token"); /* the BOS id is a hole */
    assert_int_equal(lq_tokenizer_from_gguf(NULL, &t, NULL), LQ_ERR_ARG);
}

static void test_chat_template(void **state) {
    (void)state;
    static const char smol[] =
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
        "You are X<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    static const char qwenish[] =
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
        "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    lq_chat_msg user = {"user", "Hi"}, two[] = {{"system", "Be brief"}, {"user", "Hi"}};
    char *o;
    size_t n;
    assert_int_equal(lq_chat_render_template(smol, &user, 1, true, &o, &n, NULL), LQ_OK);
    assert_string_equal(o, "<|im_start|>system\nYou are X<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    assert_int_equal(n, strlen(o));
    free(o);
    assert_int_equal(lq_chat_render_template(smol, two, 2, false, &o, &n, NULL), LQ_OK);
    assert_string_equal(o, "<|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
    free(o);
    assert_int_equal(lq_chat_render_template(qwenish, &user, 1, true, &o, &n, NULL), LQ_OK);
    assert_string_equal(o, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    free(o);
    assert_int_equal(lq_chat_render_template(NULL, &user, 1, false, &o, &n, NULL), LQ_OK);
    assert_string_equal(o, "<|im_start|>user\nHi<|im_end|>\n");
    free(o);
    lq_err err = {0};
    assert_int_equal(lq_chat_render_template("{{ bos_token }}[INST] {{ m }} [/INST]", &user, 1, true, &o, &n, &err),
                     LQ_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "ChatML"));
    /* the fixture GGUF's template */
    char p[512];
    lq_gguf_file *g;
    lq_tokenizer *t = gguf_tok(lq_fixture_path("tokenizer_gguf/llama3.gguf", p, sizeof p), &g);
    lq_tok_gguf_info info;
    assert_int_equal(lq_tokenizer_gguf_info(g, &info, NULL), LQ_OK);
    assert_int_equal(lq_chat_render_template(info.chat_template, &user, 1, true, &o, &n, NULL), LQ_OK);
    assert_string_equal(o, "<|im_start|>system\nYou are a test assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                           "<|im_start|>assistant\n");
    int32_t *ids;
    size_t ni;
    assert_int_equal(lq_tokenizer_encode(t, o, n, false, &ids, &ni, NULL), LQ_OK);
    assert_int_equal(ids[0], lq_tokenizer_token_to_id(t, "<|im_start|>"));
    free(ids), free(o);
    lq_tokenizer_free(t);
    lq_gguf_close(g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama3_matches_json),
        cmocka_unit_test(test_tiny_matches_json),
        cmocka_unit_test(test_smollm2_gguf),
        cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_chat_template),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
