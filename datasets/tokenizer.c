/* datasets/tokenizer.c: byte-level BPE encode / decode: added tokens, pre-tokenizer, merges. */
#include <stdlib.h>
#include <string.h>

#include "datasets/datasets_impl.h"

/* --- hash maps ---------------------------------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, uint32_t n) {
    uint64_t h = 1469598103934665603ull;
    for (uint32_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33, x *= 0xff51afd7ed558ccdull, x ^= x >> 33, x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static bool strmap_grow(tok_strmap *m) {
    uint32_t cap = m->cap ? m->cap * 2 : 64;
    tok_strmap nm = {cap, 0, calloc(cap, sizeof(char *)), calloc(cap, sizeof(uint32_t)), calloc(cap, sizeof(int32_t))};
    if (!nm.key || !nm.klen || !nm.val || cap < m->cap) {
        free(nm.key), free(nm.klen), free(nm.val);
        return false;
    }
    for (uint32_t i = 0; i < m->cap; i++) {
        if (!m->key[i]) continue;
        uint32_t j = (uint32_t)hash_bytes(m->key[i], m->klen[i]) & (cap - 1);
        while (nm.key[j]) j = (j + 1) & (cap - 1);
        nm.key[j] = m->key[i], nm.klen[j] = m->klen[i], nm.val[j] = m->val[i], nm.n++;
    }
    tok_strmap_free(m);
    *m = nm;
    return true;
}

lq_status tok_strmap_put(tok_strmap *m, const char *key, uint32_t klen, int32_t val, int32_t *old) {
    *old = -1;
    if (2 * (m->n + 1) > m->cap && !strmap_grow(m)) return LQ_ERR_OOM;
    uint32_t j = (uint32_t)hash_bytes(key, klen) & (m->cap - 1);
    for (; m->key[j]; j = (j + 1) & (m->cap - 1))
        if (m->klen[j] == klen && memcmp(m->key[j], key, klen) == 0) {
            *old = m->val[j];
            return LQ_OK;
        }
    m->key[j] = key, m->klen[j] = klen, m->val[j] = val, m->n++;
    return LQ_OK;
}

int32_t tok_strmap_get(const tok_strmap *m, const char *key, uint32_t klen) {
    if (!m->cap) return -1;
    for (uint32_t j = (uint32_t)hash_bytes(key, klen) & (m->cap - 1); m->key[j]; j = (j + 1) & (m->cap - 1))
        if (m->klen[j] == klen && memcmp(m->key[j], key, klen) == 0) return m->val[j];
    return -1;
}

void tok_strmap_free(tok_strmap *m) {
    free(m->key), free(m->klen), free(m->val);
    memset(m, 0, sizeof *m);
}

static bool pairmap_grow(tok_pairmap *m) {
    uint32_t cap = m->cap ? m->cap * 2 : 64;
    tok_pairmap nm = {cap, 0, malloc(cap * sizeof(uint64_t)), malloc(cap * sizeof(int32_t)), malloc(cap * sizeof(int32_t))};
    if (!nm.key || !nm.rank || !nm.merged || cap < m->cap) {
        free(nm.key), free(nm.rank), free(nm.merged);
        return false;
    }
    memset(nm.key, 0xff, cap * sizeof(uint64_t));
    for (uint32_t i = 0; i < m->cap; i++) {
        if (m->key[i] == UINT64_MAX) continue;
        uint32_t j = (uint32_t)hash_u64(m->key[i]) & (cap - 1);
        while (nm.key[j] != UINT64_MAX) j = (j + 1) & (cap - 1);
        nm.key[j] = m->key[i], nm.rank[j] = m->rank[i], nm.merged[j] = m->merged[i], nm.n++;
    }
    tok_pairmap_free(m);
    *m = nm;
    return true;
}

/* A pair seen again takes the later rank (tokenizers builds its merge map the same way). */
lq_status tok_pairmap_put(tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged) {
    if (2 * (m->n + 1) > m->cap && !pairmap_grow(m)) return LQ_ERR_OOM;
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint32_t j = (uint32_t)hash_u64(k) & (m->cap - 1);
    while (m->key[j] != UINT64_MAX && m->key[j] != k) j = (j + 1) & (m->cap - 1);
    if (m->key[j] == UINT64_MAX) m->n++;
    m->key[j] = k, m->rank[j] = rank, m->merged[j] = merged;
    return LQ_OK;
}

