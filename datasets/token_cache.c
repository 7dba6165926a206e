/* datasets/token_cache.c: an HDF5 cache of tokenized documents keyed by tokenizer, data and loader. */
#include <dirent.h>
#include <errno.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/hash.h"
#include "datasets/datasets.h"

#define KEY_MAX 256
static const char PROBE[] = "Hello, world! 12345 <|im_start|>user\n  tabs\tand ünïcödé  <|endoftext|>";

static lq_status tok_fingerprint(const lq_tokenizer *tok, uint64_t *out, lq_err *err) {
    lq_fnv f = LQ_FNV_INIT;
    int32_t n = lq_tokenizer_n_ids(tok);
    lq_fnv_u64(&f, (uint64_t)n);
    for (int32_t i = 0; i < n; i++) {
        const char *s = lq_tokenizer_id_to_token(tok, i);
        lq_fnv_u64(&f, s ? strlen(s) + 1 : 0);
        if (s) lq_fnv_add(&f, s, strlen(s));
        lq_fnv_u64(&f, lq_tokenizer_is_special(tok, i));
    }
    for (int sp = 0; sp < 2; sp++) {
        int32_t *ids = NULL;
        size_t k = 0;
        LQ_TRY(lq_tokenizer_encode(tok, PROBE, sizeof PROBE - 1, sp, &ids, &k, err));
        lq_fnv_u64(&f, k);
        lq_fnv_add(&f, ids, k * sizeof *ids);
        free(ids);
    }
    *out = f.h;
    return LQ_OK;
}

static lq_status hash_file(lq_fnv *f, const char *path, lq_err *err) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return LQ_ERR(err, LQ_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    unsigned char buf[1 << 15];
    size_t n, total = 0;
    while ((n = fread(buf, 1, sizeof buf, fp)) > 0) {
        lq_fnv_add(f, buf, n);
        total += n;
    }
    bool bad = ferror(fp);
    fclose(fp);
    if (bad) return LQ_ERR(err, LQ_ERR_IO, "%s: read failed", path);
    lq_fnv_u64(f, total);
    return LQ_OK;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The .txt files of a folder in the loader's order, names and bytes. */
static lq_status hash_dir(lq_fnv *f, const char *path, lq_err *err) {
    DIR *dir = opendir(path);
    if (!dir) return LQ_ERR(err, LQ_ERR_INPUT, "%s: cannot open folder: %s", path, strerror(errno));
    char **names = NULL;
    size_t n = 0, cap = 0;
    lq_status st = LQ_OK;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        size_t l = strlen(e->d_name);
        if (e->d_name[0] == '.' || l < 4 || strcmp(e->d_name + l - 4, ".txt") != 0) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            char **a = realloc(names, cap * sizeof *a);
            if (!a) {
                st = LQ_ERR(err, LQ_ERR_OOM, "%s: file list", path);
                break;
            }
            names = a;
        }
        if (!(names[n] = strdup(e->d_name))) {
            st = LQ_ERR(err, LQ_ERR_OOM, "%s: file list", path);
            break;
        }
        n++;
    }
    closedir(dir);
    if (st == LQ_OK) qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n && st == LQ_OK; i++) {
        char full[4096];
        if ((size_t)snprintf(full, sizeof full, "%s/%s", path, names[i]) >= sizeof full) {
            st = LQ_ERR(err, LQ_ERR_INPUT, "%s/%s: path too long", path, names[i]);
            break;
        }
        lq_fnv_add(f, names[i], strlen(names[i]) + 1);
        st = hash_file(f, full, err);
    }
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    return st;
}

static lq_status make_key(const lq_tokenizer *tok, const char *path, const lq_data_opts *o, char *key, lq_err *err) {
    uint64_t th;
    LQ_TRY(tok_fingerprint(tok, &th, err));
    lq_fnv f = LQ_FNV_INIT;
    struct stat sb;
    if (stat(path, &sb) != 0) return LQ_ERR(err, LQ_ERR_INPUT, "%s: %s", path, strerror(errno));
    if (S_ISDIR(sb.st_mode) && o->format == LQ_DATA_TEXT) LQ_TRY(hash_dir(&f, path, err));
    else LQ_TRY(hash_file(&f, path, err));
    lq_fnv t = LQ_FNV_INIT;
    if (o->chat_template) lq_fnv_add(&t, o->chat_template, strlen(o->chat_template) + 1);
    snprintf(key, KEY_MAX, "loquat-token-cache v1 format=%s tok=%016llx data=%016llx eos=%d special=%d tmpl=%016llx",
             lq_data_format_name(o->format), (unsigned long long)th, (unsigned long long)f.h, (int)o->eos_id,
             (int)o->add_special, (unsigned long long)t.h);
    return LQ_OK;
}

