/* tests/cuda/test_cuda_flash.c: the flash attention kernels (autograd/ops/cuda_attention_flash*.cu,
 * LOQUAT_FLASH_ATTN=1 in bf16 math) against the CPU op (op_attention.c, fp32) on fresh random
 * inputs: the output and the gradients of q, k and v from one random upstream gradient, over
 * causal / not, doc ids, GQA groups 1 / 2 / 4, T off the 64-row tiles (1, 17, 70, 130), D 16 / 32 /
 * 64, B 1-2; the dK / dV kernel both per query head (partials summed per group) and per kv group
 * (LOQUAT_FLASH_KV_SPLIT=1 / 0). One more pass runs the flash forward and the cuBLAS backward
 * (cuda_attention.cu) on its L. A last one runs both backwards with fresh (unzeroed, poisoned)
 * gradient blocks for q, k and v, which they assign instead of adding into (g_fresh). Every case
 * first asserts that the node took the flash path, so a selection that silently fell back cannot
 * pass here. Outputs are NaN-poisoned (poison = true).
 *
 * The bound. Every operand of the flash products is rounded to bf16 (u = 2^-9) and accumulated in
 * fp32, so each result carries errors of order u times the sum of the absolute values of its terms,
 * not u times the result: dq and dk nearly cancel where a row sees few keys (exactly 0 in fp32 for a
 * row that sees one key), and the scores' rounding (~u |q| |k| per term) moves P relatively. Each
 * quantity is therefore compared with a magnitude reference M computed in double from the inputs
 * (attn_magnitude.h: the same sums over absolute values of the terms), test_cuda_ops' matmul_mode
 * idea: |gpu - cpu| <= ELEM_TOL M elementwise, and sum((gpu - cpu)^2) / sum(M^2) <=
 * NMSE_BOUND. Observed on the emulator over several seeds (both worsts printed each run): worst
 * |gpu - cpu| ~0.015 M, worst nmse ~2e-5; ELEM_TOL = 0.04 and NMSE_BOUND = 1e-4 leave ~2.5x and
 * ~5x (a rigorous worst-case bound on the score rounding would be far looser). The planted bugs
 * (a mask one key off, no rescale of O, a wrong Dv in dS, a causal start half a step late, a wrong
 * doc test) gave elementwise ratios (at 0.03 M) of 5 to 3000 and nmse 2e-3 to 0.9.
 * Seeds come from the clock each run (printed); LOQUAT_CUDA_SEED=<n> replays a run. */
#include <stdlib.h>
#include <string.h>

#include "autograd/cuda_impl.h"
#include "core/cuda.h"
#include "tests/cuda/attn_magnitude.h"
#include "tests/cuda/cuda_testutil.h"
#include "tests/testutil.h"

#define NMSE_BOUND 1e-4
#define ELEM_TOL 0.04

static uint64_t g_seed;
static lq_ctx *g_cpu, *g_cu; /* the CPU reference and a CUDA context in bf16 mode */
/* q, k and v through a scale by 1 (exact) in a context that releases gradients, as the trainer
 * runs: their gradients are then fresh pool blocks (NaN-poisoned, not zeroed), which the backward
 * kernels assign instead of adding into */
static bool g_fresh;
static double g_worst_nmse, g_worst_elem;

typedef struct flash_case {
    int64_t B, T, Hq, Hkv, D;
    bool causal, doc;
} flash_case;

/* T off the tiles, every D, groups 1 / 2 / 4, every mask; small (the emulator runs WMMA per lane) */
static const flash_case k_cases[] = {
    {1, 1, 2, 1, 16, true, false},   {2, 17, 2, 2, 32, false, false}, {1, 70, 4, 1, 16, true, true},
    {2, 70, 2, 1, 64, false, true},  {1, 130, 4, 2, 32, true, false}, {1, 130, 1, 1, 64, false, false},
    {2, 33, 4, 4, 16, true, true},   {1, 17, 4, 1, 64, true, false},  {1, 100, 2, 2, 16, true, true},
};
#define N_CASES ((int)(sizeof k_cases / sizeof k_cases[0]))

