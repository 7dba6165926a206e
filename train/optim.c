/* train/optim.c: AdamW, SGD and gradient-norm clipping over the contiguous parameter block. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/cuda.h"
#include "train/optim_cuda.h"
#include "train/train.h"

/* Below this many elements a parallel region costs more than it saves. */
#define OPTIM_PAR_MIN 32768
/* The norm is summed in this many chunks whose boundaries depend only on the block length, then
 * the chunk sums are added in order: the same bits on any thread count. */
#define CLIP_CHUNKS 256

static int threads_of(int n) { return n > 0 ? n : 1; }

/* The block the optimizer was made for must be the one it is stepped with. */
static lq_status check_block(const lq_params *p, int64_t numel, const void *state, const char *who, lq_err *err) {
    LQ_CHECK(err, p != NULL && lq_params_data(p) != NULL, LQ_ERR_STATE,
             "%s: the parameter set is NULL or not finalized (call lq_params_finalize first)", who);
    LQ_CHECK(err, state != NULL, LQ_ERR_STATE, "%s: optimizer used before %s_init succeeded", who, who);
    LQ_CHECK(err, lq_params_numel(p) == numel, LQ_ERR_ARG,
             "%s: the parameter block has %lld elements but the optimizer state was made for %lld", who,
             (long long)lq_params_numel(p), (long long)numel);
    return LQ_OK;
}

static float *alloc_state(int64_t n) { return calloc((size_t)(n > 0 ? n : 1), sizeof(float)); }

/* Moves an optimizer state array of n floats to the device (to_dev) or back to the host: a copy
 * in a new allocation, then the old one freed. *a is unchanged on failure. */
static lq_status move_state(float **a, int64_t n, bool to_dev, lq_err *err) {
    if (!*a) return LQ_OK;
    size_t bytes = (size_t)(n > 0 ? n : 1) * sizeof(float);
    if (to_dev) {
        float *d = lq_cuda_malloc(bytes, err);
        if (!d) return err && err->status ? err->status : LQ_ERR_OOM;
        lq_status s = lq_cuda_copy(d, *a, bytes, LQ_COPY_H2D, NULL, err);
        if (s != LQ_OK) {
            lq_cuda_free(d);
            return s;
        }
        free(*a);
        *a = d;
        return LQ_OK;
    }
    float *h = malloc(bytes);
    if (!h) return LQ_ERR(err, LQ_ERR_OOM, "out of memory bringing %zu bytes of optimizer state to the host", bytes);
    /* the device may still be writing it (an update queued on another stream) */
    lq_status s = lq_cuda_sync(NULL, err);
    if (s == LQ_OK) s = lq_cuda_copy(h, *a, bytes, LQ_COPY_D2H, NULL, err);
    if (s != LQ_OK) {
        free(h);
        return s;
    }
    lq_cuda_free(*a);
    *a = h;
    return LQ_OK;
}

static void free_state(float *a, bool on_device) {
    if (on_device) lq_cuda_free(a);
    else free(a);
}

/* Host <-> buffer copies of a state array wherever it lives. */
static lq_status state_copy(float *dst, const float *src, int64_t n, bool dev_src, bool dev_dst, lq_err *err) {
    size_t bytes = (size_t)n * sizeof(float);
    if (!dev_src && !dev_dst) {
        memcpy(dst, src, bytes);
        return LQ_OK;
    }
    LQ_TRY(lq_cuda_sync(NULL, err));
    return lq_cuda_copy(dst, src, bytes, dev_src ? LQ_COPY_D2H : LQ_COPY_H2D, NULL, err);
}

/* --- AdamW ---------------------------------------------------------------------------------- */

