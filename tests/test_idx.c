/* tests/test_idx.c: the IDX loader on committed fixtures (plain and gzip), hostile files, and the
 * real Fashion-MNIST when tools/fetch_fashion_mnist.sh has put it in the cache. */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "datasets/datasets.h"

static void check_images(const char *rel) {
    char p[512];
    lq_err err = {0};
    lq_idx_images im;
    lq_status st = lq_idx_load_images(lq_fixture_path(rel, p, sizeof p), &im, &err);
    if (st != LQ_OK) fail_msg("%s: %s", rel, err.msg);
    assert_int_equal(im.n, 3);
    assert_int_equal(im.h, 4);
    assert_int_equal(im.w, 5);
    for (int i = 0; i < 3; i++)
        for (int y = 0; y < 4; y++)
            for (int x = 0; x < 5; x++) {
                float want = (float)((31 * i + 7 * y + x) % 256) / 255.0f;
                assert_true(im.data[(i * 4 + y) * 5 + x] == want);
            }
    lq_idx_images_free(&im);
    assert_null(im.data);
}

static void check_labels(const char *rel) {
    char p[512];
    lq_err err = {0};
    lq_idx_labels lb;
    lq_status st = lq_idx_load_labels(lq_fixture_path(rel, p, sizeof p), &lb, &err);
    if (st != LQ_OK) fail_msg("%s: %s", rel, err.msg);
    assert_int_equal(lb.n, 3);
    assert_int_equal(lb.data[0], 7);
    assert_int_equal(lb.data[1], 2);
    assert_int_equal(lb.data[2], 9);
    lq_idx_labels_free(&lb);
}

static void test_fixtures(void **state) {
    (void)state;
    check_images("idx/images.idx");
    check_images("idx/images.idx.gz");
    check_labels("idx/labels.idx");
    check_labels("idx/labels.idx.gz");
}

/* Writes bytes to a temp file (gzip-compressed when gz) and returns its path in buf. */
static const char *write_tmp(char *buf, size_t n, const void *data, size_t len, int gz) {
    snprintf(buf, n, "/tmp/lq_test_idx_XXXXXX");
    int fd = mkstemp(buf);
    assert_true(fd >= 0);
    close(fd);
    if (gz) {
        gzFile f = gzopen(buf, "wb");
        assert_non_null(f);
        if (len) assert_int_equal(gzwrite(f, data, (unsigned)len), (int)len);
        gzclose(f);
    } else {
        FILE *f = fopen(buf, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(data, 1, len, f), len);
        fclose(f);
    }
    return buf;
}

static size_t put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
    return 4;
}

/* An image file: magic, dims, then `payload` bytes of data. */
static size_t make_images(uint8_t *b, uint32_t magic, uint32_t n, uint32_t h, uint32_t w, size_t payload) {
    size_t o = 0;
    o += put32(b + o, magic);
    o += put32(b + o, n);
    o += put32(b + o, h);
    o += put32(b + o, w);
    memset(b + o, 0x80, payload);
    return o + payload;
}

static void expect_bad(const uint8_t *data, size_t len, int images, const char *needle) {
    for (int gz = 0; gz < 2; gz++) {
        char path[64];
        write_tmp(path, sizeof path, data, len, gz);
        lq_err err = {0};
        lq_status st;
        if (images) {
            lq_idx_images im;
            st = lq_idx_load_images(path, &im, &err);
            assert_null(im.data);
        } else {
            lq_idx_labels lb;
            st = lq_idx_load_labels(path, &lb, &err);
            assert_null(lb.data);
        }
        if (st != LQ_ERR_INPUT) fail_msg("expected LQ_ERR_INPUT (%s), got %s: %s", needle, lq_status_name(st), err.msg);
        if (!strstr(err.msg, needle) || !strstr(err.msg, path)) fail_msg("message lacks '%s' or the path: %s", needle, err.msg);
        unlink(path);
    }
}