static const char *ctx_msg(lq_ctx *ctx) {
    const lq_err *e = lq_ctx_error(ctx);
    return e && e->status != LQ_OK ? e->msg : "(no error recorded)";
}

/* t's values on the host (malloc'd), zeros for a NULL t (an input that got no gradient) */
static float *fetch(lq_ctx *ctx, const lq_tensor *t, int64_t n) {
    float *h = calloc((size_t)(n > 0 ? n : 1), sizeof *h);
    if (h && t && lq_tensor_download(ctx, t, h) != LQ_OK) {
        free(h);
        return NULL;
    }
    return h;
}

/* sum((gpu - cpu)^2) / sum(M^2) <= NMSE_BOUND and |gpu - cpu| <= ELEM_TOL M + tiny elementwise;
 * prints and returns 1 on failure */
static int compare(const char *tag, const char *what, const float *gpu, const float *cpu, const double *mag,
                   int64_t n) {
    double num = 0.0, den = 0.0, worst = -1.0;
    int64_t wi = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(gpu[i]) || !isfinite(cpu[i])) {
            print_error("%s: %s: element %lld is %g on the GPU, %g on the CPU (NaN-poisoned = never written?)\n", tag,
                        what, (long long)i, (double)gpu[i], (double)cpu[i]);
            return 1;
        }
        double d = fabs((double)gpu[i] - (double)cpu[i]), r = d / (ELEM_TOL * mag[i] + 1e-30);
        num += d * d;
        den += mag[i] * mag[i];
        if (r > worst) worst = r, wi = i;
    }
    double e = num / (den > 1e-30 ? den : 1e-30);
    if (e > g_worst_nmse) g_worst_nmse = e;
    if (worst > g_worst_elem) g_worst_elem = worst;
    int fails = 0;
    if (!(e <= NMSE_BOUND)) {
        print_error("%s: %s: nmse (over the magnitude) %.3g > %.3g over %lld elements\n", tag, what, e, NMSE_BOUND,
                    (long long)n);
        fails = 1;
    }
    if (!(worst <= 1.0)) {
        print_error("%s: %s: element %lld: |%.7g - %.7g| > %.3g x magnitude %.3g (ratio %.3g)\n", tag, what,
                    (long long)wi, (double)gpu[wi], (double)cpu[wi], ELEM_TOL, mag[wi], worst);
        fails = 1;
    }
    return fails;
}

static void flash_env(bool on) {
    if (on) setenv("LOQUAT_FLASH_ATTN", "1", 1);
    else unsetenv("LOQUAT_FLASH_ATTN");
}