bool tok_pairmap_get(const tok_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *merged) {
    if (!m->cap) return false;
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (uint32_t j = (uint32_t)hash_u64(k) & (m->cap - 1); m->key[j] != UINT64_MAX; j = (j + 1) & (m->cap - 1))
        if (m->key[j] == k) {
            *rank = m->rank[j], *merged = m->merged[j];
            return true;
        }
    return false;
}

void tok_pairmap_free(tok_pairmap *m) {
    free(m->key), free(m->rank), free(m->merged);
    memset(m, 0, sizeof *m);
}

/* --- the byte-level map and regexes ------------------------------------------------------------- */

/* Printable bytes ('!'..'~', 0xA1..0xAC, 0xAE..0xFF) stand for themselves; the other 68 take the
 * code points 256, 257, ... in byte order. */
static bool byte_printable(unsigned b) { return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174; }

uint32_t tok_byte_to_cp(uint8_t b) {
    if (byte_printable(b)) return b;
    uint32_t k = 0;
    for (unsigned i = 0; i < b; i++) k += !byte_printable(i);
    return 256 + k;
}

int tok_cp_to_byte(uint32_t cp) {
    if (cp < 256) return byte_printable(cp) ? (int)cp : -1;
    uint32_t k = 256;
    for (unsigned i = 0; i < 256; i++)
        if (!byte_printable(i) && k++ == cp) return (int)i;
    return -1;
}

pcre2_code *tok_regex_compile(const char *pat, size_t len, bool literal, const char *name, const char *what,
                              lq_err *err) {
    int ec;
    PCRE2_SIZE off;
    uint32_t opt = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, len, opt, &ec, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof msg);
        LQ_ERR(err, LQ_ERR_INPUT, "%s: %s does not compile at offset %zu: %s", name, what, (size_t)off, (char *)msg);
        return NULL;
    }
    /* No JIT: the interpreter is ~1.4x slower on text but has no JIT stack limit on long words
     * and keeps valgrind clean; tokenizing is done once per data set. */
    return re;
}

/* --- UTF-8 ------------------------------------------------------------------------------------- */

lq_status lq_utf8_lossy(const char *s_, size_t len, char **out, size_t *out_len, size_t *n_invalid, lq_err *err) {
    const uint8_t *s = (const uint8_t *)s_;
    if ((!s && len) || !out || !out_len) return LQ_ERR(err, LQ_ERR_ARG, "lq_utf8_lossy: NULL argument");
    if (len > (SIZE_MAX - 1) / 3) return LQ_ERR(err, LQ_ERR_ARG, "lq_utf8_lossy: text too long");
    uint8_t *o = malloc(3 * len + 1); /* each invalid byte may become 3 */
    if (!o) return LQ_ERR(err, LQ_ERR_OOM, "lq_utf8_lossy: out of memory for %zu bytes", 3 * len + 1);
    size_t k = 0, bad = 0;
    for (size_t i = 0; i < len;) {
        uint8_t c = s[i];
        if (c < 0x80) {
            o[k++] = c, i++;
            continue;
        }
        int need = 0;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c == 0xE0) need = 2, lo = 0xA0;
        else if (c == 0xED) need = 2, hi = 0x9F;
        else if (c >= 0xE1 && c <= 0xEF) need = 2;
        else if (c == 0xF0) need = 3, lo = 0x90;
        else if (c >= 0xF1 && c <= 0xF3) need = 3;
        else if (c == 0xF4) need = 3, hi = 0x8F;
        size_t j = i + 1;
        int got = 0;
        while (need && got < need && j < len && s[j] >= lo && s[j] <= hi) j++, got++, lo = 0x80, hi = 0xBF;
        if (need && got == need) {
            memcpy(o + k, s + i, j - i), k += j - i;
        } else {
            o[k++] = 0xEF, o[k++] = 0xBF, o[k++] = 0xBD, bad++;
        }
        i = j;
    }
    o[k] = 0;
    *out = (char *)o, *out_len = k;
    if (n_invalid) *n_invalid = bad;
    return LQ_OK;
}

