/* tests/cuda/test_cuda_step.c: one whole QLoRA training step on the GPU against the same step on the
 * CPU, from the same start: tests/fixtures/qlora_tiny (a tiny HF Llama) loaded twice as NF4 with
 * double quantization (as the fixture's config), the same adapters on both, one copy moved to the
 * device. Compared: the loss (lq_llama_loss on a fixed batch), every adapter gradient after
 * backward (normalized MSE), and every adapter parameter after one lq_adamw_step; with and without
 * gradient checkpointing in fp32 mode, and once in bf16 mode (the loss only, loosely: it shows
 * the mode runs end to end, with finite gradients); and, in tf32 and bf16 modes, the device step
 * with gradient release against the same step without; the bf16 step with the side stream against
 * one stream; and the per-step bf16 copy of a frozen weight (lq_cuda_gemm_frozen). Without CUDA it
 * prints "SKIPPED: <reason>". */
#include <stdlib.h>
#include <string.h>

#include "core/cuda.h"
#include "lora/lora.h"
#include "models/models.h"
#include "train/train.h"
#include "tests/cuda/cuda_testutil.h"
#include "tests/testutil.h"

#define BATCH 2
#define SEQ 16
#define LORA_SEED 4321u

static uint64_t g_seed;

/* fp32 mode: the two sides differ by summation order only (blocked gemms, row reductions), so the
 * loss agrees to ~1e-6 relative and a gradient to an nmse of ~1e-12; the bounds leave margin, and
 * a missing term (a dropped adapter, a wrong scale) is far above them. */
#define LOSS_REL_FP32 1e-5
#define GRAD_NMSE_FP32 1e-8
/* One AdamW step on both sides from the same gradient (the GPU's): train/optim_cuda.cu rounds each
 * operation as the CPU loop does, in the same order, so the parameters agree bit for bit. */
#define PARAM_NMSE 0.0
/* bf16 tensor-core inputs: ~3 significant digits per product; the loss is a sum over the batch. */
#define LOSS_REL_BF16 1e-2

typedef struct side {
    lq_llama_model *m;
    lq_lora_set *set;
    lq_ctx *ctx;
    lq_adamw opt;
    bool opt_ready;
} side;

static lq_status side_init(side *s, const lq_lora_cfg *lc, lq_device_kind dev, lq_cuda_math math, lq_err *err) {
    memset(s, 0, sizeof *s);
    char dir[512];
    lq_fixture_path("qlora_tiny", dir, sizeof dir);
    lq_llama_load_opts lo = {.quant = LQ_BASE_NF4, .block_size = 64, .double_quant = true};
    LQ_TRY(lq_llama_load_ex(dir, &lo, &s->m, err));
    LQ_TRY(lq_llama_lora_create(s->m, lc, LORA_SEED, &s->set, err));
    lq_ctx_opts o = {.n_threads = 1, .arena_bytes = 1 << 22, .seed = 99, .device = dev, .cuda_math = math,
                     .poison = dev == LQ_DEVICE_CUDA};
    return lq_ctx_init(&s->ctx, &o, err);
}

static void side_free(side *s) {
    if (s->opt_ready) lq_adamw_free(&s->opt);
    lq_ctx_free(s->ctx);
    lq_llama_free(s->m);
    lq_lora_set_free(s->set); /* after the model (models.h) */
}

/* The fixed batch on ctx: ids and labels (B, T) i32 (host tensors on either device), a quarter of
 * the labels ignored (the first of each row always counted). */
