/* bench/bench_gpu_linear.c: where the QLoRA linear's time goes on a GPU: its NF4 dequant, its two base
 * products in every math, the f32 -> bf16 cast, and the whole op; one JSON line per measurement. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if !defined(LQ_HAVE_CUDA) || defined(LQ_CUDA_EMU)

/* A CPU build (or the CPU emulator's, which has no cuBLASLt) has nothing to measure: say so (77 =
 * skipped, as the other benches). */
int main(void) {
    printf("bench_gpu_linear: SKIPPED: built without CUDA (make CUDA=1 bench)\n");
    return 77;
}

#else

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "autograd/cuda_impl.h"
#define BENCH_NAME "bench_gpu_linear"
#include "bench/bench_gpu_util.h"
#include "core/cuda.h"
#include "core/rng.h"
#include "lora/lora.h"
#include "quant/dequant_cuda.h"
#include "quant/half.h"

/*   bench_gpu_linear [--shape MxNxK]... [--reps 20] [--warmup 3] [--lead-us 200] [--seed 1]
 *
 * For each shape: x (M, K) tokens, W (N, K) the frozen base weight, NF4 with double quant and block 64
 * (lq_bnb4_quantize of uniform random values), dY (M, N). Defaults: the 1B model's projections at
 * M = 2048 tokens (batch 4 x 512): q/o (2048, 2048), k/v (512, 2048), gate/up (8192, 2048), down
 * (2048, 8192) as (N, K); the 135M model's at M = 4096 (8 x 512): (576, 576), (192, 576), (1536, 576),
 * (576, 1536). Measured, stage / variant:
 *   dequant / f32, bf16    lq_cuda_dequant(_bf16) of all of W; GB/s = (N K / 2 codes + N K / 64 absmax
 *                          codes + 4 N K / 16384 nested scales + the 1 KiB map) read + 4 or 2 N K written.
 *   fwd  y (M, N) = x W^T and  bwd  dX (M, K) += dY W (beta 1), as cuda_qlinear.cu's tiles do them, W
 *   whole (its dequantized f32 / bf16 copy):
 *     gemm-fp32, gemm-tf32, gemm-bf16   lq_cuda_gemm on f32 operands with a CUDA context of that math
 *                          (bf16: the gemm casts both f32 operands itself, into its arena: counted);
 *     blas-bf16-f32        cublasGemmEx on operands already bf16, f32 C (cuda_qlinear.cu's gemm_bf16);
 *     blas-bf16-bf16       the same with a bf16 C (what PyTorch's bf16 linear produces);
 *     lt-bf16-bf16, lt-bf16-f32   cublasLtMatmul (PyTorch's path), the first algorithm of
 *                          cublasLtMatmulAlgoGetHeuristic with a 32 MiB workspace.
 *     TFLOPS = 2 M N K / time. After timing, each variant's output (C zeroed first) is compared with
 *     gemm-fp32's: "nmse" = sum (out - ref)^2 / sum ref^2.
 *   conv / x-f32-bf16      an f32 -> bf16 cast of x by lq_cuda_to_bf16 (what the bf16 products of
 *                          cuda_qlinear.cu run); GB/s = 6 M K. Its output is checked bit for bit
 *                          against lq_f32_to_bf16 ("mismatches").
 *   op / fwd-tf32, fwd-bf16, fwdbwd-tf32, fwdbwd-bf16   the whole QLoRA linear: lq_lora_linear (r 16,
 *                          alpha 32, dropout 0, the fused lora_linear op) on a leaf x that requires a
 *                          gradient, in a training context (gradients released as bench_gpu step does),
 *                          forward, or forward + lq_backward_from(y, dY) (dX, dA, dB); the arena reset
 *                          and the adapter grads zeroed between reps, outside the timed span. TFLOPS
 *                          counts the base products and the adapter's: 2 M N K + 2 M r (K + N) forward,
 *                          4 M N K + 6 M r (K + N) forward + backward. lq_backward_from adds dY into y's
 *                          gradient first (one extra (M, N) pass, counted; a real step's upstream op
 *                          writes that gradient itself).
 * Every time: CUDA events on the stream the work runs on, around the calls, synchronised after each,
 * the first event queued behind lq_bench_lead (--lead-us, default 200; 0: none), so a span is GPU
 * time: the host's launch latency and the op's host work are outside it up to the lead. All variants
 * interleaved rep by rep (A B C ... A B C ...), after --warmup untimed reps; medians. A variant this
 * machine cannot run (no cuBLASLt algorithm) prints "ms": null with the reason in "skipped". The
 * JSON names what is measured "stage" (bench/gpu.sh tags every line with "part", the script's part). */

#define MAX_REPS 1000
#define MAX_SHAPES 16
#define LT_WORKSPACE ((size_t)32 << 20)
#define LORA_R 16

