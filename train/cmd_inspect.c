/* train/cmd_inspect.c: `loquat inspect`: the metadata and tensor table of a GGUF, safetensors or HDF5
 * file (told apart by their first bytes, not the extension), as text or as one JSON object. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "datasets/datasets.h"
#include "io/io.h"
#include "train/train.h"

#define INSPECT_ARRAY_SHOWN 8   /* array elements printed before "..." */
#define INSPECT_STRING_SHOWN 96 /* bytes of a string printed in text mode */

/* --- values as text ----------------------------------------------------------------------------- */

/* Appends s[0..len) to buf quoted and escaped (non-printable bytes as \xNN), cut at max bytes. */
static void quote(char *buf, size_t cap, const char *s, uint64_t len, uint64_t max) {
    size_t n = strlen(buf);
    n += (size_t)snprintf(buf + n, cap - n, "\"");
    for (uint64_t i = 0; i < len && i < max && n + 8 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') n += (size_t)snprintf(buf + n, cap - n, "\\%c", c);
        else if (c == '\n') n += (size_t)snprintf(buf + n, cap - n, "\\n");
        else if (c < 0x20 || c == 0x7f) n += (size_t)snprintf(buf + n, cap - n, "\\x%02x", c);
        else buf[n++] = (char)c, buf[n] = '\0';
    }
    snprintf(buf + n, cap - n, len > max ? "\"...(%" PRIu64 " bytes)" : "\"", len);
}

/* The shortest decimal text that reads back as the same float32 / float64. */
static void fmt_float(char *buf, size_t cap, double d, bool f32) {
    for (int prec = f32 ? 6 : 15; prec <= (f32 ? 9 : 17); prec++) {
        snprintf(buf, cap, "%.*g", prec, d);
        if (f32 ? strtof(buf, NULL) == (float)d : strtod(buf, NULL) == d) return;
    }
}

/* Element i of a kv as text (i = 0 for a scalar), appended to buf. */
static void elem_text(char *buf, size_t cap, const lq_gguf_kv *kv, uint64_t i) {
    lq_gguf_type t = kv->type == LQ_GGUF_ARRAY ? kv->elem_type : kv->type;
    size_t n = strlen(buf);
    uint64_t u;
    int64_t v;
    double d;
    const lq_gguf_str *s;
    if ((s = lq_gguf_kv_str(kv, i))) quote(buf, cap, s->s, s->len, INSPECT_STRING_SHOWN);
    else if (t == LQ_GGUF_BOOL && lq_gguf_kv_uint(kv, i, &u)) snprintf(buf + n, cap - n, "%s", u ? "true" : "false");
    else if ((t == LQ_GGUF_FLOAT32 || t == LQ_GGUF_FLOAT64) && lq_gguf_kv_float(kv, i, &d))
        fmt_float(buf + n, cap - n, d, t == LQ_GGUF_FLOAT32);
    else if (lq_gguf_kv_int(kv, i, &v)) snprintf(buf + n, cap - n, "%" PRId64, v);
    else if (lq_gguf_kv_uint(kv, i, &u)) snprintf(buf + n, cap - n, "%" PRIu64, u);
}

static void kv_text(char *buf, size_t cap, const lq_gguf_kv *kv) {
    buf[0] = '\0';
    if (kv->type != LQ_GGUF_ARRAY) {
        elem_text(buf, cap, kv, 0);
        return;
    }
    strcat(buf, "[");
    for (uint64_t i = 0; i < kv->n && i < INSPECT_ARRAY_SHOWN; i++) {
        if (i) strcat(buf, ", ");
        elem_text(buf, cap, kv, i);
    }
    size_t n = strlen(buf);
    snprintf(buf + n, cap - n, "%s] (%" PRIu64 " element%s)", kv->n > INSPECT_ARRAY_SHOWN ? ", ..." : "", kv->n,
             kv->n == 1 ? "" : "s");
}

/* --- values as JSON ----------------------------------------------------------------------------- */

/* A JSON string of s[0..len): bytes that are not valid UTF-8 become '?'. */
static cJSON *json_str(const char *s, uint64_t len, uint64_t max) {
    uint64_t m = len < max ? len : max;
    char *c = malloc((size_t)m + 1);
    if (!c) return NULL;
    const unsigned char *p = (const unsigned char *)s;
    for (uint64_t i = 0; i < m;) {
        unsigned b = p[i];
        uint64_t k = b < 0x80 ? 1 : (b >= 0xc2 && b <= 0xdf) ? 2 : (b >= 0xe0 && b <= 0xef) ? 3 : (b >= 0xf0 && b <= 0xf4) ? 4 : 0;
        bool ok = k > 0 && i + k <= m && b != 0;
        for (uint64_t j = 1; ok && j < k; j++) ok = (p[i + j] & 0xc0) == 0x80;
        if (!ok) k = 1;
        for (uint64_t j = 0; j < k; j++) c[i + j] = ok ? (char)p[i + j] : '?';
        i += k;
    }
    c[m] = '\0';
    cJSON *j = cJSON_CreateString(c);
    free(c);
    return j;
}

