/* autograd/cuda_ctx.cu: a CUDA context's stream, cuBLAS handle and kernel table, and the device
 * helpers every CUDA op uses (fill, accumulate, strided copy, uploads, the one gemm). */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/cuda_impl.h"
#include "core/cuda.h"
#include "core/cuda_check.h"

/* Uploads of small host inputs (ids, positions, labels, pointer arrays) go through a pinned staging
 * buffer so that they are asynchronous: a synchronous copy would stall the host until the device
 * has drained its queue, dozens of times a step. The buffer is reused from the start at each step
 * reset, after the stream has finished every copy from it. */
#define PIN_BYTES ((size_t)8 << 20)

/* The bf16 copies of frozen operands (lq_cuda_gemm_frozen): a frozen weight read by several
 * products of a step (the tied lm_head of a chunked loss: 16 products per step at the 1B shape,
 * 196 us per conversion of its 32000 x 2048 f32 on an H100) is converted once per step. A copy is
 * valid while the step, its source address and size, and lq_cuda_free_epoch (no device block freed
 * since: a freed weight's address could come back for another) are unchanged. Buffers are kept
 * across steps and reused. */
#define FZ_SLOTS 4
typedef struct frozen16 {
    const float *src;
    int64_t n, cap; /* elements converted, and the buffer's room */
    __nv_bfloat16 *buf;
    uint64_t step, epoch, used;
} frozen16;

/* The bf16 copy of an activation (lq_cuda_act_bf16): one buffer, kept across steps, holding the
 * copy of the last activation converted through it; valid while its source address and size, the
 * context's tensor generation and lq_cuda_free_epoch are unchanged. */
typedef struct act16 {
    const float *src;
    int64_t n, ld, cap; /* elements converted, the copy's row stride, the buffer's room */
    __nv_bfloat16 *buf;
    uint64_t gen, epoch;
    uint64_t shared, converted; /* calls answered from the buffer, and calls that converted */
} act16;

/* The side stream (lq_cuda_fork / lq_cuda_join): a non-blocking stream with its own cuBLAS handle
 * (a handle's workspace must not serve two streams at once), created unless
 * LOQUAT_CUDA_SIDE_STREAM=0; without it the side's work goes on the main stream, in issue order. */
struct lq_cuda_state {
    cudaStream_t stream;
    cublasHandle_t blas;
    cudaStream_t side;      /* NULL: no side stream */
    cublasHandle_t side_blas;
    cudaEvent_t fork_ev, join_ev, part_ev;
    lq_op_fn *fwd, *bwd; /* indexed like lq_op_table */
    char *pinned;        /* PIN_BYTES of page-locked host memory (NULL: uploads are synchronous) */
    size_t pin_used;
    uint64_t step;       /* step resets so far: a frozen operand's bf16 copy is valid within one */
    uint64_t fz_clock;   /* use counter of the slots below (least recently used goes first) */
    frozen16 fz[FZ_SLOTS];
    act16 act;
};

static const lq_cuda_op *const groups[] = {lq_cuda_ops_elementwise, lq_cuda_ops_activation, lq_cuda_ops_nn,
                                           lq_cuda_ops_norm,        lq_cuda_ops_linear,     lq_cuda_ops_quant,
                                           lq_cuda_ops_conv};

