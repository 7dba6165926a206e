/* autograd/autograd.h: tensors, the context (arena, tape, error), parameters and every op. */
#ifndef LQ_AUTOGRAD_H
#define LQ_AUTOGRAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/rng.h"
#include "core/status.h"
#include "quant/quant.h"

/* ---------------------------------------------------------------------------------------------
 * Tensor
 *
 * Shapes are in PyTorch order: ne[0] is the outermost dimension and ne[ndim-1] the innermost,
 * so a batch of token activations is (B, T, C) with C contiguous. Strides nb[] are in bytes.
 * Dimensions past ndim have ne = 1. ndim = 0 is a scalar.
 * grad == NULL means no gradient: a frozen base weight can never get one. An activation that
 * needs a gradient carries LQ_TENSOR_REQUIRES_GRAD and gets its grad (contiguous, same logical
 * shape, f32) lazily during backward.
 * ------------------------------------------------------------------------------------------- */

#define LQ_MAX_DIMS 4
#define LQ_NAME_MAX 64
#define LQ_AXIS_ALL 127 /* reduce over every axis */

typedef enum lq_device_kind { LQ_DEVICE_CPU = 0, LQ_DEVICE_CUDA } lq_device_kind;

enum lq_tensor_flags {
    LQ_TENSOR_PARAM = 1u << 0,         /* lives in an lq_params block */
    LQ_TENSOR_REQUIRES_GRAD = 1u << 1, /* backward computes its gradient */
    LQ_TENSOR_VIEW = 1u << 2,          /* shares data with another tensor */
    LQ_TENSOR_OWNS_DATA = 1u << 3,     /* lq_tensor_free releases data */
    LQ_TENSOR_NO_DECAY = 1u << 4,      /* parameter excluded from weight decay */
};

struct lq_node;

typedef struct lq_tensor {
    lq_dtype dtype;
    int ndim;
    int64_t ne[LQ_MAX_DIMS]; /* elements per dimension, outermost first */
    size_t nb[LQ_MAX_DIMS];  /* byte stride per dimension */
    lq_device_kind device;
    void *data;
    struct lq_tensor *grad;
    uint32_t flags;
    char name[LQ_NAME_MAX];
    struct lq_node *node; /* the tape node that produced it; NULL for leaves */
    lq_qstate *qs;        /* scales of a quantized format that keeps them beside the codes */
} lq_tensor;

/* Fills t as a contiguous tensor over data (not owned). Fails on a bad shape or block size. */
lq_status lq_tensor_init(lq_tensor *t, lq_dtype dtype, int ndim, const int64_t *shape, void *data, lq_err *err);
/* Heap tensor with zeroed data it owns: for frozen weights and data that outlive a step. */
lq_tensor *lq_tensor_alloc(lq_dtype dtype, int ndim, const int64_t *shape, const char *name, lq_err *err);
void lq_tensor_free(lq_tensor *t);

int64_t lq_numel(const lq_tensor *t);
size_t lq_nbytes(const lq_tensor *t); /* bytes of a contiguous tensor of this shape */
bool lq_is_contiguous(const lq_tensor *t);
bool lq_same_shape(const lq_tensor *a, const lq_tensor *b);
/* Normalises a possibly negative axis; -1 if out of range. */
int lq_axis(const lq_tensor *t, int axis);
/* "(2, 3, 4)" into buf; returns buf. */
const char *lq_shape_str(const lq_tensor *t, char *buf, size_t n);
void lq_tensor_set_name(lq_tensor *t, const char *name);
/* Pointer to element (i0, i1, i2, i3) of an f32 tensor, via strides. */
float *lq_f32_at(const lq_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t i3);

/* ---------------------------------------------------------------------------------------------
 * Context: error state, grad mode, threads, seed, the activation arena and the tape.
 *
 * Op functions return a tensor, or NULL after recording an error in the context. The error is
 * sticky: an op given NULL or called after a failure returns NULL at once, so a model's forward
 * can be written straight and checked once with lq_ctx_status().
 * ------------------------------------------------------------------------------------------- */

typedef struct lq_ctx lq_ctx;

