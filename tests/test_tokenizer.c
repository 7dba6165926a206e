/* tests/test_tokenizer.c: byte-level BPE against Hugging Face tokenizers, hostile tokenizer.json, ChatML. */
#include "tests/testutil.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "datasets/datasets.h"

static const char *const TOKS[] = {"llama3", "gpt2"};

static lq_fixture *load_ref(void) {
    char p[512];
    return lq_fixture_load(lq_fixture_path("tokenizer/tokenizer_ref.lqfx", p, sizeof p));
}

static lq_tokenizer *load_tok(const char *name) {
    char rel[64], p[512];
    lq_err err = {0};
    lq_tokenizer *t = NULL;
    snprintf(rel, sizeof rel, "tokenizer/%s.json", name);
    lq_status st = lq_tokenizer_load(&t, lq_fixture_path(rel, p, sizeof p), &err);
    if (st != LQ_OK) fail_msg("%s: %s", rel, err.msg);
    return t;
}

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

/* Element i of an i32 record (LQFX records need not be aligned). */
static int32_t ref_i32(const lq_fx_tensor *r, int64_t i) {
    int32_t v;
    memcpy(&v, (const char *)r->data + 4 * i, 4);
    return v;
}

/* Encodes and compares with the reference ids, naming the first difference. */
static void check_ids(const lq_tokenizer *t, const char *text, size_t len, bool add_special, const lq_fx_tensor *ref,
                      const char *what) {
    int32_t *ids = NULL;
    size_t n = 0;
    lq_err err = {0};
    lq_status st = lq_tokenizer_encode(t, text, len, add_special, &ids, &n, &err);
    if (st != LQ_OK) fail_msg("%s: encode failed: %s", what, err.msg);
    size_t i = 0;
    while (i < n && i < (size_t)ref->numel && ids[i] == ref_i32(ref, (int64_t)i)) i++;
    if (i != n || n != (size_t)ref->numel) {
        const char *a = i < n ? lq_tokenizer_id_to_token(t, ids[i]) : "(end)";
        const char *b = i < (size_t)ref->numel ? lq_tokenizer_id_to_token(t, ref_i32(ref, (int64_t)i)) : "(end)";
        fail_msg("%s: %zu ids vs %lld reference; first difference at %zu: %d \"%s\" vs %d \"%s\"", what, n,
                 (long long)ref->numel, i, i < n ? ids[i] : -1, a ? a : "?", i < (size_t)ref->numel ? ref_i32(ref, (int64_t)i) : -1,
                 b ? b : "?");
    }
    free(ids);
}

static void test_whole_text(void **state) {
    lq_fixture *fx = load_ref();
    size_t len;
    char *text = read_text(&len);
    char name[96];
    for (int k = 0; k < 2; k++) {
        lq_tokenizer *t = load_tok(TOKS[k]);
        snprintf(name, sizeof name, "%s/whole/ids", TOKS[k]);
        check_ids(t, text, len, false, rec(fx, name), name);
        snprintf(name, sizeof name, "%s/whole_bos/ids", TOKS[k]);
        check_ids(t, text, len, true, rec(fx, name), name);
        lq_tokenizer_free(t);
    }
    free(text);
    lq_fixture_free(fx);
}

static void test_each_line(void **state) {
    lq_fixture *fx = load_ref();
    int n_lines = ref_i32(rec(fx, "n_lines"), 0);
    assert_true(n_lines >= 10);
    char name[96];
    for (int k = 0; k < 2; k++) {
        lq_tokenizer *t = load_tok(TOKS[k]);
        for (int i = 0; i < n_lines; i++) {
            snprintf(name, sizeof name, "%s/line/%d/text", TOKS[k], i);
            const lq_fx_tensor *tx = rec(fx, name);
            snprintf(name, sizeof name, "%s/line/%d/ids", TOKS[k], i);
            check_ids(t, tx->data, (size_t)tx->numel, false, rec(fx, name), name);
        }
        lq_tokenizer_free(t);
    }
    lq_fixture_free(fx);
}