static void make_batch(lq_ctx *ctx, int64_t vocab, lq_tensor **ids, lq_tensor **labels) {
    const int64_t shape[2] = {BATCH, SEQ};
    *ids = lq_new(ctx, LQ_DTYPE_I32, 2, shape);
    *labels = lq_new(ctx, LQ_DTYPE_I32, 2, shape);
    assert_non_null(*ids);
    assert_non_null(*labels);
    lq_rng r;
    lq_rng_seed(&r, g_seed);
    int32_t *id = (*ids)->data, *lb = (*labels)->data;
    for (int64_t i = 0; i < BATCH * SEQ; i++) {
        id[i] = (int32_t)lq_rng_int(&r, 0, vocab - 1);
        lb[i] = (int32_t)lq_rng_int(&r, 0, vocab - 1);
        if (i % SEQ && lq_rng_int(&r, 0, 3) == 0) lb[i] = LQ_IGNORE_INDEX;
    }
}

/* The parameter block (data or grad) of s on the host, malloc'd. */
static float *block_of(side *s, bool grad) {
    lq_params *p = s->set->params;
    int64_t n = lq_params_numel(p);
    float *h = malloc((size_t)n * sizeof *h);
    assert_non_null(h);
    const float *src = grad ? lq_params_grad(p) : lq_params_data(p);
    lq_err err;
    lq_err_clear(&err);
    if (lq_params_device(p) == LQ_DEVICE_CUDA) {
        if (lq_cuda_sync(NULL, &err) != LQ_OK || lq_cuda_copy(h, src, (size_t)n * sizeof *h, LQ_COPY_D2H, NULL, &err))
            fail_msg("reading the device parameters back: %s", err.msg);
    } else {
        memcpy(h, src, (size_t)n * sizeof *h);
    }
    return h;
}

/* Per parameter tensor: nmse of the GPU block's slice against the CPU's. Returns the failures. */
static int compare_params(const char *what, side *cpu, const float *hc, const float *hg, double bound) {
    lq_params *p = cpu->set->params;
    const float *base = lq_params_data(p);
    int fails = 0;
    double worst = 0;
    for (int i = 0; i < lq_params_count(p); i++) {
        lq_tensor *t = lq_params_at(p, i);
        ptrdiff_t off = (const float *)t->data - base; /* the same layout on both sides */
        int64_t bad;
        double e = lq_nmse(hg + off, hc + off, lq_numel(t), &bad);
        if (e > worst) worst = e;
        if (bad >= 0) {
            print_error("%s of %s: element %lld is %g on the GPU, %g on the CPU\n", what, t->name, (long long)bad,
                        (double)hg[off + bad], (double)hc[off + bad]);
            fails++;
        } else if (!(e <= bound)) {
            print_error("%s of %s: nmse %.3g > %.3g\n", what, t->name, e, bound);
            fails++;
        }
    }
    print_message("  %s: %d tensors, worst nmse %.3g (bound %.0e)\n", what, lq_params_count(p), worst, bound);
    return fails;
}

