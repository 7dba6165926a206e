/* lora/lora.c: LoRA targets and config, the adapted linear layer, and the adapter set with its parameter block. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora/lora.h"

static const char *const target_names[LQ_LORA_N_TARGETS] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
};

const char *lq_lora_target_name(lq_lora_target t) {
    return ((int)t >= 0 && t < LQ_LORA_N_TARGETS) ? target_names[t] : "invalid";
}

const char *lq_lora_target_parent(lq_lora_target t) {
    if ((int)t < 0 || t >= LQ_LORA_N_TARGETS) return "invalid";
    return t <= LQ_LORA_O ? "self_attn" : "mlp";
}

/* The last dotted component names the projection; when a parent component precedes it, it must be
 * the right one ("mlp.q_proj" is not a Llama module). */
int lq_lora_target_parse(const char *name) {
    if (!name || !*name) return -1;
    const char *leaf = strrchr(name, '.');
    leaf = leaf ? leaf + 1 : name;
    for (int t = 0; t < LQ_LORA_N_TARGETS; t++) {
        if (strcmp(leaf, target_names[t]) != 0) continue;
        if (leaf == name) return t;
        const char *pstart = name; /* the component before the leaf */
        for (const char *p = name; p < leaf - 1; p++)
            if (*p == '.') pstart = p + 1;
        size_t plen = (size_t)(leaf - 1 - pstart);
        const char *parent = lq_lora_target_parent((lq_lora_target)t);
        if (plen == strlen(parent) && strncmp(pstart, parent, plen) == 0) return t;
        return -1;
    }
    return -1;
}

float lq_lora_scaling(const lq_lora_cfg *c) {
    if (!c || c->r < 1) return 0.0f;
    /* PEFT computes lora_alpha / r (or / math.sqrt(r)) as a Python double; torch casts that scalar
     * to float32 when it multiplies the float32 adapter output by it. */
    double s = c->rslora ? (double)c->alpha / sqrt((double)c->r) : (double)c->alpha / (double)c->r;
    return (float)s;
}

lq_status lq_lora_cfg_check(const lq_lora_cfg *c, lq_err *err) {
    LQ_CHECK(err, c != NULL, LQ_ERR_ARG, "NULL LoRA config");
    if (c->r < 1) return LQ_ERR(err, LQ_ERR_ARG, "LoRA rank r = %d: must be >= 1", c->r);
    if (!(c->alpha > 0.0f) || !isfinite(c->alpha))
        return LQ_ERR(err, LQ_ERR_ARG, "lora_alpha = %g: must be finite and > 0", (double)c->alpha);
    if (!(c->dropout >= 0.0f && c->dropout < 1.0f))
        return LQ_ERR(err, LQ_ERR_ARG, "lora_dropout = %g: must be in [0, 1)", (double)c->dropout);
    if ((c->targets & LQ_LORA_ALL_LINEAR) == 0)
        return LQ_ERR(err, LQ_ERR_ARG, "LoRA target modules are empty: name at least one of q_proj ... down_proj");
    if (c->targets & ~LQ_LORA_ALL_LINEAR)
        return LQ_ERR(err, LQ_ERR_ARG, "LoRA targets bitmask 0x%x has bits outside the %d projections", c->targets,
                      LQ_LORA_N_TARGETS);
    return LQ_OK;
}

/* ---------------------------------------------------------------------------------------------
 * The adapted linear layer. x (..., in) is made contiguous once; both matmuls then fold the
 * batch dims into one sgemm. Scaling is applied to the (..., r) intermediate rather than the
 * (..., out) product: the same function (s (h B^T) = (s h) B^T), r / out of the work.
 * ------------------------------------------------------------------------------------------- */

lq_tensor *lq_lora_linear(lq_ctx *ctx, lq_tensor *x, lq_tensor *w, lq_tensor *bias, const lq_lora *lora) {
    if (!ctx) return NULL;
    /* An adapter on a frozen base: one fused op (autograd/ops/op_lora_linear.c) that keeps only
     * the (..., r) intermediate for backward instead of five activations of the composition below. */
    if (lora && w && !(w->flags & LQ_TENSOR_REQUIRES_GRAD))
        return lq_lora_linear_fused(ctx, x, w, bias, lora->A, lora->B, lora->scaling, lora->dropout, NULL);
    x = lq_contiguous(ctx, x); /* a NULL x or w records the error in ctx (sticky) */
    lq_tensor *y = w && w->dtype != LQ_DTYPE_F32 ? lq_qmatmul(ctx, x, w) : lq_matmul_t(ctx, x, w, false, true);
    if (bias) y = lq_add(ctx, y, bias);
    if (!lora || !y) return y;
    lq_tensor *h = lora->dropout > 0.0f ? lq_dropout(ctx, x, lora->dropout) : x;
    h = lq_matmul_t(ctx, h, lora->A, false, true); /* (..., r) */
    h = lq_scale(ctx, h, lora->scaling);
    h = lq_matmul_t(ctx, h, lora->B, false, true); /* (..., out) */
    return lq_add(ctx, y, h);
}

