/* train/qat_config.c: the QAT experiment config (`loquat qat`): schema, quantization specs in compact
 * or mapping form, compare schemes (presets or mappings), per-layer overrides, load / write. */
#include "train/qat.h"

#include <fnmatch.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "models/qat.h"
#include "train/qat_impl.h"
#include "train/yaml_tree.h"

_Static_assert(sizeof(lq_qat_run_mode) == sizeof(int), "enum fields are read as int");

#define WHERE_MAX 320

/* The schema rows below are positional (key, type, offset, size, default, lo, hi, flags, choices, help,
 * custom, sub, elem_size, off2, max_n); the fields a row leaves out are zero. */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

/* --- presets ----------------------------------------------------------------------------------- */

typedef struct preset {
    const char *name, *weights, *activations;
} preset;

/* Weights symmetric per output channel (minmax), activations static asymmetric per tensor with a
 * moving-average observer, as torch.ao's default QAT qconfig; W4G32-DYN8 is torchao's
 * Int8DynActInt4Weight recipe (int4 symmetric per group of 32, int8 asymmetric per token). */
static const preset presets[] = {
    {"W8A8", "int8:channel", "int8:asym:movavg"},
    {"W4A8", "int4:channel", "int8:asym:movavg"},
    {"W4A4", "int4:channel", "int4:asym:movavg"},
    {"W2A8", "int2:channel", "int8:asym:movavg"},
    {"W8A32", "int8:channel", "float"},
    {"W4A32", "int4:channel", "float"},
    {"W4G32-DYN8", "int4:g32", "int8:asym:token"},
};

bool lq_qat_preset(const char *name, lq_qat_scheme *out) {
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++) {
        if (strcasecmp(name, presets[i].name)) continue;
        lq_err e = {0};
        memset(out, 0, sizeof *out);
        if (lq_qspec_parse(presets[i].weights, &out->weights, &e) != LQ_OK ||
            lq_qspec_parse(presets[i].activations, &out->activations, &e) != LQ_OK)
            return false;
        out->name = strdup(presets[i].name);
        return out->name != NULL;
    }
    return false;
}

static void preset_names(char *buf, size_t cap) {
    buf[0] = 0;
    for (size_t i = 0; i < sizeof presets / sizeof *presets; i++) {
        size_t l = strlen(buf);
        snprintf(buf + l, cap - l, "%s%s", i ? ", " : "", presets[i].name);
    }
}

/* --- a quantization spec: compact string ("int4:g32:sym") or a mapping --------------------------- */

typedef struct spec_map {
    int bits;
    bool symmetric;
    char *granularity;
    int64_t group_size;
    char *observer;
    double observer_param;
    bool learnable;
} spec_map;

static const lq_ykey spec_keys[] = {
    {"bits", LQ_YT_INT, offsetof(spec_map, bits), sizeof(int), "8", 0, 8, 0, NULL, "0 = float, else 2..8"},
    {"symmetric", LQ_YT_BOOL, offsetof(spec_map, symmetric), 0, "true", 0, 0, 0, NULL, "signed codes, zero point 0"},
    {"granularity", LQ_YT_STR, offsetof(spec_map, granularity), 0, "tensor", 0, 0, 0,
     (const lq_ychoice[]){{"tensor", 0}, {"channel", 1}, {"group", 2}, {"token", 3}, {NULL, 0}},
     "tensor | channel | group | token (dynamic)"},
    {"group_size", LQ_YT_INT, offsetof(spec_map, group_size), sizeof(int64_t), "0", 0, 1 << 20, 0, NULL,
     "elements per group (granularity group)"},
    {"observer", LQ_YT_STR, offsetof(spec_map, observer), 0, "minmax", 0, 0, 0,
     (const lq_ychoice[]){{"minmax", 0}, {"movavg", 1}, {"pct", 2}, {"mse", 3}, {NULL, 0}},
     "minmax | movavg | pct | mse"},
    {"observer_param", LQ_YT_F64, offsetof(spec_map, observer_param), 0, "0", 0, 1e9, 0, NULL,
     "the observer's parameter (0 = its default)"},
    {"learnable", LQ_YT_BOOL, offsetof(spec_map, learnable), 0, "false", 0, 0, 0, NULL, "learned scale (LSQ)"},
    {NULL},
};

