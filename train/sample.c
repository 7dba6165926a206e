/* train/sample.c: next-token sampling: greedy, temperature, top-k and top-p with a seeded rng. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "train/train.h"

struct lq_sample_cand {
    double z; /* logit / temperature; -inf for NaN */
    double p;
    int32_t id;
};

lq_status lq_sampler_init(lq_sampler *s, const lq_sampler_cfg *cfg, int64_t n_vocab, lq_err *err) {
    if (!s || !cfg) return LQ_ERR(err, LQ_ERR_ARG, "lq_sampler_init: NULL argument");
    memset(s, 0, sizeof *s);
    if (n_vocab <= 0 || n_vocab > INT32_MAX) return LQ_ERR(err, LQ_ERR_ARG, "sampler: vocabulary size %lld is invalid", (long long)n_vocab);
    if (!isfinite(cfg->temperature)) return LQ_ERR(err, LQ_ERR_ARG, "sampler: temperature must be a finite number");
    if (cfg->top_k < 0) return LQ_ERR(err, LQ_ERR_ARG, "sampler: top_k must be >= 0 (0 = off), got %d", cfg->top_k);
    if (!(cfg->top_p > 0 && cfg->top_p <= 1)) return LQ_ERR(err, LQ_ERR_ARG, "sampler: top_p must be in (0, 1], got %g", (double)cfg->top_p);
    s->cfg = *cfg;
    s->n_vocab = n_vocab;
    lq_rng_seed(&s->rng, cfg->seed);
    s->cand = malloc((size_t)n_vocab * sizeof *s->cand);
    if (!s->cand) return LQ_ERR(err, LQ_ERR_OOM, "sampler: out of memory for %lld candidates", (long long)n_vocab);
    return LQ_OK;
}

void lq_sampler_free(lq_sampler *s) {
    if (!s) return;
    free(s->cand);
    s->cand = NULL;
}

static double logit_of(float v) { return isnan(v) ? -INFINITY : (double)v; }

/* The argmax (lowest id on ties), or -1 when nothing is finite or +inf. */
static int32_t argmax(const float *x, int64_t n) {
    int32_t best = -1;
    double bv = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        double v = logit_of(x[i]);
        if (v > bv) bv = v, best = (int32_t)i;
    }
    return best;
}

static int by_z_desc(const void *a, const void *b) {
    const struct lq_sample_cand *x = a, *y = b;
    if (x->z != y->z) return x->z > y->z ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Fills cand[0..*k) with the kept candidates, sorted, p normalized. */
static lq_status kept(lq_sampler *s, const float *logits, int64_t *k, lq_err *err) {
    int64_t n = s->n_vocab;
    double t = s->cfg.temperature;
    struct lq_sample_cand *c = s->cand;
    for (int64_t i = 0; i < n; i++) c[i] = (struct lq_sample_cand){logit_of(logits[i]) / t, 0, (int32_t)i};
    qsort(c, (size_t)n, sizeof *c, by_z_desc);
    if (!(c[0].z > -INFINITY) || isinf(c[0].z))
        return LQ_ERR(err, LQ_ERR_ARG, "sampler: the logits hold no finite maximum (all -inf/NaN, or +inf)");
    int64_t m = s->cfg.top_k > 0 && s->cfg.top_k < n ? s->cfg.top_k : n;
    while (m > 1 && !(c[m - 1].z > -INFINITY)) m--;
    double sum = 0;
    for (int64_t i = 0; i < m; i++) sum += c[i].p = exp(c[i].z - c[0].z);
    for (int64_t i = 0; i < m; i++) c[i].p /= sum;
    if (s->cfg.top_p < 1) {
        double cum = 0, tp = s->cfg.top_p;
        int64_t j = 0;
        while (j < m) {
            cum += c[j++].p;
            if (cum >= tp) break;
        }
        m = j;
        sum = 0;
        for (int64_t i = 0; i < m; i++) sum += c[i].p;
        for (int64_t i = 0; i < m; i++) c[i].p /= sum;
    }
    *k = m;
    return LQ_OK;
}

lq_status lq_sampler_probs(lq_sampler *s, const float *logits, double *probs, lq_err *err) {
    if (!s || !s->cand || !logits || !probs) return LQ_ERR(err, LQ_ERR_ARG, "lq_sampler_probs: NULL argument");
    memset(probs, 0, (size_t)s->n_vocab * sizeof *probs);
    if (s->cfg.temperature <= 0) {
        int32_t id = argmax(logits, s->n_vocab);
        if (id < 0) return LQ_ERR(err, LQ_ERR_ARG, "sampler: the logits hold no finite maximum (all -inf/NaN)");
        probs[id] = 1;
        return LQ_OK;
    }
    int64_t k;
    LQ_TRY(kept(s, logits, &k, err));
    for (int64_t i = 0; i < k; i++) probs[s->cand[i].id] = s->cand[i].p;
    return LQ_OK;
}

lq_status lq_sampler_sample(lq_sampler *s, const float *logits, int32_t *id, lq_err *err) {
    if (!s || !s->cand || !logits || !id) return LQ_ERR(err, LQ_ERR_ARG, "lq_sampler_sample: NULL argument");
    if (s->cfg.temperature <= 0) {
        *id = argmax(logits, s->n_vocab);
        if (*id < 0) return LQ_ERR(err, LQ_ERR_ARG, "sampler: the logits hold no finite maximum (all -inf/NaN)");
        return LQ_OK;
    }
    int64_t k;
    LQ_TRY(kept(s, logits, &k, err));
    double u = (double)(lq_rng_u64(&s->rng) >> 11) * (1.0 / 9007199254740992.0), cum = 0;
    *id = s->cand[k - 1].id; /* rounding: u beyond the summed mass picks the last kept one */
    for (int64_t i = 0; i < k; i++) {
        cum += s->cand[i].p;
        if (u < cum) {
            *id = s->cand[i].id;
            break;
        }
    }
    return LQ_OK;
}
