/* tests/fuzz/fuzz_tok_small.h: a small byte-level BPE tokenizer.json built in memory (the 256
 * byte tokens, three merges, ChatML specials, a BOS template), for the fuzz targets that need a
 * tokenizer without reading a file. Header-only. */
#ifndef LQ_FUZZ_TOK_SMALL_H
#define LQ_FUZZ_TOK_SMALL_H

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "datasets/datasets.h"

/* GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others for 256 + k. */
static inline void fuzz_byte_char(int b, char out[4]) {
    int cp;
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) {
        cp = b;
    } else {
        int k = 0;
        for (int x = 0; x < b; x++)
            if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) k++;
        cp = 256 + k;
    }
    if (cp < 0x80) {
        out[0] = (char)cp, out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6)), out[1] = (char)(0x80 | (cp & 0x3F)), out[2] = 0;
    }
}

/* The tokenizer (ids: bytes 0..255, "th" 256, "the" 257, "Ġthe" 258, <|endoftext|> 260,
 * <|im_start|> 261, <|im_end|> 262); malloc'd JSON text, free() it. */
static inline char *fuzz_small_tokenizer_json(void) {
    cJSON *root = cJSON_CreateObject(), *model = cJSON_CreateObject(), *vocab = cJSON_CreateObject();
    cJSON *merges = cJSON_CreateArray(), *added = cJSON_CreateArray();
    for (int b = 0; b < 256; b++) {
        char c[4];
        fuzz_byte_char(b, c);
        cJSON_AddNumberToObject(vocab, c, b);
    }
    cJSON_AddNumberToObject(vocab, "th", 256);
    cJSON_AddNumberToObject(vocab, "the", 257);
    cJSON_AddNumberToObject(vocab, "\xc4\xa0the", 258);
    cJSON_AddItemToArray(merges, cJSON_CreateString("t h"));
    cJSON_AddItemToArray(merges, cJSON_CreateString("th e"));
    cJSON_AddItemToArray(merges, cJSON_CreateString("\xc4\xa0 the"));
    static const char *const specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    for (int i = 0; i < 3; i++) {
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", 260 + i);
        cJSON_AddStringToObject(a, "content", specials[i]);
        cJSON_AddBoolToObject(a, "special", 1);
        cJSON_AddItemToArray(added, a);
    }
    cJSON_AddStringToObject(model, "type", "BPE");
    cJSON_AddItemToObject(model, "vocab", vocab);
    cJSON_AddItemToObject(model, "merges", merges);
    cJSON *pre = cJSON_CreateObject();
    cJSON_AddStringToObject(pre, "type", "ByteLevel");
    cJSON_AddBoolToObject(pre, "add_prefix_space", 0);
    cJSON_AddBoolToObject(pre, "use_regex", 1);
    cJSON *post = cJSON_Parse("{\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": "
                              "\"<|endoftext|>\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], "
                              "\"special_tokens\": {\"<|endoftext|>\": {\"id\": \"<|endoftext|>\", \"ids\": [260], "
                              "\"tokens\": [\"<|endoftext|>\"]}}}");
    cJSON_AddItemToObject(root, "added_tokens", added);
    cJSON_AddNullToObject(root, "normalizer");
    cJSON_AddItemToObject(root, "pre_tokenizer", pre);
    cJSON_AddItemToObject(root, "post_processor", post);
    cJSON_AddItemToObject(root, "model", model);
    char *s = cJSON_Print(root);
    cJSON_Delete(root);
    return s;
}

/* Loads it once per process (kept for the process' life); aborts if it does not load. */
static inline const lq_tokenizer *fuzz_small_tokenizer(void) {
    static lq_tokenizer *tok;
    if (!tok) {
        char *js = fuzz_small_tokenizer_json();
        lq_err e;
        lq_err_clear(&e);
        if (!js || lq_tokenizer_from_json(&tok, js, strlen(js), "small tokenizer", &e) != LQ_OK) {
            fprintf(stderr, "fuzz: the built-in tokenizer does not load: %s\n", e.msg);
            abort();
        }
        free(js);
    }
    return tok;
}

#endif