/* How a CUDA context's matrix products use the tensor cores: plain fp32, tf32 inputs, or bf16
 * inputs, always with fp32 accumulation and fp32 results. */
typedef enum lq_cuda_math { LQ_CUDA_MATH_TF32 = 0, LQ_CUDA_MATH_FP32, LQ_CUDA_MATH_BF16 } lq_cuda_math;

typedef struct lq_ctx_opts {
    int n_threads;       /* OpenMP threads for op loops; 0 = 1 */
    size_t arena_bytes;  /* initial arena size; it grows while the first steps find their size */
    uint64_t seed;       /* dropout and other random ops */
    /* LQ_DEVICE_CUDA: ops run on the GPU (make CUDA=1). Float activations and gradients live in a
     * device arena; integer side inputs (token ids, positions, labels, document ids) stay on the
     * host, and the ops that read them copy them over. Weights and parameters must be on the
     * device (lq_tensor_to_device, lq_params_to_device). */
    lq_device_kind device;
    lq_cuda_math cuda_math;
    bool poison; /* fill every new device activation with NaN bytes (tests: unwritten outputs show) */
    bool profile; /* time every op's forward and backward (waiting for the device after each) */
} lq_ctx_opts;

lq_status lq_ctx_init(lq_ctx **ctx, const lq_ctx_opts *opts, lq_err *err);
void lq_ctx_free(lq_ctx *ctx);

lq_status lq_ctx_status(const lq_ctx *ctx);
const lq_err *lq_ctx_error(const lq_ctx *ctx);
void lq_ctx_clear_error(lq_ctx *ctx);
int lq_ctx_threads(const lq_ctx *ctx);

/* No-grad mode: ops record nothing (inference). Returns the previous setting. */
bool lq_ctx_set_grad(lq_ctx *ctx, bool enabled);
bool lq_ctx_grad_enabled(const lq_ctx *ctx);
/* Training mode turns dropout on. Returns the previous setting. */
bool lq_ctx_set_training(lq_ctx *ctx, bool training);
/* Restarts the random streams of random ops (dropout) at a given seed. */
void lq_ctx_set_seed(lq_ctx *ctx, uint64_t seed);

/* Gradient release (off by default): the gradient of a recorded op's output (an intermediate:
 * never a leaf, a parameter, or a tensor whose grad the caller set) comes from a context-owned
 * pool of reusable blocks and goes back to it as soon as that op's backward has run, as PyTorch
 * frees a node's incoming gradient. Backward then holds only the gradients still to be consumed
 * instead of every one until the step ends; results are bit-identical. After backward such
 * tensors' grad is NULL (the loss's too), so leave it off when reading intermediate gradients.
 * Blocks are kept across steps (no malloc once a step of the same shapes has run) and freed by
 * lq_ctx_free. Returns the previous setting. */
bool lq_ctx_set_release_grads(lq_ctx *ctx, bool on);

/* With opts.profile: the time each op took so far (forward and backward apart, milliseconds, calls),
 * as a table sorted by time, into buf (truncated to n). Resets the counters when reset is true. */
void lq_ctx_profile_report(lq_ctx *ctx, char *buf, size_t n, bool reset);

/* End of a step: drops the tape and every activation; the arena keeps its memory. */
void lq_ctx_step_reset(lq_ctx *ctx);

/* A point in the arena and tape to return to (gradcheck, evaluation loops). */
typedef struct lq_ctx_mark {
    void *chunk;
    size_t used;
    struct lq_node *tape;
    void *dchunk; /* the device arena's point (CUDA contexts) */
    size_t dused;
} lq_ctx_mark;
lq_ctx_mark lq_ctx_get_mark(const lq_ctx *ctx);
void lq_ctx_reset_to(lq_ctx *ctx, lq_ctx_mark mark);

typedef struct lq_arena_stats {
    size_t used;       /* bytes in use now */
    size_t high_water; /* most bytes ever in use at once */
    size_t capacity;   /* bytes held */
    uint64_t sys_allocs; /* times the arena called malloc */
    /* the gradient pool (lq_ctx_set_release_grads), bytes incl. 64-byte block headers */
    size_t pool_in_use, pool_high_water, pool_capacity;
    uint64_t pool_sys_allocs;
    /* a CUDA context's device arenas, bytes */
    size_t device_used, device_high_water, device_capacity;
} lq_arena_stats;
lq_arena_stats lq_ctx_arena_stats(const lq_ctx *ctx);

