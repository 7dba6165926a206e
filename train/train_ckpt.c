/* train/train_ckpt.c: training checkpoints in HDF5 (adapters, AdamW state, data position, config), atomic. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/hash.h"
#include "train/trainer_impl.h"

/* FNV-1a 64 over everything a checkpoint holds, in a fixed order (a bit flip anywhere shows). */
static uint64_t ckpt_checksum(const lq_ckpt *c) {
    lq_fnv f = LQ_FNV_INIT;
    int64_t sc[] = {LQ_CKPT_FORMAT, c->step, c->epoch, c->row, c->micro, c->adam_t, c->n_skipped, c->numel, c->n_mods};
    for (size_t i = 0; i < sizeof sc / sizeof *sc; i++) lq_fnv_u64(&f, (uint64_t)sc[i]);
    lq_fnv_add(&f, &c->seed, sizeof c->seed);
    lq_fnv_add(&f, &c->eval_before, sizeof c->eval_before);
    lq_fnv_add(&f, c->params, (size_t)c->numel * sizeof(float));
    lq_fnv_add(&f, c->m, (size_t)c->numel * sizeof(float));
    lq_fnv_add(&f, c->v, (size_t)c->numel * sizeof(float));
    lq_fnv_add(&f, c->mods, (size_t)c->n_mods * LQ_NAME_MAX);
    lq_fnv_add(&f, c->config, strlen(c->config) + 1);
    return f.h;
}

lq_status lq_mkdirs(const char *dir, lq_err *err) {
    char buf[4096];
    if (!dir || !*dir) return LQ_OK;
    if ((size_t)snprintf(buf, sizeof buf, "%s", dir) >= sizeof buf) return LQ_ERR(err, LQ_ERR_INPUT, "%s: path too long", dir);
    for (char *p = buf + 1;; p++) {
        bool end = *p == 0;
        if (*p == '/' || end) {
            *p = 0;
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return LQ_ERR(err, LQ_ERR_IO, "%s: cannot create folder: %s", buf, strerror(errno));
            if (end) break;
            *p = '/';
        }
    }
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) return LQ_ERR(err, LQ_ERR_INPUT, "%s: not a folder", dir);
    return LQ_OK;
}

lq_status lq_fsync_dir(const char *dir, lq_err *err) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return LQ_ERR(err, LQ_ERR_IO, "%s: cannot open folder to sync: %s", dir, strerror(errno));
    int rc = fsync(fd);
    close(fd);
    if (rc != 0 && errno != EINVAL) return LQ_ERR(err, LQ_ERR_IO, "%s: fsync: %s", dir, strerror(errno));
    return LQ_OK;
}

/* --- writing ---------------------------------------------------------------------------------- */

static bool attr_write(hid_t loc, const char *name, hid_t mtype, hid_t ftype, const void *v) {
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = sp >= 0 ? H5Acreate2(loc, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT) : -1;
    bool ok = a >= 0 && H5Awrite(a, mtype, v) >= 0;
    if (a >= 0) H5Aclose(a);
    if (sp >= 0) H5Sclose(sp);
    return ok;
}

static bool attr_i64(hid_t loc, const char *name, int64_t v) { return attr_write(loc, name, H5T_NATIVE_INT64, H5T_STD_I64LE, &v); }

static bool attr_str(hid_t loc, const char *name, const char *s) {
    hid_t t = H5Tcopy(H5T_C_S1);
    bool ok = t >= 0 && H5Tset_size(t, strlen(s) + 1) >= 0 && attr_write(loc, name, t, t, s);
    if (t >= 0) H5Tclose(t);
    return ok;
}

