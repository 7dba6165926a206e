/* datasets/datasets.h: public API of datasets/: the byte-level BPE tokenizer and chat templates. */
#ifndef LQ_DATASETS_H
#define LQ_DATASETS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

/* ---------------------------------------------------------------------------------------------
 * Tokenizer: byte-level BPE read from a Hugging Face tokenizer.json (GPT-2, Llama 3, SmolLM,
 * Qwen-without-NFC style), giving the ids the `tokenizers` library gives.
 *
 * What the loader accepts (anything else is LQ_ERR_INPUT naming the file and key, or
 * LQ_ERR_UNSUPPORTED naming the feature):
 *  - "model": an object, "type" absent or "BPE"; "vocab" an object of token -> integer id in
 *    [0, LQ_TOK_MAX_ID), tokens unique and non-empty, ids unique (holes allowed, but the largest
 *    id below 2 * (vocab + added tokens) + 1024); "merges" an array of "a b"
 *    strings (exactly one space) or ["a", "b"] pairs, a, b and a+b all in the vocab, the rank
 *    being the index (a repeated pair keeps its last rank, as tokenizers does); "unk_token" null
 *    or a vocab token; "ignore_merges" (a word found whole in the vocab is one token);
 *    "dropout", "continuing_subword_prefix", "end_of_word_suffix" null/empty and "byte_fallback"
 *    false (others: LQ_ERR_UNSUPPORTED).
 *  - "added_tokens": objects with "id" and "content" (+ "special", "lstrip", "rstrip",
 *    "single_word", "normalized"); an id a vocab token also uses must carry the same content.
 *  - "normalizer": null only (NFC etc. are LQ_ERR_UNSUPPORTED).
 *  - "pre_tokenizer": null, "Split" (pattern {"Regex": r} or {"String": s}, every "behavior",
 *    "invert"), "ByteLevel" ("add_prefix_space", "use_regex" = the GPT-2 regex; last),
 *    "Digits" ("individual_digits"), or a "Sequence" of these. Regexes run with PCRE2 in UTF +
 *    UCP mode. Without a ByteLevel step the model sees UTF-8 characters, not bytes (as
 *    tokenizers does); a character with no token and no unk_token is dropped, as there.
 *  - "post_processor": null, "ByteLevel" (ids unchanged), "TemplateProcessing" (its "single"
 *    template: special tokens before / after $A, applied when add_special is set), or a
 *    "Sequence" of these. "decoder" is not read: decoding is always byte-level.
 *
 * Encoding: added tokens are matched first (leftmost-longest; those with normalized=false, then
 * the others, as tokenizers does; lstrip/rstrip take the adjacent whitespace; a single_word
 * token is skipped next to a word character: ASCII letters, digits, '_' and every non-ASCII
 * character from U+00AA up, an approximation of tokenizers' rule), the rest goes
 * through the pre-tokenizer and BPE merges by rank (a heap: O(n log n) per word).
 * Invalid UTF-8 in the text is not an error: every maximal invalid subsequence is replaced by
 * U+FFFD before encoding, exactly as Python's bytes.decode("utf-8", "replace") does (so the ids
 * equal tokenizers' for that decoded string). A NUL byte is an ordinary character.
 * A tokenizer is immutable after loading: encode/decode may run from many threads at once.
 * ------------------------------------------------------------------------------------------- */

#define LQ_TOK_MAX_ID (1 << 24)                        /* ids must lie below this */
#define LQ_TOK_MAX_FILE ((int64_t)512 * 1024 * 1024) /* bytes of tokenizer.json */

typedef struct lq_tokenizer lq_tokenizer;

/* Reads and validates a tokenizer.json. */
lq_status lq_tokenizer_load(lq_tokenizer **out, const char *path, lq_err *err);
/* As load, from JSON text in memory; name is used in messages. */
lq_status lq_tokenizer_from_json(lq_tokenizer **out, const char *json, size_t len, const char *name,
                                 lq_err *err);
void lq_tokenizer_free(lq_tokenizer *tok);

/* 1 + the largest id (vocab and added tokens); ids below it may be holes (no token). */
int32_t lq_tokenizer_n_ids(const lq_tokenizer *tok);
/* Id of a token (added tokens first, then the model vocab; the byte-level form, e.g. "Ġthe"), or -1. */
int32_t lq_tokenizer_token_to_id(const lq_tokenizer *tok, const char *token);
/* The token's string (byte-level form), or NULL for a hole or an id out of range. */
const char *lq_tokenizer_id_to_token(const lq_tokenizer *tok, int32_t id);
/* Whether id is an added token marked special. */
bool lq_tokenizer_is_special(const lq_tokenizer *tok, int32_t id);