/* ---------------------------------------------------------------------------------------------
 * The adapter set
 * ------------------------------------------------------------------------------------------- */

lq_status lq_lora_set_init(lq_lora_set **out, const lq_lora_cfg *cfg, lq_err *err) {
    LQ_CHECK(err, out != NULL, LQ_ERR_ARG, "NULL output");
    *out = NULL;
    LQ_TRY(lq_lora_cfg_check(cfg, err));
    lq_lora_set *s = calloc(1, sizeof *s);
    if (!s) return LQ_ERR(err, LQ_ERR_OOM, "out of memory allocating the LoRA adapter set");
    s->cfg = *cfg;
    lq_status st = lq_params_init(&s->params, err);
    if (st != LQ_OK) {
        free(s);
        return st;
    }
    *out = s;
    return LQ_OK;
}

void lq_lora_set_free(lq_lora_set *s) {
    if (!s) return;
    lq_params_free(s->params);
    free(s->mods);
    free(s);
}

lq_lora *lq_lora_set_find(const lq_lora_set *s, const char *module) {
    if (!s || !module) return NULL;
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->mods[i].module, module) == 0) return &s->mods[i];
    return NULL;
}

lq_lora *lq_lora_set_add(lq_lora_set *s, const char *module, int64_t in, int64_t out, lq_err *err) {
    if (!s || !module || !*module) {
        LQ_ERR(err, LQ_ERR_ARG, "lq_lora_set_add: NULL set or empty module name");
        return NULL;
    }
    if (s->finalized) {
        LQ_ERR(err, LQ_ERR_STATE, "LoRA adapter for '%s' declared after the set was finalized", module);
        return NULL;
    }
    if (in < 1 || out < 1) {
        LQ_ERR(err, LQ_ERR_ARG, "LoRA adapter for '%s': in = %lld, out = %lld features must be >= 1", module,
               (long long)in, (long long)out);
        return NULL;
    }
    /* The parameter names add ".lora_A.weight" (14 characters) to the module path. */
    if (strlen(module) + 14 >= LQ_NAME_MAX) {
        LQ_ERR(err, LQ_ERR_ARG, "LoRA module name '%s' is too long (at most %d characters)", module,
               LQ_NAME_MAX - 15);
        return NULL;
    }
    if (lq_lora_set_find(s, module)) {
        LQ_ERR(err, LQ_ERR_ARG, "LoRA adapter for '%s' declared twice", module);
        return NULL;
    }
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 16;
        lq_lora *m = realloc(s->mods, (size_t)cap * sizeof *m);
        if (!m) {
            LQ_ERR(err, LQ_ERR_OOM, "out of memory declaring LoRA adapter '%s'", module);
            return NULL;
        }
        s->mods = m;
        s->cap = cap;
    }
    char name[LQ_NAME_MAX];
    int64_t ashape[2] = {s->cfg.r, in}, bshape[2] = {out, s->cfg.r};
    snprintf(name, sizeof name, "%s.lora_A.weight", module);
    lq_tensor *A = lq_params_add(s->params, name, 2, ashape, 0, err);
    if (!A) return NULL;
    snprintf(name, sizeof name, "%s.lora_B.weight", module);
    lq_tensor *B = lq_params_add(s->params, name, 2, bshape, 0, err);
    if (!B) return NULL;
    lq_lora *m = &s->mods[s->n++];
    memset(m, 0, sizeof *m);
    snprintf(m->module, sizeof m->module, "%s", module);
    m->in = in;
    m->out = out;
    m->A = A;
    m->B = B;
    m->scaling = lq_lora_scaling(&s->cfg);
    m->dropout = s->cfg.dropout;
    return m;
}

lq_status lq_lora_set_finalize(lq_lora_set *s, uint64_t seed, lq_err *err) {
    LQ_CHECK(err, s != NULL, LQ_ERR_ARG, "NULL LoRA set");
    LQ_CHECK(err, !s->finalized, LQ_ERR_STATE, "LoRA set already finalized");
    LQ_TRY(lq_params_finalize(s->params, err));
    s->finalized = true;
    /* kaiming_uniform_(A, a = sqrt(5)): gain = sqrt(2 / (1 + a^2)) = sqrt(1/3), bound =
     * gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in), fan_in = in (A is (r, in)). B is zeros (the
     * block is zeroed by lq_params_finalize), so the adapted model starts equal to the base. */
    lq_rng rng;
    lq_rng_seed(&rng, seed);
    for (int i = 0; i < s->n; i++) {
        float bound = (float)(1.0 / sqrt((double)s->mods[i].in));
        lq_fill_uniform(s->mods[i].A, &rng, -bound, bound);
    }
    return LQ_OK;
}
