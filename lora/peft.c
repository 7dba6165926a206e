/* lora/peft.c: PEFT LoRA adapter folders (adapter_config.json + adapter_model.safetensors): save and validated load. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/file.h"
#include "io/io.h"
#include "lora/lora.h"

#define PEFT_CONFIG "adapter_config.json"
#define PEFT_WEIGHTS "adapter_model.safetensors"
#define PEFT_PREFIX "base_model.model."
#define PEFT_MAX_CONFIG_BYTES ((int64_t)16 << 20)
#define PEFT_MAX_RANK 65536

/* ---------------------------------------------------------------------------------------------
 * Saving
 * ------------------------------------------------------------------------------------------- */

/* mkdir -p: every missing component of dir is created (0777 & ~umask). */
static lq_status make_dirs(const char *dir, lq_err *err) {
    size_t n = strlen(dir);
    char *p = malloc(n + 1);
    if (!p) return LQ_ERR(err, LQ_ERR_OOM, "out of memory creating folder %s", dir);
    memcpy(p, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != '\0') continue;
        char c = p[i];
        p[i] = '\0';
        if (mkdir(p, 0777) != 0 && errno != EEXIST) {
            int e = errno;
            LQ_ERR(err, LQ_ERR_IO, "cannot create folder %s: %s", p, strerror(e));
            free(p);
            return LQ_ERR_IO;
        }
        p[i] = c;
    }
    free(p);
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return LQ_ERR(err, LQ_ERR_IO, "cannot create folder %s: a file of that name is in the way", dir);
    return LQ_OK;
}

/* The float as the shortest decimal that reads back as it, so 0.05f is written 0.05 (as Python
 * writes the value a user typed), not 0.05000000074505806. */
static double short_double(float f) {
    char buf[32];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f) return strtod(buf, NULL);
    }
    return (double)f;
}

static char *path_join(const char *dir, const char *name, lq_err *err) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (!p) {
        LQ_ERR(err, LQ_ERR_OOM, "out of memory joining %s and %s", dir, name);
        return NULL;
    }
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* Targets present: those of the modules, or the configured ones in an empty set. */
static uint32_t targets_present(const lq_lora_set *s) {
    uint32_t m = 0;
    for (int i = 0; i < s->n; i++) {
        int t = lq_lora_target_parse(s->mods[i].module);
        if (t >= 0) m |= 1u << t;
    }
    return s->n ? m : (s->cfg.targets & LQ_LORA_ALL_LINEAR);
}

/* The keys PEFT 0.21 writes for a LoraConfig of a model being saved (inference_mode true), with
 * the values of the features loquat does not use at their defaults. */
