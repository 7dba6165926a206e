/* tests/test_io_safetensors.c: safetensors reader/writer, sharded models, hostile headers, atomic writes. */
#include "tests/testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/io.h"

/* --- helpers ---------------------------------------------------------------------------------- */

typedef struct tdir {
    char path[256];
} tdir;

static int setup_dir(void **state) {
    tdir *d = calloc(1, sizeof *d);
    snprintf(d->path, sizeof d->path, "/tmp/lq_st_test.XXXXXX");
    if (!mkdtemp(d->path)) return -1;
    *state = d;
    return 0;
}

static int teardown_dir(void **state) {
    tdir *d = *state;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "chmod -R u+w '%s' && rm -rf '%s'", d->path, d->path);
    int rc = system(cmd);
    free(d);
    return rc == 0 ? 0 : -1;
}

static const char *in_dir(const tdir *d, const char *name, char *buf, size_t n) {
    snprintf(buf, n, "%s/%s", d->path, name);
    return buf;
}

/* Writes an 8-byte length (hlen, or strlen(header) when hlen < 0), the header and n_data bytes
 * of pattern data. */
static void write_raw(const char *path, long long hlen, const char *header, size_t n_data) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint64_t len = hlen < 0 ? (uint64_t)strlen(header) : (uint64_t)hlen;
    uint8_t b[8];
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(len >> (8 * i));
    assert_int_equal(fwrite(b, 1, 8, f), 8);
    assert_int_equal(fwrite(header, 1, strlen(header), f), strlen(header));
    for (size_t i = 0; i < n_data; i++) fputc((int)(i * 7 + 1) & 0xff, f);
    fclose(f);
}

static long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* Expects lq_st_open to fail with LQ_ERR_INPUT and a message holding the path and each needle. */
static void expect_bad(const char *path, const char *needle1, const char *needle2) {
    lq_st_file *f = NULL;
    lq_err err = {0};
    lq_status s = lq_st_open(&f, path, &err);
    if (s != LQ_ERR_INPUT || !strstr(err.msg, path) || (needle1 && !strstr(err.msg, needle1)) ||
        (needle2 && !strstr(err.msg, needle2)))
        fail_msg("status %s, message \"%s\"; want bad input naming the file, '%s', '%s'", lq_status_name(s), err.msg,
                 needle1 ? needle1 : "", needle2 ? needle2 : "");
    assert_null(f);
}

/* Temporary files (".*.tmp") left in a folder. */
static int count_tmp_files(const char *dir) {
    DIR *dp = opendir(dir);
    assert_non_null(dp);
    int n = 0;
    for (struct dirent *e; (e = readdir(dp));) {
        size_t l = strlen(e->d_name);
        if (e->d_name[0] == '.' && l > 4 && strcmp(e->d_name + l - 4, ".tmp") == 0) n++;
    }
    closedir(dp);
    return n;
}

static double ref_value(int64_t i) { return (double)(i % 13) * 0.5 - 3.0; }

/* --- reading files written by the real safetensors package ------------------------------------ */

