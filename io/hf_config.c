/* io/hf_config.c: Hugging Face config.json for Llama-family models, and their RoPE inverse frequencies. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/io_impl.h"

#define CFG_MAX_INT 2147483647.0 /* sizes and token ids fit an int32, as in the reference models */

typedef struct arch_info {
    const char *name;
    int64_t max_position_embeddings; /* the config class's defaults */
    int64_t sliding_window;
    int n_bos, n_eos;
    int64_t bos, eos;
} arch_info;

static const arch_info arch_table[LQ_LLAMA_ARCH_COUNT] = {
    [LQ_LLAMA_ARCH_LLAMA] = {"llama", 2048, 0, 1, 1, 1, 2},
    [LQ_LLAMA_ARCH_MISTRAL] = {"mistral", 4096 * 32, 4096, 1, 1, 1, 2},
    [LQ_LLAMA_ARCH_QWEN2] = {"qwen2", 32768, 0, 0, 0, 0, 0},
};

static const char *const rope_names[LQ_ROPE_TYPE_COUNT] = {"default", "linear", "llama3"};

const char *lq_llama_arch_name(lq_llama_arch a) {
    return (unsigned)a < LQ_LLAMA_ARCH_COUNT ? arch_table[a].name : "invalid";
}

const char *lq_rope_type_name(lq_rope_type t) { return (unsigned)t < LQ_ROPE_TYPE_COUNT ? rope_names[t] : "invalid"; }

/* --- typed getters: absent (or JSON null) keys take the default; each failure names the key ---- */

typedef struct cfg_ctx {
    const char *file;
    lq_err *err;
} cfg_ctx;

static const cJSON *get(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static lq_status bad(const cfg_ctx *c, const char *key, const char *what) {
    return LQ_ERR(c->err, LQ_ERR_INPUT, "%s: config key \"%s\" %s", c->file, key, what);
}

/* An integer in [lo, CFG_MAX_INT]. */
static lq_status int_value(const cfg_ctx *c, const char *key, const cJSON *v, int64_t lo, int64_t *out) {
    if (!cJSON_IsNumber(v)) return bad(c, key, "is not a number");
    double d = v->valuedouble;
    if (!isfinite(d) || d != floor(d) || d < (double)lo || d > CFG_MAX_INT)
        return LQ_ERR(c->err, LQ_ERR_INPUT, "%s: config key \"%s\" = %.17g is not an integer in [%lld, %.0f]", c->file,
                      key, d, (long long)lo, CFG_MAX_INT);
    *out = (int64_t)d;
    return LQ_OK;
}

/* A positive integer; required keys fail when absent, others keep *out. */
static lq_status get_size(const cfg_ctx *c, const cJSON *obj, const char *key, bool required, int64_t *out) {
    const cJSON *v = get(obj, key);
    if (!v) return required ? bad(c, key, "is missing (required)") : LQ_OK;
    return int_value(c, key, v, 1, out);
}

/* A finite number > 0. */
static lq_status pos_value(const cfg_ctx *c, const char *key, const cJSON *v, double *out) {
    if (!cJSON_IsNumber(v)) return bad(c, key, "is not a number");
    double d = v->valuedouble;
    if (!isfinite(d) || d <= 0)
        return LQ_ERR(c->err, LQ_ERR_INPUT, "%s: config key \"%s\" = %.17g is not a finite number > 0", c->file, key, d);
    *out = d;
    return LQ_OK;
}

/* An optional finite number > 0: absent keeps *out. */
static lq_status get_pos(const cfg_ctx *c, const cJSON *obj, const char *key, double *out) {
    const cJSON *v = get(obj, key);
    return v ? pos_value(c, key, v, out) : LQ_OK;
}

static lq_status get_bool(const cfg_ctx *c, const cJSON *obj, const char *key, bool *out) {
    const cJSON *v = get(obj, key);
    if (!v) return LQ_OK;
    if (!cJSON_IsBool(v)) return bad(c, key, "is not true or false");
    *out = cJSON_IsTrue(v);
    return LQ_OK;
}

/* An integer or a list of integers (at most LQ_LLAMA_MAX_TOKEN_IDS); absent keeps the default. */
static lq_status get_ids(const cfg_ctx *c, const cJSON *obj, const char *key, int *n, int64_t *ids) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v) return LQ_OK;
    if (cJSON_IsNull(v)) {
        *n = 0;
        return LQ_OK;
    }
    if (cJSON_IsNumber(v)) {
        *n = 1;
        return int_value(c, key, v, 0, &ids[0]);
    }
    if (!cJSON_IsArray(v)) return bad(c, key, "is not an integer or a list of integers");
    int k = cJSON_GetArraySize(v);
    if (k > LQ_LLAMA_MAX_TOKEN_IDS)
        return LQ_ERR(c->err, LQ_ERR_INPUT, "%s: config key \"%s\" lists %d token ids, more than the %d supported",
                      c->file, key, k, LQ_LLAMA_MAX_TOKEN_IDS);
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, v) LQ_TRY(int_value(c, key, e, 0, &ids[i++]));
    *n = k;
    return LQ_OK;
}

