/* tests/test_lora_peft.c: PEFT LoRA adapter folders: PEFT-made ones load with PEFT's values, save -> load is
 * exact, adapter_config.json is typed as PEFT writes it, hostile folders are refused naming the file. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lora_testutil.h"

#include "io/io.h"
#include "lora/lora.h"

/* --- helpers ---------------------------------------------------------------------------------- */

typedef struct tdir {
    char path[256];
} tdir;

static int setup_dir(void **state) {
    tdir *d = calloc(1, sizeof *d);
    snprintf(d->path, sizeof d->path, "/tmp/lq_lora_test.XXXXXX");
    if (!mkdtemp(d->path)) return -1;
    *state = d;
    return 0;
}

static int teardown_dir(void **state) {
    tdir *d = *state;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d->path);
    int rc = system(cmd);
    free(d);
    return rc == 0 ? 0 : -1;
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    return s;
}

static void spit(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) fail_msg("cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

static void copy_file(const char *from, const char *to) {
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    if (!a || !b) fail_msg("cannot copy %s to %s", from, to);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, a)) > 0) assert_int_equal(fwrite(buf, 1, n, b), n);
    fclose(a);
    fclose(b);
}

static lq_lora_set *two_module_set(uint64_t seed) {
    lq_lora_cfg c = {.r = 4, .alpha = 8, .dropout = 0.05f, .targets = (1u << LQ_LORA_Q) | (1u << LQ_LORA_DOWN)};
    lq_lora_set *s = NULL;
    lq_err err = {0};
    assert_int_equal(lq_lora_set_init(&s, &c, &err), LQ_OK);
    assert_non_null(lq_lora_set_add(s, "model.layers.0.self_attn.q_proj", 40, 24, &err));
    assert_non_null(lq_lora_set_add(s, "model.layers.0.mlp.down_proj", 100, 40, &err));
    if (lq_lora_set_finalize(s, seed, &err) != LQ_OK) fail_msg("%s", err.msg);
    return s;
}

/* --- PEFT folders ------------------------------------------------------------------------------------ */

/* Compares a set loaded from a PEFT-made folder with the modules and values the generator read from
 * the PEFT model itself (not from the file). */
static void check_against_fixture(const lq_lora_set *s, const lq_fixture *fx, const char *name) {
    const lq_fx_tensor *mods = needf(fx, name, "modules");
    char *list = calloc(1, (size_t)mods->numel + 1);
    memcpy(list, mods->data, (size_t)mods->numel);
    int i = 0;
    for (char *save = NULL, *m = strtok_r(list, "\n", &save); m; m = strtok_r(NULL, "\n", &save), i++) {
        assert_true(i < s->n);
        if (strcmp(s->mods[i].module, m) != 0) fail_msg("%s: module %d is '%s', PEFT order gives '%s'", name, i, s->mods[i].module, m);
        char rec[256];
        snprintf(rec, sizeof rec, "%s/%s", name, m);
        const lq_fx_tensor *A = needf(fx, rec, "A"), *B = needf(fx, rec, "B");
        assert_int_equal(s->mods[i].A->ne[0], A->shape[0]);
        assert_int_equal(s->mods[i].A->ne[1], A->shape[1]);
        assert_int_equal(s->mods[i].B->ne[0], B->shape[0]);
        assert_int_equal(s->mods[i].B->ne[1], B->shape[1]);
        assert_int_equal(s->mods[i].in, A->shape[1]);
        assert_int_equal(s->mods[i].out, B->shape[0]);
        assert_memory_equal(s->mods[i].A->data, A->data, (size_t)A->numel * 4);
        assert_memory_equal(s->mods[i].B->data, B->data, (size_t)B->numel * 4);
    }
    assert_int_equal(i, s->n);
    free(list);
    float cfg[4];
    const lq_fx_tensor *rc = needf(fx, name, "config");
    assert_int_equal(rc->numel, 4);
    memcpy(cfg, rc->data, sizeof cfg);
    assert_int_equal(s->cfg.r, (int)cfg[0]);
    assert_true(s->cfg.alpha == cfg[1]);
    assert_true(s->cfg.dropout == cfg[2]);
    assert_int_equal(s->cfg.rslora, cfg[3] != 0);
    for (int k = 0; k < s->n; k++) assert_true(s->mods[k].scaling == lq_lora_scaling(&s->cfg));
}

