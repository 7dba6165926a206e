/* autograd/ops/cuda_shape.cu: CUDA kernels of the shape ops (forward and backward), beside their CPU files. */
#include "autograd/cuda_impl.h"
#include "core/cuda_check.h"

/* Every copy here is a strided f32 copy or accumulation between two layouts of one logical
 * shape, so all of it goes through lq_cuda_strided (one thread per element, each destination
 * element written by exactly one thread: the destinations below never alias). The CPU files are
 * the reference: op_contiguous.c, op_reshape.c, op_transpose.c, op_permute.c, op_slice.c,
 * op_concat.c. Gradients are contiguous in their tensor's logical shape (lq_grad_get). */

/* The forward of a view (reshape, transpose, permute, slice): lq_node_view in the entry function
 * already made the output; nothing to compute, on either device. */
static lq_status view_fwd(lq_ctx *ctx, lq_node *n) {
    (void)ctx;
    (void)n;
    return LQ_OK;
}

/* --- contiguous / reshape ---------------------------------------------------------------------- */

/* y (contiguous) = x (strided), element for element in the logical shape. */
static lq_status contiguous_fwd(lq_ctx *ctx, lq_node *n) {
    int64_t ne4[4];
    size_t dnb[4], snb[4];
    lq_pad4(n->out, ne4, dnb);
    lq_pad4(n->in[0], ne4, snb);
    return lq_cuda_strided(ctx, (float *)n->out->data, dnb, (const float *)n->in[0]->data, snb, ne4, false);
}

/* contiguous and reshape keep the row-major order of the logical elements and both gradients are
 * contiguous, so dx[i] += dy[i] (lq_grad_add accumulates on the device in a CUDA context). */
static lq_status same_order_bwd(lq_ctx *ctx, lq_node *n) {
    return lq_grad_add(ctx, n->in[0], (const float *)n->out->grad->data);
}

/* --- transpose / permute ----------------------------------------------------------------------- */

/* The device twin of lq_permute_backward (op_permute.c): out dim d is x dim perm[d], so dx
 * (contiguous in x's shape, strides cs) seen with strides cs[perm[d]] has y's shape, and dy
 * (contiguous in y's shape) adds into it. perm is a permutation: no two elements of that view
 * share an address, so the non-atomic accumulate is race-free. */
static lq_status permute_bwd_dev(lq_ctx *ctx, lq_node *n, const int *perm) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    const lq_tensor *x = n->in[0], *y = n->out;
    size_t cs[LQ_MAX_DIMS], vs[LQ_MAX_DIMS], ys[LQ_MAX_DIMS];
    lq_contiguous_strides(x->ndim, x->ne, sizeof(float), cs);
    lq_contiguous_strides(y->ndim, y->ne, sizeof(float), ys);
    int64_t ne4[4];
    size_t vs4[4], ys4[4];
    int pad = LQ_MAX_DIMS - y->ndim;
    for (int d = 0; d < y->ndim; d++) vs[d] = cs[perm[d]];
    for (int d = 0; d < LQ_MAX_DIMS; d++) {
        ne4[d] = d < pad ? 1 : y->ne[d - pad];
        vs4[d] = d < pad ? 0 : vs[d - pad];
        ys4[d] = d < pad ? 0 : ys[d - pad];
    }
    return lq_cuda_strided(ctx, gx, vs4, (const float *)y->grad->data, ys4, ne4, true);
}

/* ip[0], ip[1]: the swapped axes (op_transpose.c). */
static lq_status transpose_bwd(lq_ctx *ctx, lq_node *n) {
    int perm[LQ_MAX_DIMS];
    for (int d = 0; d < LQ_MAX_DIMS; d++) perm[d] = d;
    perm[n->ip[0]] = (int)n->ip[1];
    perm[n->ip[1]] = (int)n->ip[0];
    return permute_bwd_dev(ctx, n, perm);
}

/* ip[0..ndim): the permutation (op_permute.c). */
static lq_status permute_bwd(lq_ctx *ctx, lq_node *n) {
    int perm[LQ_MAX_DIMS];
    for (int d = 0; d < LQ_MAX_DIMS; d++) perm[d] = d < n->out->ndim ? (int)n->ip[d] : d;
    return permute_bwd_dev(ctx, n, perm);
}

/* --- slice ------------------------------------------------------------------------------------- */

