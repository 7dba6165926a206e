/* tests/fuzz/fuzz_idx.c: libFuzzer target for the IDX reader (datasets/idx.c), plain and gzip.
 * The first input byte: bit 0 picks labels (1) or images (0); bit 1 writes the rest gzip-compressed
 * (so the gzip path sees meaningful payloads, not only broken streams). The rest is the file. */
#include <zlib.h>

#include "datasets/datasets.h"
#include "tests/fuzz/fuzz_util.h"

static volatile unsigned sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint8_t mode = data[0];
    const char *path;
    if (mode & 2) {
        path = fuzz_path("in.idx.gz");
        gzFile g = gzopen(path, "wb1");
        if (!g) abort();
        if (size > 1 && gzwrite(g, data + 1, (unsigned)(size - 1)) != (int)(size - 1)) abort();
        if (gzclose(g) != Z_OK) abort();
    } else {
        path = fuzz_write("in.idx.gz", data + 1, size - 1);
    }
    lq_err err;
    lq_err_clear(&err);
    if (mode & 1) {
        lq_idx_labels lb = {0};
        if (lq_idx_load_labels(path, &lb, &err) != LQ_OK) {
            fuzz_note(err.msg);
            if (err.status == LQ_OK || !strstr(err.msg, path)) abort();
        } else {
            if (lb.n < 0 || (lb.n > 0 && !lb.data)) abort();
            for (int64_t i = 0; i < lb.n; i++) sink += lb.data[i];
        }
        lq_idx_labels_free(&lb);
    } else {
        lq_idx_images im = {0};
        if (lq_idx_load_images(path, &im, &err) != LQ_OK) {
            fuzz_note(err.msg);
            if (err.status == LQ_OK || !strstr(err.msg, path)) abort();
        } else {
            if (im.n < 0 || im.h < 1 || im.w < 1) abort();
            for (int64_t i = 0; i < im.n * im.h * im.w; i++)
                if (!(im.data[i] >= 0.0f && im.data[i] <= 1.0f)) abort();
        }
        lq_idx_images_free(&im);
    }
    return 0;
}