static void test_read_reference_file(void **state) {
    (void)state;
    char path[512];
    lq_fixture_path("st_ref.safetensors", path, sizeof path);
    lq_st_file *f = NULL;
    lq_err err = {0};
    if (lq_st_open(&f, path, &err) != LQ_OK) fail_msg("%s", err.msg);
    assert_int_equal(lq_st_count(f), 14);
    assert_string_equal(lq_st_metadata(f, "fixture_version"), "1");
    assert_string_equal(lq_st_metadata(f, "note"), "h\xc3\xa9llo \"quoted\"");
    assert_int_equal(lq_st_metadata_count(f), 3);
    assert_null(lq_st_metadata(f, "absent"));
    struct { const char *name, *dtype; int ndim; int64_t shape[3]; } want[] = {
        {"f64", "F64", 2, {3, 2}},  {"f32", "F32", 3, {2, 3, 4}}, {"f16", "F16", 1, {7}},  {"bf16", "BF16", 2, {5, 3}},
        {"i64", "I64", 1, {4}},     {"i32", "I32", 2, {2, 2}},    {"i16", "I16", 1, {3}},  {"i8", "I8", 1, {6}},
        {"u8", "U8", 1, {9}},       {"bool", "BOOL", 1, {5}},     {"f8_e4m3", "F8_E4M3", 1, {4}},
        {"f8_e5m2", "F8_E5M2", 1, {4}}, {"scalar", "F32", 0, {0}}, {"empty", "F32", 2, {0, 3}},
    };
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        const lq_st_tensor *t = lq_st_find(f, want[k].name);
        if (!t) fail_msg("tensor %s not found", want[k].name);
        assert_string_equal(lq_st_dtype_name(t->dtype), want[k].dtype);
        assert_int_equal(t->ndim, want[k].ndim);
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            assert_int_equal(t->shape[d], want[k].shape[d]);
            numel *= want[k].shape[d];
        }
        assert_int_equal(t->numel, numel);
        assert_int_equal(t->nbytes, (size_t)numel * lq_st_dtype_size(t->dtype));
        const uint8_t *p = t->data;
        for (int64_t i = 0; i < numel; i++) {
            int64_t iv = 0;
            switch (t->dtype) {
            case LQ_ST_I64: { int64_t v; memcpy(&v, p + 8 * i, 8); iv = v; assert_int_equal(iv, i % 13 - 6); break; }
            case LQ_ST_I32: { int32_t v; memcpy(&v, p + 4 * i, 4); assert_int_equal(v, i % 13 - 6); break; }
            case LQ_ST_I16: { int16_t v; memcpy(&v, p + 2 * i, 2); assert_int_equal(v, i % 13 - 6); break; }
            case LQ_ST_I8: assert_int_equal((int8_t)p[i], i % 13 - 6); break;
            case LQ_ST_U8: assert_int_equal(p[i], i % 13); break;
            case LQ_ST_BOOL: assert_int_equal(p[i], i % 2); break;
            default: break;
            }
        }
        if (t->dtype <= LQ_ST_BF16) {
            float *v = malloc((size_t)(numel ? numel : 1) * sizeof *v);
            assert_int_equal(lq_st_to_f32(t, v, &err), LQ_OK);
            for (int64_t i = 0; i < numel; i++) assert_true(v[i] == (float)ref_value(i));
            free(v);
        }
    }
    /* F8 is recognised, but not converted */
    float dummy[4];
    lq_err e2 = {0};
    assert_int_equal(lq_st_to_f32(lq_st_find(f, "f8_e4m3"), dummy, &e2), LQ_ERR_UNSUPPORTED);
    assert_non_null(strstr(e2.msg, "F8_E4M3"));
    assert_non_null(strstr(e2.msg, "f8_e4m3"));
    /* iteration is in data order and covers every tensor once */
    const char *prev_end = NULL;
    for (int64_t i = 0; i < lq_st_count(f); i++) {
        const lq_st_tensor *t = lq_st_tensor_at(f, i);
        if (prev_end) assert_ptr_equal(t->data, prev_end);
        prev_end = (const char *)t->data + t->nbytes;
    }
    assert_null(lq_st_tensor_at(f, 14));
    assert_null(lq_st_find(f, "nope"));
    lq_st_close(f);
}