extern "C" lq_status lq_cuda_ctx_init(lq_ctx *ctx, lq_err *err) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0)
        return lq_err_set(err, LQ_ERR_UNSUPPORTED, __FILE__, __LINE__, "device: cuda asked for, but %s",
                          e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device is present");
    lq_cuda_state *c = (lq_cuda_state *)calloc(1, sizeof *c);
    if (!c) return LQ_ERR(err, LQ_ERR_OOM, "out of memory for the CUDA context");
    ctx->cuda = c;
    c->fwd = (lq_op_fn *)calloc((size_t)lq_op_table_len, sizeof *c->fwd);
    c->bwd = (lq_op_fn *)calloc((size_t)lq_op_table_len, sizeof *c->bwd);
    if (!c->fwd || !c->bwd) return LQ_ERR(err, LQ_ERR_OOM, "out of memory for the CUDA op table");
    for (int i = 0; i < lq_op_table_len; i++) {
        const char *name = lq_op_table[i]->name;
        if (lq_op_any_device(lq_op_table[i])) { /* one implementation for both devices */
            c->fwd[i] = lq_op_table[i]->forward;
            c->bwd[i] = lq_op_table[i]->backward;
        }
        for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++)
            for (const lq_cuda_op *o = groups[g]; o->name; o++)
                if (strcmp(o->name, name) == 0) {
                    c->fwd[i] = o->forward;
                    c->bwd[i] = o->backward;
                }
    }
    /* a blocking stream: work on the legacy default stream (copies with stream NULL, the optimizer)
     * waits for it and it for them, so host reads after such a copy never race the ops */
    LQ_CU(err, cudaStreamCreateWithFlags(&c->stream, cudaStreamDefault));
    LQ_CUBLAS(err, cublasCreate(&c->blas));
    LQ_CUBLAS(err, cublasSetStream(c->blas, c->stream));
    const char *side = getenv("LOQUAT_CUDA_SIDE_STREAM");
    if (!side || strcmp(side, "0") != 0) {
        LQ_CU(err, cudaStreamCreateWithFlags(&c->side, cudaStreamNonBlocking));
        LQ_CUBLAS(err, cublasCreate(&c->side_blas));
        LQ_CUBLAS(err, cublasSetStream(c->side_blas, c->side));
        LQ_CU(err, cudaEventCreateWithFlags(&c->fork_ev, cudaEventDisableTiming));
        LQ_CU(err, cudaEventCreateWithFlags(&c->join_ev, cudaEventDisableTiming));
        LQ_CU(err, cudaEventCreateWithFlags(&c->part_ev, cudaEventDisableTiming));
    }
    if (cudaHostAlloc((void **)&c->pinned, PIN_BYTES, cudaHostAllocDefault) != cudaSuccess) {
        (void)cudaGetLastError(); /* no pinned memory: uploads stay synchronous, nothing else changes */
        c->pinned = NULL;
    }
    return LQ_OK;
}

extern "C" lq_status lq_cuda_step_reset(lq_ctx *ctx) {
    lq_cuda_state *c = ctx->cuda;
    if (!c) return LQ_OK;
    c->step++; /* every frozen bf16 copy is converted again on its first use */
    if (c->pin_used) {
        LQ_CU(&ctx->err, cudaStreamSynchronize(c->stream)); /* every copy from the buffer is done */
        c->pin_used = 0;
    }
    return LQ_OK;
}

extern "C" void lq_cuda_ctx_free(lq_ctx *ctx) {
    lq_cuda_state *c = ctx->cuda;
    if (!c) return;
    if (c->side) cudaStreamSynchronize(c->side);
    if (c->stream) cudaStreamSynchronize(c->stream);
    if (c->pinned) cudaFreeHost(c->pinned);
    for (int i = 0; i < FZ_SLOTS; i++) lq_cuda_free(c->fz[i].buf);
    lq_cuda_free(c->act.buf);
    if (c->blas) cublasDestroy(c->blas);
    if (c->side_blas) cublasDestroy(c->side_blas);
    if (c->fork_ev) cudaEventDestroy(c->fork_ev);
    if (c->join_ev) cudaEventDestroy(c->join_ev);
    if (c->part_ev) cudaEventDestroy(c->part_ev);
    if (c->side) cudaStreamDestroy(c->side);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c->fwd);
    free(c->bwd);
    free(c);
    ctx->cuda = NULL;
}

extern "C" void *lq_cuda_stream(lq_ctx *ctx) { return ctx->cuda ? (void *)ctx->cuda->stream : NULL; }
extern "C" void *lq_cuda_blas(lq_ctx *ctx) { return ctx->cuda ? (void *)ctx->cuda->blas : NULL; }

