/* io/io_impl.h: private helpers shared by the files of io/. */
#ifndef LQ_IO_IMPL_H
#define LQ_IO_IMPL_H

#include <stdbool.h>
#include <stddef.h>

#include "io/io.h"

/* True when s[0..n) is well-formed UTF-8 (no overlongs, no surrogates, nothing past U+10FFFF)
 * and holds no NUL byte. */
bool lq_io_utf8_ok(const char *s, size_t n);

/* Reads a whole regular file of at most max_bytes into a NUL-terminated buffer (free it).
 * LQ_ERR_INPUT for a missing, unreadable, non-regular or too large file (naming it). */
lq_status lq_io_read_file(const char *path, size_t max_bytes, char **out, size_t *len, lq_err *err);

#endif
