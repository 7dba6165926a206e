/* quant/observer.c: observers (min-max, moving average, percentile, MSE search) turning seen values into qparams. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant/quant.h"

#define OBS_DEFAULT_AVG 0.01
#define OBS_DEFAULT_PCT 99.99
#define OBS_DEFAULT_GRID 100
#define OBS_MAX_GRID 100000
#define OBS_PAR_MIN 4096 /* elements below which a batch is observed on one thread */
#define OBS_MAX_DIMS 4     /* PyTorch-order dims an input may have */

lq_observer_config lq_observer_config_default(void)
{
    lq_observer_config c;
    memset(&c, 0, sizeof c);
    c.kind = LQ_OBSERVER_MINMAX;
    c.bits = 8;
    c.symmetric = true;
    c.granularity = LQ_GRAN_TENSOR;
    return c;
}

static double obs_param(const lq_observer_config *c)
{
    if (c->param != 0.0) return c->param;
    switch (c->kind) {
    case LQ_OBSERVER_MOVING_AVG: return OBS_DEFAULT_AVG;
    case LQ_OBSERVER_PERCENTILE: return OBS_DEFAULT_PCT;
    case LQ_OBSERVER_MSE: return OBS_DEFAULT_GRID;
    default: return 0.0;
    }
}

static lq_status check_config(const lq_observer_config *c, lq_err *err)
{
    if ((int)c->kind < 0 || c->kind >= LQ_OBSERVER_KIND_COUNT)
        return LQ_ERR(err, LQ_ERR_ARG, "observer: unknown observer kind %d", (int)c->kind);
    if (c->bits < 2 || c->bits > 8)
        return LQ_ERR(err, LQ_ERR_ARG, "observer: bits %d outside 2..8", c->bits);
    if (c->granularity == LQ_GRAN_TOKEN)
        return LQ_ERR(err, LQ_ERR_UNSUPPORTED,
                      "observer: per-token granularity is dynamic (scales computed per batch), nothing to observe");
    if ((int)c->granularity < 0 || c->granularity >= LQ_GRAN_COUNT)
        return LQ_ERR(err, LQ_ERR_ARG, "observer: unknown granularity %d", (int)c->granularity);
    if (c->granularity == LQ_GRAN_GROUP && c->group_size < 1)
        return LQ_ERR(err, LQ_ERR_ARG, "observer: group size %lld must be >= 1", (long long)c->group_size);
    if (c->granularity == LQ_GRAN_CHANNEL && (c->axis < -OBS_MAX_DIMS || c->axis >= OBS_MAX_DIMS))
        return LQ_ERR(err, LQ_ERR_ARG, "observer: channel axis %d outside -4..3", c->axis);
    double p = obs_param(c);
    if (!isfinite(p)) return LQ_ERR(err, LQ_ERR_ARG, "observer: parameter is not finite");
    switch (c->kind) {
    case LQ_OBSERVER_MOVING_AVG:
        if (!(p > 0.0 && p <= 1.0))
            return LQ_ERR(err, LQ_ERR_ARG, "observer: averaging constant %g outside (0, 1]", p);
        break;
    case LQ_OBSERVER_PERCENTILE:
        if (!(p > 0.0 && p <= 100.0))
            return LQ_ERR(err, LQ_ERR_ARG, "observer: percentile %g outside (0, 100]", p);
        break;
    case LQ_OBSERVER_MSE:
        if (!(p >= 1.0 && p <= OBS_MAX_GRID && p == floor(p)))
            return LQ_ERR(err, LQ_ERR_ARG, "observer: MSE grid size %g is not an integer in 1..%d", p, OBS_MAX_GRID);
        break;
    default: break;
    }
    return LQ_OK;
}

