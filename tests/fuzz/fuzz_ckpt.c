/* tests/fuzz/fuzz_ckpt.c: libFuzzer target for the checkpoint reader's validation
 * (train/train_ckpt.c, lq_ckpt_load). HDF5 itself is trusted (mutating its on-disk bytes would
 * fuzz libhdf5, not us), so the input is structure: the first bytes fill a checkpoint that
 * lq_ckpt_save writes (any values: negative steps, numel 0..255, up to 7 modules), then each
 * further 12-byte record edits the file through HDF5: delete an attribute or dataset, or rewrite
 * it with another type, shape, size or value. lq_ckpt_load must refuse every inconsistent file
 * with LQ_ERR_INPUT naming it, and what it accepts must be usable. */
#include <hdf5.h>
#include <math.h>

#include "train/trainer_impl.h"
#include "tests/fuzz/fuzz_util.h"

static const char *const attrs[] = {"format", "step",  "epoch",       "row",    "micro",   "adam_t",
                                    "n_skipped", "numel", "seed", "eval_before", "config", "checksum"};
static const char *const dsets[] = {"params", "adam_m", "adam_v", "modules"};
#define N_ATTRS ((int)(sizeof attrs / sizeof *attrs))
#define N_DSETS ((int)(sizeof dsets / sizeof *dsets))
#define MAX_EDITS 8

static volatile float sink;

/* Writes a scalar or 1-D attribute of file type ft holding the bytes v (converted from mt). */
static void put_attr(hid_t f, const char *name, hid_t ft, hid_t mt, int rank, hsize_t len, const void *v) {
    if (H5Aexists(f, name) > 0) H5Adelete(f, name);
    hid_t sp = rank ? H5Screate_simple(1, &len, NULL) : H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, name, ft, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) {
        H5Awrite(a, mt, v);
        H5Aclose(a);
    }
    H5Sclose(sp);
}

