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

#endif
