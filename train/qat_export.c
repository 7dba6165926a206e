/* train/qat_export.c: the integer model a QAT / PTQ run converts to, written as safetensors and HDF5
 * (codes packed at 2 / 4 bits, scales, zero points, the activation quantizers), and read back from
 * safetensors into the layers' integer form (so the integer evaluation runs on what the file holds).
 *
 * Per layer <name>:  <name>.weight             U8 (N, ceil(K bits / 8)) packed 2 / 4-bit codes, or I8 (N, K),
 *                                              or F32 (weight shape) when the weights stay float
 *                    <name>.weight_scale       F32 (N, G)   one per output row and group of K / G inputs
 *                    <name>.weight_zero_point  I8 (N, G)    asymmetric weights only
 *                    <name>.bias               F32 (N)
 *                    <name>.input_scale        F32 (1), <name>.input_zero_point I32 (1): static activations
 * Codes are signed two's complement in [-2^(b-1), 2^(b-1) - 1]; asymmetric (unsigned) codes and their
 * zero point are stored shifted by -2^(b-1), which leaves every code - zero point unchanged. Packed
 * codes: element k of a row at bits (k mod 8/b) * b of byte k / (8/b), low bits first.
 * __metadata__: format "loquat-qat-int" version 1, and "layers", a JSON list of each layer's name,
 * kind, weight shape, w_bits, w_group, a_bits, a_dynamic, a_symmetric, a_qmin, a_qmax. */
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "io/io.h"
#include "models/qat.h"
#include "train/qat_impl.h"

static bool packs(int bits) { return bits == 2 || bits == 4; }
static int64_t row_bytes(int bits, int64_t k) { return packs(bits) ? (k * bits + 7) / 8 : k; }

/* One layer's arrays as stored. */
typedef struct stored {
    uint8_t *wcodes; /* packed or int8 codes, N x row_bytes */
    int8_t *zp;      /* (N, G) or NULL */
    int32_t in_zp;
    float in_scale;
} stored;

static lq_status pack_layer(const lq_qlayer *l, stored *s, lq_err *err) {
    const lq_qlayer_int *q = &l->q;
    memset(s, 0, sizeof *s);
    s->in_scale = q->a_scale, s->in_zp = q->a_zp;
    if (q->w_bits == 0) return LQ_OK;
    int64_t rb = row_bytes(q->w_bits, q->k);
    s->wcodes = calloc((size_t)(q->n * rb), 1);
    bool asym = false;
    for (int64_t i = 0; i < q->n * q->n_groups; i++) asym |= q->w_zp[i] != 0;
    if (asym) s->zp = malloc((size_t)(q->n * q->n_groups));
    if (!s->wcodes || (asym && !s->zp)) return LQ_ERR(err, LQ_ERR_OOM, "export: out of memory for layer %s", l->name);
    for (int64_t n = 0; n < q->n; n++) {
        uint8_t *r = s->wcodes + n * rb;
        for (int64_t k = 0; k < q->k; k++) {
            int8_t c = q->w_codes[n * q->k + k];
            if (!packs(q->w_bits)) {
                r[k] = (uint8_t)c;
                continue;
            }
            int per = 8 / q->w_bits;
            uint8_t mask = (uint8_t)((1u << q->w_bits) - 1u);
            r[k / per] |= (uint8_t)(((uint8_t)c & mask) << ((k % per) * q->w_bits));
        }
    }
    if (asym)
        for (int64_t i = 0; i < q->n * q->n_groups; i++) s->zp[i] = (int8_t)q->w_zp[i];
    return LQ_OK;
}

