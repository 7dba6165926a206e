/* tests/cuda/test_cuda_wide.c: ops on the GPU against the CPU reference at shapes their own random
 * cases (lq_op_def.gc_make, sized for the CPU gradcheck) never or seldom reach, where the CUDA
 * kernels take other paths: attention rows longer than a warp, rope's and rmsnorm's four-wide row
 * kernels, swiglu's float4 kernels with aliased and accumulated gradients, cross-entropy over
 * vocabulary-wide rows, the bf16 QLoRA linear at real adapter ranks. Each case runs forward and
 * backward on both devices and every output and gradient is held to the op's nmse bound
 * (ops_harness.h, as in test_cuda_ops.c; the bf16 QLoRA linear to the magnitude bound).
 * Seeds come from the clock each run (printed); LOQUAT_CUDA_SEED=<n> replays a run. */
#include "autograd/ops/op_shared.h"
#include "tests/cuda/ops_harness.h"

/* N_CASES cases of op `name` in fp32 from make, case k drawn with *variant = k, each against the
 * op's nmse bound. */
static void run_variants(const char *name, lq_gc_make_fn make, int *variant, int mode_id, const char *mode) {
    int op = lq_op_find(name), fails = 0;
    assert_true(op >= 0);
    const op_bound *b = bound_of(name);
    assert_non_null(b);
    for (int k = 0; k < N_CASES; k++) {
        *variant = k;
        fails += run_case(g_cpu, g_cu, op, k, case_seed(op, k, mode_id), b->nmse, 0.0, mode, make);
    }
    if (fails) fail_msg("%s [%s]: %d comparison(s) failed (bound %.0e: %s)", name, mode, fails, b->nmse, b->why);
}

/* Attention on rows longer than a warp: the op's gradcheck case has T <= 5, so every score row
 * fits in one warp's first 32 lanes. These cases take T from 33 to 200 (rows of several 32-key
 * strides and, past 128, of several unrolled steps of the CUDA row kernels, cuda_attention.cu),
 * T mostly not a multiple of 32, grouped-query heads, and packed documents long enough to span
 * strides. Variant v (g_attn_variant) fixes causal = v & 1 and doc = (v >> 1) & 1, so the N_CASES
 * cases cover all four mask combinations; the rest is drawn. */
static int g_attn_variant;

static lq_tensor *attn_long_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    const lq_gc_case *c = user;
    lq_attn_params p = {c->fp[0], c->ip[0] != 0, n_in > 3 ? in[3] : NULL};
    return lq_attention(ctx, in[0], in[1], in[2], &p);
}

static lq_status attn_long_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    static const int64_t Ts[] = {70, 100, 160, 129, 200, 33};
    int v = g_attn_variant;
    int64_t T = Ts[(uint64_t)v % (sizeof Ts / sizeof Ts[0])], B = lq_rng_int(rng, 1, 2), D = lq_rng_int(rng, 1, 8);
    int64_t Hkv = lq_rng_int(rng, 1, 2), Hq = Hkv * (v < 4 ? 2 : lq_rng_int(rng, 1, 3));
    bool causal = v & 1, with_doc = (v >> 1) & 1;
    c->n_in = with_doc ? 4 : 3;
    c->in[0] = lq_gc_input(ctx, rng, 4, (int64_t[]){B, T, Hq, D}, -1.5f, 1.5f);
    c->in[1] = lq_gc_input(ctx, rng, 4, (int64_t[]){B, T, Hkv, D}, -1.5f, 1.5f);
    c->in[2] = lq_gc_input(ctx, rng, 4, (int64_t[]){B, T, Hkv, D}, -1, 1);
    /* documents longer than a warp's 32 keys: a new one with probability 1/16 per token */
    if (with_doc && !(c->in[3] = lq_gc_doc_ids(ctx, rng, B, T, 16))) return ctx->err.status;
    c->ip[0] = causal;
    c->fp[0] = 0.8f;
    c->call = attn_long_call;
    snprintf(c->desc, sizeof c->desc, "B=%lld T=%lld Hq=%lld Hkv=%lld D=%lld causal=%d doc=%d", (long long)B,
             (long long)T, (long long)Hq, (long long)Hkv, (long long)D, causal, with_doc);
    return ctx->err.status;
}

