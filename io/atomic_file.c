/* io/atomic_file.c: write a file under a temporary name, flush, fsync, rename, fsync the folder. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/io.h"

#define ATOMIC_MAX_TRIES 1000

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* Splits path into its folder ("." when none) and base name; false when out of memory. */
static bool split_path(const char *path, char **dir, const char **base) {
    const char *slash = strrchr(path, '/');
    if (!slash) {
        *dir = dup_str(".");
        *base = path;
    } else {
        size_t n = slash == path ? 1 : (size_t)(slash - path);
        *dir = malloc(n + 1);
        if (*dir) {
            memcpy(*dir, path, n);
            (*dir)[n] = '\0';
        }
        *base = slash + 1;
    }
    return *dir != NULL;
}

static void discard_tmp(lq_atomic_file *af) {
    if (af->f) {
        fclose(af->f);
        af->f = NULL;
    }
    if (af->tmp) {
        unlink(af->tmp);
        free(af->tmp);
        af->tmp = NULL;
    }
}

void lq_atomic_abort(lq_atomic_file *af) {
    if (!af) return;
    discard_tmp(af);
    free(af->path);
    af->path = NULL;
}

lq_status lq_atomic_open(lq_atomic_file *af, const char *path, lq_err *err) {
    memset(af, 0, sizeof *af);
    if (!path || !*path) return LQ_ERR(err, LQ_ERR_ARG, "atomic write: empty output path");
    char *dir = NULL;
    const char *base = NULL;
    if (!split_path(path, &dir, &base)) return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", path);
    if (!*base) {
        free(dir);
        return LQ_ERR(err, LQ_ERR_ARG, "%s: output path names a folder, not a file", path);
    }
    af->path = dup_str(path);
    size_t cap = strlen(dir) + strlen(base) + 64;
    af->tmp = malloc(cap);
    if (!af->path || !af->tmp) {
        free(dir);
        lq_atomic_abort(af);
        return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory", path);
    }
    int fd = -1, e = 0;
    for (int n = 0; n < ATOMIC_MAX_TRIES && fd < 0; n++) {
        snprintf(af->tmp, cap, "%s/.%s.%ld.%d.tmp", dir, base, (long)getpid(), n);
        fd = open(af->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        e = errno;
        if (fd < 0 && e != EEXIST) break;
    }
    free(dir);
    if (fd < 0) {
        free(af->tmp);
        af->tmp = NULL; /* nothing was created */
        lq_atomic_abort(af);
        return LQ_ERR(err, LQ_ERR_IO, "%s: cannot create a temporary file beside it: %s", path, strerror(e));
    }
    af->f = fdopen(fd, "wb");
    if (!af->f) {
        e = errno;
        close(fd);
        lq_atomic_abort(af);
        return LQ_ERR(err, LQ_ERR_IO, "%s: %s", path, strerror(e));
    }
    return LQ_OK;
}

lq_status lq_atomic_write(lq_atomic_file *af, const void *data, size_t n, lq_err *err) {
    if (!af->f) return LQ_ERR(err, LQ_ERR_STATE, "%s: write after the file was closed", af->path ? af->path : "?");
    if (n == 0) return LQ_OK;
    errno = 0;
    if (fwrite(data, 1, n, af->f) != n) {
        int e = errno ? errno : EIO;
        discard_tmp(af);
        return LQ_ERR(err, LQ_ERR_IO, "%s: write failed: %s", af->path, strerror(e));
    }
    return LQ_OK;
}

lq_status lq_atomic_commit(lq_atomic_file *af, lq_err *err) {
    if (!af->f) return LQ_ERR(err, LQ_ERR_STATE, "%s: commit after the file was closed", af->path ? af->path : "?");
    int e = 0;
    const char *what = NULL;
    errno = 0;
    if (fflush(af->f) != 0) e = errno, what = "flush";
    else if (fsync(fileno(af->f)) != 0) e = errno, what = "fsync";
    FILE *f = af->f;
    af->f = NULL;
    if (fclose(f) != 0 && !what) e = errno, what = "close";
    if (!what && rename(af->tmp, af->path) != 0) e = errno, what = "rename";
    if (what) {
        discard_tmp(af);
        return LQ_ERR(err, LQ_ERR_IO, "%s: %s failed: %s", af->path, what, strerror(e ? e : EIO));
    }
    free(af->tmp);
    af->tmp = NULL;
    /* The rename is durable once the folder's entry is on disk. */
    char *dir = NULL;
    const char *base = NULL;
    if (split_path(af->path, &dir, &base)) {
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            /* Some file systems refuse fsync on a folder (EINVAL); the data is already safe. */
            if (fsync(dfd) != 0 && errno != EINVAL && errno != EROFS) e = errno;
            close(dfd);
        }
        free(dir);
    }
    if (e) return LQ_ERR(err, LQ_ERR_IO, "%s: fsync of its folder failed: %s", af->path, strerror(e));
    return LQ_OK;
}