static void run_step(bool checkpoint, lq_cuda_math math, bool full, bool release) {
    lq_err err;
    lq_err_clear(&err);
    lq_lora_cfg lc = {.r = 4, .alpha = 8.0f, .dropout = 0.0f, .rslora = false, .targets = LQ_LORA_ALL_LINEAR};
    side c, g;
    if (side_init(&c, &lc, LQ_DEVICE_CPU, LQ_CUDA_MATH_FP32, &err) != LQ_OK) fail_msg("CPU side: %s", err.msg);
    if (side_init(&g, &lc, LQ_DEVICE_CUDA, math, &err) != LQ_OK) fail_msg("GPU side: %s", err.msg);
    /* as the trainer runs: each activation gradient back to the pool once its node has run */
    lq_ctx_set_release_grads(c.ctx, release);
    lq_ctx_set_release_grads(g.ctx, release);

    /* PEFT's init leaves B = 0, so dA would be 0 on both sides and prove nothing: give every B
     * small random values (the same on both: the CPU block is copied over) */
    lq_params *pc = c.set->params, *pg = g.set->params;
    assert_int_equal(lq_params_numel(pc), lq_params_numel(pg));
    lq_rng r;
    lq_rng_seed(&r, g_seed ^ 0xb0b0u);
    for (int i = 0; i < c.set->n; i++) lq_fill_normal(c.set->mods[i].B, &r, 0.05f);
    memcpy(lq_params_data(pg), lq_params_data(pc), (size_t)lq_params_numel(pc) * sizeof(float));
    if (lq_llama_to_device(g.m, &err) != LQ_OK) fail_msg("lq_llama_to_device: %s", err.msg);
    if (lq_params_to_device(pg, &err) != LQ_OK) fail_msg("lq_params_to_device: %s", err.msg);

    int64_t vocab = lq_llama_model_config(c.m)->vocab_size;
    lq_tensor *ids_c, *lab_c, *ids_g, *lab_g;
    make_batch(c.ctx, vocab, &ids_c, &lab_c);
    make_batch(g.ctx, vocab, &ids_g, &lab_g);
    lq_llama_fwd_opts fo = {.checkpoint = checkpoint};
    int64_t nc = 0, ng = 0;
    lq_tensor *loss_c = lq_llama_loss(c.ctx, c.m, ids_c, lab_c, &fo, &nc);
    if (!loss_c) fail_msg("CPU loss: %s", lq_ctx_error(c.ctx)->msg);
    lq_tensor *loss_g = lq_llama_loss(g.ctx, g.m, ids_g, lab_g, &fo, &ng);
    if (!loss_g) fail_msg("GPU loss: %s", lq_ctx_error(g.ctx)->msg);
    assert_int_equal(nc, ng);
    if (lq_backward(c.ctx, loss_c) != LQ_OK) fail_msg("CPU backward: %s", lq_ctx_error(c.ctx)->msg);
    if (lq_backward(g.ctx, loss_g) != LQ_OK) fail_msg("GPU backward: %s", lq_ctx_error(g.ctx)->msg);
    double lc_v = lq_tensor_get_f32(c.ctx, loss_c, 0), lg_v = lq_tensor_get_f32(g.ctx, loss_g, 0);
    double rel = fabs(lg_v - lc_v) / fmax(fabs(lc_v), 1e-30), bound = full ? LOSS_REL_FP32 : LOSS_REL_BF16;
    print_message("  loss (%lld labels): CPU %.9g, GPU %.9g, relative %.3g (bound %.0e)\n", (long long)nc, lc_v, lg_v,
                  rel, bound);
    if (!isfinite(lg_v) || !(rel <= bound))
        fail_msg("loss: GPU %.9g vs CPU %.9g, relative %.3g > %.0e", lg_v, lc_v, rel, bound);
    if (!full) { /* bf16: the gradients are only checked to be finite (written, no overflow) */
        float *gg = block_of(&g, true);
        for (int64_t i = 0; i < lq_params_numel(pg); i++)
            if (!isfinite(gg[i]))
                fail_msg("bf16 gradient element %lld of the block is %g", (long long)i, (double)gg[i]);
        free(gg);
        side_free(&c);
        side_free(&g);
        return;
    }

    int fails = 0;
    float *gc = block_of(&c, true), *gg = block_of(&g, true);
    fails += compare_params("gradient", &c, gc, gg, GRAD_NMSE_FP32);
    /* AdamW from the GPU's gradient on both sides: its first step maps each element to about
     * +-lr by the element's sign, so an element that comes out of a cancelling sum near zero
     * turns the update round (seen: 2.2e-8 on the CPU, -1.8e-7 on the GPU, within a gradient
     * nmse of 2.4e-12, moved one parameter by 1.6 lr). The gradients were compared above; this
     * compares the optimizers on the same input. */
    memcpy(lq_params_grad(pc), gg, (size_t)lq_params_numel(pc) * sizeof *gg);
    free(gc);
    free(gg);

    lq_adamw_cfg ac = {
        .lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f, .n_threads = 1};
    if (lq_adamw_init(&c.opt, pc, &ac, &err) != LQ_OK) fail_msg("CPU adamw: %s", err.msg);
    c.opt_ready = true;
    if (lq_adamw_init(&g.opt, pg, &ac, &err) != LQ_OK) fail_msg("GPU adamw: %s", err.msg);
    g.opt_ready = true;
    if (lq_adamw_step(&c.opt, pc, ac.lr, &err) != LQ_OK) fail_msg("CPU adamw step: %s", err.msg);
    if (lq_adamw_step(&g.opt, pg, ac.lr, &err) != LQ_OK) fail_msg("GPU adamw step: %s", err.msg);
    float *xc = block_of(&c, false), *xg = block_of(&g, false);
    fails += compare_params("parameter after AdamW", &c, xc, xg, PARAM_NMSE);
    free(xc);
    free(xg);
    side_free(&c);
    side_free(&g);
    if (fails) fail_msg("%d tensor comparison(s) failed", fails);
}

