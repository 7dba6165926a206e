/* io/safetensors.c: the safetensors reader: mmap, validate the whole header, hand out tensors. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/file.h"
#include "io/io_impl.h"
#include "quant/half.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "io/safetensors.c reads little-endian data in place: a big-endian host needs byte swapping"
#endif

#define ST_MAX_JSON_INT 9007199254740992.0 /* 2^53: larger integers do not survive a double */

struct lq_st_file {
    char *path;
    void *map;
    size_t map_size;
    const uint8_t *data; /* start of the data section */
    uint64_t data_size;
    int64_t n;
    lq_st_tensor *t;        /* in data order */
    const lq_st_tensor **by_name; /* sorted by name */
    int64_t n_meta;
    char **meta_key, **meta_val;
};

/* --- dtypes ----------------------------------------------------------------------------------- */

static const struct {
    const char *name;
    size_t size;
    lq_dtype lq;
} st_dtypes[LQ_ST_DTYPE_COUNT] = {
    [LQ_ST_F64] = {"F64", 8, LQ_DTYPE_COUNT},      [LQ_ST_F32] = {"F32", 4, LQ_DTYPE_F32},
    [LQ_ST_F16] = {"F16", 2, LQ_DTYPE_F16},        [LQ_ST_BF16] = {"BF16", 2, LQ_DTYPE_BF16},
    [LQ_ST_I64] = {"I64", 8, LQ_DTYPE_COUNT},      [LQ_ST_I32] = {"I32", 4, LQ_DTYPE_I32},
    [LQ_ST_I16] = {"I16", 2, LQ_DTYPE_COUNT},      [LQ_ST_I8] = {"I8", 1, LQ_DTYPE_I8},
    [LQ_ST_U8] = {"U8", 1, LQ_DTYPE_U8},           [LQ_ST_BOOL] = {"BOOL", 1, LQ_DTYPE_COUNT},
    [LQ_ST_F8_E4M3] = {"F8_E4M3", 1, LQ_DTYPE_COUNT}, [LQ_ST_F8_E5M2] = {"F8_E5M2", 1, LQ_DTYPE_COUNT},
};

const char *lq_st_dtype_name(lq_st_dtype t) {
    return (unsigned)t < LQ_ST_DTYPE_COUNT ? st_dtypes[t].name : "invalid";
}

lq_st_dtype lq_st_dtype_from_name(const char *name) {
    for (int i = 0; name && i < LQ_ST_DTYPE_COUNT; i++)
        if (strcmp(st_dtypes[i].name, name) == 0) return (lq_st_dtype)i;
    return LQ_ST_DTYPE_COUNT;
}

size_t lq_st_dtype_size(lq_st_dtype t) { return (unsigned)t < LQ_ST_DTYPE_COUNT ? st_dtypes[t].size : 0; }

lq_dtype lq_st_dtype_to_lq(lq_st_dtype t) { return (unsigned)t < LQ_ST_DTYPE_COUNT ? st_dtypes[t].lq : LQ_DTYPE_COUNT; }

lq_st_dtype lq_st_dtype_from_lq(lq_dtype t) {
    for (int i = 0; i < LQ_ST_DTYPE_COUNT; i++)
        if (st_dtypes[i].lq == t && t != LQ_DTYPE_COUNT) return (lq_st_dtype)i;
    return LQ_ST_DTYPE_COUNT;
}

/* --- shared helpers --------------------------------------------------------------------------- */

bool lq_io_utf8_ok(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        if (c == 0) return false;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned cp;
        if (c >= 0xc2 && c <= 0xdf) len = 2, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef) len = 3, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4) len = 4, cp = c & 0x07;
        else return false;
        if (n - i < len) return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
            return false;
        i += len;
    }
    return true;
}