static void test_peft_load_fixture(void **state) {
    (void)state;
    lq_fixture *fx = load_fx();
    char dir[512];
    lq_lora_set *s = NULL;
    lq_err err = {0};
    if (lq_peft_load(&s, lq_fixture_path("lora/peft_tiny", dir, sizeof dir), &err) != LQ_OK) fail_msg("%s", err.msg);
    assert_int_equal(s->n, 6);
    assert_true(s->finalized);
    assert_int_equal(s->cfg.targets, (1u << LQ_LORA_Q) | (1u << LQ_LORA_V) | (1u << LQ_LORA_DOWN));
    assert_string_equal(s->base_model, "tests/fixtures/llama_tiny/tied");
    assert_true(s->mods[0].scaling == 2.0f);
    assert_int_equal(lq_params_count(s->params), 12);
    assert_non_null(lq_params_find(s->params, "model.layers.1.mlp.down_proj.lora_B.weight"));
    check_against_fixture(s, fx, "peft_tiny");
    lq_lora_set_free(s);

    s = NULL;
    if (lq_peft_load(&s, lq_fixture_path("lora/peft_rslora_f16", dir, sizeof dir), &err) != LQ_OK) fail_msg("%s", err.msg);
    assert_int_equal(s->n, 14);
    assert_int_equal(s->cfg.targets, LQ_LORA_ALL_LINEAR);
    assert_true(s->cfg.rslora);
    assert_true(s->mods[0].scaling == (float)(4.0 / sqrt(2.0)));
    check_against_fixture(s, fx, "peft_rslora_f16");
    lq_lora_set_free(s);
    lq_fixture_free(fx);
}

static void assert_sets_equal(const lq_lora_set *a, const lq_lora_set *b) {
    assert_int_equal(a->n, b->n);
    assert_int_equal(a->cfg.r, b->cfg.r);
    assert_true(a->cfg.alpha == b->cfg.alpha);
    assert_true(a->cfg.dropout == b->cfg.dropout);
    assert_int_equal(a->cfg.rslora, b->cfg.rslora);
    assert_int_equal(a->cfg.targets, b->cfg.targets);
    assert_string_equal(a->base_model, b->base_model);
    for (int i = 0; i < a->n; i++) {
        assert_string_equal(a->mods[i].module, b->mods[i].module);
        assert_int_equal(a->mods[i].in, b->mods[i].in);
        assert_int_equal(a->mods[i].out, b->mods[i].out);
        assert_memory_equal(a->mods[i].A->data, b->mods[i].A->data, (size_t)lq_numel(a->mods[i].A) * 4);
        assert_memory_equal(a->mods[i].B->data, b->mods[i].B->data, (size_t)lq_numel(a->mods[i].B) * 4);
        assert_true(a->mods[i].scaling == b->mods[i].scaling);
    }
}

static int count_tmp(const char *dir) {
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        if (strstr(e->d_name, ".tmp")) n++;
    if (d) closedir(d);
    return n;
}

