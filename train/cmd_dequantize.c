/* train/cmd_dequantize.c: `loquat dequantize`: expands the bitsandbytes 4-bit tensors (as
 * transformers saves them) and loquat's int8 / int4 tensors of a safetensors file back to floats
 * (layouts in train/cmd_quantize.c). Every quant state is checked against its tensors before any
 * arithmetic: a malformed one is bad input naming the tensor. Other tensors are copied unchanged. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/cmd_quant_impl.h"
#include "train/train.h"

typedef struct dq_result {
    float *y;       /* dequantized values (NULL: not a quantized base) */
    int ndim;
    int64_t shape[LQ_ST_MAX_DIMS];
    lq_st_dtype dtype; /* recorded in the state */
    const char *format;
} dq_result;

static int dfail(lq_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int dfail(lq_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loquat dequantize: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return lq_status_exit_code(s);
}

static int64_t find_idx(const lq_st_model *m, const char *base, const char *suffix) {
    char name[1024];
    if ((size_t)snprintf(name, sizeof name, "%s%s", base, suffix) >= sizeof name) return -1;
    int64_t lo = 0, hi = lq_st_model_count(m);
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(lq_st_model_tensor_at(m, mid)->name, name);
        if (c == 0) return mid;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

/* A companion tensor base+suffix with the given dtype and element count; marks it used. */
static lq_status companion(const lq_st_model *m, const char *path, const char *base, const char *suffix,
                           lq_st_dtype dtype, int64_t numel, bool *used, const lq_st_tensor **out, lq_err *err) {
    int64_t i = find_idx(m, base, suffix);
    if (i < 0) return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s' has a quant state but no '%s%s'", path, base, base, suffix);
    const lq_st_tensor *t = lq_st_model_tensor_at(m, i);
    if (t->dtype != dtype || t->numel != numel)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': %s with %lld elements, want %s with %lld", path, t->name,
                      lq_st_dtype_name(t->dtype), (long long)t->numel, lq_st_dtype_name(dtype), (long long)numel);
    used[i] = true;
    *out = t;
    return LQ_OK;
}

/* A JSON integer in [lo, hi]. */
static bool json_int(const cJSON *o, const char *key, int64_t lo, int64_t hi, int64_t *v) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(x) || !(x->valuedouble >= (double)lo && x->valuedouble <= (double)hi) ||
        x->valuedouble != floor(x->valuedouble))
        return false;
    *v = (int64_t)x->valuedouble;
    return true;
}

/* Parses the state tensor's JSON and the fields both layouts share: dtype, shape. */
static lq_status parse_state(const char *path, const lq_st_tensor *st, cJSON **root, dq_result *r, lq_err *err) {
    if (st->dtype != LQ_ST_U8 || st->ndim != 1 || st->numel < 2 || st->numel > QS_MAX_JSON)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': a quant state must be U8 JSON text of at most %d bytes", path,
                      st->name, QS_MAX_JSON);
    char text[QS_MAX_JSON + 1];
    memcpy(text, st->data, (size_t)st->numel);
    text[st->numel] = '\0';
    *root = cJSON_ParseWithLength(text, (size_t)st->numel);
    if (!*root || !cJSON_IsObject(*root))
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': not a JSON object", path, st->name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(*root, "dtype");
    r->dtype = qs_dtype_from_torch_name(cJSON_IsString(dt) ? dt->valuestring : NULL);
    if (r->dtype == LQ_ST_DTYPE_COUNT)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': \"dtype\" must be float32, float16 or bfloat16", path, st->name);
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(*root, "shape");
    int nd = cJSON_IsArray(sh) ? cJSON_GetArraySize(sh) : -1;
    if (nd < 1 || nd > LQ_ST_MAX_DIMS)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': \"shape\" must be an array of 1 to %d sizes", path, st->name,
                      LQ_ST_MAX_DIMS);
    r->ndim = nd;
    uint64_t numel = 1;
    int d = 0;
    for (const cJSON *v = sh->child; v; v = v->next, d++) {
        double x = cJSON_IsNumber(v) ? v->valuedouble : -1;
        if (!(x >= 0 && x <= 9007199254740992.0) || x != floor(x) ||
            __builtin_mul_overflow(numel, (uint64_t)x, &numel) || numel > ((uint64_t)1 << 40))
            return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': shape[%d] is not a valid size", path, st->name, d);
        r->shape[d] = (int64_t)x;
    }
    return LQ_OK;
}

static int64_t shape_numel(const dq_result *r) {
    int64_t n = 1;
    for (int d = 0; d < r->ndim; d++) n *= r->shape[d];
    return n;
}

