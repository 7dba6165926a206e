/* io/hdf5_inspect.c: a read-only listing of an HDF5 file: groups, datasets, attributes. */
#include <hdf5.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/io.h"

#define H5I_STRING_SHOWN 200 /* bytes of a string attribute kept */

typedef struct h5_walk {
    const char *path;
    lq_h5_listing *out;
    int64_t cap;
    lq_err *err;
    lq_status st;
} h5_walk;

/* The innermost message on HDF5's error stack (the one saying what is wrong). */
static herr_t h5_err_cb(unsigned n, const H5E_error2_t *e, void *data) {
    char *buf = data;
    if (e && e->desc && !buf[0]) snprintf(buf, 160, "%s", e->desc);
    (void)n;
    return 0;
}

/* Every HDF5 call that can fail goes through this: a negative result becomes LQ_ERR_INPUT naming
 * the file, the call and its source line, with HDF5's own reason; then `goto fail`. */
#define H5CHK(w, expr)                                                                                     \
    do {                                                                                                   \
        if ((expr) < 0) {                                                                                  \
            char h5why_[160] = "";                                                                         \
            H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, h5_err_cb, h5why_);                                     \
            (w)->st = lq_err_set((w)->err, LQ_ERR_INPUT, __FILE__, __LINE__, "%s: HDF5 %s failed%s%s (%s:%d)", \
                                 (w)->path, #expr, h5why_[0] ? ": " : "", h5why_, __FILE__, __LINE__);    \
            goto fail;                                                                                     \
        }                                                                                                  \
    } while (0)

static lq_h5_entry *push(h5_walk *w, lq_h5_kind kind, const char *obj, const char *name) {
    if (w->out->n == w->cap) {
        int64_t nc = w->cap ? w->cap * 2 : 16;
        lq_h5_entry *ne = realloc(w->out->e, (size_t)nc * sizeof *ne);
        if (!ne) return NULL;
        w->out->e = ne;
        w->cap = nc;
    }
    lq_h5_entry *e = &w->out->e[w->out->n];
    memset(e, 0, sizeof *e);
    e->kind = kind;
    e->path = strdup(obj);
    e->name = name ? strdup(name) : NULL;
    if (!e->path || (name && !e->name)) {
        free(e->path);
        free(e->name);
        return NULL;
    }
    w->out->n++;
    return e;
}

static void type_name(hid_t t, char *buf, size_t cap) {
    size_t sz = H5Tget_size(t);
    switch (H5Tget_class(t)) {
    case H5T_INTEGER:
        snprintf(buf, cap, "%sint%zu", H5Tget_sign(t) == H5T_SGN_NONE ? "u" : "", sz * 8);
        break;
    case H5T_FLOAT: snprintf(buf, cap, "float%zu", sz * 8); break;
    case H5T_STRING: snprintf(buf, cap, "string"); break;
    case H5T_COMPOUND: snprintf(buf, cap, "compound"); break;
    case H5T_ENUM: snprintf(buf, cap, "enum"); break;
    case H5T_ARRAY: snprintf(buf, cap, "array"); break;
    case H5T_VLEN: snprintf(buf, cap, "vlen"); break;
    case H5T_REFERENCE: snprintf(buf, cap, "reference"); break;
    case H5T_OPAQUE: snprintf(buf, cap, "opaque"); break;
    case H5T_BITFIELD: snprintf(buf, cap, "bitfield%zu", sz * 8); break;
    default: snprintf(buf, cap, "unknown"); break;
    }
}

/* Appends s[0..len) as a JSON string literal (cut at H5I_STRING_SHOWN bytes, "..." marking the cut). */
static char *json_quote(const char *s, size_t len) {
    size_t shown = len > H5I_STRING_SHOWN ? H5I_STRING_SHOWN : len;
    char *o = malloc(shown * 6 + 8), *p = o;
    if (!o) return NULL;
    *p++ = '"';
    for (size_t i = 0; i < shown; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *p++ = '\\';
            *p++ = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            p += sprintf(p, "\\u%04x", c);
        } else {
            *p++ = (char)c;
        }
    }
    if (shown < len) p += sprintf(p, "...");
    *p++ = '"';
    *p = 0;
    return o;
}