static lq_qspec *spec_of(const lq_ykey *k, void *obj) { return (lq_qspec *)((char *)obj + k->off); }

static lq_status spec_parse(const lq_ykey *k, const char *name, const lq_ynode *v, void *obj, lq_err *err) {
    char where[WHERE_MAX];
    lq_ynode_where(v, where, sizeof where);
    lq_qspec *q = spec_of(k, obj);
    if (k->off2) *(bool *)((char *)obj + k->off2) = true;
    if (v->kind == LQ_YNODE_SCALAR) {
        lq_err e = {0};
        if (lq_qspec_parse(v->str, q, &e) != LQ_OK)
            return LQ_ERR(err, LQ_ERR_INPUT, "%s: key '%s': %s (e.g. int8:channel, int4:g32, int8:asym:token, float)",
                          where, name, e.msg);
        return LQ_OK;
    }
    if (v->kind != LQ_YNODE_MAP)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: key '%s': expected a spec such as int4:channel or a mapping (bits: ...)",
                      where, name);
    spec_map m;
    lq_yschema_defaults(spec_keys, &m);
    lq_status st = lq_yschema_apply(spec_keys, v, name, &m, err);
    if (st == LQ_OK) {
        /* the mapping, written in the compact form, goes through the same parser and checks */
        char s[160];
        if (m.bits == 0) {
            snprintf(s, sizeof s, "float");
        } else {
            char g[32];
            if (!strcmp(m.granularity, "group")) snprintf(g, sizeof g, "g%lld", (long long)m.group_size);
            else snprintf(g, sizeof g, "%s", m.granularity);
            char o[48];
            if (m.observer_param > 0) snprintf(o, sizeof o, "%s=%.17g", m.observer, m.observer_param);
            else snprintf(o, sizeof o, "%s", m.observer);
            snprintf(s, sizeof s, "int%d:%s:%s:%s%s", m.bits, m.symmetric ? "sym" : "asym", g, o, m.learnable ? ":lsq" : "");
        }
        lq_err e = {0};
        if (lq_qspec_parse(s, q, &e) != LQ_OK)
            st = LQ_ERR(err, LQ_ERR_INPUT, "%s: key '%s': %s", where, name, e.msg);
    }
    lq_yschema_free(spec_keys, &m);
    return st;
}

static void spec_default(const lq_ykey *k, void *obj) {
    lq_err e = {0};
    if (lq_qspec_parse(k->def ? k->def : "float", spec_of(k, obj), &e) != LQ_OK) memset(spec_of(k, obj), 0, sizeof(lq_qspec));
    if (k->off2) *(bool *)((char *)obj + k->off2) = false;
}

static void spec_write(FILE *f, const lq_ykey *k, const void *obj) {
    char s[160];
    lq_qspec_format(spec_of(k, (void *)obj), s, sizeof s);
    lq_yaml_write_quoted(f, s);
}

static cJSON *spec_json(const lq_ykey *k, const void *obj) {
    char s[160];
    lq_qspec_format(spec_of(k, (void *)obj), s, sizeof s);
    return cJSON_CreateString(s);
}

static const lq_ycustom spec_custom = {spec_parse, spec_default, spec_write, spec_json};

/* --- compare: a list of preset names or {name, weights, activations, pact} ---------------------- */

