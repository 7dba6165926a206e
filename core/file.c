/* core/file.c: reading a whole user file into memory, checked. */
#include "core/file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

lq_status lq_read_file(const char *path, int64_t max_bytes, const char *what, char **out, size_t *len, lq_err *err) {
    *out = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return LQ_ERR(err, LQ_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: not a regular file", path);
    }
    if ((int64_t)sb.st_size > max_bytes) {
        fclose(f);
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: %lld bytes is more than the %lld %s may have", path,
                      (long long)sb.st_size, (long long)max_bytes, what);
    }
    size_t n = (size_t)sb.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        fclose(f);
        return LQ_ERR(err, LQ_ERR_OOM, "%s: out of memory for %zu bytes", path, n);
    }
    size_t got = fread(buf, 1, n, f);
    int rerr = ferror(f);
    fclose(f);
    if (got != n || rerr) {
        free(buf);
        return LQ_ERR(err, LQ_ERR_IO, "%s: read %zu of %zu bytes", path, got, n);
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return LQ_OK;
}

lq_status lq_map_file(const char *path, size_t min_bytes, const char *too_short, void **map, size_t *size,
                      lq_err *err) {
    *map = NULL;
    *size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return LQ_ERR(err, LQ_ERR_INPUT, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: not a regular file", path);
    }
    if ((size_t)st.st_size < min_bytes) {
        close(fd);
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: %lld bytes is too short for %s", path, (long long)st.st_size,
                      too_short);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) return LQ_ERR(err, LQ_ERR_IO, "%s: mmap failed: %s", path, strerror(e));
    *map = p;
    *size = (size_t)st.st_size;
    return LQ_OK;
}