/* One case; flash_bwd false: the flash forward, then the cuBLAS backward. Returns failures. */
static int run_case(const flash_case *fc, int k, bool flash_bwd) {
    lq_ctx *cpu = g_cpu, *cu = g_cu;
    lq_ctx_clear_error(cpu);
    lq_ctx_clear_error(cu);
    lq_ctx_step_reset(cpu);
    lq_ctx_step_reset(cu);
    lq_ctx_set_grad(cpu, true);
    lq_ctx_set_grad(cu, true);
    uint64_t seed = lq_mix64(g_seed * 1000003u + (uint64_t)k * 131u + (flash_bwd ? 0u : 7u));
    lq_rng rng;
    lq_rng_seed(&rng, seed);
    char tag[240];
    snprintf(tag, sizeof tag, "case %d%s%s (B %lld T %lld Hq %lld Hkv %lld D %lld causal %d doc %d, seed %llu)", k,
             flash_bwd ? "" : " cuBLAS backward", g_fresh ? " fresh gradients" : "", (long long)fc->B,
             (long long)fc->T, (long long)fc->Hq, (long long)fc->Hkv, (long long)fc->D, fc->causal, fc->doc,
             (unsigned long long)seed);
    int64_t qs[4] = {fc->B, fc->T, fc->Hq, fc->D}, ks[4] = {fc->B, fc->T, fc->Hkv, fc->D};
    lq_tensor *q = lq_new_leaf(cpu, 4, qs, true), *kk = lq_new_leaf(cpu, 4, ks, true);
    lq_tensor *v = lq_new_leaf(cpu, 4, ks, true);
    lq_tensor *doc = fc->doc ? lq_new(cpu, LQ_DTYPE_I32, 2, (int64_t[]){fc->B, fc->T}) : NULL;
    lq_tensor *r = lq_new(cpu, LQ_DTYPE_F32, 4, qs);
    if (!q || !kk || !v || !r || (fc->doc && !doc)) {
        print_error("%s: inputs: %s\n", tag, ctx_msg(cpu));
        return 1;
    }
    lq_fill_uniform(q, &rng, -2.0f, 2.0f);
    lq_fill_uniform(kk, &rng, -2.0f, 2.0f);
    lq_fill_uniform(v, &rng, -1.0f, 1.0f);
    lq_fill_normal(r, &rng, 1.0f);
    if (doc) { /* packed documents: nondecreasing ids, a new one with probability 1/8 per token */
        int32_t *d = doc->data;
        for (int64_t b = 0; b < fc->B; b++)
            for (int64_t t = 0; t < fc->T; t++)
                d[b * fc->T + t] = t == 0 ? 0 : d[b * fc->T + t - 1] + (lq_rng_int(&rng, 0, 7) == 0);
    }
    lq_attn_params p = {0.0f, fc->causal, doc}; /* scale 1 / sqrt(D) */
    lq_tensor *yc = lq_attention(cpu, q, kk, v, &p);
    if (!yc || lq_backward_from(cpu, yc, r) != LQ_OK) {
        print_error("%s: CPU: %s\n", tag, ctx_msg(cpu));
        return 1;
    }
    lq_tensor *qg = lq_to_ctx_device(cu, q), *kg = lq_to_ctx_device(cu, kk), *vg = lq_to_ctx_device(cu, v);
    lq_tensor *rg = lq_to_ctx_device(cu, r), *dg = doc ? lq_to_ctx_device(cu, doc) : NULL;
    if (!qg || !kg || !vg || !rg || (doc && !dg)) {
        print_error("%s: inputs to the GPU: %s\n", tag, ctx_msg(cu));
        return 1;
    }
    lq_attn_params pg = {0.0f, fc->causal, dg}; /* the doc ids stay a host tensor, as the op takes them */
    lq_tensor *qa = qg, *ka = kg, *va = vg;
    lq_ctx_set_release_grads(cu, g_fresh);
    if (g_fresh &&
        (!(qa = lq_scale(cu, qg, 1.0f)) || !(ka = lq_scale(cu, kg, 1.0f)) || !(va = lq_scale(cu, vg, 1.0f)))) {
        print_error("%s: scale: %s\n", tag, ctx_msg(cu));
        lq_ctx_set_release_grads(cu, false);
        return 1;
    }
    flash_env(true);
    lq_tensor *yg = lq_attention(cu, qa, ka, va, &pg);
    if (!yg || !yg->node || !lq_cuda_flash_attn_wanted(cu, yg->node)) {
        print_error("%s: the flash path was not taken: %s\n", tag,
                    yg ? "lq_cuda_flash_attn_wanted is false" : ctx_msg(cu));
        flash_env(false);
        return 1;
    }
    if (!flash_bwd) flash_env(false);
    lq_status s = lq_backward_from(cu, yg, rg);
    flash_env(false);
    lq_ctx_set_release_grads(cu, false);
    if (s != LQ_OK) {
        print_error("%s: GPU backward: %s\n", tag, ctx_msg(cu));
        return 1;
    }
    int fails = 0;
    int64_t nq = lq_numel(q), nk = lq_numel(kk);
    attn_mags m;
    if (!attn_magnitudes(fc->B, fc->T, fc->Hq, fc->Hkv, fc->D, fc->causal, q->data, kk->data, v->data, r->data,
                         doc ? doc->data : NULL, 1.0f / sqrtf((float)fc->D), &m)) {
        print_error("%s: out of memory\n", tag);
        fails++;
    }
    const double *mg[4] = {m.o, m.dq, m.dk, m.dv};
    const lq_tensor *tc[4] = {yc, q->grad, kk->grad, v->grad}, *tg[4] = {yg, qg->grad, kg->grad, vg->grad};
    const int64_t nn[4] = {nq, nq, nk, nk};
    static const char *const what[4] = {"output", "dq", "dk", "dv"};
    for (int i = 0; i < 4; i++) {
        float *hc = fetch(cpu, tc[i], nn[i]), *hg = fetch(cu, tg[i], nn[i]);
        if (fails) {
        } else if (!hc || !hg || !tc[i] || !tg[i]) {
            print_error("%s: %s: reading back failed or no gradient (%s)\n", tag, what[i], ctx_msg(cu));
            fails++;
        } else {
            fails += compare(tag, what[i], hg, hc, mg[i], nn[i]);
        }
        free(hc);
        free(hg);
    }
    attn_mags_free(&m);
    return fails;
}

