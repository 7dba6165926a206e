/* tests/test_io_hf_config.c: HF config.json parsing vs transformers' reading, RoPE inv_freq, bad configs. */
#include "tests/testutil.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/io.h"

/* --- helpers ---------------------------------------------------------------------------------- */

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    if (len) *len = (size_t)n;
    return buf;
}

/* expected.json (written by tools/gen_hf_configs.py from transformers' reading of each file). */
static cJSON *load_expected(void) {
    char p[512];
    char *txt = slurp(lq_fixture_path("hf_configs/expected.json", p, sizeof p), NULL);
    cJSON *root = cJSON_Parse(txt);
    free(txt);
    assert_non_null(root);
    const cJSON *cfgs = cJSON_GetObjectItemCaseSensitive(root, "configs");
    assert_true(cJSON_IsObject(cfgs));
    return root;
}

static double num(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v)) fail_msg("expected.json: \"%s\" is not a number", key);
    return v->valuedouble;
}

static bool flag(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsBool(v)) fail_msg("expected.json: \"%s\" is not a bool", key);
    return cJSON_IsTrue(v);
}

static void check_ids(const char *name, const char *key, const cJSON *e, int n, const int64_t *ids) {
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(e, key);
    assert_true(cJSON_IsArray(arr));
    if (cJSON_GetArraySize(arr) != n) fail_msg("%s: %s has %d ids, transformers %d", name, key, n, cJSON_GetArraySize(arr));
    for (int i = 0; i < n; i++) assert_int_equal(ids[i], (int64_t)cJSON_GetArrayItem(arr, i)->valuedouble);
}

/* --- every fixture against transformers --------------------------------------------------------- */

static void test_fixtures_match_transformers(void **state) {
    (void)state;
    cJSON *root = load_expected();
    const cJSON *e;
    int n = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(root, "configs")) {
        const char *name = e->string;
        char rel[256], p[512];
        snprintf(rel, sizeof rel, "hf_configs/%s.json", name);
        lq_llama_config c;
        lq_err err = {0};
        if (lq_llama_config_load(&c, lq_fixture_path(rel, p, sizeof p), &err) != LQ_OK)
            fail_msg("%s: %s", name, err.msg);
        const char *mt = cJSON_GetObjectItemCaseSensitive(e, "model_type")->valuestring;
        assert_string_equal(lq_llama_arch_name(c.arch), mt);
        assert_int_equal(c.hidden_size, (int64_t)num(e, "hidden_size"));
        assert_int_equal(c.intermediate_size, (int64_t)num(e, "intermediate_size"));
        assert_int_equal(c.num_hidden_layers, (int64_t)num(e, "num_hidden_layers"));
        assert_int_equal(c.num_attention_heads, (int64_t)num(e, "num_attention_heads"));
        assert_int_equal(c.num_key_value_heads, (int64_t)num(e, "num_key_value_heads"));
        assert_int_equal(c.head_dim, (int64_t)num(e, "head_dim"));
        assert_int_equal(c.vocab_size, (int64_t)num(e, "vocab_size"));
        assert_int_equal(c.max_position_embeddings, (int64_t)num(e, "max_position_embeddings"));
        assert_true(c.rms_norm_eps == num(e, "rms_norm_eps"));
        assert_true(c.rope_theta == num(e, "rope_theta"));
        assert_string_equal(lq_rope_type_name(c.rope_type),
                            cJSON_GetObjectItemCaseSensitive(e, "rope_type")->valuestring);
        if (c.rope_type != LQ_ROPE_DEFAULT) assert_true(c.rope_factor == num(e, "factor"));
        if (c.rope_type == LQ_ROPE_LLAMA3) {
            assert_true(c.rope_low_freq_factor == num(e, "low_freq_factor"));
            assert_true(c.rope_high_freq_factor == num(e, "high_freq_factor"));
            assert_int_equal(c.rope_original_max_position, (int64_t)num(e, "original_max_position_embeddings"));
        }
        assert_int_equal(c.tie_word_embeddings, flag(e, "tie_word_embeddings"));
        assert_int_equal(c.qkv_bias, flag(e, "qkv_bias"));
        assert_int_equal(c.o_bias, flag(e, "o_bias"));
        assert_int_equal(c.mlp_bias, flag(e, "mlp_bias"));
        check_ids(name, "bos_token_id", e, c.n_bos, c.bos_token_id);
        check_ids(name, "eos_token_id", e, c.n_eos, c.eos_token_id);
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        if (cJSON_IsNull(dt)) assert_int_equal(c.dtype, LQ_DTYPE_COUNT);
        else assert_int_equal(c.dtype, strcmp(dt->valuestring, "float32") == 0   ? LQ_DTYPE_F32
                                       : strcmp(dt->valuestring, "float16") == 0 ? LQ_DTYPE_F16
                                       : strcmp(dt->valuestring, "bfloat16") == 0 ? LQ_DTYPE_BF16
                                                                                   : -1);
        const cJSON *sw = cJSON_GetObjectItemCaseSensitive(e, "sliding_window");
        assert_int_equal(c.sliding_window, cJSON_IsNull(sw) ? 0 : (int64_t)sw->valuedouble);
        n++;
    }
    assert_int_equal(n, 12);
    cJSON_Delete(root);
}