static void test_step_fp32(void **state) {
    (void)state;
    run_step(false, LQ_CUDA_MATH_FP32, true, false);
}

static void test_step_fp32_checkpoint(void **state) {
    (void)state;
    run_step(true, LQ_CUDA_MATH_FP32, true, false);
}

/* the trainer's settings: gradient release (device pool) with and without checkpointing */
static void test_step_fp32_release(void **state) {
    (void)state;
    run_step(false, LQ_CUDA_MATH_FP32, true, true);
}

static void test_step_fp32_checkpoint_release(void **state) {
    (void)state;
    run_step(true, LQ_CUDA_MATH_FP32, true, true);
}

static void test_step_bf16_loss(void **state) {
    (void)state;
    run_step(false, LQ_CUDA_MATH_BF16, false, true);
}

/* The loss and the adapter gradient block of one device step in the given math, with or without
 * gradient release and checkpointing, adapters of rank r (*grads malloc'd). */
static double device_step(lq_cuda_math math, bool release, bool checkpoint, int rank, float **grads) {
    lq_err err;
    lq_err_clear(&err);
    lq_lora_cfg lc = {.r = rank, .alpha = 2.0f * rank, .dropout = 0.0f, .rslora = false, .targets = LQ_LORA_ALL_LINEAR};
    side g;
    if (side_init(&g, &lc, LQ_DEVICE_CUDA, math, &err) != LQ_OK) fail_msg("GPU side: %s", err.msg);
    lq_ctx_set_release_grads(g.ctx, release);
    lq_rng r;
    lq_rng_seed(&r, g_seed ^ 0xb0b0u);
    for (int i = 0; i < g.set->n; i++) lq_fill_normal(g.set->mods[i].B, &r, 0.05f); /* dA != 0 */
    if (lq_llama_to_device(g.m, &err) != LQ_OK) fail_msg("lq_llama_to_device: %s", err.msg);
    if (lq_params_to_device(g.set->params, &err) != LQ_OK) fail_msg("lq_params_to_device: %s", err.msg);
    lq_tensor *ids, *lab;
    make_batch(g.ctx, lq_llama_model_config(g.m)->vocab_size, &ids, &lab);
    lq_llama_fwd_opts fo = {.checkpoint = checkpoint};
    lq_tensor *loss = lq_llama_loss(g.ctx, g.m, ids, lab, &fo, NULL);
    if (!loss || lq_backward(g.ctx, loss) != LQ_OK) fail_msg("GPU step: %s", lq_ctx_error(g.ctx)->msg);
    double v = lq_tensor_get_f32(g.ctx, loss, 0);
    *grads = block_of(&g, true);
    side_free(&g);
    return v;
}

/* Gradient release on the device changes where gradients live, not their values: a reshape's or
 * an add's input takes the output's block (lq_grad_adopt), and swiglu, rope and the QLoRA linear
 * assign into a fresh unzeroed block (lq_grad_get_fresh; NaN-poisoned here, so an element they
 * skip shows) instead of adding into a zeroed one. In tf32 and bf16 math (the bf16 path with the
 * adapter's dX inside the base product), the same step without release is the reference: equal
 * up to a product's summation order (cuBLAS may pick another kernel for beta 0 than for beta 1). */