lq_status lq_adamw_init(lq_adamw *opt, const lq_params *p, const lq_adamw_cfg *cfg, lq_err *err) {
    LQ_CHECK(err, opt != NULL && cfg != NULL, LQ_ERR_ARG, "lq_adamw_init: NULL optimizer or config");
    memset(opt, 0, sizeof *opt);
    LQ_CHECK(err, p != NULL && lq_params_data(p) != NULL, LQ_ERR_STATE,
             "adamw: the parameter set is NULL or not finalized (call lq_params_finalize first)");
    /* !(x >= 0) also rejects NaN */
    LQ_CHECK(err, cfg->lr >= 0 && isfinite(cfg->lr), LQ_ERR_ARG, "adamw: lr = %g must be finite and >= 0",
             (double)cfg->lr);
    LQ_CHECK(err, cfg->beta1 >= 0 && cfg->beta1 < 1, LQ_ERR_ARG, "adamw: beta1 = %g must be in [0, 1)",
             (double)cfg->beta1);
    LQ_CHECK(err, cfg->beta2 >= 0 && cfg->beta2 < 1, LQ_ERR_ARG, "adamw: beta2 = %g must be in [0, 1)",
             (double)cfg->beta2);
    LQ_CHECK(err, cfg->eps > 0 && isfinite(cfg->eps), LQ_ERR_ARG, "adamw: eps = %g must be finite and > 0",
             (double)cfg->eps);
    LQ_CHECK(err, cfg->weight_decay >= 0 && isfinite(cfg->weight_decay), LQ_ERR_ARG,
             "adamw: weight_decay = %g must be finite and >= 0", (double)cfg->weight_decay);
    LQ_CHECK(err, cfg->n_threads >= 0, LQ_ERR_ARG, "adamw: n_threads = %d must be >= 0", cfg->n_threads);
    int64_t n = lq_params_numel(p);
    float *m = alloc_state(n), *v = alloc_state(n);
    if (!m || !v) {
        free(m);
        free(v);
        return LQ_ERR(err, LQ_ERR_OOM, "adamw: out of memory allocating the moments of %lld parameters",
                      (long long)n);
    }
    if (lq_params_device(p) == LQ_DEVICE_CUDA) { /* zeroed on the host, copied over once */
        lq_status s = move_state(&m, n, true, err);
        if (s != LQ_OK) { /* both still on the host */
            free(m);
            free(v);
            return s;
        }
        s = move_state(&v, n, true, err);
        if (s != LQ_OK) {
            lq_cuda_free(m);
            free(v);
            return s;
        }
        opt->on_device = true;
    }
    opt->cfg = *cfg;
    opt->numel = n;
    opt->m = m;
    opt->v = v;
    opt->t = 0;
    return LQ_OK;
}

void lq_adamw_free(lq_adamw *opt) {
    if (!opt) return;
    free_state(opt->m, opt->on_device);
    free_state(opt->v, opt->on_device);
    memset(opt, 0, sizeof *opt);
}

/* Puts the moments where the block is (the trainer moves the block after making the optimizer). */
static lq_status adamw_follow(lq_adamw *opt, const lq_params *p, lq_err *err) {
    bool dev = lq_params_device(p) == LQ_DEVICE_CUDA;
    if (dev == opt->on_device) return LQ_OK;
    /* m first, then v: on a failure between the two, move m back so both stay on one side */
    LQ_TRY(move_state(&opt->m, opt->numel, dev, err));
    lq_status s = move_state(&opt->v, opt->numel, dev, err);
    if (s != LQ_OK) {
        lq_err e;
        lq_err_clear(&e);
        (void)move_state(&opt->m, opt->numel, !dev, &e);
        return s;
    }
    opt->on_device = dev;
    return LQ_OK;
}

lq_status lq_adamw_state_get(const lq_adamw *opt, float *m, float *v, lq_err *err) {
    LQ_CHECK(err, opt && opt->m && opt->v && m && v, LQ_ERR_ARG, "adamw state: NULL optimizer, state or buffer");
    LQ_TRY(state_copy(m, opt->m, opt->numel, opt->on_device, false, err));
    return state_copy(v, opt->v, opt->numel, opt->on_device, false, err);
}

lq_status lq_adamw_state_set(lq_adamw *opt, const float *m, const float *v, lq_err *err) {
    LQ_CHECK(err, opt && opt->m && opt->v && m && v, LQ_ERR_ARG, "adamw state: NULL optimizer, state or buffer");
    LQ_TRY(state_copy(opt->m, m, opt->numel, false, opt->on_device, err));
    return state_copy(opt->v, v, opt->numel, false, opt->on_device, err);
}

/* Per element, in torch's single-tensor order (scalars are computed in double, as Python does,
 * and rounded to float where torch hands them to a float kernel):
 *   p  = p * (1 - lr wd)                          (decay region only)
 *   m  = lerp(m, g, 1 - b1)                       (torch's lerp: m + w (g - m) for w < 0.5,
 *                                                  g - (g - m)(1 - w) otherwise)
 *   v  = v b2 + ((1 - b2) g) g
 *   denom = sqrt(v) / sqrt(1 - b2^t) + eps
 *   p  = p + (-lr / (1 - b1^t)) m / denom */
