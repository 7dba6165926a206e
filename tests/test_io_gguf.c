/* tests/test_io_gguf.c: GGUF reader on files gguf-py wrote, writer round trips (hostile files:
 * test_io_gguf_hostile.c). */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/io.h"

/* --- helpers ---------------------------------------------------------------------------------- */

static const char *fx(const char *name, char *buf, size_t n) {
    char rel[128];
    snprintf(rel, sizeof rel, "gguf/%s", name);
    return lq_fixture_path(rel, buf, n);
}

static lq_gguf_file *open_ok(const char *path) {
    lq_gguf_file *f = NULL;
    lq_err err = {0};
    lq_status s = lq_gguf_open(&f, path, &err);
    if (s != LQ_OK) fail_msg("%s", err.msg);
    return f;
}

static const lq_gguf_kv *kv_ok(const lq_gguf_file *f, const char *key, lq_gguf_type type) {
    const lq_gguf_kv *kv = lq_gguf_find_kv(f, key);
    if (!kv) fail_msg("key %s missing", key);
    assert_int_equal(kv->type, type);
    return kv;
}

/* Copies every kv and tensor of in into a new file out with lq_gguf_write. */
static lq_status copy_gguf(const char *in, const char *out, lq_err *err) {
    lq_gguf_file *f = NULL;
    LQ_TRY(lq_gguf_open(&f, in, err));
    int64_t nkv = lq_gguf_kv_count(f), n = lq_gguf_count(f);
    lq_gguf_wkv *w = calloc((size_t)nkv + 1, sizeof *w);
    lq_gguf_wtensor *t = calloc((size_t)n + 1, sizeof *t);
    const char ***strs = calloc((size_t)nkv + 1, sizeof *strs);
    lq_status s = w && t && strs ? LQ_OK : LQ_ERR(err, LQ_ERR_OOM, "out of memory");
    for (int64_t i = 0; i < nkv && s == LQ_OK; i++) {
        const lq_gguf_kv *kv = lq_gguf_kv_at(f, i);
        w[i].key = kv->key;
        w[i].type = kv->type;
        if (kv->type == LQ_GGUF_STRING) w[i].v.s = kv->v.s.s;
        else if (kv->type == LQ_GGUF_FLOAT32 || kv->type == LQ_GGUF_FLOAT64) w[i].v.f = kv->v.f;
        else if (kv->type == LQ_GGUF_BOOL) w[i].v.b = kv->v.b;
        else if (kv->type != LQ_GGUF_ARRAY) w[i].v.u = kv->v.u;
        else {
            w[i].elem_type = kv->elem_type;
            w[i].n = kv->n;
            w[i].arr = kv->arr;
            if (kv->elem_type == LQ_GGUF_STRING) {
                strs[i] = calloc(kv->n + 1, sizeof **strs);
                for (uint64_t j = 0; strs[i] && j < kv->n; j++) strs[i][j] = kv->strs[j].s;
                w[i].arr = strs[i];
            }
        }
    }
    for (int64_t i = 0; i < n && s == LQ_OK; i++) {
        const lq_gguf_tensor *x = lq_gguf_tensor_at(f, i);
        t[i] = (lq_gguf_wtensor){x->name, x->dtype, x->ndim, {0}, x->data};
        memcpy(t[i].shape, x->shape, sizeof t[i].shape);
    }
    if (s == LQ_OK) s = lq_gguf_write(out, w, nkv, t, n, err);
    for (int64_t i = 0; strs && i < nkv; i++) free(strs[i]);
    free(strs);
    free(w);
    free(t);
    lq_gguf_close(f);
    return s;
}

/* --- files written by gguf-py ----------------------------------------------------------------- */