static void test_dtype_mapping(void **state) {
    (void)state;
    assert_int_equal(lq_st_dtype_to_lq(LQ_ST_F32), LQ_DTYPE_F32);
    assert_int_equal(lq_st_dtype_to_lq(LQ_ST_F16), LQ_DTYPE_F16);
    assert_int_equal(lq_st_dtype_to_lq(LQ_ST_BF16), LQ_DTYPE_BF16);
    assert_int_equal(lq_st_dtype_to_lq(LQ_ST_I32), LQ_DTYPE_I32);
    assert_int_equal(lq_st_dtype_to_lq(LQ_ST_U8), LQ_DTYPE_U8);
    assert_int_equal(lq_st_dtype_to_lq(LQ_ST_I8), LQ_DTYPE_I8);
    lq_st_dtype none[] = {LQ_ST_F64, LQ_ST_I64, LQ_ST_I16, LQ_ST_BOOL, LQ_ST_F8_E4M3, LQ_ST_F8_E5M2};
    for (size_t i = 0; i < sizeof none / sizeof none[0]; i++) assert_int_equal(lq_st_dtype_to_lq(none[i]), LQ_DTYPE_COUNT);
    assert_int_equal(lq_st_dtype_from_lq(LQ_DTYPE_BF16), LQ_ST_BF16);
    assert_int_equal(lq_st_dtype_from_lq(LQ_DTYPE_NF4), LQ_ST_DTYPE_COUNT);
    assert_int_equal(lq_st_dtype_from_name("F8_E5M2"), LQ_ST_F8_E5M2);
    assert_int_equal(lq_st_dtype_from_name("f32"), LQ_ST_DTYPE_COUNT);
    size_t sizes[] = {8, 4, 2, 2, 8, 4, 2, 1, 1, 1, 1, 1};
    for (int i = 0; i < LQ_ST_DTYPE_COUNT; i++) assert_int_equal(lq_st_dtype_size((lq_st_dtype)i), sizes[i]);
}

static void test_read_reference_shards(void **state) {
    (void)state;
    char dir[512], idx[600];
    lq_fixture_path("st_shard", dir, sizeof dir);
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    const char *paths[] = {dir, idx};
    for (int k = 0; k < 2; k++) {
        lq_st_model *m = NULL;
        lq_err err = {0};
        if (lq_st_model_open(&m, paths[k], &err) != LQ_OK) fail_msg("%s", err.msg);
        assert_int_equal(lq_st_model_count(m), 3);
        assert_int_equal(lq_st_model_shard_count(m), 2);
        assert_string_equal(lq_st_metadata(lq_st_model_shard(m, 0), "format"), "pt");
        const char *names[] = {"a.weight", "b.bias", "c.weight"};
        int64_t numels[] = {12, 5, 4};
        for (int i = 0; i < 3; i++) {
            const lq_st_tensor *t = lq_st_model_find(m, names[i]);
            assert_non_null(t);
            assert_ptr_equal(lq_st_model_tensor_at(m, i), t); /* sorted by name */
            assert_int_equal(t->numel, numels[i]);
            float v[12];
            assert_int_equal(lq_st_to_f32(t, v, &err), LQ_OK);
            for (int64_t j = 0; j < t->numel; j++) assert_true(v[j] == (float)ref_value(j));
        }
        assert_null(lq_st_model_find(m, "d"));
        lq_st_model_close(m);
    }
}

/* --- writer round trip ------------------------------------------------------------------------ */