static lq_status dequant_bnb(const lq_st_model *m, const char *path, const char *base, const lq_st_tensor *st,
                             const char *qt, bool *used, dq_result *r, lq_err *err) {
    cJSON *root = NULL;
    lq_status s = parse_state(path, st, &root, r, err);
    const cJSON *q = root ? cJSON_GetObjectItemCaseSensitive(root, "quant_type") : NULL;
    int64_t block = 0, nblock = 0;
    bool nested = root && cJSON_GetObjectItemCaseSensitive(root, "nested_offset") != NULL;
    if (s == LQ_OK && (!cJSON_IsString(q) || strcmp(q->valuestring, qt) != 0))
        s = LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': \"quant_type\" is not \"%s\"", path, st->name, qt);
    if (s == LQ_OK && (!json_int(root, "blocksize", 32, 4096, &block) || (block & (block - 1))))
        s = LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': \"blocksize\" must be a power of two from 32 to 4096", path,
                   st->name);
    float offset = 0;
    if (s == LQ_OK && nested) {
        const cJSON *nd = cJSON_GetObjectItemCaseSensitive(root, "nested_dtype");
        const cJSON *off = cJSON_GetObjectItemCaseSensitive(root, "nested_offset");
        if (!json_int(root, "nested_blocksize", 1, 1 << 20, &nblock) || !cJSON_IsString(nd) ||
            strcmp(nd->valuestring, "float32") != 0 || !cJSON_IsNumber(off) || !isfinite(off->valuedouble))
            s = LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': nested state needs \"nested_blocksize\" (integer), "
                       "\"nested_dtype\": \"float32\" and a finite \"nested_offset\"", path, st->name);
        else offset = (float)off->valuedouble;
    }
    cJSON_Delete(root);
    if (s != LQ_OK) return s;
    int64_t n = shape_numel(r), nb = (n + block - 1) / block, nb2 = nested ? (nb + nblock - 1) / nblock : 0;
    const lq_st_tensor *w, *am, *qm, *nam = NULL, *nqm = NULL;
    LQ_TRY(companion(m, path, base, "", LQ_ST_U8, (n + 1) / 2, used, &w, err));
    LQ_TRY(companion(m, path, base, ".absmax", nested ? LQ_ST_U8 : LQ_ST_F32, nb, used, &am, err));
    LQ_TRY(companion(m, path, base, ".quant_map", LQ_ST_F32, 16, used, &qm, err));
    if (nested) {
        LQ_TRY(companion(m, path, base, ".nested_absmax", LQ_ST_F32, nb2, used, &nam, err));
        LQ_TRY(companion(m, path, base, ".nested_quant_map", LQ_ST_F32, 256, used, &nqm, err));
    }
    /* bitsandbytes dequantizes with its fixed table for quant_type, whatever quant_map holds */
    lq_dtype type = qt[0] == 'n' ? LQ_DTYPE_NF4 : LQ_DTYPE_FP4;
    if (memcmp(qm->data, type == LQ_DTYPE_NF4 ? lq_nf4_code() : lq_fp4_code(), 64) != 0)
        fprintf(stderr, "loquat dequantize: warning: %s: '%s' differs from the standard %s table; using the standard "
                "table, as bitsandbytes does\n", path, qm->name, qt);
    lq_qstate *qs = lq_qstate_alloc(nb, block, false, nested, nested ? nblock : 1);
    float *code2 = nested ? malloc(256 * sizeof(float)) : NULL;
    r->y = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!qs || (nested && !code2) || !r->y) {
        lq_qstate_free(qs);
        free(code2);
        return LQ_ERR(err, LQ_ERR_OOM, "out of memory for tensor '%s'", base);
    }
    if (nested) {
        memcpy(qs->absmax_q, am->data, (size_t)nb);
        memcpy(qs->absmax2, nam->data, (size_t)nb2 * 4);
        memcpy(code2, nqm->data, 256 * 4);
        qs->code2 = code2;
        qs->offset = offset;
    } else {
        memcpy(qs->absmax, am->data, (size_t)nb * 4);
    }
    lq_bnb4_dequantize(type, w->data, n, qs, r->y);
    lq_qstate_free(qs);
    free(code2);
    r->format = type == LQ_DTYPE_NF4 ? "nf4" : "fp4";
    return LQ_OK;
}

