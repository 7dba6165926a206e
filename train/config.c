/* train/config.c: the fine-tuning config's schema (axolotl's key names), its checks across keys,
 * and load / parse / write of lq_train_config. */
#include "train/config.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/autograd.h"
#include "core/file.h"
#include "lora/lora.h"
#include "train/yaml_tree.h"

_Static_assert(sizeof(lq_dtype) == sizeof(int), "enum fields are read as int");
_Static_assert(sizeof(lq_lr_sched) == sizeof(int), "enum fields are read as int");
_Static_assert(sizeof(lq_nan_policy) == sizeof(int), "enum fields are read as int");
_Static_assert(sizeof(lq_data_format) == sizeof(int), "enum fields are read as int");

const char *lq_lr_sched_name(lq_lr_sched s) {
    switch (s) {
    case LQ_SCHED_CONSTANT: return "constant";
    case LQ_SCHED_LINEAR: return "linear";
    case LQ_SCHED_COSINE: return "cosine";
    }
    return "invalid";
}

/* --- lora_target_modules / lora_target_linear: a bitmask of lq_lora_target ------------------ */

#define DEFAULT_TARGETS ((1u << LQ_LORA_Q) | (1u << LQ_LORA_K) | (1u << LQ_LORA_V) | (1u << LQ_LORA_O))

static uint32_t *targets_of(const lq_ykey *k, void *obj) { return (uint32_t *)((char *)obj + k->off); }

static lq_status bad_targets(const char *name, const lq_ynode *v, const char *what, lq_err *err) {
    char where[320];
    const char *names[LQ_LORA_N_TARGETS + 1];
    for (int t = 0; t < LQ_LORA_N_TARGETS; t++) names[t] = lq_lora_target_name((lq_lora_target)t);
    names[LQ_LORA_N_TARGETS] = "all-linear";
    const char *hint = v && v->kind == LQ_YNODE_SCALAR ? lq_did_you_mean(v->str, names, LQ_LORA_N_TARGETS + 1) : NULL;
    lq_ynode_where(v, where, sizeof where);
    lq_status st = LQ_ERR(err, LQ_ERR_INPUT,
                          "%s: key '%s': %s (allowed: a list of q_proj, k_proj, v_proj, o_proj, gate_proj, "
                          "up_proj, down_proj, or all-linear)",
                          where, name, what);
    if (hint && err) {
        size_t l = strlen(err->msg);
        snprintf(err->msg + l, sizeof err->msg - l, " (did you mean '%s'?)", hint);
    }
    return st;
}

static lq_status targets_parse(const lq_ykey *k, const char *name, const lq_ynode *v, void *obj, lq_err *err) {
    char what[200];
    if (v->kind == LQ_YNODE_MAP) return bad_targets(name, v, "expected a list of module names, got a mapping", err);
    if (v->kind == LQ_YNODE_SCALAR) { /* "all-linear" or a single name */
        if (!strcmp(v->str, "all-linear")) {
            *targets_of(k, obj) = LQ_LORA_ALL_LINEAR;
            return LQ_OK;
        }
        int t = lq_lora_target_parse(v->str);
        if (t < 0) {
            snprintf(what, sizeof what, "'%.60s' is not a projection name", v->str);
            return bad_targets(name, v, what, err);
        }
        *targets_of(k, obj) = 1u << t;
        return LQ_OK;
    }
    if (v->n == 0) return bad_targets(name, v, "the list is empty", err);
    uint32_t mask = 0;
    for (int i = 0; i < v->n; i++) {
        const lq_ynode *e = v->kids[i];
        if (e->kind != LQ_YNODE_SCALAR) return bad_targets(name, e, "list entries must be names", err);
        int t = lq_lora_target_parse(e->str);
        if (t < 0) {
            snprintf(what, sizeof what, "'%.60s' is not a projection name", e->str);
            return bad_targets(name, e, what, err);
        }
        mask |= 1u << t;
    }
    *targets_of(k, obj) = mask;
    return LQ_OK;
}

static void targets_default(const lq_ykey *k, void *obj) { *targets_of(k, obj) = DEFAULT_TARGETS; }