static void test_write_round_trip_all_dtypes(void **state) {
    tdir *d = *state;
    char path[512];
    in_dir(d, "rt.safetensors", path, sizeof path);
    uint8_t buf[LQ_ST_DTYPE_COUNT][64];
    lq_st_wtensor t[LQ_ST_DTYPE_COUNT + 2];
    int n = 0;
    for (int i = 0; i < LQ_ST_DTYPE_COUNT; i++) {
        size_t es = lq_st_dtype_size((lq_st_dtype)i);
        int64_t numel = 3 + i % 4; /* odd byte sizes test the padding-free tiling */
        for (size_t b = 0; b < (size_t)numel * es; b++) buf[i][b] = (uint8_t)(b * 31 + i * 7 + 3);
        static char names[LQ_ST_DTYPE_COUNT][32];
        snprintf(names[i], sizeof names[i], "layer.%d.\"w\"\\x", i);
        t[n++] = (lq_st_wtensor){names[i], (lq_st_dtype)i, 2, {1, numel}, buf[i]};
    }
    float scalar = 2.5f;
    t[n++] = (lq_st_wtensor){"scalar", LQ_ST_F32, 0, {0}, &scalar};
    t[n++] = (lq_st_wtensor){"empty", LQ_ST_BF16, 3, {2, 0, 5}, NULL};
    lq_st_kv meta[] = {{"format", "pt"}, {"tab\tnew\nline", "ctl\x01 \xe2\x82\xac"}};
    lq_err err = {0};
    if (lq_st_write(path, t, n, meta, 2, &err) != LQ_OK) fail_msg("%s", err.msg);
    assert_int_equal(count_tmp_files(d->path), 0);
    /* header padded to 8 with spaces */
    FILE *fp = fopen(path, "rb");
    uint8_t len8[8];
    assert_int_equal(fread(len8, 1, 8, fp), 8);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | len8[i];
    assert_int_equal(hlen % 8, 0);
    char *hdr = calloc(hlen + 1, 1);
    assert_int_equal(fread(hdr, 1, hlen, fp), hlen);
    fclose(fp);
    assert_true(hdr[0] == '{');
    size_t last = strlen(hdr);
    while (last > 0 && hdr[last - 1] == ' ') last--;
    assert_true(hdr[last - 1] == '}');
    free(hdr);

    lq_st_file *f = NULL;
    if (lq_st_open(&f, path, &err) != LQ_OK) fail_msg("%s", err.msg);
    assert_int_equal(lq_st_count(f), n);
    assert_string_equal(lq_st_metadata(f, "format"), "pt");
    assert_string_equal(lq_st_metadata(f, "tab\tnew\nline"), "ctl\x01 \xe2\x82\xac");
    for (int i = 0; i < n; i++) {
        const lq_st_tensor *r = lq_st_find(f, t[i].name);
        if (!r) fail_msg("tensor '%s' lost", t[i].name);
        assert_ptr_equal(lq_st_tensor_at(f, i), r); /* written in the order given */
        assert_int_equal(r->dtype, t[i].dtype);
        assert_int_equal(r->ndim, t[i].ndim);
        for (int k = 0; k < r->ndim; k++) assert_int_equal(r->shape[k], t[i].shape[k]);
        if (r->nbytes) assert_memory_equal(r->data, t[i].data, r->nbytes);
    }
    assert_int_equal((uintptr_t)lq_st_tensor_at(f, 0)->data % 8, 0); /* data section 8-aligned */
    lq_st_close(f);

    /* the writer refuses duplicate names, NULL data, and __metadata__ as a tensor name */
    lq_st_wtensor dup[2] = {{"x", LQ_ST_U8, 1, {1}, buf[0]}, {"x", LQ_ST_U8, 1, {1}, buf[0]}};
    lq_err e2 = {0};
    assert_int_equal(lq_st_write(path, dup, 2, NULL, 0, &e2), LQ_ERR_ARG);
    assert_non_null(strstr(e2.msg, "'x' given twice"));
    lq_st_wtensor nodata = {"y", LQ_ST_F32, 1, {4}, NULL};
    lq_err e3 = {0};
    assert_int_equal(lq_st_write(path, &nodata, 1, NULL, 0, &e3), LQ_ERR_ARG);
    lq_st_wtensor reserved = {"__metadata__", LQ_ST_U8, 1, {1}, buf[0]};
    lq_err e4 = {0};
    assert_int_equal(lq_st_write(path, &reserved, 1, NULL, 0, &e4), LQ_ERR_ARG);
    /* the good file is still there after the refused writes */
    assert_int_equal(lq_st_open(&f, path, &err), LQ_OK);
    assert_int_equal(lq_st_count(f), n);
    lq_st_close(f);
}

