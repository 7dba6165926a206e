/* io/io.h: public API of io/: safetensors and GGUF reading (mmap, validated) and writing, atomic files. */
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

/* transformers' bitsandbytes 4-bit layout of one (rows, cols) weight W (io/st_bnb4.c), as a
 * Linear4bit state dict holds it (QuantState.as_dict(packed=True)): W (U8 [(n+1)/2, 1], two codes
 * per byte, element 2j high), W.absmax (F32 [blocks], or U8 with double quantization),
 * W.quant_map (F32 [16]), [W.nested_absmax (F32 [ceil(blocks / 256)]), W.nested_quant_map
 * (F32 [256])], W.quant_state.bitsandbytes__nf4|fp4 (U8: the JSON {"quant_type", "blocksize",
 * "dtype", "shape"[, "nested_blocksize", "nested_dtype", "nested_offset"]} as json.dumps writes
 * it). encode quantizes x (rows * cols floats) as lq_bnb4_quantize and fills out (names and
 * buffers owned by out, except where own[i] is false: the static code tables); y (optional) gets
 * the dequantized values. torch_dtype ("float32" ...) is the dtype the state records. */
#define LQ_ST_BNB4_MAX 6
typedef struct lq_st_bnb4 {
    lq_st_wtensor t[LQ_ST_BNB4_MAX];
    bool own[LQ_ST_BNB4_MAX]; /* t[i].data is owned (a caller taking it over clears the flag) */
    int n;
} lq_st_bnb4;
lq_status lq_st_bnb4_encode(lq_st_bnb4 *out, const char *name, lq_dtype type, const float *x, int64_t rows,
                            int64_t cols, int64_t block, bool double_quant, const char *torch_dtype, float *y,
                            lq_err *err);
void lq_st_bnb4_free(lq_st_bnb4 *b);
/* Python's repr(float(v)) (json.dumps): the shortest digits that read back to v, fixed notation
 * for decimal exponents in [-5, 16) ("2.0", "0.0001"), else "1.5e-05"; "null" for NaN / Inf.
 * Returns snprintf's count. */
int lq_py_float_repr(char *out, size_t cap, double v);

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

/* ---------------------------------------------------------------------------------------------
 * GGUF (versions 3 and 2; little-endian only): "GGUF", u32 version, u64 tensor count, u64 kv
 * count, the kvs (string key, u32 value type, value), the tensor infos (string name, u32 n_dims,
 * u64 ne[n_dims], u32 ggml type, u64 offset), padding to general.alignment (a u32 power of two,
 * default 32), then the data section; offsets are relative to its start. Strings are a u64 length
 * and that many bytes (no NUL).
 *
 * What the reader accepts (all checked before any tensor is handed out; every count, length and
 * offset is checked against the bytes left in the file before anything is allocated for it):
 *  - value types 0..12; arrays of any scalar type or of strings. Arrays of arrays are refused
 *    (LQ_ERR_UNSUPPORTED), as ggml's own reader does; keys are non-empty UTF-8, unique;
 *  - 1 <= n_dims <= LQ_GGUF_MAX_DIMS, every ne >= 0 (stored as u64 < 2^63), the element count
 *    and byte size not overflowing; ne[0] a multiple of the type's block size;
 *  - ggml type ids gguf-py knows (F32=0 ... Q1_0=41, see lq_gguf_ggml_type_name); those loquat has
 *    no dtype for (Q2_K, IQ*, ...) open with dtype LQ_DTYPE_COUNT (listed, not loadable);
 *  - offsets multiples of the alignment, data ranges inside the file, no two tensors overlapping;
 *    tensor names non-empty, unique.
 * Every violation is LQ_ERR_INPUT naming the file, the key or tensor, and what is wrong.
 *
 * Shapes: GGUF stores ne[] innermost first (ne[0] = row length, as ggml). lq_gguf_tensor keeps
 * that as `ne` and also gives `shape`, outermost first (PyTorch / loquat order): shape[i] =
 * ne[ndim - 1 - i]. A GGUF matrix with ne = {4096, 11008} is a (11008, 4096) tensor.
 * ------------------------------------------------------------------------------------------- */

#define LQ_GGUF_MAX_DIMS 4
#define LQ_GGUF_DEFAULT_ALIGNMENT 32

typedef enum lq_gguf_type {
    LQ_GGUF_UINT8 = 0,
    LQ_GGUF_INT8 = 1,
    LQ_GGUF_UINT16 = 2,
    LQ_GGUF_INT16 = 3,
    LQ_GGUF_UINT32 = 4,
    LQ_GGUF_INT32 = 5,
    LQ_GGUF_FLOAT32 = 6,
    LQ_GGUF_BOOL = 7,
    LQ_GGUF_STRING = 8,
    LQ_GGUF_ARRAY = 9,
    LQ_GGUF_UINT64 = 10,
    LQ_GGUF_INT64 = 11,
    LQ_GGUF_FLOAT64 = 12,
    LQ_GGUF_TYPE_COUNT
} lq_gguf_type;