static void test_hostile(void **state) {
    (void)state;
    uint8_t b[256];
    size_t len;
    len = make_images(b, 0x12345678u, 1, 2, 2, 4);
    expect_bad(b, len, 1, "bad IDX magic");
    len = make_images(b, 0x00000D03u, 1, 2, 2, 4); /* f32 images */
    expect_bad(b, len, 1, "IDX type 0x0d");
    len = make_images(b, 0x00000803u, 1, 2, 2, 4);
    expect_bad(b, len, 0, "IDX type 0x08 with 3 dimensions"); /* images given as labels */
    len = make_images(b, 0x00000803u, 2, 2, 2, 7);              /* one byte short */
    expect_bad(b, len, 1, "truncated");
    len = make_images(b, 0x00000803u, 2, 2, 2, 9); /* one byte too many */
    expect_bad(b, len, 1, "trailing bytes");
    len = make_images(b, 0x00000803u, 1, 0, 2, 0);
    expect_bad(b, len, 1, "dimension 1 is 0");
    len = make_images(b, 0x00000803u, 0xffffffffu, 0xffffffffu, 0xffffffffu, 4); /* overflow */
    expect_bad(b, len, 1, "claim more than");
    len = make_images(b, 0x00000803u, 60000, 28, 28, 16); /* big claim, tiny file */
    expect_bad(b, len, 1, "truncated");
    expect_bad(b, 3, 1, "truncated IDX header");
    expect_bad(b, 10, 1, "truncated IDX header (dimensions)");
    expect_bad(b, 0, 0, "truncated IDX header");

    /* A gzip stream cut in the middle. */
    char path[64], gzp[64];
    len = make_images(b, 0x00000803u, 4, 4, 4, 64);
    write_tmp(gzp, sizeof gzp, b, len, 1);
    FILE *f = fopen(gzp, "rb");
    uint8_t z[512];
    size_t zl = fread(z, 1, sizeof z, f);
    fclose(f);
    write_tmp(path, sizeof path, z, zl / 2, 0);
    lq_err err = {0};
    lq_idx_images im;
    lq_status st = lq_idx_load_images(path, &im, &err);
    assert_int_equal(st, LQ_ERR_INPUT);
    assert_non_null(strstr(err.msg, path));
    unlink(path);
    unlink(gzp);

    /* Missing file. */
    lq_err_clear(&err);
    assert_int_equal(lq_idx_load_images("/nonexistent/lq_idx", &im, &err), LQ_ERR_INPUT);
    assert_non_null(strstr(err.msg, "/nonexistent/lq_idx"));
}

/* The real data set, if cached. */
static void test_fashion_mnist(void **state) {
    (void)state;
    char dir[512], p[640];
    lq_cache_path("data/fashion-mnist", dir, sizeof dir);
    snprintf(p, sizeof p, "%s/t10k-labels-idx1-ubyte.gz", dir);
    if (access(p, R_OK) != 0) {
        print_message("Fashion-MNIST not in %s (run tools/fetch_fashion_mnist.sh): skipped\n", dir);
        skip();
    }
    static const struct {
        const char *set;
        int64_t n;
    } sets[] = {{"train", 60000}, {"t10k", 10000}};
    for (int s = 0; s < 2; s++) {
        lq_err err = {0};
        lq_idx_images im;
        lq_idx_labels lb;
        snprintf(p, sizeof p, "%s/%s-images-idx3-ubyte.gz", dir, sets[s].set);
        if (lq_idx_load_images(p, &im, &err) != LQ_OK) fail_msg("%s", err.msg);
        snprintf(p, sizeof p, "%s/%s-labels-idx1-ubyte.gz", dir, sets[s].set);
        if (lq_idx_load_labels(p, &lb, &err) != LQ_OK) fail_msg("%s", err.msg);
        assert_int_equal(im.n, sets[s].n);
        assert_int_equal(lb.n, sets[s].n);
        assert_int_equal(im.h, 28);
        assert_int_equal(im.w, 28);
        int64_t count[10] = {0};
        for (int64_t i = 0; i < lb.n; i++) {
            assert_true(lb.data[i] <= 9);
            count[lb.data[i]]++;
        }
        for (int c = 0; c < 10; c++) assert_int_equal(count[c], sets[s].n / 10); /* balanced classes */
        float lo = 1, hi = 0;
        for (int64_t i = 0; i < im.n * 28 * 28; i++) {
            lo = im.data[i] < lo ? im.data[i] : lo;
            hi = im.data[i] > hi ? im.data[i] : hi;
        }
        assert_true(lo == 0.0f && hi == 1.0f);
        lq_idx_images_free(&im);
        lq_idx_labels_free(&lb);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixtures),
        cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_fashion_mnist),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