static bool write_1d(hid_t f, const char *name, hid_t mtype, hid_t ftype, hsize_t n, const void *data) {
    hid_t sp = H5Screate_simple(1, &n, NULL);
    hid_t ds = sp >= 0 ? H5Dcreate2(f, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT) : -1;
    bool ok = ds >= 0 && (n == 0 || H5Dwrite(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0);
    if (ds >= 0) H5Dclose(ds);
    if (sp >= 0) H5Sclose(sp);
    return ok;
}

static bool write_all(hid_t f, const lq_ckpt *c) {
    hid_t st = H5Tcopy(H5T_C_S1);
    bool ok = st >= 0 && H5Tset_size(st, LQ_NAME_MAX) >= 0;
    ok = ok && write_1d(f, "params", H5T_NATIVE_FLOAT, H5T_IEEE_F32LE, (hsize_t)c->numel, c->params);
    ok = ok && write_1d(f, "adam_m", H5T_NATIVE_FLOAT, H5T_IEEE_F32LE, (hsize_t)c->numel, c->m);
    ok = ok && write_1d(f, "adam_v", H5T_NATIVE_FLOAT, H5T_IEEE_F32LE, (hsize_t)c->numel, c->v);
    ok = ok && write_1d(f, "modules", st, st, (hsize_t)c->n_mods, c->mods);
    if (st >= 0) H5Tclose(st);
    ok = ok && attr_i64(f, "format", LQ_CKPT_FORMAT) && attr_i64(f, "step", c->step) && attr_i64(f, "epoch", c->epoch) &&
         attr_i64(f, "row", c->row) && attr_i64(f, "micro", c->micro) && attr_i64(f, "adam_t", c->adam_t) &&
         attr_i64(f, "n_skipped", c->n_skipped) && attr_i64(f, "numel", c->numel);
    uint64_t sum = ckpt_checksum(c);
    ok = ok && attr_write(f, "seed", H5T_NATIVE_UINT64, H5T_STD_U64LE, &c->seed);
    ok = ok && attr_write(f, "eval_before", H5T_NATIVE_DOUBLE, H5T_IEEE_F64LE, &c->eval_before);
    ok = ok && attr_str(f, "config", c->config);
    ok = ok && attr_write(f, "checksum", H5T_NATIVE_UINT64, H5T_STD_U64LE, &sum);
    return ok;
}

lq_status lq_ckpt_save(const char *path, const lq_ckpt *c, lq_err *err) {
    char dir[4096], tmp[4200];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    const char *base = slash ? slash + 1 : path;
    if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    if ((size_t)snprintf(tmp, sizeof tmp, "%s/.%s.%ld.tmp", dir, base, (long)getpid()) >= sizeof tmp)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: path too long", path);
    /* The file is built in memory (core driver, no backing store) and written with plain write():
     * a full disk or a read-only folder then fails here with errno, and no half-written HDF5 file
     * stays open in the library (its exit-time close would flush into the full disk again). */
    H5E_auto2_t old_fn;
    void *old_data;
    H5Eget_auto2(H5E_DEFAULT, &old_fn, &old_data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    bool ok = fapl >= 0 && H5Pset_fapl_core(fapl, (size_t)1 << 20, 0) >= 0;
    hid_t f = ok ? H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl) : -1;
    ok = f >= 0 && write_all(f, c) && H5Fflush(f, H5F_SCOPE_GLOBAL) >= 0;
    ssize_t size = ok ? H5Fget_file_image(f, NULL, 0) : -1;
    void *img = size > 0 ? malloc((size_t)size) : NULL;
    ok = img && H5Fget_file_image(f, img, (size_t)size) == size;
    if (f >= 0) ok = H5Fclose(f) >= 0 && ok;
    if (fapl >= 0) H5Pclose(fapl);
    H5Eset_auto2(H5E_DEFAULT, old_fn, old_data);
    if (!ok) {
        free(img);
        return LQ_ERR(err, LQ_ERR_IO, "%s: cannot build the checkpoint in memory (HDF5 error or out of memory)", path);
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const char *what = "cannot create";
    if (fd >= 0) {
        what = "cannot write";
        size_t done = 0;
        while (done < (size_t)size) {
            ssize_t w = write(fd, (const char *)img + done, (size_t)size - done);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) {
                if (w == 0) errno = ENOSPC;
                break;
            }
            done += (size_t)w;
        }
        if (done == (size_t)size) what = fsync(fd) != 0 ? "cannot sync" : NULL;
    }
    int e = errno;
    if (fd >= 0 && close(fd) != 0 && !what) what = "cannot close", e = errno;
    free(img);
    if (!what && rename(tmp, path) != 0) what = "cannot rename into place", e = errno;
    if (what) {
        if (fd >= 0) unlink(tmp);
        return LQ_ERR(err, LQ_ERR_IO, "%s: %s the checkpoint (as %s): %s; the previous checkpoints are kept", path, what,
                      tmp, strerror(e));
    }
    return lq_fsync_dir(dir, err);
}

/* --- reading (hostile file) -------------------------------------------------------------------- */

static bool attr_read(hid_t f, const char *name, hid_t mtype, H5T_class_t cls, size_t size, void *v) {
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    if (a < 0) return false;
    hid_t ty = H5Aget_type(a), sp = H5Aget_space(a);
    bool ok = ty >= 0 && sp >= 0 && H5Tget_class(ty) == cls && H5Tget_size(ty) == size &&
              H5Sget_simple_extent_type(sp) == H5S_SCALAR && H5Aread(a, mtype, v) >= 0;
    if (sp >= 0) H5Sclose(sp);
    if (ty >= 0) H5Tclose(ty);
    H5Aclose(a);
    return ok;
}

static bool attr_i64_read(hid_t f, const char *name, int64_t *v) { return attr_read(f, name, H5T_NATIVE_INT64, H5T_INTEGER, 8, v); }

static char *attr_str_read(hid_t f, const char *name) {
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    if (a < 0) return NULL;
    char *s = NULL;
    hid_t ty = H5Aget_type(a);
    size_t n = ty >= 0 ? H5Tget_size(ty) : 0;
    if (ty >= 0 && H5Tget_class(ty) == H5T_STRING && !H5Tis_variable_str(ty) && n >= 1 && n < ((size_t)1 << 26) &&
        (s = calloc(n + 1, 1)) != NULL) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, n);
        if (H5Aread(a, mt, s) < 0) {
            free(s);
            s = NULL;
        }
        H5Tclose(mt);
    }
    if (ty >= 0) H5Tclose(ty);
    H5Aclose(a);
    return s;
}

