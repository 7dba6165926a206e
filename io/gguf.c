/* io/gguf.c: the GGUF reader: mmap, validate header, metadata and tensor infos, hand out tensors. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/file.h"
#include "io/gguf_impl.h"
#include "io/io_impl.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "io/gguf.c reads little-endian data in place: a big-endian host needs byte swapping"
#endif

struct lq_gguf_file {
    char *path;
    void *map;
    size_t map_size;
    uint32_t version, alignment;
    uint64_t data_offset;
    int64_t n_kv, n;
    lq_gguf_kv *kv;
    lq_gguf_tensor *t;
    const lq_gguf_tensor **by_name;
};

/* --- types ------------------------------------------------------------------------------------ */

static const char *const type_names[LQ_GGUF_TYPE_COUNT] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
    "bool",  "string", "array", "uint64", "int64", "float64",
};

const char *lq_gguf_type_name(lq_gguf_type t) { return (unsigned)t < LQ_GGUF_TYPE_COUNT ? type_names[t] : "invalid"; }

size_t lq_gguf_scalar_size(lq_gguf_type t) {
    static const size_t sz[LQ_GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return (unsigned)t < LQ_GGUF_TYPE_COUNT ? sz[t] : 0;
}

/* ggml type ids, block sizes and bytes per block, as gguf-py's GGML_QUANT_SIZES lists them. */
static const struct {
    uint32_t id;
    const char *name;
    uint32_t block, bytes;
    lq_dtype lq;
} ggml_types[] = {
    {0, "F32", 1, 4, LQ_DTYPE_F32},          {1, "F16", 1, 2, LQ_DTYPE_F16},
    {2, "Q4_0", 32, 18, LQ_DTYPE_Q4_0},      {3, "Q4_1", 32, 20, LQ_DTYPE_Q4_1},
    {6, "Q5_0", 32, 22, LQ_DTYPE_Q5_0},      {7, "Q5_1", 32, 24, LQ_DTYPE_Q5_1},
    {8, "Q8_0", 32, 34, LQ_DTYPE_Q8_0},      {9, "Q8_1", 32, 40, LQ_DTYPE_COUNT},
    {10, "Q2_K", 256, 84, LQ_DTYPE_COUNT},   {11, "Q3_K", 256, 110, LQ_DTYPE_COUNT},
    {12, "Q4_K", 256, 144, LQ_DTYPE_Q4_K},   {13, "Q5_K", 256, 176, LQ_DTYPE_Q5_K},
    {14, "Q6_K", 256, 210, LQ_DTYPE_Q6_K},   {15, "Q8_K", 256, 292, LQ_DTYPE_COUNT},
    {16, "IQ2_XXS", 256, 66, LQ_DTYPE_COUNT}, {17, "IQ2_XS", 256, 74, LQ_DTYPE_COUNT},
    {18, "IQ3_XXS", 256, 98, LQ_DTYPE_COUNT}, {19, "IQ1_S", 256, 50, LQ_DTYPE_COUNT},
    {20, "IQ4_NL", 32, 18, LQ_DTYPE_COUNT},  {21, "IQ3_S", 256, 110, LQ_DTYPE_COUNT},
    {22, "IQ2_S", 256, 82, LQ_DTYPE_COUNT},  {23, "IQ4_XS", 256, 136, LQ_DTYPE_COUNT},
    {24, "I8", 1, 1, LQ_DTYPE_COUNT},        {25, "I16", 1, 2, LQ_DTYPE_COUNT},
    {26, "I32", 1, 4, LQ_DTYPE_I32},         {27, "I64", 1, 8, LQ_DTYPE_COUNT},
    {28, "F64", 1, 8, LQ_DTYPE_COUNT},       {29, "IQ1_M", 256, 56, LQ_DTYPE_COUNT},
    {30, "BF16", 1, 2, LQ_DTYPE_BF16},       {34, "TQ1_0", 256, 54, LQ_DTYPE_COUNT},
    {35, "TQ2_0", 256, 66, LQ_DTYPE_COUNT},  {39, "MXFP4", 32, 17, LQ_DTYPE_COUNT},
    {40, "NVFP4", 64, 36, LQ_DTYPE_COUNT},   {41, "Q1_0", 128, 18, LQ_DTYPE_COUNT},
};
#define N_GGML_TYPES ((int)(sizeof ggml_types / sizeof ggml_types[0]))

static int ggml_index(uint32_t id) {
    for (int i = 0; i < N_GGML_TYPES; i++)
        if (ggml_types[i].id == id) return i;
    return -1;
}

const char *lq_gguf_ggml_type_name(uint32_t id) {
    int i = ggml_index(id);
    return i < 0 ? NULL : ggml_types[i].name;
}

lq_dtype lq_gguf_ggml_type_to_lq(uint32_t id) {
    int i = ggml_index(id);
    return i < 0 ? LQ_DTYPE_COUNT : ggml_types[i].lq;
}

int lq_gguf_ggml_type_from_lq(lq_dtype t) {
    for (int i = 0; i < N_GGML_TYPES && t != LQ_DTYPE_COUNT; i++)
        if (ggml_types[i].lq == t) return (int)ggml_types[i].id;
    return -1;
}

bool lq_gguf_ggml_block(uint32_t id, uint32_t *block, uint32_t *bytes) {
    int i = ggml_index(id);
    if (i < 0) return false;
    *block = ggml_types[i].block;
    *bytes = ggml_types[i].bytes;
    return true;
}

/* --- a bounds-checked cursor over the mapping -------------------------------------------------- */

typedef struct cursor {
    const uint8_t *p;
    uint64_t pos, size;
    const char *path;
    lq_err *err;
} cursor;

static uint64_t left(const cursor *c) { return c->size - c->pos; }

/* n bytes at the cursor, or an error naming what was being read. */
static lq_status take(cursor *c, uint64_t n, const void **out, const char *what, const char *ctx) {
    if (n > left(c))
        return LQ_ERR(c->err, LQ_ERR_INPUT, "%s: truncated: %s%s%s needs %llu bytes at offset %llu, only %llu left",
                      c->path, ctx ? ctx : "", ctx ? ": " : "", what, (unsigned long long)n,
                      (unsigned long long)c->pos, (unsigned long long)left(c));
    *out = c->p + c->pos;
    c->pos += n;
    return LQ_OK;
}

static lq_status rd_u32(cursor *c, uint32_t *v, const char *what, const char *ctx) {
    const void *q = NULL;
    LQ_TRY(take(c, 4, &q, what, ctx));
    memcpy(v, q, 4);
    return LQ_OK;
}

static lq_status rd_u64(cursor *c, uint64_t *v, const char *what, const char *ctx) {
    const void *q = NULL;
    LQ_TRY(take(c, 8, &q, what, ctx));
    memcpy(v, q, 8);
    return LQ_OK;
}

/* A string: its length is checked against the bytes left before the copy is allocated. */
static lq_status rd_str(cursor *c, lq_gguf_str *s, const char *what, const char *ctx) {
    uint64_t n;
    LQ_TRY(rd_u64(c, &n, what, ctx));
    if (n > left(c))
        return LQ_ERR(c->err, LQ_ERR_INPUT, "%s: %s%s%s: string length %llu at offset %llu runs past the end of the file "
                      "(%llu bytes left)", c->path, ctx ? ctx : "", ctx ? ": " : "", what, (unsigned long long)n,
                      (unsigned long long)(c->pos - 8), (unsigned long long)left(c));
    char *copy = malloc((size_t)n + 1);
    if (!copy) return LQ_ERR(c->err, LQ_ERR_OOM, "%s: out of memory for a %llu-byte string", c->path, (unsigned long long)n);
    memcpy(copy, c->p + c->pos, (size_t)n);
    copy[n] = '\0';
    c->pos += n;
    s->s = copy;
    s->len = n;
    return LQ_OK;
}

/* --- metadata ----------------------------------------------------------------------------------- */

void lq_gguf_scalar_decode(lq_gguf_kv *kv, lq_gguf_type t, const void *src) {
    const uint8_t *q = src;
    uint64_t u = 0;
    memcpy(&u, q, lq_gguf_scalar_size(t));
    switch (t) {
    case LQ_GGUF_INT8: kv->v.i = (int8_t)u; break;
    case LQ_GGUF_INT16: kv->v.i = (int16_t)u; break;
    case LQ_GGUF_INT32: kv->v.i = (int32_t)u; break;
    case LQ_GGUF_INT64: kv->v.i = (int64_t)u; break;
    case LQ_GGUF_FLOAT32: {
        float x;
        memcpy(&x, q, 4);
        kv->v.f = x;
        break;
    }
    case LQ_GGUF_FLOAT64: memcpy(&kv->v.f, q, 8); break;
    case LQ_GGUF_BOOL: kv->v.b = u != 0; break;
    default: kv->v.u = u; break;
    }
}

static lq_status parse_kv(cursor *c, lq_gguf_kv *kv, int64_t idx) {
    char ctx[64];
    snprintf(ctx, sizeof ctx, "metadata entry %lld", (long long)idx);
    lq_gguf_str key = {0};
    LQ_TRY(rd_str(c, &key, "key", ctx));
    kv->key = key.s;
    if (key.len == 0 || !lq_io_utf8_ok(key.s, (size_t)key.len))
        return LQ_ERR(c->err, LQ_ERR_INPUT, "%s: %s: the key is empty or not UTF-8 text", c->path, ctx);
    uint32_t t;
    LQ_TRY(rd_u32(c, &t, "value type", key.s));
    if (t >= LQ_GGUF_TYPE_COUNT)
        return LQ_ERR(c->err, LQ_ERR_INPUT, "%s: key '%s': unknown value type %u (known: 0..12)", c->path, key.s, t);
    kv->type = (lq_gguf_type)t;
    kv->n = 1;
    if (t == LQ_GGUF_STRING) return rd_str(c, &kv->v.s, "string value", key.s);
    if (t != LQ_GGUF_ARRAY) {
        const void *q;
        LQ_TRY(take(c, lq_gguf_scalar_size(kv->type), &q, "value", key.s));
        lq_gguf_scalar_decode(kv, kv->type, q);
        return LQ_OK;
    }
    uint32_t et;
    uint64_t n;
    LQ_TRY(rd_u32(c, &et, "array element type", key.s));
    if (et >= LQ_GGUF_TYPE_COUNT)
        return LQ_ERR(c->err, LQ_ERR_INPUT, "%s: key '%s': unknown array element type %u", c->path, key.s, et);
    if (et == LQ_GGUF_ARRAY)
        return LQ_ERR(c->err, LQ_ERR_UNSUPPORTED, "%s: key '%s': arrays of arrays are not supported", c->path, key.s);
    LQ_TRY(rd_u64(c, &n, "array length", key.s));
    kv->elem_type = (lq_gguf_type)et;
    kv->n = n;
    /* every element takes at least min bytes: check the count against the bytes left first */
    uint64_t min = et == LQ_GGUF_STRING ? 8 : lq_gguf_scalar_size(kv->elem_type);
    if (n > left(c) / min)
        return LQ_ERR(c->err, LQ_ERR_INPUT, "%s: key '%s': array of %llu %s elements needs at least %llu bytes per "
                      "element, only %llu bytes left in the file", c->path, key.s, (unsigned long long)n,
                      type_names[et], (unsigned long long)min, (unsigned long long)left(c));
    if (et != LQ_GGUF_STRING) {
        const void *q;
        LQ_TRY(take(c, n * min, &q, "array data", key.s));
        kv->arr = q;
        return LQ_OK;
    }
    lq_gguf_str *strs = calloc((size_t)n + 1, sizeof *strs);
    if (!strs) return LQ_ERR(c->err, LQ_ERR_OOM, "%s: key '%s': out of memory for %llu strings", c->path, key.s,
                             (unsigned long long)n);
    kv->strs = strs;
    for (uint64_t i = 0; i < n; i++) LQ_TRY(rd_str(c, &strs[i], "array string", key.s));
    return LQ_OK;
}

static int cmp_kv_key(const void *a, const void *b) {
    return strcmp((*(const lq_gguf_kv *const *)a)->key, (*(const lq_gguf_kv *const *)b)->key);
}

static int cmp_by_name(const void *a, const void *b) {
    return strcmp((*(const lq_gguf_tensor *const *)a)->name, (*(const lq_gguf_tensor *const *)b)->name);
}

static int cmp_by_offset(const void *a, const void *b) {
    const lq_gguf_tensor *x = *(const lq_gguf_tensor *const *)a, *y = *(const lq_gguf_tensor *const *)b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

static lq_status check_keys(lq_gguf_file *f, lq_err *err) {
    const lq_gguf_kv **s = malloc(((size_t)f->n_kv + 1) * sizeof *s);
    if (!s) return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", f->path);
    for (int64_t i = 0; i < f->n_kv; i++) s[i] = &f->kv[i];
    qsort(s, (size_t)f->n_kv, sizeof *s, cmp_kv_key);
    lq_status st = LQ_OK;
    for (int64_t i = 1; i < f->n_kv && st == LQ_OK; i++)
        if (strcmp(s[i - 1]->key, s[i]->key) == 0)
            st = LQ_ERR(err, LQ_ERR_INPUT, "%s: metadata key '%s' appears twice", f->path, s[i]->key);
    free(s);
    if (st != LQ_OK) return st;
    const lq_gguf_kv *al = lq_gguf_find_kv(f, "general.alignment");
    f->alignment = LQ_GGUF_DEFAULT_ALIGNMENT;
    if (al) {
        if (al->type != LQ_GGUF_UINT32)
            return LQ_ERR(err, LQ_ERR_INPUT, "%s: general.alignment is a %s, not a uint32", f->path, type_names[al->type]);
        if (al->v.u == 0 || (al->v.u & (al->v.u - 1)) != 0)
            return LQ_ERR(err, LQ_ERR_INPUT, "%s: general.alignment %llu is not a power of two", f->path,
                          (unsigned long long)al->v.u);
        f->alignment = (uint32_t)al->v.u;
    }
    return LQ_OK;
}

/* --- tensor infos ------------------------------------------------------------------------------- */

static lq_status parse_tensor(cursor *c, lq_gguf_tensor *t, int64_t idx) {
    char ctx[64];
    snprintf(ctx, sizeof ctx, "tensor info %lld", (long long)idx);
    lq_gguf_str name = {0};
    LQ_TRY(rd_str(c, &name, "name", ctx));
    t->name = name.s;
    if (name.len == 0 || !lq_io_utf8_ok(name.s, (size_t)name.len))
        return LQ_ERR(c->err, LQ_ERR_INPUT, "%s: %s: the name is empty or not UTF-8 text", c->path, ctx);
    uint32_t nd, type;
    LQ_TRY(rd_u32(c, &nd, "n_dims", name.s));
    if (nd < 1 || nd > LQ_GGUF_MAX_DIMS)
        return LQ_ERR(c->err, LQ_ERR_INPUT, "%s: tensor '%s': n_dims %u is outside 1..%d", c->path, name.s, nd,
                      LQ_GGUF_MAX_DIMS);
    t->ndim = (int)nd;
    uint64_t numel = 1;
    for (int d = 0; d < LQ_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < nd; d++) {
        uint64_t x;
        LQ_TRY(rd_u64(c, &x, "dimension", name.s));
        if (x > (uint64_t)INT64_MAX || __builtin_mul_overflow(numel, x, &numel) || numel > (uint64_t)INT64_MAX)
            return LQ_ERR(c->err, LQ_ERR_INPUT, "%s: tensor '%s': ne[%u] = %llu makes the element count overflow",
                          c->path, name.s, d, (unsigned long long)x);
        t->ne[d] = (int64_t)x;
        t->shape[nd - 1 - d] = (int64_t)x;
    }
    LQ_TRY(rd_u32(c, &type, "ggml type", name.s));
    LQ_TRY(rd_u64(c, &t->offset, "data offset", name.s));
    uint32_t block, bytes;
    if (!lq_gguf_ggml_block(type, &block, &bytes))
        return LQ_ERR(c->err, LQ_ERR_INPUT, "%s: tensor '%s': unknown ggml type id %u", c->path, name.s, type);
    t->ggml_type = type;
    t->dtype = lq_gguf_ggml_type_to_lq(type);
    if (t->ne[0] % block != 0)
        return LQ_ERR(c->err, LQ_ERR_INPUT, "%s: tensor '%s': row length ne[0] = %lld is not a multiple of %s's block "
                      "of %u", c->path, name.s, (long long)t->ne[0], lq_gguf_ggml_type_name(type), block);
    uint64_t nb;
    if (__builtin_mul_overflow(numel / block, (uint64_t)bytes, &nb) || nb > SIZE_MAX)
        return LQ_ERR(c->err, LQ_ERR_INPUT, "%s: tensor '%s': byte size overflows", c->path, name.s);
    t->numel = (int64_t)numel;
    t->nbytes = (size_t)nb;
    return LQ_OK;
}

/* Data ranges: aligned, inside the file, not overlapping; then the by-name index. */
static lq_status check_tensors(lq_gguf_file *f, lq_err *err) {
    uint64_t data_size = f->data_offset <= f->map_size ? f->map_size - f->data_offset : 0;
    f->by_name = calloc((size_t)f->n + 1, sizeof *f->by_name);
    const lq_gguf_tensor **by_off = calloc((size_t)f->n + 1, sizeof *by_off);
    lq_status s = LQ_OK;
    if (!f->by_name || !by_off) s = LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", f->path);
    if (s == LQ_OK && f->n > 0 && f->data_offset > f->map_size)
        s = LQ_ERR(err, LQ_ERR_INPUT, "%s: truncated: the data section would start at offset %llu, past the end of the "
                   "file (%zu bytes)", f->path, (unsigned long long)f->data_offset, f->map_size);
    for (int64_t i = 0; i < f->n && s == LQ_OK; i++) {
        lq_gguf_tensor *t = &f->t[i];
        if (t->offset % f->alignment != 0)
            s = LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': data offset %llu is not a multiple of the alignment %u",
                       f->path, t->name, (unsigned long long)t->offset, f->alignment);
        else if (t->offset > data_size || t->nbytes > data_size - t->offset)
            s = LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': data [%llu, +%zu) runs past the end of the data section "
                       "(%llu bytes)", f->path, t->name, (unsigned long long)t->offset, t->nbytes,
                       (unsigned long long)data_size);
        else
            t->data = (const uint8_t *)f->map + f->data_offset + t->offset;
        if (s == LQ_OK) f->by_name[i] = by_off[i] = t;
    }
    if (s == LQ_OK) {
        qsort(by_off, (size_t)f->n, sizeof *by_off, cmp_by_offset);
        for (int64_t i = 1; i < f->n && s == LQ_OK; i++) {
            const lq_gguf_tensor *a = by_off[i - 1], *b = by_off[i];
            if (a->nbytes > 0 && b->nbytes > 0 && a->offset + a->nbytes > b->offset)
                s = LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s': data at offset %llu overlaps tensor '%s'", f->path,
                           b->name, (unsigned long long)b->offset, a->name);
        }
        qsort(f->by_name, (size_t)f->n, sizeof *f->by_name, cmp_by_name);
        for (int64_t i = 1; i < f->n && s == LQ_OK; i++)
            if (strcmp(f->by_name[i - 1]->name, f->by_name[i]->name) == 0)
                s = LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s' appears twice", f->path, f->by_name[i]->name);
    }
    free(by_off);
    return s;
}