lq_status lq_io_read_file(const char *path, size_t max_bytes, char **out, size_t *len, lq_err *err) {
    *out = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return LQ_ERR(err, LQ_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > max_bytes) {
        close(fd);
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: %lld bytes, more than the %zu this reader accepts", path,
                      (long long)st.st_size, max_bytes);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        close(fd);
        return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory for %zu bytes", path, n);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : 0;
            close(fd);
            free(buf);
            return LQ_ERR(err, LQ_ERR_INPUT, "%s: read failed after %zu of %zu bytes%s%s", path, got, n, e ? ": " : "",
                          e ? strerror(e) : "");
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return LQ_OK;
}

/* --- header validation ------------------------------------------------------------------------ */

/* A JSON number that is an integer in [0, 2^53]. */
static bool json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!isfinite(d) || d < 0 || d > ST_MAX_JSON_INT || d != floor(d)) return false;
    *out = (uint64_t)d;
    return true;
}

typedef struct entry {
    lq_st_tensor t;
    uint64_t begin, end;
} entry;

static int cmp_entry(const void *a, const void *b) {
    const entry *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int cmp_by_name(const void *a, const void *b) {
    const lq_st_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* One tensor entry of the header: dtype, shape, offsets and their consistency. */
static lq_status parse_entry(const char *path, const cJSON *item, entry *e, lq_err *err) {
    const char *name = item->string;
    if (!cJSON_IsObject(item)) return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': entry is not a JSON object", path, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!dt) return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': missing \"dtype\"", path, name);
    if (!sh) return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': missing \"shape\"", path, name);
    if (!off) return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': missing \"data_offsets\"", path, name);
    if (!cJSON_IsString(dt)) return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': \"dtype\" is not a string", path, name);
    lq_st_dtype dtype = lq_st_dtype_from_name(dt->valuestring);
    if (dtype == LQ_ST_DTYPE_COUNT)
        return LQ_ERR(err, LQ_ERR_INPUT,
                      "%s: tensor '%s': unknown dtype \"%.40s\" (known: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL "
                      "F8_E4M3 F8_E5M2)", path, name, dt->valuestring);
    if (!cJSON_IsArray(sh)) return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': \"shape\" is not an array", path, name);
    int ndim = cJSON_GetArraySize(sh);
    if (ndim > LQ_ST_MAX_DIMS)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': shape has %d dimensions, more than the %d supported", path,
                      name, ndim, LQ_ST_MAX_DIMS);
    memset(e, 0, sizeof *e);
    e->t.name = name;
    e->t.dtype = dtype;
    e->t.ndim = ndim;
    uint64_t numel = 1;
    int d = 0;
    for (const cJSON *v = sh->child; v; v = v->next, d++) {
        uint64_t x;
        if (!json_uint(v, &x))
            return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': shape[%d] is not a non-negative integer", path, name, d);
        if (__builtin_mul_overflow(numel, x, &numel) || numel > (uint64_t)INT64_MAX)
            return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': shape's element count overflows 64 bits", path, name);
        e->t.shape[d] = (int64_t)x;
    }
    uint64_t nbytes;
    if (__builtin_mul_overflow(numel, (uint64_t)lq_st_dtype_size(dtype), &nbytes) || nbytes > SIZE_MAX)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': %llu elements of %s overflow the byte count", path, name,
                      (unsigned long long)numel, st_dtypes[dtype].name);
    e->t.numel = (int64_t)numel;
    e->t.nbytes = (size_t)nbytes;
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || !json_uint(off->child, &e->begin) ||
        !json_uint(off->child->next, &e->end))
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': \"data_offsets\" is not [begin, end] with non-negative integers",
                      path, name);
    if (e->begin > e->end)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': data_offsets [%llu, %llu] are reversed", path, name,
                      (unsigned long long)e->begin, (unsigned long long)e->end);
    if (e->end - e->begin != nbytes)
        return LQ_ERR(err, LQ_ERR_INPUT,
                      "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes, but %s with %llu elements needs %llu",
                      path, name, (unsigned long long)e->begin, (unsigned long long)e->end,
                      (unsigned long long)(e->end - e->begin), st_dtypes[dtype].name, (unsigned long long)numel,
                      (unsigned long long)nbytes);
    return LQ_OK;
}