lq_status lq_observer_init(lq_observer *obs, const lq_observer_config *cfg, lq_err *err)
{
    if (!obs || !cfg) return LQ_ERR(err, LQ_ERR_ARG, "lq_observer_init: NULL %s", obs ? "config" : "observer");
    memset(obs, 0, sizeof *obs);
    LQ_TRY(check_config(cfg, err));
    obs->cfg = *cfg;
    obs->cfg.param = obs_param(cfg);
    lq_affine_range(cfg->bits, cfg->symmetric, &obs->qmin, &obs->qmax);
    return LQ_OK;
}

static void free_slots(lq_observer *obs)
{
    free(obs->lo);
    free(obs->sum_lo);
    obs->lo = obs->hi = obs->cur_lo = obs->cur_hi = NULL;
    obs->sum_lo = obs->sum_hi = NULL;
    obs->n_slots = 0;
    obs->n_batches = 0;
}

void lq_observer_free(lq_observer *obs)
{
    if (!obs) return;
    free_slots(obs);
    free(obs->scratch);
    obs->scratch = NULL;
    obs->scratch_cap = 0;
}

void lq_observer_reset(lq_observer *obs)
{
    if (!obs) return;
    free_slots(obs);
    obs->frozen = false;
}

void lq_observer_freeze(lq_observer *obs)
{
    if (obs) obs->frozen = true;
}

void lq_observer_step(lq_observer *obs, int64_t step)
{
    if (obs && obs->cfg.freeze_step > 0 && step >= obs->cfg.freeze_step) obs->frozen = true;
}

int64_t lq_observer_n_qparams(const lq_observer *obs)
{
    return obs && obs->n_batches > 0 ? obs->n_slots : 0;
}

/* Element i of a contiguous tensor as "[a, b, c]". */
static void format_index(char *buf, size_t n, int64_t i, int ndim, const int64_t *shape)
{
    int64_t idx[OBS_MAX_DIMS] = {0};
    for (int d = ndim - 1; d >= 0; d--) {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    size_t used = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < ndim && used < n; d++)
        used += (size_t)snprintf(buf + used, n - used, "%s%lld", d ? ", " : "", (long long)idx[d]);
    if (used < n) snprintf(buf + used, n - used, "]");
}

/* The input viewed as (outer, C, inner) with one slot per c: per tensor C = 1; per channel C = the
 * axis' size; per group C = numel / group_size, inner = group_size. */
typedef struct slot_view {
    int64_t outer, c, inner;
} slot_view;

static lq_status make_view(const lq_observer *obs, int ndim, const int64_t *shape, int64_t numel, slot_view *v,
                           lq_err *err)
{
    const lq_observer_config *c = &obs->cfg;
    v->outer = 1;
    v->c = 1;
    v->inner = numel;
    if (c->granularity == LQ_GRAN_CHANNEL) {
        int ax = c->axis < 0 ? c->axis + ndim : c->axis;
        if (ax < 0 || ax >= ndim)
            return LQ_ERR(err, LQ_ERR_SHAPE, "observer: channel axis %d outside a %d-dim input", c->axis, ndim);
        v->c = shape[ax];
        v->outer = 1;
        for (int d = 0; d < ax; d++) v->outer *= shape[d];
        v->inner = numel / (v->outer * v->c);
    } else if (c->granularity == LQ_GRAN_GROUP) {
        int64_t last = ndim ? shape[ndim - 1] : 1;
        if (last % c->group_size != 0)
            return LQ_ERR(err, LQ_ERR_SHAPE, "observer: group size %lld does not divide the last dim %lld",
                          (long long)c->group_size, (long long)last);
        v->c = numel / c->group_size;
        v->inner = c->group_size;
    }
    if (obs->n_slots && v->c != obs->n_slots)
        return LQ_ERR(err, LQ_ERR_SHAPE, "observer: input has %lld %s, earlier inputs had %lld", (long long)v->c,
                      c->granularity == LQ_GRAN_GROUP ? "groups" : "channels", (long long)obs->n_slots);
    return LQ_OK;
}