static lq_status dequant_int(const lq_st_model *m, const char *path, const char *base, const lq_st_tensor *st, int bits,
                             bool *used, dq_result *r, lq_err *err) {
    cJSON *root = NULL;
    lq_status s = parse_state(path, st, &root, r, err);
    int64_t b = 0, group = 0, axis = -1;
    const cJSON *sym = root ? cJSON_GetObjectItemCaseSensitive(root, "symmetric") : NULL;
    if (s == LQ_OK && (!json_int(root, "bits", bits, bits, &b) || !json_int(root, "group_size", 0, INT32_MAX, &group) ||
                       !json_int(root, "axis", 0, 0, &axis) || !cJSON_IsBool(sym) || r->ndim != 2))
        s = LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': want \"bits\": %d, \"symmetric\", \"group_size\" >= 0, "
                   "\"axis\": 0 and a 2-D \"shape\"", path, st->name, bits);
    bool symmetric = cJSON_IsTrue(sym);
    cJSON_Delete(root);
    if (s != LQ_OK) return s;
    int64_t rows = r->shape[0], cols = r->shape[1], n = rows * cols;
    if (group && cols % group != 0)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': group_size %lld does not divide %lld columns", path, st->name,
                      (long long)group, (long long)cols);
    int64_t n_slots = group ? rows * (cols / group) : rows;
    const lq_st_tensor *w, *sc, *zp = NULL;
    LQ_TRY(companion(m, path, base, "", bits == 8 ? LQ_ST_I8 : LQ_ST_U8, bits == 8 ? n : (n + 1) / 2, used, &w, err));
    LQ_TRY(companion(m, path, base, ".scale", LQ_ST_F32, n_slots, used, &sc, err));
    if (!symmetric) LQ_TRY(companion(m, path, base, ".zero_point", LQ_ST_I8, n_slots, used, &zp, err));
    lq_affine_scheme scheme = lq_affine_scheme_make(bits, true, group ? LQ_GRAN_GROUP : LQ_GRAN_CHANNEL, 0, group);
    int32_t *codes = malloc((size_t)(n > 0 ? n : 1) * 4), *zps = zp ? malloc((size_t)n_slots * 4) : NULL;
    float *scale = malloc((size_t)(n_slots > 0 ? n_slots : 1) * 4);
    r->y = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!codes || !scale || !r->y || (zp && !zps)) s = LQ_ERR(err, LQ_ERR_OOM, "out of memory for tensor '%s'", base);
    if (s == LQ_OK) {
        const uint8_t *p = w->data;
        for (int64_t i = 0; i < n; i++) {
            int v = bits == 8 ? (int8_t)p[i] : (p[i / 2] >> (4 * (i & 1))) & 0xf;
            codes[i] = bits == 8 ? v : (v ^ 8) - 8; /* sign-extend the nibble */
        }
        memcpy(scale, sc->data, (size_t)n_slots * 4);
        for (int64_t k = 0; zp && k < n_slots; k++) zps[k] = ((const int8_t *)zp->data)[k];
        int64_t shape[2] = {rows, cols};
        s = lq_affine_dequantize(&scheme, 2, shape, codes, scale, zps, r->y, 1, err);
        if (s != LQ_OK) {
            char msg[LQ_ERR_MSG_MAX];
            snprintf(msg, sizeof msg, "%s", err->msg);
            lq_err_clear(err);
            s = LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': %s", path, base, msg);
        }
    }
    free(codes);
    free(zps);
    free(scale);
    r->format = bits == 8 ? "int8" : "int4";
    return s;
}