static const lq_ykey scheme_keys[] = {
    {"name", LQ_YT_STR, offsetof(lq_qat_scheme, name), 0, NULL, 0, 0, LQ_YF_REQUIRED, NULL, "the row label"},
    {"weights", LQ_YT_CUSTOM, offsetof(lq_qat_scheme, weights), 0, "float", 0, 0, 0, NULL, "weight spec",
     &spec_custom},
    {"activations", LQ_YT_CUSTOM, offsetof(lq_qat_scheme, activations), 0, "float", 0, 0, 0, NULL,
     "activation spec", &spec_custom},
    {"pact", LQ_YT_BOOL, offsetof(lq_qat_scheme, pact), 0, "false", 0, 0, 0, NULL, "PACT clipping"},
    {NULL},
};

static lq_status compare_parse(const lq_ykey *k, const char *name, const lq_ynode *v, void *obj, lq_err *err) {
    lq_qat_config *c = obj;
    char where[WHERE_MAX], sub[160], names[200];
    for (int i = 0; i < c->n_compare; i++) lq_yschema_free(scheme_keys, &c->compare[i]);
    c->n_compare = 0;
    lq_ynode_where(v, where, sizeof where);
    if (v->kind != LQ_YNODE_SEQ)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: key '%s': expected a list of schemes (names or mappings)", where, name);
    if (v->n > LQ_QAT_MAX_SCHEMES)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: key '%s': %d schemes, at most %d", where, name, v->n, LQ_QAT_MAX_SCHEMES);
    for (int i = 0; i < v->n; i++) {
        const lq_ynode *e = v->kids[i];
        lq_qat_scheme *s = &c->compare[i];
        memset(s, 0, sizeof *s);
        lq_ynode_where(e, where, sizeof where);
        if (e->kind == LQ_YNODE_SCALAR) {
            if (!lq_qat_preset(e->str, s)) {
                preset_names(names, sizeof names);
                return LQ_ERR(err, LQ_ERR_INPUT, "%s: key '%s.%d': unknown scheme '%.60s' (presets: %s; or a mapping "
                              "{name, weights, activations})", where, name, i, e->str, names);
            }
        } else {
            lq_yschema_defaults(scheme_keys, s);
            snprintf(sub, sizeof sub, "%s.%d", name, i);
            c->n_compare = i + 1;
            LQ_TRY(lq_yschema_apply(scheme_keys, e, sub, s, err));
        }
        c->n_compare = i + 1;
        for (int j = 0; j < i; j++)
            if (!strcmp(c->compare[j].name, s->name))
                return LQ_ERR(err, LQ_ERR_INPUT, "%s: key '%s.%d': scheme '%s' is listed twice", where, name, i, s->name);
    }
    (void)k;
    return LQ_OK;
}

static void compare_default(const lq_ykey *k, void *obj) {
    lq_qat_config *c = obj;
    (void)k;
    for (int i = 0; i < c->n_compare; i++) lq_yschema_free(scheme_keys, &c->compare[i]);
    c->n_compare = 0;
    static const char *const def[] = {"W8A8", "W4A8", "W4A4", "W2A8", "W4G32-DYN8"};
    for (int i = 0; i < 5; i++)
        if (lq_qat_preset(def[i], &c->compare[c->n_compare])) c->n_compare++;
}

static void compare_write(FILE *f, const lq_ykey *k, const void *obj) {
    const lq_qat_config *c = obj;
    (void)k;
    fputc('[', f);
    for (int i = 0; i < c->n_compare; i++) {
        const lq_qat_scheme *s = &c->compare[i];
        char w[160], a[160];
        lq_qspec_format(&s->weights, w, sizeof w);
        lq_qspec_format(&s->activations, a, sizeof a);
        fprintf(f, "%s{name: ", i ? ", " : "");
        lq_yaml_write_quoted(f, s->name);
        fprintf(f, ", weights: \"%s\", activations: \"%s\", pact: %s}", w, a, s->pact ? "true" : "false");
    }
    fputc(']', f);
}

static cJSON *compare_json(const lq_ykey *k, const void *obj) {
    const lq_qat_config *c = obj;
    (void)k;
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; arr && i < c->n_compare; i++) cJSON_AddItemToArray(arr, lq_yschema_to_json(scheme_keys, &c->compare[i]));
    return arr;
}