/* --- open / close ------------------------------------------------------------------------------- */

void lq_gguf_close(lq_gguf_file *f) {
    if (!f) return;
    for (int64_t i = 0; f->kv && i < f->n_kv; i++) {
        lq_gguf_kv *kv = &f->kv[i];
        free((char *)kv->key);
        if (kv->type == LQ_GGUF_STRING) free((char *)kv->v.s.s);
        if (kv->strs) {
            for (uint64_t j = 0; j < kv->n; j++) free((char *)kv->strs[j].s);
            free((lq_gguf_str *)kv->strs);
        }
    }
    for (int64_t i = 0; f->t && i < f->n; i++) free((char *)f->t[i].name);
    free(f->kv);
    free(f->t);
    free(f->by_name);
    if (f->map) munmap(f->map, f->map_size);
    free(f->path);
    free(f);
}

bool lq_gguf_sniff(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    char m[4];
    bool ok = read(fd, m, 4) == 4 && memcmp(m, "GGUF", 4) == 0;
    close(fd);
    return ok;
}

static lq_status map_file(lq_gguf_file *f, lq_err *err) {
    void *p;
    LQ_TRY(lq_map_file(f->path, 24, "a GGUF file (24-byte header)", &p, &f->map_size, err));
    f->map = p;
    return LQ_OK;
}

