/* core/file.h: reading a whole user file into memory, with the checks every loader needs. */
#ifndef LQ_CORE_FILE_H
#define LQ_CORE_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

/* Reads the regular file at path into a new NUL-terminated buffer (free() it) of *len bytes.
 * A missing or unreadable path, a non-regular file or one larger than max_bytes is LQ_ERR_INPUT
 * with a message naming the path (and `what` the file is meant to be, e.g. "a tokenizer.json");
 * a short read is LQ_ERR_IO. */
lq_status lq_read_file(const char *path, int64_t max_bytes, const char *what, char **out, size_t *len, lq_err *err);

/* Maps the regular file at path read-only (*map, *size; munmap(*map, *size) to release). A file
 * shorter than min_bytes is LQ_ERR_INPUT, its message naming `too_short` (what the bytes are
 * needed for); open / stat errors are LQ_ERR_INPUT, a failed mmap LQ_ERR_IO. */
lq_status lq_map_file(const char *path, size_t min_bytes, const char *too_short, void **map, size_t *size,
                      lq_err *err);

#endif