static lq_status alloc_slots(lq_observer *obs, int64_t n, lq_err *err)
{
    obs->lo = malloc((size_t)n * 4 * sizeof(float));
    if (!obs->lo) return LQ_ERR(err, LQ_ERR_OOM, "observer: out of memory for %lld slots", (long long)n);
    obs->hi = obs->lo + n;
    obs->cur_lo = obs->lo + 2 * n;
    obs->cur_hi = obs->lo + 3 * n;
    if (obs->cfg.kind == LQ_OBSERVER_PERCENTILE || obs->cfg.kind == LQ_OBSERVER_MSE) {
        obs->sum_lo = calloc((size_t)n * 2, sizeof(double));
        if (!obs->sum_lo) {
            free(obs->lo);
            obs->lo = NULL;
            return LQ_ERR(err, LQ_ERR_OOM, "observer: out of memory for %lld slots", (long long)n);
        }
        obs->sum_hi = obs->sum_lo + n;
    }
    obs->n_slots = n;
    return LQ_OK;
}

/* --- order statistics: Hoare-partition selection (balanced on runs of equal values) ------------- */

static float select_kth(float *a, int64_t n, int64_t k)
{
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        float p0 = a[lo], p1 = a[lo + (hi - lo) / 2], p2 = a[hi], pivot;
        if (p0 < p1) pivot = p1 < p2 ? p1 : (p0 < p2 ? p2 : p0);
        else pivot = p0 < p2 ? p0 : (p1 < p2 ? p2 : p1);
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pivot) i++;
            while (a[j] > pivot) j--;
            if (i <= j) {
                float t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if (k <= j) hi = j;
        else if (k >= i) lo = i;
        else break;
    }
    return a[k];
}

/* The p-th percentile of a[0..n) with linear interpolation between order statistics (torch.quantile's
 * default): position p / 100 (n - 1). Permutes a. */
static float percentile(float *a, int64_t n, double p)
{
    double pos = p / 100.0 * (double)(n - 1);
    int64_t k = (int64_t)floor(pos);
    if (k < 0) k = 0;
    if (k > n - 1) k = n - 1;
    double frac = pos - (double)k;
    float v0 = select_kth(a, n, k);
    if (frac <= 0.0 || k + 1 >= n) return v0;
    float v1 = a[k + 1]; /* after selection everything past k is >= a[k]: the next statistic is their min */
    for (int64_t i = k + 2; i < n; i++)
        if (a[i] < v1) v1 = a[i];
    return (float)((double)v0 + frac * ((double)v1 - (double)v0));
}

/* --- MSE search ----------------------------------------------------------------------------------- */

/* Sum of squared quantize-dequantize errors, rounding as torch's fake_quantize (x * (1 / scale),
 * half to even, clamp). */
static double qdq_sse(const float *a, int64_t n, float scale, int32_t zp, int32_t qmin, int32_t qmax)
{
    float inv = 1.0f / scale;
    double e = 0.0;
    for (int64_t i = 0; i < n; i++) {
        float q = nearbyintf(a[i] * inv) + (float)zp;
        q = q < (float)qmin ? (float)qmin : (q > (float)qmax ? (float)qmax : q);
        float y = (q - (float)zp) * scale;
        double d = (double)y - (double)a[i];
        e += d * d;
    }
    return e;
}

static void mse_search(const lq_observer *obs, const float *a, int64_t n, float *lo_out, float *hi_out)
{
    float mn = a[0], mx = a[0];
    for (int64_t i = 1; i < n; i++) {
        mn = a[i] < mn ? a[i] : mn;
        mx = a[i] > mx ? a[i] : mx;
    }
    int grid = (int)obs->cfg.param;
    double best = 0.0;
    float best_lo = mn, best_hi = mx;
    for (int k = grid; k >= 1; k--) { /* from r = 1 down, strict improvement: ties keep the wider range */
        float r = (float)k / (float)grid;
        float lo = r * mn, hi = r * mx, s;
        int32_t z;
        lq_affine_qparams_q(lo, hi, obs->qmin, obs->qmax, obs->cfg.symmetric, 0, &s, &z);
        double e = qdq_sse(a, n, s, z, obs->qmin, obs->qmax);
        if (k == grid || e < best) {
            best = e;
            best_lo = lo;
            best_hi = hi;
        }
    }
    *lo_out = best_lo;
    *hi_out = best_hi;
}