static lq_status parse_metadata(lq_st_file *f, const cJSON *md, lq_err *err) {
    if (!cJSON_IsObject(md)) return LQ_ERR(err, LQ_ERR_INPUT, "%s: \"__metadata__\" is not a JSON object", f->path);
    int n = cJSON_GetArraySize(md);
    f->meta_key = calloc((size_t)n + 1, sizeof(char *));
    f->meta_val = calloc((size_t)n + 1, sizeof(char *));
    if (!f->meta_key || !f->meta_val) return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory for metadata", f->path);
    for (const cJSON *v = md->child; v; v = v->next) {
        if (!cJSON_IsString(v))
            return LQ_ERR(err, LQ_ERR_INPUT, "%s: __metadata__ key '%s': value is not a string", f->path, v->string);
        f->meta_key[f->n_meta] = dup_str(v->string);
        f->meta_val[f->n_meta] = dup_str(v->valuestring);
        if (!f->meta_key[f->n_meta] || !f->meta_val[f->n_meta]) {
            f->n_meta++;
            return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory for metadata", f->path);
        }
        f->n_meta++;
    }
    /* duplicate keys, found by sorting a copy (a hostile header may hold millions) */
    const char **keys = malloc(((size_t)f->n_meta + 1) * sizeof *keys);
    if (!keys) return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory for metadata", f->path);
    memcpy(keys, f->meta_key, (size_t)f->n_meta * sizeof *keys);
    qsort(keys, (size_t)f->n_meta, sizeof *keys, cmp_str);
    lq_status s = LQ_OK;
    for (int64_t i = 1; i < f->n_meta && s == LQ_OK; i++)
        if (strcmp(keys[i - 1], keys[i]) == 0)
            s = LQ_ERR(err, LQ_ERR_INPUT, "%s: __metadata__ key '%s' appears twice", f->path, keys[i]);
    free(keys);
    return s;
}