/* Code point at s (valid UTF-8) and its length. */
static uint32_t utf8_at(const uint8_t *s, size_t n, size_t *len) {
    uint32_t c = s[0];
    if (c < 0x80 || n < 2) return *len = 1, c;
    if (c < 0xE0) return *len = 2, ((c & 0x1F) << 6) | (s[1] & 0x3F);
    if (c < 0xF0 || n < 4) return *len = n < 3 ? n : 3, ((c & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2 % n] & 0x3F);
    return *len = 4, ((c & 0x07) << 18) | ((s[1] & 0x3F) << 12) | ((s[2] & 0x3F) << 6) | (s[3] & 0x3F);
}

/* Rust's char::is_whitespace (Unicode White_Space). */
static bool is_ws(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

static bool is_word(uint32_t c) { return c == '_' || (c < 128 && ((c | 32) - 'a' < 26 || c - '0' < 10)) || c >= 0xAA; }

/* Start of the character that ends at s[end - 1]. */
static size_t utf8_prev(const uint8_t *s, size_t end) {
    size_t i = end - 1;
    while (i > 0 && (s[i] & 0xC0) == 0x80) i--;
    return i;
}

/* --- encode ------------------------------------------------------------------------------------ */

typedef struct piece {
    const char *p;
    size_t n;
    int32_t id; /* >= 0: an added token */
    int m;      /* is_match, while splitting */
} piece;

typedef struct vec {
    void *v;
    size_t n, cap, esz;
} vec;

static void *vec_push(vec *a) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 64;
        void *nv = realloc(a->v, cap * a->esz);
        if (!nv) return NULL;
        a->v = nv, a->cap = cap;
    }
    return (char *)a->v + a->esz * a->n++;
}

static bool push_piece(vec *a, const char *p, size_t n, int32_t id, int m) {
    piece *q = vec_push(a);
    if (!q) return false;
    *q = (piece){p, n, id, m};
    return true;
}

typedef struct enc {
    const lq_tokenizer *t;
    lq_err *err;
    vec ids, bufs, sym, heap;
    char *word;
    size_t word_cap;
    pcre2_match_data *md;
} enc;

#define OOM(e) LQ_ERR((e)->err, LQ_ERR_OOM, "%s: out of memory while encoding", (e)->t->name)

/* Splits the text pieces of in around the added tokens whose normalized flag is norm. */
static lq_status split_added(enc *e, int norm, const vec *in, vec *out) {
    const lq_tokenizer *t = e->t;
    for (size_t k = 0; k < in->n; k++) {
        const piece *pc = (const piece *)in->v + k;
        const uint8_t *s = (const uint8_t *)pc->p;
        size_t n = pc->n, start = 0, pos = 0;
        if (pc->id >= 0) {
            if (!push_piece(out, pc->p, n, pc->id, 0)) return OOM(e);
            continue;
        }
        while (pos < n) {
            const tok_added *best = NULL;
            if (t->added_first[norm][s[pos]])
                for (int i = 0; i < t->n_added; i++) {
                    const tok_added *a = &t->added[i];
                    if (a->normalized == (norm != 0) && a->len <= n - pos && (!best || a->len > best->len) &&
                        memcmp(a->content, s + pos, a->len) == 0)
                        best = a;
                }
            if (!best) {
                pos++;
                continue;
            }
            size_t ms = pos, me = pos + best->len, cl;
            if (best->single_word) {
                bool before = ms > 0 && is_word(utf8_at(s + utf8_prev(s, ms), n - utf8_prev(s, ms), &cl));
                bool after = me < n && is_word(utf8_at(s + me, n - me, &cl));
                if (before || after) {
                    pos = me;
                    continue;
                }
            }
            while (best->lstrip && ms > start) {
                size_t q = utf8_prev(s, ms);
                if (q < start || !is_ws(utf8_at(s + q, n - q, &cl))) break;
                ms = q;
            }
            while (best->rstrip && me < n && is_ws(utf8_at(s + me, n - me, &cl))) me += cl;
            if (ms > start && !push_piece(out, pc->p + start, ms - start, -1, 0)) return OOM(e);
            if (!push_piece(out, pc->p + ms, me - ms, best->id, 0)) return OOM(e);
            start = pos = me;
        }
        if (start < n && !push_piece(out, pc->p + start, n - start, -1, 0)) return OOM(e);
    }
    return LQ_OK;
}