static const lq_ycustom compare_custom = {compare_parse, compare_default, compare_write, compare_json};

/* --- the rest of the schema ------------------------------------------------------------------------ */

static const lq_ychoice mode_choices[] = {{"float", LQ_QAT_RUN_FLOAT}, {"ptq", LQ_QAT_RUN_PTQ}, {"qat", LQ_QAT_RUN_QAT}, {NULL, 0}};
static const lq_ychoice sched_choices[] = {
    {"cosine", LQ_SCHED_COSINE}, {"linear", LQ_SCHED_LINEAR}, {"constant", LQ_SCHED_CONSTANT}, {NULL, 0}};
static const lq_ychoice format_choices[] = {{"text", LQ_DATA_TEXT}, {"completion", LQ_DATA_JSONL},
                                            {"alpaca", LQ_DATA_ALPACA}, {"chat", LQ_DATA_CHAT}, {NULL, 0}};

static const lq_ykey dataset_keys[] = {
    {"path", LQ_YT_PATH, offsetof(lq_dataset_cfg, path), 0, NULL, 0, 0, LQ_YF_REQUIRED, NULL, "file or folder"},
    {"type", LQ_YT_ENUM, offsetof(lq_dataset_cfg, type), sizeof(int), "text", 0, 0, 0, format_choices,
     "text | completion | alpaca | chat"},
    {NULL},
};

#define STAGE(key, epochs_def, lr_def, help)                                                                          \
    static const lq_ykey key[] = {                                                                                   \
        {"epochs", LQ_YT_INT, offsetof(lq_qat_stage_cfg, epochs), sizeof(int64_t), epochs_def, 0, 1e6, 0, NULL,      \
         "passes over the training set (when max_steps is 0)"},                                                      \
        {"max_steps", LQ_YT_INT, offsetof(lq_qat_stage_cfg, max_steps), sizeof(int64_t), "0", 0, 1e12, 0, NULL,      \
         "optimizer steps; 0 = from epochs"},                                                                        \
        {"learning_rate", LQ_YT_F64, offsetof(lq_qat_stage_cfg, learning_rate), 0, lr_def, 0, 10, LQ_YF_LO_OPEN, NULL, \
         help},                                                                                                      \
        {"lr_scheduler", LQ_YT_ENUM, offsetof(lq_qat_stage_cfg, lr_scheduler), sizeof(int), "cosine", 0, 0, 0,      \
         sched_choices, "cosine | linear | constant"},                                                               \
        {"warmup_steps", LQ_YT_INT, offsetof(lq_qat_stage_cfg, warmup_steps), sizeof(int64_t), "0", 0, 1e12, 0, NULL, \
         "linear warmup steps"},                                                                                     \
        {"weight_decay", LQ_YT_F64, offsetof(lq_qat_stage_cfg, weight_decay), 0, "0", 0, 10, 0, NULL,               \
         "AdamW's decoupled weight decay"},                                                                          \
        {NULL},                                                                                                      \
    };
STAGE(train_keys, "3", "1e-3", "peak learning rate of the float baseline")
STAGE(qat_keys, "1", "1e-4", "peak learning rate of QAT fine-tuning")

static const lq_ykey override_keys[] = {
    {"pattern", LQ_YT_STR, offsetof(lq_qat_override, pattern), 0, NULL, 0, 0, LQ_YF_REQUIRED, NULL,
     "glob over layer names (fc3, conv*, *.down_proj)"},
    {"weights", LQ_YT_CUSTOM, offsetof(lq_qat_override, weights), 0, "float", 0, 0, 0, NULL, "weight spec",
     &spec_custom, NULL, 0, offsetof(lq_qat_override, has_weights)},
    {"activations", LQ_YT_CUSTOM, offsetof(lq_qat_override, activations), 0, "float", 0, 0, 0, NULL,
     "activation spec", &spec_custom, NULL, 0, offsetof(lq_qat_override, has_activations)},
    {NULL},
};