/* --- RoPE inverse frequencies vs transformers ------------------------------------------------- */

static int64_t ulp_diff(float a, float b) {
    int32_t x, y;
    memcpy(&x, &a, 4);
    memcpy(&y, &b, 4);
    return llabs((int64_t)x - (int64_t)y); /* all values are positive */
}

/* transformers' power is SLEEF's powf (within 1 ulp); loquat's is correctly rounded, so the two can
 * differ in the last bit. Everything after the power repeats torch's float32 operations: applied to
 * transformers' own unscaled frequencies, loquat's scaling must match bit for bit; end to end the
 * result must be within 1 ulp, and bit-exact for at least 90% of the values. */
static void test_rope_inv_freq(void **state) {
    (void)state;
    char p[512];
    lq_fixture *fx = lq_fixture_load(lq_fixture_path("hf_configs/rope.lqfx", p, sizeof p));
    cJSON *root = load_expected();
    const cJSON *e;
    int64_t total = 0, exact = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(root, "configs")) {
        char rel[256];
        snprintf(rel, sizeof rel, "hf_configs/%s.json", e->string);
        lq_llama_config c;
        lq_err err = {0};
        if (lq_llama_config_load(&c, lq_fixture_path(rel, p, sizeof p), &err) != LQ_OK) fail_msg("%s", err.msg);
        const lq_fx_tensor *ref = lq_fixture_find(fx, "%s/inv_freq", e->string);
        assert_non_null(ref);
        assert_int_equal(ref->numel, c.head_dim / 2);
        float got[512];
        assert_true(c.head_dim / 2 <= 512);
        assert_int_equal(lq_llama_rope_inv_freq(&c, got), LQ_OK);
        float want[512]; /* LQFX records are not aligned: copy out */
        memcpy(want, ref->data, (size_t)ref->numel * sizeof(float));
        /* the scaling step alone, on transformers' own unscaled frequencies: bit for bit */
        const lq_fx_tensor *plain = lq_fixture_find(fx, "%s/inv_freq_plain", e->string);
        assert_non_null(plain);
        assert_int_equal(plain->numel, ref->numel);
        float scaled[512];
        memcpy(scaled, plain->data, (size_t)plain->numel * sizeof(float));
        assert_int_equal(lq_llama_rope_scale_inv_freq(&c, scaled), LQ_OK);
        for (int64_t i = 0; i < ref->numel; i++)
            if (ulp_diff(scaled[i], want[i]) != 0)
                fail_msg("%s: scaling transformers' inv_freq_plain[%lld] gives %.9g, transformers %.9g", e->string,
                         (long long)i, (double)scaled[i], (double)want[i]);
        for (int64_t i = 0; i < ref->numel; i++) {
            int64_t d = ulp_diff(got[i], want[i]);
            if (d > 1) fail_msg("%s inv_freq[%lld]: %.9g vs transformers %.9g (%lld ulp)", e->string, (long long)i,
                                (double)got[i], (double)want[i], (long long)d);
            exact += d == 0;
            total++;
        }
    }
    print_message("inv_freq: %lld of %lld values bit-exact with transformers, the rest 1 ulp\n", (long long)exact,
                  (long long)total);
    assert_true(exact * 10 >= total * 9);
    cJSON_Delete(root);
    lq_fixture_free(fx);
}

