/* core/file.c: reading a whole user file into memory, checked. */
#include "core/file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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