#define QOFF(f) (offsetof(lq_qat_quant_cfg, f))
static const lq_ykey quant_keys[] = {
    {"weights", LQ_YT_CUSTOM, QOFF(scheme.weights), 0, "int4:channel", 0, 0, 0, NULL,
     "int<b>[:sym|asym][:tensor|channel|g<N>][:minmax|movavg|pct|mse][:lsq], or float", &spec_custom},
    {"activations", LQ_YT_CUSTOM, QOFF(scheme.activations), 0, "int8:asym:movavg", 0, 0, 0, NULL,
     "int<b>[:asym][:tensor (static) | token (dynamic)][:observer][:lsq], or float", &spec_custom},
    {"pact", LQ_YT_BOOL, QOFF(scheme.pact), 0, "false", 0, 0, 0, NULL, "PACT: learned clipping of static activations"},
    {"keep_first_last_float", LQ_YT_BOOL, QOFF(keep_first_last_float), 0, "false", 0, 0, 0, NULL,
     "the first and last layers stay float"},
    {"overrides", LQ_YT_LIST, QOFF(overrides), 0, NULL, 0, 0, 0, NULL, "per-layer rules {pattern, weights, activations}",
     NULL, override_keys, sizeof(lq_qat_override), QOFF(n_overrides), LQ_QAT_MAX_OVERRIDES},
    {"fake_quant_start_step", LQ_YT_INT, QOFF(fake_quant_start_step), sizeof(int64_t), "0", 0, 1e12, 0, NULL,
     "QAT steps run float (observers watching) before fake quantization turns on"},
    {"observer_freeze_step", LQ_YT_INT, QOFF(observer_freeze_step), sizeof(int64_t), "0", 0, 1e12, 0, NULL,
     "QAT step at which activation observers freeze (0 = never)"},
    {"calibration_batches", LQ_YT_INT, QOFF(calibration_batches), sizeof(int64_t), "32", 1, 1e9, 0, NULL,
     "PTQ: batches the observers see"},
    {NULL},
};