/* Splits p by re into out as tokenizers' Split does with the given behavior and invert. */
static lq_status regex_split(enc *e, const tok_step *st, const piece *pc, vec *out) {
    size_t first = out->n, prev = 0, off = 0, n = pc->n;
    while (off <= n) {
        int rc = pcre2_match(st->re, (PCRE2_SPTR)pc->p, n, off, PCRE2_NO_UTF_CHECK, e->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return LQ_ERR(e->err, LQ_ERR_INPUT, "%s: pre-tokenizer regex failed on the text: %s", e->t->name, (char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        size_t ms = ov[0], me = ov[1];
        if (ms > prev && !push_piece(out, pc->p + prev, ms - prev, -1, st->invert)) return OOM(e);
        if (!push_piece(out, pc->p + ms, me - ms, -1, !st->invert)) return OOM(e);
        prev = me;
        if (me == ms) { /* empty match: step over one character */
            if (me >= n) break;
            size_t cl;
            utf8_at((const uint8_t *)pc->p + me, n - me, &cl);
            off = me + cl;
        } else {
            off = me;
        }
    }
    if (prev < n && !push_piece(out, pc->p + prev, n - prev, -1, st->invert)) return OOM(e);
    /* Apply the behavior in place over out[first..]. */
    piece *v = (piece *)out->v + first;
    size_t cnt = out->n - first, k = 0;
    int pm = 0;
    if (st->behavior == TOK_MERGED_NEXT) {
        for (size_t i = 0; i < cnt / 2; i++) {
            piece x = v[i];
            v[i] = v[cnt - 1 - i], v[cnt - 1 - i] = x;
        }
    }
    for (size_t i = 0; i < cnt; i++) {
        piece x = v[i];
        switch (st->behavior) {
        case TOK_REMOVED:
            if (!x.m) v[k++] = x;
            break;
        case TOK_ISOLATED: v[k++] = x; break;
        case TOK_MERGED_PREV:
            if (x.m && !pm && k) v[k - 1].n = (size_t)(x.p + x.n - v[k - 1].p);
            else v[k++] = x;
            break;
        case TOK_MERGED_NEXT: /* walking backwards: extend the later piece to start here */
            if (x.m && !pm && k) v[k - 1].n += (size_t)(v[k - 1].p - x.p), v[k - 1].p = x.p;
            else v[k++] = x;
            break;
        case TOK_CONTIGUOUS:
            if (x.m == pm && k) v[k - 1].n = (size_t)(x.p + x.n - v[k - 1].p);
            else v[k++] = x;
            break;
        }
        pm = x.m;
    }
    if (st->behavior == TOK_MERGED_NEXT) {
        for (size_t i = 0; i < k / 2; i++) {
            piece x = v[i];
            v[i] = v[k - 1 - i], v[k - 1 - i] = x;
        }
    }
    size_t kept = 0; /* empty pieces go */
    for (size_t i = 0; i < k; i++)
        if (v[i].n) v[kept++] = v[i];
    out->n = first + kept;
    return LQ_OK;
}

typedef struct sym {
    int32_t id, prev, next;
} sym;
typedef struct hent {
    int32_t rank, pos, merged;
} hent;

static bool hless(const hent *a, const hent *b) { return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos); }

static bool heap_push(vec *h, hent x) {
    hent *slot = vec_push(h);
    if (!slot) return false;
    hent *v = h->v;
    size_t i = h->n - 1;
    while (i > 0 && hless(&x, &v[(i - 1) / 2])) v[i] = v[(i - 1) / 2], i = (i - 1) / 2;
    v[i] = x;
    return true;
}

static hent heap_pop(vec *h) {
    hent *v = h->v, top = v[0], x = v[--h->n];
    size_t i = 0, n = h->n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && hless(&v[c + 1], &v[c])) c++;
        if (!hless(&v[c], &x)) break;
        v[i] = v[c], i = c;
    }
    if (n) v[i] = x;
    return top;
}