/* The device a context's ops run on. */
lq_device_kind lq_ctx_device(const lq_ctx *ctx);
/* Copies between a host buffer and a tensor's data wherever it lives (contiguous tensors; bytes =
 * lq_nbytes). The download waits for the device's work queued before it. */
lq_status lq_tensor_download(lq_ctx *ctx, const lq_tensor *t, void *host);
lq_status lq_tensor_upload(lq_ctx *ctx, lq_tensor *t, const void *host);
/* A copy of host tensor t (any dtype, contiguous) in the context's arena on its device; the copy
 * keeps t's REQUIRES_GRAD flag (a leaf). For a CPU context, a plain copy. NULL on error. */
lq_tensor *lq_to_ctx_device(lq_ctx *ctx, const lq_tensor *t);
/* Element i of an f32 tensor (contiguous), read from wherever it lives; NaN on error. */
float lq_tensor_get_f32(lq_ctx *ctx, const lq_tensor *t, int64_t i);
/* Moves a heap tensor's data (from lq_tensor_alloc or a model's weights), and the arrays of its
 * quant state, to the device. A tensor that owned its data (LQ_TENSOR_OWNS_DATA) is taken to own
 * its quant state too: both host copies are freed. Non-owned data (a mapped file) and a state
 * someone else owns are copied and left alone. Either way the tensor then owns the device data
 * and t->qs is a device state (qs->device) that lq_qstate_free releases. */
lq_status lq_tensor_to_device(lq_tensor *t, lq_err *err);

/* Activation tensor in the arena (uninitialised data), freed by the next step reset. */
lq_tensor *lq_new(lq_ctx *ctx, lq_dtype dtype, int ndim, const int64_t *shape);
lq_tensor *lq_zeros(lq_ctx *ctx, lq_dtype dtype, int ndim, const int64_t *shape);
/* Leaf tensor in the arena whose gradient backward computes (for tests and custom inputs). */
lq_tensor *lq_new_leaf(lq_ctx *ctx, int ndim, const int64_t *shape, bool requires_grad);
/* Fills an f32 tensor with N(0, std^2) or U[lo, hi) from rng. */
void lq_fill_normal(lq_tensor *t, lq_rng *rng, float std);
void lq_fill_uniform(lq_tensor *t, lq_rng *rng, float lo, float hi);

/* ---------------------------------------------------------------------------------------------
 * Parameters: every trainable tensor in one contiguous f32 block (and one for the grads), so an
 * optimizer is one loop. Tensors are declared first, then the block is allocated at once.
 * Parameters flagged LQ_TENSOR_NO_DECAY are laid out after the others, so weight decay applies
 * to the prefix [0, decay_numel).
 * ------------------------------------------------------------------------------------------- */

typedef struct lq_params lq_params;

lq_status lq_params_init(lq_params **p, lq_err *err);
void lq_params_free(lq_params *p);
/* Declares a parameter; its data is NULL until lq_params_finalize. NULL on error. */
lq_tensor *lq_params_add(lq_params *p, const char *name, int ndim, const int64_t *shape, uint32_t flags,
                         lq_err *err);
/* Allocates the zeroed data and grad blocks and points every parameter into them. */
lq_status lq_params_finalize(lq_params *p, lq_err *err);
int lq_params_count(const lq_params *p);
lq_tensor *lq_params_at(const lq_params *p, int i);
lq_tensor *lq_params_find(const lq_params *p, const char *name);
float *lq_params_data(const lq_params *p);
float *lq_params_grad(const lq_params *p);
int64_t lq_params_numel(const lq_params *p);       /* block length, alignment padding included */
int64_t lq_params_decay_numel(const lq_params *p); /* length of the weight-decayed prefix */
int64_t lq_params_count_elements(const lq_params *p); /* sum of parameter sizes, no padding */
void lq_params_zero_grad(lq_params *p);
/* Moves the data and grad blocks to the device (after finalize and initialisation): every
 * parameter then points into device memory and lq_params_data / _grad return device pointers. */