/* "uint8" ... "float64"; "invalid" outside the enum. */
const char *lq_gguf_type_name(lq_gguf_type t);
/* "F32", "Q4_K", ... for a ggml type id gguf-py knows; NULL for any other id. */
const char *lq_gguf_ggml_type_name(uint32_t ggml_type);
/* The ggml type id for a loquat dtype (f32 f16 bf16 q4_0 ... q6_K); -1 where GGUF has none. */
int lq_gguf_ggml_type_from_lq(lq_dtype t);
/* The loquat dtype for a ggml type id; LQ_DTYPE_COUNT where loquat has none. */
lq_dtype lq_gguf_ggml_type_to_lq(uint32_t ggml_type);

typedef struct lq_gguf_str {
    const char *s; /* NUL-terminated copy (a string may hold NUL bytes itself: use len) */
    uint64_t len;
} lq_gguf_str;

/* One metadata entry. Scalars: the value is in v (u for unsigned, i for signed, f for floats, b,
 * s). Arrays: type = ARRAY, elem_type and n say what; numbers lie at arr (little-endian, packed,
 * possibly unaligned: read them with lq_gguf_kv_uint / _int / _float), strings at strs. */
typedef struct lq_gguf_kv {
    const char *key;
    lq_gguf_type type;
    lq_gguf_type elem_type; /* arrays only */
    uint64_t n;             /* arrays: element count; scalars: 1 */
    union {
        uint64_t u;
        int64_t i;
        double f;
        bool b;
        lq_gguf_str s;
    } v;
    const void *arr;
    const lq_gguf_str *strs;
} lq_gguf_kv;

/* Element i of a kv (i = 0 for a scalar) as a number; false when i is out of range or the type
 * does not match (uint: unsigned types and bool; int: every integer type whose value fits int64;
 * float: float32 / float64 and every integer type). */
bool lq_gguf_kv_uint(const lq_gguf_kv *kv, uint64_t i, uint64_t *out);
bool lq_gguf_kv_int(const lq_gguf_kv *kv, uint64_t i, int64_t *out);
bool lq_gguf_kv_float(const lq_gguf_kv *kv, uint64_t i, double *out);
/* Element i of a string kv (scalar or array); NULL otherwise. */
const lq_gguf_str *lq_gguf_kv_str(const lq_gguf_kv *kv, uint64_t i);

typedef struct lq_gguf_tensor {
    const char *name;
    uint32_t ggml_type;
    lq_dtype dtype; /* LQ_DTYPE_COUNT: a ggml type loquat cannot load */
    int ndim;
    int64_t ne[LQ_GGUF_MAX_DIMS];    /* GGUF order, innermost first; unused dims 1 */
    int64_t shape[LQ_GGUF_MAX_DIMS]; /* outermost first; unused dims 0 */
    int64_t numel;
    size_t nbytes;
    uint64_t offset;  /* in the data section */
    const void *data; /* into the read-only mapping, aligned to the file's alignment */
} lq_gguf_tensor;

typedef struct lq_gguf_file lq_gguf_file;

/* True when the first 4 bytes of the file are "GGUF" (false for any error). */
bool lq_gguf_sniff(const char *path);
lq_status lq_gguf_open(lq_gguf_file **out, const char *path, lq_err *err);
void lq_gguf_close(lq_gguf_file *f);
const char *lq_gguf_path(const lq_gguf_file *f);
uint32_t lq_gguf_version(const lq_gguf_file *f);
uint32_t lq_gguf_alignment(const lq_gguf_file *f);
uint64_t lq_gguf_data_offset(const lq_gguf_file *f); /* file offset of the data section */

/* Metadata in file order. */
int64_t lq_gguf_kv_count(const lq_gguf_file *f);
const lq_gguf_kv *lq_gguf_kv_at(const lq_gguf_file *f, int64_t i);
const lq_gguf_kv *lq_gguf_find_kv(const lq_gguf_file *f, const char *key);
/* Typed getters: LQ_ERR_INPUT naming the file and key when it is missing, has another type, or
 * its value does not fit (integers of any width convert when the value fits; f32 takes float32,
 * float64 and integers). */