static void test_read_metadata(void **state) {
    (void)state;
    char p[512];
    lq_gguf_file *f = open_ok(fx("all_types.gguf", p, sizeof p));
    assert_int_equal(lq_gguf_version(f), 3);
    assert_int_equal(lq_gguf_alignment(f), 32);
    assert_int_equal(lq_gguf_data_offset(f) % 32, 0);
    assert_int_equal(lq_gguf_kv_count(f), 26);
    assert_string_equal(lq_gguf_kv_at(f, 0)->key, "general.architecture");
    lq_err err = {0};
    const char *s = NULL;
    assert_int_equal(lq_gguf_get_str(f, "general.architecture", &s, &err), LQ_OK);
    assert_string_equal(s, "llama");
    assert_int_equal(kv_ok(f, "test.u8", LQ_GGUF_UINT8)->v.u, 200);
    assert_int_equal(kv_ok(f, "test.i8", LQ_GGUF_INT8)->v.i, -100);
    assert_int_equal(kv_ok(f, "test.u16", LQ_GGUF_UINT16)->v.u, 60000);
    assert_int_equal(kv_ok(f, "test.i16", LQ_GGUF_INT16)->v.i, -30000);
    assert_int_equal(kv_ok(f, "test.u32", LQ_GGUF_UINT32)->v.u, 4000000000u);
    assert_int_equal(kv_ok(f, "test.i32", LQ_GGUF_INT32)->v.i, -2000000000);
    assert_true(kv_ok(f, "test.f32", LQ_GGUF_FLOAT32)->v.f == 3.25);
    assert_true(kv_ok(f, "test.bool", LQ_GGUF_BOOL)->v.b);
    assert_false(kv_ok(f, "test.bool_false", LQ_GGUF_BOOL)->v.b);
    assert_string_equal(kv_ok(f, "test.str", LQ_GGUF_STRING)->v.s.s, "h\xc3\xa9llo w\xc3\xb6rld");
    assert_true(kv_ok(f, "test.u64", LQ_GGUF_UINT64)->v.u == (1ull << 63) + 5);
    assert_true(kv_ok(f, "test.i64", LQ_GGUF_INT64)->v.i == -(1ll << 62) - 3);
    assert_true(kv_ok(f, "test.f64", LQ_GGUF_FLOAT64)->v.f == 2.718281828459045);
    /* typed getters, with conversions and refusals */
    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    float f32;
    bool b;
    assert_int_equal(lq_gguf_get_u32(f, "test.u8", &u32, &err), LQ_OK);
    assert_int_equal(u32, 200);
    assert_int_equal(lq_gguf_get_i32(f, "test.i16", &i32, &err), LQ_OK);
    assert_int_equal(i32, -30000);
    assert_int_equal(lq_gguf_get_u64(f, "test.u64", &u64, &err), LQ_OK);
    assert_true(u64 == (1ull << 63) + 5);
    assert_int_equal(lq_gguf_get_f32(f, "test.f32", &f32, &err), LQ_OK);
    assert_true(f32 == 3.25f);
    assert_int_equal(lq_gguf_get_bool(f, "test.bool", &b, &err), LQ_OK);
    assert_true(b);
    assert_int_equal(lq_gguf_get_i32(f, "test.u32", &i32, &err), LQ_ERR_INPUT); /* 4e9 does not fit */
    assert_non_null(strstr(err.msg, "test.u32"));
    lq_err_clear(&err);
    assert_int_equal(lq_gguf_get_u32(f, "test.i8", &u32, &err), LQ_ERR_INPUT); /* negative */
    lq_err_clear(&err);
    assert_int_equal(lq_gguf_get_u32(f, "no.such.key", &u32, &err), LQ_ERR_INPUT);
    assert_non_null(strstr(err.msg, "no.such.key"));
    lq_err_clear(&err);
    assert_int_equal(lq_gguf_get_str(f, "test.u8", &s, &err), LQ_ERR_INPUT);
    lq_err_clear(&err);
    /* arrays */
    uint64_t n;
    lq_gguf_type et;
    assert_int_equal(lq_gguf_get_arr(f, "test.arr_f32", &n, &et, &err), LQ_OK);
    assert_int_equal(n, 20);
    assert_int_equal(et, LQ_GGUF_FLOAT32);
    double d;
    for (uint64_t i = 0; i < n; i++) {
        assert_true(lq_gguf_kv_float(lq_gguf_find_kv(f, "test.arr_f32"), i, &d));
        assert_true(d == 0.5 * (double)i - 3);
    }
    assert_false(lq_gguf_kv_float(lq_gguf_find_kv(f, "test.arr_f32"), 20, &d));
    const lq_gguf_kv *kv = kv_ok(f, "test.arr_str", LQ_GGUF_ARRAY);
    assert_int_equal(kv->elem_type, LQ_GGUF_STRING);
    assert_int_equal(kv->n, 5);
    const char *want[] = {"a", "", "\xc3\xbcn\xc3\xaf", "tok en", "\xe2\x96\x81the"};
    for (int i = 0; i < 5; i++) {
        assert_string_equal(lq_gguf_kv_str(kv, (uint64_t)i)->s, want[i]);
        assert_int_equal(lq_gguf_kv_str(kv, (uint64_t)i)->len, strlen(want[i]));
    }
    assert_null(lq_gguf_kv_str(kv, 5));
    int64_t iv;
    uint64_t uv;
    kv = kv_ok(f, "test.arr_i8", LQ_GGUF_ARRAY);
    assert_true(lq_gguf_kv_int(kv, 0, &iv) && iv == -128);
    assert_true(lq_gguf_kv_int(kv, 2, &iv) && iv == 127);
    assert_false(lq_gguf_kv_uint(kv, 0, &uv));
    kv = kv_ok(f, "test.arr_u64", LQ_GGUF_ARRAY);
    assert_true(lq_gguf_kv_uint(kv, 1, &uv) && uv == UINT64_MAX);
    assert_false(lq_gguf_kv_int(kv, 1, &iv));
    kv = kv_ok(f, "test.arr_i64", LQ_GGUF_ARRAY);
    assert_true(lq_gguf_kv_int(kv, 0, &iv) && iv == INT64_MIN);
    assert_true(lq_gguf_kv_int(kv, 1, &iv) && iv == INT64_MAX);
    kv = kv_ok(f, "test.arr_bool", LQ_GGUF_ARRAY);
    assert_true(lq_gguf_kv_uint(kv, 0, &uv) && uv == 1);
    assert_true(lq_gguf_kv_uint(kv, 1, &uv) && uv == 0);
    kv = kv_ok(f, "test.arr_u16", LQ_GGUF_ARRAY);
    assert_true(lq_gguf_kv_uint(kv, 1, &uv) && uv == 65535);
    kv = kv_ok(f, "test.arr_i16", LQ_GGUF_ARRAY);
    assert_true(lq_gguf_kv_int(kv, 0, &iv) && iv == -32768);
    kv = kv_ok(f, "test.arr_u32", LQ_GGUF_ARRAY);
    assert_true(lq_gguf_kv_uint(kv, 1, &uv) && uv == 4294967295u);
    kv = kv_ok(f, "test.arr_f64", LQ_GGUF_ARRAY);
    assert_true(lq_gguf_kv_float(kv, 2, &d) && d == 1e300);
    lq_gguf_close(f);
}

