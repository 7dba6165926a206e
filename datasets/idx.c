/* datasets/idx.c: MNIST-format IDX files (u8 images and labels), plain or gzip, read defensively. */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "datasets/datasets.h"

#define IDX_CHUNK ((size_t)1 << 20)

static uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* Reads exactly n bytes (or fewer at end of stream: *got says how many). */
static lq_status idx_read(gzFile f, const char *path, void *buf, size_t n, size_t *got, lq_err *err) {
    size_t done = 0;
    while (done < n) {
        size_t want = n - done > (size_t)INT_MAX / 2 ? (size_t)INT_MAX / 2 : n - done;
        int r = gzread(f, (uint8_t *)buf + done, (unsigned)want);
        if (r < 0) {
            int zerr = 0;
            const char *m = gzerror(f, &zerr);
            return LQ_ERR(err, zerr == Z_ERRNO ? LQ_ERR_IO : LQ_ERR_INPUT, "%s: read failed: %s", path,
                          zerr == Z_ERRNO ? strerror(errno) : m);
        }
        if (r == 0) break;
        done += (size_t)r;
    }
    *got = done;
    return LQ_OK;
}

/* Reads the header and the u8 payload; *data grows only as bytes actually arrive, so a header that
 * claims more than the (possibly compressed) file holds never causes a large allocation. */
static lq_status idx_load(const char *path, uint32_t want_magic, int want_ndim, int64_t dims[3], uint8_t **data,
                          lq_err *err) {
    *data = NULL;
    if (!path) return LQ_ERR(err, LQ_ERR_ARG, "IDX path is NULL");
    gzFile f = gzopen(path, "rb");
    if (!f) return LQ_ERR(err, errno == ENOENT ? LQ_ERR_INPUT : LQ_ERR_IO, "%s: cannot open: %s", path,
                          errno ? strerror(errno) : "out of memory");
    lq_status st = LQ_OK;
    uint8_t hdr[16];
    size_t hlen = 4 + 4 * (size_t)want_ndim, got = 0;
    uint8_t *buf = NULL;
    if ((st = idx_read(f, path, hdr, 4, &got, err)) != LQ_OK) goto done;
    if (got < 4) {
        st = LQ_ERR(err, LQ_ERR_INPUT, "%s: truncated IDX header (%zu bytes)", path, got);
        goto done;
    }
    uint32_t magic = be32(hdr);
    unsigned type = (magic >> 8) & 0xff; /* IDX types: 08 u8, 09 i8, 0B i16, 0C i32, 0D f32, 0E f64 */
    if ((magic >> 16) != 0 || !(type == 0x08 || type == 0x09 || (type >= 0x0b && type <= 0x0e))) {
        st = LQ_ERR(err, LQ_ERR_INPUT, "%s: bad IDX magic 0x%08x (want 0x%08x: %s)", path, magic, want_magic,
                    want_ndim == 1 ? "u8 labels" : "u8 images");
        goto done;
    }
    if (magic != want_magic) {
        st = LQ_ERR(err, LQ_ERR_INPUT, "%s: IDX type 0x%02x with %u dimensions; expected u8 (0x08) with %d",
                    path, type, magic & 0xff, want_ndim);
        goto done;
    }
    if ((st = idx_read(f, path, hdr + 4, hlen - 4, &got, err)) != LQ_OK) goto done;
    if (got < hlen - 4) {
        st = LQ_ERR(err, LQ_ERR_INPUT, "%s: truncated IDX header (dimensions)", path);
        goto done;
    }
    uint64_t total = 1;
    for (int i = 0; i < want_ndim; i++) {
        dims[i] = be32(hdr + 4 + 4 * i);
        if (i > 0 && dims[i] == 0) {
            st = LQ_ERR(err, LQ_ERR_INPUT, "%s: IDX dimension %d is 0", path, i);
            goto done;
        }
        total *= (uint64_t)dims[i]; /* each factor < 2^32; checked against the cap before the next */
        if (total > (uint64_t)LQ_IDX_MAX_BYTES) {
            st = LQ_ERR(err, LQ_ERR_INPUT, "%s: IDX dimensions claim more than %lld bytes", path,
                        (long long)LQ_IDX_MAX_BYTES);
            goto done;
        }
    }
    size_t cap = 0, have = 0;
    while (have < total) {
        size_t step = total - have < IDX_CHUNK ? (size_t)(total - have) : IDX_CHUNK;
        if (have + step > cap) {
            size_t ncap = cap ? cap * 2 : IDX_CHUNK;
            if (ncap > total) ncap = (size_t)total;
            uint8_t *nb = realloc(buf, ncap);
            if (!nb) {
                st = LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory reading %zu bytes", path, ncap);
                goto done;
            }
            buf = nb;
            cap = ncap;
        }
        if ((st = idx_read(f, path, buf + have, step, &got, err)) != LQ_OK) goto done;
        have += got;
        if (got < step) {
            st = LQ_ERR(err, LQ_ERR_INPUT, "%s: truncated: the header's dimensions need %llu data bytes, the file has %zu",
                        path, (unsigned long long)total, have);
            goto done;
        }
    }
    uint8_t extra;
    if ((st = idx_read(f, path, &extra, 1, &got, err)) != LQ_OK) goto done;
    if (got) {
        st = LQ_ERR(err, LQ_ERR_INPUT, "%s: trailing bytes after the %llu data bytes the header describes", path,
                    (unsigned long long)total);
        goto done;
    }
    if (!buf) buf = malloc(1); /* N == 0 */
    if (!buf) {
        st = LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", path);
        goto done;
    }
    *data = buf;
    buf = NULL;
done:
    free(buf);
    gzclose(f);
    return st;
}

lq_status lq_idx_load_images(const char *path, lq_idx_images *out, lq_err *err) {
    if (!out) return LQ_ERR(err, LQ_ERR_ARG, "lq_idx_load_images: out is NULL");
    memset(out, 0, sizeof *out);
    int64_t dims[3];
    uint8_t *raw = NULL;
    LQ_TRY(idx_load(path, 0x00000803u, 3, dims, &raw, err));
    size_t n = (size_t)(dims[0] * dims[1] * dims[2]);
    float *px = malloc((n ? n : 1) * sizeof *px);
    if (!px) {
        free(raw);
        return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory for %zu pixels", path, n);
    }
    for (size_t i = 0; i < n; i++) px[i] = (float)raw[i] / 255.0f;
    free(raw);
    out->n = dims[0];
    out->h = dims[1];
    out->w = dims[2];
    out->data = px;
    return LQ_OK;
}

lq_status lq_idx_load_labels(const char *path, lq_idx_labels *out, lq_err *err) {
    if (!out) return LQ_ERR(err, LQ_ERR_ARG, "lq_idx_load_labels: out is NULL");
    memset(out, 0, sizeof *out);
    int64_t dims[3];
    uint8_t *raw = NULL;
    LQ_TRY(idx_load(path, 0x00000801u, 1, dims, &raw, err));
    out->n = dims[0];
    out->data = raw;
    return LQ_OK;
}

void lq_idx_images_free(lq_idx_images *im) {
    if (!im) return;
    free(im->data);
    memset(im, 0, sizeof *im);
}

void lq_idx_labels_free(lq_idx_labels *lb) {
    if (!lb) return;
    free(lb->data);
    memset(lb, 0, sizeof *lb);
}