/* --- update --------------------------------------------------------------------------------------- */

static lq_status grow_scratch(lq_observer *obs, int64_t n, lq_err *err)
{
    if (obs->scratch_cap >= n) return LQ_OK;
    float *p = realloc(obs->scratch, (size_t)n * sizeof(float));
    if (!p) return LQ_ERR(err, LQ_ERR_OOM, "observer: out of memory for a %lld-element scratch copy", (long long)n);
    obs->scratch = p;
    obs->scratch_cap = n;
    return LQ_OK;
}

/* This batch's range per slot into cur_lo / cur_hi. */
static lq_status batch_ranges(lq_observer *obs, const float *x, const slot_view *v, lq_err *err)
{
    const int64_t C = v->c, outer = v->outer, inner = v->inner, len = outer * inner;
    const int nt = obs->cfg.n_threads > 1 ? obs->cfg.n_threads : 1;
    const bool par = nt > 1 && C > 1 && C * len >= OBS_PAR_MIN;
    float *cur_lo = obs->cur_lo, *cur_hi = obs->cur_hi;
    if (obs->cfg.kind == LQ_OBSERVER_MINMAX || obs->cfg.kind == LQ_OBSERVER_MOVING_AVG) {
#pragma omp parallel for num_threads(nt) if (par) schedule(static)
        for (int64_t c = 0; c < C; c++) {
            float mn = x[c * inner], mx = mn;
            for (int64_t o = 0; o < outer; o++) {
                const float *row = x + (o * C + c) * inner;
                for (int64_t i = 0; i < inner; i++) {
                    mn = row[i] < mn ? row[i] : mn;
                    mx = row[i] > mx ? row[i] : mx;
                }
            }
            cur_lo[c] = mn;
            cur_hi[c] = mx;
        }
        return LQ_OK;
    }
    /* percentile / MSE: a slot-major copy, then each slot's segment on its own */
    LQ_TRY(grow_scratch(obs, C * len, err));
    float *s = obs->scratch;
    const bool sym = obs->cfg.symmetric, pct = obs->cfg.kind == LQ_OBSERVER_PERCENTILE;
    const double p = obs->cfg.param;
#pragma omp parallel for num_threads(nt) if (par) schedule(static)
    for (int64_t c = 0; c < C; c++) {
        float *seg = s + c * len;
        for (int64_t o = 0; o < outer; o++) {
            const float *row = x + (o * C + c) * inner;
            if (pct && sym)
                for (int64_t i = 0; i < inner; i++) seg[o * inner + i] = fabsf(row[i]);
            else
                memcpy(seg + o * inner, row, (size_t)inner * sizeof(float));
        }
        if (!pct) {
            mse_search(obs, seg, len, &cur_lo[c], &cur_hi[c]);
        } else if (sym) {
            cur_hi[c] = percentile(seg, len, p);
            cur_lo[c] = -cur_hi[c];
        } else {
            cur_lo[c] = percentile(seg, len, 100.0 - p);
            cur_hi[c] = percentile(seg, len, p);
        }
    }
    return LQ_OK;
}