/* Every tensor of a fixture against gguf-py's view of it: shape, bytes, dequantized floats. */
static void check_tensors(const char *file, int64_t want_n) {
    char p[512], q[512];
    lq_gguf_file *f = open_ok(fx(file, p, sizeof p));
    lq_fixture *ex = lq_fixture_load(fx("expect.lqfx", q, sizeof q));
    assert_int_equal(lq_gguf_count(f), want_n);
    for (int64_t i = 0; i < lq_gguf_count(f); i++) {
        const lq_gguf_tensor *t = lq_gguf_tensor_at(f, i);
        assert_ptr_equal(lq_gguf_find(f, t->name), t);
        const lq_fx_tensor *ef = lq_fixture_find(ex, "%s/%s/f32", file, t->name);
        const lq_fx_tensor *eb = lq_fixture_find(ex, "%s/%s/bytes", file, t->name);
        if (!ef || !eb) fail_msg("no expectation for %s/%s", file, t->name);
        assert_int_equal(t->ndim, ef->ndim);
        for (int d = 0; d < t->ndim; d++) {
            assert_int_equal(t->shape[d], ef->shape[d]);
            assert_int_equal(t->ne[d], ef->shape[t->ndim - 1 - d]);
        }
        assert_int_equal(t->numel, ef->numel);
        assert_int_equal(t->nbytes, eb->numel);
        assert_memory_equal(t->data, eb->data, t->nbytes);
        assert_int_equal(((uintptr_t)t->data - (uintptr_t)t->data + t->offset) % lq_gguf_alignment(f), 0);
        assert_int_not_equal(t->dtype, LQ_DTYPE_COUNT);
        assert_int_equal(lq_gguf_ggml_type_from_lq(t->dtype), (int)t->ggml_type);
        float *y = malloc((size_t)t->numel * sizeof *y);
        lq_err err = {0};
        assert_int_equal(lq_gguf_to_f32(t, y, &err), LQ_OK);
        float *want = malloc((size_t)t->numel * sizeof *want); /* LQFX records need not be aligned */
        memcpy(want, ef->data, (size_t)t->numel * sizeof *want);
        assert_allclose(y, want, t->numel, 0, 0, t->name); /* bit-exact */
        free(want);
        free(y);
    }
    lq_fixture_free(ex);
    lq_gguf_close(f);
}