static void run_all(bool flash_bwd) {
    assert_non_null(g_cpu);
    assert_non_null(g_cu);
    g_worst_nmse = g_worst_elem = 0.0;
    int fails = 0;
    for (int k = 0; k < N_CASES; k++) fails += run_case(&k_cases[k], k, flash_bwd);
    print_message("flash %s backward: %d cases, worst nmse %.3g (bound %.0e), worst |gpu - cpu| / (%.2g M) %.3g\n",
                  flash_bwd ? "forward and" : "forward, cuBLAS", N_CASES, g_worst_nmse, NMSE_BOUND, ELEM_TOL,
                  g_worst_elem);
    if (fails) fail_msg("%d comparison(s) failed", fails);
}

/* The dK / dV kernel per query head, its partials summed per kv group (what the heuristic picks at
 * these sizes), then per whole kv group (what it picks when the grid is large): the same bound. */
static void test_flash(void **state) {
    (void)state;
    setenv("LOQUAT_FLASH_KV_SPLIT", "1", 1);
    run_all(true);
    unsetenv("LOQUAT_FLASH_KV_SPLIT");
}

static void test_flash_kv_grouped(void **state) {
    (void)state;
    setenv("LOQUAT_FLASH_KV_SPLIT", "0", 1);
    run_all(true);
    unsetenv("LOQUAT_FLASH_KV_SPLIT");
}

static void test_flash_fwd_cublas_bwd(void **state) {
    (void)state;
    run_all(false);
}

/* Both backwards (the flash one with the dK / dV partials, then grouped; the cuBLAS one) into
 * fresh gradient blocks: an element they skip stays NaN */
static void test_flash_fresh_grads(void **state) {
    (void)state;
    g_fresh = true;
    setenv("LOQUAT_FLASH_KV_SPLIT", "1", 1);
    run_all(true);
    setenv("LOQUAT_FLASH_KV_SPLIT", "0", 1);
    run_all(true);
    unsetenv("LOQUAT_FLASH_KV_SPLIT");
    run_all(false);
    g_fresh = false;
}

static int group_setup(void **state) {
    (void)state;
    g_cpu = lq_cuda_test_ctx(LQ_DEVICE_CPU, LQ_CUDA_MATH_FP32);
    g_cu = lq_cuda_test_ctx(LQ_DEVICE_CUDA, LQ_CUDA_MATH_BF16);
    return g_cpu && g_cu ? 0 : -1;
}

static int group_teardown(void **state) {
    (void)state;
    lq_ctx_free(g_cu);
    lq_ctx_free(g_cpu);
    return 0;
}

int main(void) {
    int rc = 0;
    if (!lq_cuda_test_should_run(&rc)) return rc;
    g_seed = lq_cuda_test_seed("test_cuda_flash");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flash),
        cmocka_unit_test(test_flash_kv_grouped),
        cmocka_unit_test(test_flash_fwd_cublas_bwd),
        cmocka_unit_test(test_flash_fresh_grads),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