static void release_same(lq_cuda_math math, const char *mode, bool checkpoint) {
    float *off = NULL, *on = NULL;
    double l_off = device_step(math, false, false, 4, &off), l_on = device_step(math, true, checkpoint, 4, &on);
    lq_lora_cfg lc = {.r = 4, .alpha = 8.0f, .targets = LQ_LORA_ALL_LINEAR};
    side c; /* the CPU side only for the parameter layout */
    lq_err err;
    lq_err_clear(&err);
    if (side_init(&c, &lc, LQ_DEVICE_CPU, LQ_CUDA_MATH_FP32, &err) != LQ_OK) fail_msg("CPU side: %s", err.msg);
    print_message("  %s loss: %.9g without release, %.9g with%s\n", mode, l_off, l_on,
                  checkpoint ? " and checkpointing" : "");
    int fails = compare_params(checkpoint ? "gradient (release and checkpointing against neither)"
                                          : "gradient (release against none)",
                               &c, off, on, 1e-10);
    double sum = 0;
    for (int64_t i = 0; i < lq_params_numel(c.set->params); i++) sum += (double)off[i] * off[i];
    side_free(&c);
    free(off);
    free(on);
    if (!isfinite(l_on) || fabs(l_on - l_off) > 1e-6 * fabs(l_off)) fail_msg("%s loss %.9g vs %.9g", mode, l_on, l_off);
    if (!(sum > 0)) fail_msg("%s: the gradients are all zero", mode);
    if (fails) fail_msg("%s: %d tensor(s) differ with release", mode, fails);
}

static void test_release_same_tf32(void **state) {
    (void)state;
    release_same(LQ_CUDA_MATH_TF32, "tf32", false);
}

static void test_release_same_bf16(void **state) {
    (void)state;
    release_same(LQ_CUDA_MATH_BF16, "bf16", false);
}

/* The trainer's memory settings in bf16 math: each layer's forward runs again in backward, in the
 * checkpoint scratch arena, where the bf16 copies of its activations (lq_cuda_act_bf16) are made
 * and shared anew. Against the same step without either, within the bound above. */
static void test_checkpoint_same_bf16(void **state) {
    (void)state;
    release_same(LQ_CUDA_MATH_BF16, "bf16", true);
}

/* A rank-16 bf16 step in a context made with `env`=0 against one made without it, with and without
 * checkpointing: each gradient tensor within grad_bound nmse, the losses within loss_rel relative,
 * both finite. Returns the failures. */
static int env_off_same(const char *env, const char *what, double grad_bound, double loss_rel) {
    lq_lora_cfg lc = {.r = 16, .alpha = 32.0f, .targets = LQ_LORA_ALL_LINEAR};
    side c; /* the CPU side only for the parameter layout */
    lq_err err;
    lq_err_clear(&err);
    if (side_init(&c, &lc, LQ_DEVICE_CPU, LQ_CUDA_MATH_FP32, &err) != LQ_OK) fail_msg("CPU side: %s", err.msg);
    int fails = 0;
    for (int ck = 0; ck < 2; ck++) {
        float *off = NULL, *on = NULL;
        setenv(env, "0", 1);
        double l_off = device_step(LQ_CUDA_MATH_BF16, true, ck, 16, &off);
        unsetenv(env);
        double l_on = device_step(LQ_CUDA_MATH_BF16, true, ck, 16, &on);
        print_message("  bf16%s loss: %.9g with %s=0, %.9g without\n", ck ? " ckpt" : "", l_off, env, l_on);
        char label[160];
        snprintf(label, sizeof label, "gradient (%s%s)", what, ck ? ", checkpointing" : "");
        fails += compare_params(label, &c, off, on, grad_bound);
        if (!isfinite(l_on) || !isfinite(l_off) || fabs(l_on - l_off) > loss_rel * fabs(l_off)) fails++;
        free(off);
        free(on);
    }
    side_free(&c);
    return fails;
}