static cJSON *layers_json(lq_qlayer *const *layers, int n) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++) {
        const lq_qlayer *l = layers[i];
        const lq_qlayer_int *q = &l->q;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", l->name);
        cJSON_AddStringToObject(o, "kind", l->kind == LQ_QLAYER_CONV2D ? "conv2d" : "linear");
        cJSON *sh = cJSON_CreateArray();
        for (int d = 0; d < l->weight->ndim; d++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)l->weight->ne[d]));
        cJSON_AddItemToObject(o, "shape", sh);
        cJSON_AddNumberToObject(o, "w_bits", q->w_bits);
        cJSON_AddNumberToObject(o, "w_group", (double)q->w_group);
        cJSON_AddNumberToObject(o, "a_bits", q->a_bits);
        cJSON_AddBoolToObject(o, "a_dynamic", q->a_dynamic);
        cJSON_AddBoolToObject(o, "a_symmetric", q->a_symmetric);
        cJSON_AddNumberToObject(o, "a_qmin", q->a_qmin);
        cJSON_AddNumberToObject(o, "a_qmax", q->a_qmax);
        cJSON_AddItemToArray(a, o);
    }
    return a;
}

#define MAX_PER_LAYER 6

/* The tensors of every layer (names in names[], arrays in st[]). */
static int64_t collect(lq_qlayer *const *layers, int n, stored *st, char (*names)[LQ_NAME_MAX + 32], lq_st_wtensor *t) {
    int64_t m = 0;
    for (int i = 0; i < n; i++) {
        const lq_qlayer *l = layers[i];
        const lq_qlayer_int *q = &l->q;
        snprintf(names[m], sizeof names[m], "%s.weight", l->name);
        if (q->w_bits == 0) {
            t[m] = (lq_st_wtensor){names[m], LQ_ST_F32, l->weight->ndim, {0}, q->w_f32};
            for (int d = 0; d < l->weight->ndim; d++) t[m].shape[d] = l->weight->ne[d];
        } else {
            t[m] = (lq_st_wtensor){names[m], packs(q->w_bits) ? LQ_ST_U8 : LQ_ST_I8, 2, {q->n, row_bytes(q->w_bits, q->k)},
                                   st[i].wcodes};
            m++;
            snprintf(names[m], sizeof names[m], "%s.weight_scale", l->name);
            t[m] = (lq_st_wtensor){names[m], LQ_ST_F32, 2, {q->n, q->n_groups}, q->w_scale};
            if (st[i].zp) {
                m++;
                snprintf(names[m], sizeof names[m], "%s.weight_zero_point", l->name);
                t[m] = (lq_st_wtensor){names[m], LQ_ST_I8, 2, {q->n, q->n_groups}, st[i].zp};
            }
        }
        m++;
        if (l->bias) {
            snprintf(names[m], sizeof names[m], "%s.bias", l->name);
            t[m++] = (lq_st_wtensor){names[m - 1], LQ_ST_F32, 1, {l->bias->ne[0]}, l->bias->data};
        }
        if (q->a_bits && !q->a_dynamic) {
            snprintf(names[m], sizeof names[m], "%s.input_scale", l->name);
            t[m++] = (lq_st_wtensor){names[m - 1], LQ_ST_F32, 1, {1}, &st[i].in_scale};
            snprintf(names[m], sizeof names[m], "%s.input_zero_point", l->name);
            t[m++] = (lq_st_wtensor){names[m - 1], LQ_ST_I32, 1, {1}, &st[i].in_zp};
        }
    }
    return m;
}

/* HDF5: the same tensors as datasets named as in the safetensors file, the metadata as root
 * attributes; written to a temporary name, fsync'd and renamed. */