/* The value of a string or small numeric attribute as JSON text, or NULL (not shown). */
static char *attr_value(h5_walk *w, hid_t a, hid_t t, int64_t numel) {
    char *txt = NULL;
    hid_t mt = -1;
    H5T_class_t cls = H5Tget_class(t);
    if (cls == H5T_STRING && numel == 1) {
        if (H5Tis_variable_str(t) > 0) {
            char *s = NULL;
            H5CHK(w, mt = H5Tcopy(t));
            H5CHK(w, H5Tset_cset(mt, H5Tget_cset(t)));
            H5CHK(w, H5Aread(a, mt, &s));
            txt = s ? json_quote(s, strlen(s)) : strdup("null");
            if (s) H5free_memory(s);
        } else {
            size_t sz = H5Tget_size(t);
            char *s = calloc(sz + 1, 1);
            if (!s) goto fail;
            if (H5Aread(a, t, s) < 0) {
                free(s);
                H5CHK(w, -1);
            }
            txt = json_quote(s, strnlen(s, sz));
            free(s);
        }
    } else if ((cls == H5T_INTEGER || cls == H5T_FLOAT) && numel >= 1 && numel <= LQ_H5_VALUES_SHOWN) {
        double d[LQ_H5_VALUES_SHOWN];
        long long ll[LQ_H5_VALUES_SHOWN];
        unsigned long long ull[LQ_H5_VALUES_SHOWN];
        bool is_u = cls == H5T_INTEGER && H5Tget_sign(t) == H5T_SGN_NONE;
        if (cls == H5T_FLOAT)
            H5CHK(w, H5Aread(a, H5T_NATIVE_DOUBLE, d));
        else if (is_u)
            H5CHK(w, H5Aread(a, H5T_NATIVE_ULLONG, ull));
        else
            H5CHK(w, H5Aread(a, H5T_NATIVE_LLONG, ll));
        txt = malloc((size_t)numel * 32 + 4);
        if (!txt) goto fail;
        char *p = txt;
        if (numel > 1) *p++ = '[';
        for (int64_t i = 0; i < numel; i++) {
            if (i) p += sprintf(p, ", ");
            if (cls == H5T_FLOAT)
                p += sprintf(p, "%.9g", d[i]);
            else if (is_u)
                p += sprintf(p, "%llu", ull[i]);
            else
                p += sprintf(p, "%lld", ll[i]);
        }
        if (numel > 1) *p++ = ']';
        *p = 0;
    }
fail:
    if (mt >= 0) H5Tclose(mt);
    return txt;
}

/* dtype and shape of a dataset's or attribute's type and space. */
static lq_status fill_shape(h5_walk *w, lq_h5_entry *e, hid_t t, hid_t sp) {
    int nd;
    hsize_t dims[H5S_MAX_RANK];
    type_name(t, e->dtype, sizeof e->dtype);
    H5CHK(w, nd = H5Sget_simple_extent_ndims(sp));
    if (nd > LQ_H5_MAX_DIMS) {
        w->st = LQ_ERR(w->err, LQ_ERR_INPUT, "%s: %s has %d dimensions (at most %d shown)", w->path, e->path, nd,
                       LQ_H5_MAX_DIMS);
        goto fail;
    }
    H5CHK(w, H5Sget_simple_extent_dims(sp, dims, NULL));
    e->ndim = nd;
    e->numel = 1;
    for (int i = 0; i < nd; i++) {
        e->shape[i] = (int64_t)dims[i];
        e->numel *= (int64_t)dims[i];
    }
    e->bytes = (uint64_t)e->numel * H5Tget_size(t);
    return LQ_OK;
fail:
    return w->st;
}

static herr_t attr_cb(hid_t obj, const char *name, const H5A_info_t *info, void *data) {
    h5_walk *w = data;
    hid_t a = -1, t = -1, sp = -1;
    (void)info;
    lq_h5_entry *e = push(w, LQ_H5_ATTR, w->out->e[w->out->n - 1].path, name);
    if (!e) {
        w->st = LQ_ERR(w->err, LQ_ERR_OOM, "%s: out of memory", w->path);
        return -1;
    }
    H5CHK(w, a = H5Aopen(obj, name, H5P_DEFAULT));
    H5CHK(w, t = H5Aget_type(a));
    H5CHK(w, sp = H5Aget_space(a));
    if (fill_shape(w, e, t, sp) != LQ_OK) goto fail;
    e->value = attr_value(w, a, t, e->numel);
    if (w->st != LQ_OK) goto fail;
    H5Sclose(sp);
    H5Tclose(t);
    H5Aclose(a);
    return 0;
fail:
    if (sp >= 0) H5Sclose(sp);
    if (t >= 0) H5Tclose(t);
    if (a >= 0) H5Aclose(a);
    return -1;
}