/* Reads a 1-D dataset of the given memory type into a malloc'd array. */
static bool read_1d(hid_t file, const char *name, hid_t mtype, size_t esize, void **out, hsize_t *len) {
    *out = NULL;
    hid_t ds = H5Dopen2(file, name, H5P_DEFAULT);
    if (ds < 0) return false;
    hid_t sp = H5Dget_space(ds);
    bool ok = sp >= 0 && H5Sget_simple_extent_ndims(sp) == 1;
    hsize_t n = 0;
    if (ok) ok = H5Sget_simple_extent_dims(sp, &n, NULL) == 1 && n <= ((hsize_t)1 << 40) / esize;
    if (ok) ok = (*out = malloc(n ? n * esize : 1)) != NULL;
    if (ok && n) ok = H5Dread(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, *out) >= 0;
    if (sp >= 0) H5Sclose(sp);
    H5Dclose(ds);
    if (!ok) {
        free(*out);
        *out = NULL;
    }
    *len = n;
    return ok;
}

/* Loads the cache into docs when it is valid for key; otherwise says why in note. */
static bool cache_load(const char *cpath, const char *key, const lq_tokenizer *tok, lq_docs *docs, char *note,
                       lq_err *err, lq_status *fatal) {
    *fatal = LQ_OK;
    if (access(cpath, F_OK) != 0) {
        snprintf(note, LQ_ERR_MSG_MAX, "%s: no cache yet", cpath);
        return false;
    }
    hid_t f = H5Fopen(cpath, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        snprintf(note, LQ_ERR_MSG_MAX, "%s: not a readable HDF5 file, rebuilding", cpath);
        return false;
    }
    bool ok = false;
    const char *why = "bad key attribute";
    char got[KEY_MAX + 1] = {0};
    void *ids = NULL, *labels = NULL, *offs = NULL;
    hsize_t ni = 0, nl = 0, no = 0;
    hid_t a = H5Aopen(f, "key", H5P_DEFAULT);
    if (a >= 0) {
        hid_t ty = H5Aget_type(a);
        if (ty >= 0 && H5Tget_class(ty) == H5T_STRING && !H5Tis_variable_str(ty) && H5Tget_size(ty) <= KEY_MAX) {
            hid_t mt = H5Tcopy(H5T_C_S1);
            H5Tset_size(mt, H5Tget_size(ty));
            if (H5Aread(a, mt, got) >= 0) why = NULL;
            H5Tclose(mt);
        }
        if (ty >= 0) H5Tclose(ty);
        H5Aclose(a);
    }
    if (!why && strncmp(got, key, KEY_MAX) != 0) why = "made for another tokenizer, data or loader";
    if (!why && !(read_1d(f, "ids", H5T_NATIVE_INT32, 4, &ids, &ni) &&
                  read_1d(f, "labels", H5T_NATIVE_INT32, 4, &labels, &nl) &&
                  read_1d(f, "offsets", H5T_NATIVE_INT64, 8, &offs, &no)))
        why = "missing or unreadable arrays";
    if (!why && (ni != nl || no < 1)) why = "array lengths disagree";
    const int64_t *o = offs;
    const int32_t *id = ids, *lb = labels;
    if (!why) {
        if (o[0] != 0 || (hsize_t)o[no - 1] != ni) why = "offsets do not span the ids";
        for (hsize_t i = 1; i < no && !why; i++)
            if (o[i] < o[i - 1]) why = "offsets do not rise";
        int32_t nid = lq_tokenizer_n_ids(tok);
        for (hsize_t i = 0; i < ni && !why; i++)
            if (id[i] < 0 || id[i] >= nid || (lb[i] != id[i] && lb[i] != LQ_IGNORE_INDEX)) why = "bad ids or labels";
    }
    H5Fclose(f);
    if (!why) {
        size_t nd = (size_t)(no - 1), base = docs->n;
        ok = true;
        lq_doc *arr = realloc(docs->doc, (docs->n + nd + 1) * sizeof *arr);
        if (!arr) ok = false;
        else {
            docs->doc = arr;
            docs->cap = docs->n + nd + 1;
        }
        for (size_t d = 0; d < nd && ok; d++) {
            size_t len = (size_t)(o[d + 1] - o[d]);
            lq_doc x = {malloc(len ? len * 4 : 4), malloc(len ? len * 4 : 4), len};
            if (!x.ids || !x.labels) {
                free(x.ids);
                free(x.labels);
                ok = false;
                break;
            }
            memcpy(x.ids, id + o[d], len * 4);
            memcpy(x.labels, lb + o[d], len * 4);
            docs->doc[docs->n++] = x;
        }
        if (!ok) {
            for (size_t d = base; d < docs->n; d++) {
                free(docs->doc[d].ids);
                free(docs->doc[d].labels);
            }
            docs->n = base;
            *fatal = LQ_ERR(err, LQ_ERR_OOM, "%s: %llu cached tokens", cpath, (unsigned long long)ni);
        }
    } else {
        snprintf(note, LQ_ERR_MSG_MAX, "%s: %s, rebuilding", cpath, why);
    }
    free(ids);
    free(labels);
    free(offs);
    return ok;
}