extern "C" void *lq_cuda_side_blas(lq_ctx *ctx) {
    lq_cuda_state *c = ctx->cuda;
    return c ? (void *)(c->side ? c->side_blas : c->blas) : NULL;
}

extern "C" void *lq_cuda_side_stream(lq_ctx *ctx) {
    lq_cuda_state *c = ctx->cuda;
    return c ? (void *)(c->side ? c->side : c->stream) : NULL;
}

extern "C" lq_status lq_cuda_fork(lq_ctx *ctx) {
    lq_cuda_state *c = ctx->cuda;
    if (!c || !c->side) return LQ_OK;
    LQ_CU(&ctx->err, cudaEventRecord(c->fork_ev, c->stream));
    LQ_CU(&ctx->err, cudaStreamWaitEvent(c->side, c->fork_ev, 0));
    return LQ_OK;
}

extern "C" lq_status lq_cuda_side_mark(lq_ctx *ctx) {
    lq_cuda_state *c = ctx->cuda;
    if (!c || !c->side) return LQ_OK;
    LQ_CU(&ctx->err, cudaEventRecord(c->part_ev, c->side));
    return LQ_OK;
}

extern "C" lq_status lq_cuda_join_mark(lq_ctx *ctx) {
    lq_cuda_state *c = ctx->cuda;
    if (!c || !c->side) return LQ_OK;
    LQ_CU(&ctx->err, cudaStreamWaitEvent(c->stream, c->part_ev, 0));
    return LQ_OK;
}

extern "C" lq_status lq_cuda_join(lq_ctx *ctx) {
    lq_cuda_state *c = ctx->cuda;
    if (!c || !c->side) return LQ_OK;
    LQ_CU(&ctx->err, cudaEventRecord(c->join_ev, c->side));
    LQ_CU(&ctx->err, cudaStreamWaitEvent(c->stream, c->join_ev, 0));
    return LQ_OK;
}

static int op_index(const lq_op_def *op) {
    for (int i = 0; i < lq_op_table_len; i++)
        if (lq_op_table[i] == op) return i;
    return -1;
}

extern "C" lq_op_fn lq_op_forward_for(lq_ctx *ctx, const lq_op_def *op) {
    if (ctx->device != LQ_DEVICE_CUDA) return op->forward;
    int i = op_index(op);
    return i < 0 ? NULL : ctx->cuda->fwd[i];
}

extern "C" lq_op_fn lq_op_backward_for(lq_ctx *ctx, const lq_op_def *op) {
    if (ctx->device != LQ_DEVICE_CUDA) return op->backward;
    int i = op_index(op);
    return i < 0 ? NULL : ctx->cuda->bwd[i];
}

/* --- helpers ----------------------------------------------------------------------------------- */

#define FOR_EACH(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

__global__ static void k_fill(float *d, float v, int64_t n) {
    FOR_EACH(i, n) d[i] = v;
}

__global__ static void k_accumulate(float *d, const float *s, int64_t n) {
    FOR_EACH(i, n) d[i] += s[i];
}

/* One thread per item of the logical shape, an item V = one float, or four consecutive floats
 * (float4) where the innermost dim has unit stride on both sides, ne[3] % 4 == 0 and every other
 * stride and both pointers are multiples of 16 bytes (attention's head transposes): one index
 * computation and one 16-byte load and store per 4 elements. n3 counts items, d3 / s3 are an item's
 * byte strides. Each item is written by exactly one thread. */
