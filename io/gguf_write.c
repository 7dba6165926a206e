/* io/gguf_write.c: the GGUF v3 writer: metadata and tensors to one file, written atomically. */
#include <stdlib.h>
#include <string.h>

#include "io/gguf_impl.h"

#define GGUF_WRITE_ALIGNMENT 32

typedef struct writer {
    lq_atomic_file af;
    uint64_t pos;
    lq_err *err;
} writer;

static lq_status put(writer *w, const void *p, size_t n) {
    w->pos += n;
    return n ? lq_atomic_write(&w->af, p, n, w->err) : LQ_OK;
}

static lq_status put_u32(writer *w, uint32_t v) { return put(w, &v, 4); }
static lq_status put_u64(writer *w, uint64_t v) { return put(w, &v, 8); }

static lq_status put_str(writer *w, const char *s) {
    uint64_t n = strlen(s);
    LQ_TRY(put_u64(w, n));
    return put(w, s, (size_t)n);
}

static lq_status pad_to(writer *w, uint64_t align) {
    static const uint8_t zeros[GGUF_WRITE_ALIGNMENT] = {0};
    uint64_t n = (align - w->pos % align) % align;
    return put(w, zeros, (size_t)n);
}

/* A scalar of type t from the kv's union, range-checked; out gets its little-endian bytes. */
static lq_status scalar_bytes(const lq_gguf_wkv *kv, uint8_t out[8], lq_err *err) {
    size_t sz = lq_gguf_scalar_size(kv->type);
    switch (kv->type) {
    case LQ_GGUF_UINT8:
    case LQ_GGUF_UINT16:
    case LQ_GGUF_UINT32:
        if (kv->v.u >> (8 * sz))
            return LQ_ERR(err, LQ_ERR_ARG, "gguf write: key '%s': %llu does not fit a %s", kv->key,
                          (unsigned long long)kv->v.u, lq_gguf_type_name(kv->type));
        /* fall through */
    case LQ_GGUF_UINT64: memcpy(out, &kv->v.u, sz); return LQ_OK;
    case LQ_GGUF_INT8:
    case LQ_GGUF_INT16:
    case LQ_GGUF_INT32: {
        int64_t lim = (int64_t)1 << (8 * sz - 1);
        if (kv->v.i < -lim || kv->v.i >= lim)
            return LQ_ERR(err, LQ_ERR_ARG, "gguf write: key '%s': %lld does not fit a %s", kv->key,
                          (long long)kv->v.i, lq_gguf_type_name(kv->type));
    }
        /* fall through */
    case LQ_GGUF_INT64: memcpy(out, &kv->v.i, sz); return LQ_OK;
    case LQ_GGUF_FLOAT32: {
        float x = (float)kv->v.f;
        memcpy(out, &x, 4);
        return LQ_OK;
    }
    case LQ_GGUF_FLOAT64: memcpy(out, &kv->v.f, 8); return LQ_OK;
    case LQ_GGUF_BOOL: out[0] = kv->v.b ? 1 : 0; return LQ_OK;
    default: return LQ_ERR(err, LQ_ERR_ARG, "gguf write: key '%s': invalid value type %d", kv->key, (int)kv->type);
    }
}

static lq_status check_kv(const lq_gguf_wkv *kv, lq_err *err) {
    if (!kv->key || !*kv->key) return LQ_ERR(err, LQ_ERR_ARG, "gguf write: a metadata key is empty");
    if (kv->type == LQ_GGUF_STRING && !kv->v.s)
        return LQ_ERR(err, LQ_ERR_ARG, "gguf write: key '%s': NULL string", kv->key);
    if (kv->type == LQ_GGUF_ARRAY) {
        if ((unsigned)kv->elem_type >= LQ_GGUF_TYPE_COUNT || kv->elem_type == LQ_GGUF_ARRAY)
            return LQ_ERR(err, LQ_ERR_ARG, "gguf write: key '%s': invalid array element type %d", kv->key,
                          (int)kv->elem_type);
        if (kv->n > 0 && !kv->arr) return LQ_ERR(err, LQ_ERR_ARG, "gguf write: key '%s': NULL array", kv->key);
        if (kv->elem_type == LQ_GGUF_STRING)
            for (uint64_t i = 0; i < kv->n; i++)
                if (!((const char *const *)kv->arr)[i])
                    return LQ_ERR(err, LQ_ERR_ARG, "gguf write: key '%s': string %llu is NULL", kv->key,
                                  (unsigned long long)i);
    } else if ((unsigned)kv->type >= LQ_GGUF_TYPE_COUNT) {
        return LQ_ERR(err, LQ_ERR_ARG, "gguf write: key '%s': invalid value type %d", kv->key, (int)kv->type);
    }
    return LQ_OK;
}