/* Our writer's shards + a hand-written index: found across shards; bad indexes refused. */
static void test_sharded_index(void **state) {
    tdir *d = *state;
    char p1[512], p2[512], idx[512];
    float a[6] = {1, 2, 3, 4, 5, 6}, b[2] = {7, 8};
    lq_st_wtensor t1 = {"a", LQ_ST_F32, 2, {2, 3}, a}, t2 = {"b", LQ_ST_F32, 1, {2}, b};
    lq_err err = {0};
    assert_int_equal(lq_st_write(in_dir(d, "s1.safetensors", p1, sizeof p1), &t1, 1, NULL, 0, &err), LQ_OK);
    assert_int_equal(lq_st_write(in_dir(d, "s2.safetensors", p2, sizeof p2), &t2, 1, NULL, 0, &err), LQ_OK);
    in_dir(d, "model.safetensors.index.json", idx, sizeof idx);
    FILE *f = fopen(idx, "w");
    fputs("{\"metadata\": {\"total_size\": 32}, \"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s2.safetensors\"}}", f);
    fclose(f);
    lq_st_model *m = NULL;
    if (lq_st_model_open(&m, d->path, &err) != LQ_OK) fail_msg("%s", err.msg);
    assert_int_equal(lq_st_model_count(m), 2);
    const lq_st_tensor *tb = lq_st_model_find(m, "b");
    assert_non_null(tb);
    assert_memory_equal(tb->data, b, sizeof b);
    assert_memory_equal(lq_st_model_find(m, "a")->data, a, sizeof a);
    lq_st_model_close(m);

    struct { const char *json, *needle; } bad[] = {
        {"{\"weight_map\": {\"a\": \"s2.safetensors\", \"b\": \"s2.safetensors\"}}", "tensor 'a' in s2.safetensors"},
        {"{\"weight_map\": {\"a\": \"../s1.safetensors\"}}", "plain file name"},
        {"{\"weight_map\": {\"a\": \"missing.safetensors\"}}", "missing.safetensors: cannot open"},
        {"{\"weight_map\": {\"a\": 3}}", "weight_map entry 'a'"},
        {"{\"weight_map\": {}}", "weight_map is empty"},
        {"{\"metadata\": {}}", "no \"weight_map\""},
        {"[1, 2", "not a JSON object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        f = fopen(idx, "w");
        fputs(bad[i].json, f);
        fclose(f);
        lq_err e = {0};
        m = NULL;
        lq_status s = lq_st_model_open(&m, idx, &e);
        if (s != LQ_ERR_INPUT || !strstr(e.msg, bad[i].needle))
            fail_msg("index %s: status %s, \"%s\"; want '%s'", bad[i].json, lq_status_name(s), e.msg, bad[i].needle);
        assert_null(m);
    }
    /* the same tensor in two shards */
    assert_int_equal(lq_st_write(p2, &t1, 1, NULL, 0, &err), LQ_OK);
    f = fopen(idx, "w");
    fputs("{\"weight_map\": {\"a\": \"s1.safetensors\", \"x\": \"s2.safetensors\"}}", f);
    fclose(f);
    lq_err e = {0};
    assert_int_equal(lq_st_model_open(&m, idx, &e), LQ_ERR_INPUT);
    assert_non_null(strstr(e.msg, "'a' is in two shards"));
    /* a folder with neither file */
    char sub[512];
    mkdir(in_dir(d, "emptydir", sub, sizeof sub), 0755);
    lq_err e5 = {0};
    assert_int_equal(lq_st_model_open(&m, sub, &e5), LQ_ERR_INPUT);
    assert_non_null(strstr(e5.msg, "neither"));
}

/* --- hostile inputs --------------------------------------------------------------------------- */

static void test_hostile_headers(void **state) {
    tdir *d = *state;
    char p[512];
    in_dir(d, "bad.safetensors", p, sizeof p);
    const char *ok = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    write_raw(p, -1, ok, 8);
    lq_st_file *f = NULL;
    lq_err err = {0};
    if (lq_st_open(&f, p, &err) != LQ_OK) fail_msg("control case: %s", err.msg);
    lq_st_close(f);

    /* missing file, empty file, shorter than the length field */
    char missing[512];
    expect_bad(in_dir(d, "nope.safetensors", missing, sizeof missing), "cannot open", NULL);
    FILE *fp = fopen(p, "wb");
    fclose(fp);
    expect_bad(p, "too short", NULL);
    expect_bad(d->path, "not a regular file", NULL);
    /* header length past EOF, huge, truncated file */
    write_raw(p, 1000, ok, 8);
    expect_bad(p, "header length 1000 runs past the end", NULL);
    write_raw(p, (long long)0x7fffffffffffffffLL, ok, 8);
    expect_bad(p, "runs past the end", NULL);
    write_raw(p, -1, ok, 5); /* truncated data */
    expect_bad(p, "tensor 'a'", "end past the data section (5 bytes)");
    {   /* a header length over the cap in a (sparse) file large enough to hold it */
        write_raw(p, (long long)LQ_ST_MAX_HEADER + 1, ok, 0);
        assert_int_equal(truncate(p, (off_t)LQ_ST_MAX_HEADER + 64), 0);
        expect_bad(p, "exceeds the 100000000-byte limit", NULL);
    }
    struct { const char *hdr; size_t n_data; const char *n1, *n2; } cases[] = {
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]", 8, "not valid JSON", NULL},
        {"[1,2,3]", 0, "does not start with a JSON object", NULL},
        {"{\"a\":1} trailing", 0, "unexpected bytes after", NULL},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}\xff", 8, "UTF-8", NULL},
        {"{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "tensor 'a'", "missing \"dtype\""},
        {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "tensor 'a'", "missing \"shape\""},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "tensor 'a'", "missing \"data_offsets\""},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, "tensor 'a'", "end past the data section"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8, "tensor 'a'", "reversed"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "tensor 'b'", "overlap tensor 'a'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12, "tensor 'b'", "unused"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 12, "8 trailing bytes", NULL},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "tensor 'a'", "needs 12"},
        {"{\"a\":{\"dtype\":\"F16\",\"shape\":[4294967296,4294967296,4],\"data_offsets\":[0,8]}}", 8, "tensor 'a'",
         "overflows 64 bits"},
        {"{\"a\":{\"dtype\":\"F64\",\"shape\":[2147483648,2147483648],\"data_offsets\":[0,8]}}", 8, "tensor 'a'",
         "overflow the byte count"},
        {"{\"a\":{\"dtype\":\"F128\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "tensor 'a'", "unknown dtype \"F128\""},
        {"{\"a\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "tensor 'a'", "not a string"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "tensor 'a'", "shape[0]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,8]}}", 8, "tensor 'a'", "shape[0]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8, "tensor 'a'", "not an array"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1, "tensor 'a'",
         "9 dimensions"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,9]}}", 8, "tensor 'a'", "[begin, end]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-1,8]}}", 8, "tensor 'a'", "[begin, end]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,1e300]}}", 8, "tensor 'a'", "[begin, end]"},
        {"{\"a\":[1,2]}", 0, "tensor 'a'", "not a JSON object"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
         "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2, "tensor 'a'", "twice"},
        {"{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "empty name", NULL},
        {"{\"__metadata__\":{\"k\":1}}", 0, "__metadata__ key 'k'", "not a string"},
        {"{\"__metadata__\":{\"k\":\"a\",\"j\":\"b\",\"k\":\"c\"}}", 0, "__metadata__ key 'k'", "twice"},
        {"{\"__metadata__\":{},\"__metadata__\":{}}", 0, "\"__metadata__\" appears twice", NULL},
        {"{\"__metadata__\":[\"k\"]}", 0, "\"__metadata__\" is not a JSON object", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_raw(p, -1, cases[i].hdr, cases[i].n_data);
        expect_bad(p, cases[i].n1, cases[i].n2);
    }
    /* a NUL byte inside the header */
    {
        static const char nul_hdr[] = "{\"a\":\0{}}  ";
        write_raw(p, (long long)sizeof nul_hdr - 1, "", 0);
        FILE *fn = fopen(p, "ab");
        assert_int_equal(fwrite(nul_hdr, 1, sizeof nul_hdr - 1, fn), sizeof nul_hdr - 1);
        fclose(fn);
        expect_bad(p, "UTF-8", NULL);
    }
    /* deep nesting is refused by the parser, not by a stack overflow */
    size_t depth = 200000;
    char *deep = malloc(2 * depth + 8);
    strcpy(deep, "{\"a\":");
    size_t k = strlen(deep);
    for (size_t i = 0; i < depth; i++) deep[k++] = '[';
    for (size_t i = 0; i < depth; i++) deep[k++] = ']';
    deep[k++] = '}';
    deep[k] = '\0';
    write_raw(p, -1, deep, 0);
    free(deep);
    expect_bad(p, "not valid JSON", NULL);
}

/* Every truncation of a valid file is refused cleanly (never a crash or an out-of-bounds read). */
static void test_every_truncation(void **state) {
    tdir *d = *state;
    char p[512], q[512];
    in_dir(d, "full.safetensors", p, sizeof p);
    in_dir(d, "cut.safetensors", q, sizeof q);
    float a[5] = {1, 2, 3, 4, 5};
    uint8_t b[3] = {9, 8, 7};
    lq_st_wtensor t[2] = {{"alpha", LQ_ST_F32, 1, {5}, a}, {"beta", LQ_ST_U8, 2, {1, 3}, b}};
    lq_st_kv meta = {"format", "pt"};
    lq_err err = {0};
    assert_int_equal(lq_st_write(p, t, 2, &meta, 1, &err), LQ_OK);
    long n = file_size(p);
    assert_true(n > 8 && n < 4096);
    FILE *fp = fopen(p, "rb");
    uint8_t bytes[4096];
    assert_int_equal(fread(bytes, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    for (long cut = 0; cut < n; cut++) {
        fp = fopen(q, "wb");
        fwrite(bytes, 1, (size_t)cut, fp);
        fclose(fp);
        lq_st_file *f = NULL;
        lq_err e = {0};
        lq_status s = lq_st_open(&f, q, &e);
        if (s != LQ_ERR_INPUT) fail_msg("cut at %ld of %ld: status %s (%s)", cut, n, lq_status_name(s), e.msg);
    }
}

/* --- atomic writes ---------------------------------------------------------------------------- */

static void test_atomic_write_failures(void **state) {
    tdir *d = *state;
    float v[4] = {1, 2, 3, 4};
    lq_st_wtensor t = {"v", LQ_ST_F32, 1, {4}, v};
    char p[512];
    /* a folder that does not exist */
    in_dir(d, "no/such/dir/out.safetensors", p, sizeof p);
    lq_err err = {0};
    assert_int_equal(lq_st_write(p, &t, 1, NULL, 0, &err), LQ_ERR_IO);
    assert_non_null(strstr(err.msg, p));
    assert_non_null(strstr(err.msg, strerror(ENOENT)));
    /* a read-only folder: root ignores permissions, so this only runs for other users */
    if (geteuid() != 0) {
        char ro[300];
        in_dir(d, "ro", ro, sizeof ro);
        assert_int_equal(mkdir(ro, 0555), 0);
        snprintf(p, sizeof p, "%s/out.safetensors", ro);
        lq_err e = {0};
        assert_int_equal(lq_st_write(p, &t, 1, NULL, 0, &e), LQ_ERR_IO);
        assert_non_null(strstr(e.msg, strerror(EACCES)));
        assert_int_equal(file_size(p), -1);
    } else {
        print_message("running as root: read-only folder case replaced by the missing-folder case above\n");
    }
    /* the target is a folder: the rename fails and the temporary is removed */
    char sub[512];
    mkdir(in_dir(d, "adir", sub, sizeof sub), 0755);
    lq_err e2 = {0};
    assert_int_equal(lq_st_write(sub, &t, 1, NULL, 0, &e2), LQ_ERR_IO);
    assert_non_null(strstr(e2.msg, "rename"));
    assert_int_equal(count_tmp_files(d->path), 0);
}

/* A write that fails half way (file size limit: EFBIG, as a full disk would give ENOSPC) leaves
 * the old file byte for byte and no temporary. */
static void test_atomic_failure_mid_write(void **state) {
    tdir *d = *state;
    char p[512];
    in_dir(d, "keep.safetensors", p, sizeof p);
    uint8_t small[16] = {1, 2, 3};
    lq_st_wtensor t0 = {"old", LQ_ST_U8, 1, {16}, small};
    lq_err err = {0};
    assert_int_equal(lq_st_write(p, &t0, 1, NULL, 0, &err), LQ_OK);
    long old_size = file_size(p);
    FILE *fp = fopen(p, "rb");
    uint8_t old[256];
    assert_int_equal(fread(old, 1, (size_t)old_size, fp), (size_t)old_size);
    fclose(fp);

    size_t big_n = 1 << 20;
    uint8_t *big = calloc(big_n, 1);
    lq_st_wtensor t1 = {"new", LQ_ST_U8, 1, {(int64_t)big_n}, big};
    struct rlimit saved, lim;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &saved), 0);
    lim = saved;
    lim.rlim_cur = 64 * 1024;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    lq_status s = lq_st_write(p, &t1, 1, NULL, 0, &err);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &saved), 0);
    signal(SIGXFSZ, prev);
    free(big);
    if (s != LQ_ERR_IO) fail_msg("status %s (%s), want i/o error", lq_status_name(s), err.msg);
    assert_non_null(strstr(err.msg, p));
    assert_non_null(strstr(err.msg, strerror(EFBIG)));
    assert_int_equal(file_size(p), old_size);
    fp = fopen(p, "rb");
    uint8_t now[256];
    assert_int_equal(fread(now, 1, (size_t)old_size, fp), (size_t)old_size);
    fclose(fp);
    assert_memory_equal(now, old, (size_t)old_size);
    assert_int_equal(count_tmp_files(d->path), 0);
    /* and the old file still opens */
    lq_st_file *f = NULL;
    lq_err e2 = {0};
    assert_int_equal(lq_st_open(&f, p, &e2), LQ_OK);
    assert_non_null(lq_st_find(f, "old"));
    lq_st_close(f);
}