/* Hand-computed cases, independent of the fixtures: no scaling is theta^(-2i/d); linear divides
 * by the factor; llama3 leaves the high frequencies, divides the low ones by the factor. */
static void test_rope_hand_values(void **state) {
    (void)state;
    lq_llama_config c = {.head_dim = 8, .rope_theta = 10000.0, .rope_type = LQ_ROPE_DEFAULT, .rope_factor = 1.0};
    float f[4];
    assert_int_equal(lq_llama_rope_inv_freq(&c, f), LQ_OK);
    for (int i = 0; i < 4; i++) assert_float_equal(f[i], pow(10000.0, -2.0 * i / 8), 1e-7 * pow(10000.0, -2.0 * i / 8));
    c.rope_type = LQ_ROPE_LINEAR, c.rope_factor = 4.0;
    float g[4];
    assert_int_equal(lq_llama_rope_inv_freq(&c, g), LQ_OK);
    for (int i = 0; i < 4; i++) assert_true(g[i] == f[i] / 4.0f);
    /* llama3, context 64, factors 1 / 4: wavelengths 2 pi 10^(2i/... ) -> i = 0 (6.3 < 16) unchanged,
     * i = 3 (6283 > 64) divided by 8. */
    c.rope_type = LQ_ROPE_LLAMA3, c.rope_factor = 8.0, c.rope_low_freq_factor = 1.0, c.rope_high_freq_factor = 4.0;
    c.rope_original_max_position = 64;
    float h[4];
    assert_int_equal(lq_llama_rope_inv_freq(&c, h), LQ_OK);
    assert_true(h[0] == f[0]);
    assert_true(h[3] == f[3] / 8.0f);
    /* i = 1: wavelength 62.8 lies between 16 and 64: a blend strictly between f/8 and f. */
    assert_true(h[1] < f[1] && h[1] > f[1] / 8.0f);
    c.head_dim = 7;
    assert_int_equal(lq_llama_rope_inv_freq(&c, h), LQ_ERR_ARG);
    assert_int_equal(lq_llama_rope_inv_freq(NULL, h), LQ_ERR_ARG);
}

/* --- defaults and loading a folder -------------------------------------------------------------- */

static lq_status parse_str(lq_llama_config *c, const char *json, lq_err *err) {
    lq_err_clear(err);
    return lq_llama_config_parse(c, json, strlen(json), "cfg.json", err);
}