static void test_decode(void **state) {
    lq_fixture *fx = load_ref();
    size_t len;
    char *text = read_text(&len);
    char name[96];
    for (int k = 0; k < 2; k++) {
        lq_tokenizer *t = load_tok(TOKS[k]);
        int32_t *ids;
        size_t n, dl;
        char *dec;
        lq_err err = {0};
        assert_int_equal(lq_tokenizer_encode(t, text, len, false, &ids, &n, &err), LQ_OK);
        assert_int_equal(lq_tokenizer_decode(t, ids, n, false, &dec, &dl, &err), LQ_OK);
        snprintf(name, sizeof name, "%s/whole/decode", TOKS[k]);
        const lq_fx_tensor *ref = rec(fx, name);
        assert_int_equal(dl, (size_t)ref->numel);
        assert_memory_equal(dec, ref->data, dl);
        if (k == 0) { /* no prefix space: the round trip is exact */
            assert_int_equal(dl, len);
            assert_memory_equal(dec, text, len);
        }
        free(dec);
        assert_int_equal(lq_tokenizer_decode(t, ids, n, true, &dec, &dl, &err), LQ_OK);
        snprintf(name, sizeof name, "%s/whole/decode_skip", TOKS[k]);
        ref = rec(fx, name);
        assert_int_equal(dl, (size_t)ref->numel);
        assert_memory_equal(dec, ref->data, dl);
        free(dec);
        /* ids that are not tokens */
        int32_t bad[2] = {ids[0], lq_tokenizer_n_ids(t)};
        assert_int_equal(lq_tokenizer_decode(t, bad, 2, false, &dec, &dl, &err), LQ_ERR_ARG);
        assert_null(dec);
        bad[1] = -1;
        assert_int_equal(lq_tokenizer_decode(t, bad, 2, false, &dec, &dl, NULL), LQ_ERR_ARG);
        assert_int_equal(lq_tokenizer_decode(t, NULL, 0, false, &dec, &dl, NULL), LQ_OK);
        assert_int_equal(dl, 0);
        free(dec);
        free(ids);
        lq_tokenizer_free(t);
    }
    free(text);
    lq_fixture_free(fx);
}

static void test_special_inline(void **state) {
    lq_tokenizer *t = load_tok("llama3");
    int32_t s = lq_tokenizer_token_to_id(t, "<|im_start|>"), e = lq_tokenizer_token_to_id(t, "<|im_end|>");
    assert_true(s >= 0 && e >= 0);
    assert_true(lq_tokenizer_is_special(t, s));
    assert_false(lq_tokenizer_is_special(t, lq_tokenizer_token_to_id(t, "a")));
    assert_int_equal(lq_tokenizer_token_to_id(t, "no such token"), -1);
    assert_null(lq_tokenizer_id_to_token(t, -1));
    assert_string_equal(lq_tokenizer_id_to_token(t, s), "<|im_start|>");
    const char *txt = "x<|im_start|>user\nhi<|im_end|><|im_end|><|im_start";
    int32_t *ids;
    size_t n;
    assert_int_equal(lq_tokenizer_encode(t, txt, strlen(txt), false, &ids, &n, NULL), LQ_OK);
    int n_s = 0, n_e = 0;
    for (size_t i = 0; i < n; i++) n_s += ids[i] == s, n_e += ids[i] == e;
    assert_int_equal(n_s, 1); /* the cut-off "<|im_start" at the end is text */
    assert_int_equal(n_e, 2);
    assert_int_equal(ids[1], s);
    free(ids);
    /* empty text: no ids, a non-NULL array; with add_special just the BOS */
    assert_int_equal(lq_tokenizer_encode(t, "", 0, false, &ids, &n, NULL), LQ_OK);
    assert_non_null(ids);
    assert_int_equal(n, 0);
    free(ids);
    assert_int_equal(lq_tokenizer_encode(t, NULL, 0, true, &ids, &n, NULL), LQ_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], lq_tokenizer_token_to_id(t, "<|begin_of_text|>"));
    free(ids);
    lq_tokenizer_free(t);
}