#define OFF(f) (offsetof(lq_qat_config, f))
static const lq_ykey qat_keys_top[] = {
    {"model", LQ_YT_STR, OFF(model), 0, NULL, 0, 0, LQ_YF_REQUIRED, NULL,
     "mlp | cnn (Fashion-MNIST) or a GGUF file / Hugging Face folder"},
    {"mode", LQ_YT_ENUM, OFF(mode), sizeof(int), "qat", 0, 0, 0, mode_choices, "float | ptq | qat (without --compare)"},
    {"data_dir", LQ_YT_PATH, OFF(data_dir), 0, "${LOQUAT_CACHE:-~/.cache/loquat}/data/fashion-mnist", 0, 0, 0, NULL,
     "Fashion-MNIST IDX folder (tools/fetch_fashion_mnist.sh)"},
    {"train_limit", LQ_YT_INT, OFF(train_limit), sizeof(int64_t), "0", 0, 1e9, 0, NULL, "first N training images (0 = all)"},
    {"test_limit", LQ_YT_INT, OFF(test_limit), sizeof(int64_t), "0", 0, 1e9, 0, NULL, "first N test images (0 = all)"},
    {"datasets", LQ_YT_LIST, OFF(datasets), 0, NULL, 0, 0, 0, NULL, "language model: training text",
     NULL, dataset_keys, sizeof(lq_dataset_cfg), OFF(n_datasets), LQ_CFG_MAX_DATASETS},
    {"test_datasets", LQ_YT_LIST, OFF(test_datasets), 0, NULL, 0, 0, 0, NULL, "language model: held-out text",
     NULL, dataset_keys, sizeof(lq_dataset_cfg), OFF(n_test_datasets), LQ_CFG_MAX_DATASETS},
    {"sequence_len", LQ_YT_INT, OFF(sequence_len), sizeof(int64_t), "256", 2, 1 << 20, 0, NULL, "language model: tokens per row"},
    {"eval_rows", LQ_YT_INT, OFF(eval_rows), sizeof(int64_t), "0", 0, 1e9, 0, NULL, "language model: rows scored (0 = all)"},
    {"gradient_checkpointing", LQ_YT_BOOL, OFF(gradient_checkpointing), 0, "false", 0, 0, 0, NULL,
     "language model: recompute each layer in backward"},
    {"batch_size", LQ_YT_INT, OFF(batch_size), sizeof(int64_t), "64", 1, 1 << 20, 0, NULL, "examples (rows) per step"},
    {"train", LQ_YT_MAP, OFF(train), 0, NULL, 0, 0, 0, NULL, "the float baseline's training", NULL, train_keys},
    {"qat", LQ_YT_MAP, OFF(qat), 0, NULL, 0, 0, 0, NULL, "QAT fine-tuning from the float model", NULL, qat_keys},
    {"float_model", LQ_YT_PATH, OFF(float_model), 0, NULL, 0, 0, 0, NULL,
     "start from these float weights (a float.safetensors of an earlier run)"},
    {"adam_beta1", LQ_YT_F64, OFF(adam_beta1), 0, "0.9", 0, 1, LQ_YF_HI_OPEN, NULL, "AdamW beta1"},
    {"adam_beta2", LQ_YT_F64, OFF(adam_beta2), 0, "0.999", 0, 1, LQ_YF_HI_OPEN, NULL, "AdamW beta2"},
    {"adam_epsilon", LQ_YT_F64, OFF(adam_epsilon), 0, "1e-8", 0, 1, LQ_YF_LO_OPEN, NULL, "AdamW epsilon"},
    {"max_grad_norm", LQ_YT_F64, OFF(max_grad_norm), 0, "0", 0, 1e9, 0, NULL, "gradient clipping (0 = none)"},
    {"seed", LQ_YT_U64, OFF(seed), 0, "42", 0, 1.8e19, 0, NULL, "initialisation, shuffling"},
    {"quantization", LQ_YT_MAP, OFF(quantization), 0, NULL, 0, 0, 0, NULL, "what gets quantized, and how", NULL, quant_keys},
    {"compare", LQ_YT_CUSTOM, 0, 0, NULL, 0, 0, 0, NULL, "--compare's schemes: presets or {name, weights, activations}",
     &compare_custom},
    {"output_dir", LQ_YT_PATH, OFF(output_dir), 0, NULL, 0, 0, LQ_YF_REQUIRED, NULL, "results, metrics and exports"},
    {"logging_steps", LQ_YT_INT, OFF(logging_steps), sizeof(int64_t), "50", 1, 1e12, 0, NULL, "metrics.jsonl every N steps"},
    {"eval_batch_size", LQ_YT_INT, OFF(eval_batch_size), sizeof(int64_t), "1000", 1, 1 << 20, 0, NULL,
     "examples (rows) per evaluation batch"},
    {"threads", LQ_YT_INT, OFF(threads), sizeof(int), "0", 0, 4096, 0, NULL, "0 = all cores"},
    {NULL},
};

bool lq_qat_is_classifier(const lq_qat_config *c) {
    return c->model && (!strcmp(c->model, "mlp") || !strcmp(c->model, "cnn"));
}

void lq_qat_config_free(lq_qat_config *c) {
    if (!c) return;
    free(c->quantization.scheme.name); /* not a schema key: a single run's row label (cmd_qat.c) */
    c->quantization.scheme.name = NULL;
    lq_yschema_free(qat_keys_top, c);
    for (int i = 0; i < c->n_compare; i++) lq_yschema_free(scheme_keys, &c->compare[i]);
    c->n_compare = 0;
    free(c->source);
    c->source = NULL;
}