static void test_read_tensors(void **state) {
    (void)state;
    check_tensors("all_types.gguf", 7);
    check_tensors("align64.gguf", 2);
    char p[512];
    lq_gguf_file *f = open_ok(fx("all_types.gguf", p, sizeof p));
    const lq_gguf_tensor *t = lq_gguf_find(f, "q4k.weight");
    assert_non_null(t);
    assert_int_equal(t->ggml_type, 12);
    assert_int_equal(t->dtype, LQ_DTYPE_Q4_K);
    assert_int_equal(t->shape[0], 2);
    assert_int_equal(t->shape[1], 256);
    assert_int_equal(t->nbytes, 288);
    t = lq_gguf_find(f, "attn.bias");
    assert_int_equal(t->ndim, 3);
    assert_int_equal(t->ne[0], 4);
    assert_int_equal(t->shape[0], 2);
    assert_null(lq_gguf_find(f, "nope"));
    assert_string_equal(lq_gguf_ggml_type_name(30), "BF16");
    assert_null(lq_gguf_ggml_type_name(4));
    assert_int_equal(lq_gguf_ggml_type_to_lq(10), LQ_DTYPE_COUNT); /* Q2_K: listed, not loadable */
    lq_gguf_close(f);
    f = open_ok(fx("align64.gguf", p, sizeof p));
    assert_int_equal(lq_gguf_alignment(f), 64);
    assert_int_equal(lq_gguf_data_offset(f) % 64, 0);
    assert_int_equal(lq_gguf_tensor_at(f, 1)->offset, 64);
    lq_gguf_close(f);
}

/* --- writer ------------------------------------------------------------------------------------ */