/* Every entry of the parsed header, then the tiling of the data section. */
static lq_status parse_header(lq_st_file *f, const cJSON *root, lq_err *err) {
    int n_items = cJSON_GetArraySize(root);
    entry *es = calloc((size_t)n_items + 1, sizeof *es);
    if (!es) return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory for %d header entries", f->path, n_items);
    lq_status s = LQ_OK;
    int64_t n = 0;
    bool have_meta = false;
    for (const cJSON *it = root->child; it && s == LQ_OK; it = it->next) {
        if (strcmp(it->string, "__metadata__") == 0) {
            if (have_meta) s = LQ_ERR(err, LQ_ERR_INPUT, "%s: \"__metadata__\" appears twice", f->path);
            else s = parse_metadata(f, it, err);
            have_meta = true;
        } else if (it->string[0] == '\0') {
            s = LQ_ERR(err, LQ_ERR_INPUT, "%s: a tensor has an empty name", f->path);
        } else {
            s = parse_entry(f->path, it, &es[n], err);
            n++;
        }
    }
    if (s == LQ_OK) {
        qsort(es, (size_t)n, sizeof *es, cmp_entry);
        uint64_t cur = 0;
        for (int64_t i = 0; i < n && s == LQ_OK; i++) {
            if (es[i].begin < cur) {
                /* the previous non-empty tensor ends past this one's start */
                const char *prev = "?";
                for (int64_t j = i - 1; j >= 0; j--)
                    if (es[j].end > es[i].begin) { prev = es[j].t.name; break; }
                s = LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': data_offsets [%llu, %llu] overlap tensor '%s'", f->path,
                           es[i].t.name, (unsigned long long)es[i].begin, (unsigned long long)es[i].end, prev);
            } else if (es[i].begin > cur) {
                s = LQ_ERR(err, LQ_ERR_INPUT,
                           "%s: tensor '%s': data_offsets start at %llu, leaving bytes [%llu, %llu) of the data section "
                           "unused (tensors must be contiguous)", f->path, es[i].t.name, (unsigned long long)es[i].begin,
                           (unsigned long long)cur, (unsigned long long)es[i].begin);
            } else if (es[i].end > f->data_size) {
                s = LQ_ERR(err, LQ_ERR_INPUT,
                           "%s: tensor '%s': data_offsets [%llu, %llu] end past the data section (%llu bytes)", f->path,
                           es[i].t.name, (unsigned long long)es[i].begin, (unsigned long long)es[i].end,
                           (unsigned long long)f->data_size);
            }
            cur = es[i].end;
        }
        if (s == LQ_OK && cur != f->data_size)
            s = LQ_ERR(err, LQ_ERR_INPUT, "%s: the tensors end at byte %llu of a %llu-byte data section (%llu trailing bytes)",
                       f->path, (unsigned long long)cur, (unsigned long long)f->data_size,
                       (unsigned long long)(f->data_size - cur));
    }
    if (s == LQ_OK) {
        f->t = calloc((size_t)n + 1, sizeof *f->t);
        f->by_name = calloc((size_t)n + 1, sizeof *f->by_name);
        if (!f->t || !f->by_name) s = LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory for %lld tensors", f->path, (long long)n);
    }
    for (int64_t i = 0; i < n && s == LQ_OK; i++) {
        f->t[i] = es[i].t;
        f->t[i].name = dup_str(es[i].t.name);
        f->t[i].data = f->data + es[i].begin;
        f->by_name[i] = &f->t[i];
        f->n = i + 1;
        if (!f->t[i].name) s = LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", f->path);
    }
    free(es);
    if (s != LQ_OK) return s;
    qsort(f->by_name, (size_t)n, sizeof *f->by_name, cmp_by_name);
    for (int64_t i = 1; i < n; i++)
        if (strcmp(f->by_name[i - 1]->name, f->by_name[i]->name) == 0)
            return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s' appears twice in the header", f->path, f->by_name[i]->name);
    return LQ_OK;
}

/* --- open / close ----------------------------------------------------------------------------- */

void lq_st_close(lq_st_file *f) {
    if (!f) return;
    if (f->map) munmap(f->map, f->map_size);
    for (int64_t i = 0; i < f->n; i++) free((char *)f->t[i].name);
    for (int64_t i = 0; i < f->n_meta; i++) {
        free(f->meta_key[i]);
        free(f->meta_val[i]);
    }
    free(f->meta_key);
    free(f->meta_val);
    free(f->t);
    free(f->by_name);
    free(f->path);
    free(f);
}

static lq_status map_file(lq_st_file *f, lq_err *err) {
    void *p;
    LQ_TRY(lq_map_file(f->path, 8, "a safetensors file (8-byte header length)", &p, &f->map_size, err));
    f->map = p;
    return LQ_OK;
}