static void targets_write(FILE *f, const lq_ykey *k, const void *obj) {
    uint32_t m = *targets_of(k, (void *)obj);
    if (m == LQ_LORA_ALL_LINEAR) {
        fputs("all-linear", f);
        return;
    }
    fputc('[', f);
    for (int t = 0, first = 1; t < LQ_LORA_N_TARGETS; t++)
        if (m & (1u << t)) {
            fprintf(f, "%s%s", first ? "" : ", ", lq_lora_target_name((lq_lora_target)t));
            first = 0;
        }
    fputc(']', f);
}

static cJSON *targets_json(const lq_ykey *k, const void *obj) {
    uint32_t m = *targets_of(k, (void *)obj);
    cJSON *a = cJSON_CreateArray();
    for (int t = 0; a && t < LQ_LORA_N_TARGETS; t++)
        if (m & (1u << t)) cJSON_AddItemToArray(a, cJSON_CreateString(lq_lora_target_name((lq_lora_target)t)));
    return a;
}

static const lq_ycustom targets_type = {targets_parse, targets_default, targets_write, targets_json};

/* axolotl's lora_target_linear: true adds every linear projection to lora_target_modules (read
 * after it in schema order); false adds nothing. Not written back: the resolved list says it. */
static lq_status linear_parse(const lq_ykey *k, const char *name, const lq_ynode *v, void *obj, lq_err *err) {
    static const char *const yes[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"};
    static const char *const no[] = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"};
    for (size_t i = 0; v->kind == LQ_YNODE_SCALAR && i < sizeof yes / sizeof *yes; i++) {
        if (!strcmp(v->str, yes[i])) {
            *targets_of(k, obj) = LQ_LORA_ALL_LINEAR;
            return LQ_OK;
        }
        if (!strcmp(v->str, no[i])) return LQ_OK;
    }
    char where[320];
    lq_ynode_where(v, where, sizeof where);
    if (v->kind != LQ_YNODE_SCALAR)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: key '%s': expected true or false, got %s", where, name,
                      v->kind == LQ_YNODE_SEQ ? "a list" : "a mapping");
    return LQ_ERR(err, LQ_ERR_INPUT, "%s: key '%s': expected true or false, got '%.60s'", where, name, v->str);
}
static void linear_default(const lq_ykey *k, void *obj) { (void)k, (void)obj; }
static void linear_write(FILE *f, const lq_ykey *k, const void *obj) { (void)k, (void)obj, fputs("null", f); }
static cJSON *linear_json(const lq_ykey *k, const void *obj) { return (void)k, (void)obj, cJSON_CreateNull(); }
static const lq_ycustom linear_type = {linear_parse, linear_default, linear_write, linear_json};

/* --- the schema -------------------------------------------------------------------------------- */

static const lq_ychoice quant_types[] = {{"nf4", LQ_DTYPE_NF4}, {"fp4", LQ_DTYPE_FP4}, {NULL, 0}};
static const lq_ychoice base_quants[] = {{"bnb", 0}, {"native", 1}, {NULL, 0}};
static const lq_ychoice adapters[] = {{"lora", 0}, {"qlora", 0}, {NULL, 0}};
static const lq_ychoice data_types[] = {{"text", LQ_DATA_TEXT},
                                        {"completion", LQ_DATA_JSONL},
                                        {"alpaca", LQ_DATA_ALPACA},
                                        {"chat", LQ_DATA_CHAT},
                                        {NULL, 0}};
static const lq_ychoice scheds[] = {
    {"constant", LQ_SCHED_CONSTANT}, {"linear", LQ_SCHED_LINEAR}, {"cosine", LQ_SCHED_COSINE}, {NULL, 0}};
static const lq_ychoice optimizers[] = {{"adamw", 0}, {"adamw_torch", 0}, {"adamw_torch_fused", 0}, {NULL, 0}};
static const lq_ychoice devices[] = {{"cpu", 0}, {"cuda", 1}, {NULL, 0}};
static const lq_ychoice cuda_maths[] = {
    {"tf32", LQ_CUDA_MATH_TF32}, {"bf16", LQ_CUDA_MATH_BF16}, {"fp32", LQ_CUDA_MATH_FP32}, {NULL, 0}};