static void same_files(const char *pa, const char *pb) {
    lq_gguf_file *a = open_ok(pa), *b = open_ok(pb);
    assert_int_equal(lq_gguf_kv_count(a), lq_gguf_kv_count(b));
    for (int64_t i = 0; i < lq_gguf_kv_count(a); i++) {
        const lq_gguf_kv *x = lq_gguf_kv_at(a, i), *y = lq_gguf_kv_at(b, i);
        assert_string_equal(x->key, y->key);
        assert_int_equal(x->type, y->type);
        assert_int_equal(x->n, y->n);
        if (x->type == LQ_GGUF_STRING) {
            assert_string_equal(x->v.s.s, y->v.s.s);
        } else if (x->type == LQ_GGUF_ARRAY) {
            assert_int_equal(x->elem_type, y->elem_type);
            for (uint64_t j = 0; j < x->n; j++) {
                if (x->elem_type == LQ_GGUF_STRING) assert_string_equal(lq_gguf_kv_str(x, j)->s, lq_gguf_kv_str(y, j)->s);
            }
            for (uint64_t j = 0; x->elem_type != LQ_GGUF_STRING && j < x->n; j++) {
                double dx, dy;
                uint64_t ux, uy;
                int64_t ix, iy;
                if (lq_gguf_kv_float(x, j, &dx)) assert_true(lq_gguf_kv_float(y, j, &dy) && memcmp(&dx, &dy, 8) == 0);
                if (lq_gguf_kv_uint(x, j, &ux)) assert_true(lq_gguf_kv_uint(y, j, &uy) && ux == uy);
                if (lq_gguf_kv_int(x, j, &ix)) assert_true(lq_gguf_kv_int(y, j, &iy) && ix == iy);
            }
        } else {
            assert_memory_equal(&x->v, &y->v, sizeof(uint64_t));
        }
    }
    assert_int_equal(lq_gguf_count(a), lq_gguf_count(b));
    for (int64_t i = 0; i < lq_gguf_count(a); i++) {
        const lq_gguf_tensor *x = lq_gguf_tensor_at(a, i), *y = lq_gguf_tensor_at(b, i);
        assert_string_equal(x->name, y->name);
        assert_int_equal(x->ggml_type, y->ggml_type);
        assert_int_equal(x->ndim, y->ndim);
        assert_memory_equal(x->ne, y->ne, sizeof x->ne);
        assert_int_equal(x->nbytes, y->nbytes);
        assert_memory_equal(x->data, y->data, x->nbytes);
    }
    lq_gguf_close(a);
    lq_gguf_close(b);
}

