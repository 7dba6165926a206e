/* autograd/autograd_impl.h: private parts of autograd: the arena, context, tape nodes, op table
 * entries and the helpers every op file uses. */
#ifndef LQ_AUTOGRAD_IMPL_H
#define LQ_AUTOGRAD_IMPL_H

#include "autograd/autograd.h"

#define LQ_MAX_INPUTS 16
#define LQ_ALIGN 64

/* --- arena: a bump allocator over a list of chunks; reset every step ------------------------ */

typedef struct lq_arena_chunk {
    struct lq_arena_chunk *next;
    size_t cap;
    size_t used;
    unsigned char *base;
} lq_arena_chunk;

typedef struct lq_arena {
    bool device; /* chunks are device memory (CUDA contexts' activations) */
    lq_arena_chunk *first;
    lq_arena_chunk *cur;
    size_t base_used; /* bytes used in the chunks before cur */
    size_t high_water;
    uint64_t sys_allocs;
} lq_arena;

lq_status lq_arena_init(lq_arena *a, size_t bytes);
/* The same over device memory: the chunk headers live on the host, the bytes on the device. */
lq_status lq_arena_init_device(lq_arena *a, size_t bytes, lq_err *err);
void lq_arena_free(lq_arena *a);
/* 64-byte aligned, uninitialised; NULL when the system is out of memory. */
void *lq_arena_alloc(lq_arena *a, size_t bytes);
/* Frees everything; if the arena had to grow, its chunks are merged into one so that the next
 * step of the same size needs no malloc. */
void lq_arena_reset(lq_arena *a);
void lq_arena_reset_to(lq_arena *a, lq_arena_chunk *chunk, size_t used);
/* Whether p points into memory a has handed out since its last reset. */
bool lq_arena_holds(const lq_arena *a, const void *p);
size_t lq_arena_used(const lq_arena *a);
size_t lq_arena_capacity(const lq_arena *a);

/* --- gradient pool: reusable blocks for intermediate gradients (lq_ctx_set_release_grads) ---- */

/* Private flag on a grad tensor whose header and data are a pool block (grad_pool.c). */
#define LQ_TENSOR_POOLED_GRAD (1u << 30)

typedef struct lq_pool_block lq_pool_block;
typedef struct lq_pool_class {
    size_t bytes;        /* data bytes of every block in the class (64-aligned) */
    lq_pool_block *free; /* blocks ready to hand out */
    int n_free, n_out;
    int step_peak;       /* most blocks of the class handed out at once this step */
} lq_pool_class;

typedef struct lq_grad_pool {
    lq_pool_class *cls; /* free lists keyed by exact byte size; a model has a few dozen sizes */
    int n_cls, cap_cls;
    lq_pool_block *out; /* blocks handed out now (doubly linked) */
    size_t in_use, high_water, capacity; /* bytes, headers included */
    uint64_t sys_allocs;
    bool used_this_step;
} lq_grad_pool;

/* A zeroed contiguous f32 gradient of like's logical shape from the pool (flagged
 * LQ_TENSOR_POOLED_GRAD); NULL with an error in ctx if out of memory. */
lq_tensor *lq_pool_grad(lq_ctx *ctx, const lq_tensor *like);
/* The same; zero false: the block's bytes as they are (NaN in a poison context). */
lq_tensor *lq_pool_grad_ex(lq_ctx *ctx, const lq_tensor *like, bool zero);
/* Gives a pool gradient like's logical shape (the same number of elements; data unchanged). */
void lq_pool_reshape(lq_tensor *grad, const lq_tensor *like);
/* Hands a pool gradient back; the tensor (header included) must not be used after. */
void lq_pool_release(lq_grad_pool *p, lq_tensor *grad);
/* End of a step: takes back every block still out and trims classes the step did not need. */
void lq_pool_step_end(lq_grad_pool *p);
void lq_pool_free(lq_grad_pool *p);

/* --- context ------------------------------------------------------------------------------- */

struct lq_ctx {
    lq_err err;
    int n_threads;
    bool grad_enabled;
    bool training;
    uint64_t seed;
    uint64_t rng_stream; /* next stream id for a random op */
    lq_arena main;
    lq_arena scratch;    /* checkpointed segments run here */
    lq_arena *arena;     /* where allocations go now */
    struct lq_node *tape; /* newest recorded node */
    /* Bumped whenever tensors may have been dropped (step reset, a rewind of the tape or the arena):
     * a copy of a tensor's data keyed by its address (lq_cuda_act_bf16) is valid within one value. */
    uint64_t tensor_gen;
    bool release_grads;   /* intermediates' grads come from pool and go back after their node's backward */
    lq_grad_pool pool;
    /* CUDA contexts (device == LQ_DEVICE_CUDA): float tensor data goes to darena, which is dmain
     * or dscratch as arena is main or scratch; cuda holds the stream, cuBLAS handle and the
     * op table's kernels (autograd/cuda_ctx.cu). */
    lq_device_kind device;
    lq_cuda_math cuda_math;
    bool poison;
    lq_arena dmain, dscratch;
    lq_arena *darena;
    struct lq_cuda_state *cuda;
    /* opts.profile: per op-table index, [2 i] forward and [2 i + 1] backward */
    double *prof_ms;
    int64_t *prof_calls;
};