static lq_status put_kv(writer *w, const lq_gguf_wkv *kv) {
    LQ_TRY(put_str(w, kv->key));
    LQ_TRY(put_u32(w, (uint32_t)kv->type));
    if (kv->type == LQ_GGUF_STRING) return put_str(w, kv->v.s);
    if (kv->type != LQ_GGUF_ARRAY) {
        uint8_t b[8];
        LQ_TRY(scalar_bytes(kv, b, w->err));
        return put(w, b, lq_gguf_scalar_size(kv->type));
    }
    LQ_TRY(put_u32(w, (uint32_t)kv->elem_type));
    LQ_TRY(put_u64(w, kv->n));
    if (kv->elem_type != LQ_GGUF_STRING) return put(w, kv->arr, (size_t)(kv->n * lq_gguf_scalar_size(kv->elem_type)));
    for (uint64_t i = 0; i < kv->n; i++) LQ_TRY(put_str(w, ((const char *const *)kv->arr)[i]));
    return LQ_OK;
}

/* Validates a tensor and gives its ggml id and byte size. */
static lq_status check_tensor(const lq_gguf_wtensor *t, uint32_t *id, uint64_t *nbytes, lq_err *err) {
    if (!t->name || !*t->name) return LQ_ERR(err, LQ_ERR_ARG, "gguf write: a tensor has an empty name");
    int g = lq_gguf_ggml_type_from_lq(t->dtype);
    if (g < 0)
        return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "gguf write: tensor '%s': dtype %s has no GGUF type", t->name,
                      lq_dtype_name(t->dtype));
    if (t->ndim < 1 || t->ndim > LQ_GGUF_MAX_DIMS)
        return LQ_ERR(err, LQ_ERR_ARG, "gguf write: tensor '%s': %d dims, GGUF holds 1..%d", t->name, t->ndim,
                      LQ_GGUF_MAX_DIMS);
    uint64_t numel = 1;
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] < 0 || __builtin_mul_overflow(numel, (uint64_t)t->shape[d], &numel))
            return LQ_ERR(err, LQ_ERR_ARG, "gguf write: tensor '%s': invalid shape", t->name);
    uint32_t block, bytes;
    lq_gguf_ggml_block((uint32_t)g, &block, &bytes);
    if (t->shape[t->ndim - 1] % block != 0)
        return LQ_ERR(err, LQ_ERR_ARG, "gguf write: tensor '%s': innermost dim %lld is not a multiple of %s's block of %u",
                      t->name, (long long)t->shape[t->ndim - 1], lq_dtype_name(t->dtype), block);
    if (__builtin_mul_overflow(numel / block, (uint64_t)bytes, nbytes) || *nbytes > SIZE_MAX)
        return LQ_ERR(err, LQ_ERR_ARG, "gguf write: tensor '%s': byte size overflows", t->name);
    if (*nbytes > 0 && !t->data) return LQ_ERR(err, LQ_ERR_ARG, "gguf write: tensor '%s': NULL data", t->name);
    *id = (uint32_t)g;
    return LQ_OK;
}

