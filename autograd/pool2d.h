/* autograd/pool2d.h: private helpers shared by max_pool2d and avg_pool2d: window geometry,
 * argument checks, and the gradcheck case. */
#ifndef LQ_AUTOGRAD_POOL2D_H
#define LQ_AUTOGRAD_POOL2D_H

#include "autograd/autograd_impl.h"

/* Work (output elements) below which a pooling loop runs on one thread. */
#define LQ_POOL_PAR_MIN 8192

/* x (N, C, H, W) -> y (N, C, OH, OW); window (oh, ow) covers rows oh sh - ph + [0, kh) and
 * columns ow sw - pw + [0, kw) of one (n, c) plane. */
typedef struct lq_pool2d_geom {
    int64_t N, C, H, W, OH, OW;
    int64_t kh, kw, sh, sw, ph, pw;
} lq_pool2d_geom;

/* Shared entry point: validates x and p (pad <= kernel / 2, as torch requires, so every window
 * holds at least one input element), makes x contiguous, starts the node with the geometry in
 * ip[0..5] and allocates its output. NULL with an error in ctx on failure. */
lq_node *lq_pool2d_begin(lq_ctx *ctx, const lq_op_def *def, lq_tensor *x, const lq_pool2d_params *p);
/* The geometry of a node made by lq_pool2d_begin. */
lq_pool2d_geom lq_pool2d_geom_of(const lq_node *n);
/* A random case: small planes, kernels up to 3 with overlapping (stride < kernel), padded rows
 * and freely drawn columns. distinct draws each plane as a shuffled grid 0.1 apart, so
 * a 1e-2 step never changes which element of a window is largest. */
lq_status lq_pool2d_gc_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c, lq_gc_fn call, bool distinct);
/* The parameters a gradcheck case drew (from c->ip). */
lq_pool2d_params lq_pool2d_gc_params(const lq_gc_case *c);

#endif