lq_status lq_params_to_device(lq_params *p, lq_err *err);
/* Back to the host, with the values the device holds (for saving and for CPU work). */
lq_status lq_params_to_host(lq_params *p, lq_err *err);
lq_device_kind lq_params_device(const lq_params *p);

/* ---------------------------------------------------------------------------------------------
 * Autograd
 * ------------------------------------------------------------------------------------------- */

/* Backpropagates from a scalar loss through the tape, accumulating (+=) into every tensor that
 * requires a gradient; consumes the tape. */
lq_status lq_backward(lq_ctx *ctx, lq_tensor *loss);
/* Backpropagates a given upstream gradient (same shape as out, f32) instead of d(loss) = 1. */
lq_status lq_backward_from(lq_ctx *ctx, lq_tensor *out, const lq_tensor *grad_out);

/* Gradient checkpointing: runs fn without keeping its activations, and re-runs it during
 * backward. fn must be deterministic in its inputs and the context seed (dropout is replayed);
 * parameters it reads through user get their gradients as usual. */
typedef lq_tensor *(*lq_segment_fn)(lq_ctx *ctx, lq_tensor *const *inputs, int n_in, void *user);
lq_tensor *lq_checkpoint(lq_ctx *ctx, lq_segment_fn fn, void *user, int n_in, lq_tensor *const *inputs);

/* The op table: every differentiable op, for introspection and gradcheck. */
int lq_op_count(void);
const char *lq_op_name(int i);
int lq_op_find(const char *name); /* -1 if none */

/* ---------------------------------------------------------------------------------------------
 * Ops. All take and return f32 tensors on the CPU unless noted.
 * ------------------------------------------------------------------------------------------- */

/* (..., M, K) x (..., K, N) -> (..., M, N). Batch dims of b may be absent (shared weight). */
lq_tensor *lq_matmul(lq_ctx *ctx, lq_tensor *a, lq_tensor *b);
/* As lq_matmul with op(a) = a^T if trans_a, op(b) = b^T if trans_b (over the last two dims).
 * lq_matmul_t(ctx, x, w, false, true) is a linear layer x W^T with W (out, in). */
lq_tensor *lq_matmul_t(lq_ctx *ctx, lq_tensor *a, lq_tensor *b, bool trans_a, bool trans_b);

/* Elementwise with NumPy broadcasting. */
lq_tensor *lq_add(lq_ctx *ctx, lq_tensor *a, lq_tensor *b);
lq_tensor *lq_sub(lq_ctx *ctx, lq_tensor *a, lq_tensor *b);
lq_tensor *lq_mul(lq_ctx *ctx, lq_tensor *a, lq_tensor *b);
lq_tensor *lq_scale(lq_ctx *ctx, lq_tensor *x, float s);

/* Reductions over one axis (or LQ_AXIS_ALL, giving a scalar). */
lq_tensor *lq_sum(lq_ctx *ctx, lq_tensor *x, int axis, bool keepdim);
lq_tensor *lq_mean(lq_ctx *ctx, lq_tensor *x, int axis, bool keepdim);

/* Shape ops: views (no copy) where the layout allows. reshape accepts one -1. */
lq_tensor *lq_reshape(lq_ctx *ctx, lq_tensor *x, int ndim, const int64_t *shape);
lq_tensor *lq_transpose(lq_ctx *ctx, lq_tensor *x, int axis0, int axis1);
lq_tensor *lq_permute(lq_ctx *ctx, lq_tensor *x, const int *perm);
/* Elements [start, end) along axis; negative indices count from the end. */
lq_tensor *lq_slice(lq_ctx *ctx, lq_tensor *x, int axis, int64_t start, int64_t end);
lq_tensor *lq_concat(lq_ctx *ctx, lq_tensor *const *xs, int n, int axis);
/* The same values in a contiguous layout (x itself if it already is). */
lq_tensor *lq_contiguous(lq_ctx *ctx, lq_tensor *x);

/* table (V, C), ids i32 of any shape S -> (S..., C). Ids outside [0, V) are an error. */
lq_tensor *lq_embedding(lq_ctx *ctx, lq_tensor *table, lq_tensor *ids);