static cJSON *config_json(const lq_lora_set *s) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    bool ok = true;
    ok &= cJSON_AddObjectToObject(o, "alpha_pattern") != NULL;
    ok &= cJSON_AddNullToObject(o, "auto_mapping") != NULL;
    if (s->base_model[0]) ok &= cJSON_AddStringToObject(o, "base_model_name_or_path", s->base_model) != NULL;
    else ok &= cJSON_AddNullToObject(o, "base_model_name_or_path") != NULL;
    ok &= cJSON_AddStringToObject(o, "bias", "none") != NULL;
    ok &= cJSON_AddNullToObject(o, "exclude_modules") != NULL;
    ok &= cJSON_AddFalseToObject(o, "fan_in_fan_out") != NULL;
    ok &= cJSON_AddTrueToObject(o, "inference_mode") != NULL;
    ok &= cJSON_AddTrueToObject(o, "init_lora_weights") != NULL;
    ok &= cJSON_AddNullToObject(o, "layer_replication") != NULL;
    ok &= cJSON_AddNullToObject(o, "layers_pattern") != NULL;
    ok &= cJSON_AddNullToObject(o, "layers_to_transform") != NULL;
    ok &= cJSON_AddObjectToObject(o, "loftq_config") != NULL;
    ok &= cJSON_AddNumberToObject(o, "lora_alpha", short_double(s->cfg.alpha)) != NULL;
    ok &= cJSON_AddFalseToObject(o, "lora_bias") != NULL;
    ok &= cJSON_AddNumberToObject(o, "lora_dropout", short_double(s->cfg.dropout)) != NULL;
    ok &= cJSON_AddNullToObject(o, "megatron_config") != NULL;
    ok &= cJSON_AddStringToObject(o, "megatron_core", "megatron.core") != NULL;
    ok &= cJSON_AddNullToObject(o, "modules_to_save") != NULL;
    ok &= cJSON_AddStringToObject(o, "peft_type", "LORA") != NULL;
    ok &= cJSON_AddNumberToObject(o, "r", s->cfg.r) != NULL;
    ok &= cJSON_AddObjectToObject(o, "rank_pattern") != NULL;
    ok &= cJSON_AddNullToObject(o, "revision") != NULL;
    /* sorted by name, as a reader comparing folders expects a stable order */
    const char *names[LQ_LORA_N_TARGETS];
    int nn = 0;
    uint32_t present = targets_present(s);
    for (int t = 0; t < LQ_LORA_N_TARGETS; t++)
        if (present & (1u << t)) names[nn++] = lq_lora_target_name((lq_lora_target)t);
    for (int i = 1; i < nn; i++)
        for (int j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            const char *tmp = names[j];
            names[j] = names[j - 1];
            names[j - 1] = tmp;
        }
    cJSON *tm = cJSON_AddArrayToObject(o, "target_modules");
    ok &= tm != NULL;
    for (int i = 0; tm && i < nn; i++) {
        cJSON *str = cJSON_CreateString(names[i]);
        ok &= str != NULL && cJSON_AddItemToArray(tm, str);
    }
    ok &= cJSON_AddStringToObject(o, "task_type", "CAUSAL_LM") != NULL;
    ok &= cJSON_AddFalseToObject(o, "use_dora") != NULL;
    ok &= cJSON_AddFalseToObject(o, "use_qalora") != NULL;
    ok &= cJSON_AddBoolToObject(o, "use_rslora", s->cfg.rslora) != NULL;
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

lq_status lq_peft_save(const lq_lora_set *s, const char *dir, lq_err *err) {
    LQ_CHECK(err, s != NULL && dir != NULL && *dir, LQ_ERR_ARG, "NULL set or empty folder");
    LQ_CHECK(err, s->finalized, LQ_ERR_STATE, "LoRA set must be finalized before it is saved");
    LQ_TRY(make_dirs(dir, err));
    lq_status st = LQ_OK;
    char *cfg_path = NULL, *st_path = NULL, *text = NULL;
    char(*names)[LQ_NAME_MAX + 32] = NULL;
    lq_st_wtensor *wt = NULL;
    cJSON *json = config_json(s);
    if (!json || !(text = cJSON_Print(json))) {
        st = LQ_ERR(err, LQ_ERR_OOM, "out of memory writing %s/%s", dir, PEFT_CONFIG);
        goto done;
    }
    if (!(cfg_path = path_join(dir, PEFT_CONFIG, err)) || !(st_path = path_join(dir, PEFT_WEIGHTS, err))) {
        st = LQ_ERR_OOM;
        goto done;
    }
    /* Weights first: a config without weights is a broken folder, weights without a config are
     * merely an unfinished one. */
    int64_t n = 2 * (int64_t)s->n;
    names = calloc((size_t)(n ? n : 1), sizeof *names);
    wt = calloc((size_t)(n ? n : 1), sizeof *wt);
    if (!names || !wt) {
        st = LQ_ERR(err, LQ_ERR_OOM, "out of memory writing %s", st_path);
        goto done;
    }
    for (int i = 0; i < s->n; i++)
        for (int k = 0; k < 2; k++) {
            const lq_lora *m = &s->mods[i];
            const lq_tensor *t = k ? m->B : m->A;
            int64_t j = 2 * i + k;
            snprintf(names[j], sizeof names[j], PEFT_PREFIX "%s.lora_%c.weight", m->module, k ? 'B' : 'A');
            wt[j].name = names[j];
            wt[j].dtype = LQ_ST_F32;
            wt[j].ndim = 2;
            wt[j].shape[0] = t->ne[0];
            wt[j].shape[1] = t->ne[1];
            wt[j].data = t->data; /* parameters are contiguous views into the block */
        }
    static const lq_st_kv meta[] = {{"format", "pt"}};
    st = lq_st_write(st_path, wt, n, meta, 1, err);
    if (st != LQ_OK) goto done;
    lq_atomic_file af = {0};
    st = lq_atomic_open(&af, cfg_path, err);
    if (st == LQ_OK) st = lq_atomic_write(&af, text, strlen(text), err);
    if (st == LQ_OK) st = lq_atomic_commit(&af, err);
    lq_atomic_abort(&af);
done:
    cJSON_Delete(json);
    free(text);
    free(cfg_path);
    free(st_path);
    free(names);
    free(wt);
    return st;
}

