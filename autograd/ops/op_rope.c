/* autograd/ops/op_rope.c: rotary position embedding on x (B, T, H, D), HF "rotate_half" or interleaved pairs. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "autograd/autograd_impl.h"

/* Node parameters: ip[0] layout, ip[1] rot_dim, ip[2] 1 when pos is (B, T), 0 when (T).
 * saved[0] inv_freq (rot_dim/2, arena); saved[1], saved[2] the cos / sin tables (P, rot_dim/2)
 * with P = T or B*T position rows, built by the forward. */

/* cos / sin of angle = (float)pos * inv_freq[i], in float32 as Hugging Face computes them. */
static lq_status build_tables(lq_ctx *ctx, lq_node *n) {
    const int32_t *pos = n->in[1]->data;
    const float *inv_freq = n->saved[0];
    int64_t half = n->ip[1] / 2, P = lq_numel(n->in[1]);
    float *cs = lq_ctx_alloc(ctx, (size_t)(P * half > 0 ? P * half : 1) * sizeof(float));
    float *sn = lq_ctx_alloc(ctx, (size_t)(P * half > 0 ? P * half : 1) * sizeof(float));
    if (!cs || !sn) return ctx->err.status;
#pragma omp parallel for num_threads(ctx->n_threads) if (P * half > 16384)
    for (int64_t p = 0; p < P; p++)
        for (int64_t i = 0; i < half; i++) {
            float angle = (float)pos[p] * inv_freq[i];
            cs[p * half + i] = cosf(angle);
            sn[p * half + i] = sinf(angle);
        }
    n->saved[1] = cs;
    n->saved[2] = sn;
    return LQ_OK;
}

/* Rotates every (b, t, h) row of src into dst by angle sign * theta: pair (a, b) ->
 * (a cos - sign b sin, b cos + sign a sin); dims >= rot_dim are copied (accumulated if acc). */
static void rotate(lq_ctx *ctx, const lq_node *n, const float *src, float *dst, float sign, bool acc) {
    const lq_tensor *x = n->in[0];
    int64_t B = x->ne[0], T = x->ne[1], H = x->ne[2], D = x->ne[3];
    int64_t rot = n->ip[1], half = rot / 2;
    bool interleaved = n->ip[0] == LQ_ROPE_INTERLEAVED, per_batch = n->ip[2] != 0;
    const float *cs = n->saved[1], *sn = n->saved[2];
    int64_t rows = B * T * H;
#pragma omp parallel for num_threads(ctx->n_threads) if (rows * D > 32768)
    for (int64_t r = 0; r < rows; r++) {
        int64_t bt = r / H, t = bt % T;
        int64_t p = per_batch ? bt : t;
        const float *c = cs + p * half, *s = sn + p * half;
        const float *xr = src + r * D;
        float *yr = dst + r * D;
        for (int64_t i = 0; i < half; i++) {
            int64_t ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
            float a = xr[ia], b = xr[ib], si = sign * s[i];
            float ya = a * c[i] - b * si, yb = b * c[i] + a * si;
            if (acc) {
                yr[ia] += ya;
                yr[ib] += yb;
            } else {
                yr[ia] = ya;
                yr[ib] = yb;
            }
        }
        for (int64_t d = rot; d < D; d++) yr[d] = acc ? yr[d] + xr[d] : xr[d];
    }
}

static lq_status fwd(lq_ctx *ctx, lq_node *n) {
    LQ_TRY(build_tables(ctx, n));
    rotate(ctx, n, n->in[0]->data, n->out->data, 1.0f, false);
    return LQ_OK;
}

/* Each pair is y = R(theta) x with R = [[cos, -sin], [sin, cos]], a rotation, so
 * dx = R^T dy = R(-theta) dy: the same rotation with the sine negated. Pass-through dims
 * (>= rot_dim) have dx = dy. Positions are integers: no gradient. */
static lq_status bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    rotate(ctx, n, n->out->grad->data, gx, -1.0f, true);
    return LQ_OK;
}

static lq_tensor *gc_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    lq_rope_params p = {(lq_rope_layout)c->ip[0], (int)c->ip[1], c->fp[0], c->aux};
    return lq_rope(ctx, in[0], in[1], &p);
}