static void test_attention_long_rows(void **state) {
    (void)state;
    run_variants("attention", attn_long_make, &g_attn_variant, 6, "fp32 long rows");
}

/* rope at head sizes the random cases never reach (they keep D <= 7 for the CPU gradcheck), where
 * cuda_nn.cu's four-wide kernel runs: half and interleaved pairs, pass-through dims, per-batch
 * positions, a gradient accumulated onto another (the input read by two ropes), and D 36 in the half
 * layout, which the four-wide kernel declines (rot / 2 not a multiple of 4). Variant v is case v. */
static int g_rope_variant;

static lq_tensor *rope_wide_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    lq_rope_params p = {(lq_rope_layout)c->ip[0], (int)c->ip[1], 10000.0f, NULL};
    lq_tensor *y = lq_rope(ctx, in[0], in[1], &p);
    return c->ip[2] && y ? lq_add(ctx, y, lq_rope(ctx, in[0], in[1], &p)) : y;
}

static lq_status rope_wide_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    static const struct {
        int layout, D, rot, per_batch, twice;
    } v[] = {{LQ_ROPE_HALF, 64, 64, 0, 0},        {LQ_ROPE_INTERLEAVED, 64, 32, 1, 1}, {LQ_ROPE_HALF, 128, 64, 0, 1},
             {LQ_ROPE_INTERLEAVED, 36, 36, 0, 0}, {LQ_ROPE_HALF, 36, 36, 1, 0},        {LQ_ROPE_HALF, 48, 48, 1, 1}};
    int k = g_rope_variant % (int)(sizeof v / sizeof v[0]);
    int64_t B = lq_rng_int(rng, 1, 2), T = lq_rng_int(rng, 20, 70), H = lq_rng_int(rng, 1, 4), D = v[k].D;
    c->n_in = 2;
    c->in[0] = lq_gc_input(ctx, rng, 4, (int64_t[]){B, T, H, D}, -1, 1);
    c->in[1] = v[k].per_batch ? lq_gc_ids(ctx, rng, 2, (int64_t[]){B, T}, 0, 40) : lq_gc_ids(ctx, rng, 1, &T, 0, 40);
    c->ip[0] = v[k].layout;
    c->ip[1] = v[k].rot;
    c->ip[2] = v[k].twice;
    c->call = rope_wide_call;
    snprintf(c->desc, sizeof c->desc, "x (%lld, %lld, %lld, %lld) %s rot_dim %d pos %s%s", (long long)B, (long long)T,
             (long long)H, (long long)D, v[k].layout == LQ_ROPE_INTERLEAVED ? "interleaved" : "half", v[k].rot,
             v[k].per_batch ? "(B, T)" : "(T)", v[k].twice ? ", x read twice" : "");
    return ctx->err.status;
}

static void test_rope_wide(void **state) {
    (void)state;
    run_variants("rope", rope_wide_make, &g_rope_variant, 7, "fp32 wide");
}

/* swiglu over sizes the random cases seldom reach, where cuda_elementwise.cu's float4 kernels run
 * (m % 4 == 0), and one they decline (m odd); swiglu(x, x), where the gate's and the up's gradient
 * are one buffer (assigned, then added to); and the gate and up read by two swiglus, so the second
 * backward adds to gradients the first assigned. Variant v is case v. */
static int g_swiglu_variant;

static lq_tensor *swiglu_wide_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    lq_tensor *u = c->ip[0] ? in[0] : in[1], *y = lq_swiglu(ctx, in[0], u);
    return c->ip[1] && y ? lq_add(ctx, y, lq_swiglu(ctx, in[0], u)) : y;
}

