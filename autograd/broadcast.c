/* autograd/broadcast.c: NumPy broadcasting for the elementwise binary ops, forward and the
 * reduction of gradients back to each input's shape. */
#include <string.h>

#include "autograd/broadcast.h"

lq_tensor *lq_bcast_output(lq_ctx *ctx, lq_node *n, const char *op, lq_tensor *a, lq_tensor *b) {
    int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
    int64_t ne[LQ_MAX_DIMS];
    for (int d = 0; d < nd; d++) {
        int da = d - (nd - a->ndim), db = d - (nd - b->ndim);
        int64_t x = da >= 0 ? a->ne[da] : 1, y = db >= 0 ? b->ne[db] : 1;
        if (x != y && x != 1 && y != 1) return lq_shape_error(ctx, op, a, b, "cannot be broadcast together");
        ne[d] = x == 1 ? y : x;
    }
    return lq_node_output(ctx, n, nd, ne);
}

void lq_bcast_strides(const lq_tensor *t, const lq_tensor *out, const size_t *t_nb, size_t nb4[4]) {
    int pad = LQ_MAX_DIMS - t->ndim;
    int opad = LQ_MAX_DIMS - out->ndim;
    for (int d = 0; d < LQ_MAX_DIMS; d++) {
        int td = d - pad;
        if (td < 0) {
            nb4[d] = 0;
            continue;
        }
        int64_t on = d - opad >= 0 ? out->ne[d - opad] : 1;
        nb4[d] = (t->ne[td] == 1 && on != 1) ? 0 : t_nb[td];
    }
}

static inline float apply(lq_binop op, float x, float y) {
    switch (op) {
    case LQ_BINOP_ADD: return x + y;
    case LQ_BINOP_SUB: return x - y;
    default: return x * y;
    }
}

void lq_bcast_forward(lq_ctx *ctx, lq_node *n, lq_binop op) {
    const lq_tensor *a = n->in[0], *b = n->in[1];
    lq_tensor *out = n->out;
    float *o = out->data;
    int64_t m = lq_numel(out);
    if (lq_same_shape(a, b) && lq_is_contiguous(a) && lq_is_contiguous(b)) {
        const float *x = a->data, *y = b->data;
        /* the op hoisted out of the loop, so each loop is one vectorizable stream */
        switch (op) {
        case LQ_BINOP_ADD:
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
            for (int64_t i = 0; i < m; i++) o[i] = x[i] + y[i];
            break;
        case LQ_BINOP_SUB:
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
            for (int64_t i = 0; i < m; i++) o[i] = x[i] - y[i];
            break;
        default:
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
            for (int64_t i = 0; i < m; i++) o[i] = x[i] * y[i];
            break;
        }
        return;
    }
    int64_t ne4[4];
    size_t onb4[4], anb4[4], bnb4[4];
    lq_pad4(out, ne4, onb4);
    lq_bcast_strides(a, out, a->nb, anb4);
    lq_bcast_strides(b, out, b->nb, bnb4);
    int64_t outer = ne4[0] * ne4[1] * ne4[2];
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
    for (int64_t r = 0; r < outer; r++) {
        int64_t i0 = r / (ne4[1] * ne4[2]), i1 = (r / ne4[2]) % ne4[1], i2 = r % ne4[2];
        const char *pa = (const char *)a->data + i0 * anb4[0] + i1 * anb4[1] + i2 * anb4[2];
        const char *pb = (const char *)b->data + i0 * bnb4[0] + i1 * bnb4[1] + i2 * bnb4[2];
        float *po = o + r * ne4[3];
        for (int64_t e = 0; e < ne4[3]; e++)
            po[e] = apply(op, *(const float *)(pa + e * anb4[3]), *(const float *)(pb + e * bnb4[3]));
    }
}