static void test_defaults(void **state) {
    (void)state;
    lq_llama_config c;
    lq_err err = {0};
    assert_int_equal(parse_str(&c, "{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":128,"
                                   "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100}", &err),
                     LQ_OK);
    assert_int_equal(c.num_key_value_heads, 4);
    assert_int_equal(c.head_dim, 16);
    assert_true(c.rms_norm_eps == 1e-6);
    assert_true(c.rope_theta == 10000.0);
    assert_int_equal(c.rope_type, LQ_ROPE_DEFAULT);
    assert_int_equal(c.max_position_embeddings, 2048);
    assert_false(c.tie_word_embeddings);
    assert_false(c.qkv_bias);
    assert_int_equal(c.n_bos, 1);
    assert_int_equal(c.bos_token_id[0], 1);
    assert_int_equal(c.n_eos, 1);
    assert_int_equal(c.eos_token_id[0], 2);
    assert_int_equal(c.dtype, LQ_DTYPE_COUNT);
    assert_int_equal(c.sliding_window, 0);
    /* qwen2: q/k/v biases whatever attention_bias says, no default token ids, no sliding window */
    assert_int_equal(parse_str(&c, "{\"model_type\":\"qwen2\",\"hidden_size\":64,\"intermediate_size\":128,"
                                   "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100,"
                                   "\"attention_bias\":false,\"use_sliding_window\":false,\"sliding_window\":4096}",
                               &err),
                     LQ_OK);
    assert_true(c.qkv_bias);
    assert_false(c.o_bias);
    assert_int_equal(c.n_bos, 0);
    assert_int_equal(c.n_eos, 0);
    assert_int_equal(c.sliding_window, 0);
    assert_int_equal(c.max_position_embeddings, 32768);
    /* mistral: sliding window 4096 unless null; head_dim given, heads need not divide hidden */
    assert_int_equal(parse_str(&c, "{\"model_type\":\"mistral\",\"hidden_size\":60,\"intermediate_size\":128,"
                                   "\"num_hidden_layers\":2,\"num_attention_heads\":8,\"num_key_value_heads\":2,"
                                   "\"head_dim\":16,\"vocab_size\":100,\"eos_token_id\":null}", &err),
                     LQ_OK);
    assert_int_equal(c.sliding_window, 4096);
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.n_eos, 0);
    /* rope_scaling wins over rope_parameters (as in transformers 5); theta from the top level */
    assert_int_equal(parse_str(&c, "{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":128,"
                                   "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100,"
                                   "\"rope_theta\":5e5,\"rope_parameters\":{\"rope_type\":\"default\"},"
                                   "\"rope_scaling\":{\"type\":\"linear\",\"factor\":2}}", &err),
                     LQ_OK);
    assert_int_equal(c.rope_type, LQ_ROPE_LINEAR);
    assert_true(c.rope_factor == 2.0);
    assert_true(c.rope_theta == 5e5);
    /* llama3 without original_max_position_embeddings uses max_position_embeddings */
    assert_int_equal(parse_str(&c, "{\"model_type\":\"llama\",\"hidden_size\":64,\"intermediate_size\":128,"
                                   "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":100,"
                                   "\"max_position_embeddings\":4096,\"rope_parameters\":{\"rope_type\":\"llama3\","
                                   "\"rope_theta\":500000.0,\"factor\":8,\"low_freq_factor\":1,"
                                   "\"high_freq_factor\":4}}  \n", &err),
                     LQ_OK);
    assert_int_equal(c.rope_original_max_position, 4096);
    assert_true(c.rope_theta == 500000.0);
}

static void test_load_folder(void **state) {
    (void)state;
    char dir[] = "/tmp/lq_hfcfg.XXXXXX", file[64];
    assert_non_null(mkdtemp(dir));
    snprintf(file, sizeof file, "%s/config.json", dir);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fputs("{\"model_type\":\"llama\",\"hidden_size\":576,\"intermediate_size\":1536,\"num_hidden_layers\":30,"
          "\"num_attention_heads\":9,\"num_key_value_heads\":3,\"vocab_size\":49152}", f);
    fclose(f);
    lq_llama_config c;
    lq_err err = {0};
    assert_int_equal(lq_llama_config_load(&c, dir, &err), LQ_OK);
    assert_int_equal(c.head_dim, 64);
    unlink(file);
    lq_err_clear(&err);
    assert_int_equal(lq_llama_config_load(&c, dir, &err), LQ_ERR_INPUT);
    assert_non_null(strstr(err.msg, "config.json"));
    rmdir(dir);
}

/* --- bad configs: each is LQ_ERR_INPUT naming the file and the key ----------------------------- */

#define BASE_HEAD "\"model_type\":\"llama\",\"intermediate_size\":128,\"num_hidden_layers\":2,\"vocab_size\":100"