lq_status lq_st_open(lq_st_file **out, const char *path, lq_err *err) {
    *out = NULL;
    if (!path) return LQ_ERR(err, LQ_ERR_ARG, "safetensors: NULL path");
    lq_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = dup_str(path))) {
        free(f);
        return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", path);
    }
    lq_status s = map_file(f, err);
    if (s != LQ_OK) {
        lq_st_close(f);
        return s;
    }
    const uint8_t *m = f->map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | m[i];
    uint64_t avail = (uint64_t)f->map_size - 8;
    if (hlen > avail) s = LQ_ERR(err, LQ_ERR_INPUT, "%s: header length %llu runs past the end of the file (%llu bytes after "
                                 "the length field); not a safetensors file, or truncated", path,
                                 (unsigned long long)hlen, (unsigned long long)avail);
    else if (hlen > LQ_ST_MAX_HEADER)
        s = LQ_ERR(err, LQ_ERR_INPUT, "%s: header length %llu exceeds the %llu-byte limit", path, (unsigned long long)hlen,
                   (unsigned long long)LQ_ST_MAX_HEADER);
    else if (hlen < 2 || m[8] != '{')
        s = LQ_ERR(err, LQ_ERR_INPUT, "%s: the header (%llu bytes) does not start with a JSON object; not a safetensors "
                   "file", path, (unsigned long long)hlen);
    else if (!lq_io_utf8_ok((const char *)m + 8, (size_t)hlen))
        s = LQ_ERR(err, LQ_ERR_INPUT, "%s: the header is not valid UTF-8 text (or holds a NUL byte)", path);
    if (s != LQ_OK) {
        lq_st_close(f);
        return s;
    }
    f->data = m + 8 + hlen;
    f->data_size = avail - hlen;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts((const char *)m + 8, (size_t)hlen, &end, false);
    if (!root) {
        size_t at = end ? (size_t)(end - (const char *)(m + 8)) : 0;
        s = LQ_ERR(err, LQ_ERR_INPUT, "%s: the header is not valid JSON (error near byte %zu of %llu)", path, at,
                   (unsigned long long)hlen);
    } else {
        for (const char *p = end; s == LQ_OK && p < (const char *)m + 8 + hlen; p++)
            if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
                s = LQ_ERR(err, LQ_ERR_INPUT, "%s: unexpected bytes after the header's JSON object (at byte %zu)", path,
                           (size_t)(p - (const char *)(m + 8)));
        if (s == LQ_OK && !cJSON_IsObject(root))
            s = LQ_ERR(err, LQ_ERR_INPUT, "%s: the header is not a JSON object", path);
        if (s == LQ_OK) s = parse_header(f, root, err);
    }
    cJSON_Delete(root);
    if (s != LQ_OK) {
        lq_st_close(f);
        return s;
    }
    *out = f;
    return LQ_OK;
}

/* --- queries ---------------------------------------------------------------------------------- */

const char *lq_st_path(const lq_st_file *f) { return f->path; }
int64_t lq_st_count(const lq_st_file *f) { return f->n; }

const lq_st_tensor *lq_st_tensor_at(const lq_st_file *f, int64_t i) { return i >= 0 && i < f->n ? &f->t[i] : NULL; }

const lq_st_tensor *lq_st_find(const lq_st_file *f, const char *name) {
    if (!name) return NULL;
    int64_t lo = 0, hi = f->n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->by_name[mid]->name, name);
        if (c == 0) return f->by_name[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

const char *lq_st_metadata(const lq_st_file *f, const char *key) {
    for (int64_t i = 0; key && i < f->n_meta; i++)
        if (strcmp(f->meta_key[i], key) == 0) return f->meta_val[i];
    return NULL;
}

int64_t lq_st_metadata_count(const lq_st_file *f) { return f->n_meta; }

bool lq_st_metadata_at(const lq_st_file *f, int64_t i, const char **key, const char **value) {
    if (i < 0 || i >= f->n_meta) return false;
    if (key) *key = f->meta_key[i];
    if (value) *value = f->meta_val[i];
    return true;
}

lq_status lq_st_to_f32(const lq_st_tensor *t, float *dst, lq_err *err) {
    const uint8_t *p = t->data;
    int64_t n = t->numel;
    switch (t->dtype) {
    case LQ_ST_F32: memcpy(dst, p, (size_t)n * 4); return LQ_OK;
    case LQ_ST_F64:
        for (int64_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = (float)d;
        }
        return LQ_OK;
    case LQ_ST_F16:
    case LQ_ST_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = t->dtype == LQ_ST_F16 ? lq_f16_to_f32(h) : lq_bf16_to_f32(h);
        }
        return LQ_OK;
    default:
        return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "tensor '%s': dtype %s is not a float type loquat converts to f32", t->name,
                      lq_st_dtype_name(t->dtype));
    }
}
