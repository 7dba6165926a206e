/* core/hash.h: FNV-1a 64, the fingerprint of token caches and the checksum of checkpoints. */
#ifndef LQ_CORE_HASH_H
#define LQ_CORE_HASH_H

#include <stddef.h>
#include <stdint.h>

typedef struct lq_fnv {
    uint64_t h;
} lq_fnv;

#define LQ_FNV_INIT ((lq_fnv){0xCBF29CE484222325ull})

static inline void lq_fnv_add(lq_fnv *f, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        f->h ^= b[i];
        f->h *= 0x100000001B3ull;
    }
}

/* The value's bytes in memory order (so a fingerprint is tied to the machine's byte order). */
static inline void lq_fnv_u64(lq_fnv *f, uint64_t v) { lq_fnv_add(f, &v, sizeof v); }

#endif