/* ---------------------------------------------------------------------------------------------
 * Loading
 * ------------------------------------------------------------------------------------------- */

/* What adapter_config.json says, validated. */
typedef struct peft_cfg {
    lq_lora_cfg cfg;
    bool targets_listed; /* target_modules was a list or "all-linear" (else: from the tensors) */
    char base_model[256];
} peft_cfg;

static bool json_is_empty(const cJSON *v) {
    return !v || cJSON_IsNull(v) || ((cJSON_IsObject(v) || cJSON_IsArray(v)) && v->child == NULL) ||
           (cJSON_IsFalse(v));
}

/* The status for a target that is no Llama projection: a module a Llama has but loquat does not
 * adapt (lm_head, the embeddings, norms) makes a valid PEFT adapter loquat cannot apply
 * (UNSUPPORTED); any other name is no module of a Llama at all, so the adapter is malformed (INPUT). */
static lq_status non_projection_status(const char *module) {
    static const char *const known[] = {"lm_head", "embed_tokens", "norm", "input_layernorm",
                                        "post_attention_layernorm", "mlp", "self_attn"};
    const char *last = strrchr(module, '.');
    last = last ? last + 1 : module;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(last, known[i]) == 0) return LQ_ERR_UNSUPPORTED;
    return LQ_ERR_INPUT;
}