/* Integers go out as exact decimal text (a double would round 64-bit values). */
static cJSON *elem_json(const lq_gguf_kv *kv, uint64_t i) {
    lq_gguf_type t = kv->type == LQ_GGUF_ARRAY ? kv->elem_type : kv->type;
    char num[48];
    uint64_t u;
    int64_t v;
    double d;
    const lq_gguf_str *s;
    if ((s = lq_gguf_kv_str(kv, i))) return json_str(s->s, s->len, UINT64_MAX);
    if (t == LQ_GGUF_BOOL && lq_gguf_kv_uint(kv, i, &u)) return cJSON_CreateBool(u != 0);
    if ((t == LQ_GGUF_FLOAT32 || t == LQ_GGUF_FLOAT64) && lq_gguf_kv_float(kv, i, &d)) {
        if (!isfinite(d)) return cJSON_CreateString(isnan(d) ? "nan" : d > 0 ? "inf" : "-inf");
        fmt_float(num, sizeof num, d, t == LQ_GGUF_FLOAT32);
        return cJSON_CreateRaw(num);
    }
    if (lq_gguf_kv_int(kv, i, &v)) snprintf(num, sizeof num, "%" PRId64, v);
    else if (lq_gguf_kv_uint(kv, i, &u)) snprintf(num, sizeof num, "%" PRIu64, u);
    else return cJSON_CreateNull();
    return cJSON_CreateRaw(num);
}

static cJSON *kv_json(const lq_gguf_kv *kv) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "key", json_str(kv->key, strlen(kv->key), UINT64_MAX));
    cJSON_AddStringToObject(o, "type", lq_gguf_type_name(kv->type));
    if (kv->type != LQ_GGUF_ARRAY) {
        cJSON_AddItemToObject(o, "value", elem_json(kv, 0));
        return o;
    }
    cJSON_AddStringToObject(o, "elem_type", lq_gguf_type_name(kv->elem_type));
    cJSON_AddNumberToObject(o, "length", (double)kv->n);
    cJSON *a = cJSON_AddArrayToObject(o, "value");
    for (uint64_t i = 0; i < kv->n && i < INSPECT_ARRAY_SHOWN; i++) cJSON_AddItemToArray(a, elem_json(kv, i));
    cJSON_AddBoolToObject(o, "truncated", kv->n > INSPECT_ARRAY_SHOWN);
    return o;
}

/* --- the tensor table, shared by both formats ----------------------------------------------------- */

typedef struct totals {
    int64_t n, params;
    uint64_t bytes;
} totals;

static void shape_text(char *buf, size_t cap, const int64_t *shape, int ndim) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < ndim; d++) n += (size_t)snprintf(buf + n, cap - n, "%s%" PRId64, d ? ", " : "", shape[d]);
    snprintf(buf + n, cap - n, "]");
}

static void tensor_row(cJSON *arr, totals *tt, const char *name, const char *dtype, bool loadable, const int64_t *shape,
                       int ndim, int64_t numel, uint64_t bytes) {
    tt->n++;
    tt->params += numel;
    tt->bytes += bytes;
    if (arr) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "name", json_str(name, strlen(name), UINT64_MAX));
        cJSON_AddStringToObject(o, "dtype", dtype);
        cJSON_AddBoolToObject(o, "loadable", loadable);
        cJSON *s = cJSON_AddArrayToObject(o, "shape");
        for (int d = 0; d < ndim; d++) cJSON_AddItemToArray(s, cJSON_CreateNumber((double)shape[d]));
        cJSON_AddNumberToObject(o, "params", (double)numel);
        cJSON_AddNumberToObject(o, "bytes", (double)bytes);
        cJSON_AddItemToArray(arr, o);
        return;
    }
    char sh[160];
    shape_text(sh, sizeof sh, shape, ndim);
    printf("  %-40s %-8s %-24s %12" PRIu64 "%s\n", name, dtype, sh, bytes, loadable ? "" : "  (unsupported by loquat)");
}

