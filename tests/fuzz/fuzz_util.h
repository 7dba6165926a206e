/* tests/fuzz/fuzz_util.h: helpers the fuzz targets share (one per-process scratch file or folder
 * in /dev/shm, rewritten for every input; a byte reader over the input), header-only. */
#ifndef LQ_FUZZ_UTIL_H
#define LQ_FUZZ_UTIL_H

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A folder for scratch files: /dev/shm when it is there (no disk writes at 10^4 inputs/s), else
 * $TMPDIR, else /tmp. */
static inline const char *fuzz_tmp_root(void) {
    struct stat sb;
    if (stat("/dev/shm", &sb) == 0 && S_ISDIR(sb.st_mode) && access("/dev/shm", W_OK) == 0) return "/dev/shm";
    const char *t = getenv("TMPDIR");
    return t && *t ? t : "/tmp";
}

/* The per-process scratch folder (created on first use, removed with its files at exit). */
static char fuzz_dir_[512];
static char fuzz_files_[8][640];
static int fuzz_n_files_;

static inline void fuzz_cleanup_(void) {
    for (int i = 0; i < fuzz_n_files_; i++) unlink(fuzz_files_[i]);
    if (fuzz_dir_[0]) rmdir(fuzz_dir_);
}

static inline const char *fuzz_dir(void) {
    if (!fuzz_dir_[0]) {
        snprintf(fuzz_dir_, sizeof fuzz_dir_, "%s/lq_fuzz.XXXXXX", fuzz_tmp_root());
        if (!mkdtemp(fuzz_dir_)) {
            fprintf(stderr, "fuzz: cannot create a scratch folder %s: %s\n", fuzz_dir_, strerror(errno));
            abort();
        }
        atexit(fuzz_cleanup_);
    }
    return fuzz_dir_;
}

/* The path of scratch file `name` in the scratch folder (the same string for every call). */
static inline const char *fuzz_path(const char *name) {
    const char *d = fuzz_dir();
    char p[640];
    snprintf(p, sizeof p, "%s/%s", d, name);
    for (int i = 0; i < fuzz_n_files_; i++)
        if (strcmp(fuzz_files_[i], p) == 0) return fuzz_files_[i];
    if (fuzz_n_files_ == (int)(sizeof fuzz_files_ / sizeof *fuzz_files_)) abort();
    memcpy(fuzz_files_[fuzz_n_files_], p, sizeof p);
    return fuzz_files_[fuzz_n_files_++];
}

/* Writes n bytes as scratch file `name` (replacing it); returns its path. A failed write is a
 * harness failure, not a finding: abort with the reason. */
static inline const char *fuzz_write(const char *name, const void *data, size_t n) {
    const char *p = fuzz_path(name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "fuzz: cannot create %s: %s\n", p, strerror(errno));
        abort();
    }
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, (const char *)data + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            fprintf(stderr, "fuzz: cannot write %s: %s\n", p, strerror(errno));
            abort();
        }
        done += (size_t)w;
    }
    close(fd);
    return p;
}

/* Removes scratch file `name` if it is there. */
static inline void fuzz_remove(const char *name) { unlink(fuzz_path(name)); }

/* With LQ_FUZZ_VERBOSE set, prints why an input was refused (to check that seeds get as far as
 * they should). */
static inline void fuzz_note(const char *msg) {
    static int verbose = -1;
    if (verbose < 0) verbose = getenv("LQ_FUZZ_VERBOSE") != NULL;
    if (verbose) fprintf(stderr, "refused: %s\n", msg);
}

/* Reads the input front to back: fixed-size fields, then the rest. Past the end every read
 * gives zeros (a short input is still a valid one). */
typedef struct fuzz_in {
    const uint8_t *p;
    size_t n;
} fuzz_in;

static inline uint8_t fuzz_u8(fuzz_in *in) {
    if (!in->n) return 0;
    in->n--;
    return *in->p++;
}

static inline uint32_t fuzz_u32(fuzz_in *in) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)fuzz_u8(in) << (8 * i);
    return v;
}

static inline uint64_t fuzz_u64(fuzz_in *in) {
    uint64_t lo = fuzz_u32(in);
    return lo | (uint64_t)fuzz_u32(in) << 32;
}

/* Up to max bytes (as many as are left); *len gets the count. */
static inline const uint8_t *fuzz_bytes(fuzz_in *in, size_t max, size_t *len) {
    size_t k = in->n < max ? in->n : max;
    const uint8_t *p = in->p;
    in->p += k;
    in->n -= k;
    *len = k;
    return p;
}

/* Finds the first occurrence of the separator sep (of sl bytes) in data; n (no separator) if none. */
static inline size_t fuzz_split(const uint8_t *data, size_t n, const char *sep, size_t sl) {
    if (sl == 0 || n < sl) return n;
    for (size_t i = 0; i + sl <= n; i++)
        if (memcmp(data + i, sep, sl) == 0) return i;
    return n;
}

/* The config targets' overrides: after the YAML's yl bytes, NUL-separated "key=value" pieces, up to
 * max, as malloc'd NUL-terminated strings in sets; returns their count (free each). */
static inline int fuzz_sets(const uint8_t *data, size_t size, size_t yl, char **sets, int max) {
    int n = 0;
    size_t at = yl + 1;
    while (at <= size && n < max) {
        size_t k = at < size ? fuzz_split(data + at, size - at, "", 1) : 0;
        if (!(sets[n] = malloc(k + 1))) abort();
        memcpy(sets[n], data + at, k);
        sets[n][k] = 0;
        n++;
        at += k + 1;
    }
    return n;
}

#endif