/* --- tape nodes and the op table ------------------------------------------------------------ */

typedef struct lq_node lq_node;
typedef lq_status (*lq_op_fn)(lq_ctx *ctx, lq_node *node);

/* A random test case for an op: inputs (leaves, f32 ones flagged REQUIRES_GRAD are checked),
 * the parameters it drew, and a call that applies the op to inputs with them. */
typedef struct lq_gc_case {
    int n_in;
    lq_tensor *in[LQ_MAX_INPUTS];
    lq_gc_fn call; /* user argument is the case itself */
    lq_gc_fn surrogate; /* optional: differentiated numerically instead of call (see lq_gc_opts) */
    int64_t ip[8];
    float fp[4];
    float step;    /* finite-difference step; 0 = default */
    void *aux;
    char desc[128];
} lq_gc_case;
typedef lq_status (*lq_gc_make_fn)(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c);

typedef struct lq_op_def {
    const char *name;
    lq_op_fn forward;  /* computes node->out from node->in and the node's parameters */
    lq_op_fn backward; /* accumulates node->out->grad into the inputs' grads */
    lq_gc_make_fn gc_make;
} lq_op_def;

struct lq_node {
    const lq_op_def *op;
    lq_tensor *out;
    lq_tensor *in[LQ_MAX_INPUTS];
    int n_in;
    int64_t ip[8];  /* integer parameters (axes, strides, flags) */
    float fp[8];    /* float parameters (eps, scale, p) */
    void *saved[4]; /* buffers the forward keeps for backward (arena), or op-specific pointers */
    bool recorded;  /* on the tape: backward will visit it */
    lq_node *prev;
};

extern const lq_op_def *const lq_op_table[];
extern const int lq_op_table_len;
/* Whether op's one forward and backward serve every device (it only makes views or moves data
 * through device-aware calls: lq_strided_to, lq_grad_add); else a CUDA context runs the op's
 * kernels from the CUDA tables (autograd/cuda_ctx.cu). */
bool lq_op_any_device(const lq_op_def *op);

/* Starts an op: NULL (and an error in ctx, unless one is already there) if the context has
 * failed or an input is NULL. Records when grad mode is on and an input requires a grad. */
lq_node *lq_node_begin(lq_ctx *ctx, const lq_op_def *op, int n_in, lq_tensor *const *in);
/* The common start of an op whose output has x's shape: checks that x is f32, makes it
 * contiguous, begins the node and allocates the output. NULL on failure. */
lq_node *lq_node_begin_like(lq_ctx *ctx, const lq_op_def *op, lq_tensor *x);
/* Allocates node->out as a contiguous f32 tensor of the given shape. */
lq_tensor *lq_node_output(lq_ctx *ctx, lq_node *n, int ndim, const int64_t *shape);
/* Makes node->out a view of src with the given shape and byte strides at byte offset. */
lq_tensor *lq_node_view(lq_ctx *ctx, lq_node *n, lq_tensor *src, int ndim, const int64_t *shape,
                        const size_t *nb, size_t offset);
/* Runs the forward, links the node into the tape if recorded, returns node->out or NULL. */
lq_tensor *lq_node_finish(lq_ctx *ctx, lq_node *n);

/* The gradient buffer of t (contiguous f32, t's logical shape), allocated zeroed on first use.
 * *g = NULL when t needs no gradient. */
lq_status lq_grad_get(lq_ctx *ctx, lq_tensor *t, float **g);
/* lq_grad_get for a backward that can assign instead of add: when t's gradient is about to be
 * made from the pool (release mode), it comes unzeroed and *fresh is true: the caller must write
 * every element (=, or a product with beta 0) before anything adds to it; else as lq_grad_get,
 * *fresh false (add as usual). Saves a fill and a read of the whole buffer. */
lq_status lq_grad_get_fresh(lq_ctx *ctx, lq_tensor *t, float **g, bool *fresh);
/* t's gradient += src (contiguous, t's logical shape); nothing when t needs no gradient. */
lq_status lq_grad_add(lq_ctx *ctx, lq_tensor *t, const float *src);
/* For a backward whose dx is dy itself (x holds out's elements in out's order: a reshape, an
 * add's unbroadcast input): when x has no gradient yet and both gradients live in the pool
 * (release mode), x takes over out's gradient block, which out would hand back right after this
 * backward anyway: no zeroed block, no copy. Then out->grad is NULL and the result true; false
 * (nothing changed) when that does not apply, and the caller adds as usual. */