/* Normalise over the last dim; weight (and bias) of shape (C) may be NULL. */
lq_tensor *lq_rmsnorm(lq_ctx *ctx, lq_tensor *x, lq_tensor *weight, float eps);
lq_tensor *lq_layernorm(lq_ctx *ctx, lq_tensor *x, lq_tensor *weight, lq_tensor *bias, float eps);

typedef enum lq_gelu_approx { LQ_GELU_EXACT = 0, LQ_GELU_TANH } lq_gelu_approx;
lq_tensor *lq_relu(lq_ctx *ctx, lq_tensor *x);
lq_tensor *lq_silu(lq_ctx *ctx, lq_tensor *x);
lq_tensor *lq_gelu(lq_ctx *ctx, lq_tensor *x, lq_gelu_approx approx);
/* silu(gate) * up, the Llama MLP's gating. */
lq_tensor *lq_swiglu(lq_ctx *ctx, lq_tensor *gate, lq_tensor *up);

lq_tensor *lq_softmax(lq_ctx *ctx, lq_tensor *x, int axis);
lq_tensor *lq_log_softmax(lq_ctx *ctx, lq_tensor *x, int axis);

/* Rotary position embedding on x (B, T, H, D), positions i32 (T) or (B, T).
 * LQ_ROPE_HALF pairs element i with i + rot_dim/2 (HF "rotate_half");
 * LQ_ROPE_INTERLEAVED pairs 2i with 2i+1 (original RoPE, GGUF/Meta layout). */
typedef enum lq_rope_layout { LQ_ROPE_HALF = 0, LQ_ROPE_INTERLEAVED } lq_rope_layout;
typedef struct lq_rope_params {
    lq_rope_layout layout;
    int rot_dim;            /* dims rotated (even); 0 = all of D */
    float theta;            /* base, e.g. 10000 */
    const float *inv_freq;  /* optional rot_dim/2 frequencies (scaled RoPE); overrides theta */
} lq_rope_params;
lq_tensor *lq_rope(lq_ctx *ctx, lq_tensor *x, lq_tensor *pos, const lq_rope_params *p);

/* Causal scaled-dot-product attention with grouped-query heads.
 * q (B, T, Hq, D), k and v (B, T, Hkv, D) with Hq % Hkv == 0 -> (B, T, Hq, D).
 * doc (B, T) i32, optional: tokens attend only within their own document (packed samples). */
typedef struct lq_attn_params {
    float scale; /* 0 = 1/sqrt(D) */
    bool causal;
    lq_tensor *doc;
} lq_attn_params;
lq_tensor *lq_attention(lq_ctx *ctx, lq_tensor *q, lq_tensor *k, lq_tensor *v, const lq_attn_params *p);

/* Inverted dropout with probability p in training mode (identity otherwise). The mask comes from
 * the context seed and a per-call stream, so runs are reproducible on any thread count. */
lq_tensor *lq_dropout(lq_ctx *ctx, lq_tensor *x, float p);

/* logits (N, V) or (B, T, V), targets i32 (N) or (B, T); targets equal to ignore_index do not
 * count. MEAN averages over counted targets (0 when none count); SUM adds them. */
typedef enum lq_reduction { LQ_REDUCE_MEAN = 0, LQ_REDUCE_SUM } lq_reduction;
#define LQ_IGNORE_INDEX (-100)
lq_tensor *lq_cross_entropy(lq_ctx *ctx, lq_tensor *logits, lq_tensor *targets, int ignore_index,
                            lq_reduction reduction);

/* x (N, C, H, W), weight (O, C, KH, KW), bias (O) or NULL -> (N, O, OH, OW). */
typedef struct lq_conv2d_params {
    int stride_h, stride_w; /* 0 = 1 */
    int pad_h, pad_w;
} lq_conv2d_params;
lq_tensor *lq_conv2d(lq_ctx *ctx, lq_tensor *x, lq_tensor *weight, lq_tensor *bias, const lq_conv2d_params *p);

/* x (N, C, H, W) -> (N, C, OH, OW); padding counts as -inf for max and is excluded from the
 * average (count_include_pad = false). */