static void test_save_round_trip(void **state) {
    tdir *d = *state;
    char src[512], out[600], path[700];
    lq_err err = {0};
    lq_lora_set *a = NULL, *b = NULL;
    assert_int_equal(lq_peft_load(&a, lq_fixture_path("lora/peft_tiny", src, sizeof src), &err), LQ_OK);
    /* peft_tiny's B is random, so it is not zeros that round-trip */
    snprintf(out, sizeof out, "%s/nested/adapter", d->path); /* created, parents too */
    if (lq_peft_save(a, out, &err) != LQ_OK) fail_msg("%s", err.msg);
    assert_int_equal(count_tmp(out), 0);
    if (lq_peft_load(&b, out, &err) != LQ_OK) fail_msg("%s", err.msg);
    assert_sets_equal(a, b);
    /* the weights file: PEFT's names, (r, in) / (out, r), f32, in module order A then B */
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", out);
    lq_st_file *f = NULL;
    assert_int_equal(lq_st_open(&f, path, &err), LQ_OK);
    assert_int_equal(lq_st_count(f), 2 * a->n);
    for (int i = 0; i < a->n; i++)
        for (int k = 0; k < 2; k++) {
            char name[256];
            snprintf(name, sizeof name, "base_model.model.%s.lora_%c.weight", a->mods[i].module, k ? 'B' : 'A');
            const lq_st_tensor *t = lq_st_tensor_at(f, 2 * i + k);
            assert_string_equal(t->name, name);
            assert_int_equal(t->dtype, LQ_ST_F32);
            assert_int_equal(t->ndim, 2);
            const lq_tensor *p = k ? a->mods[i].B : a->mods[i].A;
            assert_int_equal(t->shape[0], p->ne[0]);
            assert_int_equal(t->shape[1], p->ne[1]);
        }
    /* the PEFT-written file holds the same tensors as ours (same names, same bytes) */
    lq_st_file *g = NULL;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", src);
    assert_int_equal(lq_st_open(&g, path, &err), LQ_OK);
    assert_int_equal(lq_st_count(g), lq_st_count(f));
    for (int64_t i = 0; i < lq_st_count(g); i++) {
        const lq_st_tensor *t = lq_st_tensor_at(g, i), *u = lq_st_find(f, t->name);
        if (!u) fail_msg("PEFT tensor %s missing from the saved file", t->name);
        assert_int_equal(t->nbytes, u->nbytes);
        assert_memory_equal(t->data, u->data, t->nbytes);
    }
    lq_st_close(f);
    lq_st_close(g);
    lq_lora_set_free(b);
    /* saving again over the folder replaces both files; a fresh set round-trips too */
    lq_lora_set *c = two_module_set(5), *e = NULL;
    snprintf(c->base_model, sizeof c->base_model, "HuggingFaceTB/SmolLM2-135M-Instruct");
    for (int i = 0; i < c->n; i++) ((float *)c->mods[i].B->data)[0] = 0.5f + (float)i;
    assert_int_equal(lq_peft_save(c, out, &err), LQ_OK);
    assert_int_equal(lq_peft_load(&e, out, &err), LQ_OK);
    assert_sets_equal(c, e);
    assert_int_equal(count_tmp(out), 0);
    lq_lora_set_free(a);
    lq_lora_set_free(c);
    lq_lora_set_free(e);
    /* a file in the way of the folder */
    snprintf(path, sizeof path, "%s/file", d->path);
    spit(path, "x");
    lq_err_clear(&err);
    lq_lora_set *z = two_module_set(1);
    assert_int_equal(lq_peft_save(z, path, &err), LQ_ERR_IO);
    assert_non_null(strstr(err.msg, path));
    lq_lora_set_free(z);
}

/* adapter_config.json has the keys PEFT expects, typed as PEFT types them; every key loquat writes is
 * one PEFT itself writes (checked against the PEFT-made fixture). */