static const lq_ychoice nan_policies[] = {{"stop", LQ_NAN_STOP}, {"skip", LQ_NAN_SKIP}, {NULL, 0}};

#define INF HUGE_VAL
#define C(f) offsetof(lq_train_config, f)
#define D(f) offsetof(lq_dataset_cfg, f)
#define SZ(f) sizeof(((lq_train_config *)0)->f)

static const lq_ykey dataset_keys[] = {
    {.key = "path", .type = LQ_YT_PATH, .off = D(path), .flags = LQ_YF_REQUIRED, .help = "a file or folder"},
    {.key = "type", .type = LQ_YT_ENUM, .off = D(type), .size = sizeof(int), .flags = LQ_YF_REQUIRED,
     .choices = data_types, .help = "text, completion, alpaca or chat"},
    {0},
};

static const lq_ykey schema[] = {
    /* model and base quantization */
    {.key = "base_model", .type = LQ_YT_PATH, .off = C(base_model), .flags = LQ_YF_REQUIRED,
     .help = "GGUF file or Hugging Face folder"},
    {.key = "load_in_4bit", .type = LQ_YT_BOOL, .off = C(load_in_4bit), .def = "true",
     .help = "quantize the base's linear weights to 4 bits at load"},
    {.key = "bnb_4bit_quant_type", .type = LQ_YT_ENUM, .off = C(bnb_4bit_quant_type), .size = sizeof(int),
     .def = "nf4", .choices = quant_types, .help = "nf4 or fp4"},
    {.key = "bnb_4bit_use_double_quant", .type = LQ_YT_BOOL, .off = C(bnb_4bit_use_double_quant), .def = "true",
     .help = "quantize the block scales too"},
    {.key = "quant_block_size", .type = LQ_YT_INT, .off = C(quant_block_size), .size = SZ(quant_block_size),
     .def = "64", .lo = 32, .hi = 4096, .flags = LQ_YF_POW2, .help = "weights per 4-bit block"},
    {.key = "base_quant", .type = LQ_YT_ENUM, .off = C(base_quant_native), .size = SZ(base_quant_native),
     .def = "bnb", .choices = base_quants,
     .help = "bnb (quantize as load_in_4bit says) or native (keep a GGUF model's own blocks)"},
    /* adapter */
    {.key = "adapter", .type = LQ_YT_STR, .off = C(adapter), .def = "lora", .choices = adapters,
     .help = "lora (qlora is read as lora)"},
    {.key = "lora_r", .type = LQ_YT_INT, .off = C(lora_r), .size = SZ(lora_r), .def = "8", .lo = 1, .hi = 65536,
     .help = "adapter rank"},
    {.key = "lora_alpha", .type = LQ_YT_F64, .off = C(lora_alpha), .def = "16", .lo = 0, .hi = INF,
     .flags = LQ_YF_LO_OPEN, .help = "scaling = alpha / r (alpha / sqrt(r) with use_rslora)"},
    {.key = "lora_dropout", .type = LQ_YT_F64, .off = C(lora_dropout), .def = "0.05", .lo = 0, .hi = 1,
     .flags = LQ_YF_HI_OPEN, .help = "dropout on the adapter's input"},
    {.key = "lora_target_modules", .type = LQ_YT_CUSTOM, .off = C(lora_targets), .custom = &targets_type,
     .help = "projections to adapt: a list of q_proj ... down_proj, or all-linear"},
    {.key = "lora_target_linear", .type = LQ_YT_CUSTOM, .off = C(lora_targets), .custom = &linear_type,
     .flags = LQ_YF_NOWRITE, .help = "true: adapt every linear projection (axolotl)"},
    {.key = "use_rslora", .type = LQ_YT_BOOL, .off = C(use_rslora), .def = "false",
     .help = "rank-stabilized scaling alpha / sqrt(r)"},
    {.key = "lora_model_dir", .type = LQ_YT_PATH, .off = C(lora_model_dir),
     .help = "a PEFT adapter folder to start from (null: fresh adapters)"},
    /* data */
    {.key = "datasets", .type = LQ_YT_LIST, .off = C(datasets), .off2 = C(n_datasets), .flags = LQ_YF_REQUIRED,
     .sub = dataset_keys, .elem_size = sizeof(lq_dataset_cfg), .max_n = LQ_CFG_MAX_DATASETS,
     .help = "training data: a list of {path, type: text | completion | alpaca | chat}"},
    {.key = "test_datasets", .type = LQ_YT_LIST, .off = C(test_datasets), .off2 = C(n_test_datasets),
     .sub = dataset_keys, .elem_size = sizeof(lq_dataset_cfg), .max_n = LQ_CFG_MAX_DATASETS,
     .help = "held-out validation data, as datasets (instead of val_set_size)"},
    {.key = "val_set_size", .type = LQ_YT_F64, .off = C(val_set_size), .def = "0", .lo = 0, .hi = INF,
     .help = "validation split: < 1 a fraction of documents, >= 1 a count"},
    {.key = "sequence_len", .type = LQ_YT_INT, .off = C(sequence_len), .size = SZ(sequence_len), .def = "512",
     .lo = 1, .hi = 1 << 20, .help = "tokens per row"},
    {.key = "sample_packing", .type = LQ_YT_BOOL, .off = C(sample_packing), .def = "true",
     .help = "pack documents into full rows"},
    {.key = "dataset_prepared_path", .type = LQ_YT_PATH, .off = C(dataset_prepared_path),
     .help = "token cache folder (null: <output_dir>/cache)"},
    /* batches and length */
    {.key = "micro_batch_size", .type = LQ_YT_INT, .off = C(micro_batch_size), .size = SZ(micro_batch_size),
     .def = "1", .lo = 1, .hi = 1 << 20, .help = "rows per forward / backward"},
    {.key = "gradient_accumulation_steps", .type = LQ_YT_INT, .off = C(gradient_accumulation_steps),
     .size = SZ(gradient_accumulation_steps), .def = "1", .lo = 1, .hi = 1 << 20,
     .help = "micro-batches per optimizer step"},
    {.key = "num_epochs", .type = LQ_YT_INT, .off = C(num_epochs), .size = SZ(num_epochs), .def = "1", .lo = 1,
     .hi = 1 << 20, .help = "passes over the data (when max_steps is 0)"},
    {.key = "max_steps", .type = LQ_YT_INT, .off = C(max_steps), .size = SZ(max_steps), .def = "0", .lo = 0,
     .hi = 1e12, .help = "optimizer steps; 0 = from num_epochs"},
    /* optimizer and schedule */
    {.key = "learning_rate", .type = LQ_YT_F64, .off = C(learning_rate), .def = "2e-4", .lo = 0, .hi = INF,
     .flags = LQ_YF_LO_OPEN, .help = "peak learning rate"},
    {.key = "lr_scheduler", .type = LQ_YT_ENUM, .off = C(lr_scheduler), .size = sizeof(int), .def = "cosine",
     .choices = scheds, .help = "constant, linear or cosine (after warmup)"},
    {.key = "warmup_steps", .type = LQ_YT_INT, .off = C(warmup_steps), .size = SZ(warmup_steps), .def = "0",
     .lo = 0, .hi = 1e12, .help = "linear warmup steps (wins over warmup_ratio)"},
    {.key = "warmup_ratio", .type = LQ_YT_F64, .off = C(warmup_ratio), .def = "0", .lo = 0, .hi = 1,
     .flags = LQ_YF_HI_OPEN, .help = "warmup as a fraction of the steps"},
    {.key = "optimizer", .type = LQ_YT_STR, .off = C(optimizer), .def = "adamw", .choices = optimizers,
     .help = "adamw (adamw_torch, adamw_torch_fused are read as adamw)"},
    {.key = "adam_beta1", .type = LQ_YT_F64, .off = C(adam_beta1), .def = "0.9", .lo = 0, .hi = 1,
     .flags = LQ_YF_HI_OPEN, .help = "AdamW first-moment decay"},
    {.key = "adam_beta2", .type = LQ_YT_F64, .off = C(adam_beta2), .def = "0.999", .lo = 0, .hi = 1,
     .flags = LQ_YF_HI_OPEN, .help = "AdamW second-moment decay"},
    {.key = "adam_epsilon", .type = LQ_YT_F64, .off = C(adam_epsilon), .def = "1e-8", .lo = 0, .hi = INF,
     .flags = LQ_YF_LO_OPEN, .help = "AdamW denominator term"},
    {.key = "weight_decay", .type = LQ_YT_F64, .off = C(weight_decay), .def = "0", .lo = 0, .hi = INF,
     .help = "decoupled weight decay on A and B"},
    {.key = "max_grad_norm", .type = LQ_YT_F64, .off = C(max_grad_norm), .def = "1.0", .lo = 0, .hi = INF,
     .help = "global-norm clipping; 0 = none"},
    {.key = "gradient_checkpointing", .type = LQ_YT_BOOL, .off = C(gradient_checkpointing), .def = "false",
     .help = "recompute each block's activations in backward"},
    {.key = "seed", .type = LQ_YT_U64, .off = C(seed), .def = "42", .lo = 0, .hi = INF,
     .help = "adapter init, shuffles, dropout"},
    {.key = "on_nan", .type = LQ_YT_ENUM, .off = C(nan_policy), .size = sizeof(int), .def = "stop",
     .choices = nan_policies, .help = "a NaN / Inf loss: stop, or skip the update"},
    /* output */
    {.key = "output_dir", .type = LQ_YT_PATH, .off = C(output_dir), .flags = LQ_YF_REQUIRED,
     .help = "checkpoints, metrics, the adapter"},
    {.key = "save_steps", .type = LQ_YT_INT, .off = C(save_steps), .size = SZ(save_steps), .def = "0", .lo = 0,
     .hi = 1e12, .help = "checkpoint every N steps; 0 = at the end only"},
    {.key = "save_total_limit", .type = LQ_YT_INT, .off = C(save_total_limit), .size = SZ(save_total_limit),
     .def = "0", .lo = 0, .hi = 1e12, .help = "checkpoints kept; 0 = all"},
    {.key = "eval_steps", .type = LQ_YT_INT, .off = C(eval_steps), .size = SZ(eval_steps), .def = "0", .lo = 0,
     .hi = 1e12, .help = "evaluate every N steps; 0 = at the end only"},
    {.key = "logging_steps", .type = LQ_YT_INT, .off = C(logging_steps), .size = SZ(logging_steps), .def = "1",
     .lo = 1, .hi = 1e12, .help = "a metrics line every N steps"},
    {.key = "resume_from_checkpoint", .type = LQ_YT_PATH, .off = C(resume_from_checkpoint),
     .help = "a checkpoint file or output folder to continue from"},
    /* machine */
    {.key = "device", .type = LQ_YT_STR, .off = C(device), .def = "cpu", .choices = devices,
     .help = "cpu or cuda"},
    {.key = "cuda_math", .type = LQ_YT_ENUM, .off = C(cuda_math), .size = SZ(cuda_math), .def = "tf32",
     .choices = cuda_maths, .help = "device: cuda matrix products: tf32, bf16 or fp32 inputs (fp32 accumulation)"},
    {.key = "threads", .type = LQ_YT_INT, .off = C(threads), .size = SZ(threads), .def = "0", .lo = 0,
     .hi = 4096, .help = "CPU threads; 0 = all cores"},
    {0},
};