static lq_status write_h5(const char *path, const lq_st_wtensor *t, int64_t m, const char *layers, const char *model,
                          lq_err *err) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) return LQ_ERR(err, LQ_ERR_IO, "%s: cannot create the HDF5 file", path);
    bool ok = true;
    for (int64_t i = 0; i < m && ok; i++) {
        hsize_t dims[LQ_ST_MAX_DIMS];
        for (int d = 0; d < t[i].ndim; d++) dims[d] = (hsize_t)t[i].shape[d];
        hid_t ty = t[i].dtype == LQ_ST_F32 ? H5T_NATIVE_FLOAT : t[i].dtype == LQ_ST_I32 ? H5T_NATIVE_INT32
                 : t[i].dtype == LQ_ST_I8  ? H5T_NATIVE_INT8  : H5T_NATIVE_UINT8;
        hid_t sp = H5Screate_simple(t[i].ndim, dims, NULL);
        hid_t ds = sp >= 0 ? H5Dcreate2(f, t[i].name, ty, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT) : -1;
        ok = ds >= 0 && H5Dwrite(ds, ty, H5S_ALL, H5S_ALL, H5P_DEFAULT, t[i].data) >= 0;
        if (ds >= 0) H5Dclose(ds);
        if (sp >= 0) H5Sclose(sp);
    }
    const char *keys[3] = {"format", "model", "layers"}, *vals[3] = {"loquat-qat-int 1", model, layers};
    for (int i = 0; i < 3 && ok; i++) {
        hid_t ty = H5Tcopy(H5T_C_S1);
        H5Tset_size(ty, strlen(vals[i]) + 1);
        hid_t sp = H5Screate(H5S_SCALAR);
        hid_t at = H5Acreate2(f, keys[i], ty, sp, H5P_DEFAULT, H5P_DEFAULT);
        ok = at >= 0 && H5Awrite(at, ty, vals[i]) >= 0;
        if (at >= 0) H5Aclose(at);
        H5Sclose(sp), H5Tclose(ty);
    }
    ok = H5Fclose(f) >= 0 && ok;
    int fd = ok ? open(tmp, O_RDONLY) : -1;
    ok = fd >= 0 && fsync(fd) == 0;
    if (fd >= 0) close(fd);
    if (!ok || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return LQ_ERR(err, LQ_ERR_IO, "%s: cannot write the HDF5 export (%s)", path, ok ? strerror(e) : "HDF5 write failed");
    }
    return LQ_OK;
}

lq_status lq_qat_export(const char *st_path, const char *h5_path, lq_qlayer *const *layers, int n, const char *model,
                        int64_t *bytes, lq_err *err) {
    stored *st = calloc((size_t)n, sizeof *st);
    char(*names)[LQ_NAME_MAX + 32] = calloc((size_t)n * MAX_PER_LAYER, sizeof *names);
    lq_st_wtensor *t = calloc((size_t)n * MAX_PER_LAYER, sizeof *t);
    lq_status s = st && names && t ? LQ_OK : LQ_ERR(err, LQ_ERR_OOM, "export: out of memory");
    for (int i = 0; i < n && s == LQ_OK; i++) s = pack_layer(layers[i], &st[i], err);
    char *lj = NULL;
    if (s == LQ_OK) {
        int64_t m = collect(layers, n, st, names, t);
        cJSON *js = layers_json(layers, n);
        lj = js ? cJSON_PrintUnformatted(js) : NULL;
        cJSON_Delete(js);
        if (!lj) s = LQ_ERR(err, LQ_ERR_OOM, "export: out of memory");
        lq_st_kv meta[3] = {{"format", "loquat-qat-int"}, {"version", "1"}, {"layers", lj}};
        if (s == LQ_OK) s = lq_st_write(st_path, t, m, meta, 3, err);
        if (s == LQ_OK && h5_path) s = write_h5(h5_path, t, m, lj, model, err);
        if (bytes) {
            *bytes = 0;
            for (int64_t i = 0; i < m; i++) {
                int64_t e = lq_st_dtype_size(t[i].dtype);
                for (int d = 0; d < t[i].ndim; d++) e *= t[i].shape[d];
                *bytes += e;
            }
        }
    }
    free(lj);
    for (int i = 0; st && i < n; i++) free(st[i].wcodes), free(st[i].zp);
    free(st), free(names), free(t);
    return s;
}

/* --- reading back --------------------------------------------------------------------------------- */

static const lq_st_tensor *need(lq_st_file *f, const char *path, const char *layer, const char *suffix, lq_st_dtype dt,
                                int64_t numel, lq_err *err) {
    char nm[LQ_NAME_MAX + 32];
    snprintf(nm, sizeof nm, "%s.%s", layer, suffix);
    const lq_st_tensor *t = lq_st_find(f, nm);
    if (!t) {
        LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s' is missing", path, nm);
        return NULL;
    }
    if (t->dtype != dt || t->numel != numel) {
        LQ_ERR(err, LQ_ERR_INPUT, "%s: tensor '%s' has the wrong dtype or size (%lld elements, want %lld)", path, nm,
               (long long)t->numel, (long long)numel);
        return NULL;
    }
    return t;
}