#define CB(call)                                                                                             \
    do {                                                                                                     \
        cublasStatus_t cb_s_ = (call);                                                                       \
        if (cb_s_ != CUBLAS_STATUS_SUCCESS) {                                                                \
            fprintf(stderr, "bench_gpu_linear: %s:%d: %s failed: %s (%s)\n", __FILE__, __LINE__, #call,      \
                    cublasGetStatusName(cb_s_), cublasGetStatusString(cb_s_));                               \
            return 1;                                                                                        \
        }                                                                                                    \
    } while (0)

static int fail(const char *what, const char *msg) {
    fprintf(stderr, "bench_gpu_linear: %s: %s\n", what, msg);
    return 1;
}

/* Teardown: a failure is reported, and the rest is still released. */
static void warn_cu(cudaError_t e, const char *what) {
    if (e != cudaSuccess) fprintf(stderr, "bench_gpu_linear: warning: %s: %s\n", what, cudaGetErrorName(e));
}
static void warn_cb(cublasStatus_t s, const char *what) {
    if (s != CUBLAS_STATUS_SUCCESS) fprintf(stderr, "bench_gpu_linear: warning: %s: %s\n", what, cublasGetStatusName(s));
}

/* --- the variants ------------------------------------------------------------------------------ */

enum { P_FP32, P_TF32, P_BF16, P_BLAS_F32, P_BLAS_BF16, P_LT_BF16, P_LT_F32, NP }; /* products, per direction */
enum {
    V_DQ_F32, V_DQ_BF16, V_CONV,
    V_FWD, V_BWD = V_FWD + NP,
    V_OP_FWD_TF32 = V_BWD + NP, V_OP_FWD_BF16, V_OP_FB_TF32, V_OP_FB_BF16,
    NV
};
static const char *const prod_name[NP] = {"gemm-fp32",      "gemm-tf32",    "gemm-bf16",  "blas-bf16-f32",
                                          "blas-bf16-bf16", "lt-bf16-bf16", "lt-bf16-f32"};
static const char *stage_of(int v) {
    return v <= V_DQ_BF16 ? "dequant" : v == V_CONV ? "conv" : v < V_BWD ? "fwd" : v < V_OP_FWD_TF32 ? "bwd" : "op";
}
static const char *variant_of(int v) {
    static const char *const other[] = {"f32", "bf16", "x-f32-bf16"}, *const op[] = {"fwd-tf32", "fwd-bf16",
                                                                                     "fwdbwd-tf32", "fwdbwd-bf16"};
    return v < V_FWD ? other[v] : v < V_OP_FWD_TF32 ? prod_name[(v - V_FWD) % NP] : op[v - V_OP_FWD_TF32];
}
static bool out_bf16(int p) { return p == P_BLAS_BF16 || p == P_LT_BF16; }

/* --- cuBLASLt ------------------------------------------------------------------------------------ */

typedef struct lt_api {
    cublasLtHandle_t h;
    void *ws;
    char why[256]; /* empty when usable */
} lt_api;

/* A handle and the workspace; a failure only marks the Lt variants skipped (why). */
static void lt_open(lt_api *lt) {
    memset(lt, 0, sizeof *lt);
    cublasStatus_t s = cublasLtCreate(&lt->h);
    if (s != CUBLAS_STATUS_SUCCESS) {
        lt->h = NULL;
        snprintf(lt->why, sizeof lt->why, "cublasLtCreate: %s", cublasGetStatusName(s));
        return;
    }
    lq_err err;
    lq_err_clear(&err);
    if (!(lt->ws = lq_cuda_malloc(LT_WORKSPACE, &err))) snprintf(lt->why, sizeof lt->why, "workspace: %.200s", err.msg);
}

static void lt_close(lt_api *lt) {
    if (lt->h) warn_cb(cublasLtDestroy(lt->h), "cublasLtDestroy");
    lq_cuda_free(lt->ws);
}

/* One product's Lt descriptors and algorithm: row-major C (M, N) = x W^T (fwd) or dX (M, K) += dY W
 * (bwd) as column-major D^T = op(W) op(B): A = W stored (K, N) ld K (transposed in fwd), B = x (K, M)
 * ld K or dY (N, M) ld N, C = D (N, M) ld N or (K, M) ld K. */
typedef struct lt_plan {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulHeuristicResult_t res;
    char why[256];
} lt_plan;

#define LTC(call, what)                                                                                      \
    do {                                                                                                     \
        cublasStatus_t lt_s_ = (call);                                                                       \
        if (lt_s_ != CUBLAS_STATUS_SUCCESS) {                                                                \
            snprintf(pl->why, sizeof pl->why, "%s: %s", what, cublasGetStatusName(lt_s_));                   \
            return;                                                                                          \
        }                                                                                                    \
    } while (0)