static lq_status swiglu_wide_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    static const struct {
        int64_t F;
        int alias, twice;
    } v[] = {{64, 0, 0}, {63, 0, 0}, {96, 1, 0}, {40, 0, 1}, {36, 1, 1}, {125, 0, 1}};
    int k = g_swiglu_variant % (int)(sizeof v / sizeof v[0]);
    int64_t B = lq_rng_int(rng, 1, 2), T = v[k].F % 2 ? 2 * lq_rng_int(rng, 8, 30) + 1 : lq_rng_int(rng, 8, 60);
    int64_t shape[3] = {B, T, v[k].F};
    c->n_in = 2;
    c->in[0] = lq_gc_input(ctx, rng, 3, shape, -4, 4);
    c->in[1] = lq_gc_input(ctx, rng, 3, shape, -2, 2);
    c->ip[0] = v[k].alias;
    c->ip[1] = v[k].twice;
    c->call = swiglu_wide_call;
    snprintf(c->desc, sizeof c->desc, "(%lld, %lld, %lld)%s%s", (long long)B, (long long)T, (long long)v[k].F,
             v[k].alias ? " swiglu(x, x)" : "", v[k].twice ? ", read twice" : "");
    return ctx->err.status;
}

static void test_swiglu_wide(void **state) {
    (void)state;
    run_variants("swiglu", swiglu_wide_make, &g_swiglu_variant, 8, "fp32 wide");
}

/* rmsnorm over rows wider than the random cases' (C <= 9), where cuda_norm.cu's four-wide row
 * kernels run (C % 4 == 0), and one they decline (C 258); with and without a weight, x read by
 * two rmsnorms, so the second backward adds to the gradient the first wrote, and more rows than one
 * block of the weight's gradient sums. Variant v is case v. */
static int g_rms_variant;

static lq_tensor *rms_wide_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    const lq_gc_case *c = user;
    lq_tensor *w = n_in > 1 ? in[1] : NULL, *y = lq_rmsnorm(ctx, in[0], w, 1e-5f);
    return c->ip[0] && y ? lq_add(ctx, y, lq_rmsnorm(ctx, in[0], w, 1e-5f)) : y;
}

static lq_status rms_wide_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    static const struct {
        int64_t C;
        int weight, twice, many_rows;
    } v[] = {{256, 1, 0, 0}, {64, 0, 0, 0}, {258, 1, 1, 1}, {512, 1, 1, 0}, {36, 0, 1, 0}, {2048, 1, 0, 1}};
    int k = g_rms_variant % (int)(sizeof v / sizeof v[0]);
    /* many_rows: the weight's gradient summed by several 64-row blocks (cuda_norm.cu's ROWS_PER) */
    int64_t R = v[k].many_rows ? lq_rng_int(rng, 65, 200) : lq_rng_int(rng, 1, 40), C = v[k].C;
    c->n_in = 1;
    c->in[0] = lq_gc_input(ctx, rng, 2, (int64_t[]){R, C}, -2, 2);
    if (v[k].weight) c->in[c->n_in++] = lq_gc_input(ctx, rng, 1, &C, 0.5f, 1.5f);
    c->ip[0] = v[k].twice;
    c->call = rms_wide_call;
    snprintf(c->desc, sizeof c->desc, "x (%lld, %lld)%s%s", (long long)R, (long long)C, v[k].weight ? " weight" : "",
             v[k].twice ? ", read twice" : "");
    return ctx->err.status;
}

static void test_rmsnorm_wide(void **state) {
    (void)state;
    run_variants("rmsnorm", rms_wide_make, &g_rms_variant, 9, "fp32 wide");
}

/* cross-entropy over rows a vocabulary wide: from 4096 columns a row gets a 1024-thread block
 * (cuda_nn.cu's ce_threads), below it 256; about a quarter of the rows ignored, sum and mean
 * reductions, and the logits read by two losses, so the second backward adds to the gradient
 * the first wrote. Variant v is case v. */
static int g_ce_variant;