typedef struct lq_pool2d_params {
    int kernel_h, kernel_w;
    int stride_h, stride_w; /* 0 = kernel size */
    int pad_h, pad_w;
} lq_pool2d_params;
lq_tensor *lq_max_pool2d(lq_ctx *ctx, lq_tensor *x, const lq_pool2d_params *p);
lq_tensor *lq_avg_pool2d(lq_ctx *ctx, lq_tensor *x, const lq_pool2d_params *p);

/* --- quantized base weights ------------------------------------------------------------------ */

/* x (..., K) f32, w (N, K) of any dtype with a to_f32 (a frozen quantized base weight: w must not
 * require a gradient; w->qs holds its scales where the format keeps them) -> (..., N) = x deq(w)^T.
 * W is dequantized a tile at a time into arena scratch (freed when the op returns) and multiplied
 * with sgemm, in the forward (y) and the backward (dX = dY deq(w)): by default at most 2^20 floats
 * of the float weight exist at once (all of a W that small). */
lq_tensor *lq_qmatmul(lq_ctx *ctx, lq_tensor *x, lq_tensor *w);
/* Tile sizes, in elements of W: the forward dequantizes W[rows, cols] slabs (cols whole blocks of
 * the format), the backward W[bwd_rows, all K]. 0 = the default for that size. */
typedef struct lq_qmatmul_tiles {
    int64_t fwd_rows, fwd_cols, bwd_rows;
} lq_qmatmul_tiles;
lq_qmatmul_tiles lq_qmatmul_default_tiles(lq_dtype t, int64_t n_rows, int64_t k);
/* As lq_qmatmul with chosen tiles (NULL = defaults): for tests and benchmarks. */
lq_tensor *lq_qmatmul_tiled(lq_ctx *ctx, lq_tensor *x, lq_tensor *w, const lq_qmatmul_tiles *tiles);
/* The fused LoRA linear: y = x deq(w)^T (+ bias) + scaling (dropout(x, p) A^T) B^T for x (..., K),
 * w (N, K) frozen of any dtype with a to_f32 (f32 straight to sgemm), A (r, K), B (N, r) f32,
 * bias (N) or NULL -> (..., N). One output; it keeps only u = scaling dropout(x) A^T (..., r) for
 * backward (the dropout mask, drawn as lq_dropout draws it, is regenerated there). Dropout runs
 * in training mode with p > 0 only. tiles as lq_qmatmul_tiled (NULL = defaults). */
lq_tensor *lq_lora_linear_fused(lq_ctx *ctx, lq_tensor *x, lq_tensor *w, lq_tensor *bias, lq_tensor *A, lq_tensor *B,
                                float scaling, float p, const lq_qmatmul_tiles *tiles);

/* ---------------------------------------------------------------------------------------------
 * Fake quantization for QAT: quantize-dequantize in the forward (quant/'s arithmetic), with
 * straight-through gradients in the backward. x is f32 of any shape (up to 4 dims).
 * ------------------------------------------------------------------------------------------- */

/* Fixed scale and zero point: torch.fake_quantize_per_tensor_affine / _per_channel_affine (and
 * per group / per token as torchao does them), bit for bit. scale is f32 with one value per slot
 * of p->scheme (lq_affine_check: 1, C along the axis, rows * cols / group, rows), in any shape
 * with that many elements; zero_point likewise with integer values in [qmin, qmax], NULL = 0.
 * Neither may require a gradient (lq_fake_quant_lsq learns them). dx = dy where the rounded,
 * unclamped code lies in [qmin, qmax], else 0 (torch's mask). */
typedef struct lq_fq_params {
    lq_affine_scheme scheme;
    lq_tensor *scale;
    lq_tensor *zero_point;
} lq_fq_params;
lq_tensor *lq_fake_quant(lq_ctx *ctx, lq_tensor *x, const lq_fq_params *p);