/* One edit: rec[0] picks the kind, rec[1] the target, rec[2..3] a size, rec[4..11] a value. */
static void edit(hid_t f, const uint8_t rec[12]) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)rec[4 + i] << (8 * i);
    unsigned size = rec[2] | (unsigned)rec[3] << 8;
    const char *a = attrs[rec[1] % N_ATTRS], *d = dsets[rec[1] % N_DSETS];
    switch (rec[0] % 10) {
    case 0: H5Adelete(f, a); break;
    case 1: put_attr(f, a, H5T_STD_I64LE, H5T_NATIVE_INT64, 0, 1, &v); break;
    case 2: put_attr(f, a, H5T_STD_I32LE, H5T_NATIVE_INT64, 0, 1, &v); break;
    case 3: {
        double x;
        memcpy(&x, &v, sizeof x);
        put_attr(f, a, rec[2] & 1 ? H5T_IEEE_F32LE : H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, 0, 1, &x);
        break;
    }
    case 4: {
        int64_t two[2] = {(int64_t)v, (int64_t)(v >> 7)};
        put_attr(f, a, H5T_STD_I64LE, H5T_NATIVE_INT64, 1, 2, two);
        break;
    }
    case 5: { /* a fixed-size string of 1..4096 bytes, the value's bytes repeated */
        size_t n = 1 + size % 4096;
        char *s = malloc(n);
        if (!s) abort();
        for (size_t i = 0; i < n; i++) s[i] = (char)rec[4 + i % 8];
        hid_t t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, n);
        put_attr(f, a, t, t, 0, 1, s);
        H5Tclose(t);
        free(s);
        break;
    }
    case 6: { /* a variable-length string */
        char s[9];
        memcpy(s, rec + 4, 8);
        s[8] = 0;
        const char *p = s;
        hid_t t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, H5T_VARIABLE);
        put_attr(f, a, t, t, 0, 1, &p);
        H5Tclose(t);
        break;
    }
    case 7: H5Ldelete(f, d, H5P_DEFAULT); break;
    default: { /* a dataset of another type, rank or length (only the extent, no data, when long) */
        static const hid_t *const types[] = {&H5T_IEEE_F32LE_g, &H5T_IEEE_F64LE_g, &H5T_STD_I32LE_g, &H5T_STD_U8LE_g};
        if (H5Lexists(f, d, H5P_DEFAULT) > 0) H5Ldelete(f, d, H5P_DEFAULT);
        hsize_t dims[2] = {(hsize_t)(rec[0] % 10 == 9 ? v % 100000 : size % 300), 1 + rec[5] % 3};
        int rank = 1 + (rec[6] & 1);
        hid_t t;
        if (rec[7] % 3 == 0) {
            t = H5Tcopy(H5T_C_S1);
            H5Tset_size(t, rec[7] & 8 ? LQ_NAME_MAX : 1 + rec[8] % 100);
        } else {
            t = H5Tcopy(*types[rec[8] % 4]);
        }
        hid_t sp = H5Screate_simple(rank, dims, NULL);
        hid_t ds = H5Dcreate2(f, d, t, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        size_t bytes = (size_t)dims[0] * (rank == 2 ? dims[1] : 1) * H5Tget_size(t);
        if (ds >= 0 && bytes && bytes <= ((size_t)1 << 16)) {
            uint8_t *buf = malloc(bytes);
            if (!buf) abort();
            for (size_t i = 0; i < bytes; i++) buf[i] = rec[4 + i % 8];
            H5Dwrite(ds, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
            free(buf);
        }
        if (ds >= 0) H5Dclose(ds);
        H5Sclose(sp);
        H5Tclose(t);
    }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_in in = {data, size};
    lq_ckpt c;
    memset(&c, 0, sizeof c);
    /* the saved checkpoint: small values most of the time, anything when the byte says so */
    uint8_t wild = fuzz_u8(&in);
    int64_t *sc[] = {&c.step, &c.epoch, &c.row, &c.micro, &c.adam_t, &c.n_skipped};
    for (int i = 0; i < 6; i++) *sc[i] = wild & (1 << i) ? (int64_t)fuzz_u64(&in) : fuzz_u8(&in);
    c.seed = fuzz_u64(&in);
    uint64_t eb = fuzz_u64(&in);
    memcpy(&c.eval_before, &eb, sizeof eb);
    c.numel = fuzz_u8(&in);
    c.n_mods = fuzz_u8(&in) % 8;
    size_t cl;
    const uint8_t *cfg = fuzz_bytes(&in, fuzz_u8(&in), &cl);
    float *arr = calloc((size_t)c.numel * 3 + 1, sizeof(float));
    char(*mods)[LQ_NAME_MAX] = calloc((size_t)c.n_mods + 1, LQ_NAME_MAX);
    char *config = calloc(cl + 2, 1);
    if (!arr || !mods || !config) abort();
    for (int64_t i = 0; i < c.numel * 3; i++) arr[i] = (float)(i % 7) - 3.0f;
    for (int i = 0; i < c.n_mods; i++) snprintf(mods[i], LQ_NAME_MAX, "model.layers.%d.self_attn.q_proj", i);
    memcpy(config, cfg, cl);
    if (!config[0]) config[0] = '{';
    c.params = arr, c.m = arr + c.numel, c.v = arr + 2 * c.numel;
    c.mods = mods;
    c.config = config;
    const char *path = fuzz_path("checkpoint-1.h5");
    lq_err err;
    lq_err_clear(&err);
    if (lq_ckpt_save(path, &c, &err) != LQ_OK) {
        fprintf(stderr, "fuzz: lq_ckpt_save failed: %s\n", err.msg);
        abort();
    }
    free(arr);
    free(mods);
    free(config);
    /* the edits */
    if (in.n >= 12) {
        H5E_auto2_t fn;
        void *fd;
        H5Eget_auto2(H5E_DEFAULT, &fn, &fd);
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
        hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
        if (f < 0) abort();
        for (int k = 0; k < MAX_EDITS && in.n >= 12; k++) {
            size_t got;
            edit(f, fuzz_bytes(&in, 12, &got));
        }
        H5Fclose(f);
        H5Eset_auto2(H5E_DEFAULT, fn, fd);
    }
    lq_ckpt r;
    lq_err_clear(&err);
    if (lq_ckpt_load(path, &r, &err) != LQ_OK) {
        fuzz_note(err.msg);
        if (err.status != LQ_ERR_INPUT || !strstr(err.msg, path) || r.params || r.config) abort();
        return 0;
    }
    /* accepted: in range, arrays there, names and config terminated */
    if (r.step < 0 || r.adam_t > r.step || r.n_skipped > r.step || r.numel < 0 || r.n_mods < 0 ||
        r.n_mods > LQ_CKPT_MAX_MODS || !r.params || !r.m || !r.v || !r.config)
        abort();
    for (int64_t i = 0; i < r.numel; i++) sink += r.params[i] + r.m[i] + r.v[i];
    for (int i = 0; i < r.n_mods; i++)
        if (strlen(r.mods[i]) >= LQ_NAME_MAX) abort();
    sink += (float)strlen(r.config);
    lq_ckpt_free(&r);
    return 0;
}