/* One object: its entry, then its attributes (in name order). */
static lq_status visit_object(h5_walk *w, hid_t loc, const char *name, const char *full) {
    hid_t o = -1, t = -1, sp = -1;
    hsize_t idx = 0;
    H5CHK(w, o = H5Oopen(loc, name, H5P_DEFAULT));
    H5I_type_t it = H5Iget_type(o);
    lq_h5_entry *e = push(w, it == H5I_GROUP ? LQ_H5_GROUP : it == H5I_DATASET ? LQ_H5_DATASET : LQ_H5_OTHER, full, NULL);
    if (!e) {
        w->st = LQ_ERR(w->err, LQ_ERR_OOM, "%s: out of memory", w->path);
        goto fail;
    }
    if (it == H5I_DATASET) {
        H5CHK(w, t = H5Dget_type(o));
        H5CHK(w, sp = H5Dget_space(o));
        if (fill_shape(w, e, t, sp) != LQ_OK) goto fail;
        H5Sclose(sp);
        H5Tclose(t);
        sp = t = -1;
    } else if (it == H5I_DATATYPE) {
        snprintf(e->dtype, sizeof e->dtype, "datatype");
    }
    if (H5Aiterate2(o, H5_INDEX_NAME, H5_ITER_INC, &idx, attr_cb, w) < 0) {
        if (w->st == LQ_OK) H5CHK(w, -1);
        goto fail;
    }
    H5Oclose(o);
    return LQ_OK;
fail:
    if (sp >= 0) H5Sclose(sp);
    if (t >= 0) H5Tclose(t);
    if (o >= 0) H5Oclose(o);
    return w->st;
}

static herr_t link_cb(hid_t g, const char *name, const H5L_info_t *info, void *data) {
    h5_walk *w = data;
    size_t n = strlen(name) + 2;
    char *full = malloc(n);
    if (!full) {
        w->st = LQ_ERR(w->err, LQ_ERR_OOM, "%s: out of memory", w->path);
        return -1;
    }
    snprintf(full, n, "/%s", name);
    lq_status st;
    if (info->type == H5L_TYPE_HARD) {
        st = visit_object(w, g, name, full);
    } else { /* soft or external link: listed, not followed */
        lq_h5_entry *e = push(w, LQ_H5_LINK, full, NULL);
        st = e ? LQ_OK : (w->st = LQ_ERR(w->err, LQ_ERR_OOM, "%s: out of memory", w->path));
        if (e) snprintf(e->dtype, sizeof e->dtype, info->type == H5L_TYPE_SOFT ? "soft link" : "external link");
    }
    free(full);
    return st == LQ_OK ? 0 : -1;
}

lq_status lq_h5_list(const char *path, lq_h5_listing *out, lq_err *err) {
    if (!path || !out) return LQ_ERR(err, LQ_ERR_ARG, "lq_h5_list: NULL argument");
    memset(out, 0, sizeof *out);
    h5_walk w = {.path = path, .out = out, .err = err, .st = LQ_OK};
    hid_t f = -1;
    H5E_auto2_t old_fn = NULL;
    void *old_data = NULL;
    H5Eget_auto2(H5E_DEFAULT, &old_fn, &old_data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* errors are reported through lq_err, not printed */
    htri_t is = H5Fis_hdf5(path);
    if (is <= 0) {
        w.st = LQ_ERR(err, LQ_ERR_INPUT, "%s: %s", path, is == 0 ? "not an HDF5 file" : "cannot open as HDF5");
        goto fail;
    }
    H5CHK(&w, f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT));
    if (visit_object(&w, f, "/", "/") != LQ_OK) goto fail;
    if (H5Lvisit(f, H5_INDEX_NAME, H5_ITER_INC, link_cb, &w) < 0) {
        if (w.st == LQ_OK) H5CHK(&w, -1);
        goto fail;
    }
    H5Fclose(f);
    H5Eset_auto2(H5E_DEFAULT, old_fn, old_data);
    return LQ_OK;
fail:
    if (f >= 0) H5Fclose(f);
    H5Eset_auto2(H5E_DEFAULT, old_fn, old_data);
    lq_h5_listing_free(out);
    return w.st;
}

void lq_h5_listing_free(lq_h5_listing *l) {
    if (!l) return;
    for (int64_t i = 0; i < l->n; i++) {
        free(l->e[i].path);
        free(l->e[i].name);
        free(l->e[i].value);
    }
    free(l->e);
    memset(l, 0, sizeof *l);
}