int lq_cmd_dequantize(const char *in, const char *out, const char *dtype, bool json) {
    lq_st_dtype want = LQ_ST_DTYPE_COUNT;
    if (dtype) {
        if (strcmp(dtype, "f32") == 0) want = LQ_ST_F32;
        else if (strcmp(dtype, "f16") == 0) want = LQ_ST_F16;
        else if (strcmp(dtype, "bf16") == 0) want = LQ_ST_BF16;
        else return dfail(LQ_ERR_ARG, "--dtype must be f32, f16 or bf16, got '%s'", dtype);
    }
    lq_err err = {0};
    lq_st_model *m = NULL;
    lq_status s = lq_st_model_open(&m, in, &err);
    if (s != LQ_OK) return dfail(s, "%s", err.msg);
    int64_t n = lq_st_model_count(m);
    bool *used = calloc((size_t)n + 1, sizeof *used);
    dq_result *res = calloc((size_t)n + 1, sizeof *res);
    char *base = NULL;
    if (!used || !res) s = LQ_ERR(&err, LQ_ERR_OOM, "out of memory");
    int n_dq = 0;
    for (int64_t i = 0; i < n && s == LQ_OK; i++) {
        const lq_st_tensor *st = lq_st_model_tensor_at(m, i);
        const char *at = strstr(st->name, QS_INFIX);
        if (!at) continue;
        const char *key = at + strlen(QS_INFIX);
        free(base);
        base = strndup(st->name, (size_t)(at - st->name));
        if (!base) {
            s = LQ_ERR(&err, LQ_ERR_OOM, "out of memory");
            break;
        }
        int64_t bi = find_idx(m, base, "");
        if (bi < 0) {
            s = LQ_ERR(&err, LQ_ERR_INPUT, "%s: quant state '%s' has no tensor '%s'", in, st->name, base);
            break;
        }
        if (res[bi].y) {
            s = LQ_ERR(&err, LQ_ERR_INPUT, "%s: tensor '%s' has two quant states", in, base);
            break;
        }
        used[i] = true;
        if (strcmp(key, QS_BNB_PREFIX "nf4") == 0 || strcmp(key, QS_BNB_PREFIX "fp4") == 0)
            s = dequant_bnb(m, in, base, st, key + strlen(QS_BNB_PREFIX), used, &res[bi], &err);
        else if (strcmp(key, QS_LOQUAT_PREFIX "int8") == 0 || strcmp(key, QS_LOQUAT_PREFIX "int4") == 0)
            s = dequant_int(m, in, base, st, key[strlen(QS_LOQUAT_PREFIX) + 3] == '8' ? 8 : 4, used, &res[bi], &err);
        else
            s = LQ_ERR(&err, LQ_ERR_INPUT, "%s: tensor '%s': unknown quant state '%s' (loquat reads bitsandbytes__nf4, "
                       "bitsandbytes__fp4, loquat__int8, loquat__int4)", in, st->name, key);
        used[bi] = false; /* the base is replaced, not dropped */
        n_dq += s == LQ_OK;
    }
    free(base);
    int rc = 0;
    if (s == LQ_OK && n_dq == 0) s = LQ_ERR(&err, LQ_ERR_INPUT, "%s: no quantized tensors (no '*.quant_state.*' entries)", in);
    qout w = {0};
    jbuf js = {0};
    int n_copied = 0;
    for (int64_t i = 0; i < n && s == LQ_OK; i++) {
        const lq_st_tensor *t = lq_st_model_tensor_at(m, i);
        if (used[i]) continue;
        if (!res[i].y) {
            if (!qout_add(&w, t->name, "", t->dtype, t->ndim, t->shape, t->data, false))
                s = LQ_ERR(&err, LQ_ERR_OOM, "out of memory");
            n_copied++;
            continue;
        }
        dq_result *r = &res[i];
        lq_st_dtype dt = want != LQ_ST_DTYPE_COUNT ? want : r->dtype;
        void *data = qs_from_f32(r->y, shape_numel(r), dt);
        if (!data || !qout_add(&w, t->name, "", dt, r->ndim, r->shape, data, true)) {
            s = LQ_ERR(&err, LQ_ERR_OOM, "out of memory");
            break;
        }
        printf("dequantized %-48s %-4s -> %-4s [", t->name, r->format, lq_st_dtype_name(dt));
        jb_printf(&js, "%s{\"name\": ", js.n ? ", " : "");
        jb_str(&js, t->name);
        jb_printf(&js, ", \"format\": \"%s\", \"dtype\": \"%s\", \"shape\": [", r->format, lq_st_dtype_name(dt));
        for (int d = 0; d < r->ndim; d++) {
            printf(d ? ", %lld" : "%lld", (long long)r->shape[d]);
            jb_printf(&js, d ? ", %lld" : "%lld", (long long)r->shape[d]);
        }
        printf("]\n");
        jb_printf(&js, "]}");
    }
    if (s == LQ_OK) {
        const lq_st_file *f0 = lq_st_model_shard(m, 0);
        int64_t nm = lq_st_metadata_count(f0);
        lq_st_kv *kv = calloc((size_t)nm + 1, sizeof *kv);
        if (!kv) s = LQ_ERR(&err, LQ_ERR_OOM, "out of memory");
        for (int64_t i = 0; kv && i < nm; i++) lq_st_metadata_at(f0, i, &kv[i].key, &kv[i].value);
        if (s == LQ_OK) s = lq_st_write(out, w.t, w.n, kv, nm, &err);
        free(kv);
    }
    if (s != LQ_OK) {
        rc = dfail(s, "%s", err.msg);
    } else {
        printf("%d tensor%s dequantized, %d copied; wrote %s\n", n_dq, n_dq == 1 ? "" : "s", n_copied, out);
        if (json) {
            jbuf b = {0};
            jb_printf(&b, "{\"command\": \"dequantize\", \"input\": ");
            jb_str(&b, in);
            jb_printf(&b, ", \"output\": ");
            jb_str(&b, out);
            jb_printf(&b, ", \"dequantized\": %d, \"copied\": %d, \"tensors\": [", n_dq, n_copied);
            if (b.failed || js.failed) rc = dfail(LQ_ERR_OOM, "out of memory");
            else printf("%s%s]}\n", b.p, js.p ? js.p : "");
            free(b.p);
        }
    }
    for (int64_t i = 0; res && i < n; i++) free(res[i].y);
    free(res);
    free(used);
    free(js.p);
    qout_free(&w);
    lq_st_model_close(m);
    return rc;
}