/* Reads a 1-D dataset of exactly n elements of the class / size given. */
static bool read_1d(hid_t f, const char *name, hid_t mtype, H5T_class_t cls, size_t esize, hsize_t n, void *out) {
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
    if (ds < 0) return false;
    hid_t sp = H5Dget_space(ds), ty = H5Dget_type(ds);
    hsize_t got = 0;
    bool ok = sp >= 0 && ty >= 0 && H5Tget_class(ty) == cls && H5Tget_size(ty) == esize &&
              H5Sget_simple_extent_ndims(sp) == 1 && H5Sget_simple_extent_dims(sp, &got, NULL) == 1 && got == n;
    if (ok && n) ok = H5Dread(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) >= 0;
    if (ty >= 0) H5Tclose(ty);
    if (sp >= 0) H5Sclose(sp);
    H5Dclose(ds);
    return ok;
}

void lq_ckpt_free(lq_ckpt *c) {
    if (c && c->owned) {
        free(c->params);
        free(c->m);
        free(c->v);
        free(c->mods);
        free(c->config);
    }
    if (c) memset(c, 0, sizeof *c);
}

/* file_size bounds what the attributes may claim before anything is allocated: the three arrays
 * are stored contiguously and uncompressed, so they cannot be larger than the file. */
static const char *load_body(hid_t f, lq_ckpt *c, int64_t file_size) {
    int64_t fmt = 0, n_mods = 0;
    if (!attr_i64_read(f, "format", &fmt)) return "no format attribute (not a loquat checkpoint)";
    if (fmt != LQ_CKPT_FORMAT) return "unknown format version";
    if (!attr_i64_read(f, "step", &c->step) || !attr_i64_read(f, "epoch", &c->epoch) || !attr_i64_read(f, "row", &c->row) ||
        !attr_i64_read(f, "micro", &c->micro) || !attr_i64_read(f, "adam_t", &c->adam_t) ||
        !attr_i64_read(f, "n_skipped", &c->n_skipped) || !attr_i64_read(f, "numel", &c->numel))
        return "missing or malformed step / position attributes";
    if (!attr_read(f, "seed", H5T_NATIVE_UINT64, H5T_INTEGER, 8, &c->seed) ||
        !attr_read(f, "eval_before", H5T_NATIVE_DOUBLE, H5T_FLOAT, 8, &c->eval_before))
        return "missing seed or eval_before attribute";
    if (c->step < 0 || c->epoch < 0 || c->row < 0 || c->micro < 0 || c->adam_t < 0 || c->adam_t > c->step ||
        c->n_skipped < 0 || c->n_skipped > c->step || c->numel < 0 || c->numel > LQ_CKPT_MAX_NUMEL)
        return "a step, position or size attribute is out of range";
    if (c->numel > file_size / 12) return "numel claims more values than the file holds";
    uint64_t sum = 0;
    if (!attr_read(f, "checksum", H5T_NATIVE_UINT64, H5T_INTEGER, 8, &sum)) return "no checksum attribute";
    if (!(c->config = attr_str_read(f, "config"))) return "no config attribute";
    /* the modules' count comes from the dataset's extent, bounded before allocating */
    hid_t ds = H5Dopen2(f, "modules", H5P_DEFAULT);
    if (ds < 0) return "no modules dataset";
    hid_t sp = H5Dget_space(ds);
    hsize_t nm = 0;
    bool ok = sp >= 0 && H5Sget_simple_extent_ndims(sp) == 1 && H5Sget_simple_extent_dims(sp, &nm, NULL) == 1 &&
              nm <= LQ_CKPT_MAX_MODS;
    if (sp >= 0) H5Sclose(sp);
    H5Dclose(ds);
    if (!ok) return "modules dataset is not a list of at most 65536 names";
    n_mods = (int64_t)nm;
    c->n_mods = (int)n_mods;
    size_t nb = (size_t)(c->numel ? c->numel : 1) * sizeof(float);
    c->params = malloc(nb);
    c->m = malloc(nb);
    c->v = malloc(nb);
    c->mods = calloc((size_t)(n_mods ? n_mods : 1), LQ_NAME_MAX);
    if (!c->params || !c->m || !c->v || !c->mods) return "out of memory";
    hid_t st = H5Tcopy(H5T_C_S1);
    H5Tset_size(st, LQ_NAME_MAX);
    ok = read_1d(f, "modules", st, H5T_STRING, LQ_NAME_MAX, nm, c->mods);
    H5Tclose(st);
    if (!ok) return "modules dataset has the wrong type";
    for (int i = 0; i < c->n_mods; i++) c->mods[i][LQ_NAME_MAX - 1] = 0;
    hsize_t n = (hsize_t)c->numel;
    if (!read_1d(f, "params", H5T_NATIVE_FLOAT, H5T_FLOAT, 4, n, c->params) ||
        !read_1d(f, "adam_m", H5T_NATIVE_FLOAT, H5T_FLOAT, 4, n, c->m) ||
        !read_1d(f, "adam_v", H5T_NATIVE_FLOAT, H5T_FLOAT, 4, n, c->v))
        return "params / adam_m / adam_v missing, of the wrong type, or not numel long";
    if (ckpt_checksum(c) != sum) return "checksum mismatch (the file is corrupt)";
    return NULL;
}