static void test_config_json(void **state) {
    tdir *d = *state;
    char path[600], ref[512];
    lq_err err = {0};
    lq_lora_set *s = two_module_set(3);
    s->cfg.rslora = true;
    assert_int_equal(lq_peft_save(s, d->path, &err), LQ_OK);
    snprintf(path, sizeof path, "%s/adapter_config.json", d->path);
    char *text = slurp(path);
    cJSON *o = cJSON_Parse(text);
    assert_non_null(o);
    lq_fixture_path("lora/peft_tiny/adapter_config.json", ref, sizeof ref);
    char *rtext = slurp(ref);
    cJSON *r = cJSON_Parse(rtext);
    assert_non_null(r);
    for (cJSON *k = o->child; k; k = k->next) {
        cJSON *rk = cJSON_GetObjectItemCaseSensitive(r, k->string);
        if (!rk) fail_msg("key \"%s\" is not one PEFT writes", k->string);
        /* same JSON type as PEFT's, where PEFT's value is not null */
        if (!cJSON_IsNull(rk) && !cJSON_IsNull(k) && (rk->type & 0xff) != (k->type & 0xff) &&
            !(cJSON_IsBool(rk) && cJSON_IsBool(k)))
            fail_msg("key \"%s\" has JSON type %d, PEFT writes type %d", k->string, k->type & 0xff, rk->type & 0xff);
    }
#define GET(k) cJSON_GetObjectItemCaseSensitive(o, k)
    assert_string_equal(GET("peft_type")->valuestring, "LORA");
    assert_string_equal(GET("task_type")->valuestring, "CAUSAL_LM");
    assert_true(cJSON_IsNumber(GET("r")) && GET("r")->valuedouble == 4);
    assert_true(cJSON_IsNumber(GET("lora_alpha")) && GET("lora_alpha")->valuedouble == 8);
    assert_true(cJSON_IsNumber(GET("lora_dropout")) && GET("lora_dropout")->valuedouble == 0.05); /* not 0.0500000007 */
    assert_true(cJSON_IsTrue(GET("use_rslora")));
    cJSON *tm = GET("target_modules");
    assert_true(cJSON_IsArray(tm));
    assert_int_equal(cJSON_GetArraySize(tm), 2);
    assert_string_equal(cJSON_GetArrayItem(tm, 0)->valuestring, "down_proj"); /* sorted */
    assert_string_equal(cJSON_GetArrayItem(tm, 1)->valuestring, "q_proj");
    assert_string_equal(GET("bias")->valuestring, "none");
    assert_true(cJSON_IsFalse(GET("fan_in_fan_out")));
    assert_true(cJSON_IsTrue(GET("init_lora_weights")));
    assert_true(cJSON_IsNull(GET("base_model_name_or_path")));
    assert_true(cJSON_IsTrue(GET("inference_mode")));
    assert_true(cJSON_IsNull(GET("modules_to_save")));
    assert_true(cJSON_IsNull(GET("layers_to_transform")));
    assert_true(cJSON_IsObject(GET("rank_pattern")) && GET("rank_pattern")->child == NULL);
    assert_true(cJSON_IsObject(GET("alpha_pattern")) && GET("alpha_pattern")->child == NULL);
    assert_true(cJSON_IsFalse(GET("use_dora")));
#undef GET
    cJSON_Delete(o);
    cJSON_Delete(r);
    free(text);
    free(rtext);
    lq_lora_set_free(s);
}

/* --- hostile folders ----------------------------------------------------------------------------------- */

typedef struct bad_case {
    const char *what;
    const char *config; /* adapter_config.json text; NULL = none written */
    int weights;        /* 0 = the PEFT fixture's, 1 = none, 2.. = a crafted file */
    lq_status want;
    int names_weights;  /* the message names the weights file (else the config) */
} bad_case;

#define GOOD_HEAD "{\"peft_type\": \"LORA\", \"lora_alpha\": 8, \"bias\": \"none\", "
#define TM3 "\"target_modules\": [\"q_proj\", \"v_proj\", \"down_proj\"]"

/* Crafted weight files: 2 unknown name, 3 lora_B missing, 4 3-D tensor, 5 int32 dtype, 6 not a
 * projection, 7 A (r, in) with the wrong r, 8 empty, 9 not safetensors, 10 a NaN in lora_A,
 * 11 a module no Llama has (qq_proj). */
static void write_weights(const char *path, int kind) {
    static float buf[4 * 64];
    lq_st_wtensor t[2];
    memset(t, 0, sizeof t);
    int n = 2;
    t[0] = (lq_st_wtensor){.name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", .dtype = LQ_ST_F32,
                           .ndim = 2, .shape = {4, 32}, .data = buf};
    t[1] = (lq_st_wtensor){.name = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", .dtype = LQ_ST_F32,
                           .ndim = 2, .shape = {32, 4}, .data = buf};
    switch (kind) {
    case 2: t[1].name = "base_model.model.model.layers.0.self_attn.q_proj.weight"; break;
    case 3: n = 1; break;
    case 4: t[1].ndim = 3; t[1].shape[0] = 2; t[1].shape[1] = 16; t[1].shape[2] = 4; break;
    case 5: t[1].dtype = LQ_ST_I32; break;
    case 6:
        t[0].name = "base_model.model.lm_head.lora_A.weight";
        t[1].name = "base_model.model.lm_head.lora_B.weight";
        break;
    case 7: t[0].shape[0] = 2; break;
    case 8: n = 0; break;
    case 9: spit(path, "this is not a safetensors file at all"); return;
    case 10: {
        static float nan_buf[4 * 32];
        nan_buf[77] = NAN;
        t[0].data = nan_buf;
        break;
    }
    case 11:
        t[0].name = "base_model.model.model.layers.0.self_attn.qq_proj.lora_A.weight";
        t[1].name = "base_model.model.model.layers.0.self_attn.qq_proj.lora_B.weight";
        break;
    default: break;
    }
    lq_err err = {0};
    if (lq_st_write(path, t, n, NULL, 0, &err) != LQ_OK) fail_msg("%s", err.msg);
}

