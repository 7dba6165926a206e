/* io/safetensors_write.c: the safetensors writer: JSON header padded to 8 bytes, data, atomically. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/io_impl.h"

/* A growing text buffer; `failed` is set once an allocation fails and sticks. */
typedef struct sbuf {
    char *p;
    size_t n, cap;
    bool failed;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) {
            b->failed = true;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_fmt(sbuf *b, const char *fmt, unsigned long long v) {
    char tmp[32];
    int k = snprintf(tmp, sizeof tmp, fmt, v);
    sb_put(b, tmp, (size_t)k);
}

/* A JSON string literal: quotes, backslashes and control characters escaped, UTF-8 kept. */
static void sb_json_str(sbuf *b, const char *s) {
    sb_put(b, "\"", 1);
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') sb_put(b, "\\\"", 2);
        else if (c == '\\') sb_put(b, "\\\\", 2);
        else if (c == '\n') sb_put(b, "\\n", 2);
        else if (c == '\t') sb_put(b, "\\t", 2);
        else if (c == '\r') sb_put(b, "\\r", 2);
        else if (c < 0x20) sb_fmt(b, "\\u%04llx", c);
        else sb_put(b, p, 1);
    }
    sb_put(b, "\"", 1);
}

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Names unique (within tensors, and within metadata keys); true when so, else *dup is one. */
static bool names_unique(const char **names, int64_t n, const char **dup) {
    qsort(names, (size_t)n, sizeof *names, cmp_names);
    for (int64_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0) {
            *dup = names[i];
            return false;
        }
    return true;
}

static lq_status check_inputs(const char *path, const lq_st_wtensor *t, int64_t n, const lq_st_kv *meta, int64_t n_meta,
                              size_t *nbytes, lq_err *err) {
    for (int64_t i = 0; i < n; i++) {
        const lq_st_wtensor *w = &t[i];
        if (!w->name || !*w->name || strcmp(w->name, "__metadata__") == 0 || !lq_io_utf8_ok(w->name, strlen(w->name)))
            return LQ_ERR(err, LQ_ERR_ARG, "%s: tensor %lld has an invalid name ('%s')", path, (long long)i,
                          w->name ? w->name : "(null)");
        if (lq_st_dtype_size(w->dtype) == 0)
            return LQ_ERR(err, LQ_ERR_ARG, "%s: tensor '%s': invalid dtype %d", path, w->name, (int)w->dtype);
        if (w->ndim < 0 || w->ndim > LQ_ST_MAX_DIMS)
            return LQ_ERR(err, LQ_ERR_ARG, "%s: tensor '%s': %d dimensions (0..%d allowed)", path, w->name, w->ndim,
                          LQ_ST_MAX_DIMS);
        uint64_t numel = 1, bytes;
        for (int d = 0; d < w->ndim; d++)
            if (w->shape[d] < 0 || __builtin_mul_overflow(numel, (uint64_t)w->shape[d], &numel))
                return LQ_ERR(err, LQ_ERR_ARG, "%s: tensor '%s': bad shape (dimension %d is %lld)", path, w->name, d,
                              (long long)w->shape[d]);
        if (__builtin_mul_overflow(numel, (uint64_t)lq_st_dtype_size(w->dtype), &bytes) || bytes > SIZE_MAX / 2)
            return LQ_ERR(err, LQ_ERR_ARG, "%s: tensor '%s': byte size overflows", path, w->name);
        if (bytes > 0 && !w->data) return LQ_ERR(err, LQ_ERR_ARG, "%s: tensor '%s': no data", path, w->name);
        nbytes[i] = (size_t)bytes;
    }
    for (int64_t i = 0; i < n_meta; i++)
        if (!meta[i].key || !meta[i].value || !lq_io_utf8_ok(meta[i].key, strlen(meta[i].key)) ||
            !lq_io_utf8_ok(meta[i].value, strlen(meta[i].value)))
            return LQ_ERR(err, LQ_ERR_ARG, "%s: metadata entry %lld is NULL or not UTF-8", path, (long long)i);
    int64_t m = n > n_meta ? n : n_meta;
    const char **names = malloc(((size_t)m + 1) * sizeof *names);
    if (!names) return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", path);
    const char *dup = NULL;
    for (int64_t i = 0; i < n; i++) names[i] = t[i].name;
    bool ok = names_unique(names, n, &dup);
    lq_status s = LQ_OK;
    if (!ok) s = LQ_ERR(err, LQ_ERR_ARG, "%s: tensor name '%s' given twice", path, dup);
    if (ok) {
        for (int64_t i = 0; i < n_meta; i++) names[i] = meta[i].key;
        if (!names_unique(names, n_meta, &dup)) s = LQ_ERR(err, LQ_ERR_ARG, "%s: metadata key '%s' given twice", path, dup);
    }
    free(names);
    return s;
}

lq_status lq_st_write(const char *path, const lq_st_wtensor *t, int64_t n, const lq_st_kv *meta, int64_t n_meta,
                      lq_err *err) {
    if (!path || n < 0 || n_meta < 0 || (n > 0 && !t) || (n_meta > 0 && !meta))
        return LQ_ERR(err, LQ_ERR_ARG, "safetensors write: bad arguments (path %s, %lld tensors)", path ? path : "NULL",
                      (long long)n);
    size_t *nbytes = calloc((size_t)n + 1, sizeof *nbytes);
    if (!nbytes) return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", path);
    lq_status s = check_inputs(path, t, n, meta, n_meta, nbytes, err);
    if (s != LQ_OK) {
        free(nbytes);
        return s;
    }
    sbuf h = {0};
    sb_put(&h, "{", 1);
    bool first = true;
    if (n_meta > 0) {
        sb_str(&h, "\"__metadata__\":{");
        for (int64_t i = 0; i < n_meta; i++) {
            if (i) sb_put(&h, ",", 1);
            sb_json_str(&h, meta[i].key);
            sb_put(&h, ":", 1);
            sb_json_str(&h, meta[i].value);
        }
        sb_put(&h, "}", 1);
        first = false;
    }
    uint64_t off = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!first) sb_put(&h, ",", 1);
        first = false;
        sb_json_str(&h, t[i].name);
        sb_str(&h, ":{\"dtype\":\"");
        sb_str(&h, lq_st_dtype_name(t[i].dtype));
        sb_str(&h, "\",\"shape\":[");
        for (int d = 0; d < t[i].ndim; d++) sb_fmt(&h, d ? ",%llu" : "%llu", (unsigned long long)t[i].shape[d]);
        sb_fmt(&h, "],\"data_offsets\":[%llu", off);
        off += nbytes[i];
        sb_fmt(&h, ",%llu]}", off);
    }
    sb_put(&h, "}", 1);
    while (!h.failed && h.n % 8 != 0) sb_put(&h, " ", 1); /* the data then starts 8-aligned */
    if (h.failed) {
        free(h.p);
        free(nbytes);
        return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory for the header", path);
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)h.n >> (8 * i));
    lq_atomic_file af;
    s = lq_atomic_open(&af, path, err);
    if (s == LQ_OK) s = lq_atomic_write(&af, len8, 8, err);
    if (s == LQ_OK) s = lq_atomic_write(&af, h.p, h.n, err);
    for (int64_t i = 0; i < n && s == LQ_OK; i++) s = lq_atomic_write(&af, t[i].data, nbytes[i], err);
    if (s == LQ_OK) s = lq_atomic_commit(&af, err);
    lq_atomic_abort(&af);
    free(h.p);
    free(nbytes);
    return s;
}