static lq_status write_all(writer *w, const lq_gguf_wkv *kv, int64_t n_kv, const lq_gguf_wtensor *t, int64_t n,
                           const uint32_t *ids, const uint64_t *nbytes) {
    LQ_TRY(put(w, "GGUF", 4));
    LQ_TRY(put_u32(w, 3));
    LQ_TRY(put_u64(w, (uint64_t)n));
    LQ_TRY(put_u64(w, (uint64_t)n_kv));
    for (int64_t i = 0; i < n_kv; i++) LQ_TRY(put_kv(w, &kv[i]));
    uint64_t off = 0;
    for (int64_t i = 0; i < n; i++) {
        LQ_TRY(put_str(w, t[i].name));
        LQ_TRY(put_u32(w, (uint32_t)t[i].ndim));
        for (int d = t[i].ndim - 1; d >= 0; d--) LQ_TRY(put_u64(w, (uint64_t)t[i].shape[d])); /* innermost first */
        LQ_TRY(put_u32(w, ids[i]));
        LQ_TRY(put_u64(w, off));
        off += (nbytes[i] + GGUF_WRITE_ALIGNMENT - 1) / GGUF_WRITE_ALIGNMENT * GGUF_WRITE_ALIGNMENT;
    }
    LQ_TRY(pad_to(w, GGUF_WRITE_ALIGNMENT));
    for (int64_t i = 0; i < n; i++) {
        LQ_TRY(put(w, t[i].data, (size_t)nbytes[i]));
        LQ_TRY(pad_to(w, GGUF_WRITE_ALIGNMENT));
    }
    return LQ_OK;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* Names must be unique: sorted copy, neighbours compared. */
static lq_status check_unique(const char **names, int64_t n, const char *what, lq_err *err) {
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    for (int64_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            return LQ_ERR(err, LQ_ERR_ARG, "gguf write: %s '%s' appears twice", what, names[i]);
    return LQ_OK;
}

lq_status lq_gguf_write(const char *path, const lq_gguf_wkv *kv, int64_t n_kv, const lq_gguf_wtensor *t, int64_t n,
                        lq_err *err) {
    if (n_kv < 0 || n < 0 || (n_kv && !kv) || (n && !t)) return LQ_ERR(err, LQ_ERR_ARG, "gguf write: invalid arguments");
    uint32_t *ids = calloc((size_t)n + 1, sizeof *ids);
    uint64_t *nbytes = calloc((size_t)n + 1, sizeof *nbytes);
    const char **names = calloc((size_t)(n > n_kv ? n : n_kv) + 1, sizeof *names);
    lq_status s = LQ_OK;
    if (!ids || !nbytes || !names) s = LQ_ERR(err, LQ_ERR_OOM, "gguf write: out of memory");
    for (int64_t i = 0; i < n_kv && s == LQ_OK; i++) {
        s = check_kv(&kv[i], err);
        names[i] = kv[i].key;
        if (s == LQ_OK && strcmp(kv[i].key, "general.alignment") == 0 &&
            (kv[i].type != LQ_GGUF_UINT32 || kv[i].v.u != GGUF_WRITE_ALIGNMENT))
            s = LQ_ERR(err, LQ_ERR_UNSUPPORTED, "gguf write: general.alignment must be the uint32 %d this writer uses",
                       GGUF_WRITE_ALIGNMENT);
    }
    if (s == LQ_OK) s = check_unique(names, n_kv, "metadata key", err);
    for (int64_t i = 0; i < n && s == LQ_OK; i++) {
        s = check_tensor(&t[i], &ids[i], &nbytes[i], err);
        names[i] = t[i].name;
    }
    if (s == LQ_OK) s = check_unique(names, n, "tensor", err);
    writer w = {.err = err};
    if (s == LQ_OK) s = lq_atomic_open(&w.af, path, err);
    if (s == LQ_OK) s = write_all(&w, kv, n_kv, t, n, ids, nbytes);
    if (s == LQ_OK) s = lq_atomic_commit(&w.af, err);
    lq_atomic_abort(&w.af);
    free(ids);
    free(nbytes);
    free(names);
    return s;
}