/* The side stream (lq_cuda_fork / lq_cuda_join: the adapter's products beside the NF4 dequant and
 * dX's product) against a context made with LOQUAT_CUDA_SIDE_STREAM=0, where all of it runs on one
 * stream in issue order: the same products, so the same loss and gradients within the bound
 * above, with and without checkpointing. On a GPU a missing wait shows here as a difference (or
 * NaN from the poisoned fresh gradient blocks); the CPU emulator runs the side's work as late as
 * its waits allow. Rank 16, so the forward's one product over [x | u] and the backward's dY / du
 * kernel run where the shapes let them. */
static void test_side_stream_same_bf16(void **state) {
    (void)state;
    int fails = env_off_same("LOQUAT_CUDA_SIDE_STREAM", "side stream against one", 1e-10, 1e-6);
    if (fails) fail_msg("%d loss(es) / tensor(s) differ with the side stream", fails);
}

/* LOQUAT_CUDA_LORA_FUSE=0 turns off the bf16 path's two fusions (the forward as one product over
 * [x | u] and [deq(W) | B]; dY to bf16 with du = s dY B in one kernel): the thin product y = u B^T
 * and the plain conversion with du's own product run instead, in a whole step. The math is the
 * same, rounded at other points: where the fp32 sums differ in a last bit, some element rounds to
 * another bf16, and through the step's later conversions that spreads to bf16 noise (over 24 seeds
 * on the emulator the gradients were either equal to ~1e-17 or apart by 2e-6 to 3.4e-5 nmse). So
 * this is the switch's end-to-end check, with bf16-noise bounds: loss within LOSS_REL_BF16,
 * gradients within 1e-3 nmse, all finite. The per-op check of both paths against the CPU is
 * test_cuda_wide's lora_bf16_wide, which runs with the switch on and off. */
static void test_lora_fuse_off_bf16(void **state) {
    (void)state;
    int fails = env_off_same("LOQUAT_CUDA_LORA_FUSE", "fused against unfused", 1e-3, LOSS_REL_BF16);
    if (fails) fail_msg("%d loss(es) / tensor(s) differ with the fusions", fails);
}

/* bf16 math converts a frozen weight (a device leaf that owns its data and needs no gradient: the
 * tied lm_head) to bf16 once per step and shares the copy (lq_cuda_gemm_frozen). Within a step a
 * product reads the same values as before; after lq_ctx_step_reset, a weight changed in between is
 * read anew. x W^T three times: twice in step 1 (the second from the copy: bit-equal), then W
 * replaced and the step reset: equal to the product of a fresh context that never saw the old W. */
