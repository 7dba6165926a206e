/* io/io.h: public API of io/: safetensors reading (mmap, validated) and writing, atomic files. */
#ifndef LQ_IO_H
#define LQ_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/status.h"
#include "quant/quant.h"

/* ---------------------------------------------------------------------------------------------
 * Atomic files. Bytes go to a temporary file beside the target (same directory, so rename is
 * atomic): ".<name>.<pid>.<n>.tmp", created O_EXCL with mode 0666 & ~umask. commit flushes,
 * fsyncs, closes, renames over the target and fsyncs the directory; abort (or any failed write
 * or commit) removes the temporary, so a crash or a full disk leaves the old file or the new one,
 * never part of one. Every failure is LQ_ERR_IO naming the path and strerror.
 * ------------------------------------------------------------------------------------------- */

typedef struct lq_atomic_file {
    FILE *f;
    char *path; /* the target */
    char *tmp;  /* the temporary, NULL once renamed or removed */
} lq_atomic_file;

lq_status lq_atomic_open(lq_atomic_file *af, const char *path, lq_err *err);
/* On failure the temporary is removed at once (af stays safe to abort). */
lq_status lq_atomic_write(lq_atomic_file *af, const void *data, size_t n, lq_err *err);
lq_status lq_atomic_commit(lq_atomic_file *af, lq_err *err);
/* Removes the temporary (if any) and frees af's strings; safe after commit and on a zeroed af. */
void lq_atomic_abort(lq_atomic_file *af);

/* ---------------------------------------------------------------------------------------------
 * safetensors: an 8-byte little-endian header length N, N bytes of JSON
 *   {"__metadata__": {"k": "v", ...}, "name": {"dtype": "F32", "shape": [..],
 *    "data_offsets": [begin, end]}, ...}
 * then the data section; offsets are relative to its start.
 *
 * What the reader accepts (the whole header is checked before any tensor is handed out):
 *  - N >= 2, N <= min(file size - 8, LQ_ST_MAX_HEADER); the header is UTF-8 JSON without NUL
 *    bytes, an object, optionally followed by spaces (writers pad it);
 *  - "__metadata__", if present, is an object of string values;
 *  - every other key is a tensor: an object with "dtype" (a name below), "shape" (an array of at
 *    most LQ_ST_MAX_DIMS non-negative integers, their product and byte size not overflowing) and
 *    "data_offsets" ([begin, end] integers, begin <= end, end - begin == numel * dtype size);
 *    other keys inside a tensor entry are ignored, as the reference implementation does;
 *  - names are unique and non-empty;
 *  - sorted by begin, the tensors tile the data section exactly, as the format requires: the
 *    first starts at 0, each starts where the previous ended (no overlap, no gap) and the last
 *    ends at the end of the file. Zero-size tensors may share an offset.
 * Every violation is LQ_ERR_INPUT with a message naming the file, the tensor or key, and what is
 * wrong. Tensor data pointers point into the read-only mapping: they are valid until close, and
 * need not be aligned for their dtype (use lq_st_to_f32 or memcpy to read them).
 * ------------------------------------------------------------------------------------------- */

#define LQ_ST_MAX_DIMS 8
#define LQ_ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000) /* bytes of header JSON */

typedef enum lq_st_dtype {
    LQ_ST_F64 = 0,
    LQ_ST_F32,
    LQ_ST_F16,
    LQ_ST_BF16,
    LQ_ST_I64,
    LQ_ST_I32,
    LQ_ST_I16,
    LQ_ST_I8,
    LQ_ST_U8,
    LQ_ST_BOOL,
    LQ_ST_F8_E4M3, /* recognised (the file opens, the bytes are there) but not converted */
    LQ_ST_F8_E5M2,
    LQ_ST_DTYPE_COUNT
} lq_st_dtype;

/* "F32" etc.; "invalid" outside the enum. */
const char *lq_st_dtype_name(lq_st_dtype t);
/* LQ_ST_DTYPE_COUNT for an unknown name. */
lq_st_dtype lq_st_dtype_from_name(const char *name);
/* Bytes per element; 0 outside the enum. */
size_t lq_st_dtype_size(lq_st_dtype t);
/* The loquat dtype with the same bytes: F32, F16, BF16, I32, U8 -> LQ_DTYPE_F32 ... and I8 ->
 * LQ_DTYPE_I8 (raw int8 codes); LQ_DTYPE_COUNT where loquat has none (F64, I64, I16, BOOL, F8). */