lq_status lq_adamw_step(lq_adamw *opt, lq_params *p, float lr, lq_err *err) {
    LQ_CHECK(err, opt != NULL, LQ_ERR_ARG, "lq_adamw_step: NULL optimizer");
    LQ_TRY(check_block(p, opt->numel, opt->m, "adamw", err));
    LQ_CHECK(err, lr >= 0 && isfinite(lr), LQ_ERR_ARG, "adamw: step lr = %g must be finite and >= 0", (double)lr);
    LQ_TRY(adamw_follow(opt, p, err));
    opt->t += 1;
    const lq_adamw_cfg *c = &opt->cfg;
    const double t = (double)opt->t;
    const float decay = (float)(1.0 - (double)lr * (double)c->weight_decay);
    const float w = (float)(1.0 - (double)c->beta1);
    const float one_minus_w = 1.0f - w;
    const bool w_small = w < 0.5f;
    const float b2 = c->beta2;
    const float one_minus_b2 = (float)(1.0 - (double)c->beta2);
    const double bc1 = 1.0 - pow((double)c->beta1, t);
    const double bc2 = 1.0 - pow((double)c->beta2, t);
    const float neg_step = (float)(-((double)lr / bc1));
    const float bc2_sqrt = (float)sqrt(bc2);
    const float eps = c->eps;
    const int64_t n = opt->numel, nd = lq_params_decay_numel(p);
    float *restrict x = lq_params_data(p);
    const float *restrict g = lq_params_grad(p);
    float *restrict m = opt->m, *restrict v = opt->v;
    if (opt->on_device) {
        lq_adamw_scalars sc = {.decay = decay, .w = w, .one_minus_w = one_minus_w, .w_small = w_small, .b2 = b2,
                               .one_minus_b2 = one_minus_b2, .neg_step = neg_step, .bc2_sqrt = bc2_sqrt, .eps = eps};
        lq_status s = lq_adamw_step_cuda(x, g, m, v, n, nd, &sc, err);
        if (s != LQ_OK) opt->t -= 1; /* no update was made */
        return s;
    }
#pragma omp parallel for num_threads(threads_of(c->n_threads)) if (n > OPTIM_PAR_MIN) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float xi = x[i];
        if (i < nd) xi *= decay;
        const float gi = g[i];
        float mi = m[i];
        mi = w_small ? mi + w * (gi - mi) : gi - (gi - mi) * one_minus_w;
        const float vi = v[i] * b2 + one_minus_b2 * gi * gi;
        const float denom = sqrtf(vi) / bc2_sqrt + eps;
        m[i] = mi;
        v[i] = vi;
        x[i] = xi + neg_step * mi / denom;
    }
    return LQ_OK;
}

/* --- SGD ------------------------------------------------------------------------------------ */

lq_status lq_sgd_init(lq_sgd *opt, const lq_params *p, const lq_sgd_cfg *cfg, lq_err *err) {
    LQ_CHECK(err, opt != NULL && cfg != NULL, LQ_ERR_ARG, "lq_sgd_init: NULL optimizer or config");
    memset(opt, 0, sizeof *opt);
    LQ_CHECK(err, p != NULL && lq_params_data(p) != NULL, LQ_ERR_STATE,
             "sgd: the parameter set is NULL or not finalized (call lq_params_finalize first)");
    LQ_CHECK(err, cfg->lr >= 0 && isfinite(cfg->lr), LQ_ERR_ARG, "sgd: lr = %g must be finite and >= 0",
             (double)cfg->lr);
    LQ_CHECK(err, cfg->momentum >= 0 && isfinite(cfg->momentum), LQ_ERR_ARG,
             "sgd: momentum = %g must be finite and >= 0", (double)cfg->momentum);
    LQ_CHECK(err, cfg->dampening >= 0 && cfg->dampening <= 1, LQ_ERR_ARG, "sgd: dampening = %g must be in [0, 1]",
             (double)cfg->dampening);
    LQ_CHECK(err, cfg->weight_decay >= 0 && isfinite(cfg->weight_decay), LQ_ERR_ARG,
             "sgd: weight_decay = %g must be finite and >= 0", (double)cfg->weight_decay);
    LQ_CHECK(err, !cfg->nesterov || (cfg->momentum > 0 && cfg->dampening == 0), LQ_ERR_ARG,
             "sgd: nesterov needs momentum > 0 and dampening = 0 (got momentum %g, dampening %g)",
             (double)cfg->momentum, (double)cfg->dampening);
    LQ_CHECK(err, cfg->n_threads >= 0, LQ_ERR_ARG, "sgd: n_threads = %d must be >= 0", cfg->n_threads);
    int64_t n = lq_params_numel(p);
    float *buf = NULL;
    if (cfg->momentum != 0) {
        buf = alloc_state(n);
        if (!buf)
            return LQ_ERR(err, LQ_ERR_OOM, "sgd: out of memory allocating the momentum of %lld parameters",
                          (long long)n);
    }
    if (buf && lq_params_device(p) == LQ_DEVICE_CUDA) {
        lq_status s = move_state(&buf, n, true, err);
        if (s != LQ_OK) {
            free(buf);
            return s;
        }
    }
    opt->on_device = lq_params_device(p) == LQ_DEVICE_CUDA;
    opt->cfg = *cfg;
    opt->numel = n;
    opt->buf = buf;
    opt->t = 0;
    opt->ready = true;
    return LQ_OK;
}

void lq_sgd_free(lq_sgd *opt) {
    if (!opt) return;
    free_state(opt->buf, opt->on_device);
    memset(opt, 0, sizeof *opt);
}

