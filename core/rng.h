/* core/rng.h: deterministic random numbers: a seeded stream and a counter-based hash. */
#ifndef LQ_CORE_RNG_H
#define LQ_CORE_RNG_H

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define LQ_HD __host__ __device__
#else
#define LQ_HD
#endif

/* splitmix64 finaliser: a bijective 64-bit mix; the basis of both generators. */
static inline LQ_HD uint64_t lq_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Counter-based: the value for (seed, stream, index) needs no state, so a dropout mask is the
 * same whatever the thread count or device, and can be regenerated in backward. */
static inline LQ_HD uint64_t lq_hash3(uint64_t seed, uint64_t stream, uint64_t index) {
    return lq_mix64(lq_mix64(seed ^ lq_mix64(stream + 0x9e3779b97f4a7c15ULL)) + index);
}

/* Uniform in [0, 1) with 24 random bits (exactly representable in float). */
static inline LQ_HD float lq_u01_from_bits(uint64_t bits) {
    return (float)(bits >> 40) * (1.0f / 16777216.0f);
}

/* A sequential stream for initialisation and test data. */
typedef struct lq_rng {
    uint64_t state;
} lq_rng;

static inline void lq_rng_seed(lq_rng *r, uint64_t seed) { r->state = lq_mix64(seed + 0x632be59bd9b4e019ULL); }

static inline uint64_t lq_rng_u64(lq_rng *r) {
    r->state += 0x9e3779b97f4a7c15ULL;
    return lq_mix64(r->state);
}

static inline float lq_rng_uniform(lq_rng *r) { return lq_u01_from_bits(lq_rng_u64(r)); }

/* Integer in [lo, hi], inclusive. */
static inline int64_t lq_rng_int(lq_rng *r, int64_t lo, int64_t hi) {
    return lo + (int64_t)(lq_rng_u64(r) % (uint64_t)(hi - lo + 1));
}

/* Standard normal (Box-Muller, one value per call). */
static inline float lq_rng_normal(lq_rng *r) {
    double u1 = ((double)(lq_rng_u64(r) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double u2 = (double)(lq_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

#endif