bool lq_grad_adopt(lq_ctx *ctx, lq_tensor *x, lq_tensor *out);
/* Walks the tape from its newest node back to stop (exclusive), running each backward. */
lq_status lq_tape_walk(lq_ctx *ctx, lq_node *stop);
/* Scratch memory in the current arena; NULL with an error in ctx if out of memory. */
void *lq_ctx_alloc(lq_ctx *ctx, size_t bytes);
/* Scratch memory for tensor data on the context's device: the device arena of a CUDA context,
 * the host arena otherwise. */
void *lq_ctx_dalloc(lq_ctx *ctx, size_t bytes);
/* An op's kernels for the context's device: node->op's own for the CPU, the CUDA table's entry
 * otherwise (NULL functions when the op has no CUDA kernel). */
lq_op_fn lq_op_forward_for(lq_ctx *ctx, const lq_op_def *op);
lq_op_fn lq_op_backward_for(lq_ctx *ctx, const lq_op_def *op);
/* Profiling around an op's forward / backward (no-ops unless ctx->prof_ms). */
double lq_prof_begin(lq_ctx *ctx);
void lq_prof_end(lq_ctx *ctx, const lq_op_def *op, bool backward, double t0);
bool lq_requires_grad(const lq_tensor *t);

/* Records an error in ctx and evaluates to NULL (for op entry points). */
#define LQ_OP_FAIL(ctx, s, ...) (lq_err_set(&(ctx)->err, (s), __FILE__, __LINE__, __VA_ARGS__), (lq_tensor *)NULL)
#define LQ_OP_CHECK(ctx, cond, s, ...)                                                         \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            lq_err_check(&(ctx)->err, (s), __FILE__, __LINE__, #cond, __VA_ARGS__);            \
            return NULL;                                                                       \
        }                                                                                      \
    } while (0)

/* Checks that t is a non-NULL f32 CPU tensor; names op and argument in the error. */
bool lq_check_f32(lq_ctx *ctx, const char *op, const char *arg, const lq_tensor *t);
/* Records "op: shapes (..) and (..) <what>" as LQ_ERR_SHAPE; returns NULL. */
lq_tensor *lq_shape_error(lq_ctx *ctx, const char *op, const lq_tensor *a, const lq_tensor *b, const char *what);

/* Copies / adds between f32 layouts of the same logical shape ne (ndim padded to 4 left). */
void lq_strided_copy(float *dst, const size_t *dst_nb, const float *src, const size_t *src_nb,
                     const int64_t *ne, int n_threads);
void lq_strided_add(float *dst, const size_t *dst_nb, const float *src, const size_t *src_nb,
                    const int64_t *ne, int n_threads);
/* The same on the context's device (the CUDA kernel for a CUDA context): what the view ops, concat
 * and checkpoint use, so their one implementation serves both devices. */
lq_status lq_strided_to(lq_ctx *ctx, float *dst, const size_t *dst_nb, const float *src, const size_t *src_nb,
                        const int64_t *ne, bool accumulate);
/* Backward of a view that permutes x's dims (out dim d is x dim perm[d]); transpose uses it. */
lq_status lq_permute_backward(lq_ctx *ctx, lq_node *n, const int *perm);
/* Contiguous byte strides for a shape, written into nb. */
void lq_contiguous_strides(int ndim, const int64_t *ne, size_t elem, size_t *nb);
/* Shape and strides padded on the left to 4 dims (for 4-deep loops). */
void lq_pad4(const lq_tensor *t, int64_t ne4[4], size_t nb4[4]);

/* gradcheck helpers for op cases */
lq_tensor *lq_gc_input(lq_ctx *ctx, lq_rng *rng, int ndim, const int64_t *shape, float lo, float hi);
lq_tensor *lq_gc_ids(lq_ctx *ctx, lq_rng *rng, int ndim, const int64_t *shape, int32_t lo, int32_t hi);
/* Document ids (B, T) i32 of packed sequences: nondecreasing along T from 0, a new document
 * starting at each token after the first with probability 1 / one_in (attention's doc masks). */
lq_tensor *lq_gc_doc_ids(lq_ctx *ctx, lq_rng *rng, int64_t B, int64_t T, int64_t one_in);
/* A row length for a case of an op that reduces along rows (norms, softmax, cross-entropy): half
 * the draws lo..hi (cheap to check numerically), half 257..300, wider than a 256-thread CUDA
 * block, so that every warp of a block reduction holds data (the GPU parity suite runs these). */
int64_t lq_gc_row_len(lq_rng *rng, int64_t lo, int64_t hi);

#endif