static void lt_plan_make(const lt_api *lt, lt_plan *pl, bool bwd, bool c_bf16, int64_t M, int64_t N, int64_t K) {
    memset(pl, 0, sizeof *pl);
    if (lt->why[0]) {
        snprintf(pl->why, sizeof pl->why, "%.200s", lt->why);
        return;
    }
    cublasOperation_t ta = bwd ? CUBLAS_OP_N : CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cudaDataType_t ct = c_bf16 ? CUDA_R_16BF : CUDA_R_32F;
    LTC(cublasLtMatmulDescCreate(&pl->op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    LTC(cublasLtMatmulDescSetAttribute(pl->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "set TRANSA");
    LTC(cublasLtMatmulDescSetAttribute(pl->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "set TRANSB");
    LTC(cublasLtMatrixLayoutCreate(&pl->a, CUDA_R_16BF, (uint64_t)K, (uint64_t)N, K), "layout A");
    LTC(cublasLtMatrixLayoutCreate(&pl->b, CUDA_R_16BF, (uint64_t)(bwd ? N : K), (uint64_t)M, bwd ? N : K), "layout B");
    LTC(cublasLtMatrixLayoutCreate(&pl->c, ct, (uint64_t)(bwd ? K : N), (uint64_t)M, bwd ? K : N), "layout C");
    cublasLtMatmulPreference_t pref = NULL;
    LTC(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
    uint64_t ws = LT_WORKSPACE;
    int n = 0;
    cublasStatus_t s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulAlgoGetHeuristic(lt->h, pl->op, pl->a, pl->b, pl->c, pl->c, pref, 1, &pl->res, &n);
    cublasStatus_t sd = cublasLtMatmulPreferenceDestroy(pref);
    LTC(s, "preference / cublasLtMatmulAlgoGetHeuristic");
    LTC(sd, "cublasLtMatmulPreferenceDestroy");
    if (n < 1 || pl->res.state != CUBLAS_STATUS_SUCCESS) snprintf(pl->why, sizeof pl->why, "no cuBLASLt algorithm");
}

static void lt_plan_free(lt_plan *pl) {
    if (pl->a) warn_cb(cublasLtMatrixLayoutDestroy(pl->a), "cublasLtMatrixLayoutDestroy");
    if (pl->b) warn_cb(cublasLtMatrixLayoutDestroy(pl->b), "cublasLtMatrixLayoutDestroy");
    if (pl->c) warn_cb(cublasLtMatrixLayoutDestroy(pl->c), "cublasLtMatrixLayoutDestroy");
    if (pl->op) warn_cb(cublasLtMatmulDescDestroy(pl->op), "cublasLtMatmulDescDestroy");
}

/* --- one run ------------------------------------------------------------------------------------ */

typedef struct shape {
    int64_t M, N, K;
    const char *proj;
} shape;

typedef struct bench {
    int reps, warmup, lead_us;
    uint64_t seed;
    char dev[256];
    lq_ctx *ctx[3]; /* by lq_cuda_math: tf32, fp32, bf16 */
    lt_api lt;
    cudaEvent_t ev[2];
} bench;

/* Everything of one shape: W (device NF4 tensor and its f32 / bf16 copies), operands and outputs. */
typedef struct run {
    shape s;
    lq_tensor *w;
    lq_lora_set *set;
    float *x, *gy, *y, *gx, *w32; /* device */
    uint16_t *x16, *gy16, *y16, *gx16, *w16, *xc16;
    lt_plan plan[2][2]; /* [bwd][c_bf16] */
    double t[NV][MAX_REPS], nmse[NV];
    int64_t conv_bad;
    const char *skip[NV];
} run;

static cudaStream_t stream_of(const bench *b, int v) {
    int c = v == V_FWD + P_FP32 || v == V_BWD + P_FP32 ? LQ_CUDA_MATH_FP32
            : v == V_FWD + P_BF16 || v == V_BWD + P_BF16 || v == V_OP_FWD_BF16 || v == V_OP_FB_BF16 ? LQ_CUDA_MATH_BF16
                                                                                                      : LQ_CUDA_MATH_TF32;
    return (cudaStream_t)lq_cuda_stream(b->ctx[c]);
}

/* Product p (fwd or bwd) on the device buffers; beta 1 in bwd. */
static int product(bench *b, run *r, bool bwd, int p) {
    int64_t M = r->s.M, N = r->s.N, K = r->s.K;
    const float one = 1.0f, zero = 0.0f, *beta = bwd ? &one : &zero;
    cudaStream_t st = stream_of(b, (bwd ? V_BWD : V_FWD) + p);
    if (p <= P_BF16) {
        lq_ctx *c = b->ctx[p == P_FP32 ? LQ_CUDA_MATH_FP32 : p == P_TF32 ? LQ_CUDA_MATH_TF32 : LQ_CUDA_MATH_BF16];
        lq_status s = bwd ? lq_cuda_gemm(c, false, false, M, K, N, 1.0f, r->gy, N, 0, r->w32, K, 0, 1.0f, r->gx, K, 0, 1)
                          : lq_cuda_gemm(c, false, true, M, N, K, 1.0f, r->x, K, 0, r->w32, K, 0, 0.0f, r->y, N, 0, 1);
        return s == LQ_OK ? 0 : fail(prod_name[p], lq_ctx_error(c)->msg);
    }
    bool cb = out_bf16(p);
    void *C = bwd ? (cb ? (void *)r->gx16 : (void *)r->gx) : (cb ? (void *)r->y16 : (void *)r->y);
    const void *B = bwd ? (const void *)r->gy16 : (const void *)r->x16;
    if (p == P_BLAS_F32 || p == P_BLAS_BF16) {
        cublasHandle_t h = (cublasHandle_t)lq_cuda_blas(b->ctx[LQ_CUDA_MATH_TF32]);
        cudaDataType_t ct = cb ? CUDA_R_16BF : CUDA_R_32F;
        if (bwd)
            CB(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, (int)K, (int)M, (int)N, &one, r->w16, CUDA_R_16BF, (int)K, B,
                            CUDA_R_16BF, (int)N, beta, C, ct, (int)K, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        else
            CB(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, r->w16, CUDA_R_16BF, (int)K, B,
                            CUDA_R_16BF, (int)K, beta, C, ct, (int)N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        return 0;
    }
    const lt_plan *pl = &r->plan[bwd][cb];
    CB(cublasLtMatmul(b->lt.h, pl->op, &one, r->w16, pl->a, B, pl->b, beta, C, pl->c, C, pl->c, &pl->res.algo, b->lt.ws,
                    LT_WORKSPACE, st));
    return 0;
}

/* Untimed set-up of an op variant (a fresh step; leaf x with x's values), then the timed part. */
static int op_prepare(bench *b, run *r, int v, lq_tensor **xl) {
    lq_ctx *c = b->ctx[v == V_OP_FWD_BF16 || v == V_OP_FB_BF16 ? LQ_CUDA_MATH_BF16 : LQ_CUDA_MATH_TF32];
    lq_ctx_step_reset(c);
    if (v == V_OP_FB_TF32 || v == V_OP_FB_BF16) lq_params_zero_grad(r->set->params);
    int64_t sh[2] = {r->s.M, r->s.K};
    if (!(*xl = lq_new_leaf(c, 2, sh, true))) return fail("op: leaf x", lq_ctx_error(c)->msg);
    CK(cudaMemcpyAsync((*xl)->data, r->x, (size_t)(r->s.M * r->s.K) * 4, cudaMemcpyDeviceToDevice,
                       (cudaStream_t)lq_cuda_stream(c)));
    return 0;
}

static int op_run(bench *b, run *r, int v, lq_tensor *xl) {
    lq_ctx *c = b->ctx[v == V_OP_FWD_BF16 || v == V_OP_FB_BF16 ? LQ_CUDA_MATH_BF16 : LQ_CUDA_MATH_TF32];
    lq_tensor *y = lq_lora_linear(c, xl, r->w, NULL, &r->set->mods[0]);
    if (!y) return fail("op: lq_lora_linear", lq_ctx_error(c)->msg);
    if (v == V_OP_FB_TF32 || v == V_OP_FB_BF16) {
        lq_tensor g;
        int64_t sh[2] = {r->s.M, r->s.N};
        lq_err err;
        lq_err_clear(&err);
        if (lq_tensor_init(&g, LQ_DTYPE_F32, 2, sh, r->gy, &err) != LQ_OK) return fail("op: dY", err.msg);
        g.device = LQ_DEVICE_CUDA;
        if (lq_backward_from(c, y, &g) != LQ_OK) return fail("op: backward", lq_ctx_error(c)->msg);
    }
    return 0;
}

/* One timed run of variant v into *ms. */
static int time_one(bench *b, run *r, int v, double *ms) {
    int64_t M = r->s.M, N = r->s.N, K = r->s.K;
    cudaStream_t st = stream_of(b, v);
    lq_tensor *xl = NULL;
    lq_err err;
    lq_err_clear(&err);
    if (v >= V_OP_FWD_TF32 && op_prepare(b, r, v, &xl)) return 1;
    CK(lq_bench_lead(st, &b->lead_us));
    CK(cudaEventRecord(b->ev[0], st));
    if (v == V_DQ_F32 || v == V_DQ_BF16) {
        lq_status s = v == V_DQ_F32 ? lq_cuda_dequant(LQ_DTYPE_NF4, r->w->data, r->w32, N * K, 0, r->w->qs, st, &err)
                                    : lq_cuda_dequant_bf16(LQ_DTYPE_NF4, r->w->data, r->w16, N * K, 0, r->w->qs, st, &err);
        if (s != LQ_OK) return fail("dequant", err.msg);
    } else if (v == V_CONV) {
        lq_ctx *c = b->ctx[LQ_CUDA_MATH_TF32]; /* stream_of(b, V_CONV) is its stream */
        if (lq_cuda_to_bf16(c, r->xc16, K, r->x, K, M, K) != LQ_OK) return fail("cast", lq_ctx_error(c)->msg);
    } else if (v < V_OP_FWD_TF32) {
        if (product(b, r, v >= V_BWD, (v - V_FWD) % NP)) return 1;
    } else if (op_run(b, r, v, xl)) {
        return 1;
    }
    CK(cudaEventRecord(b->ev[1], st));
    CK(cudaEventSynchronize(b->ev[1]));
    float t = 0;
    CK(cudaEventElapsedTime(&t, b->ev[0], b->ev[1]));
    *ms = t;
    return 0;
}

/* --- set-up, checks, report --------------------------------------------------------------------- */

static int upload(void *d, const void *h, size_t bytes) {
    lq_err err;
    lq_err_clear(&err);
    return lq_cuda_copy(d, h, bytes, LQ_COPY_H2D, NULL, &err) == LQ_OK ? 0 : fail("upload", err.msg);
}

static void run_free(bench *b, run *r) {
    for (int i = 0; i < 4; i++) lt_plan_free(&r->plan[i / 2][i % 2]);
    if (r->w) lq_qstate_free(r->w->qs), r->w->qs = NULL;
    lq_tensor_free(r->w);
    lq_lora_set_free(r->set);
    void *d[] = {r->x, r->gy, r->y, r->gx, r->w32, r->x16, r->gy16, r->y16, r->gx16, r->w16, r->xc16};
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++) lq_cuda_free(d[i]);
    memset(r, 0, sizeof *r);
}

/* W quantized (NF4, double quant, block 64) and on the device with its state; x, dY in f32 and bf16
 * (rounded on the host); the adapter (r 16, alpha 32) on the device; the Lt plans. hx keeps x. */
static int run_setup(bench *b, run *r, uint64_t seed, float **hx) {
    int64_t M = r->s.M, N = r->s.N, K = r->s.K, nx = M * K, ny = M * N, nw = N * K;
    lq_err err;
    lq_err_clear(&err);
    float *hw = malloc((size_t)nw * 4), *hg = malloc((size_t)ny * 4);
    uint16_t *h16 = malloc((size_t)(nx > ny ? nx : ny) * 2);
    uint8_t *codes = malloc((size_t)nw / 2);
    *hx = malloc((size_t)nx * 4);
    int rc = !hw || !hg || !h16 || !codes || !*hx ? fail("set-up", "out of host memory") : 0;
    lq_rng rng;
    lq_rng_seed(&rng, seed);
    for (int64_t i = 0; !rc && i < nw; i++) hw[i] = 0.1f * (lq_rng_uniform(&rng) - 0.5f);
    for (int64_t i = 0; !rc && i < nx; i++) (*hx)[i] = 2.0f * lq_rng_uniform(&rng) - 1.0f;
    for (int64_t i = 0; !rc && i < ny; i++) hg[i] = 2.0f * lq_rng_uniform(&rng) - 1.0f;
    lq_qstate *qs = NULL;
    int64_t wsh[2] = {N, K};
    if (!rc && lq_bnb4_quantize(LQ_DTYPE_NF4, hw, nw, 64, true, codes, &qs, &err) != LQ_OK) rc = fail("quantize", err.msg);
    if (!rc && !(r->w = lq_tensor_alloc(LQ_DTYPE_NF4, 2, wsh, "w", &err))) rc = fail("weight", err.msg);
    if (!rc && lq_nbytes(r->w) != (size_t)nw / 2) rc = fail("weight", "unexpected NF4 tensor size");
    if (!rc) {
        memcpy(r->w->data, codes, (size_t)nw / 2);
        r->w->qs = qs, qs = NULL; /* the tensor's now: lq_tensor_to_device moves (and frees) it */
        if (lq_tensor_to_device(r->w, &err) != LQ_OK) rc = fail("weight to device", err.msg);
    }
    lq_qstate_free(qs);
    float **f[] = {&r->x, &r->gy, &r->y, &r->gx, &r->w32};
    int64_t fn[] = {nx, ny, ny, nx, nw};
    uint16_t **g[] = {&r->x16, &r->gy16, &r->y16, &r->gx16, &r->w16, &r->xc16};
    int64_t gn[] = {nx, ny, ny, nx, nw, nx};
    for (int i = 0; !rc && i < 5; i++)
        if (!(*f[i] = lq_cuda_malloc((size_t)fn[i] * 4, &err))) rc = fail("device memory", err.msg);
    for (int i = 0; !rc && i < 6; i++)
        if (!(*g[i] = lq_cuda_malloc((size_t)gn[i] * 2, &err))) rc = fail("device memory", err.msg);
    if (!rc) rc = upload(r->x, *hx, (size_t)nx * 4) || upload(r->gy, hg, (size_t)ny * 4);
    for (int64_t i = 0; !rc && i < nx; i++) h16[i] = lq_f32_to_bf16((*hx)[i]);
    if (!rc) rc = upload(r->x16, h16, (size_t)nx * 2);
    for (int64_t i = 0; !rc && i < ny; i++) h16[i] = lq_f32_to_bf16(hg[i]);
    if (!rc) rc = upload(r->gy16, h16, (size_t)ny * 2);
    if (!rc && (lq_cuda_memset(r->gx, 0, (size_t)nx * 4, NULL, &err) != LQ_OK ||
                lq_cuda_memset(r->gx16, 0, (size_t)nx * 2, NULL, &err) != LQ_OK))
        rc = fail("memset", err.msg);
    lq_lora_cfg lc = {.r = LORA_R, .alpha = 32.0f, .dropout = 0.0f, .targets = LQ_LORA_ALL_LINEAR};
    if (!rc && (lq_lora_set_init(&r->set, &lc, &err) != LQ_OK || !lq_lora_set_add(r->set, "bench.linear", K, N, &err) ||
                lq_lora_set_finalize(r->set, seed, &err) != LQ_OK || lq_params_to_device(r->set->params, &err) != LQ_OK))
        rc = fail("adapter", err.msg);
    free(hw), free(hg), free(h16), free(codes);
    if (rc) return rc;
    for (int i = 0; i < 4; i++) lt_plan_make(&b->lt, &r->plan[i / 2][i % 2], i / 2, i % 2, M, N, K);
    for (int bwd = 0; bwd < 2; bwd++) {
        r->skip[(bwd ? V_BWD : V_FWD) + P_LT_F32] = r->plan[bwd][0].why[0] ? r->plan[bwd][0].why : NULL;
        r->skip[(bwd ? V_BWD : V_FWD) + P_LT_BF16] = r->plan[bwd][1].why[0] ? r->plan[bwd][1].why : NULL;
    }
    /* W's f32 and bf16 copies for the products (the dequant variants rewrite the same values) */
    if (lq_cuda_dequant(LQ_DTYPE_NF4, r->w->data, r->w32, nw, 0, r->w->qs, NULL, &err) != LQ_OK)
        return fail("dequant", err.msg);
    if (lq_cuda_dequant_bf16(LQ_DTYPE_NF4, r->w->data, r->w16, nw, 0, r->w->qs, NULL, &err) != LQ_OK)
        return fail("dequant bf16", err.msg);
    CK(cudaDeviceSynchronize());
    return 0;
}

/* Each product's output (C zeroed first) against gemm-fp32's: nmse; the cast's against the host's. */
static int run_check(bench *b, run *r, const float *hx) {
    int64_t M = r->s.M, N = r->s.N, K = r->s.K, nmax = M * (N > K ? N : K);
    float *ref = malloc((size_t)nmax * 4), *got = malloc((size_t)nmax * 4);
    uint16_t *g16 = malloc((size_t)nmax * 2);
    lq_err err;
    lq_err_clear(&err);
    int rc = !ref || !got || !g16 ? fail("check", "out of host memory") : 0;
    for (int bwd = 0; bwd < 2 && !rc; bwd++) {
        int64_t n = M * (bwd ? K : N);
        for (int p = 0; p < NP && !rc; p++) {
            int v = (bwd ? V_BWD : V_FWD) + p;
            if (r->skip[v]) continue;
            bool cb = out_bf16(p);
            void *C = bwd ? (cb ? (void *)r->gx16 : (void *)r->gx) : (cb ? (void *)r->y16 : (void *)r->y);
            if (cudaMemset(C, 0, (size_t)n * (cb ? 2 : 4)) != cudaSuccess || cudaDeviceSynchronize() != cudaSuccess) {
                rc = fail("check", "cudaMemset / cudaDeviceSynchronize failed");
                break;
            }
            if ((rc = product(b, r, bwd, p))) break;
            cudaError_t e = cudaDeviceSynchronize();
            if (e != cudaSuccess) {
                rc = fail("check: the product", cudaGetErrorString(e));
                break;
            }
            if (lq_cuda_copy(cb ? (void *)g16 : (void *)got, C, (size_t)n * (cb ? 2 : 4), LQ_COPY_D2H, NULL, &err) !=
                LQ_OK) {
                rc = fail("check: download", err.msg);
                break;
            }
            if (cb)
                for (int64_t i = 0; i < n; i++) got[i] = lq_bf16_to_f32(g16[i]);
            if (p == P_FP32) memcpy(ref, got, (size_t)n * 4);
            double num = 0, den = 0;
            for (int64_t i = 0; i < n; i++) {
                double d = (double)got[i] - (double)ref[i];
                num += d * d, den += (double)ref[i] * ref[i];
            }
            r->nmse[v] = den > 0 ? num / den : num > 0 ? 1.0 : 0.0; /* NaN when the output has one */
        }
    }
    r->conv_bad = -1;
    if (!rc && !r->skip[V_CONV]) {
        if (lq_cuda_copy(g16, r->xc16, (size_t)(M * K) * 2, LQ_COPY_D2H, NULL, &err) != LQ_OK)
            rc = fail("check: download", err.msg);
        r->conv_bad = 0;
        for (int64_t i = 0; !rc && i < M * K; i++) r->conv_bad += g16[i] != lq_f32_to_bf16(hx[i]);
    }
    free(ref), free(got), free(g16);
    return rc;
}

/* Drops what would break a JSON string (reasons come from dlerror and the libraries). */
static const char *json_safe(const char *s, char *buf, size_t n) {
    size_t j = 0;
    for (; s && *s && j + 1 < n; s++) buf[j++] = *s == '"' || *s == '\\' || (unsigned char)*s < 32 ? ' ' : *s;
    buf[j] = 0;
    return buf;
}

static void run_report(const bench *b, run *r) {
    int64_t M = r->s.M, N = r->s.N, K = r->s.K, nw = N * K, nb = nw / 64, nb2 = (nb + LQ_BNB_BLOCK2 - 1) / LQ_BNB_BLOCK2;
    double mnk = 2.0 * (double)M * (double)N * (double)K, lora = 2.0 * (double)M * LORA_R * (double)(K + N);
    double state = (double)nw / 2 + (double)nb + 4.0 * (double)nb2 + 1024;
    fprintf(stderr, "bench_gpu_linear: %s M %lld N %lld K %lld (%d reps, medians)\n", r->s.proj, (long long)M,
            (long long)N, (long long)K, b->reps);
    for (int v = 0; v < NV; v++) {
        char why[256];
        printf("{\"bench\": \"linear\", \"device\": \"%s\", \"proj\": \"%s\", \"M\": %lld, \"N\": %lld, \"K\": %lld, "
               "\"stage\": \"%s\", \"variant\": \"%s\", \"reps\": %d, ",
               b->dev, r->s.proj, (long long)M, (long long)N, (long long)K, stage_of(v), variant_of(v), b->reps);
        if (r->skip[v]) {
            printf("\"ms\": null, \"skipped\": \"%s\"}\n", json_safe(r->skip[v], why, sizeof why));
            fprintf(stderr, "  %-8s %-15s skipped: %s\n", stage_of(v), variant_of(v), r->skip[v]);
            continue;
        }
        double ms = lq_bench_median(r->t[v], b->reps), s = ms * 1e-3;
        bool bw = v <= V_CONV;
        double work = v == V_DQ_F32 ? state + 4.0 * (double)nw : v == V_DQ_BF16 ? state + 2.0 * (double)nw
                      : v == V_CONV ? 6.0 * (double)M * (double)K
                      : v < V_OP_FWD_TF32 ? mnk
                      : v <= V_OP_FWD_BF16 ? mnk + lora : 2.0 * mnk + 3.0 * lora;
        double rate = s > 0 ? work / s / (bw ? 1e9 : 1e12) : 0;
        printf("\"ms\": %.5f, \"%s\": %.2f", ms, bw ? "gbps" : "tflops", rate);
        fprintf(stderr, "  %-8s %-15s %9.4f ms %9.2f %s", stage_of(v), variant_of(v), ms, rate, bw ? "GB/s" : "TFLOPS");
        if (v >= V_FWD && v < V_OP_FWD_TF32) {
            double e = r->nmse[v];
            bool fin = e == e && e < 1e300; /* JSON has no NaN / Inf: null */
            if (fin) printf(", \"nmse\": %.3g", e);
            else printf(", \"nmse\": null");
            fprintf(stderr, "   nmse %.3g%s", e, fin && e <= 1e-3 ? "" : "  (WRONG?)");
        }
        if (v == V_CONV) {
            printf(", \"mismatches\": %lld", (long long)r->conv_bad);
            fprintf(stderr, "   mismatches %lld", (long long)r->conv_bad);
        }
        printf("}\n");
        fprintf(stderr, "\n");
    }
    fflush(stdout);
}

static int bench_shape(bench *b, const shape *s, uint64_t seed) {
    run *r = calloc(1, sizeof *r);
    if (!r) return fail("run", "out of host memory");
    r->s = *s;
    float *hx = NULL;
    int rc = run_setup(b, r, seed, &hx);
    for (int i = 0; !rc && i < b->warmup + b->reps; i++)
        for (int v = 0; !rc && v < NV; v++) {
            double ms = 0;
            if (r->skip[v]) continue;
            rc = time_one(b, r, v, &ms);
            if (i >= b->warmup) r->t[v][i - b->warmup] = ms;
        }
    if (!rc) rc = run_check(b, r, hx);
    if (!rc) run_report(b, r);
    free(hx);
    run_free(b, r);
    free(r);
    return rc;
}

static int bench_init(bench *b) {
    lq_err err;
    lq_err_clear(&err);
    struct cudaDeviceProp p;
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&p, dev) != cudaSuccess) snprintf(b->dev, sizeof b->dev, "?");
    else json_safe(p.name, b->dev, sizeof b->dev);
    for (int m = 0; m < 3; m++) {
        lq_ctx_opts co = {.n_threads = 1, .seed = b->seed, .device = LQ_DEVICE_CUDA, .cuda_math = (lq_cuda_math)m};
        if (lq_ctx_init(&b->ctx[m], &co, &err) != LQ_OK) return fail("context", err.msg);
        lq_ctx_set_training(b->ctx[m], true);
        lq_ctx_set_release_grads(b->ctx[m], true);
    }
    lt_open(&b->lt);
    CK(cudaEventCreate(&b->ev[0]));
    CK(cudaEventCreate(&b->ev[1]));
    return 0;
}

static void bench_free(bench *b) {
    for (int i = 0; i < 2; i++)
        if (b->ev[i]) warn_cu(cudaEventDestroy(b->ev[i]), "cudaEventDestroy");
    lt_close(&b->lt);
    for (int m = 0; m < 3; m++) lq_ctx_free(b->ctx[m]);
}

/* --- command line ------------------------------------------------------------------------------- */

static int usage(void) {
    fprintf(stderr, "usage: bench_gpu_linear [--shape MxNxK]... [--reps 20] [--warmup 3] [--lead-us 200]\n"
                    "                        [--seed 1]\n"
                    "       (M tokens, W (N, K); K a multiple of 64; default: the 1B and 135M projections)\n");
    return 2;
}

int main(int argc, char **argv) {
    static bench b; /* zeroed */
    b.reps = 20, b.warmup = 3, b.lead_us = 200, b.seed = 1;
    shape sh[MAX_SHAPES];
    int ns = 0;
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long long m = 0, n = 0, k = 0;
        if (!v) return usage();
        if (!strcmp(a, "--shape") && ns < MAX_SHAPES && sscanf(v, "%lldx%lldx%lld", &m, &n, &k) == 3)
            sh[ns++] = (shape){m, n, k, "custom"};
        else if (!strcmp(a, "--reps")) b.reps = atoi(v);
        else if (!strcmp(a, "--warmup")) b.warmup = atoi(v);
        else if (!strcmp(a, "--lead-us")) b.lead_us = atoi(v);
        else if (!strcmp(a, "--seed")) b.seed = strtoull(v, NULL, 10);
        else return usage();
    }
    if (!ns) {
        static const shape def[] = {{2048, 2048, 2048, "1b q/o"},    {2048, 512, 2048, "1b k/v"},
                                    {2048, 8192, 2048, "1b gate/up"}, {2048, 2048, 8192, "1b down"},
                                    {4096, 576, 576, "135m q/o"},     {4096, 192, 576, "135m k/v"},
                                    {4096, 1536, 576, "135m gate/up"}, {4096, 576, 1536, "135m down"}};
        ns = (int)(sizeof def / sizeof def[0]);
        memcpy(sh, def, sizeof def);
    }
    for (int i = 0; i < ns; i++)
        if (sh[i].M < 1 || sh[i].N < 1 || sh[i].K < 64 || sh[i].K % 64 || sh[i].M > INT32_MAX || sh[i].N > INT32_MAX ||
            sh[i].K > INT32_MAX) {
            fprintf(stderr, "bench_gpu_linear: --shape %lldx%lldx%lld: M, N >= 1, K a positive multiple of 64\n",
                    (long long)sh[i].M, (long long)sh[i].N, (long long)sh[i].K);
            return 2;
        }
    if (b.reps < 1 || b.reps > MAX_REPS || b.warmup < 0 || b.lead_us < 0 || b.lead_us > 100000) {
        fprintf(stderr, "bench_gpu_linear: reps 1..%d, warmup >= 0, lead-us 0..100000\n", MAX_REPS);
        return 2;
    }
    char buf[512];
    if (lq_cuda_devices(buf, sizeof buf) < 1) {
        printf("bench_gpu_linear: SKIPPED: %s\n", buf);
        return 77;
    }
    int rc = bench_init(&b);
    for (int i = 0; !rc && i < ns; i++) rc = bench_shape(&b, &sh[i], b.seed + (uint64_t)i);
    bench_free(&b);
    return rc;
}

#endif