/* Doubles a zero-filled table of *cap elements (at most max). */
static lq_status grow(void **p, uint64_t *cap, size_t elem, uint64_t max, const char *path, lq_err *err) {
    uint64_t nc = *cap ? *cap * 2 : 16;
    if (nc > max) nc = max;
    void *q = realloc(*p, (size_t)nc * elem);
    if (!q) return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", path);
    memset((char *)q + *cap * elem, 0, (size_t)(nc - *cap) * elem);
    *p = q;
    *cap = nc;
    return LQ_OK;
}

static lq_status parse(lq_gguf_file *f, lq_err *err) {
    cursor c = {f->map, 0, f->map_size, f->path, err};
    const void *magic = NULL;
    LQ_TRY(take(&c, 4, &magic, "magic", NULL));
    if (memcmp(magic, "GGUF", 4) != 0)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: not a GGUF file (the first 4 bytes are not \"GGUF\")", f->path);
    uint64_t n_t, n_kv;
    LQ_TRY(rd_u32(&c, &f->version, "version", NULL));
    if (f->version != 2 && f->version != 3) {
        uint32_t v = f->version, sw = (v >> 24) | ((v >> 8) & 0xff00) | ((v << 8) & 0xff0000) | (v << 24);
        if (sw == 2 || sw == 3)
            return LQ_ERR(err, LQ_ERR_INPUT, "%s: a big-endian GGUF file (version %u); only little-endian is supported",
                          f->path, sw);
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: GGUF version %u is not supported (only 2 and 3)", f->path, v);
    }
    LQ_TRY(rd_u64(&c, &n_t, "tensor count", NULL));
    LQ_TRY(rd_u64(&c, &n_kv, "metadata count", NULL));
    /* a kv takes >= 13 bytes (key length, type, 1-byte value), a tensor info >= 32 */
    if (n_kv > left(&c) / 13)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: metadata count %llu cannot fit in the %llu bytes left in the file", f->path,
                      (unsigned long long)n_kv, (unsigned long long)left(&c));
    if (n_t > left(&c) / 32)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor count %llu cannot fit in the %llu bytes left in the file", f->path,
                      (unsigned long long)n_t, (unsigned long long)left(&c));
    /* the tables grow as entries parse, so a header that lies about its counts costs memory in
     * proportion to what is really there, not to what it claims */
    uint64_t cap = 0;
    for (uint64_t i = 0; i < n_kv; i++) {
        if (i == cap) LQ_TRY(grow((void **)&f->kv, &cap, sizeof *f->kv, n_kv, f->path, err));
        f->n_kv = (int64_t)i + 1; /* so close frees what the entry got */
        LQ_TRY(parse_kv(&c, &f->kv[i], (int64_t)i));
    }
    LQ_TRY(check_keys(f, err));
    cap = 0;
    for (uint64_t i = 0; i < n_t; i++) {
        if (i == cap) LQ_TRY(grow((void **)&f->t, &cap, sizeof *f->t, n_t, f->path, err));
        f->n = (int64_t)i + 1;
        LQ_TRY(parse_tensor(&c, &f->t[i], (int64_t)i));
    }
    f->data_offset = (c.pos + f->alignment - 1) / f->alignment * f->alignment;
    return check_tensors(f, err);
}

