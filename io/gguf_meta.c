/* io/gguf_meta.c: typed access to GGUF metadata values: element getters and key lookups. */
#include <string.h>

#include "io/gguf_impl.h"

/* --- typed access to values --------------------------------------------------------------------- */

/* Raw element i of a numeric kv: its type and 64 bits (sign-extended for signed types). */
static bool elem(const lq_gguf_kv *kv, uint64_t i, lq_gguf_type *t, uint64_t *u, double *fl) {
    if (kv->type != LQ_GGUF_ARRAY) {
        if (i != 0 || kv->type == LQ_GGUF_STRING) return false;
        *t = kv->type;
        *u = kv->v.u;
        if (kv->type == LQ_GGUF_BOOL) *u = kv->v.b;
        *fl = kv->v.f;
        return true;
    }
    if (i >= kv->n || kv->elem_type == LQ_GGUF_STRING) return false;
    lq_gguf_kv tmp = {0};
    size_t sz = lq_gguf_scalar_size(kv->elem_type);
    lq_gguf_scalar_decode(&tmp, kv->elem_type, (const uint8_t *)kv->arr + i * sz);
    *t = kv->elem_type;
    *u = kv->elem_type == LQ_GGUF_BOOL ? tmp.v.b : tmp.v.u;
    *fl = tmp.v.f;
    return true;
}

static bool is_signed(lq_gguf_type t) {
    return t == LQ_GGUF_INT8 || t == LQ_GGUF_INT16 || t == LQ_GGUF_INT32 || t == LQ_GGUF_INT64;
}

static bool is_float(lq_gguf_type t) { return t == LQ_GGUF_FLOAT32 || t == LQ_GGUF_FLOAT64; }

bool lq_gguf_kv_uint(const lq_gguf_kv *kv, uint64_t i, uint64_t *out) {
    lq_gguf_type t;
    uint64_t u;
    double fl;
    if (!elem(kv, i, &t, &u, &fl) || is_float(t)) return false;
    if (is_signed(t) && (int64_t)u < 0) return false;
    *out = u;
    return true;
}

bool lq_gguf_kv_int(const lq_gguf_kv *kv, uint64_t i, int64_t *out) {
    lq_gguf_type t;
    uint64_t u;
    double fl;
    if (!elem(kv, i, &t, &u, &fl) || is_float(t) || t == LQ_GGUF_BOOL) return false;
    if (!is_signed(t) && u > (uint64_t)INT64_MAX) return false;
    *out = (int64_t)u;
    return true;
}

bool lq_gguf_kv_float(const lq_gguf_kv *kv, uint64_t i, double *out) {
    lq_gguf_type t;
    uint64_t u;
    double fl;
    if (!elem(kv, i, &t, &u, &fl) || t == LQ_GGUF_BOOL) return false;
    *out = is_float(t) ? fl : is_signed(t) ? (double)(int64_t)u : (double)u;
    return true;
}

const lq_gguf_str *lq_gguf_kv_str(const lq_gguf_kv *kv, uint64_t i) {
    if (kv->type == LQ_GGUF_STRING) return i == 0 ? &kv->v.s : NULL;
    if (kv->type == LQ_GGUF_ARRAY && kv->elem_type == LQ_GGUF_STRING && i < kv->n) return &kv->strs[i];
    return NULL;
}

static lq_status get_kv(const lq_gguf_file *f, const char *key, const lq_gguf_kv **kv, lq_err *err) {
    *kv = lq_gguf_find_kv(f, key);
    if (!*kv) return LQ_ERR(err, LQ_ERR_INPUT, "%s: metadata key '%s' is missing", lq_gguf_path(f), key);
    return LQ_OK;
}

static lq_status bad_type(const lq_gguf_file *f, const lq_gguf_kv *kv, const char *want, lq_err *err) {
    return LQ_ERR(err, LQ_ERR_INPUT, "%s: metadata key '%s' is a %s%s%s, not a %s (or its value does not fit)", lq_gguf_path(f),
                  kv->key, kv->type == LQ_GGUF_ARRAY ? "array of " : "",
                  lq_gguf_type_name(kv->type == LQ_GGUF_ARRAY ? kv->elem_type : kv->type), "", want);
}

lq_status lq_gguf_get_u64(const lq_gguf_file *f, const char *key, uint64_t *out, lq_err *err) {
    const lq_gguf_kv *kv;
    LQ_TRY(get_kv(f, key, &kv, err));
    if (kv->type == LQ_GGUF_ARRAY || kv->type == LQ_GGUF_BOOL || !lq_gguf_kv_uint(kv, 0, out))
        return bad_type(f, kv, "non-negative integer", err);
    return LQ_OK;
}

lq_status lq_gguf_get_u32(const lq_gguf_file *f, const char *key, uint32_t *out, lq_err *err) {
    uint64_t u;
    LQ_TRY(lq_gguf_get_u64(f, key, &u, err));
    if (u > UINT32_MAX) return bad_type(f, lq_gguf_find_kv(f, key), "uint32", err);
    *out = (uint32_t)u;
    return LQ_OK;
}

lq_status lq_gguf_get_i32(const lq_gguf_file *f, const char *key, int32_t *out, lq_err *err) {
    const lq_gguf_kv *kv;
    int64_t v;
    LQ_TRY(get_kv(f, key, &kv, err));
    if (kv->type == LQ_GGUF_ARRAY || !lq_gguf_kv_int(kv, 0, &v) || v < INT32_MIN || v > INT32_MAX)
        return bad_type(f, kv, "int32", err);
    *out = (int32_t)v;
    return LQ_OK;
}

lq_status lq_gguf_get_f32(const lq_gguf_file *f, const char *key, float *out, lq_err *err) {
    const lq_gguf_kv *kv;
    double v;
    LQ_TRY(get_kv(f, key, &kv, err));
    if (kv->type == LQ_GGUF_ARRAY || !lq_gguf_kv_float(kv, 0, &v)) return bad_type(f, kv, "number", err);
    *out = (float)v;
    return LQ_OK;
}

lq_status lq_gguf_get_bool(const lq_gguf_file *f, const char *key, bool *out, lq_err *err) {
    const lq_gguf_kv *kv;
    LQ_TRY(get_kv(f, key, &kv, err));
    if (kv->type != LQ_GGUF_BOOL) return bad_type(f, kv, "bool", err);
    *out = kv->v.b;
    return LQ_OK;
}

lq_status lq_gguf_get_str(const lq_gguf_file *f, const char *key, const char **out, lq_err *err) {
    const lq_gguf_kv *kv;
    LQ_TRY(get_kv(f, key, &kv, err));
    if (kv->type != LQ_GGUF_STRING) return bad_type(f, kv, "string", err);
    *out = kv->v.s.s;
    return LQ_OK;
}

lq_status lq_gguf_get_arr(const lq_gguf_file *f, const char *key, uint64_t *n, lq_gguf_type *elem_type, lq_err *err) {
    const lq_gguf_kv *kv;
    LQ_TRY(get_kv(f, key, &kv, err));
    if (kv->type != LQ_GGUF_ARRAY) return bad_type(f, kv, "array", err);
    *n = kv->n;
    if (elem_type) *elem_type = kv->elem_type;
    return LQ_OK;
}