static int finish(cJSON *root, const totals *tt) {
    if (root) {
        cJSON_AddNumberToObject(root, "tensor_count", (double)tt->n);
        cJSON_AddNumberToObject(root, "parameter_count", (double)tt->params);
        cJSON_AddNumberToObject(root, "total_bytes", (double)tt->bytes);
        char *s = cJSON_PrintUnformatted(root);
        if (!s) {
            fprintf(stderr, "loquat inspect: out of memory\n");
            return 1;
        }
        printf("%s\n", s);
        free(s);
        cJSON_Delete(root);
        return 0;
    }
    printf("total: %" PRId64 " tensor%s, %" PRId64 " parameters, %" PRIu64 " bytes\n", tt->n, tt->n == 1 ? "" : "s",
           tt->params, tt->bytes);
    return 0;
}

/* --- the three formats ---------------------------------------------------------------------------- */

static int inspect_gguf(const char *path, bool json) {
    lq_gguf_file *f = NULL;
    lq_err err = {0};
    lq_status s = lq_gguf_open(&f, path, &err);
    if (s != LQ_OK) {
        fprintf(stderr, "loquat inspect: %s\n", err.msg);
        return lq_status_exit_code(s);
    }
    cJSON *root = NULL, *tens = NULL;
    if (json) {
        root = cJSON_CreateObject();
        cJSON_AddItemToObject(root, "file", json_str(path, strlen(path), UINT64_MAX));
        cJSON_AddStringToObject(root, "format", "gguf");
        cJSON_AddNumberToObject(root, "version", lq_gguf_version(f));
        cJSON_AddNumberToObject(root, "alignment", lq_gguf_alignment(f));
        cJSON_AddNumberToObject(root, "data_offset", (double)lq_gguf_data_offset(f));
        cJSON *md = cJSON_AddArrayToObject(root, "metadata");
        for (int64_t i = 0; i < lq_gguf_kv_count(f); i++) cJSON_AddItemToArray(md, kv_json(lq_gguf_kv_at(f, i)));
        tens = cJSON_AddArrayToObject(root, "tensors");
    } else {
        printf("%s: GGUF version %u, alignment %u, data section at byte %" PRIu64 "\n", path, lq_gguf_version(f),
               lq_gguf_alignment(f), lq_gguf_data_offset(f));
        printf("metadata (%" PRId64 " key%s):\n", lq_gguf_kv_count(f), lq_gguf_kv_count(f) == 1 ? "" : "s");
        char *buf = malloc(8192);
        for (int64_t i = 0; buf && i < lq_gguf_kv_count(f); i++) {
            const lq_gguf_kv *kv = lq_gguf_kv_at(f, i);
            char type[40];
            snprintf(type, sizeof type, kv->type == LQ_GGUF_ARRAY ? "array[%s]" : "%s",
                     lq_gguf_type_name(kv->type == LQ_GGUF_ARRAY ? kv->elem_type : kv->type));
            kv_text(buf, 8192, kv);
            printf("  %-40s %-16s %s\n", kv->key, type, buf);
        }
        free(buf);
        printf("tensors (shape outermost first; GGUF stores it reversed):\n  %-40s %-8s %-24s %12s\n", "name", "dtype",
               "shape", "bytes");
    }
    totals tt = {0};
    for (int64_t i = 0; i < lq_gguf_count(f); i++) {
        const lq_gguf_tensor *t = lq_gguf_tensor_at(f, i);
        tensor_row(tens, &tt, t->name, lq_gguf_ggml_type_name(t->ggml_type), t->dtype != LQ_DTYPE_COUNT, t->shape,
                   t->ndim, t->numel, t->nbytes);
    }
    lq_gguf_close(f);
    return finish(root, &tt);
}