lq_status lq_gguf_open(lq_gguf_file **out, const char *path, lq_err *err) {
    *out = NULL;
    if (!path) return LQ_ERR(err, LQ_ERR_ARG, "gguf: NULL path");
    lq_gguf_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", path);
    }
    lq_status s = map_file(f, err);
    if (s == LQ_OK) s = parse(f, err);
    if (s != LQ_OK) {
        lq_gguf_close(f);
        return s;
    }
    *out = f;
    return LQ_OK;
}

/* --- queries ------------------------------------------------------------------------------------ */

const char *lq_gguf_path(const lq_gguf_file *f) { return f->path; }
uint32_t lq_gguf_version(const lq_gguf_file *f) { return f->version; }
uint32_t lq_gguf_alignment(const lq_gguf_file *f) { return f->alignment; }
uint64_t lq_gguf_data_offset(const lq_gguf_file *f) { return f->data_offset; }
int64_t lq_gguf_kv_count(const lq_gguf_file *f) { return f->n_kv; }
const lq_gguf_kv *lq_gguf_kv_at(const lq_gguf_file *f, int64_t i) { return i >= 0 && i < f->n_kv ? &f->kv[i] : NULL; }

const lq_gguf_kv *lq_gguf_find_kv(const lq_gguf_file *f, const char *key) {
    for (int64_t i = 0; key && i < f->n_kv; i++)
        if (strcmp(f->kv[i].key, key) == 0) return &f->kv[i];
    return NULL;
}

int64_t lq_gguf_count(const lq_gguf_file *f) { return f->n; }
const lq_gguf_tensor *lq_gguf_tensor_at(const lq_gguf_file *f, int64_t i) { return i >= 0 && i < f->n ? &f->t[i] : NULL; }

const lq_gguf_tensor *lq_gguf_find(const lq_gguf_file *f, const char *name) {
    int64_t lo = 0, hi = f->n;
    while (name && lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->by_name[mid]->name, name);
        if (c == 0) return f->by_name[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

lq_status lq_gguf_to_f32(const lq_gguf_tensor *t, float *dst, lq_err *err) {
    const lq_dtype_traits *tr = t->dtype == LQ_DTYPE_COUNT ? NULL : lq_dtype_info(t->dtype);
    if (!tr || !tr->to_f32 || tr->needs_qstate)
        return LQ_ERR(err, LQ_ERR_UNSUPPORTED, "tensor '%s': ggml type %s is not one loquat can load", t->name,
                      lq_gguf_ggml_type_name(t->ggml_type));
    tr->to_f32(t->data, dst, t->numel, NULL, 0);
    return LQ_OK;
}