lq_status lq_observer_update(lq_observer *obs, const float *x, int ndim, const int64_t *shape, lq_err *err)
{
    if (!obs) return LQ_ERR(err, LQ_ERR_ARG, "lq_observer_update: NULL observer");
    if (obs->frozen) return LQ_OK;
    if (ndim < 0 || ndim > OBS_MAX_DIMS || (ndim > 0 && !shape))
        return LQ_ERR(err, LQ_ERR_ARG, "lq_observer_update: ndim %d outside 0..%d (or NULL shape)", ndim,
                      OBS_MAX_DIMS);
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0)
            return LQ_ERR(err, LQ_ERR_SHAPE, "lq_observer_update: dim %d is %lld", d, (long long)shape[d]);
        numel *= shape[d];
    }
    if (numel == 0) return LQ_OK; /* as torch: an empty input changes nothing */
    if (!x) return LQ_ERR(err, LQ_ERR_ARG, "lq_observer_update: NULL data");
    slot_view v;
    LQ_TRY(make_view(obs, ndim, shape, numel, &v, err));
    for (int64_t i = 0; i < numel; i++) {
        if (!isfinite(x[i])) {
            char idx[96];
            format_index(idx, sizeof idx, i, ndim, shape);
            return LQ_ERR(err, LQ_ERR_NUMERIC, "observer input element %lld %s is %s", (long long)i, idx,
                          isnan(x[i]) ? "NaN" : "Inf");
        }
    }
    if (!obs->n_slots) LQ_TRY(alloc_slots(obs, v.c, err));
    LQ_TRY(batch_ranges(obs, x, &v, err));

    const int64_t n = obs->n_slots;
    const bool first = obs->n_batches == 0;
    obs->n_batches++;
    switch (obs->cfg.kind) {
    case LQ_OBSERVER_MINMAX:
        for (int64_t s = 0; s < n; s++) {
            if (first || obs->cur_lo[s] < obs->lo[s]) obs->lo[s] = obs->cur_lo[s];
            if (first || obs->cur_hi[s] > obs->hi[s]) obs->hi[s] = obs->cur_hi[s];
        }
        break;
    case LQ_OBSERVER_MOVING_AVG: {
        /* torch: min + c * (cur - min) on float32 tensors, c rounded to float32 */
        const float c = (float)obs->cfg.param;
        for (int64_t s = 0; s < n; s++) {
            if (first) {
                obs->lo[s] = obs->cur_lo[s];
                obs->hi[s] = obs->cur_hi[s];
                continue;
            }
            float dl = obs->cur_lo[s] - obs->lo[s], dh = obs->cur_hi[s] - obs->hi[s];
            float tl = c * dl, th = c * dh;
            obs->lo[s] = obs->lo[s] + tl;
            obs->hi[s] = obs->hi[s] + th;
        }
        break;
    }
    default: /* percentile, MSE: the mean of the per-batch ranges */
        for (int64_t s = 0; s < n; s++) {
            obs->sum_lo[s] += obs->cur_lo[s];
            obs->sum_hi[s] += obs->cur_hi[s];
            obs->lo[s] = (float)(obs->sum_lo[s] / (double)obs->n_batches);
            obs->hi[s] = (float)(obs->sum_hi[s] / (double)obs->n_batches);
        }
        break;
    }
    return LQ_OK;
}

lq_status lq_observer_range(const lq_observer *obs, float *min, float *max, lq_err *err)
{
    if (!obs) return LQ_ERR(err, LQ_ERR_ARG, "lq_observer_range: NULL observer");
    if (obs->n_batches == 0) return LQ_ERR(err, LQ_ERR_STATE, "observer: no data observed yet");
    if (min) memcpy(min, obs->lo, (size_t)obs->n_slots * sizeof(float));
    if (max) memcpy(max, obs->hi, (size_t)obs->n_slots * sizeof(float));
    return LQ_OK;
}

lq_status lq_observer_qparams(const lq_observer *obs, float *scale, int32_t *zero_point, lq_err *err)
{
    if (!obs || !scale || !zero_point) return LQ_ERR(err, LQ_ERR_ARG, "lq_observer_qparams: NULL argument");
    if (obs->n_batches == 0) return LQ_ERR(err, LQ_ERR_STATE, "observer: no data observed yet, no qparams");
    for (int64_t s = 0; s < obs->n_slots; s++)
        lq_affine_qparams_q(obs->lo[s], obs->hi[s], obs->qmin, obs->qmax, obs->cfg.symmetric, 0, &scale[s],
                            &zero_point[s]);
    return LQ_OK;
}