static lq_status get_string(const cfg_ctx *c, const cJSON *obj, const char *key, const char **out) {
    const cJSON *v = get(obj, key);
    if (!v) return LQ_OK;
    if (!cJSON_IsString(v)) return bad(c, key, "is not a string");
    *out = v->valuestring;
    return LQ_OK;
}

/* --- RoPE ---------------------------------------------------------------------------------------- */

/* transformers 5 prefers a non-empty "rope_scaling" over "rope_parameters"; rope_theta inside the
 * chosen object wins over the top-level one. */
static lq_status parse_rope(const cfg_ctx *c, const cJSON *root, lq_llama_config *cfg) {
    const cJSON *rs = get(root, "rope_scaling"), *rp = get(root, "rope_parameters");
    const cJSON *src = (rs && !(cJSON_IsObject(rs) && !rs->child)) ? rs : rp;
    const char *sk = src == rs ? "rope_scaling" : "rope_parameters";
    char key[64];
    cfg->rope_type = LQ_ROPE_DEFAULT;
    cfg->rope_factor = 1.0;
    cfg->rope_theta = 10000.0;
    LQ_TRY(get_pos(c, root, "rope_theta", &cfg->rope_theta));
    double prf = 1.0;
    LQ_TRY(get_pos(c, root, "partial_rotary_factor", &prf));
    if (prf != 1.0) return bad(c, "partial_rotary_factor", "is not 1: partial rotary embeddings are not supported");
    if (!src) return LQ_OK;
    if (!cJSON_IsObject(src)) return bad(c, sk, "is not an object");
    for (const cJSON *e = src->child; e; e = e->next)
        if (cJSON_IsObject(e)) {
            snprintf(key, sizeof key, "%s.%.40s", sk, e->string);
            return bad(c, key, "is an object: per-layer RoPE parameters are not supported");
        }
    const char *type = "default";
    snprintf(key, sizeof key, "%s.rope_type", sk);
    const cJSON *t = get(src, "rope_type");
    if (!t) {
        snprintf(key, sizeof key, "%s.type", sk);
        t = get(src, "type");
    }
    if (t) {
        if (!cJSON_IsString(t)) return bad(c, key, "is not a string");
        type = t->valuestring;
    }
    int rt = 0;
    while (rt < LQ_ROPE_TYPE_COUNT && strcmp(rope_names[rt], type) != 0) rt++;
    if (rt == LQ_ROPE_TYPE_COUNT)
        return LQ_ERR(c->err, LQ_ERR_INPUT,
                      "%s: config key \"%s\" = \"%.40s\" is not a RoPE type loquat supports (default, linear, llama3)",
                      c->file, key, type);
    cfg->rope_type = (lq_rope_type)rt;
    snprintf(key, sizeof key, "%s.rope_theta", sk);
    const cJSON *th = get(src, "rope_theta");
    if (th) LQ_TRY(pos_value(c, key, th, &cfg->rope_theta));
    snprintf(key, sizeof key, "%s.partial_rotary_factor", sk);
    const cJSON *pv = get(src, "partial_rotary_factor");
    if (pv && !(cJSON_IsNumber(pv) && pv->valuedouble == 1.0))
        return bad(c, key, "is not 1: partial rotary embeddings are not supported");
    if (cfg->rope_type == LQ_ROPE_DEFAULT) return LQ_OK;

    /* linear and llama3 both need factor; names in messages carry the object's name. */
    struct {
        const char *name;
        double *dst;
    } nums[] = {{"factor", &cfg->rope_factor},
                {"low_freq_factor", &cfg->rope_low_freq_factor},
                {"high_freq_factor", &cfg->rope_high_freq_factor}};
    int n_nums = cfg->rope_type == LQ_ROPE_LLAMA3 ? 3 : 1;
    for (int i = 0; i < n_nums; i++) {
        snprintf(key, sizeof key, "%s.%s", sk, nums[i].name);
        const cJSON *v = get(src, nums[i].name);
        if (!v) return bad(c, key, "is missing (required for this rope_type)");
        LQ_TRY(pos_value(c, key, v, nums[i].dst));
    }
    if (cfg->rope_type == LQ_ROPE_LLAMA3) {
        if (!(cfg->rope_high_freq_factor > cfg->rope_low_freq_factor)) {
            snprintf(key, sizeof key, "%s.high_freq_factor", sk);
            return bad(c, key, "is not greater than low_freq_factor");
        }
        cfg->rope_original_max_position = cfg->max_position_embeddings;
        snprintf(key, sizeof key, "%s.original_max_position_embeddings", sk);
        const cJSON *v = get(src, "original_max_position_embeddings");
        if (v) LQ_TRY(int_value(c, key, v, 1, &cfg->rope_original_max_position));
    }
    return LQ_OK;
}