/* Encodes len bytes of text; *ids (malloc'd, free with free(); never NULL on success) gets *n ids.
 * add_special applies the post-processor's template (e.g. a BOS token). */
lq_status lq_tokenizer_encode(const lq_tokenizer *tok, const char *text, size_t len, bool add_special,
                              int32_t **ids, size_t *n, lq_err *err);
/* Decodes ids to the bytes they stand for (*out malloc'd and NUL-terminated, *out_len without the
 * NUL). The bytes of a partial sequence are returned as they are: they need not be valid UTF-8
 * (use lq_utf8_lossy to get what tokenizers' decode returns). skip_special drops special added
 * tokens. An id outside [0, n_ids) or a hole is LQ_ERR_ARG. */
lq_status lq_tokenizer_decode(const lq_tokenizer *tok, const int32_t *ids, size_t n, bool skip_special,
                              char **out, size_t *out_len, lq_err *err);

/* Copies s with every maximal invalid UTF-8 subsequence replaced by U+FFFD (EF BF BD), as
 * Python's decode(errors="replace") and Rust's from_utf8_lossy do. *out is malloc'd and
 * NUL-terminated; *n_invalid (if non-NULL) gets the number of replacements. */
lq_status lq_utf8_lossy(const char *s, size_t len, char **out, size_t *out_len, size_t *n_invalid, lq_err *err);

/* ---------------------------------------------------------------------------------------------
 * Tokenizer from a GGUF file's metadata (datasets/tokenizer_gguf.c), as llama.cpp reads it:
 * tokenizer.ggml.model "gpt2" (byte-level BPE; others LQ_ERR_UNSUPPORTED), .tokens (the
 * byte-level strings, id = index; an empty one is a hole), .token_type (control (3) and
 * user-defined (4) tokens become added tokens, control ones special; the rest is the BPE vocab),
 * .merges ("a b", rank = index), .pre mapped to the regexes llama.cpp splits with:
 *   gpt-2 / default / mpt / olmo / jais: the GPT-2 regex;
 *   llama-bpe / llama3 / smaug-bpe / falcon3 / pixtral: the Llama-3 regex, ignore_merges;
 *   smollm / starcoder / refact / command-r / codeshell / exaone / minerva-7b: \p{N} digits
 *     isolated, then the GPT-2 regex;
 *   qwen2 / qwen2.5 / qwen-2.5 / deepseek-r1-qwen / stablelm2: the Qwen2 regex (digits one by one);
 * then the bytes are mapped to byte-level characters. add_bos_token / add_eos_token (default
 * false) with bos / eos_token_id give the tokens encode(add_special) puts around the text.
 * ------------------------------------------------------------------------------------------- */

typedef struct lq_gguf_file lq_gguf_file;

typedef struct lq_tok_gguf_info {
    int32_t bos_id, eos_id, eot_id, pad_id; /* -1 when the key is absent */
    bool add_bos, add_eos;
    const char *chat_template; /* tokenizer.chat_template (points into the file), or NULL */
} lq_tok_gguf_info;

lq_status lq_tokenizer_from_gguf(const lq_gguf_file *g, lq_tokenizer **out, lq_err *err);
/* The special ids and flags above (validated against the token count). */
lq_status lq_tokenizer_gguf_info(const lq_gguf_file *g, lq_tok_gguf_info *info, lq_err *err);

/* ---------------------------------------------------------------------------------------------
 * Chat templates. ChatML: "<|im_start|>" role "\n" content "<|im_end|>\n" per message, and with
 * add_generation_prompt a final "<|im_start|>assistant\n". Roles and contents are copied as they
 * are (a content holding "<|im_end|>" is the caller's business).
 * ------------------------------------------------------------------------------------------- */

typedef struct lq_chat_msg {
    const char *role;
    const char *content;
} lq_chat_msg;

/* *out malloc'd, NUL-terminated. */
lq_status lq_chat_render_chatml(const lq_chat_msg *msgs, size_t n, bool add_generation_prompt, char **out,
                                size_t *out_len, lq_err *err);