static void test_bad_configs(void **state) {
    (void)state;
    static const struct {
        const char *json, *key;
    } cases[] = {
        {"{\"hidden_size\":64,\"num_attention_heads\":4,\"intermediate_size\":1,\"num_hidden_layers\":1,"
         "\"vocab_size\":1}", "model_type"},
        {"{\"model_type\":\"gpt2\",\"hidden_size\":64,\"num_attention_heads\":4}", "model_type"},
        {"{\"model_type\":\"smollm3\",\"hidden_size\":64,\"num_attention_heads\":4}", "model_type"},
        {"{\"model_type\":7}", "model_type"},
        {"{" BASE_HEAD ",\"num_attention_heads\":4}", "hidden_size"},
        {"{" BASE_HEAD ",\"hidden_size\":\"64\",\"num_attention_heads\":4}", "hidden_size"},
        {"{" BASE_HEAD ",\"hidden_size\":0,\"num_attention_heads\":4}", "hidden_size"},
        {"{" BASE_HEAD ",\"hidden_size\":-64,\"num_attention_heads\":4}", "hidden_size"},
        {"{" BASE_HEAD ",\"hidden_size\":64.5,\"num_attention_heads\":4}", "hidden_size"},
        {"{" BASE_HEAD ",\"hidden_size\":1e300,\"num_attention_heads\":4}", "hidden_size"},
        {"{" BASE_HEAD ",\"hidden_size\":64,\"num_attention_heads\":5}", "num_attention_heads"},
        {"{" BASE_HEAD ",\"hidden_size\":64,\"num_attention_heads\":4,\"num_key_value_heads\":3}", "num_key_value_heads"},
        {"{" BASE_HEAD ",\"hidden_size\":64,\"num_attention_heads\":4,\"num_key_value_heads\":8}", "num_key_value_heads"},
        {"{" BASE_HEAD ",\"hidden_size\":64,\"num_attention_heads\":4,\"head_dim\":15}", "head_dim"},
        {"{" BASE_HEAD ",\"hidden_size\":64,\"num_attention_heads\":4,\"rms_norm_eps\":0}", "rms_norm_eps"},
        {"{" BASE_HEAD ",\"hidden_size\":64,\"num_attention_heads\":4,\"rms_norm_eps\":\"1e-5\"}", "rms_norm_eps"},
        {"{" BASE_HEAD ",\"hidden_size\":64,\"num_attention_heads\":4,\"tie_word_embeddings\":1}", "tie_word_embeddings"},
        {"{" BASE_HEAD ",\"hidden_size\":64,\"num_attention_heads\":4,\"eos_token_id\":[1,\"2\"]}", "eos_token_id"},
        {"{" BASE_HEAD ",\"hidden_size\":64,\"num_attention_heads\":4,\"bos_token_id\":-1}", "bos_token_id"},
        {"{" BASE_HEAD ",\"hidden_size\":64,\"num_attention_heads\":4,\"eos_token_id\":[1,2,3,4,5,6,7,8,9]}",
         "eos_token_id"},
        {"{" BASE_HEAD ",\"hidden_size\":64,\"num_attention_heads\":4,\"torch_dtype\":\"float64\"}", "torch_dtype"},
        {"{" BASE_HEAD ",\"hidden_size\":64,\"num_attention_heads\":4,\"hidden_act\":\"gelu\"}", "hidden_act"},
        {"{" BASE_HEAD ",\"hidden_size\":64,\"num_attention_heads\":4,\"rope_theta\":-1}", "rope_theta"},
        {"{" BASE_HEAD ",\"hidden_size\":64,\"num_attention_heads\":4,\"rope_scaling\":[1]}", "rope_scaling"},
        {"{" BASE_HEAD ",\"hidden_size\":64,\"num_attention_heads\":4,\"rope_scaling\":{\"type\":\"yarn\","
         "\"factor\":4}}", "rope_scaling.type"},
        {"{" BASE_HEAD ",\"hidden_size\":64,\"num_attention_heads\":4,\"rope_parameters\":{\"rope_type\":\"linear\"}}",
         "rope_parameters.factor"},
        {"{" BASE_HEAD ",\"hidden_size\":64,\"num_attention_heads\":4,\"rope_parameters\":{\"rope_type\":\"llama3\","
         "\"factor\":8,\"low_freq_factor\":4,\"high_freq_factor\":4}}", "rope_parameters.high_freq_factor"},
        {"{" BASE_HEAD ",\"hidden_size\":64,\"num_attention_heads\":4,\"rope_parameters\":{\"rope_type\":\"llama3\","
         "\"factor\":8,\"low_freq_factor\":1,\"high_freq_factor\":4,\"original_max_position_embeddings\":0}}",
         "rope_parameters.original_max_position_embeddings"},
        {"{" BASE_HEAD ",\"hidden_size\":64,\"num_attention_heads\":4,\"rope_parameters\":{\"rope_theta\":\"1e4\"}}",
         "rope_parameters.rope_theta"},
        {"{" BASE_HEAD ",\"hidden_size\":64,\"num_attention_heads\":4,\"rope_parameters\":{\"full_attention\":"
         "{\"rope_type\":\"default\"}}}", "rope_parameters.full_attention"},
        {"{" BASE_HEAD ",\"hidden_size\":64,\"num_attention_heads\":4,\"partial_rotary_factor\":0.5}",
         "partial_rotary_factor"},
        {"{\"model_type\":\"qwen2\",\"hidden_size\":64,\"num_attention_heads\":4,\"intermediate_size\":128,"
         "\"num_hidden_layers\":2,\"vocab_size\":100,\"use_sliding_window\":true}", "use_sliding_window"},
        {"{\"model_type\":\"mistral\",\"hidden_size\":64,\"num_attention_heads\":4,\"intermediate_size\":128,"
         "\"num_hidden_layers\":2,\"vocab_size\":100,\"sliding_window\":-4}", "sliding_window"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        lq_llama_config c;
        lq_err err = {0};
        lq_status s = parse_str(&c, cases[i].json, &err);
        char want[128];
        snprintf(want, sizeof want, "\"%s\"", cases[i].key);
        if (s != LQ_ERR_INPUT || !strstr(err.msg, want) || !strstr(err.msg, "cfg.json"))
            fail_msg("case %zu (%s): status %s, message \"%s\"", i, cases[i].key, lq_status_name(s), err.msg);
        assert_int_equal(c.hidden_size, 0); /* nothing half-filled is left behind */
    }
    print_message("%zu bad configs refused, each naming its key\n", sizeof cases / sizeof cases[0]);
}

/* Not JSON at all, or JSON of the wrong shape: a message naming the file, never a crash. */
static void test_hostile_text(void **state) {
    (void)state;
    static const char *const texts[] = {"", "{", "{\"model_type\":\"llama\"", "[1,2]", "null", "\"llama\"",
                                        "{\"model_type\":\"llama\"} x", "{\"a\":1}{}", "\xff\xfe{}",
                                        "{\"model_type\":\"ll\xc3\"}"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        lq_llama_config c;
        lq_err err = {0};
        lq_status s = lq_llama_config_parse(&c, texts[i], strlen(texts[i]), "cfg.json", &err);
        if (s != LQ_ERR_INPUT || !strstr(err.msg, "cfg.json")) fail_msg("text %zu: %s %s", i, lq_status_name(s), err.msg);
    }
    /* a NUL byte inside */
    const char nul[] = "{\"model_type\":\"llama\"\0}";
    lq_llama_config c;
    lq_err err = {0};
    assert_int_equal(lq_llama_config_parse(&c, nul, sizeof nul - 1, "cfg.json", &err), LQ_ERR_INPUT);
    /* every truncation of a real fixture fails cleanly */
    char p[512];
    size_t len;
    char *txt = slurp(lq_fixture_path("hf_configs/llama3_like.json", p, sizeof p), &len);
    for (size_t n = 0; n + 2 < len; n++) {
        lq_err_clear(&err);
        assert_int_equal(lq_llama_config_parse(&c, txt, n, "cfg.json", &err), LQ_ERR_INPUT);
    }
    lq_err_clear(&err);
    assert_int_equal(lq_llama_config_parse(&c, txt, len, "cfg.json", &err), LQ_OK);
    free(txt);
    lq_err_clear(&err);
    assert_int_equal(lq_llama_config_load(&c, "/nonexistent/config.json", &err), LQ_ERR_INPUT);
    assert_non_null(strstr(err.msg, "/nonexistent/config.json"));
    assert_int_equal(lq_llama_config_parse(NULL, "{}", 2, NULL, NULL), LQ_ERR_ARG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixtures_match_transformers),
        cmocka_unit_test(test_rope_inv_freq),
        cmocka_unit_test(test_rope_hand_values),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_load_folder),
        cmocka_unit_test(test_bad_configs),
        cmocka_unit_test(test_hostile_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