/* --- helper mode for tests/test_cli_quant.sh ------------------------------------------------- */

/* `test_io_safetensors --same-tensors A B [--subset]`: exit 0 when A and B hold the same tensors
 * (names, dtypes, shapes, bytes), whatever their order in the files; with --subset, every tensor
 * of B must be in A (A may hold more). Differences go to stderr. */
static int same_tensors(const char *pa, const char *pb, bool subset) {
    lq_st_file *a = NULL, *b = NULL;
    lq_err err = {0};
    if (lq_st_open(&a, pa, &err) != LQ_OK || lq_st_open(&b, pb, &err) != LQ_OK) {
        fprintf(stderr, "%s\n", err.msg);
        lq_st_close(a);
        return 2;
    }
    int bad = 0;
    if (!subset && lq_st_count(a) != lq_st_count(b)) {
        fprintf(stderr, "%s has %lld tensors, %s has %lld\n", pa, (long long)lq_st_count(a), pb, (long long)lq_st_count(b));
        bad++;
    }
    for (int64_t i = 0; i < lq_st_count(b); i++) {
        const lq_st_tensor *tb = lq_st_tensor_at(b, i), *ta = lq_st_find(a, tb->name);
        bool same = ta && ta->dtype == tb->dtype && ta->ndim == tb->ndim && ta->nbytes == tb->nbytes;
        for (int d = 0; same && d < ta->ndim; d++) same = ta->shape[d] == tb->shape[d];
        if (same && memcmp(ta->data, tb->data, ta->nbytes) == 0) continue;
        bad++;
        if (!ta) fprintf(stderr, "'%s' is missing from %s\n", tb->name, pa);
        else if (!same)
            fprintf(stderr, "'%s': %s %d-D in %s, %s %d-D in %s\n", tb->name, lq_st_dtype_name(ta->dtype), ta->ndim, pa,
                    lq_st_dtype_name(tb->dtype), tb->ndim, pb);
        else {
            int64_t k = 0;
            while (k < (int64_t)ta->nbytes && ((const uint8_t *)ta->data)[k] == ((const uint8_t *)tb->data)[k]) k++;
            fprintf(stderr, "'%s': bytes differ from byte %lld of %zu\n", tb->name, (long long)k, ta->nbytes);
        }
    }
    lq_st_close(a);
    lq_st_close(b);
    return bad ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[1], "--same-tensors") == 0)
        return same_tensors(argv[2], argv[3], argc > 4 && strcmp(argv[4], "--subset") == 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_reference_file),
        cmocka_unit_test(test_dtype_mapping),
        cmocka_unit_test(test_read_reference_shards),
        cmocka_unit_test_setup_teardown(test_write_round_trip_all_dtypes, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_sharded_index, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_hostile_headers, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_every_truncation, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_atomic_write_failures, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_atomic_failure_mid_write, setup_dir, teardown_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
