/* tests/test_io_gguf_hostile.c: the GGUF reader on every truncation of a real file and on ~35
 * crafted headers: each refused with LQ_ERR_INPUT (or UNSUPPORTED) and a message naming the file
 * and the problem, without a crash or an allocation sized from unchecked counts. */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/io.h"

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

/* --- hostile files ------------------------------------------------------------------------------ */

typedef struct bld {
    uint8_t b[4096];
    size_t n;
} bld;

static void b_raw(bld *b, const void *p, size_t n) {
    assert_true(b->n + n <= sizeof b->b);
    memcpy(b->b + b->n, p, n);
    b->n += n;
}
static void b_u32(bld *b, uint32_t v) { b_raw(b, &v, 4); }
static void b_u64(bld *b, uint64_t v) { b_raw(b, &v, 8); }
static void b_str(bld *b, const char *s) {
    b_u64(b, strlen(s));
    b_raw(b, s, strlen(s));
}

typedef struct tinfo {
    const char *name;
    uint32_t nd;
    uint64_t ne[5];
    uint32_t type;
    uint64_t off;
} tinfo;

/* A GGUF file: header (counts as claimed, or the real ones when the claim is ~0), the raw kv
 * bytes, the tensor infos, padding to 32 and data_len zero bytes. */
typedef struct gspec {
    const char *magic;
    uint32_t version;
    uint64_t n_kv_claim, n_t_claim;
    const bld *kv;
    int n_kv;
    tinfo t[3];
    int n_t;
    size_t data_len;
} gspec;

static void build(const gspec *g, bld *b) {
    b->n = 0;
    b_raw(b, g->magic ? g->magic : "GGUF", 4);
    b_u32(b, g->version ? g->version : 3);
    b_u64(b, g->n_t_claim != ~0ull ? g->n_t_claim : (uint64_t)g->n_t);
    b_u64(b, g->n_kv_claim != ~0ull ? g->n_kv_claim : (uint64_t)g->n_kv);
    if (g->kv) b_raw(b, g->kv->b, g->kv->n);
    for (int i = 0; i < g->n_t; i++) {
        b_str(b, g->t[i].name);
        b_u32(b, g->t[i].nd);
        for (uint32_t d = 0; d < g->t[i].nd && d < 5; d++) b_u64(b, g->t[i].ne[d]);
        b_u32(b, g->t[i].type);
        b_u64(b, g->t[i].off);
    }
    while (b->n % 32) b->b[b->n++] = 0;
    for (size_t i = 0; i < g->data_len; i++) b->b[b->n++] = 0;
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

/* Opens the bytes as a file: expects status want and a message holding the path and `needle`. */
static void expect_open(const void *p, size_t n, lq_status want, const char *needle, const char *what) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/lq_gguf_bad_%ld.gguf", (long)getpid());
    write_bytes(path, p, n);
    lq_gguf_file *f = NULL;
    lq_err err = {0};
    lq_status s = lq_gguf_open(&f, path, &err);
    unlink(path);
    if (s != want) {
        lq_gguf_close(f);
        fail_msg("%s: status %s, want %s (%s)", what, lq_status_name(s), lq_status_name(want), err.msg);
    }
    assert_null(f);
    if (!strstr(err.msg, path) || (needle && !strstr(err.msg, needle)))
        fail_msg("%s: message '%s' lacks the path or '%s'", what, err.msg, needle ? needle : "");
}

/* The valid base: one u32 kv, an f32 (2, 4) tensor at 0 and a q8_0 (32,) one at 32. */
static gspec base(bld *kv) {
    kv->n = 0;
    b_str(kv, "a.key");
    b_u32(kv, LQ_GGUF_UINT32);
    b_u32(kv, 7);
    gspec g = {.n_kv_claim = ~0ull, .n_t_claim = ~0ull, .kv = kv, .n_kv = 1, .n_t = 2, .data_len = 96};
    g.t[0] = (tinfo){"t0", 2, {4, 2}, 0, 0};
    g.t[1] = (tinfo){"t1", 1, {32}, 8, 32};
    return g;
}