lq_status lq_gguf_get_u32(const lq_gguf_file *f, const char *key, uint32_t *out, lq_err *err);
lq_status lq_gguf_get_i32(const lq_gguf_file *f, const char *key, int32_t *out, lq_err *err);
lq_status lq_gguf_get_u64(const lq_gguf_file *f, const char *key, uint64_t *out, lq_err *err);
lq_status lq_gguf_get_f32(const lq_gguf_file *f, const char *key, float *out, lq_err *err);
lq_status lq_gguf_get_bool(const lq_gguf_file *f, const char *key, bool *out, lq_err *err);
lq_status lq_gguf_get_str(const lq_gguf_file *f, const char *key, const char **out, lq_err *err);
/* An array's length and element type (LQ_ERR_INPUT if missing or not an array). */
lq_status lq_gguf_get_arr(const lq_gguf_file *f, const char *key, uint64_t *n, lq_gguf_type *elem_type, lq_err *err);

/* Tensors in file (tensor-info) order. */
int64_t lq_gguf_count(const lq_gguf_file *f);
const lq_gguf_tensor *lq_gguf_tensor_at(const lq_gguf_file *f, int64_t i);
const lq_gguf_tensor *lq_gguf_find(const lq_gguf_file *f, const char *name);
/* Dequantizes a tensor loquat has a dtype for to numel floats; LQ_ERR_UNSUPPORTED otherwise. */
lq_status lq_gguf_to_f32(const lq_gguf_tensor *t, float *dst, lq_err *err);

/* Writing (version 3, alignment 32, atomically as above). kvs: scalars take their value from v
 * (u for unsigned types, i for signed ones, f for floats, b, s for a NUL-terminated string);
 * arrays (type ARRAY) have elem_type, n and arr: n packed little-endian numbers (bool: 1 byte),
 * or n `const char *` for strings. A value that does not fit its type is LQ_ERR_ARG. Tensors:
 * shape outermost first (as lq_gguf_tensor.shape), dtype any with a ggml id, data numel's bytes;
 * the innermost dim must be a multiple of the block size. Keys and names unique, non-empty. */
typedef struct lq_gguf_wkv {
    const char *key;
    lq_gguf_type type;
    union {
        uint64_t u;
        int64_t i;
        double f;
        bool b;
        const char *s;
    } v;
    lq_gguf_type elem_type;
    uint64_t n;
    const void *arr;
} lq_gguf_wkv;

typedef struct lq_gguf_wtensor {
    const char *name;
    lq_dtype dtype;
    int ndim;
    int64_t shape[LQ_GGUF_MAX_DIMS];
    const void *data;
} lq_gguf_wtensor;

lq_status lq_gguf_write(const char *path, const lq_gguf_wkv *kv, int64_t n_kv, const lq_gguf_wtensor *t, int64_t n,
                        lq_err *err);

/* ---------------------------------------------------------------------------------------------
 * Hugging Face config.json for the Llama family: model_type "llama" (also SmolLM / SmolLM2,
 * which ship as llama), "mistral" and "qwen2". Both spellings transformers has written are read:
 * transformers 5's "rope_parameters" {"rope_type", "rope_theta", ...} and the older top-level
 * "rope_theta" with "rope_scaling" {"rope_type" or "type", ...} (null = none).
 *
 * Required: model_type, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
 * vocab_size. Optional, with transformers' defaults (a JSON null counts as absent):
 * num_key_value_heads (= heads), head_dim (= hidden / heads), rms_norm_eps (1e-6), rope_theta
 * (10000), max_position_embeddings (llama 2048, mistral 131072, qwen2 32768), tie_word_embeddings
 * (false), attention_bias / mlp_bias (llama only, false), bos / eos_token_id (an integer or a list;
 * llama and mistral 1 / 2, qwen2 none), dtype or torch_dtype ("float32", "float16", "bfloat16"),
 * sliding_window (mistral 4096, null = none; qwen2 only when use_sliding_window is true),
 * hidden_act ("silu" is the only one accepted).
 * Biases as the models build them: llama q/k/v/o = attention_bias, gate/up/down = mlp_bias;
 * mistral none; qwen2 q/k/v always, o and MLP never.
 * RoPE: rope_type "default", "linear" {factor} or "llama3" {factor, low_freq_factor,
 * high_freq_factor, original_max_position_embeddings (default max_position_embeddings)}; other
 * types (yarn, dynamic, longrope), per-layer rope_parameters and partial_rotary_factor != 1 are
 * refused. Every violation (missing key, wrong JSON type, non-positive or non-integer size, heads
 * not dividing hidden without head_dim, kv heads not dividing heads, odd head_dim, unknown
 * model_type) is LQ_ERR_INPUT naming the file and the key.
 * ------------------------------------------------------------------------------------------- */

#define LQ_LLAMA_MAX_TOKEN_IDS 8
#define LQ_HF_CONFIG_MAX_BYTES ((size_t)16 << 20)