lq_status lq_qat_import(const char *path, lq_qlayer *const *layers, int n, lq_err *err) {
    lq_st_file *f;
    LQ_TRY(lq_st_open(&f, path, err));
    lq_status s = LQ_OK;
    const char *fmt = lq_st_metadata(f, "format");
    if (!fmt || strcmp(fmt, "loquat-qat-int"))
        s = LQ_ERR(err, LQ_ERR_INPUT, "%s: not a loquat integer export (metadata format is '%s')", path, fmt ? fmt : "none");
    for (int i = 0; i < n && s == LQ_OK; i++) {
        lq_qlayer *l = layers[i];
        lq_qlayer_int *q = &l->q; /* the layout (bits, groups, activation kind) comes from the model's specs */
        if (!q->ready) {
            s = LQ_ERR(err, LQ_ERR_STATE, "%s: layer %s was not converted", path, l->name);
            break;
        }
        const lq_st_tensor *t;
        if (q->w_bits == 0) {
            if (!(t = need(f, path, l->name, "weight", LQ_ST_F32, q->n * q->k, err))) { s = err->status; break; }
            memcpy(q->w_f32, t->data, (size_t)(q->n * q->k) * sizeof(float));
        } else {
            int64_t rb = row_bytes(q->w_bits, q->k);
            if (!(t = need(f, path, l->name, "weight", packs(q->w_bits) ? LQ_ST_U8 : LQ_ST_I8, q->n * rb, err))) {
                s = err->status;
                break;
            }
            const uint8_t *r = t->data;
            int per = packs(q->w_bits) ? 8 / q->w_bits : 1;
            for (int64_t nn = 0; nn < q->n; nn++)
                for (int64_t k = 0; k < q->k; k++) {
                    uint8_t byte = r[nn * rb + k / per];
                    if (per == 1) {
                        q->w_codes[nn * q->k + k] = (int8_t)byte;
                        continue;
                    }
                    int v = (byte >> ((k % per) * q->w_bits)) & ((1 << q->w_bits) - 1);
                    if (v >= 1 << (q->w_bits - 1)) v -= 1 << q->w_bits; /* sign-extend */
                    q->w_codes[nn * q->k + k] = (int8_t)v;
                }
            int64_t g = q->n * q->n_groups;
            if (!(t = need(f, path, l->name, "weight_scale", LQ_ST_F32, g, err))) { s = err->status; break; }
            memcpy(q->w_scale, t->data, (size_t)g * sizeof(float));
            char nm[LQ_NAME_MAX + 32];
            snprintf(nm, sizeof nm, "%s.weight_zero_point", l->name);
            if (lq_st_find(f, nm)) {
                if (!(t = need(f, path, l->name, "weight_zero_point", LQ_ST_I8, g, err))) { s = err->status; break; }
                for (int64_t i2 = 0; i2 < g; i2++) q->w_zp[i2] = ((const int8_t *)t->data)[i2];
            } else {
                memset(q->w_zp, 0, (size_t)g * sizeof(int32_t));
            }
        }
        if (l->bias) {
            if (!(t = need(f, path, l->name, "bias", LQ_ST_F32, l->bias->ne[0], err))) { s = err->status; break; }
            memcpy(l->bias->data, t->data, lq_nbytes(l->bias));
        }
        if (q->a_bits && !q->a_dynamic) {
            if (!(t = need(f, path, l->name, "input_scale", LQ_ST_F32, 1, err))) { s = err->status; break; }
            memcpy(&q->a_scale, t->data, sizeof(float));
            if (!(t = need(f, path, l->name, "input_zero_point", LQ_ST_I32, 1, err))) { s = err->status; break; }
            memcpy(&q->a_zp, t->data, sizeof(int32_t));
            if (!(q->a_scale > 0.0f) || q->a_zp < q->a_qmin || q->a_zp > q->a_qmax)
                s = LQ_ERR(err, LQ_ERR_INPUT, "%s: layer %s: input scale %g / zero point %d are out of range", path,
                           l->name, (double)q->a_scale, (int)q->a_zp);
        }
    }
    lq_st_close(f);
    return s;
}