lq_dtype lq_st_dtype_to_lq(lq_st_dtype t);
/* The safetensors dtype for a loquat scalar dtype; LQ_ST_DTYPE_COUNT for block / 4-bit types. */
lq_st_dtype lq_st_dtype_from_lq(lq_dtype t);

typedef struct lq_st_tensor {
    const char *name;
    lq_st_dtype dtype;
    int ndim;
    int64_t shape[LQ_ST_MAX_DIMS];
    int64_t numel;
    size_t nbytes;
    const void *data; /* into the mapping; possibly unaligned */
} lq_st_tensor;

typedef struct lq_st_file lq_st_file;

/* Maps and validates one .safetensors file. */
lq_status lq_st_open(lq_st_file **out, const char *path, lq_err *err);
void lq_st_close(lq_st_file *f);
const char *lq_st_path(const lq_st_file *f);
int64_t lq_st_count(const lq_st_file *f);
/* Tensors in data order (ascending offset), 0 <= i < count; NULL outside. */
const lq_st_tensor *lq_st_tensor_at(const lq_st_file *f, int64_t i);
/* NULL if there is no tensor of that name. */
const lq_st_tensor *lq_st_find(const lq_st_file *f, const char *name);
/* The __metadata__ value for key, or NULL. */
const char *lq_st_metadata(const lq_st_file *f, const char *key);
int64_t lq_st_metadata_count(const lq_st_file *f);
/* Key and value of entry i (in header order); false outside. */
bool lq_st_metadata_at(const lq_st_file *f, int64_t i, const char **key, const char **value);

/* Converts a float tensor (F64, F32, F16, BF16) to n = numel floats (F64 rounds to nearest).
 * LQ_ERR_UNSUPPORTED (naming the tensor and dtype) for anything else. */
lq_status lq_st_to_f32(const lq_st_tensor *t, float *dst, lq_err *err);

/* Writing. Tensors are laid out in the order given; the header is padded with spaces so the data
 * starts at a multiple of 8 bytes; the file is written atomically (see above). Names must be
 * unique, non-empty and not "__metadata__"; data may be NULL only for zero-size tensors. */
typedef struct lq_st_wtensor {
    const char *name;
    lq_st_dtype dtype;
    int ndim;
    int64_t shape[LQ_ST_MAX_DIMS];
    const void *data; /* numel * lq_st_dtype_size(dtype) bytes */
} lq_st_wtensor;

typedef struct lq_st_kv {
    const char *key, *value;
} lq_st_kv;

lq_status lq_st_write(const char *path, const lq_st_wtensor *t, int64_t n, const lq_st_kv *meta, int64_t n_meta,
                      lq_err *err);

/* ---------------------------------------------------------------------------------------------
 * Sharded checkpoints. A model is a .safetensors file, a model.safetensors.index.json (whose
 * "weight_map" maps each tensor name to a shard file name in the same folder), or a folder
 * holding either (the index is preferred). Shard names must be plain file names (no '/'); every
 * weight_map entry must exist in its shard; a name may not appear in two shards. Tensors of a
 * shard that the weight_map omits are still found.
 * ------------------------------------------------------------------------------------------- */

typedef struct lq_st_model lq_st_model;

lq_status lq_st_model_open(lq_st_model **out, const char *path, lq_err *err);
void lq_st_model_close(lq_st_model *m);
int64_t lq_st_model_count(const lq_st_model *m);
int64_t lq_st_model_shard_count(const lq_st_model *m);
/* Shard i's file (0 <= i < shard count), for metadata lookups. */
const lq_st_file *lq_st_model_shard(const lq_st_model *m, int64_t i);
/* Tensors sorted by name. */
const lq_st_tensor *lq_st_model_tensor_at(const lq_st_model *m, int64_t i);
const lq_st_tensor *lq_st_model_find(const lq_st_model *m, const char *name);

#endif