/* ip[0] = axis, ip[1] = start. y[.., i, ..] = x[.., start + i, ..]: dx[.., start + i, ..] +=
 * dy[.., i, ..], the target being dx + start * stride(axis) with x's contiguous strides and y's
 * sizes (as op_slice.c). */
static lq_status slice_bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    if (!gx) return LQ_OK;
    const lq_tensor *x = n->in[0], *y = n->out;
    int axis = (int)n->ip[0];
    int64_t start = n->ip[1];
    size_t cs[LQ_MAX_DIMS], ys[LQ_MAX_DIMS];
    lq_contiguous_strides(x->ndim, x->ne, sizeof(float), cs);
    lq_contiguous_strides(y->ndim, y->ne, sizeof(float), ys);
    int64_t ne4[4];
    size_t cs4[4], ys4[4];
    int pad = LQ_MAX_DIMS - y->ndim;
    for (int d = 0; d < LQ_MAX_DIMS; d++) {
        ne4[d] = d < pad ? 1 : y->ne[d - pad];
        cs4[d] = d < pad ? 0 : cs[d - pad];
        ys4[d] = d < pad ? 0 : ys[d - pad];
    }
    float *dst = (float *)((char *)gx + (size_t)start * cs[axis]);
    return lq_cuda_strided(ctx, dst, cs4, (const float *)y->grad->data, ys4, ne4, true);
}

/* --- concat ------------------------------------------------------------------------------------ */

/* Input i of the concat lands in out's slice [off, off + len_i) along axis: its shape padded to
 * 4 dims, out's strides, and the byte offset of the slice (op_concat.c's slice_layout). */
static void concat_layout(const lq_tensor *out, const lq_tensor *x, int axis, int64_t off, int64_t ne4[4],
                          size_t onb4[4], size_t *byte_off) {
    int pad = LQ_MAX_DIMS - out->ndim;
    for (int d = 0; d < LQ_MAX_DIMS; d++) {
        ne4[d] = d < pad ? 1 : x->ne[d - pad];
        onb4[d] = d < pad ? 0 : out->nb[d - pad];
    }
    *byte_off = (size_t)off * out->nb[axis];
}

/* ip[0] = axis. Each input (any strides) is copied into its slice of the contiguous output. */
static lq_status concat_fwd(lq_ctx *ctx, lq_node *n) {
    int axis = (int)n->ip[0];
    int64_t off = 0;
    for (int i = 0; i < n->n_in; i++) {
        int64_t ne4[4];
        size_t onb4[4], xnb4[4], bo;
        concat_layout(n->out, n->in[i], axis, off, ne4, onb4, &bo);
        lq_pad4(n->in[i], ne4, xnb4);
        LQ_TRY(lq_cuda_strided(ctx, (float *)((char *)n->out->data + bo), onb4, (const float *)n->in[i]->data, xnb4,
                               ne4, false));
        off += n->in[i]->ne[axis];
    }
    return LQ_OK;
}

/* y = [x_0 | x_1 | ...] along axis: dx_i += dy restricted to x_i's slice. */
static lq_status concat_bwd(lq_ctx *ctx, lq_node *n) {
    int axis = (int)n->ip[0];
    int64_t off = 0;
    const lq_tensor *gy = n->out->grad;
    for (int i = 0; i < n->n_in; i++) {
        float *gx;
        LQ_TRY(lq_grad_get(ctx, n->in[i], &gx));
        if (gx) {
            int64_t ne4[4];
            size_t onb4[4], xnb4[4], bo;
            concat_layout(gy, n->in[i], axis, off, ne4, onb4, &bo);
            lq_pad4(n->in[i]->grad, ne4, xnb4);
            LQ_TRY(lq_cuda_strided(ctx, gx, xnb4, (const float *)((const char *)gy->data + bo), onb4, ne4, true));
        }
        off += n->in[i]->ne[axis];
    }
    return LQ_OK;
}

extern "C" const lq_cuda_op lq_cuda_ops_shape[] = {
    {"contiguous", contiguous_fwd, same_order_bwd},
    {"reshape", view_fwd, same_order_bwd},
    {"transpose", view_fwd, transpose_bwd},
    {"permute", view_fwd, permute_bwd},
    {"slice", view_fwd, slice_bwd},
    {"concat", concat_fwd, concat_bwd},
    {NULL, NULL, NULL},
};