lq_status lq_ckpt_load(const char *path, lq_ckpt *c, lq_err *err) {
    memset(c, 0, sizeof *c);
    c->owned = true;
    struct stat sb;
    if (stat(path, &sb) != 0) return LQ_ERR(err, LQ_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    H5E_auto2_t old_fn;
    void *old_data;
    H5Eget_auto2(H5E_DEFAULT, &old_fn, &old_data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* a corrupt file is reported through err, not printed */
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    const char *why = f < 0 ? "not a readable HDF5 file (partial or corrupt)" : load_body(f, c, (int64_t)sb.st_size);
    if (f >= 0) H5Fclose(f);
    H5Eset_auto2(H5E_DEFAULT, old_fn, old_data);
    if (why) {
        lq_ckpt_free(c);
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: %s", path, why);
    }
    return LQ_OK;
}

/* --- listing and pruning ----------------------------------------------------------------------- */

static bool parse_name(const char *name, int64_t *step) {
    const char *p = name;
    if (strncmp(p, "checkpoint-", 11) != 0) return false;
    p += 11;
    if (*p < '0' || *p > '9') return false;
    int64_t v = 0;
    while (*p >= '0' && *p <= '9') {
        if (v > (INT64_MAX - 9) / 10) return false;
        v = v * 10 + (*p++ - '0');
    }
    if (strcmp(p, ".h5") != 0) return false;
    *step = v;
    return true;
}

void lq_ckpt_list_free(char **paths, int64_t *steps, int n) {
    for (int i = 0; i < n; i++) free(paths[i]);
    free(paths);
    free(steps);
}

lq_status lq_ckpt_list(const char *dir, char ***paths, int64_t **steps, int *n, lq_err *err) {
    *paths = NULL;
    *steps = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) return LQ_OK;
        return LQ_ERR(err, LQ_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
    }
    int cap = 0;
    struct dirent *e;
    lq_status st = LQ_OK;
    while ((e = readdir(d)) != NULL) {
        int64_t s;
        if (!parse_name(e->d_name, &s)) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            char **p2 = realloc(*paths, (size_t)cap * sizeof *p2);
            if (p2) *paths = p2;
            int64_t *s2 = realloc(*steps, (size_t)cap * sizeof *s2);
            if (s2) *steps = s2;
            if (!p2 || !s2) {
                st = LQ_ERR(err, LQ_ERR_OOM, "%s: checkpoint list", dir);
                break;
            }
        }
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        char *p = malloc(len);
        if (!p) {
            st = LQ_ERR(err, LQ_ERR_OOM, "%s: checkpoint list", dir);
            break;
        }
        snprintf(p, len, "%s/%s", dir, e->d_name);
        (*paths)[*n] = p;
        (*steps)[*n] = s;
        (*n)++;
    }
    closedir(d);
    /* insertion sort by step: a handful of files */
    for (int i = 1; i < *n; i++)
        for (int j = i; j > 0 && (*steps)[j - 1] > (*steps)[j]; j--) {
            int64_t ts = (*steps)[j];
            (*steps)[j] = (*steps)[j - 1];
            (*steps)[j - 1] = ts;
            char *tp = (*paths)[j];
            (*paths)[j] = (*paths)[j - 1];
            (*paths)[j - 1] = tp;
        }
    if (st != LQ_OK) {
        lq_ckpt_list_free(*paths, *steps, *n);
        *paths = NULL;
        *steps = NULL;
        *n = 0;
    }
    return st;
}

lq_status lq_ckpt_prune(const char *dir, int64_t keep, lq_err *err) {
    if (keep <= 0) return LQ_OK;
    char **paths;
    int64_t *steps;
    int n;
    LQ_TRY(lq_ckpt_list(dir, &paths, &steps, &n, err));
    lq_status st = LQ_OK;
    for (int i = 0; i + keep < n; i++)
        if (unlink(paths[i]) != 0 && st == LQ_OK)
            st = LQ_ERR(err, LQ_ERR_IO, "%s: cannot delete an old checkpoint: %s", paths[i], strerror(errno));
    lq_ckpt_list_free(paths, steps, n);
    if (st == LQ_OK) st = lq_fsync_dir(dir, err);
    return st;
}