/* --- the whole config -------------------------------------------------------------------------- */

static lq_status parse_root(const cfg_ctx *c, const cJSON *root, lq_llama_config *cfg) {
    if (!cJSON_IsObject(root)) return LQ_ERR(c->err, LQ_ERR_INPUT, "%s: config.json is not a JSON object", c->file);
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!mt) return bad(c, "model_type", "is missing (required)");
    if (!cJSON_IsString(mt)) return bad(c, "model_type", "is not a string");
    int a = 0;
    while (a < LQ_LLAMA_ARCH_COUNT && strcmp(arch_table[a].name, mt->valuestring) != 0) a++;
    if (a == LQ_LLAMA_ARCH_COUNT)
        return LQ_ERR(c->err, LQ_ERR_INPUT,
                      "%s: config key \"model_type\" = \"%.40s\" is not a model loquat supports (llama, mistral, qwen2)",
                      c->file, mt->valuestring);
    const arch_info *ai = &arch_table[a];
    cfg->arch = (lq_llama_arch)a;

    LQ_TRY(get_size(c, root, "hidden_size", true, &cfg->hidden_size));
    LQ_TRY(get_size(c, root, "intermediate_size", true, &cfg->intermediate_size));
    LQ_TRY(get_size(c, root, "num_hidden_layers", true, &cfg->num_hidden_layers));
    LQ_TRY(get_size(c, root, "num_attention_heads", true, &cfg->num_attention_heads));
    LQ_TRY(get_size(c, root, "vocab_size", true, &cfg->vocab_size));
    cfg->num_key_value_heads = cfg->num_attention_heads;
    LQ_TRY(get_size(c, root, "num_key_value_heads", false, &cfg->num_key_value_heads));
    bool has_head_dim = get(root, "head_dim") != NULL;
    LQ_TRY(get_size(c, root, "head_dim", false, &cfg->head_dim));
    if (!has_head_dim) {
        if (cfg->hidden_size % cfg->num_attention_heads != 0)
            return LQ_ERR(c->err, LQ_ERR_INPUT,
                          "%s: config key \"num_attention_heads\" = %lld does not divide hidden_size = %lld (and no "
                          "head_dim is given)", c->file, (long long)cfg->num_attention_heads,
                          (long long)cfg->hidden_size);
        cfg->head_dim = cfg->hidden_size / cfg->num_attention_heads;
    }
    if (cfg->head_dim % 2 != 0)
        return LQ_ERR(c->err, LQ_ERR_INPUT, "%s: config key \"head_dim\" = %lld is odd: RoPE rotates pairs", c->file,
                      (long long)cfg->head_dim);
    if (cfg->num_key_value_heads > cfg->num_attention_heads || cfg->num_attention_heads % cfg->num_key_value_heads)
        return LQ_ERR(c->err, LQ_ERR_INPUT,
                      "%s: config key \"num_key_value_heads\" = %lld does not divide num_attention_heads = %lld",
                      c->file, (long long)cfg->num_key_value_heads, (long long)cfg->num_attention_heads);

    cfg->rms_norm_eps = 1e-6;
    LQ_TRY(get_pos(c, root, "rms_norm_eps", &cfg->rms_norm_eps));
    cfg->max_position_embeddings = ai->max_position_embeddings;
    LQ_TRY(get_size(c, root, "max_position_embeddings", false, &cfg->max_position_embeddings));
    LQ_TRY(get_bool(c, root, "tie_word_embeddings", &cfg->tie_word_embeddings));

    if (cfg->arch == LQ_LLAMA_ARCH_LLAMA) {
        bool ab = false;
        LQ_TRY(get_bool(c, root, "attention_bias", &ab));
        cfg->qkv_bias = cfg->o_bias = ab;
        LQ_TRY(get_bool(c, root, "mlp_bias", &cfg->mlp_bias));
    } else if (cfg->arch == LQ_LLAMA_ARCH_QWEN2) {
        cfg->qkv_bias = true;
    }

    cfg->sliding_window = ai->sliding_window;
    if (cfg->arch == LQ_LLAMA_ARCH_MISTRAL) {
        const cJSON *sw = cJSON_GetObjectItemCaseSensitive(root, "sliding_window");
        if (sw && cJSON_IsNull(sw)) cfg->sliding_window = 0;
        else LQ_TRY(get_size(c, root, "sliding_window", false, &cfg->sliding_window));
    } else if (cfg->arch == LQ_LLAMA_ARCH_QWEN2) {
        bool use = false;
        LQ_TRY(get_bool(c, root, "use_sliding_window", &use));
        if (use) return bad(c, "use_sliding_window", "is true: Qwen2's per-layer sliding window is not supported");
    }

    cfg->n_bos = ai->n_bos, cfg->bos_token_id[0] = ai->bos;
    cfg->n_eos = ai->n_eos, cfg->eos_token_id[0] = ai->eos;
    LQ_TRY(get_ids(c, root, "bos_token_id", &cfg->n_bos, cfg->bos_token_id));
    LQ_TRY(get_ids(c, root, "eos_token_id", &cfg->n_eos, cfg->eos_token_id));

    const char *act = NULL;
    LQ_TRY(get_string(c, root, "hidden_act", &act));
    if (act && strcmp(act, "silu") != 0)
        return LQ_ERR(c->err, LQ_ERR_INPUT, "%s: config key \"hidden_act\" = \"%.40s\" is not supported (only silu)",
                      c->file, act);

    /* transformers 5 writes "dtype"; older files "torch_dtype". */
    cfg->dtype = LQ_DTYPE_COUNT;
    const char *dkey = get(root, "dtype") ? "dtype" : "torch_dtype", *dt = NULL;
    LQ_TRY(get_string(c, root, dkey, &dt));
    if (dt) {
        if (strcmp(dt, "float32") == 0) cfg->dtype = LQ_DTYPE_F32;
        else if (strcmp(dt, "float16") == 0) cfg->dtype = LQ_DTYPE_F16;
        else if (strcmp(dt, "bfloat16") == 0) cfg->dtype = LQ_DTYPE_BF16;
        else
            return LQ_ERR(c->err, LQ_ERR_INPUT,
                          "%s: config key \"%s\" = \"%.40s\" is not float32, float16 or bfloat16", c->file, dkey, dt);
    }
    return parse_rope(c, root, cfg);
}