void lq_bcast_accumulate(lq_ctx *ctx, float *g, const lq_tensor *t, const lq_tensor *out, const float *gout,
                         const lq_tensor *other, float sign) {
    int64_t m = lq_numel(out);
    bool same = lq_same_shape(t, out);
    if (same && (!other || (lq_same_shape(other, out) && lq_is_contiguous(other)))) {
        /* one loop per case, so each is a plain vectorizable stream (the same arithmetic: sign is
         * +-1, so sign * v is exact and the sum is the one the single loop made) */
        const float *w = other ? other->data : NULL;
        if (w) {
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
            for (int64_t i = 0; i < m; i++) g[i] += sign * (gout[i] * w[i]);
        } else if (sign == 1.0f) {
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
            for (int64_t i = 0; i < m; i++) g[i] += gout[i];
        } else {
#pragma omp parallel for num_threads(ctx->n_threads) if (m > 65536)
            for (int64_t i = 0; i < m; i++) g[i] += sign * gout[i];
        }
        return;
    }
    /* General case: walk the output; a broadcast dim of t has stride 0 in g, so several output
     * elements add into one g element. Serial, so the sum order is fixed. */
    size_t gcs[LQ_MAX_DIMS];
    lq_contiguous_strides(t->ndim, t->ne, sizeof(float), gcs);
    int64_t ne4[4];
    size_t onb4[4], gnb4[4], wnb4[4] = {0, 0, 0, 0};
    lq_pad4(out, ne4, onb4);
    lq_bcast_strides(t, out, gcs, gnb4);
    if (other) lq_bcast_strides(other, out, other->nb, wnb4);
    int64_t k = 0;
    for (int64_t i0 = 0; i0 < ne4[0]; i0++)
        for (int64_t i1 = 0; i1 < ne4[1]; i1++)
            for (int64_t i2 = 0; i2 < ne4[2]; i2++) {
                char *pg = (char *)g + i0 * gnb4[0] + i1 * gnb4[1] + i2 * gnb4[2];
                const char *pw = other ? (const char *)other->data + i0 * wnb4[0] + i1 * wnb4[1] + i2 * wnb4[2] : NULL;
                for (int64_t e = 0; e < ne4[3]; e++, k++) {
                    float v = gout[k];
                    if (pw) v *= *(const float *)(pw + e * wnb4[3]);
                    *(float *)(pg + e * gnb4[3]) += sign * v;
                }
            }
}

lq_tensor *lq_bcast_op(lq_ctx *ctx, const lq_op_def *def, lq_tensor *a, lq_tensor *b) {
    if (ctx->err.status != LQ_OK) return NULL;
    if (!lq_check_f32(ctx, def->name, "a", a) || !lq_check_f32(ctx, def->name, "b", b)) return NULL;
    lq_tensor *in[2] = {a, b};
    lq_node *n = lq_node_begin(ctx, def, 2, in);
    if (!n || !lq_bcast_output(ctx, n, def->name, a, b)) return NULL;
    return lq_node_finish(ctx, n);
}

lq_status lq_bcast_gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c, lq_gc_fn call) {
    /* out shape (s0, s1, s2); each input drops leading dims at random and sets some dims to 1 */
    int64_t s[3];
    for (int d = 0; d < 3; d++) s[d] = lq_rng_int(rng, 1, 4);
    c->n_in = 2;
    int k = 0;
    for (int i = 0; i < 2; i++) {
        int nd = (int)lq_rng_int(rng, 1, 3);
        int64_t si[3];
        for (int d = 0; d < nd; d++) {
            si[d] = s[3 - nd + d];
            if (lq_rng_int(rng, 0, 2) == 0) si[d] = 1;
        }
        c->in[i] = lq_gc_input(ctx, rng, nd, si, -1, 1);
        if (!c->in[i]) return ctx->err.status;
        char buf[64];
        k += snprintf(c->desc + k, sizeof c->desc - (size_t)k, "%s%s", i ? " with " : "",
                      lq_shape_str(c->in[i], buf, sizeof buf));
    }
    c->call = call;
    return ctx->err.status;
}