static lq_tensor *ce_wide_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const lq_gc_case *c = user;
    lq_tensor *y = lq_cross_entropy(ctx, in[0], in[1], LQ_IGNORE_INDEX, (lq_reduction)c->ip[0]);
    return c->ip[1] && y ? lq_add(ctx, y, lq_cross_entropy(ctx, in[0], in[1], LQ_IGNORE_INDEX, LQ_REDUCE_SUM)) : y;
}

static lq_status ce_wide_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    static const struct {
        int64_t V;
        int sum, twice;
    } v[] = {{4096, 0, 0}, {32000, 1, 0}, {4095, 0, 1}, {5003, 1, 1}, {8192, 0, 1}, {300, 1, 0}};
    int k = g_ce_variant % (int)(sizeof v / sizeof v[0]);
    int64_t N = lq_rng_int(rng, 1, 24), V = v[k].V;
    c->n_in = 2;
    c->in[0] = lq_gc_input(ctx, rng, 2, (int64_t[]){N, V}, -3, 3);
    c->in[1] = lq_gc_ids(ctx, rng, 1, &N, 0, (int32_t)V - 1);
    if (!c->in[1]) return ctx->err.status;
    int32_t *tg = c->in[1]->data;
    for (int64_t i = 1; i < N; i++) /* the first row always counts */
        if (lq_rng_int(rng, 0, 3) == 0) tg[i] = LQ_IGNORE_INDEX;
    c->ip[0] = v[k].sum ? LQ_REDUCE_SUM : LQ_REDUCE_MEAN;
    c->ip[1] = v[k].twice;
    c->call = ce_wide_call;
    snprintf(c->desc, sizeof c->desc, "logits (%lld, %lld) %s%s", (long long)N, (long long)V, v[k].sum ? "sum" : "mean",
             v[k].twice ? ", read twice" : "");
    return ctx->err.status;
}

static void test_cross_entropy_wide(void **state) {
    (void)state;
    run_variants("cross_entropy", ce_wide_make, &g_ce_variant, 10, "fp32 wide");
}

/* The bf16 QLoRA linear at adapter ranks and widths the random cases (r <= 4, N <= 9) never reach,
 * where its backward converts dY and computes du = s dY B in one kernel (cuda_qlinear_dy.cu: r a
 * multiple of 16 up to 64, N a multiple of 64; N 576: nine 64-column steps over 8 warps), with row
 * counts that leave a partial 16-row block; dropout (du in its own buffer, dX's adapter share
 * apart) and a bias; and shapes the kernel declines (N 100, r 8), which take the conversion and a
 * separate product. NF4 base (block 64),
 * bf16 math, each element within the magnitude bound (test_cuda_ops.c). Every case runs twice: as
 * the op picks its path, then with LOQUAT_CUDA_LORA_FUSE=0 (no one-product forward, no dY / du
 * kernel). Variant v is case v. */
static int g_lora_variant;

static lq_tensor *lora_wide_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    const lq_gc_case *c = user;
    bool prev_training = lq_ctx_set_training(ctx, true); /* dropout on, the same mask on both devices */
    lq_ctx_set_seed(ctx, (uint64_t)c->ip[3]);
    lq_qmatmul_tiles tl = {c->ip[0], c->ip[1], c->ip[2]};
    lq_tensor *y = lq_lora_linear_fused(ctx, in[0], in[1], n_in > 4 ? in[4] : NULL, in[2], in[3], c->fp[0], c->fp[1],
                                        &tl);
    lq_ctx_set_training(ctx, prev_training);
    return y;
}