static bool push_pair(enc *e, int32_t pos) {
    const sym *s = e->sym.v;
    int32_t r, m;
    if (pos < 0 || s[pos].next < 0 || !tok_pairmap_get(&e->t->merges, s[pos].id, s[s[pos].next].id, &r, &m)) return true;
    return heap_push(&e->heap, (hent){r, pos, m});
}

static bool push_id(enc *e, int32_t id) {
    int32_t *q = vec_push(&e->ids);
    if (!q) return false;
    *q = id;
    return true;
}

/* BPE on one pre-tokenized word (raw bytes). */
static lq_status bpe_word(enc *e, const uint8_t *w, size_t n) {
    const lq_tokenizer *t = e->t;
    if (t->ignore_merges && !t->byte_level) {
        int32_t id = n <= UINT32_MAX ? tok_strmap_get(&t->vocab, (const char *)w, (uint32_t)n) : -1;
        if (id >= 0) return push_id(e, id) ? LQ_OK : OOM(e);
    } else if (t->ignore_merges) {
        if (2 * n + 1 > e->word_cap) {
            char *nw = realloc(e->word, 2 * n + 1);
            if (!nw) return OOM(e);
            e->word = nw, e->word_cap = 2 * n + 1;
        }
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            for (const char *c = t->byte_chr[w[i]]; *c; c++) e->word[k++] = *c;
        int32_t id = k <= UINT32_MAX ? tok_strmap_get(&t->vocab, e->word, (uint32_t)k) : -1;
        if (id >= 0) return push_id(e, id) ? LQ_OK : OOM(e);
    }
    if (n > INT32_MAX / 4) return LQ_ERR(e->err, LQ_ERR_INPUT, "%s: a word of %zu bytes is too long", t->name, n);
    e->sym.n = e->heap.n = 0;
    for (size_t i = 0, cl = 1; i < n; i += cl) {
        int32_t id;
        if (t->byte_level) {
            id = t->byte_id[w[i]];
        } else { /* one symbol per UTF-8 character */
            utf8_at(w + i, n - i, &cl);
            id = tok_strmap_get(&t->vocab, (const char *)w + i, (uint32_t)cl);
        }
        if (id < 0) id = t->unk_id;
        if (id < 0) continue; /* no token for this character and no unk: dropped, as tokenizers does */
        sym *s = vec_push(&e->sym);
        if (!s) return OOM(e);
        int32_t k = (int32_t)e->sym.n - 1;
        *s = (sym){id, k - 1, -1};
        if (k > 0) ((sym *)e->sym.v)[k - 1].next = k;
    }
    for (int32_t i = 0; i + 1 < (int32_t)e->sym.n; i++)
        if (!push_pair(e, i)) return OOM(e);
    sym *s = e->sym.v;
    while (e->heap.n) {
        hent h = heap_pop(&e->heap);
        int32_t nx = s[h.pos].next, r, m;
        if (s[h.pos].id < 0 || nx < 0) continue;
        if (!tok_pairmap_get(&t->merges, s[h.pos].id, s[nx].id, &r, &m) || m != h.merged || r != h.rank) continue;
        s[h.pos].id = m;
        s[h.pos].next = s[nx].next;
        if (s[nx].next >= 0) s[s[nx].next].prev = h.pos;
        s[nx].id = -1, s[nx].next = -1;
        if (!push_pair(e, s[h.pos].prev) || !push_pair(e, h.pos)) return OOM(e);
        s = e->sym.v;
    }
    for (int32_t i = e->sym.n ? 0 : -1; i >= 0; i = s[i].next)
        if (!push_id(e, s[i].id)) return OOM(e);
    return LQ_OK;
}