static void test_every_truncation(void **state) {
    (void)state;
    char p[512];
    FILE *fp = fopen(fx("all_types.gguf", p, sizeof p), "rb");
    assert_non_null(fp);
    static uint8_t buf[1 << 14];
    size_t n = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    lq_gguf_file *f = open_ok(p);
    uint64_t end = 0; /* the end of the last tensor's data: any shorter file is broken */
    for (int64_t i = 0; i < lq_gguf_count(f); i++) {
        const lq_gguf_tensor *t = lq_gguf_tensor_at(f, i);
        if (t->offset + t->nbytes > end) end = t->offset + t->nbytes;
    }
    end += lq_gguf_data_offset(f);
    lq_gguf_close(f);
    assert_true(end <= n);
    for (size_t len = 0; len < end; len++) {
        char what[64];
        snprintf(what, sizeof what, "truncated to %zu bytes", len);
        expect_open(buf, len, LQ_ERR_INPUT, NULL, what);
    }
}

static void test_hostile_files(void **state) {
    (void)state;
    bld kv, out, k2;
    gspec g = base(&kv);
    build(&g, &out);
    { /* the base itself is valid */
        char path[64];
        snprintf(path, sizeof path, "/tmp/lq_gguf_base_%ld.gguf", (long)getpid());
        write_bytes(path, out.b, out.n);
        lq_gguf_file *f = open_ok(path);
        assert_int_equal(lq_gguf_count(f), 2);
        lq_gguf_close(f);
        unlink(path);
    }
#define EXPECT(want, needle, what)                          \
    do {                                                    \
        build(&g, &out);                                    \
        expect_open(out.b, out.n, want, needle, what);      \
        g = base(&kv);                                      \
    } while (0)
    g.magic = "GGUG";
    EXPECT(LQ_ERR_INPUT, "not a GGUF file", "bad magic");
    g.version = 1;
    EXPECT(LQ_ERR_INPUT, "version 1", "version 1");
    g.version = 4;
    EXPECT(LQ_ERR_INPUT, "version 4", "version 4");
    g.version = 0x03000000;
    EXPECT(LQ_ERR_INPUT, "big-endian", "big-endian");
    g.n_kv_claim = 1ull << 60;
    EXPECT(LQ_ERR_INPUT, "metadata count", "huge kv count");
    g.n_t_claim = 1ull << 60;
    EXPECT(LQ_ERR_INPUT, "tensor count", "huge tensor count");
    g.n_kv_claim = 2; /* the second kv reads tensor infos as a kv */
    EXPECT(LQ_ERR_INPUT, NULL, "kv count one too many");

    /* kv-level damage */
    k2.n = 0;
    b_u64(&k2, 1ull << 62);
    g.kv = &k2;
    EXPECT(LQ_ERR_INPUT, "string length", "key length past EOF");
    k2.n = 0;
    b_str(&k2, "s");
    b_u32(&k2, LQ_GGUF_STRING);
    b_u64(&k2, 5000);
    g.kv = &k2;
    EXPECT(LQ_ERR_INPUT, "string length", "string value past EOF");
    k2.n = 0;
    b_str(&k2, "arr");
    b_u32(&k2, LQ_GGUF_ARRAY);
    b_u32(&k2, LQ_GGUF_STRING);
    b_u64(&k2, 1ull << 60);
    g.kv = &k2;
    EXPECT(LQ_ERR_INPUT, "array of", "2^60 strings");
    k2.n = 0;
    b_str(&k2, "arr");
    b_u32(&k2, LQ_GGUF_ARRAY);
    b_u32(&k2, LQ_GGUF_UINT64);
    b_u64(&k2, (1ull << 61) + 1); /* n * 8 wraps around 64 bits */
    g.kv = &k2;
    EXPECT(LQ_ERR_INPUT, "array of", "u64 array whose byte count wraps");
    k2.n = 0;
    b_str(&k2, "t");
    b_u32(&k2, 13);
    g.kv = &k2;
    EXPECT(LQ_ERR_INPUT, "unknown value type 13", "bad value type");
    k2.n = 0;
    b_str(&k2, "arr");
    b_u32(&k2, LQ_GGUF_ARRAY);
    b_u32(&k2, 77);
    g.kv = &k2;
    EXPECT(LQ_ERR_INPUT, "element type 77", "bad array element type");
    k2.n = 0;
    b_str(&k2, "nest");
    b_u32(&k2, LQ_GGUF_ARRAY);
    b_u32(&k2, LQ_GGUF_ARRAY);
    b_u64(&k2, 1);
    g.kv = &k2;
    EXPECT(LQ_ERR_UNSUPPORTED, "arrays of arrays", "nested array");
    k2.n = 0;
    b_str(&k2, "");
    b_u32(&k2, LQ_GGUF_UINT8);
    b_raw(&k2, "x", 1);
    g.kv = &k2;
    EXPECT(LQ_ERR_INPUT, "empty", "empty key");
    k2.n = 0;
    for (int i = 0; i < 2; i++) {
        b_str(&k2, "dup");
        b_u32(&k2, LQ_GGUF_UINT8);
        b_raw(&k2, "x", 1);
    }
    g.kv = &k2;
    g.n_kv = 2;
    EXPECT(LQ_ERR_INPUT, "appears twice", "duplicate key");
    k2.n = 0;
    b_str(&k2, "general.alignment");
    b_u32(&k2, LQ_GGUF_UINT32);
    b_u32(&k2, 48);
    g.kv = &k2;
    EXPECT(LQ_ERR_INPUT, "power of two", "alignment 48");
    k2.n = 0;
    b_str(&k2, "general.alignment");
    b_u32(&k2, LQ_GGUF_UINT64);
    b_u64(&k2, 32);
    g.kv = &k2;
    EXPECT(LQ_ERR_INPUT, "not a uint32", "alignment as u64");

    /* tensor-info damage */
    g.t[0].nd = 0;
    EXPECT(LQ_ERR_INPUT, "n_dims 0", "n_dims 0");
    g.t[0].nd = 5;
    g.t[0].ne[2] = g.t[0].ne[3] = g.t[0].ne[4] = 1;
    EXPECT(LQ_ERR_INPUT, "n_dims 5", "n_dims 5");
    g.t[0].type = 4; /* removed Q4_2 */
    EXPECT(LQ_ERR_INPUT, "unknown ggml type id 4", "ggml type 4");
    g.t[0].type = 1000;
    EXPECT(LQ_ERR_INPUT, "unknown ggml type id 1000", "ggml type 1000");
    g.t[0].ne[0] = 1ull << 63;
    EXPECT(LQ_ERR_INPUT, "overflow", "dim 2^63");
    g.t[0].ne[0] = 1ull << 32;
    g.t[0].ne[1] = 1ull << 32;
    EXPECT(LQ_ERR_INPUT, "overflow", "element count 2^64");
    g.t[0].ne[0] = 1ull << 40;
    EXPECT(LQ_ERR_INPUT, "runs past", "data larger than the file");
    g.t[1].off = 16;
    EXPECT(LQ_ERR_INPUT, "not a multiple of the alignment", "misaligned offset");
    g.t[1].off = 1ull << 62;
    EXPECT(LQ_ERR_INPUT, "runs past", "offset 2^62");
    g.t[1].off = ~0ull - 31;
    EXPECT(LQ_ERR_INPUT, "runs past", "offset near 2^64");
    g.t[1].off = 64;
    EXPECT(LQ_ERR_INPUT, "runs past", "data past EOF");
    g.t[1].ne[0] = 16;
    EXPECT(LQ_ERR_INPUT, "block", "q8_0 row of 16");
    g.t[1].off = 0;
    EXPECT(LQ_ERR_INPUT, "overlaps", "overlapping tensors");
    g.t[1].name = "t0";
    EXPECT(LQ_ERR_INPUT, "appears twice", "duplicate tensor name");
    g.t[1].name = "";
    EXPECT(LQ_ERR_INPUT, "empty", "empty tensor name");
    g.t[1].name = "bad\xff";
    EXPECT(LQ_ERR_INPUT, "UTF-8", "non-UTF-8 tensor name");
    g.data_len = 32;
    EXPECT(LQ_ERR_INPUT, "runs past", "data section one tensor short");
#undef EXPECT
    /* not a file at all */
    lq_gguf_file *f = NULL;
    lq_err err = {0};
    assert_int_equal(lq_gguf_open(&f, "/nonexistent/x.gguf", &err), LQ_ERR_INPUT);
    assert_non_null(strstr(err.msg, "/nonexistent/x.gguf"));
    lq_err_clear(&err);
    assert_int_equal(lq_gguf_open(&f, "/tmp", &err), LQ_ERR_INPUT);
    assert_false(lq_gguf_sniff("/nonexistent/x.gguf"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_truncation),
        cmocka_unit_test(test_hostile_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