static lq_status lora_wide_make(lq_ctx *ctx, lq_rng *rng, lq_gc_case *c) {
    static const struct {
        int64_t N, K, r, M;
        float p;
        int bias;
    } v[] = {{128, 64, 16, 37, 0.0f, 0}, {576, 128, 32, 16, 0.0f, 1}, {64, 64, 64, 50, 0.0f, 0},
             {256, 64, 48, 21, 0.3f, 0}, {100, 64, 16, 19, 0.0f, 0}, {128, 64, 8, 33, 0.0f, 1}};
    int k = g_lora_variant % (int)(sizeof v / sizeof v[0]);
    int64_t N = v[k].N, K = v[k].K, r = v[k].r, M = v[k].M;
    float *wf = lq_ctx_alloc(ctx, (size_t)(N * K) * sizeof(float));
    if (!wf) return ctx->err.status;
    for (int64_t i = 0; i < N * K; i++) wf[i] = 2.0f * lq_rng_uniform(rng) - 1.0f;
    lq_tensor *w = lq_gc_quantize(ctx, LQ_DTYPE_NF4, wf, N, K, 64);
    if (!w) return ctx->err.status;
    c->n_in = v[k].bias ? 5 : 4;
    c->in[0] = lq_gc_input(ctx, rng, 2, (int64_t[]){M, K}, -1, 1);
    c->in[1] = w;
    c->in[2] = lq_gc_input(ctx, rng, 2, (int64_t[]){r, K}, -1, 1);
    c->in[3] = lq_gc_input(ctx, rng, 2, (int64_t[]){N, r}, -1, 1);
    if (v[k].bias) c->in[4] = lq_gc_input(ctx, rng, 1, (int64_t[]){N}, -1, 1);
    c->ip[0] = N;
    c->ip[1] = K;
    c->ip[2] = N;
    c->ip[3] = (int64_t)(lq_rng_u64(rng) >> 1);
    c->fp[0] = 0.25f + 1.75f * lq_rng_uniform(rng);
    c->fp[1] = v[k].p;
    c->call = lora_wide_call;
    snprintf(c->desc, sizeof c->desc, "x (%lld, %lld), w nf4 b64 (%lld, %lld), r %lld, s %.3f, p %.2f%s", (long long)M,
             (long long)K, (long long)N, (long long)K, (long long)r, (double)c->fp[0], (double)v[k].p,
             v[k].bias ? ", bias" : "");
    return ctx->err.status;
}

static void test_lora_bf16_wide(void **state) {
    (void)state;
    lq_ctx *cu = lq_cuda_test_ctx(LQ_DEVICE_CUDA, LQ_CUDA_MATH_BF16);
    assert_non_null(cu);
    int op = lq_op_find("lora_linear"), fails = 0;
    assert_true(op >= 0);
    for (int fuse = 1; fuse >= 0; fuse--) { /* then LOQUAT_CUDA_LORA_FUSE=0: without the two fusions */
        if (!fuse) setenv("LOQUAT_CUDA_LORA_FUSE", "0", 1);
        for (int k = 0; k < N_CASES; k++) {
            g_lora_variant = k;
            fails += run_case(g_cpu, cu, op, k, case_seed(op, k, 11), 1e-3, TOL_BF16,
                              fuse ? "bf16 wide" : "bf16 wide, unfused", lora_wide_make);
        }
    }
    unsetenv("LOQUAT_CUDA_LORA_FUSE");
    lq_ctx_free(cu);
    if (fails) fail_msg("lora_linear [bf16 wide]: %d comparison(s) failed (tol %.3g x magnitude)", fails, TOL_BF16);
}

int main(void) {
    int rc = 0;
    if (!lq_cuda_test_should_run(&rc)) return rc;
    g_seed = lq_cuda_test_seed("test_cuda_wide");
    const struct CMUnitTest tests[] = {
        {"attention_long_rows", test_attention_long_rows, NULL, NULL, NULL},
        {"rope_wide", test_rope_wide, NULL, NULL, NULL},
        {"swiglu_wide", test_swiglu_wide, NULL, NULL, NULL},
        {"rmsnorm_wide", test_rmsnorm_wide, NULL, NULL, NULL},
        {"cross_entropy_wide", test_cross_entropy_wide, NULL, NULL, NULL},
        {"lora_bf16_wide", test_lora_bf16_wide, NULL, NULL, NULL},
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