typedef enum lq_llama_arch { LQ_LLAMA_ARCH_LLAMA = 0, LQ_LLAMA_ARCH_MISTRAL, LQ_LLAMA_ARCH_QWEN2, LQ_LLAMA_ARCH_COUNT } lq_llama_arch;

typedef enum lq_rope_type { LQ_ROPE_DEFAULT = 0, LQ_ROPE_LINEAR, LQ_ROPE_LLAMA3, LQ_ROPE_TYPE_COUNT } lq_rope_type;

typedef struct lq_llama_config {
    lq_llama_arch arch;
    int64_t hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim;
    int64_t vocab_size, max_position_embeddings;
    int64_t sliding_window; /* 0 = full attention */
    double rms_norm_eps;
    double rope_theta;
    lq_rope_type rope_type;
    double rope_factor;                  /* linear, llama3; 1 for default */
    double rope_low_freq_factor, rope_high_freq_factor; /* llama3 */
    int64_t rope_original_max_position;  /* llama3 */
    bool tie_word_embeddings;
    bool qkv_bias, o_bias, mlp_bias;
    int n_bos, n_eos;
    int64_t bos_token_id[LQ_LLAMA_MAX_TOKEN_IDS], eos_token_id[LQ_LLAMA_MAX_TOKEN_IDS];
    lq_dtype dtype; /* LQ_DTYPE_F32 / F16 / BF16, or LQ_DTYPE_COUNT when the file names none */
} lq_llama_config;

/* "llama", "mistral", "qwen2"; "invalid" outside the enum. */
const char *lq_llama_arch_name(lq_llama_arch a);
/* "default", "linear", "llama3"; "invalid" outside the enum. */
const char *lq_rope_type_name(lq_rope_type t);
/* Parses len bytes of JSON; name (the file, for messages) may be NULL. */
lq_status lq_llama_config_parse(lq_llama_config *cfg, const char *json, size_t len, const char *name, lq_err *err);
/* path: a config.json, or a folder holding one. */
lq_status lq_llama_config_load(lq_llama_config *cfg, const char *path, lq_err *err);
/* The head_dim / 2 RoPE inverse frequencies into out, in float32 as transformers computes them:
 * theta^-(2i/d) (the power rounded once from double), divided by factor for linear, and the
 * llama3 wavelength-band rescaling. LQ_ERR_ARG for NULL or an invalid config. */
lq_status lq_llama_rope_inv_freq(const lq_llama_config *cfg, float *out);
/* The scaling step alone, in place on head_dim / 2 unscaled frequencies (a no-op for default). */
lq_status lq_llama_rope_scale_inv_freq(const lq_llama_config *cfg, float *inv_freq);

/* ---------------------------------------------------------------------------------------------
 * HDF5 listing (io/hdf5_inspect.c, read-only, for `loquat inspect`): every object reached by a
 * link from the root, in name order (H5Lvisit): the root group "/" first, then "/a", "/a/b"...;
 * each object's attributes follow it (kind LQ_H5_ATTR, path = the owner, name = the attribute).
 * Soft and external links are listed (LQ_H5_LINK), not followed. dtype: int8..int64,
 * uint8..uint64, float16/32/64, string, compound, enum, ...; bytes = elements * type size (the
 * logical size, not the compressed storage). An attribute's value is kept as JSON text for a
 * string (cut at 200 bytes, "..." marking the cut) or a numeric one of at most
 * LQ_H5_VALUES_SHOWN elements (a scalar as a number, more as [a, b]); NULL otherwise. Any HDF5
 * failure is LQ_ERR_INPUT naming the file, the call and HDF5's reason; HDF5's own error printing
 * is switched off during the call (and restored after).
 * ------------------------------------------------------------------------------------------- */

#define LQ_H5_MAX_DIMS 32
#define LQ_H5_VALUES_SHOWN 8

typedef enum lq_h5_kind { LQ_H5_GROUP, LQ_H5_DATASET, LQ_H5_ATTR, LQ_H5_LINK, LQ_H5_OTHER } lq_h5_kind;

typedef struct lq_h5_entry {
    lq_h5_kind kind;
    char *path;    /* "/", "/model/w" (for an attribute: its object) */
    char *name;    /* the attribute's name, else NULL */
    char dtype[32]; /* "" for groups */
    int ndim;      /* datasets and attributes; 0 = scalar */
    int64_t shape[LQ_H5_MAX_DIMS];
    int64_t numel;
    uint64_t bytes;
    char *value; /* attributes: JSON text of the value, or NULL */
} lq_h5_entry;

typedef struct lq_h5_listing {
    int64_t n;
    lq_h5_entry *e;
} lq_h5_listing;

lq_status lq_h5_list(const char *path, lq_h5_listing *out, lq_err *err);
void lq_h5_listing_free(lq_h5_listing *l);

#endif