/* Per element, as torch.optim.SGD (the grad block itself is left as it is):
 *   g = g + wd p                                  (decay region only)
 *   buf = g on the first step, else buf mom + (1 - dampening) g
 *   g = nesterov ? g + mom buf : buf              (when mom != 0)
 *   p = p + (-lr) g */
lq_status lq_sgd_step(lq_sgd *opt, lq_params *p, float lr, lq_err *err) {
    LQ_CHECK(err, opt != NULL, LQ_ERR_ARG, "lq_sgd_step: NULL optimizer");
    LQ_TRY(check_block(p, opt->numel, opt->ready ? (const void *)opt : NULL, "sgd", err));
    LQ_CHECK(err, lr >= 0 && isfinite(lr), LQ_ERR_ARG, "sgd: step lr = %g must be finite and >= 0", (double)lr);
    bool dev = lq_params_device(p) == LQ_DEVICE_CUDA;
    if (dev != opt->on_device) { /* the momentum follows the block */
        LQ_TRY(move_state(&opt->buf, opt->numel, dev, err));
        opt->on_device = dev;
    }
    const lq_sgd_cfg *c = &opt->cfg;
    const bool first = opt->t == 0;
    opt->t += 1;
    const float wd = c->weight_decay, mom = c->momentum;
    const float one_minus_damp = (float)(1.0 - (double)c->dampening);
    const float neg_lr = -lr;
    const bool nesterov = c->nesterov, use_wd = wd != 0, use_mom = mom != 0;
    const int64_t n = opt->numel, nd = lq_params_decay_numel(p);
    float *restrict x = lq_params_data(p);
    const float *restrict g = lq_params_grad(p);
    float *restrict buf = opt->buf;
    if (dev) {
        lq_sgd_scalars sc = {.wd = wd, .mom = mom, .one_minus_damp = one_minus_damp, .neg_lr = neg_lr,
                             .nesterov = nesterov, .use_wd = use_wd, .use_mom = use_mom, .first = first};
        lq_status s = lq_sgd_step_cuda(x, g, buf, n, nd, &sc, err);
        if (s != LQ_OK) opt->t -= 1; /* no update was made */
        return s;
    }
#pragma omp parallel for num_threads(threads_of(c->n_threads)) if (n > OPTIM_PAR_MIN) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float xi = x[i];
        float gi = g[i];
        if (use_wd && i < nd) gi = gi + wd * xi;
        if (use_mom) {
            const float b = first ? gi : buf[i] * mom + one_minus_damp * gi;
            buf[i] = b;
            gi = nesterov ? gi + mom * b : b;
        }
        x[i] = xi + neg_lr * gi;
    }
    return LQ_OK;
}

/* --- gradient clipping ---------------------------------------------------------------------- */

double lq_clip_grad_norm(lq_params *p, float max_norm, int n_threads) {
    if (!p || !lq_params_grad(p)) return 0.0;
    float *g = lq_params_grad(p);
    const int64_t n = lq_params_numel(p);
    double part[CLIP_CHUNKS];
    if (lq_params_device(p) == LQ_DEVICE_CUDA) { /* the same chunks, each reduced on the device */
        lq_err e;
        lq_err_clear(&e);
        if (lq_sumsq_cuda(g, n, CLIP_CHUNKS, part, &e) != LQ_OK) return NAN;
        double total = 0.0;
        for (int c = 0; c < CLIP_CHUNKS; c++) total += part[c];
        const double norm = sqrt(total);
        if (!isfinite(norm) || !(max_norm > 0)) return norm;
        const double coef = (double)max_norm / (norm + 1e-6);
        if (coef < 1.0 && lq_scale_cuda(g, n, (float)coef, &e) != LQ_OK) return NAN;
        return norm;
    }
#pragma omp parallel for num_threads(threads_of(n_threads)) if (n > OPTIM_PAR_MIN) schedule(static)
    for (int c = 0; c < CLIP_CHUNKS; c++) {
        const int64_t lo = n * c / CLIP_CHUNKS, hi = n * (c + 1) / CLIP_CHUNKS;
        double s = 0.0;
        for (int64_t i = lo; i < hi; i++) s += (double)g[i] * (double)g[i];
        part[c] = s;
    }
    double total = 0.0;
    for (int c = 0; c < CLIP_CHUNKS; c++) total += part[c];
    const double norm = sqrt(total);
    if (!isfinite(norm) || !(max_norm > 0)) return norm;
    const double coef = (double)max_norm / (norm + 1e-6);
    if (coef < 1.0) {
        const float s = (float)coef;
#pragma omp parallel for num_threads(threads_of(n_threads)) if (n > OPTIM_PAR_MIN) schedule(static)
        for (int64_t i = 0; i < n; i++) g[i] *= s;
    }
    return norm;
}