/* Pre-tokenizer steps over one text piece, then BPE on every word. */
static lq_status encode_text(enc *e, const piece *pc) {
    const lq_tokenizer *t = e->t;
    vec a = {0, 0, 0, sizeof(piece)}, b = {0, 0, 0, sizeof(piece)};
    lq_status st = LQ_OK;
    if (!push_piece(&a, pc->p, pc->n, -1, 0)) return OOM(e);
    for (int k = 0; k < t->n_steps && st == LQ_OK; k++) {
        const tok_step *sp = &t->steps[k];
        b.n = 0;
        for (size_t i = 0; i < a.n && st == LQ_OK; i++) {
            piece x = ((piece *)a.v)[i];
            if (sp->kind == TOK_STEP_BYTELEVEL && sp->add_prefix_space && x.p[0] != ' ') {
                char *nb = malloc(x.n + 1), **slot = nb ? vec_push(&e->bufs) : NULL;
                if (!slot) {
                    free(nb);
                    st = OOM(e);
                    break;
                }
                *slot = nb, nb[0] = ' ', memcpy(nb + 1, x.p, x.n), x.p = nb, x.n++;
            }
            if (sp->re) st = regex_split(e, sp, &x, &b);
            else if (!push_piece(&b, x.p, x.n, -1, 0)) st = OOM(e);
        }
        vec tmp = a;
        a = b, b = tmp;
    }
    for (size_t i = 0; i < a.n && st == LQ_OK; i++)
        st = bpe_word(e, (const uint8_t *)((piece *)a.v)[i].p, ((piece *)a.v)[i].n);
    free(a.v), free(b.v);
    return st;
}

lq_status lq_tokenizer_encode(const lq_tokenizer *t, const char *text, size_t len, bool add_special, int32_t **ids,
                              size_t *n, lq_err *err) {
    if (!t || (!text && len) || !ids || !n) return LQ_ERR(err, LQ_ERR_ARG, "lq_tokenizer_encode: NULL argument");
    *ids = NULL, *n = 0;
    char *s;
    size_t sl;
    LQ_TRY(lq_utf8_lossy(text ? text : "", len, &s, &sl, NULL, err));
    enc e = {t, err, {0, 0, 0, sizeof(int32_t)}, {0, 0, 0, sizeof(char *)}, {0, 0, 0, sizeof(sym)},
             {0, 0, 0, sizeof(hent)}, NULL, 0, pcre2_match_data_create(1, NULL)};
    vec p0 = {0, 0, 0, sizeof(piece)}, p1 = {0, 0, 0, sizeof(piece)}, p2 = {0, 0, 0, sizeof(piece)};
    lq_status st = e.md && push_piece(&p0, s, sl, -1, 0) ? LQ_OK : OOM(&e);
    if (st == LQ_OK) st = split_added(&e, 0, &p0, &p1);
    if (st == LQ_OK) st = split_added(&e, 1, &p1, &p2);
    for (int i = 0; add_special && st == LQ_OK && i < t->n_prefix; i++)
        if (!push_id(&e, t->prefix[i])) st = OOM(&e);
    for (size_t i = 0; i < p2.n && st == LQ_OK; i++) {
        const piece *pc = (const piece *)p2.v + i;
        if (pc->id >= 0) st = push_id(&e, pc->id) ? LQ_OK : OOM(&e);
        else st = encode_text(&e, pc);
    }
    for (int i = 0; add_special && st == LQ_OK && i < t->n_suffix; i++)
        if (!push_id(&e, t->suffix[i])) st = OOM(&e);
    if (st == LQ_OK && !e.ids.v && !(e.ids.v = malloc(sizeof(int32_t)))) st = OOM(&e); /* never NULL */
    for (size_t i = 0; i < e.bufs.n; i++) free(((char **)e.bufs.v)[i]);
    free(e.bufs.v), free(e.sym.v), free(e.heap.v), free(e.word), free(p0.v), free(p1.v), free(p2.v), free(s);
    pcre2_match_data_free(e.md);
    if (st != LQ_OK) {
        free(e.ids.v);
        return st;
    }
    *ids = e.ids.v, *n = e.ids.n;
    return LQ_OK;
}