static int inspect_safetensors(const char *path, bool json) {
    lq_st_file *f = NULL;
    lq_err err = {0};
    lq_status s = lq_st_open(&f, path, &err);
    if (s != LQ_OK) {
        fprintf(stderr, "loquat inspect: %s\n", err.msg);
        return lq_status_exit_code(s);
    }
    cJSON *root = NULL, *tens = NULL;
    if (json) {
        root = cJSON_CreateObject();
        cJSON_AddItemToObject(root, "file", json_str(path, strlen(path), UINT64_MAX));
        cJSON_AddStringToObject(root, "format", "safetensors");
        cJSON *md = cJSON_AddArrayToObject(root, "metadata");
        for (int64_t i = 0; i < lq_st_metadata_count(f); i++) {
            const char *k, *v;
            lq_st_metadata_at(f, i, &k, &v);
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "key", k);
            cJSON_AddStringToObject(o, "type", "string");
            cJSON_AddStringToObject(o, "value", v);
            cJSON_AddItemToArray(md, o);
        }
        tens = cJSON_AddArrayToObject(root, "tensors");
    } else {
        printf("%s: safetensors\nmetadata (%" PRId64 " key%s):\n", path, lq_st_metadata_count(f),
               lq_st_metadata_count(f) == 1 ? "" : "s");
        for (int64_t i = 0; i < lq_st_metadata_count(f); i++) {
            const char *k, *v;
            lq_st_metadata_at(f, i, &k, &v);
            char buf[256] = "";
            quote(buf, sizeof buf, v, strlen(v), INSPECT_STRING_SHOWN);
            printf("  %-40s %-16s %s\n", k, "string", buf);
        }
        printf("tensors:\n  %-40s %-8s %-24s %12s\n", "name", "dtype", "shape", "bytes");
    }
    totals tt = {0};
    for (int64_t i = 0; i < lq_st_count(f); i++) {
        const lq_st_tensor *t = lq_st_tensor_at(f, i);
        tensor_row(tens, &tt, t->name, lq_st_dtype_name(t->dtype),
                   lq_st_dtype_to_lq(t->dtype) != LQ_DTYPE_COUNT || t->dtype == LQ_ST_F64, /* F64 converts to f32 */
                   t->shape, t->ndim, t->numel, t->nbytes);
    }
    lq_st_close(f);
    return finish(root, &tt);
}

/* HDF5: groups, datasets (the tensor table) and attributes, in link-name order. */
static int inspect_hdf5(const char *path, bool json) {
    lq_h5_listing l;
    lq_err err = {0};
    lq_status s = lq_h5_list(path, &l, &err);
    if (s != LQ_OK) {
        fprintf(stderr, "loquat inspect: %s\n", err.msg);
        return lq_status_exit_code(s);
    }
    cJSON *root = NULL, *tens = NULL, *groups = NULL, *attrs = NULL;
    if (json) {
        root = cJSON_CreateObject();
        cJSON_AddItemToObject(root, "file", json_str(path, strlen(path), UINT64_MAX));
        cJSON_AddStringToObject(root, "format", "hdf5");
        groups = cJSON_AddArrayToObject(root, "groups");
        attrs = cJSON_AddArrayToObject(root, "attributes");
        tens = cJSON_AddArrayToObject(root, "tensors");
    } else {
        printf("%s: HDF5\n  %-40s %-8s %-24s %12s\n", path, "object", "dtype", "shape", "bytes");
    }
    totals tt = {0};
    for (int64_t i = 0; i < l.n; i++) {
        const lq_h5_entry *e = &l.e[i];
        char sh[160];
        shape_text(sh, sizeof sh, e->shape, e->ndim);
        switch (e->kind) {
        case LQ_H5_DATASET: {
            const char *d = e->dtype;
            bool loadable = !strcmp(d, "float32") || !strcmp(d, "float16") || !strcmp(d, "float64") ||
                            !strcmp(d, "int8") || !strcmp(d, "uint8") || !strcmp(d, "int32");
            tensor_row(tens, &tt, e->path, d, loadable, e->shape, e->ndim, e->numel, e->bytes);
            break;
        }
        case LQ_H5_ATTR:
            if (json) {
                cJSON *o = cJSON_CreateObject();
                cJSON_AddItemToObject(o, "object", json_str(e->path, strlen(e->path), UINT64_MAX));
                cJSON_AddItemToObject(o, "name", json_str(e->name, strlen(e->name), UINT64_MAX));
                cJSON_AddStringToObject(o, "dtype", e->dtype);
                cJSON *sa = cJSON_AddArrayToObject(o, "shape");
                for (int d = 0; d < e->ndim; d++) cJSON_AddItemToArray(sa, cJSON_CreateNumber((double)e->shape[d]));
                cJSON *v = e->value ? cJSON_Parse(e->value) : NULL;
                cJSON_AddItemToObject(o, "value", v ? v : cJSON_CreateNull());
                cJSON_AddItemToArray(attrs, o);
            } else {
                char nm[300];
                snprintf(nm, sizeof nm, "%s@%s", e->path, e->name);
                printf("  %-40s %-8s %-24s %12s  %s\n", nm, e->dtype, e->ndim ? sh : "scalar", "",
                       e->value ? e->value : "");
            }
            break;
        default: /* groups, links, named datatypes */
            if (json) {
                cJSON *o = cJSON_CreateObject();
                cJSON_AddItemToObject(o, "name", json_str(e->path, strlen(e->path), UINT64_MAX));
                cJSON_AddStringToObject(o, "kind", e->kind == LQ_H5_GROUP ? "group" : e->kind == LQ_H5_LINK ? "link" : "other");
                cJSON_AddItemToArray(groups, o);
            } else {
                printf("  %-40s %s\n", e->path, e->kind == LQ_H5_GROUP ? "group" : e->dtype[0] ? e->dtype : "object");
            }
            break;
        }
    }
    lq_h5_listing_free(&l);
    return finish(root, &tt);
}