static void test_frozen_bf16_per_step(void **state) {
    (void)state;
    enum { M = 24, K = 40, N = 56 };
    lq_err err;
    lq_err_clear(&err);
    lq_ctx *ctx = NULL, *fresh = NULL;
    lq_ctx_opts o = {.n_threads = 1, .arena_bytes = 1 << 20, .seed = 5, .device = LQ_DEVICE_CUDA,
                     .cuda_math = LQ_CUDA_MATH_BF16, .poison = true};
    if (lq_ctx_init(&ctx, &o, &err) != LQ_OK || lq_ctx_init(&fresh, &o, &err) != LQ_OK) fail_msg("ctx: %s", err.msg);
    lq_ctx_set_grad(ctx, false);
    lq_ctx_set_grad(fresh, false);
    int64_t ws[2] = {N, K}, xs[2] = {M, K};
    lq_tensor *w = lq_tensor_alloc(LQ_DTYPE_F32, 2, ws, "frozen.weight", &err);
    lq_tensor *xh = lq_tensor_alloc(LQ_DTYPE_F32, 2, xs, "x", &err);
    if (!w || !xh) fail_msg("alloc: %s", err.msg);
    lq_rng r;
    lq_rng_seed(&r, g_seed ^ 0xf00du);
    lq_fill_normal(w, &r, 1.0f);
    lq_fill_normal(xh, &r, 1.0f);
    float *w2 = malloc(sizeof(float) * N * K), *y[4];
    for (int i = 0; i < N * K; i++) w2[i] = 0.5f - ((const float *)w->data)[i]; /* unrelated values */
    if (lq_tensor_to_device(w, &err) != LQ_OK) fail_msg("to device: %s", err.msg);
    for (int step = 0, k = 0; step < 2; step++) {
        lq_ctx *c = ctx;
        if (step == 1) { /* W changes between steps */
            if (lq_cuda_copy(w->data, w2, sizeof(float) * N * K, LQ_COPY_H2D, NULL, &err) != LQ_OK)
                fail_msg("%s", err.msg);
            lq_ctx_step_reset(ctx);
        }
        for (int rep = 0; rep < (step == 0 ? 2 : 1); rep++, k++) {
            lq_tensor *x = lq_to_ctx_device(c, xh);
            lq_tensor *out = x ? lq_matmul_t(c, x, w, false, true) : NULL;
            y[k] = malloc(sizeof(float) * M * N);
            if (!out || lq_tensor_download(c, out, y[k]) != LQ_OK) fail_msg("matmul: %s", lq_ctx_error(c)->msg);
        }
    }
    lq_tensor *x = lq_to_ctx_device(fresh, xh); /* the reference: W2 seen first */
    lq_tensor *out = x ? lq_matmul_t(fresh, x, w, false, true) : NULL;
    y[3] = malloc(sizeof(float) * M * N);
    if (!out || lq_tensor_download(fresh, out, y[3]) != LQ_OK) fail_msg("matmul: %s", lq_ctx_error(fresh)->msg);
    int same01 = memcmp(y[0], y[1], sizeof(float) * M * N) == 0;
    int same23 = memcmp(y[2], y[3], sizeof(float) * M * N) == 0;
    double d = 0, s = 0;
    for (int i = 0; i < M * N; i++) d += fabs((double)y[2][i] - y[0][i]), s += fabs(y[0][i]);
    print_message("  frozen bf16: in-step repeat %s, after the reset %s the fresh context's; the new W moved y by"
                  " %.3g of |y|\n",
                  same01 ? "equal" : "DIFFERENT", same23 ? "equal to" : "DIFFERENT from", d / s);
    for (int i = 0; i < 4; i++) free(y[i]);
    free(w2);
    lq_tensor_free(w);
    lq_tensor_free(xh);
    lq_ctx_free(ctx);
    lq_ctx_free(fresh);
    if (!same01) fail_msg("the same product twice in one step differs");
    if (!same23) fail_msg("after the step reset the product still reads the old weight's bf16 copy");
    if (!(d > 0.1 * s)) fail_msg("the new weight did not change the product (%.3g of |y|)", d / s);
}

int main(void) {
    int rc = 0;
    if (!lq_cuda_test_should_run(&rc)) return rc;
    g_seed = lq_cuda_test_seed("test_cuda_step");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_step_fp32),
        cmocka_unit_test(test_step_fp32_checkpoint),
        cmocka_unit_test(test_step_fp32_release),
        cmocka_unit_test(test_step_fp32_checkpoint_release),
        cmocka_unit_test(test_step_bf16_loss),
        cmocka_unit_test(test_release_same_tf32),
        cmocka_unit_test(test_release_same_bf16),
        cmocka_unit_test(test_checkpoint_same_bf16),
        cmocka_unit_test(test_side_stream_same_bf16),
        cmocka_unit_test(test_lora_fuse_off_bf16),
        cmocka_unit_test(test_frozen_bf16_per_step),
    };
    return cmocka_run_group_tests_name("test_cuda_step", tests, NULL, NULL);
}