static lq_status check(lq_qat_config *c, const char *name, lq_err *err) {
    if (c->data_dir && (c->data_dir[0] == '~' || strstr(c->data_dir, "${"))) { /* the default is not expanded yet */
        char *x;
        LQ_TRY(lq_path_expand(c->data_dir, "data_dir", name, &x, err));
        free(c->data_dir);
        c->data_dir = x;
    }
    if (lq_qat_is_classifier(c)) return LQ_OK;
    char *x; /* a model file: ~ and ${VAR} expand as in path keys */
    LQ_TRY(lq_path_expand(c->model, "model", name, &x, err));
    free(c->model);
    c->model = x;
    if (c->n_datasets == 0)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: key 'datasets': a language model (model: %s) needs training text", name, c->model);
    if (c->n_test_datasets == 0)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: key 'test_datasets': a language model (model: %s) needs held-out text to score",
                      name, c->model);
    return LQ_OK;
}

lq_status lq_qat_config_parse(const char *yaml, size_t len, const char *name, const char *const *sets, int n_sets,
                              lq_qat_config *out, lq_err *err) {
    memset(out, 0, sizeof *out);
    lq_ynode *root = NULL;
    LQ_TRY(lq_yaml_parse(yaml, len, name, &root, err));
    if (!root) return LQ_ERR(err, LQ_ERR_INPUT, "%s: the config is empty (it needs at least model and output_dir)", name);
    lq_status st = LQ_OK;
    for (int i = 0; i < n_sets && st == LQ_OK; i++) st = lq_yaml_override(root, sets[i], err);
    if (st == LQ_OK) {
        lq_yschema_defaults(qat_keys_top, out);
        st = lq_yschema_apply(qat_keys_top, root, NULL, out, err);
    }
    lq_ynode_free(root);
    if (st == LQ_OK && !(out->source = strdup(name))) st = LQ_ERR(err, LQ_ERR_OOM, "out of memory");
    if (st == LQ_OK) st = check(out, name, err);
    if (st != LQ_OK) lq_qat_config_free(out);
    return st;
}

lq_status lq_qat_config_load(const char *path, const char *const *sets, int n_sets, lq_qat_config *out, lq_err *err) {
    char *data = NULL;
    size_t len = 0;
    LQ_TRY(lq_read_file(path, LQ_YAML_MAX_BYTES, "config", &data, &len, err));
    lq_status st = lq_qat_config_parse(data, len, path, sets, n_sets, out, err);
    free(data);
    return st;
}

lq_status lq_qat_config_write(FILE *f, const lq_qat_config *c) {
    lq_yschema_write(f, qat_keys_top, c, false);
    return ferror(f) ? LQ_ERR_IO : LQ_OK;
}

void lq_qat_resolve(const lq_qat_config *c, const lq_qat_scheme *s, const char *layer, int index, int n_layers,
                    lq_qspec *w, lq_qspec *a, bool *pact) {
    *w = s->weights, *a = s->activations, *pact = s->pact;
    const lq_qat_quant_cfg *q = &c->quantization;
    if (q->keep_first_last_float && (index == 0 || index == n_layers - 1)) {
        w->enabled = a->enabled = false, *pact = false;
    }
    for (int i = 0; i < q->n_overrides; i++) {
        const lq_qat_override *o = &q->overrides[i];
        if (fnmatch(o->pattern, layer, 0) != 0) continue;
        if (o->has_weights) *w = o->weights;
        if (o->has_activations) *a = o->activations, *pact = *pact && a->enabled;
    }
    if (!a->enabled) *pact = false;
}

void lq_qat_resolve_cb(const char *name, int index, int n_layers, lq_qspec *w, lq_qspec *a, bool *pact, void *user) {
    const lq_qat_spec_user *u = user;
    if (!u->s) {
        memset(w, 0, sizeof *w), memset(a, 0, sizeof *a), *pact = false;
        return;
    }
    lq_qat_resolve(u->c, u->s, name, index, n_layers, w, a, pact);
}

void lq_qat_row(lq_qat_result *r, const char *scheme, const char *mode, bool lm) {
    memset(r, 0, sizeof *r);
    snprintf(r->scheme, sizeof r->scheme, "%s", scheme);
    r->mode = mode;
    r->int_metric = NAN;
    r->lm = lm;
}