static void test_invalid_utf8(void **state) {
    lq_fixture *fx = load_ref();
    int n_bad = ref_i32(rec(fx, "n_bad"), 0);
    char name[96];
    for (int k = 0; k < 2; k++) {
        lq_tokenizer *t = load_tok(TOKS[k]);
        for (int i = 0; i < n_bad; i++) {
            snprintf(name, sizeof name, "%s/bad/%d/bytes", TOKS[k], i);
            const lq_fx_tensor *b = rec(fx, name);
            snprintf(name, sizeof name, "%s/bad/%d/ids", TOKS[k], i);
            check_ids(t, b->data, (size_t)b->numel, false, rec(fx, name), name);
        }
        lq_tokenizer_free(t);
    }
    lq_fixture_free(fx);
    /* the replacement rule itself: maximal subparts, as Python's errors="replace" */
    static const struct {
        const char *in;
        size_t n;
        const char *out;
        size_t bad;
    } cases[] = {
        {"ab", 2, "ab", 0},
        {"\xe4\xb8\xad", 3, "\xe4\xb8\xad", 0},
        {"\xe4\xb8", 2, "\xef\xbf\xbd", 1},
        {"\xe4\xb8x", 3, "\xef\xbf\xbdx", 1},
        {"\xc0\xaf", 2, "\xef\xbf\xbd\xef\xbf\xbd", 2},
        {"\xed\xa0\x80", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 3},
        {"\xf4\x8f\xbf\xbf", 4, "\xf4\x8f\xbf\xbf", 0},
        {"\xf4\x90\x80\x80", 4, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 4},
        {"\xf0\x9f\x98", 3, "\xef\xbf\xbd", 1},
        {"\xff", 1, "\xef\xbf\xbd", 1},
        {"a\0b", 3, "a\0b", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *o;
        size_t ol, nb;
        assert_int_equal(lq_utf8_lossy(cases[i].in, cases[i].n, &o, &ol, &nb, NULL), LQ_OK);
        assert_int_equal(ol, strlen(cases[i].out) + (i == 10 ? 2 : 0));
        assert_memory_equal(o, cases[i].out, ol);
        assert_int_equal(nb, cases[i].bad);
        free(o);
    }
}

/* The gpt2 model under every Split behavior, invert, Digits, no pre-tokenizer, lstrip/rstrip. */
static void test_variants(void **state) {
    lq_fixture *fx = load_ref();
    int n_var = ref_i32(rec(fx, "n_var"), 0);
    size_t len;
    char *text = read_text(&len);
    char name[96], what[96];
    assert_true(n_var >= 9);
    for (int i = 0; i < n_var; i++) {
        snprintf(name, sizeof name, "var/%d/name", i);
        const lq_fx_tensor *nm = rec(fx, name);
        snprintf(what, sizeof what, "variant %.*s", (int)nm->numel, (const char *)nm->data);
        snprintf(name, sizeof name, "var/%d/json", i);
        const lq_fx_tensor *js = rec(fx, name);
        lq_tokenizer *t = NULL;
        lq_err err = {0};
        if (lq_tokenizer_from_json(&t, js->data, (size_t)js->numel, what, &err) != LQ_OK) fail_msg("%s", err.msg);
        snprintf(name, sizeof name, "var/%d/ids", i);
        check_ids(t, text, len, false, rec(fx, name), what);
        lq_tokenizer_free(t);
    }
    free(text);
    lq_fixture_free(fx);
}

/* SmolLM2-135M's tokenizer exported from its GGUF (49152 ids): not committed; skipped when absent. */
static void test_smollm2(void **state) {
    char path[512], rp[512], name[64];
    const char *env = getenv("LOQUAT_SMOLLM2_TOKENIZER");
    if (env) snprintf(path, sizeof path, "%s", env);
    else lq_cache_path("models/SmolLM2-135M-Instruct.tokenizer.json", path, sizeof path);
    FILE *f = fopen(path, "rb");
    if (!f) {
        print_message("skipped: %s not found (tools/gen_tokenizer_fixtures.py --smollm2 writes it)\n", path);
        skip();
    }
    fclose(f);
    lq_tokenizer *t = NULL;
    lq_err err = {0};
    if (lq_tokenizer_load(&t, path, &err) != LQ_OK) fail_msg("%s", err.msg);
    lq_fixture *fx = lq_fixture_load(lq_fixture_path("tokenizer/smollm2_ref.lqfx", rp, sizeof rp));
    assert_int_equal(lq_tokenizer_n_ids(t), ref_i32(rec(fx, "smollm2/n_ids"), 0));
    size_t len;
    char *text = read_text(&len);
    check_ids(t, text, len, false, rec(fx, "smollm2/whole/ids"), "smollm2/whole/ids");
    lq_fixture *lines = load_ref();
    int n_lines = ref_i32(rec(fx, "smollm2/n_lines"), 0);
    for (int i = 0; i < n_lines; i++) {
        snprintf(name, sizeof name, "llama3/line/%d/text", i); /* the same lines */
        const lq_fx_tensor *tx = rec(lines, name);
        snprintf(name, sizeof name, "smollm2/line/%d/ids", i);
        check_ids(t, tx->data, (size_t)tx->numel, false, rec(fx, name), name);
    }
    int32_t *ids;
    size_t n, dl;
    char *dec;
    assert_int_equal(lq_tokenizer_encode(t, text, len, false, &ids, &n, NULL), LQ_OK);
    assert_int_equal(lq_tokenizer_decode(t, ids, n, false, &dec, &dl, NULL), LQ_OK);
    assert_int_equal(dl, len);
    assert_memory_equal(dec, text, len);
    print_message("smollm2: %zu ids for %zu bytes, round trip exact\n", n, len);
    free(dec), free(ids), free(text);
    lq_fixture_free(lines);
    lq_fixture_free(fx);
    lq_tokenizer_free(t);
}

/* --- hostile tokenizer.json ------------------------------------------------------------------- */

#define V "\"vocab\":{\"a\":0,\"b\":1,\"ab\":2}"
static const struct {
    const char *json;
    lq_status st;
    const char *needle; /* must appear in the message */
} bad_json[] = {
    {"", LQ_ERR_INPUT, "not a JSON object"},
    {"[1,2]", LQ_ERR_INPUT, "not a JSON object"},
    {"{\"model\":{\"vocab\":{\"a\":0}", LQ_ERR_INPUT, "not a JSON object"},
    {"{}", LQ_ERR_INPUT, "\"model\""},
    {"{\"model\":3}", LQ_ERR_INPUT, "\"model\""},
    {"{\"model\":{\"merges\":[]}}", LQ_ERR_INPUT, "model.vocab"},
    {"{\"model\":{\"vocab\":[],\"merges\":[]}}", LQ_ERR_INPUT, "model.vocab"},
    {"{\"model\":{" V "}}", LQ_ERR_INPUT, "model.merges"},
    {"{\"model\":{" V ",\"merges\":{}}}", LQ_ERR_INPUT, "model.merges"},
    {"{\"model\":{" V ",\"merges\":[\"ab\"]}}", LQ_ERR_INPUT, "model.merges[0]"},
    {"{\"model\":{" V ",\"merges\":[\"a  b\"]}}", LQ_ERR_INPUT, "model.merges[0]"},
    {"{\"model\":{" V ",\"merges\":[\"a b\",[\"a\"]]}}", LQ_ERR_INPUT, "model.merges[1]"},
    {"{\"model\":{" V ",\"merges\":[[\"a\",2]]}}", LQ_ERR_INPUT, "model.merges[0]"},
    {"{\"model\":{" V ",\"merges\":[\"a c\"]}}", LQ_ERR_INPUT, "\"c\" is not in the vocab"},
    {"{\"model\":{" V ",\"merges\":[\"b a\"]}}", LQ_ERR_INPUT, "\"ba\" is not in the vocab"},
    {"{\"model\":{\"vocab\":{\"a\":-1},\"merges\":[]}}", LQ_ERR_INPUT, "model.vocab[\"a\"]"},
    {"{\"model\":{\"vocab\":{\"a\":16777216},\"merges\":[]}}", LQ_ERR_INPUT, "model.vocab[\"a\"]"},
    {"{\"model\":{\"vocab\":{\"a\":16777215},\"merges\":[]}}", LQ_ERR_INPUT, "too sparse"},
    {"{\"model\":{\"vocab\":{\"a\":1.5},\"merges\":[]}}", LQ_ERR_INPUT, "model.vocab[\"a\"]"},
    {"{\"model\":{\"vocab\":{\"a\":\"0\"},\"merges\":[]}}", LQ_ERR_INPUT, "model.vocab[\"a\"]"},
    {"{\"model\":{\"vocab\":{\"a\":0,\"b\":0},\"merges\":[]}}", LQ_ERR_INPUT, "id 0 is used by both"},
    {"{\"model\":{\"vocab\":{\"a\":0,\"a\":1},\"merges\":[]}}", LQ_ERR_INPUT, "appears twice"},
    {"{\"model\":{\"vocab\":{\"\":0},\"merges\":[]}}", LQ_ERR_INPUT, "empty token"},
    {"{\"model\":{" V ",\"merges\":[],\"unk_token\":\"zz\"}}", LQ_ERR_INPUT, "unk_token"},
    {"{\"model\":{" V ",\"merges\":[],\"ignore_merges\":1}}", LQ_ERR_INPUT, "model.ignore_merges"},
    {"{\"model\":{" V ",\"merges\":[]},\"added_tokens\":{}}", LQ_ERR_INPUT, "added_tokens"},
    {"{\"model\":{" V ",\"merges\":[]},\"added_tokens\":[{\"id\":5}]}", LQ_ERR_INPUT, "added_tokens[0]"},
    {"{\"model\":{" V ",\"merges\":[]},\"added_tokens\":[{\"id\":-3,\"content\":\"x\"}]}", LQ_ERR_INPUT, "added_tokens[0]"},
    {"{\"model\":{" V ",\"merges\":[]},\"added_tokens\":[{\"id\":1,\"content\":\"x\"}]}", LQ_ERR_INPUT, "id 1 is used by both"},
    {"{\"model\":{" V ",\"merges\":[]},\"added_tokens\":[{\"id\":3,\"content\":\"x\",\"special\":\"yes\"}]}", LQ_ERR_INPUT,
     "added_tokens[0].special"},
    {"{\"model\":{" V ",\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},"
     "\"behavior\":\"Isolated\"}}", LQ_ERR_INPUT, "does not compile"},
    {"{\"model\":{" V ",\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},"
     "\"behavior\":\"Sideways\"}}", LQ_ERR_INPUT, "behavior"},
    {"{\"model\":{" V ",\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":\"a\",\"behavior\":\"Isolated\"}}",
     LQ_ERR_INPUT, "pattern"},
    {"{\"model\":{" V ",\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Sequence\"}}", LQ_ERR_INPUT, "pretokenizers"},
    {"{\"model\":{" V ",\"merges\":[]},\"pre_tokenizer\":[]}", LQ_ERR_INPUT, "pre_tokenizer"},
    {"{\"model\":{" V ",\"merges\":[]},\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":"
     "[{\"SpecialToken\":{\"id\":\"<s>\"}},{\"Sequence\":{\"id\":\"A\"}}],\"special_tokens\":{}}}", LQ_ERR_INPUT,
     "TemplateProcessing"},
    {"{\"model\":{" V ",\"merges\":[]},\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":"
     "[{\"SpecialToken\":{\"id\":\"<s>\"}}],\"special_tokens\":{\"<s>\":{\"ids\":[9]}}}}", LQ_ERR_INPUT,
     "TemplateProcessing"},
    {"{\"model\":{\"type\":\"WordPiece\"," V ",\"merges\":[]}}", LQ_ERR_UNSUPPORTED, "WordPiece"},
    {"{\"model\":{" V ",\"merges\":[],\"byte_fallback\":true}}", LQ_ERR_UNSUPPORTED, "byte_fallback"},
    {"{\"model\":{" V ",\"merges\":[],\"continuing_subword_prefix\":\"##\"}}", LQ_ERR_UNSUPPORTED,
     "continuing_subword_prefix"},
    {"{\"normalizer\":{\"type\":\"NFC\"},\"model\":{" V ",\"merges\":[]}}", LQ_ERR_UNSUPPORTED, "NFC"},
    {"{\"model\":{" V ",\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Metaspace\"}}", LQ_ERR_UNSUPPORTED, "Metaspace"},
    {"{\"model\":{" V ",\"merges\":[]},\"post_processor\":{\"type\":\"BertProcessing\"}}", LQ_ERR_UNSUPPORTED,
     "BertProcessing"},
    {"{\"model\":{" V ",\"merges\":[]},\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":"
     "[{\"type\":\"ByteLevel\"},{\"type\":\"Digits\"}]}}", LQ_ERR_UNSUPPORTED, "\"Digits\" after ByteLevel"},
};

static void test_malformed_json(void **state) {
    for (size_t i = 0; i < sizeof bad_json / sizeof bad_json[0]; i++) {
        lq_tokenizer *t = (lq_tokenizer *)&t;
        lq_err err = {0};
        lq_status st = lq_tokenizer_from_json(&t, bad_json[i].json, strlen(bad_json[i].json), "bad.json", &err);
        if (st != bad_json[i].st || !strstr(err.msg, bad_json[i].needle) || !strstr(err.msg, "bad.json"))
            fail_msg("case %zu (%s): status %s, message \"%s\"; expected %s naming \"%s\"", i, bad_json[i].json,
                     lq_status_name(st), err.msg, lq_status_name(bad_json[i].st), bad_json[i].needle);
        assert_null(t);
    }
    /* a minimal good one: merges as pairs or strings, ignore_merges, an added token */
    const char *ok = "{\"model\":{" V ",\"merges\":[[\"a\",\"b\"]]},\"added_tokens\":[{\"id\":7,\"content\":\"<x>\","
                     "\"special\":true}],\"pre_tokenizer\":null}";
    lq_tokenizer *t;
    lq_err err = {0};
    if (lq_tokenizer_from_json(&t, ok, strlen(ok), "ok.json", &err) != LQ_OK) fail_msg("%s", err.msg);
    assert_int_equal(lq_tokenizer_n_ids(t), 8);
    assert_null(lq_tokenizer_id_to_token(t, 5)); /* a hole */
    int32_t *ids;
    size_t n;
    assert_int_equal(lq_tokenizer_encode(t, "abba<x>c", 8, false, &ids, &n, NULL), LQ_OK);
    int32_t want[] = {2, 1, 0, 7}; /* "c" has no token and no unk: dropped */
    assert_int_equal(n, 4);
    assert_memory_equal(ids, want, sizeof want);
    free(ids);
    int32_t hole = 5;
    char *dec;
    size_t dl;
    assert_int_equal(lq_tokenizer_decode(t, &hole, 1, false, &dec, &dl, NULL), LQ_ERR_ARG);
    lq_tokenizer_free(t);
}

static void test_malformed_files(void **state) {
    lq_tokenizer *t;
    lq_err err = {0};
    assert_int_equal(lq_tokenizer_load(&t, "/nonexistent/tokenizer.json", &err), LQ_ERR_INPUT);
    assert_non_null(strstr(err.msg, "/nonexistent/tokenizer.json"));
    lq_err_clear(&err);
    assert_int_equal(lq_tokenizer_load(&t, "/tmp", &err), LQ_ERR_INPUT);
    /* truncations and byte flips of a real file never crash and never half-load */
    char p[512];
    FILE *f = fopen(lq_fixture_path("tokenizer/gpt2.json", p, sizeof p), "rb");
    assert_non_null(f);
    char *buf = malloc(1 << 20);
    size_t n = fread(buf, 1, 1 << 20, f);
    fclose(f);
    for (size_t cut = 0; cut < n; cut += n / 37 + 1) {
        lq_err_clear(&err);
        assert_int_equal(lq_tokenizer_from_json(&t, buf, cut, "cut.json", &err), LQ_ERR_INPUT);
        assert_null(t);
    }
    uint64_t s = 0x9e3779b97f4a7c15ull;
    int ok = 0;
    for (int i = 0; i < 200; i++) {
        char *m = malloc(n);
        memcpy(m, buf, n);
        for (int j = 0; j < 3; j++) { /* odd iterations change one digit (ids, ranks): often still JSON */
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            size_t at = (size_t)(s >> 33) % n;
            if (i & 1) {
                while (at < n && (m[at] < '0' || m[at] > '9')) at++;
                if (at < n) m[at] = (char)('0' + (s >> 13) % 10);
            } else {
                m[at] = (char)(s >> 13);
            }
        }
        lq_err_clear(&err);
        if (lq_tokenizer_from_json(&t, m, n, "flip.json", &err) == LQ_OK) {
            int32_t *ids;
            size_t k;
            ok++;
            assert_int_equal(lq_tokenizer_encode(t, "Hello wörld 123", 16, true, &ids, &k, NULL), LQ_OK);
            free(ids);
            lq_tokenizer_free(t);
        } else {
            assert_null(t);
            assert_non_null(strstr(err.msg, "flip.json"));
        }
        free(m);
    }
    print_message("byte flips: %d of 200 still load\n", ok);
    /* nesting deeper than cJSON's limit */
    memset(buf, '[', 5000);
    lq_err_clear(&err);
    assert_int_equal(lq_tokenizer_from_json(&t, buf, 5000, "deep.json", &err), LQ_ERR_INPUT);
    free(buf);
}

/* Valid but scrambled tables (merges deleted, ids swapped): loads, and with every byte in the vocab
 * and no prefix space decode(encode(x)) == x still holds. */
static void test_scrambled_tables(void **state) {
    char p[512];
    FILE *f = fopen(lq_fixture_path("tokenizer/llama3.json", p, sizeof p), "rb");
    assert_non_null(f);
    char *buf = malloc(1 << 20);
    size_t n = fread(buf, 1, 1 << 20, f), len;
    fclose(f);
    char *text = read_text(&len);
    uint64_t s = 12345;
#define RND() (s = s * 6364136223846793005ull + 1442695040888963407ull, (uint32_t)(s >> 33))
    for (int it = 0; it < 12; it++) {
        cJSON *root = cJSON_ParseWithLength(buf, n);
        cJSON *model = cJSON_GetObjectItem(root, "model"), *merges = cJSON_GetObjectItem(model, "merges");
        cJSON *vocab = cJSON_GetObjectItem(model, "vocab");
        int nm = cJSON_GetArraySize(merges), nv = cJSON_GetArraySize(vocab), nd = nm / (3 + it);
        for (int k = 0; k < nd; k++) cJSON_DeleteItemFromArray(merges, (int)(RND() % (uint32_t)cJSON_GetArraySize(merges)));
        for (int k = 0; k < 50 * it; k++) {
            cJSON *a = cJSON_GetArrayItem(vocab, (int)(RND() % (uint32_t)nv)), *b = cJSON_GetArrayItem(vocab, (int)(RND() % (uint32_t)nv));
            if (a->valuedouble < 4 || b->valuedouble < 4) continue; /* the added tokens keep their ids */
            double x = a->valuedouble;
            cJSON_SetNumberValue(a, b->valuedouble);
            cJSON_SetNumberValue(b, x);
        }
        if (it % 3 == 2) cJSON_ReplaceItemInObject(model, "ignore_merges", cJSON_CreateFalse());
        char *js = cJSON_PrintUnformatted(root);
        lq_tokenizer *t;
        lq_err err = {0};
        if (lq_tokenizer_from_json(&t, js, strlen(js), "scrambled.json", &err) != LQ_OK) fail_msg("%s", err.msg);
        int32_t *ids;
        size_t k, dl;
        char *dec;
        assert_int_equal(lq_tokenizer_encode(t, text, len, false, &ids, &k, NULL), LQ_OK);
        assert_int_equal(lq_tokenizer_decode(t, ids, k, false, &dec, &dl, NULL), LQ_OK);
        assert_int_equal(dl, len);
        assert_memory_equal(dec, text, len);
        free(dec), free(ids), free(js);
        lq_tokenizer_free(t);
        cJSON_Delete(root);
    }
#undef RND
    free(text), free(buf);
}

typedef struct job {
    const lq_tokenizer *t;
    const char *text;
    size_t len;
    const lq_fx_tensor *ref;
    int ok;
} job;

static void *encode_job(void *arg) {
    job *j = arg;
    j->ok = 1;
    for (int r = 0; r < 20; r++) {
        int32_t *ids;
        size_t n;
        if (lq_tokenizer_encode(j->t, j->text, j->len, false, &ids, &n, NULL) != LQ_OK) return j->ok = 0, NULL;
        for (size_t i = 0; i < n; i++) j->ok &= n == (size_t)j->ref->numel && ids[i] == ref_i32(j->ref, (int64_t)i);
        free(ids);
    }
    return NULL;
}

/* One tokenizer, four threads encoding at once: same ids as alone. */
static void test_threads(void **state) {
    lq_fixture *fx = load_ref();
    size_t len;
    char *text = read_text(&len);
    lq_tokenizer *t = load_tok("llama3");
    pthread_t th[4];
    job jobs[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (job){t, text, len, rec(fx, "llama3/whole/ids"), 0};
        assert_int_equal(pthread_create(&th[i], NULL, encode_job, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_true(jobs[i].ok);
    }
    lq_tokenizer_free(t);
    free(text);
    lq_fixture_free(fx);
}

static void test_chatml(void **state) {
    lq_chat_msg msgs[] = {{"system", "Be brief."}, {"user", "Hi"}};
    char *out;
    size_t n;
    assert_int_equal(lq_chat_render_chatml(msgs, 2, true, &out, &n, NULL), LQ_OK);
    const char *want = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                       "<|im_start|>assistant\n";
    assert_string_equal(out, want);
    assert_int_equal(n, strlen(want));
    /* the specials come out as single ids */
    lq_tokenizer *t = load_tok("llama3");
    int32_t *ids;
    size_t k;
    assert_int_equal(lq_tokenizer_encode(t, out, n, false, &ids, &k, NULL), LQ_OK);
    assert_int_equal(ids[0], lq_tokenizer_token_to_id(t, "<|im_start|>"));
    free(ids);
    free(out);
    assert_int_equal(lq_chat_render_chatml(msgs, 0, false, &out, &n, NULL), LQ_OK);
    assert_int_equal(n, 0);
    free(out);
    lq_chat_msg bad[] = {{"user", NULL}};
    assert_int_equal(lq_chat_render_chatml(bad, 1, false, &out, &n, NULL), LQ_ERR_ARG);
    lq_tokenizer_free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole_text),     cmocka_unit_test(test_each_line),
        cmocka_unit_test(test_decode),         cmocka_unit_test(test_special_inline),
        cmocka_unit_test(test_invalid_utf8),   cmocka_unit_test(test_variants),
        cmocka_unit_test(test_malformed_json), cmocka_unit_test(test_malformed_files),
        cmocka_unit_test(test_scrambled_tables), cmocka_unit_test(test_chatml),
        cmocka_unit_test(test_threads),        cmocka_unit_test(test_smollm2),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