const struct lq_ykey *lq_train_config_schema(void) { return schema; }

void lq_train_config_defaults(lq_train_config *c) {
    memset(c, 0, sizeof *c);
    lq_yschema_defaults(schema, c);
}

void lq_train_config_free(lq_train_config *c) {
    if (!c) return;
    lq_yschema_free(schema, c);
    free(c->source);
    c->source = NULL;
}

/* --- checks across keys ----------------------------------------------------------------------- */

/* "FILE:LINE" of key's value (or the key itself when null), else the source. */
static const char *where_of(const lq_ynode *root, const char *key, char *buf, size_t cap) {
    const lq_ynode *kn, *v = lq_ynode_get(root, key, &kn);
    return lq_ynode_where(v ? v : kn ? kn : root, buf, cap);
}

static lq_status cross_check(const lq_train_config *c, const lq_ynode *root, lq_err *err) {
    char w[320];
    if (c->base_quant_native && c->load_in_4bit)
        return LQ_ERR(err, LQ_ERR_INPUT,
                      "%s: key 'base_quant': native keeps a GGUF model's own blocks, so load_in_4bit must be false "
                      "(it is true%s)",
                      where_of(root, "base_quant", w, sizeof w),
                      lq_ynode_get(root, "load_in_4bit", NULL) ? "" : " by default");
    if (c->val_set_size >= 1 && c->val_set_size != floor(c->val_set_size))
        return LQ_ERR(err, LQ_ERR_INPUT,
                      "%s: key 'val_set_size': %g is neither a fraction (< 1) nor a whole count of documents",
                      where_of(root, "val_set_size", w, sizeof w), c->val_set_size);
    if (c->val_set_size > 0 && c->n_test_datasets > 0)
        return LQ_ERR(err, LQ_ERR_INPUT,
                      "%s: key 'val_set_size': test_datasets already give the validation set; set one of the two",
                      where_of(root, "val_set_size", w, sizeof w));
    return LQ_OK;
}