__device__ static inline float vadd(float a, float b) { return a + b; }
__device__ static inline float4 vadd(float4 a, float4 b) {
    return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

template <typename V>
__global__ static void k_strided(char *dst, const char *src, int64_t n0, int64_t n1, int64_t n2, int64_t n3,
                                 int64_t d0, int64_t d1, int64_t d2, int64_t d3, int64_t s0, int64_t s1, int64_t s2,
                                 int64_t s3, int acc) {
    int64_t n = n0 * n1 * n2 * n3;
    FOR_EACH(i, n) {
        int64_t e = i % n3, r = i / n3;
        int64_t c = r % n2;
        r /= n2;
        int64_t b = r % n1, a = r / n1;
        V *dp = (V *)(dst + a * d0 + b * d1 + c * d2 + e * d3);
        V v = *(const V *)(src + a * s0 + b * s1 + c * s2 + e * s3);
        *dp = acc ? vadd(*dp, v) : v;
    }
}

extern "C" lq_status lq_cuda_fill_f32(lq_ctx *ctx, float *d, float v, int64_t n) {
    if (n <= 0) return LQ_OK;
    k_fill<<<lq_cuda_blocks(n), LQ_CUDA_THREADS, 0, ctx->cuda->stream>>>(d, v, n);
    LQ_CUDA_LAUNCHED(ctx, "fill");
    return LQ_OK;
}

extern "C" lq_status lq_cuda_accumulate(lq_ctx *ctx, float *dst, const float *src, int64_t n) {
    if (n <= 0) return LQ_OK;
    k_accumulate<<<lq_cuda_blocks(n), LQ_CUDA_THREADS, 0, ctx->cuda->stream>>>(dst, src, n);
    LQ_CUDA_LAUNCHED(ctx, "accumulate");
    return LQ_OK;
}

extern "C" lq_status lq_cuda_strided(lq_ctx *ctx, float *dst, const size_t *dnb, const float *src, const size_t *snb,
                                     const int64_t *ne, bool accumulate) {
    int64_t n = ne[0] * ne[1] * ne[2] * ne[3];
    if (n <= 0) return LQ_OK;
    bool vec = dnb[3] == sizeof(float) && snb[3] == sizeof(float) && ne[3] % 4 == 0 && ((uintptr_t)dst & 15u) == 0 &&
               ((uintptr_t)src & 15u) == 0;
    for (int k = 0; k < 3 && vec; k++) vec = (ne[k] == 1 || (dnb[k] % 16 == 0 && snb[k] % 16 == 0));
    /* a size-1 dim's stride is never used: 0 keeps the offsets small */
    int64_t d[4], sv[4];
    for (int k = 0; k < 4; k++) {
        d[k] = ne[k] == 1 ? 0 : (int64_t)dnb[k];
        sv[k] = ne[k] == 1 ? 0 : (int64_t)snb[k];
    }
    if (vec)
        k_strided<float4><<<lq_cuda_blocks(n / 4), LQ_CUDA_THREADS, 0, ctx->cuda->stream>>>(
            (char *)dst, (const char *)src, ne[0], ne[1], ne[2], ne[3] / 4, d[0], d[1], d[2], 16, sv[0], sv[1], sv[2],
            16, accumulate ? 1 : 0);
    else
        k_strided<float><<<lq_cuda_blocks(n), LQ_CUDA_THREADS, 0, ctx->cuda->stream>>>(
            (char *)dst, (const char *)src, ne[0], ne[1], ne[2], ne[3], d[0], d[1], d[2], d[3], sv[0], sv[1], sv[2],
            sv[3], accumulate ? 1 : 0);
    LQ_CUDA_LAUNCHED(ctx, "strided copy");
    return LQ_OK;
}

extern "C" void *lq_cuda_upload(lq_ctx *ctx, const void *host, size_t bytes) {
    void *d = lq_ctx_dalloc(ctx, bytes ? bytes : 1);
    if (!d) return NULL;
    if (!bytes) return d;
    lq_cuda_state *c = ctx->cuda;
    size_t need = (bytes + 255) & ~(size_t)255;
    if (c->pinned && c->pin_used + need <= PIN_BYTES) {
        /* the caller may reuse its buffer at once: the bytes are staged, the copy queued */
        char *stage = c->pinned + c->pin_used;
        memcpy(stage, host, bytes);
        c->pin_used += need;
        cudaError_t e = cudaMemcpyAsync(d, stage, bytes, cudaMemcpyHostToDevice, c->stream);
        if (e != cudaSuccess) {
            lq_err_set(&ctx->err, LQ_ERR_INTERNAL, __FILE__, __LINE__, "cudaMemcpyAsync of %zu bytes failed: %s", bytes,
                       cudaGetErrorString(e));
            return NULL;
        }
        return d;
    }
    /* the staging buffer is full until the next step reset: a synchronous copy on the stream */
    if (lq_cuda_copy(d, host, bytes, LQ_COPY_H2D, c->stream, &ctx->err) != LQ_OK) return NULL;
    return d;
}

extern "C" const int32_t *lq_cuda_upload_i32(lq_ctx *ctx, const lq_tensor *t) {
    if (!t || t->dtype != LQ_DTYPE_I32 || !lq_is_contiguous(t)) {
        LQ_ERR(&ctx->err, LQ_ERR_ARG, "CUDA op: an index input must be a contiguous i32 tensor");
        return NULL;
    }
    if (t->device == LQ_DEVICE_CUDA) return (const int32_t *)t->data;
    return (const int32_t *)lq_cuda_upload(ctx, t->data, (size_t)lq_numel(t) * sizeof(int32_t));
}

extern "C" lq_status lq_cuda_download(lq_ctx *ctx, void *host, const void *dev, size_t bytes) {
    return lq_cuda_copy(host, dev, bytes, LQ_COPY_D2H, ctx->cuda->stream, &ctx->err);
}

/* --- bf16 copies kept by the context, and the gemm ---------------------------------------------- */

/* A kept bf16 buffer (*buf, room *cap) with room for n: reallocated when smaller, after the stream
 * has finished every product that may still read it. */
static lq_status bf16_room(lq_ctx *ctx, __nv_bfloat16 **buf, int64_t *cap, int64_t n) {
    if (*cap >= n) return LQ_OK;
    if (*buf) LQ_TRY(lq_cuda_sync(ctx->cuda->stream, &ctx->err));
    lq_cuda_free(*buf);
    *cap = 0;
    if (!(*buf = (__nv_bfloat16 *)lq_cuda_malloc((size_t)n * sizeof(__nv_bfloat16), &ctx->err))) return ctx->err.status;
    *cap = n;
    return LQ_OK;
}

/* The bf16 copy of a frozen f32 operand of n contiguous elements, converted at most once per step
 * (see frozen16). NULL with an error in ctx. */
static const __nv_bfloat16 *frozen_bf16(lq_ctx *ctx, const float *src, int64_t n) {
    lq_cuda_state *c = ctx->cuda;
    uint64_t epoch = lq_cuda_free_epoch();
    frozen16 *slot = NULL;
    for (int i = 0; i < FZ_SLOTS; i++) {
        frozen16 *f = &c->fz[i];
        if (f->src == src && f->n == n && f->buf) {
            if (f->step == c->step && f->epoch == epoch) {
                f->used = ++c->fz_clock;
                return f->buf;
            }
            slot = f;
        }
    }
    if (!slot) { /* the least recently used slot (an empty one first) */
        slot = &c->fz[0];
        for (int i = 1; i < FZ_SLOTS; i++)
            if (c->fz[i].used < slot->used) slot = &c->fz[i];
    }
    slot->src = NULL; /* not valid until converted */
    if (slot->cap < n) {
        if (bf16_room(ctx, &slot->buf, &slot->cap, n) != LQ_OK) return NULL;
        epoch = lq_cuda_free_epoch();
    }
    if (lq_cuda_to_bf16_packed(ctx, slot->buf, src, n) != LQ_OK) return NULL;
    slot->src = src;
    slot->n = n;
    slot->step = c->step;
    slot->epoch = epoch;
    slot->used = ++c->fz_clock;
    return slot->buf;
}

/* The tensor whose buffer holds t's data when t is an op's output of the current tape, or a recorded
 * view (reshape, transpose, permute, slice: their input is in[0]) of one; NULL for anything else
 * (a leaf, whose data its owner may overwrite; an unrecorded result). An op's output is written
 * once, by its op, and lives until a rewind drops it (ctx->tensor_gen). */
static const lq_tensor *act_owner(const lq_tensor *t) {
    while (t && (t->flags & LQ_TENSOR_VIEW)) t = t->node ? t->node->in[0] : NULL;
    return t && t->node ? t : NULL;
}

/* The kept buffer, with room for `room` elements, registered as the copy of src (n elements, row
 * stride ld) in this tensor generation; the caller writes it. NULL (error in ctx) when it cannot
 * grow. */
static __nv_bfloat16 *act_take(lq_ctx *ctx, const float *src, int64_t n, int64_t ld, int64_t room) {
    act16 *a = &ctx->cuda->act;
    a->src = NULL; /* not valid until registered */
    if (a->cap < room && bf16_room(ctx, &a->buf, &a->cap, room) != LQ_OK) return NULL;
    a->converted++;
    a->ld = ld;
    a->src = src;
    a->n = n;
    a->gen = ctx->tensor_gen;
    a->epoch = lq_cuda_free_epoch(); /* after any reallocation above */
    return a->buf;
}

static void *act_bf16(lq_ctx *ctx, const lq_tensor *x, int64_t *ld, bool side) {
    lq_cuda_state *c = ctx->cuda;
    const float *src = (const float *)x->data;
    int64_t n = lq_numel(x), K = x->ndim > 0 ? x->ne[x->ndim - 1] : 1, rows = K > 0 ? n / K : 0;
    *ld = K + LQ_CUDA_ACT_PAD;
    int64_t room = rows * *ld; /* elements: rows of K values and the pad */
    if (n <= 0) return lq_ctx_dalloc(ctx, sizeof(__nv_bfloat16)); /* nothing to convert */
    if (!act_owner(x) || !lq_is_contiguous(x)) { /* into the arena (x's elements read as packed) */
        __nv_bfloat16 *d = (__nv_bfloat16 *)lq_ctx_dalloc(ctx, (size_t)room * sizeof(__nv_bfloat16));
        return d && lq_cuda_to_bf16_on(ctx, side, d, *ld, src, K, rows, K) == LQ_OK ? d : NULL;
    }
    act16 *a = &c->act;
    uint64_t epoch = lq_cuda_free_epoch();
    if (a->buf && a->src == src && a->n == n && a->ld == *ld && a->gen == ctx->tensor_gen && a->epoch == epoch) {
        a->shared++;
        return a->buf;
    }
    __nv_bfloat16 *d = act_take(ctx, src, n, *ld, room);
    if (d && lq_cuda_to_bf16_on(ctx, side, d, *ld, src, K, rows, K) == LQ_OK) return d;
    a->src = NULL; /* a failed conversion leaves no copy */
    return NULL;
}

extern "C" void *lq_cuda_act_bf16(lq_ctx *ctx, const lq_tensor *x, int64_t *ld) { return act_bf16(ctx, x, ld, false); }

extern "C" void *lq_cuda_act_bf16_claim(lq_ctx *ctx, const lq_node *node, int64_t *ld) {
    lq_cuda_state *c = ctx->cuda;
    const lq_tensor *x = node->out; /* its node is set once the forward returns (act_owner then) */
    int64_t n = lq_numel(x), K = x->ndim > 0 ? x->ne[x->ndim - 1] : 1, rows = K > 0 ? n / K : 0;
    if (!c || n <= 0 || K % 4 != 0 || !node->recorded || (x->flags & LQ_TENSOR_VIEW) || !lq_is_contiguous(x))
        return NULL;
    *ld = K + LQ_CUDA_ACT_PAD;
    return act_take(ctx, (const float *)x->data, n, *ld, rows * *ld); /* NULL: error set */
}

extern "C" void *lq_cuda_act_bf16_side(lq_ctx *ctx, const lq_tensor *x, int64_t *ld) {
    return act_bf16(ctx, x, ld, true);
}

extern "C" void lq_cuda_act_bf16_counts(lq_ctx *ctx, uint64_t *shared, uint64_t *converted) {
    *shared = ctx->cuda ? ctx->cuda->act.shared : 0;
    *converted = ctx->cuda ? ctx->cuda->act.converted : 0;
}

extern "C" lq_status lq_cuda_gemm(lq_ctx *ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                                  const float *A, int64_t lda, int64_t strideA, const float *B, int64_t ldb,
                                  int64_t strideB, float beta, float *C, int64_t ldc, int64_t strideC, int64_t batch) {
    return lq_cuda_gemm_frozen(ctx, 0, ta, tb, M, N, K, alpha, A, lda, strideA, B, ldb, strideB, beta, C, ldc, strideC,
                               batch);
}

extern "C" lq_status lq_cuda_gemm_frozen(lq_ctx *ctx, unsigned frozen, bool ta, bool tb, int64_t M, int64_t N,
                                         int64_t K, float alpha, const float *A, int64_t lda, int64_t strideA,
                                         const float *B, int64_t ldb, int64_t strideB, float beta, float *C,
                                         int64_t ldc, int64_t strideC, int64_t batch) {
    if (M <= 0 || N <= 0 || batch <= 0) return LQ_OK;
    cublasHandle_t h = ctx->cuda->blas;
    lq_err *err = &ctx->err;
    if (K <= 0) { /* C = beta C */
        if (beta == 0.0f) {
            for (int64_t b = 0; b < batch; b++)
                for (int64_t r = 0; r < M; r++) LQ_TRY(lq_cuda_fill_f32(ctx, C + b * strideC + r * ldc, 0.0f, N));
            return LQ_OK;
        }
        LQ_CHECK(err, beta == 1.0f, LQ_ERR_INTERNAL, "gemm with K = 0 and beta = %g", (double)beta);
        return LQ_OK;
    }
    /* Row-major C (M, N) = op(A) op(B) is column-major C^T (N, M) = op(B)^T op(A)^T: cuBLAS gets
     * B first. A stored row-major (M, K) with row stride lda is column-major (K, M) with ld lda. */
    cublasOperation_t opB = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opA = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    const void *pa = A, *pb = B;
    int64_t la = lda, lb = ldb, sa = strideA, sb = strideB;
    cudaDataType_t in_t = CUDA_R_32F;
    cublasComputeType_t ct = ctx->cuda_math == LQ_CUDA_MATH_FP32 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32;
    lq_ctx_mark mk = lq_ctx_get_mark(ctx); /* the bf16 copies go once the gemm is queued (one stream) */
    if (ctx->cuda_math == LQ_CUDA_MATH_BF16) {
        __nv_bfloat16 *a16, *b16;
        int64_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
        /* a frozen operand shared by the whole batch and packed: its per-step copy */
        if ((frozen & LQ_GEMM_FROZEN_A) && (strideA == 0 || batch == 1) && lda == ac) {
            if (!(a16 = (__nv_bfloat16 *)frozen_bf16(ctx, A, ar * ac))) return ctx->err.status;
        } else {
            LQ_TRY(lq_cuda_to_bf16_scratch(ctx, A, ar, ac, lda, strideA, batch, (void **)&a16));
        }
        if ((frozen & LQ_GEMM_FROZEN_B) && (strideB == 0 || batch == 1) && ldb == bc) {
            if (!(b16 = (__nv_bfloat16 *)frozen_bf16(ctx, B, br * bc))) return ctx->err.status;
        } else {
            LQ_TRY(lq_cuda_to_bf16_scratch(ctx, B, br, bc, ldb, strideB, batch, (void **)&b16));
        }
        pa = a16;
        pb = b16;
        la = ac;
        lb = bc;
        sa = strideA ? ar * ac : 0;
        sb = strideB ? br * bc : 0;
        in_t = CUDA_R_16BF;
        ct = CUBLAS_COMPUTE_32F;
    }
    LQ_CUBLAS(err, cublasGemmStridedBatchedEx(h, opB, opA, (int)N, (int)M, (int)K, &alpha, pb, in_t, (int)lb, sb, pa,
                                              in_t, (int)la, sa, &beta, C, CUDA_R_32F, (int)ldc, strideC, (int)batch, ct,
                                              CUBLAS_GEMM_DEFAULT));
    lq_ctx_reset_to(ctx, mk);
    return LQ_OK;
}