static lq_status gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    int64_t B = lq_rng_int(rng, 1, 2), T = lq_rng_int(rng, 1, 4), H = lq_rng_int(rng, 1, 3);
    int64_t D = 2 * lq_rng_int(rng, 1, 3) + lq_rng_int(rng, 0, 1); /* odd D allowed if rot_dim < D */
    int64_t rot = 2 * lq_rng_int(rng, 0, D / 2);                   /* 0 means D when D is even */
    if (rot == 0 && D % 2) rot = 2;
    bool per_batch = lq_rng_int(rng, 0, 1), own_freq = lq_rng_int(rng, 0, 1);
    int layout = (int)lq_rng_int(rng, 0, 1);
    c->n_in = 2;
    c->in[0] = lq_gc_input(ctx, rng, 4, (int64_t[]){B, T, H, D}, -1, 1);
    c->in[1] = per_batch ? lq_gc_ids(ctx, rng, 2, (int64_t[]){B, T}, 0, 40) : lq_gc_ids(ctx, rng, 1, &T, 0, 40);
    c->ip[0] = layout;
    c->ip[1] = rot;
    c->fp[0] = lq_rng_int(rng, 0, 1) ? 10000.0f : 50.0f;
    if (own_freq) {
        int64_t half = (rot ? rot : D) / 2;
        float *f = lq_ctx_alloc(ctx, (size_t)half * sizeof(float));
        if (!f) return ctx->err.status;
        for (int64_t i = 0; i < half; i++) f[i] = 0.05f + lq_rng_uniform(rng);
        c->aux = f;
    }
    c->call = gc_call;
    snprintf(c->desc, sizeof c->desc, "x (%lld, %lld, %lld, %lld) pos %s %s rot_dim %lld %s", (long long)B,
             (long long)T, (long long)H, (long long)D, per_batch ? "(B, T)" : "(T)",
             layout == LQ_ROPE_INTERLEAVED ? "interleaved" : "half", (long long)rot,
             own_freq ? "inv_freq given" : "theta");
    return ctx->err.status;
}

const lq_op_def lq_op_rope = {"rope", fwd, bwd, gc_make};

lq_tensor *lq_rope(lq_ctx *ctx, lq_tensor *x, lq_tensor *pos, const lq_rope_params *p) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!lq_check_f32(ctx, "rope", "x", x)) return NULL;
    if (!pos) return LQ_OP_FAIL(ctx, LQ_ERR_ARG, "rope: pos is NULL");
    LQ_OP_CHECK(ctx, pos->dtype == LQ_DTYPE_I32, LQ_ERR_ARG, "rope: pos must be i32, got %s",
                lq_dtype_name(pos->dtype));
    LQ_OP_CHECK(ctx, pos->device == LQ_DEVICE_CPU, LQ_ERR_UNSUPPORTED, "rope: pos must be on the CPU");
    lq_rope_params def = {LQ_ROPE_HALF, 0, 10000.0f, NULL};
    if (!p) p = &def;
    if (x->ndim != 4) return lq_shape_error(ctx, "rope", x, pos, "do not fit: x must be (B, T, H, D)");
    int64_t B = x->ne[0], T = x->ne[1], D = x->ne[3];
    bool per_batch = pos->ndim == 2;
    if (!((pos->ndim == 1 && pos->ne[0] == T) || (per_batch && pos->ne[0] == B && pos->ne[1] == T)))
        return lq_shape_error(ctx, "rope", x, pos, "do not fit: pos must be (T) or (B, T) for x (B, T, H, D)");
    LQ_OP_CHECK(ctx, p->layout == LQ_ROPE_HALF || p->layout == LQ_ROPE_INTERLEAVED, LQ_ERR_ARG,
                "rope: unknown layout %d", (int)p->layout);
    int64_t rot = p->rot_dim ? p->rot_dim : D;
    LQ_OP_CHECK(ctx, rot > 0 && rot % 2 == 0 && rot <= D, LQ_ERR_ARG,
                "rope: rot_dim %lld must be even, positive and at most D = %lld", (long long)rot, (long long)D);
    LQ_OP_CHECK(ctx, p->inv_freq || p->theta > 0.0f, LQ_ERR_ARG, "rope: theta %g must be positive",
                (double)p->theta);
    int64_t half = rot / 2;
    /* the frequencies live in the arena: the caller's inv_freq need not outlive this call */
    float *inv_freq = lq_ctx_alloc(ctx, (size_t)half * sizeof(float));
    if (!inv_freq) return NULL;
    for (int64_t i = 0; i < half; i++)
        inv_freq[i] = p->inv_freq ? p->inv_freq[i] : 1.0f / powf(p->theta, (float)(2 * i) / (float)rot);
    if (!lq_is_contiguous(pos)) { /* a copy; positions carry no gradient, so no node */
        lq_tensor *pc = lq_new(ctx, LQ_DTYPE_I32, pos->ndim, pos->ne);
        if (!pc) return NULL;
        int32_t *d = pc->data;
        for (int64_t i = 0; i < lq_numel(pos); i++) {
            int64_t i0 = per_batch ? i / T : i, i1 = per_batch ? i % T : 0;
            d[i] = *(const int32_t *)((const char *)pos->data + i0 * pos->nb[0] + (per_batch ? i1 * pos->nb[1] : 0));
        }
        pos = pc;
    }
    x = lq_contiguous(ctx, x);
    lq_tensor *in[2] = {x, pos};
    lq_node *n = lq_node_begin(ctx, &lq_op_rope, 2, in);
    if (!n) return NULL;
    n->ip[0] = p->layout;
    n->ip[1] = rot;
    n->ip[2] = per_batch;
    n->saved[0] = inv_freq;
    if (!lq_node_output(ctx, n, 4, x->ne)) return NULL;
    return lq_node_finish(ctx, n);
}