/* A model's chat template (tokenizer.chat_template, Jinja) without a Jinja engine: a template
 * holding "<|im_start|>" (ChatML family: SmolLM2, Qwen) renders as ChatML; when the first message
 * is not a system one and the template carries a plain "<|im_start|>system\n...<|im_end|>"
 * literal (SmolLM2's default system prompt), that message is put first, as the template would.
 * tmpl NULL = plain ChatML. Any other template is LQ_ERR_UNSUPPORTED. */
lq_status lq_chat_render_template(const char *tmpl, const lq_chat_msg *msgs, size_t n, bool add_generation_prompt,
                                  char **out, size_t *out_len, lq_err *err);

/* ---------------------------------------------------------------------------------------------
 * IDX files (datasets/idx.c): the MNIST / Fashion-MNIST format, gzip-compressed or plain (zlib
 * reads both). Big-endian header: magic 0x00000803 = u8 images (N, H, W), 0x00000801 = u8 labels
 * (N), then exactly N*H*W (or N) bytes. A wrong magic or type, a zero H/W, dimensions over
 * LQ_IDX_MAX_BYTES, a short or over-long payload are LQ_ERR_INPUT naming the file; memory grows
 * only as bytes actually arrive. Images become f32 in [0, 1] (byte / 255), laid out (N, 1, H, W)
 * for a CNN.
 * ------------------------------------------------------------------------------------------- */

#define LQ_IDX_MAX_BYTES ((int64_t)1 << 31) /* largest payload accepted */

typedef struct lq_idx_images {
    int64_t n, h, w; /* data holds n * 1 * h * w floats */
    float *data;
} lq_idx_images;

typedef struct lq_idx_labels {
    int64_t n;
    uint8_t *data;
} lq_idx_labels;

lq_status lq_idx_load_images(const char *path, lq_idx_images *out, lq_err *err);
lq_status lq_idx_load_labels(const char *path, lq_idx_labels *out, lq_err *err);
void lq_idx_images_free(lq_idx_images *im);
void lq_idx_labels_free(lq_idx_labels *lb);

/* ---------------------------------------------------------------------------------------------
 * Data: training documents from text files (datasets/data_text.c), packing, shuffling and the
 * train / eval split (datasets/pack.c).
 *
 * A document is a run of token ids with a parallel array of labels: labels[i] = ids[i] when the
 * token is trained on, LQ_IGNORE_INDEX where it is masked (a prompt). Every document ends with
 * the EOS token (opts.eos_id). Formats:
 *  - LQ_DATA_TEXT: a file, or a folder of "*.txt" files read in byte-wise sorted name order; each
 *    file is ONE document (blank lines are not split on); all tokens trained.
 *  - LQ_DATA_JSONL: one JSON object per non-blank line with a string "text"; all trained.
 *  - LQ_DATA_ALPACA: JSONL with strings "instruction", "output" and optional "input"; the prompt
 *    is the Stanford Alpaca template (the "paired with an input" variant when input is non-empty)
 *    and is masked; the output and the EOS are trained.
 *  - LQ_DATA_CHAT: JSONL with "messages": [{"role", "content"}, ...] rendered as ChatML, each
 *    message tokenized on its own in pieces: "<|im_start|>role\n" (masked), content +
 *    "<|im_end|>" (trained for role "assistant", else masked), "\n" (masked); the final EOS is
 *    masked (the model ends a turn with <|im_end|>). chat_template NULL or a ChatML-family
 *    template (see lq_chat_render_template; other templates LQ_ERR_UNSUPPORTED); a template's
 *    default system prompt is not injected.
 * With add_special, the tokenizer's post-processor (e.g. BOS) is applied to the first piece of
 * each document. Input is hostile: a bad JSON line, a missing or non-string field, a role or
 * content that is not a string is LQ_ERR_INPUT naming the file, line and field.
 * ------------------------------------------------------------------------------------------- */

#define LQ_IGNORE_INDEX (-100)
#define LQ_DATA_MAX_FILE ((int64_t)2 * 1024 * 1024 * 1024) /* bytes of one data file */

typedef enum lq_data_format { LQ_DATA_TEXT, LQ_DATA_JSONL, LQ_DATA_ALPACA, LQ_DATA_CHAT } lq_data_format;

typedef struct lq_doc {
    int32_t *ids;
    int32_t *labels;
    size_t n;
} lq_doc;

typedef struct lq_docs {
    lq_doc *doc;
    size_t n, cap;
} lq_docs;

