/* datasets/pack.c: packing documents into fixed-length rows, seeded shuffling and the train / eval split. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "datasets/datasets.h"

void lq_packed_free(lq_packed *p) {
    if (!p) return;
    free(p->ids);
    free(p->labels);
    free(p->doc_ids);
    free(p->positions);
    memset(p, 0, sizeof *p);
}

lq_status lq_pack(const lq_docs *docs, const size_t *order, size_t n_order, int64_t seq_len, int32_t pad_id,
                  lq_packed *out, lq_err *err) {
    LQ_CHECK(err, docs && out, LQ_ERR_ARG, "docs and out are required");
    LQ_CHECK(err, seq_len >= 2 && seq_len <= ((int64_t)1 << 30), LQ_ERR_ARG, "seq_len %lld out of [2, 2^30]",
             (long long)seq_len);
    memset(out, 0, sizeof *out);
    size_t n = order ? n_order : docs->n;
    uint64_t total = 0;
    for (size_t k = 0; k < n; k++) {
        size_t i = order ? order[k] : k;
        LQ_CHECK(err, i < docs->n, LQ_ERR_ARG, "order[%zu] = %zu, only %zu documents", k, i, docs->n);
        total += docs->doc[i].n;
    }
    uint64_t rows = (total + (uint64_t)seq_len - 1) / (uint64_t)seq_len;
    LQ_CHECK(err, rows <= ((uint64_t)1 << 40) / (uint64_t)seq_len, LQ_ERR_ARG, "%llu tokens is too many",
             (unsigned long long)total);
    size_t cells = (size_t)(rows * (uint64_t)seq_len);
    out->n_rows = (int64_t)rows;
    out->seq_len = seq_len;
    if (cells == 0) return LQ_OK;
    out->ids = malloc(cells * sizeof(int32_t));
    out->labels = malloc(cells * sizeof(int32_t));
    out->doc_ids = malloc(cells * sizeof(int32_t));
    out->positions = malloc(cells * sizeof(int32_t));
    if (!out->ids || !out->labels || !out->doc_ids || !out->positions) {
        lq_packed_free(out);
        return LQ_ERR(err, LQ_ERR_OOM, "packed data of %zu tokens", cells);
    }
    size_t t = 0;
    int32_t piece = -1; /* piece number within the current row */
    for (size_t k = 0; k < n; k++) {
        const lq_doc *d = &docs->doc[order ? order[k] : k];
        int32_t pos = 0;
        for (size_t j = 0; j < d->n; j++, t++) {
            size_t col = t % (size_t)seq_len;
            if (col == 0) piece = -1;
            if (col == 0 || j == 0) {
                piece++;
                pos = 0;
            }
            bool next_here = j + 1 < d->n && col + 1 < (size_t)seq_len;
            out->ids[t] = d->ids[j];
            out->labels[t] = next_here ? d->labels[j + 1] : LQ_IGNORE_INDEX;
            out->doc_ids[t] = piece;
            out->positions[t] = pos++;
        }
    }
    for (; t < cells; t++) {
        out->ids[t] = pad_id;
        out->labels[t] = LQ_IGNORE_INDEX;
        out->doc_ids[t] = -1;
        out->positions[t] = 0;
    }
    return LQ_OK;
}

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, bound) without modulo bias (rejection). */
static uint64_t below(uint64_t *s, uint64_t bound) {
    uint64_t lim = UINT64_MAX - UINT64_MAX % bound;
    uint64_t r;
    do r = splitmix64(s);
    while (r >= lim);
    return r % bound;
}

lq_status lq_data_shuffle(size_t n, uint64_t seed, size_t *order, lq_err *err) {
    LQ_CHECK(err, order || n == 0, LQ_ERR_ARG, "order is required");
    for (size_t i = 0; i < n; i++) order[i] = i;
    uint64_t s = seed;
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)below(&s, i);
        size_t tmp = order[i - 1];
        order[i - 1] = order[j];
        order[j] = tmp;
    }
    return LQ_OK;
}

lq_status lq_data_split(size_t n, double val_fraction, uint64_t seed, size_t **train, size_t *n_train,
                        size_t **eval, size_t *n_eval, lq_err *err) {
    LQ_CHECK(err, train && n_train && eval && n_eval, LQ_ERR_ARG, "outputs are required");
    LQ_CHECK(err, val_fraction >= 0.0 && val_fraction < 1.0, LQ_ERR_ARG, "val_fraction %g out of [0, 1)",
             val_fraction);
    *train = *eval = NULL;
    *n_train = *n_eval = 0;
    size_t ne = (size_t)llround(val_fraction * (double)n);
    if (val_fraction > 0 && n >= 2 && ne == 0) ne = 1;
    if (n > 0 && ne > n - 1) ne = n - 1;
    if (n == 0) return LQ_OK;
    size_t *perm = malloc(n * sizeof *perm);
    if (!perm) return LQ_ERR(err, LQ_ERR_OOM, "%zu indices", n);
    lq_data_shuffle(n, seed, perm, err);
    size_t *tr = malloc((n - ne) * sizeof *tr), *ev = ne ? malloc(ne * sizeof *ev) : NULL;
    if (!tr || (ne && !ev)) {
        free(perm);
        free(tr);
        free(ev);
        return LQ_ERR(err, LQ_ERR_OOM, "%zu indices", n);
    }
    if (ne) memcpy(ev, perm, ne * sizeof *ev);
    memcpy(tr, perm + ne, (n - ne) * sizeof *tr);
    free(perm);
    *train = tr;
    *n_train = n - ne;
    *eval = ev;
    *n_eval = ne;
    return LQ_OK;
}