static lq_status parse_config(const char *path, const char *text, peft_cfg *pc, lq_err *err) {
    const char *end = NULL;
    cJSON *o = cJSON_ParseWithOpts(text, &end, true);
    if (!o) {
        ptrdiff_t at = end && end >= text ? end - text : (ptrdiff_t)0;
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: not valid JSON (near byte %td)", path, at);
    }
    lq_status st = LQ_OK;
#define FAIL(code, ...)                                  \
    do {                                                 \
        st = LQ_ERR(err, code, __VA_ARGS__);             \
        goto done;                                       \
    } while (0)
    if (!cJSON_IsObject(o)) FAIL(LQ_ERR_INPUT, "%s: the top level must be a JSON object", path);

    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "peft_type");
    if (!cJSON_IsString(v)) FAIL(LQ_ERR_INPUT, "%s: key \"peft_type\" must be a string (\"LORA\")", path);
    if (strcmp(v->valuestring, "LORA") != 0)
        FAIL(LQ_ERR_UNSUPPORTED, "%s: peft_type \"%s\" is not supported: only \"LORA\" adapters load", path,
             v->valuestring);

    v = cJSON_GetObjectItemCaseSensitive(o, "r");
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
        FAIL(LQ_ERR_INPUT, "%s: key \"r\" must be an integer", path);
    if (v->valuedouble < 1 || v->valuedouble > PEFT_MAX_RANK)
        FAIL(LQ_ERR_INPUT, "%s: key \"r\" = %g: the rank must be in [1, %d]", path, v->valuedouble, PEFT_MAX_RANK);
    pc->cfg.r = (int)v->valuedouble;

    v = cJSON_GetObjectItemCaseSensitive(o, "lora_alpha");
    if (!cJSON_IsNumber(v) || !(v->valuedouble > 0) || !isfinite(v->valuedouble) || v->valuedouble > 1e30)
        FAIL(LQ_ERR_INPUT, "%s: key \"lora_alpha\" must be a finite number > 0", path);
    pc->cfg.alpha = (float)v->valuedouble;

    v = cJSON_GetObjectItemCaseSensitive(o, "lora_dropout");
    if (v && !cJSON_IsNull(v)) {
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble < 1))
            FAIL(LQ_ERR_INPUT, "%s: key \"lora_dropout\" must be a number in [0, 1)", path);
        pc->cfg.dropout = (float)v->valuedouble;
    }

    v = cJSON_GetObjectItemCaseSensitive(o, "use_rslora");
    if (v && !cJSON_IsNull(v) && !cJSON_IsBool(v)) FAIL(LQ_ERR_INPUT, "%s: key \"use_rslora\" must be true or false", path);
    pc->cfg.rslora = cJSON_IsTrue(v);

    v = cJSON_GetObjectItemCaseSensitive(o, "use_dora");
    if (v && !cJSON_IsNull(v) && !cJSON_IsBool(v)) FAIL(LQ_ERR_INPUT, "%s: key \"use_dora\" must be true or false", path);
    if (cJSON_IsTrue(v)) FAIL(LQ_ERR_UNSUPPORTED, "%s: key \"use_dora\" is true: DoRA adapters are not supported", path);

    v = cJSON_GetObjectItemCaseSensitive(o, "bias");
    if (v && !cJSON_IsNull(v)) {
        if (!cJSON_IsString(v)) FAIL(LQ_ERR_INPUT, "%s: key \"bias\" must be a string (\"none\")", path);
        if (strcmp(v->valuestring, "none") != 0)
            FAIL(LQ_ERR_UNSUPPORTED, "%s: key \"bias\" = \"%s\": only \"none\" is supported", path, v->valuestring);
    }

    v = cJSON_GetObjectItemCaseSensitive(o, "fan_in_fan_out");
    if (v && !cJSON_IsNull(v) && !cJSON_IsBool(v))
        FAIL(LQ_ERR_INPUT, "%s: key \"fan_in_fan_out\" must be true or false", path);
    if (cJSON_IsTrue(v)) FAIL(LQ_ERR_UNSUPPORTED, "%s: key \"fan_in_fan_out\" is true: not a Llama layout", path);

    /* Features that change what the adapter computes beyond s B A x: refused, never ignored. */
    static const char *const unsupported[] = {"rank_pattern", "alpha_pattern", "lora_bias", "use_qalora",
                                              "modules_to_save", "layer_replication", "alora_invocation_tokens",
                                              "trainable_token_indices", "target_parameters", "use_bdlora"};
    for (size_t i = 0; i < sizeof unsupported / sizeof *unsupported; i++) {
        v = cJSON_GetObjectItemCaseSensitive(o, unsupported[i]);
        if (!json_is_empty(v))
            FAIL(LQ_ERR_UNSUPPORTED, "%s: key \"%s\" is set: loquat applies only plain LoRA (leave it empty)", path,
                 unsupported[i]);
    }

    v = cJSON_GetObjectItemCaseSensitive(o, "target_modules");
    if (cJSON_IsArray(v)) {
        const cJSON *e;
        cJSON_ArrayForEach(e, v) {
            if (!cJSON_IsString(e)) FAIL(LQ_ERR_INPUT, "%s: key \"target_modules\" must list strings", path);
            int t = lq_lora_target_parse(e->valuestring);
            if (t < 0)
                FAIL(non_projection_status(e->valuestring),
                     "%s: target_modules entry \"%s\" is not a Llama projection (q_proj k_proj v_proj o_proj "
                     "gate_proj up_proj down_proj)",
                     path, e->valuestring);
            pc->cfg.targets |= 1u << t;
        }
        pc->targets_listed = true;
    } else if (cJSON_IsString(v)) {
        /* "all-linear" names every projection; any other string is a regex PEFT matched against module
         * paths, so the tensors say what it matched. */
        if (strcmp(v->valuestring, "all-linear") == 0) {
            pc->cfg.targets = LQ_LORA_ALL_LINEAR;
            pc->targets_listed = true;
        }
    } else if (v && !cJSON_IsNull(v)) {
        FAIL(LQ_ERR_INPUT, "%s: key \"target_modules\" must be a list of names or a string", path);
    }

    v = cJSON_GetObjectItemCaseSensitive(o, "base_model_name_or_path");
    if (cJSON_IsString(v)) {
        if (strlen(v->valuestring) >= sizeof pc->base_model)
            FAIL(LQ_ERR_INPUT, "%s: key \"base_model_name_or_path\" is longer than %zu characters", path,
                 sizeof pc->base_model - 1);
        snprintf(pc->base_model, sizeof pc->base_model, "%s", v->valuestring);
    } else if (v && !cJSON_IsNull(v)) {
        FAIL(LQ_ERR_INPUT, "%s: key \"base_model_name_or_path\" must be a string or null", path);
    }
#undef FAIL
done:
    cJSON_Delete(o);
    return st;
}

/* One adapted module found in the weights file. */
typedef struct found_mod {
    char module[LQ_NAME_MAX];
    int64_t layer; /* the N of ".layers.N.", -1 if none */
    int target;
    const lq_st_tensor *A, *B;
} found_mod;