static void test_write_round_trip(void **state) {
    (void)state;
    char p[512], out[64], out2[64];
    snprintf(out, sizeof out, "/tmp/lq_gguf_rt_%ld.gguf", (long)getpid());
    snprintf(out2, sizeof out2, "/tmp/lq_gguf_rt2_%ld.gguf", (long)getpid());
    lq_err err = {0};
    assert_int_equal(copy_gguf(fx("all_types.gguf", p, sizeof p), out, &err), LQ_OK);
    same_files(p, out);
    /* a copy of the copy is byte-identical */
    assert_int_equal(copy_gguf(out, out2, &err), LQ_OK);
    char *b1 = NULL, *b2 = NULL;
    size_t n1 = 0, n2 = 0;
    FILE *f1 = fopen(out, "rb"), *f2 = fopen(out2, "rb");
    assert_non_null(f1);
    assert_non_null(f2);
    b1 = malloc(1 << 16);
    b2 = malloc(1 << 16);
    n1 = fread(b1, 1, 1 << 16, f1);
    n2 = fread(b2, 1, 1 << 16, f2);
    fclose(f1);
    fclose(f2);
    assert_int_equal(n1, n2);
    assert_memory_equal(b1, b2, n1);
    free(b1);
    free(b2);
    unlink(out2);

    /* things gguf-py cannot write: an empty array, an empty string, a 4-D tensor, every dtype */
    static const int32_t none[1] = {0};
    float x[2 * 3 * 32 * 2];
    for (int i = 0; i < 384; i++) x[i] = (float)i * 0.25f - 7;
    uint16_t h[64];
    for (int i = 0; i < 64; i++) h[i] = lq_f32_to_f16((float)i / 8);
    lq_gguf_wkv kv[] = {
        {.key = "e.arr", .type = LQ_GGUF_ARRAY, .elem_type = LQ_GGUF_INT32, .n = 0, .arr = none},
        {.key = "e.str", .type = LQ_GGUF_STRING, .v.s = ""},
        {.key = "e.neg", .type = LQ_GGUF_INT16, .v.i = -7},
        {.key = "general.alignment", .type = LQ_GGUF_UINT32, .v.u = 32},
    };
    lq_gguf_wtensor t[] = {
        {"x4d", LQ_DTYPE_F32, 4, {2, 3, 32, 2}, x},
        {"h", LQ_DTYPE_F16, 2, {2, 32}, h},
        {"empty", LQ_DTYPE_F32, 2, {0, 4}, NULL},
    };
    assert_int_equal(lq_gguf_write(out, kv, 4, t, 3, &err), LQ_OK);
    lq_gguf_file *f = open_ok(out);
    assert_int_equal(kv_ok(f, "e.arr", LQ_GGUF_ARRAY)->n, 0);
    assert_int_equal(kv_ok(f, "e.str", LQ_GGUF_STRING)->v.s.len, 0);
    assert_int_equal(kv_ok(f, "e.neg", LQ_GGUF_INT16)->v.i, -7);
    const lq_gguf_tensor *r = lq_gguf_find(f, "x4d");
    assert_int_equal(r->ndim, 4);
    assert_int_equal(r->ne[0], 2);
    assert_int_equal(r->ne[3], 2);
    assert_int_equal(r->shape[2], 32);
    assert_memory_equal(r->data, x, sizeof x);
    assert_memory_equal(lq_gguf_find(f, "h")->data, h, sizeof h);
    assert_int_equal(lq_gguf_find(f, "empty")->nbytes, 0);
    lq_gguf_close(f);

    /* writer refusals */
    lq_gguf_wkv dup[] = {{.key = "k", .type = LQ_GGUF_UINT8, .v.u = 1}, {.key = "k", .type = LQ_GGUF_UINT8, .v.u = 2}};
    assert_int_equal(lq_gguf_write(out, dup, 2, NULL, 0, &err), LQ_ERR_ARG);
    assert_non_null(strstr(err.msg, "appears twice"));
    lq_err_clear(&err);
    lq_gguf_wkv big = {.key = "k", .type = LQ_GGUF_UINT8, .v.u = 256};
    assert_int_equal(lq_gguf_write(out, &big, 1, NULL, 0, &err), LQ_ERR_ARG);
    lq_err_clear(&err);
    lq_gguf_wkv al = {.key = "general.alignment", .type = LQ_GGUF_UINT32, .v.u = 64};
    assert_int_equal(lq_gguf_write(out, &al, 1, NULL, 0, &err), LQ_ERR_UNSUPPORTED);
    lq_err_clear(&err);
    lq_gguf_wtensor bad_block = {"q", LQ_DTYPE_Q8_0, 2, {2, 16}, x};
    assert_int_equal(lq_gguf_write(out, NULL, 0, &bad_block, 1, &err), LQ_ERR_ARG);
    assert_non_null(strstr(err.msg, "block"));
    lq_err_clear(&err);
    lq_gguf_wtensor nf4 = {"q", LQ_DTYPE_NF4, 1, {64}, x};
    assert_int_equal(lq_gguf_write(out, NULL, 0, &nf4, 1, &err), LQ_ERR_UNSUPPORTED);
    lq_err_clear(&err);
    lq_gguf_wtensor dupt[] = {{"a", LQ_DTYPE_F32, 1, {2}, x}, {"a", LQ_DTYPE_F32, 1, {2}, x}};
    assert_int_equal(lq_gguf_write(out, NULL, 0, dupt, 2, &err), LQ_ERR_ARG);
    /* the failed writes left the good file alone */
    f = open_ok(out);
    assert_int_equal(lq_gguf_count(f), 3);
    lq_gguf_close(f);
    unlink(out);
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "--copy") == 0) {
        lq_err err = {0};
        if (copy_gguf(argv[2], argv[3], &err) != LQ_OK) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_metadata),
        cmocka_unit_test(test_read_tensors),
        cmocka_unit_test(test_write_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