/* --- load / parse / write ---------------------------------------------------------------------- */

lq_status lq_train_config_parse(const char *yaml, size_t len, const char *name, const char *const *sets,
                                int n_sets, lq_train_config *out, lq_err *err) {
    if (!out) return LQ_ERR(err, LQ_ERR_ARG, "lq_train_config_parse: out is NULL");
    lq_train_config_defaults(out);
    if (!name) name = "";
    if (!yaml && len) return LQ_ERR(err, LQ_ERR_ARG, "lq_train_config_parse: yaml is NULL");
    lq_ynode *root = NULL;
    lq_status st = lq_yaml_parse(yaml ? yaml : "", len, name[0] ? name : "(config)", &root, err);
    if (st == LQ_OK && !root)
        st = LQ_ERR(err, LQ_ERR_INPUT, "%s: the config is empty (it needs base_model, datasets and output_dir)",
                    name[0] ? name : "(config)");
    if (st == LQ_OK && root->kind != LQ_YNODE_MAP) /* its "the top level must be a mapping" error */
        st = lq_yschema_apply(schema, root, NULL, out, err);
    for (int i = 0; st == LQ_OK && i < n_sets; i++) {
        if (!sets || !sets[i]) {
            st = LQ_ERR(err, LQ_ERR_ARG, "lq_train_config_parse: override %d is NULL", i);
            break;
        }
        st = lq_yaml_override(root, sets[i], err);
    }
    if (st == LQ_OK) st = lq_yschema_apply(schema, root, NULL, out, err);
    if (st == LQ_OK) st = cross_check(out, root, err);
    if (st == LQ_OK && !(out->source = strdup(name))) st = LQ_ERR(err, LQ_ERR_OOM, "out of memory");
    lq_ynode_free(root);
    if (st != LQ_OK) {
        lq_train_config_free(out);
        lq_train_config_defaults(out);
    }
    return st;
}

lq_status lq_train_config_load(const char *path, const char *const *sets, int n_sets, lq_train_config *out,
                               lq_err *err) {
    if (!out) return LQ_ERR(err, LQ_ERR_ARG, "lq_train_config_load: out is NULL");
    lq_train_config_defaults(out);
    if (!path) return LQ_ERR(err, LQ_ERR_ARG, "lq_train_config_load: path is NULL");
    char *text = NULL;
    size_t len = 0;
    LQ_TRY(lq_read_file(path, LQ_YAML_MAX_BYTES, "a YAML config", &text, &len, err));
    lq_status st = lq_train_config_parse(text, len, path, sets, n_sets, out, err);
    free(text);
    return st;
}

lq_status lq_train_config_write(FILE *f, const lq_train_config *c) {
    if (!f || !c) return LQ_ERR_ARG;
    lq_yschema_write(f, schema, c, false);
    return ferror(f) ? LQ_ERR_IO : LQ_OK;
}

char *lq_train_config_to_yaml(const lq_train_config *c) {
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    if (!m) return NULL;
    lq_status st = lq_train_config_write(m, c);
    if (fclose(m) != 0 || st != LQ_OK) {
        free(buf);
        return NULL;
    }
    return buf;
}