/* Learned step size (LSQ, Esser et al. 2020): scale (and zero point) are learned, per tensor
 * (scale (1)) or per channel (scale (C), C = x's size along axis); forward and backward as
 * torch._fake_quantize_learnable_per_tensor_affine / _per_channel_affine, including how each
 * rounds the float zero point and grad_factor, the factor on the scale and zero-point gradients.
 * zero_point: f32 of the scale's shape, NULL = fixed at 0; it may or may not require a gradient. */
typedef struct lq_lsq_params {
    int32_t qmin, qmax;  /* code range (lq_affine_range) */
    bool per_channel;
    int axis;            /* per channel */
    float grad_factor;   /* 1 = the plain gradient; LSQ's choice is lq_lsq_grad_factor */
} lq_lsq_params;
lq_tensor *lq_fake_quant_lsq(lq_ctx *ctx, lq_tensor *x, lq_tensor *scale, lq_tensor *zero_point,
                             const lq_lsq_params *p);
/* LSQ's gradient scale 1 / sqrt(n * qmax): n = elements per scale (weights of one channel, or
 * features of an activation), qmax = the largest code (2^(b-1) - 1 signed, 2^b - 1 unsigned). */
float lq_lsq_grad_factor(int64_t n, int32_t qmax);

/* PACT (Choi et al. 2018): y = round(clamp(x, 0, alpha) / s) * s with s = alpha / (2^bits - 1),
 * alpha a learned clipping level (f32 (1), > 0), bits 2..8. dx = dy where 0 <= x < alpha;
 * dalpha = sum of dy where x >= alpha (the paper's eq. 3: the rounding residual is not
 * differentiated; see op_pact.c). */
lq_tensor *lq_pact(lq_ctx *ctx, lq_tensor *x, lq_tensor *alpha, int bits);

/* Dynamic per-token activation quantization (torchao's QAT recipe): each row of the last dim gets
 * its own scale and zero point from its min / max at run time (lq_affine_fake_quantize_dynamic),
 * bits 2..8. Backward: dx = dy, the scales taken as constants (torchao's mask is all ones). */
lq_tensor *lq_fake_quant_dynamic(lq_ctx *ctx, lq_tensor *x, int bits, bool symmetric);

/* NF4 / FP4 quantize-dequantize of the flattened x as bitsandbytes (absmax per block of
 * block_size, 32..4096, a power of two). Backward: dx = dy (absmax taken as a constant). */
lq_tensor *lq_fake_quant_bnb4(lq_ctx *ctx, lq_tensor *x, lq_dtype type, int64_t block_size);

/* ---------------------------------------------------------------------------------------------
 * Gradient check: central finite differences against backward, for any function of tensors.
 * The loss is sum(out * R) with a fixed random R, so every output element and its position
 * matter; it is accumulated in double.
 * ------------------------------------------------------------------------------------------- */

typedef lq_tensor *(*lq_gc_fn)(lq_ctx *ctx, lq_tensor *const *inputs, int n_in, void *user);

typedef struct lq_gc_opts {
    float step;      /* finite-difference step; 0 = 1e-2 */
    uint64_t seed;   /* for R */
    /* Differentiate this instead of fn on the numeric side (same inputs and user): for ops whose
     * backward is defined rather than derived, such as a straight-through estimator, whose
     * surrogate freezes the rounding residual so that its true derivative is the STE's. */
    lq_gc_fn surrogate;
} lq_gc_opts;

typedef struct lq_gc_result {
    double error;      /* max |analytic - numeric| / max(max |numeric|, 1e-2), over all inputs */
    double max_abs;    /* max |analytic - numeric| */
    int worst_input;
    int64_t worst_index;
    double analytic, numeric; /* at the worst element */
    int64_t n_checked;  /* elements perturbed */
} lq_gc_result;

/* Inputs that carry LQ_TENSOR_REQUIRES_GRAD are checked; they must be contiguous f32 leaves. */
lq_status lq_gradcheck(lq_ctx *ctx, lq_gc_fn fn, void *user, int n_in, lq_tensor *const *inputs,
                       const lq_gc_opts *opts, lq_gc_result *res);
/* Gradcheck of op table entry i on random inputs and shapes drawn from seed. */
lq_status lq_gradcheck_op(lq_ctx *ctx, int op, uint64_t seed, lq_gc_result *res, char *shape_desc, size_t desc_n);

#endif