static void test_hostile_folders(void **state) {
    tdir *d = *state;
    char fixture[512], src_st[600];
    lq_fixture_path("lora/peft_tiny", fixture, sizeof fixture);
    snprintf(src_st, sizeof src_st, "%s/adapter_model.safetensors", fixture);
    const bad_case cases[] = {
        {"no config", NULL, 0, LQ_ERR_INPUT, 0},
        {"bad JSON", "{\"peft_type\": \"LORA\", \"r\": 4,", 0, LQ_ERR_INPUT, 0},
        {"not an object", "[1, 2]", 0, LQ_ERR_INPUT, 0},
        {"no peft_type", "{\"r\": 4, \"lora_alpha\": 8}", 0, LQ_ERR_INPUT, 0},
        {"IA3", "{\"peft_type\": \"IA3\", \"r\": 4, \"lora_alpha\": 8}", 0, LQ_ERR_UNSUPPORTED, 0},
        {"r a string", GOOD_HEAD "\"r\": \"4\", " TM3 "}", 0, LQ_ERR_INPUT, 0},
        {"r zero", GOOD_HEAD "\"r\": 0, " TM3 "}", 0, LQ_ERR_INPUT, 0},
        {"r negative", GOOD_HEAD "\"r\": -4, " TM3 "}", 0, LQ_ERR_INPUT, 0},
        {"r fractional", GOOD_HEAD "\"r\": 2.5, " TM3 "}", 0, LQ_ERR_INPUT, 0},
        {"r huge", GOOD_HEAD "\"r\": 1e300, " TM3 "}", 0, LQ_ERR_INPUT, 0},
        {"alpha negative", "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": -8}", 0, LQ_ERR_INPUT, 0},
        {"alpha missing", "{\"peft_type\": \"LORA\", \"r\": 4}", 0, LQ_ERR_INPUT, 0},
        {"dropout 1", GOOD_HEAD "\"r\": 4, \"lora_dropout\": 1.0}", 0, LQ_ERR_INPUT, 0},
        {"rslora a string", GOOD_HEAD "\"r\": 4, \"use_rslora\": \"yes\"}", 0, LQ_ERR_INPUT, 0},
        {"DoRA", GOOD_HEAD "\"r\": 4, \"use_dora\": true}", 0, LQ_ERR_UNSUPPORTED, 0},
        {"bias all", "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"bias\": \"all\"}", 0, LQ_ERR_UNSUPPORTED, 0},
        {"rank_pattern", GOOD_HEAD "\"r\": 4, \"rank_pattern\": {\"q_proj\": 8}}", 0, LQ_ERR_UNSUPPORTED, 0},
        {"alpha_pattern", GOOD_HEAD "\"r\": 4, \"alpha_pattern\": {\"q_proj\": 8}}", 0, LQ_ERR_UNSUPPORTED, 0},
        {"modules_to_save", GOOD_HEAD "\"r\": 4, \"modules_to_save\": [\"lm_head\"]}", 0, LQ_ERR_UNSUPPORTED, 0},
        {"target_modules a number", GOOD_HEAD "\"r\": 4, \"target_modules\": 5}", 0, LQ_ERR_INPUT, 0},
        {"target_modules lm_head", GOOD_HEAD "\"r\": 4, \"target_modules\": [\"lm_head\"]}", 0, LQ_ERR_UNSUPPORTED, 0},
        {"target_modules a number in the list", GOOD_HEAD "\"r\": 4, \"target_modules\": [\"q_proj\", 3]}", 0, LQ_ERR_INPUT, 0},
        {"tensor outside target_modules", GOOD_HEAD "\"r\": 4, \"target_modules\": [\"q_proj\"]}", 0, LQ_ERR_INPUT, 1},
        {"r disagrees with the tensors", GOOD_HEAD "\"r\": 8, " TM3 "}", 0, LQ_ERR_INPUT, 1},
        {"no weights", GOOD_HEAD "\"r\": 4, " TM3 "}", 1, LQ_ERR_INPUT, 1},
        {"unknown tensor", GOOD_HEAD "\"r\": 4, " TM3 "}", 2, LQ_ERR_INPUT, 1},
        {"lora_B missing", GOOD_HEAD "\"r\": 4, " TM3 "}", 3, LQ_ERR_INPUT, 1},
        {"3-D tensor", GOOD_HEAD "\"r\": 4, " TM3 "}", 4, LQ_ERR_INPUT, 1},
        {"int32 tensor", GOOD_HEAD "\"r\": 4, " TM3 "}", 5, LQ_ERR_UNSUPPORTED, 1},
        {"lm_head adapter", GOOD_HEAD "\"r\": 4}", 6, LQ_ERR_UNSUPPORTED, 1},
        {"A with another rank", GOOD_HEAD "\"r\": 4, " TM3 "}", 7, LQ_ERR_INPUT, 1},
        {"no tensors", GOOD_HEAD "\"r\": 4, " TM3 "}", 8, LQ_ERR_INPUT, 1},
        {"garbage weights", GOOD_HEAD "\"r\": 4, " TM3 "}", 9, LQ_ERR_INPUT, 1},
        {"NaN in lora_A", GOOD_HEAD "\"r\": 4, " TM3 "}", 10, LQ_ERR_INPUT, 1},
        {"adapter of no Llama module", GOOD_HEAD "\"r\": 4}", 11, LQ_ERR_INPUT, 1},
        {"target_modules no Llama module", GOOD_HEAD "\"r\": 4, \"target_modules\": [\"qq_proj\"]}", 0, LQ_ERR_INPUT, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const bad_case *c = &cases[i];
        char dir[400], cfg[500], st[500];
        snprintf(dir, sizeof dir, "%s/case%zu", d->path, i);
        mkdir(dir, 0777);
        snprintf(cfg, sizeof cfg, "%s/adapter_config.json", dir);
        snprintf(st, sizeof st, "%s/adapter_model.safetensors", dir);
        if (c->config) spit(cfg, c->config);
        if (c->weights == 0) copy_file(src_st, st);
        else if (c->weights >= 2) write_weights(st, c->weights);
        lq_lora_set *s = NULL;
        lq_err err = {0};
        lq_status got = lq_peft_load(&s, dir, &err);
        const char *named = c->names_weights ? st : cfg;
        if (got != c->want || !strstr(err.msg, named))
            fail_msg("case '%s': status %s, message \"%s\"; want %s naming %s", c->what, lq_status_name(got), err.msg,
                     lq_status_name(c->want), named);
        assert_null(s);
        printf("  %-36s %-18s %s\n", c->what, lq_status_name(got), err.msg);
    }
    /* missing folder */
    lq_lora_set *s = NULL;
    lq_err err = {0};
    char nowhere[400];
    snprintf(nowhere, sizeof nowhere, "%s/does_not_exist", d->path);
    assert_int_equal(lq_peft_load(&s, nowhere, &err), LQ_ERR_INPUT);
    assert_non_null(strstr(err.msg, nowhere));

    /* accepted: target_modules "all-linear", a regex string (targets from the tensors), extra keys */
    static const char *const good[] = {
        GOOD_HEAD "\"r\": 4, \"target_modules\": \"all-linear\"}",
        GOOD_HEAD "\"r\": 4, \"target_modules\": \".*\\\\.(q_proj|v_proj|down_proj)\", \"future_key\": {\"a\": 1}}",
        GOOD_HEAD "\"r\": 4, " TM3 ", \"rank_pattern\": {}, \"alpha_pattern\": {}, \"use_dora\": false, "
                  "\"modules_to_save\": null, \"lora_dropout\": 0.1, \"base_model_name_or_path\": null}",
    };
    static const uint32_t want_targets[] = {LQ_LORA_ALL_LINEAR, (1u << LQ_LORA_Q) | (1u << LQ_LORA_V) | (1u << LQ_LORA_DOWN),
                                            (1u << LQ_LORA_Q) | (1u << LQ_LORA_V) | (1u << LQ_LORA_DOWN)};
    for (int i = 0; i < 3; i++) {
        char dir[400], cfg[500], st[500];
        snprintf(dir, sizeof dir, "%s/good%d", d->path, i);
        mkdir(dir, 0777);
        snprintf(cfg, sizeof cfg, "%s/adapter_config.json", dir);
        snprintf(st, sizeof st, "%s/adapter_model.safetensors", dir);
        spit(cfg, good[i]);
        copy_file(src_st, st);
        s = NULL;
        lq_err_clear(&err);
        if (lq_peft_load(&s, dir, &err) != LQ_OK) fail_msg("good config %d refused: %s", i, err.msg);
        assert_int_equal(s->n, 6);
        assert_int_equal(s->cfg.targets, want_targets[i]);
        lq_lora_set_free(s);
    }
}

/* Prefixes of the PEFT-made config and of its weights file (strides coprime to the structure, so
 * cuts land inside keys, numbers, strings, the length field and the data) are refused as bad input
 * naming the file: no crash, no partial set. (A few hundred cuts: each is a file write, slow on a
 * busy disk.) */
static void test_truncations(void **state) {
    tdir *d = *state;
    char fixture[512], src[600], cfg[600], st[600];
    lq_fixture_path("lora/peft_tiny", fixture, sizeof fixture);
    snprintf(src, sizeof src, "%s/adapter_config.json", fixture);
    char *text = slurp(src);
    snprintf(cfg, sizeof cfg, "%s/adapter_config.json", d->path);
    snprintf(st, sizeof st, "%s/adapter_model.safetensors", d->path);
    snprintf(src, sizeof src, "%s/adapter_model.safetensors", fixture);
    copy_file(src, st);
    size_t n = strlen(text);
    int refused = 0;
    for (size_t k = 0; k < n; k += k < 16 ? 1 : 7) {
        char *cut = strndup(text, k);
        spit(cfg, cut);
        free(cut);
        lq_lora_set *s = NULL;
        lq_err err = {0};
        lq_status got = lq_peft_load(&s, d->path, &err);
        if (got != LQ_ERR_INPUT || !strstr(err.msg, cfg))
            fail_msg("config cut at %zu of %zu: %s \"%s\"", k, n, lq_status_name(got), err.msg);
        assert_null(s);
        refused++;
    }
    spit(cfg, text);
    free(text);
    FILE *f = fopen(src, "rb");
    assert_non_null(f);
    static unsigned char buf[1 << 16];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    assert_true(len > 8 && len < sizeof buf);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)buf[i] << (8 * i);
    for (size_t k = 0; k < len; k += k < 16 ? 1 : k < 8 + hlen ? 11 : 197) {
        FILE *g = fopen(st, "wb");
        assert_non_null(g);
        assert_int_equal(fwrite(buf, 1, k, g), k);
        fclose(g);
        lq_lora_set *s = NULL;
        lq_err err = {0};
        lq_status got = lq_peft_load(&s, d->path, &err);
        if (got != LQ_ERR_INPUT || !strstr(err.msg, st))
            fail_msg("weights cut at %zu of %zu: %s \"%s\"", k, len, lq_status_name(got), err.msg);
        assert_null(s);
        refused++;
    }
    printf("  %d truncated folders refused\n", refused);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_peft_load_fixture),
        cmocka_unit_test_setup_teardown(test_save_round_trip, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_config_json, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_hostile_folders, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_truncations, setup_dir, teardown_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
