/* tests/test_hdf5_inspect.c: lq_h5_list on an HDF5 file this test writes with the HDF5 C library
 * (groups, datasets, attributes), and on broken files. `test_hdf5_inspect --write PATH` only
 * writes the file (tests/test_cli_inspect.sh uses it for `loquat inspect`). */
#include "tests/testutil.h"

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/io.h"

static int write_fixture(const char *path) {
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0) return -1;
    hid_t g = H5Gcreate2(f, "model", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hid_t g2 = H5Gcreate2(g, "layer0", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t d23[2] = {2, 3}, d4[1] = {4};
    float w[6] = {1, 2, 3, 4, 5, 6};
    int64_t b[4] = {1, 2, 3, 4};
    hid_t s23 = H5Screate_simple(2, d23, NULL), s4 = H5Screate_simple(1, d4, NULL), sc = H5Screate(H5S_SCALAR);
    hid_t ds = H5Dcreate2(g2, "weight", H5T_IEEE_F32LE, s23, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, w);
    hid_t db = H5Dcreate2(g2, "bias", H5T_STD_I64LE, s4, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(db, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, b);
    hid_t du = H5Dcreate2(f, "steps", H5T_STD_U8LE, s4, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    /* attributes: int scalar, float scalar, variable string, fixed string, small array */
    int64_t ver = 3;
    double lr = 0.25;
    hid_t a = H5Acreate2(f, "version", H5T_STD_I64LE, sc, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_INT64, &ver);
    H5Aclose(a);
    a = H5Acreate2(g, "lr", H5T_IEEE_F64LE, sc, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_DOUBLE, &lr);
    H5Aclose(a);
    hid_t vs = H5Tcopy(H5T_C_S1);
    H5Tset_size(vs, H5T_VARIABLE);
    H5Tset_cset(vs, H5T_CSET_UTF8);
    const char *note = "say \"hi\"";
    a = H5Acreate2(g, "note", vs, sc, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, vs, &note);
    H5Aclose(a);
    hid_t fs = H5Tcopy(H5T_C_S1);
    H5Tset_size(fs, 8);
    a = H5Acreate2(ds, "kind", fs, sc, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, fs, "linear\0\0");
    H5Aclose(a);
    int32_t arr[4] = {7, -8, 9, 10};
    a = H5Acreate2(ds, "dims", H5T_STD_I32LE, s4, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_INT32, arr);
    H5Aclose(a);
    H5Lcreate_soft("/model/layer0/weight", f, "alias", H5P_DEFAULT, H5P_DEFAULT);
    H5Tclose(vs);
    H5Tclose(fs);
    H5Dclose(du);
    H5Dclose(db);
    H5Dclose(ds);
    H5Sclose(sc);
    H5Sclose(s4);
    H5Sclose(s23);
    H5Gclose(g2);
    H5Gclose(g);
    return H5Fclose(f) < 0 ? -1 : 0;
}

static char *tmp_h5(void) {
    char *p = strdup("/tmp/lq_test_h5_XXXXXX");
    int fd = mkstemp(p);
    assert_true(fd >= 0);
    close(fd);
    return p;
}

static const lq_h5_entry *find(const lq_h5_listing *l, lq_h5_kind k, const char *path, const char *name) {
    for (int64_t i = 0; i < l->n; i++)
        if (l->e[i].kind == k && !strcmp(l->e[i].path, path) && (!name || (l->e[i].name && !strcmp(l->e[i].name, name))))
            return &l->e[i];
    fail_msg("no entry %s %s", path, name ? name : "");
    return NULL;
}

static void test_listing(void **state) {
    (void)state;
    char *p = tmp_h5();
    assert_int_equal(write_fixture(p), 0);
    lq_h5_listing l;
    lq_err err = {0};
    if (lq_h5_list(p, &l, &err) != LQ_OK) fail_msg("%s", err.msg);
    /* "/", @version, /alias, /model, @lr, @note, /model/layer0, bias, weight, @dims, @kind, /steps */
    assert_int_equal(l.n, 12);
    assert_int_equal(l.e[0].kind, LQ_H5_GROUP);
    assert_string_equal(l.e[0].path, "/");
    const lq_h5_entry *e = find(&l, LQ_H5_DATASET, "/model/layer0/weight", NULL);
    assert_string_equal(e->dtype, "float32");
    assert_int_equal(e->ndim, 2);
    assert_int_equal(e->shape[0], 2);
    assert_int_equal(e->shape[1], 3);
    assert_int_equal(e->bytes, 24);
    e = find(&l, LQ_H5_DATASET, "/model/layer0/bias", NULL);
    assert_string_equal(e->dtype, "int64");
    assert_int_equal(e->bytes, 32);
    e = find(&l, LQ_H5_DATASET, "/steps", NULL);
    assert_string_equal(e->dtype, "uint8");
    find(&l, LQ_H5_GROUP, "/model/layer0", NULL);
    e = find(&l, LQ_H5_LINK, "/alias", NULL);
    assert_string_equal(e->dtype, "soft link");
    e = find(&l, LQ_H5_ATTR, "/", "version");
    assert_string_equal(e->dtype, "int64");
    assert_int_equal(e->ndim, 0);
    assert_string_equal(e->value, "3");
    e = find(&l, LQ_H5_ATTR, "/model", "lr");
    assert_string_equal(e->value, "0.25");
    e = find(&l, LQ_H5_ATTR, "/model", "note");
    assert_string_equal(e->dtype, "string");
    assert_string_equal(e->value, "\"say \\\"hi\\\"\"");
    e = find(&l, LQ_H5_ATTR, "/model/layer0/weight", "kind");
    assert_string_equal(e->value, "\"linear\"");
    e = find(&l, LQ_H5_ATTR, "/model/layer0/weight", "dims");
    assert_string_equal(e->dtype, "int32");
    assert_string_equal(e->value, "[7, -8, 9, 10]");
    /* order: each object's attributes follow it */
    assert_string_equal(l.e[1].path, "/");
    assert_string_equal(l.e[1].name, "version");
    lq_h5_listing_free(&l);
    assert_null(l.e);

    /* broken: the same file cut short, junk, an empty file, a missing one */
    FILE *f = fopen(p, "rb");
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    const struct {
        size_t len;
        const char *bytes;
    } bad[] = {{n / 2, buf}, {0, ""}, {20, "this is not HDF5 data"}, {8, "\x89HDF\r\n\x1a\n"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        f = fopen(p, "wb");
        fwrite(bad[i].bytes, 1, bad[i].len, f);
        fclose(f);
        lq_err_clear(&err);
        lq_status st = lq_h5_list(p, &l, &err);
        if (st != LQ_ERR_INPUT) fail_msg("broken file %zu: got %s", i, lq_status_name(st));
        assert_non_null(strstr(err.msg, p));
        assert_null(l.e);
    }
    unlink(p);
    lq_err_clear(&err);
    assert_int_equal(lq_h5_list(p, &l, &err), LQ_ERR_INPUT);
    free(p);
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--write")) return write_fixture(argv[2]) == 0 ? 0 : 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_listing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