static bool write_1d(hid_t f, const char *name, hid_t ftype, hid_t mtype, const void *data, hsize_t n) {
    hid_t sp = H5Screate_simple(1, &n, NULL);
    if (sp < 0) return false;
    hid_t ds = H5Dcreate2(f, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    bool ok = ds >= 0 && (n == 0 || H5Dwrite(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0);
    if (ds >= 0) ok = H5Dclose(ds) >= 0 && ok;
    H5Sclose(sp);
    return ok;
}

static lq_status cache_write(const char *cpath, const char *key, const lq_docs *docs, size_t first, lq_err *err) {
    size_t nd = docs->n - first, total = 0;
    for (size_t d = first; d < docs->n; d++) total += docs->doc[d].n;
    int32_t *ids = malloc(total ? total * 4 : 4), *lb = malloc(total ? total * 4 : 4);
    int64_t *offs = malloc((nd + 1) * 8);
    if (!ids || !lb || !offs) {
        free(ids);
        free(lb);
        free(offs);
        return LQ_ERR(err, LQ_ERR_OOM, "%s: %zu tokens", cpath, total);
    }
    size_t t = 0;
    offs[0] = 0;
    for (size_t d = 0; d < nd; d++) {
        const lq_doc *x = &docs->doc[first + d];
        memcpy(ids + t, x->ids, x->n * 4);
        memcpy(lb + t, x->labels, x->n * 4);
        t += x->n;
        offs[d + 1] = (int64_t)t;
    }
    char tmp[4200];
    int tl = snprintf(tmp, sizeof tmp, "%s.%ld.tmp", cpath, (long)getpid());
    lq_status st = LQ_OK;
    if (tl < 0 || (size_t)tl >= sizeof tmp) st = LQ_ERR(err, LQ_ERR_ARG, "%s: cache path too long", cpath);
    hid_t f = st == LQ_OK ? H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT) : -1;
    if (st == LQ_OK && f < 0) st = LQ_ERR(err, LQ_ERR_IO, "%s: cannot create the cache file", tmp);
    if (st == LQ_OK) {
        bool ok = write_1d(f, "ids", H5T_STD_I32LE, H5T_NATIVE_INT32, ids, total) &&
                  write_1d(f, "labels", H5T_STD_I32LE, H5T_NATIVE_INT32, lb, total) &&
                  write_1d(f, "offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, offs, nd + 1);
        hid_t ty = H5Tcopy(H5T_C_S1), sp = H5Screate(H5S_SCALAR);
        ok = ok && ty >= 0 && sp >= 0 && H5Tset_size(ty, strlen(key) + 1) >= 0;
        hid_t a = ok ? H5Acreate2(f, "key", ty, sp, H5P_DEFAULT, H5P_DEFAULT) : -1;
        ok = ok && a >= 0 && H5Awrite(a, ty, key) >= 0;
        if (a >= 0) H5Aclose(a);
        if (ty >= 0) H5Tclose(ty);
        if (sp >= 0) H5Sclose(sp);
        ok = H5Fclose(f) >= 0 && ok;
        if (!ok) st = LQ_ERR(err, LQ_ERR_IO, "%s: writing the cache failed", tmp);
        else if (rename(tmp, cpath) != 0)
            st = LQ_ERR(err, LQ_ERR_IO, "%s: cannot rename to %s: %s", tmp, cpath, strerror(errno));
        if (st != LQ_OK) remove(tmp);
    }
    free(ids);
    free(lb);
    free(offs);
    return st;
}

lq_status lq_data_load_cached(const lq_tokenizer *tok, const char *path, const lq_data_opts *opts,
                              const char *cache_path, lq_docs *docs, bool *hit, lq_err *err) {
    LQ_CHECK(err, tok && path && opts && cache_path && docs, LQ_ERR_ARG, "arguments are required");
    if (hit) *hit = false;
    char key[KEY_MAX];
    LQ_TRY(make_key(tok, path, opts, key, err));
    char note[LQ_ERR_MSG_MAX] = {0};
    H5E_auto2_t old_fn = NULL;
    void *old_data = NULL;
    H5Eget_auto2(H5E_DEFAULT, &old_fn, &old_data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* a bad cache is reported in the note, not printed */
    lq_status fatal = LQ_OK;
    bool ok = cache_load(cache_path, key, tok, docs, note, err, &fatal);
    lq_status st = fatal;
    if (!ok && st == LQ_OK) {
        size_t first = docs->n;
        st = lq_data_load(tok, path, opts, docs, err);
        if (st == LQ_OK) st = cache_write(cache_path, key, docs, first, err);
        if (st != LQ_OK) {
            for (size_t d = first; d < docs->n; d++) {
                free(docs->doc[d].ids);
                free(docs->doc[d].labels);
            }
            docs->n = first;
        }
    }
    H5Eset_auto2(H5E_DEFAULT, old_fn, old_data);
    if (st != LQ_OK) return st;
    if (hit) *hit = ok;
    if (opts->stats) {
        if (ok) opts->stats->cache_hits++;
        else opts->stats->cache_misses++;
        snprintf(opts->stats->cache_note, sizeof opts->stats->cache_note, "%s", ok ? "" : note);
    }
    return LQ_OK;
}