static int64_t layer_index(const char *module) {
    const char *p = strstr(module, "layers.");
    if (!p) return -1;
    p += 7;
    int64_t n = 0;
    if (*p < '0' || *p > '9') return -1;
    while (*p >= '0' && *p <= '9' && n < ((int64_t)1 << 40)) n = n * 10 + (*p++ - '0');
    return n;
}

static int cmp_found(const void *a, const void *b) {
    const found_mod *x = a, *y = b;
    if (x->layer != y->layer) return x->layer < y->layer ? -1 : 1;
    if (x->target != y->target) return x->target < y->target ? -1 : 1;
    return strcmp(x->module, y->module);
}

/* Splits "base_model.model.<module>.lora_{A,B}.weight" into the module and which; false if the
 * name is not of that form. */
static bool split_name(const char *name, char *module, size_t cap, int *which) {
    size_t plen = strlen(PEFT_PREFIX), n = strlen(name);
    static const char *const sfx[2] = {".lora_A.weight", ".lora_B.weight"};
    if (n <= plen || strncmp(name, PEFT_PREFIX, plen) != 0) return false;
    for (int k = 0; k < 2; k++) {
        size_t sl = strlen(sfx[k]);
        if (n > plen + sl && strcmp(name + n - sl, sfx[k]) == 0) {
            size_t ml = n - plen - sl;
            if (ml >= cap) return false;
            memcpy(module, name + plen, ml);
            module[ml] = '\0';
            *which = k;
            return true;
        }
    }
    return false;
}

static lq_status scan_tensors(const lq_st_file *f, const char *path, const peft_cfg *pc, found_mod **out, int *n_out,
                              lq_err *err) {
    int64_t n = lq_st_count(f);
    if (n == 0) return LQ_ERR(err, LQ_ERR_INPUT, "%s: holds no tensors (an adapter needs lora_A / lora_B weights)", path);
    if (n > (int64_t)1 << 24) return LQ_ERR(err, LQ_ERR_INPUT, "%s: %lld tensors is too many", path, (long long)n);
    found_mod *fm = calloc((size_t)n, sizeof *fm);
    if (!fm) return LQ_ERR(err, LQ_ERR_OOM, "out of memory reading %s", path);
    int nm = 0;
    lq_status st = LQ_OK;
    for (int64_t i = 0; i < n && st == LQ_OK; i++) {
        const lq_st_tensor *t = lq_st_tensor_at(f, i);
        char module[LQ_NAME_MAX];
        int which;
        if (!split_name(t->name, module, sizeof module - 14, &which)) {
            st = LQ_ERR(err, LQ_ERR_INPUT,
                        "%s: tensor '%s' is not a LoRA weight (expected " PEFT_PREFIX "<module>.lora_A.weight or "
                        ".lora_B.weight, module path under %d characters)",
                        path, t->name, LQ_NAME_MAX - 15);
            break;
        }
        int target = lq_lora_target_parse(module);
        if (target < 0) {
            st = LQ_ERR(err, non_projection_status(module), "%s: tensor '%s' adapts '%s', which is not a Llama projection", path,
                        t->name, module);
            break;
        }
        if (pc->targets_listed && !(pc->cfg.targets & (1u << target))) {
            st = LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s' adapts a %s, which target_modules in " PEFT_CONFIG " does not list",
                        path, t->name, lq_lora_target_name((lq_lora_target)target));
            break;
        }
        found_mod *m = NULL;
        for (int j = 0; j < nm && !m; j++)
            if (strcmp(fm[j].module, module) == 0) m = &fm[j];
        if (!m) {
            m = &fm[nm++];
            snprintf(m->module, sizeof m->module, "%s", module);
            m->layer = layer_index(module);
            m->target = target;
        }
        if (t->ndim != 2) {
            st = LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s' has %d dimensions, not 2", path, t->name, t->ndim);
            break;
        }
        if (which == 0) m->A = t;
        else m->B = t;
    }
    for (int j = 0; j < nm && st == LQ_OK; j++) {
        const found_mod *m = &fm[j];
        if (!m->A || !m->B) {
            st = LQ_ERR(err, LQ_ERR_INPUT, "%s: module '%s' has a lora_%c.weight but no lora_%c.weight", path, m->module,
                        m->A ? 'A' : 'B', m->A ? 'B' : 'A');
            break;
        }
        int64_t r = pc->cfg.r;
        if (m->A->shape[0] != r || m->B->shape[1] != r || m->A->shape[1] < 1 || m->B->shape[0] < 1)
            st = LQ_ERR(err, LQ_ERR_INPUT,
                        "%s: module '%s': lora_A.weight is (%lld, %lld) and lora_B.weight (%lld, %lld), expected (r, in) "
                        "and (out, r) with r = %lld from " PEFT_CONFIG,
                        path, m->module, (long long)m->A->shape[0], (long long)m->A->shape[1], (long long)m->B->shape[0],
                        (long long)m->B->shape[1], (long long)r);
    }
    if (st != LQ_OK) {
        free(fm);
        return st;
    }
    qsort(fm, (size_t)nm, sizeof *fm, cmp_found);
    *out = fm;
    *n_out = nm;
    return LQ_OK;
}