/* Counters a caller (a test) may read: how much tokenizing was done. */
typedef struct lq_data_stats {
    uint64_t n_encode;              /* lq_tokenizer_encode calls */
    uint64_t cache_hits, cache_misses; /* lq_data_load_cached: loaded / (re)built */
    char cache_note[LQ_ERR_MSG_MAX]; /* why the last cache was not used (missing, stale, corrupt) */
} lq_data_stats;

typedef struct lq_data_opts {
    lq_data_format format;
    int32_t eos_id;            /* appended to every document; must be a valid id */
    bool add_special;          /* apply the tokenizer's post-processor (BOS) per document */
    const char *chat_template; /* LQ_DATA_CHAT: NULL = ChatML */
    lq_data_stats *stats;      /* optional */
} lq_data_opts;

/* Appends the documents of path to *docs (zero-initialise it first). */
lq_status lq_data_load(const lq_tokenizer *tok, const char *path, const lq_data_opts *opts, lq_docs *docs,
                       lq_err *err);
void lq_docs_free(lq_docs *docs);
const char *lq_data_format_name(lq_data_format f);

/* Token cache (datasets/token_cache.c): as lq_data_load, through an HDF5 file at cache_path
 * holding datasets "ids", "labels" (int32) and "offsets" (int64, n_docs + 1) and a root string
 * attribute "key": a fingerprint of the tokenizer (FNV-1a 64 over every id's token string and
 * special flag and the ids of a fixed probe text with and without the post-processor), of the
 * data (the bytes of the file, or of each .txt file's name and bytes in load order), the format,
 * eos_id, add_special and the chat template. A cache whose key matches and whose arrays are
 * consistent (offsets rising from 0 to the array length, ids in range, each label the id or
 * LQ_IGNORE_INDEX) is loaded without tokenizing; otherwise (missing, other key, corrupt) the data
 * are tokenized and the cache rewritten atomically (a temporary file renamed over it), the
 * reason left in opts->stats->cache_note. *hit (optional) tells which happened. Documents are
 * appended to *docs as by lq_data_load. A hit tokenizes no data (stats->n_encode unchanged; only the
 * two probe encodes of the fingerprint run). A cache that cannot be written is LQ_ERR_IO (the
 * documents are not returned). */
lq_status lq_data_load_cached(const lq_tokenizer *tok, const char *path, const lq_data_opts *opts,
                              const char *cache_path, lq_docs *docs, bool *hit, lq_err *err);

/* Packing (datasets/pack.c): the documents, in the given order, are laid end to end and cut into
 * rows of seq_len tokens. ids[t] is the input; labels[t] is the token to predict at t: the next
 * token's label when that token is in the same document and the same row, else LQ_IGNORE_INDEX
 * (so nothing is predicted across a document boundary or a row end). doc_ids[t] numbers the
 * document pieces within a row from 0 (for lq_attention's doc mask); positions[t] restarts at 0
 * for every piece (a document continued into the next row starts again at 0 there). The tail of
 * the last row is padding: ids pad_id, labels LQ_IGNORE_INDEX, doc_ids -1, positions 0. */
typedef struct lq_packed {
    int64_t n_rows, seq_len;
    int32_t *ids, *labels, *doc_ids, *positions; /* n_rows * seq_len each */
} lq_packed;

/* order NULL = 0..n-1; otherwise n_order indices into docs (repeats allowed). */
lq_status lq_pack(const lq_docs *docs, const size_t *order, size_t n_order, int64_t seq_len, int32_t pad_id,
                  lq_packed *out, lq_err *err);
void lq_packed_free(lq_packed *p);

/* A permutation of 0..n-1 (Fisher-Yates driven by splitmix64(seed)): the same seed gives the same
 * order on every platform. */
lq_status lq_data_shuffle(size_t n, uint64_t seed, size_t *order, lq_err *err);
/* Splits 0..n-1 by seed: eval gets round(val_fraction * n) indices (at least 1 when
 * val_fraction > 0 and n >= 2, at most n - 1), the first ones of the seed's permutation; train
 * the rest, in permutation order. val_fraction in [0, 1). Both arrays malloc'd (NULL when empty). */
lq_status lq_data_split(size_t n, double val_fraction, uint64_t seed, size_t **train, size_t *n_train,
                        size_t **eval, size_t *n_eval, lq_err *err);

#endif