lq_status lq_llama_config_parse(lq_llama_config *cfg, const char *json, size_t len, const char *name, lq_err *err) {
    if (!cfg || (!json && len)) return LQ_ERR(err, LQ_ERR_ARG, "lq_llama_config_parse: NULL argument");
    cfg_ctx c = {name ? name : "config.json", err};
    memset(cfg, 0, sizeof *cfg);
    if (len > LQ_HF_CONFIG_MAX_BYTES)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: %zu bytes, more than the %zu a config.json may have", c.file, len,
                      LQ_HF_CONFIG_MAX_BYTES);
    if (!lq_io_utf8_ok(json, len))
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: not UTF-8 text (or holds a NUL byte)", c.file);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, false);
    if (!root) {
        size_t at = end && end >= json ? (size_t)(end - json) : 0;
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: not valid JSON (near byte %zu)", c.file, at);
    }
    for (const char *p = end; p < json + len; p++)
        if (!strchr(" \t\r\n", *p)) {
            cJSON_Delete(root);
            return LQ_ERR(err, LQ_ERR_INPUT, "%s: text after the JSON object at byte %zu", c.file, (size_t)(p - json));
        }
    lq_status s = parse_root(&c, root, cfg);
    cJSON_Delete(root);
    if (s != LQ_OK) memset(cfg, 0, sizeof *cfg);
    return s;
}