/* IDX (MNIST's u8 images or labels, plain or gzip): its magic is 0, 0, 0x08 (u8), ndim (a gzip
 * file's first 4 bytes are inflated to see it); a file with a broken magic is known by its name
 * ("idx1-" / "idx3-" as MNIST's, or ".idx" / ".idx.gz"), so the loader says what is wrong.
 * Returns the ndim to load (1 labels, 3 images), or 0 when the file is not IDX. */
static int idx_ndim(const char *path, const unsigned char *m, ssize_t got) {
    unsigned char h[4] = {0};
    bool have = got >= 4;
    memcpy(h, m, 4);
    if (got >= 2 && m[0] == 0x1f && m[1] == 0x8b) {
        gzFile f = gzopen(path, "rb");
        have = f && gzread(f, h, 4) == 4;
        if (f) gzclose(f);
    }
    if (have && h[0] == 0 && h[1] == 0 && h[2] == 0x08 && (h[3] == 1 || h[3] == 3)) return h[3];
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (strstr(base, "idx1-")) return 1;
    if (strstr(base, "idx3-")) return 3;
    size_t n = strlen(base);
    if ((n > 4 && strcmp(base + n - 4, ".idx") == 0) || (n > 7 && strcmp(base + n - 7, ".idx.gz") == 0))
        return have && h[3] == 1 ? 1 : 3;
    return 0;
}

/* The shape of an IDX file, read whole by the loader the datasets use (so every check it makes on
 * the header and the payload applies here too). */
static int inspect_idx(const char *path, int ndim, bool json) {
    lq_err err = {0};
    lq_idx_images im = {0};
    lq_idx_labels lb = {0};
    lq_status s = ndim == 3 ? lq_idx_load_images(path, &im, &err) : lq_idx_load_labels(path, &lb, &err);
    if (s != LQ_OK) {
        fprintf(stderr, "loquat inspect: %s\n", err.msg);
        return lq_status_exit_code(s);
    }
    if (ndim == 3) {
        if (json) printf("{\"format\": \"idx\", \"kind\": \"images\", \"dtype\": \"U8\", \"shape\": [%" PRId64 ", %" PRId64 ", %" PRId64 "]}\n", im.n, im.h, im.w);
        else printf("%s: IDX u8 images, shape [%" PRId64 ", %" PRId64 ", %" PRId64 "] (%" PRId64 " bytes)\n", path, im.n, im.h, im.w, im.n * im.h * im.w);
        lq_idx_images_free(&im);
    } else {
        int hi = -1;
        for (int64_t i = 0; i < lb.n; i++)
            if (lb.data[i] > hi) hi = lb.data[i];
        if (json) printf("{\"format\": \"idx\", \"kind\": \"labels\", \"dtype\": \"U8\", \"shape\": [%" PRId64 "], \"max_label\": %d}\n", lb.n, hi);
        else printf("%s: IDX u8 labels, shape [%" PRId64 "], largest label %d\n", path, lb.n, hi);
        lq_idx_labels_free(&lb);
    }
    return 0;
}

int lq_cmd_inspect(const char *path, bool json) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "loquat inspect: %s: cannot open: %s\n", path, strerror(errno));
        return lq_status_exit_code(LQ_ERR_INPUT);
    }
    unsigned char m[9] = {0};
    ssize_t got = read(fd, m, sizeof m);
    close(fd);
    static const unsigned char hdf5[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    size_t len = strlen(path);
    /* HDF5 puts its signature at byte 0 (or 512, 1024, ... after a user block): the library finds it */
    if ((got >= 8 && memcmp(m, hdf5, 8) == 0) || (len > 3 && strcmp(path + len - 3, ".h5") == 0) ||
        (len > 5 && strcmp(path + len - 5, ".hdf5") == 0))
        return inspect_hdf5(path, json);
    /* safetensors has no magic: 8 bytes of header length, then the JSON header's '{' */
    bool st_like = got == 9 && m[8] == '{';
    if ((got >= 4 && memcmp(m, "GGUF", 4) == 0) || (!st_like && len > 5 && strcmp(path + len - 5, ".gguf") == 0))
        return inspect_gguf(path, json); /* a .gguf that is neither: the GGUF reader says so */
    int idx = idx_ndim(path, m, got);
    if (idx) return inspect_idx(path, idx, json);
    return inspect_safetensors(path, json); /* its reader explains what is wrong with anything else */
}
