/* datasets/tokenizer_decode.c: tokenizer decode, token lookups and teardown. */
#include <stdlib.h>
#include <string.h>

#include "datasets/datasets_impl.h"

int32_t lq_tokenizer_n_ids(const lq_tokenizer *t) { return t ? t->n_ids : 0; }

int32_t lq_tokenizer_token_to_id(const lq_tokenizer *t, const char *token) {
    if (!t || !token) return -1;
    uint32_t n = (uint32_t)strlen(token);
    int32_t id = tok_strmap_get(&t->added_map, token, n);
    return id >= 0 ? id : tok_strmap_get(&t->vocab, token, n);
}

const char *lq_tokenizer_id_to_token(const lq_tokenizer *t, int32_t id) {
    return t && id >= 0 && id < t->n_ids ? t->id_tok[id] : NULL;
}

bool lq_tokenizer_is_special(const lq_tokenizer *t, int32_t id) {
    return t && id >= 0 && id < t->n_ids && t->id_special[id];
}

lq_status lq_tokenizer_decode(const lq_tokenizer *t, const int32_t *ids, size_t n, bool skip_special, char **out,
                              size_t *out_len, lq_err *err) {
    if (!t || (!ids && n) || !out || !out_len) return LQ_ERR(err, LQ_ERR_ARG, "lq_tokenizer_decode: NULL argument");
    *out = NULL, *out_len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_ids || !t->id_tok[ids[i]])
            return LQ_ERR(err, LQ_ERR_ARG, "%s: decode: ids[%zu] = %d is not a token (%d ids)", t->name, i, (int)ids[i],
                          (int)t->n_ids);
        if (!(skip_special && t->id_special[ids[i]])) total += t->id_raw_len[ids[i]];
    }
    char *o = malloc(total + 1);
    if (!o) return LQ_ERR(err, LQ_ERR_OOM, "%s: decode: out of memory for %zu bytes", t->name, total + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (skip_special && t->id_special[ids[i]]) continue;
        memcpy(o + k, t->id_raw[ids[i]], t->id_raw_len[ids[i]]);
        k += t->id_raw_len[ids[i]];
    }
    o[k] = 0;
    *out = o, *out_len = k;
    return LQ_OK;
}

void lq_tokenizer_free(lq_tokenizer *t) {
    if (!t) return;
    for (int32_t i = 0; t->id_tok && i < t->n_ids; i++) free(t->id_tok[i]);
    for (int32_t i = 0; t->id_raw && i < t->n_ids; i++) free(t->id_raw[i]);
    for (int i = 0; t->added && i < t->n_added; i++) free(t->added[i].content);
    for (int i = 0; i < t->n_steps; i++) pcre2_code_free(t->steps[i].re);
    free(t->id_tok), free(t->id_raw), free(t->id_raw_len), free(t->id_special), free(t->added), free(t->steps);
    free(t->prefix), free(t->suffix), free(t->name);
    tok_strmap_free(&t->vocab);
    tok_strmap_free(&t->added_map);
    tok_pairmap_free(&t->merges);
    free(t);
}