lq_status lq_llama_config_load(lq_llama_config *cfg, const char *path, lq_err *err) {
    if (!cfg || !path) return LQ_ERR(err, LQ_ERR_ARG, "lq_llama_config_load: NULL argument");
    struct stat st;
    char *file = NULL;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        size_t n = strlen(path) + sizeof "/config.json";
        file = malloc(n);
        if (!file) return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", path);
        snprintf(file, n, "%s/config.json", path);
    }
    const char *f = file ? file : path;
    char *buf = NULL;
    size_t len = 0;
    lq_status s = lq_io_read_file(f, LQ_HF_CONFIG_MAX_BYTES, &buf, &len, err);
    if (s == LQ_OK) s = lq_llama_config_parse(cfg, buf, len, f, err);
    free(buf);
    free(file);
    return s;
}

/* --- RoPE inverse frequencies ------------------------------------------------------------------- */

/* Every step is one float32 operation, in transformers' order (torch's CPU kernels round each
 * elementwise op to float32; a Python scalar operand is first rounded to float32):
 *   inv = 1 / theta^(float(2i) / d)              (reciprocal of a float32 power)
 *   linear: inv / factor
 *   llama3: wavelen = (1 / inv) * float(2 pi); low = L / lf, high = L / hf (doubles, compared
 *           as float32); inv / factor past low; smooth = ((1 / wavelen) * L - lf) / (hf - lf) and
 *           (1 - smooth) * inv / factor + smooth * inv in between; inv itself below high.
 * The power: torch uses SLEEF's powf (within 1 ulp); here it is pow() in double rounded once,
 * i.e. the correctly rounded value, which can differ from torch's in the last bit. The volatile
 * temporaries keep every product and sum its own float32 rounding: no FMA contraction, whatever
 * the compiler flags. */
lq_status lq_llama_rope_inv_freq(const lq_llama_config *cfg, float *out) {
    if (!cfg || !out || cfg->head_dim < 2 || cfg->head_dim % 2 || !(cfg->rope_theta > 0) ||
        (unsigned)cfg->rope_type >= LQ_ROPE_TYPE_COUNT)
        return LQ_ERR_ARG;
    int64_t half = cfg->head_dim / 2;
    volatile float dim = (float)cfg->head_dim, base = (float)cfg->rope_theta;
    for (int64_t i = 0; i < half; i++) {
        volatile float e = (float)(2 * i) / dim;
        volatile float p = (float)pow((double)base, (double)e);
        out[i] = 1.0f / p;
    }
    return lq_llama_rope_scale_inv_freq(cfg, out);
}

lq_status lq_llama_rope_scale_inv_freq(const lq_llama_config *cfg, float *inv_freq) {
    if (!cfg || !inv_freq || cfg->head_dim < 2 || cfg->head_dim % 2 || (unsigned)cfg->rope_type >= LQ_ROPE_TYPE_COUNT)
        return LQ_ERR_ARG;
    int64_t half = cfg->head_dim / 2;
    float *out = inv_freq;
    if (cfg->rope_type == LQ_ROPE_LINEAR) {
        if (!(cfg->rope_factor > 0)) return LQ_ERR_ARG;
        float f = (float)cfg->rope_factor;
        for (int64_t i = 0; i < half; i++) out[i] = out[i] / f;
    } else if (cfg->rope_type == LQ_ROPE_LLAMA3) {
        if (!(cfg->rope_high_freq_factor > cfg->rope_low_freq_factor) || !(cfg->rope_factor > 0) ||
            cfg->rope_original_max_position < 1)
            return LQ_ERR_ARG;
        double old_ctx = (double)cfg->rope_original_max_position;
        float factor = (float)cfg->rope_factor, lf = (float)cfg->rope_low_freq_factor;
        float low_wl = (float)(old_ctx / cfg->rope_low_freq_factor);
        float high_wl = (float)(old_ctx / cfg->rope_high_freq_factor);
        float ctx_f = (float)old_ctx, two_pi = (float)(2.0 * M_PI);
        float denom = (float)(cfg->rope_high_freq_factor - cfg->rope_low_freq_factor);
        for (int64_t i = 0; i < half; i++) {
            volatile float inv = out[i];
            volatile float r = 1.0f / inv;
            volatile float wavelen = r * two_pi;
            if (wavelen > low_wl) {
                out[i] = inv / factor;
            } else if (!(wavelen < high_wl)) {
                volatile float rw = 1.0f / wavelen;
                volatile float t = rw * ctx_f;
                volatile float s = (t - lf) / denom;
                volatile float a = (1.0f - s) * inv;
                volatile float b = a / factor;
                volatile float c2 = s * inv;
                out[i] = b + c2;
            }
        }
    }
    return LQ_OK;
}