/* Converts a file tensor into a parameter, naming the file in any error. */
static lq_status copy_tensor(const lq_st_tensor *t, lq_tensor *dst, const char *path, lq_err *err) {
    lq_err e;
    lq_err_clear(&e);
    if (lq_st_to_f32(t, dst->data, &e) != LQ_OK)
        return LQ_ERR(err, e.status == LQ_ERR_UNSUPPORTED ? LQ_ERR_UNSUPPORTED : LQ_ERR_INPUT, "%s: %s", path, e.msg);
    /* a NaN / Inf weight would only show up later as NaN logits or a merged model full of NaN */
    const float *v = dst->data;
    int64_t n = lq_numel(dst);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s' holds a non-finite value (%g at element %lld)", path,
                          t->name, (double)v[i], (long long)i);
    return LQ_OK;
}

lq_status lq_peft_load(lq_lora_set **out, const char *dir, lq_err *err) {
    LQ_CHECK(err, out != NULL && dir != NULL, LQ_ERR_ARG, "NULL output or folder");
    *out = NULL;
    lq_status st;
    char *cfg_path = path_join(dir, PEFT_CONFIG, err), *st_path = path_join(dir, PEFT_WEIGHTS, err);
    char *text = NULL;
    size_t len = 0;
    lq_st_file *f = NULL;
    found_mod *fm = NULL;
    int nm = 0;
    lq_lora_set *s = NULL;
    peft_cfg pc;
    memset(&pc, 0, sizeof pc);
    if (!cfg_path || !st_path) {
        st = LQ_ERR_OOM;
        goto done;
    }
    st = lq_read_file(cfg_path, PEFT_MAX_CONFIG_BYTES, "a PEFT " PEFT_CONFIG, &text, &len, err);
    if (st != LQ_OK) goto done;
    if (strlen(text) != len) {
        st = LQ_ERR(err, LQ_ERR_INPUT, "%s: holds a NUL byte", cfg_path);
        goto done;
    }
    st = parse_config(cfg_path, text, &pc, err);
    if (st != LQ_OK) goto done;
    st = lq_st_open(&f, st_path, err);
    if (st != LQ_OK) goto done;
    st = scan_tensors(f, st_path, &pc, &fm, &nm, err);
    if (st != LQ_OK) goto done;
    for (int i = 0; i < nm; i++) pc.cfg.targets |= 1u << fm[i].target;
    st = lq_lora_set_init(&s, &pc.cfg, err);
    if (st != LQ_OK) goto done;
    snprintf(s->base_model, sizeof s->base_model, "%s", pc.base_model);
    for (int i = 0; i < nm && st == LQ_OK; i++)
        if (!lq_lora_set_add(s, fm[i].module, fm[i].A->shape[1], fm[i].B->shape[0], err)) st = err ? err->status : LQ_ERR_ARG;
    if (st == LQ_OK) st = lq_lora_set_finalize(s, 0, err);
    for (int i = 0; i < nm && st == LQ_OK; i++) {
        st = copy_tensor(fm[i].A, s->mods[i].A, st_path, err);
        if (st == LQ_OK) st = copy_tensor(fm[i].B, s->mods[i].B, st_path, err);
    }
    if (st == LQ_OK) {
        *out = s;
        s = NULL;
    }
done:
    lq_lora_set_free(s);
    free(fm);
    lq_st_close(f);
    free(text);
    free(cfg_path);
    free(st_path);
    return st;
}
