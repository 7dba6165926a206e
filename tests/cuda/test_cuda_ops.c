/* tests/cuda/test_cuda_ops.c: every op of the op table on the GPU against the CPU reference, on
 * fresh random cases (each op's gradcheck case, lq_op_def.gc_make). (The dequant kernels have
 * their own suite, test_cuda_dequant.c.)
 *
 * Per op and case: the case is built on a CPU context, its inputs copied to a CUDA context made
 * with poison = true (every new device activation is NaN until written); the op runs on both, one
 * random upstream gradient goes back through both (lq_backward_from), and the output and every
 * input gradient are compared by normalized MSE, sum((gpu - cpu)^2) / sum(cpu^2), against the
 * op's threshold (ops_harness.h). NaN / Inf anywhere fails. An op without a CUDA kernel fails, never skips.
 * The gemm-based ops run again in the tf32 and bf16 modes, checked elementwise against the
 * rounding-error bound of a product of rounded operands (matmul_mode: the magnitude reference);
 * so do lora_linear cases with an NF4 / FP4 base (the training configuration, bnb4_mode) and the
 * fused NF4 / FP4 linear (LOQUAT_FUSED_QLINEAR=1).
 * Seeds come from the clock each run (printed); LOQUAT_CUDA_SEED=<n> replays a run. */
#include "tests/cuda/ops_harness.h"

/* The state of an op's test: its index in the op table. */
static int g_op_index[64];

static void test_op(void **state) {
    int op = *(const int *)*state;
    const lq_op_def *def = lq_op_table[op];
    assert_non_null(g_cpu);
    assert_non_null(g_cu);
    if (!lq_op_forward_for(g_cu, def) || !lq_op_backward_for(g_cu, def))
        fail_msg("%s: no CUDA kernel%s", def->name, lq_op_forward_for(g_cu, def) ? " (backward)" : "");
    const op_bound *b = bound_of(def->name);
    if (!b) fail_msg("%s: no nmse bound in k_bounds (add one with its reason)", def->name);
    if (!def->gc_make) fail_msg("%s: no gradcheck case to run", def->name);
    int fails = 0;
    for (int k = 0; k < N_CASES; k++)
        fails += run_case(g_cpu, g_cu, op, k, case_seed(op, k, 0), b->nmse, 0.0, "fp32", NULL);
    if (fails) fail_msg("%s: %d comparison(s) failed (bound %.0e: %s)", def->name, fails, b->nmse, b->why);
}

/* Every op again, its inputs' gradients fresh pool blocks (g_fresh_grads, ops_harness.h): the
 * trainer's setting, where swiglu, rope, the QLoRA linear, add / sub, attention and cross-entropy
 * assign their gradients instead of zeroing and adding. The same bounds as test_op. */
static void test_all_fresh_grads(void **state) {
    (void)state;
    int fails = 0, n_ops = lq_op_count();
    g_fresh_grads = true;
    for (int op = 0; op < n_ops; op++) {
        const lq_op_def *def = lq_op_table[op];
        const op_bound *b = bound_of(def->name);
        if (!b || !def->gc_make || !lq_op_backward_for(g_cu, def)) continue; /* test_op fails these */
        int f = 0;
        for (int k = 0; k < N_CASES; k++)
            f += run_case(g_cpu, g_cu, op, k, case_seed(op, k, 9), b->nmse, 0.0, "fp32, fresh gradients", NULL);
        if (f) print_error("%s with fresh gradients: %d comparison(s) failed (bound %.0e)\n", def->name, f, b->nmse);
        fails += f;
    }
    g_fresh_grads = false;
    if (fails) fail_msg("%d comparison(s) failed with fresh gradient blocks", fails);
}

/* The gemm-based ops again with tensor-core inputs, each element checked against the standard
 * bound of a product of rounded operands: |gpu - cpu| <= tol * M (+ 1e-30), M the magnitude
 * reference (magnitude_run: the same sums over absolute values). An nmse relative to ||cpu||^2 is
 * the wrong yardstick here: where a sum nearly cancels (lora's dA with r = 1 is one scalar
 * dY . B times x), a per-operand rounding of u gives an error ~ u sum |terms| on a small result
 * (a replayed bf16 case: nmse 2e-3, yet within this bound). tol is the longest chain of operand
 * roundings times the unit roundoff, times 2: every product here has two rounded operands, and
 * lora's intermediates u = s x A^T and du = s dY B are rounded once more when they enter the next
 * product (y += u B^T, dB += dY^T u, dA += du^T x, dx += du A), after carrying the 2u of their own
 * operands: 4 roundings of u relative to M. fp32 accumulation (K ~ 2^6 terms: ~2^-18) and second
 * order terms are far below that. A wrong index, a missed term or a missing scale is an error of
 * the order of a whole term: a ratio >> 1.
 *   bf16: round to nearest even (__float2bfloat16_rn, lq_cuda_dequant_bf16), u = 2^-9:
 *         4 u = 2^-7, times 2: tol = 4 * 2^-8.
 *   tf32: cuBLAS's FAST_TF32 mode does not promise round to nearest when an fp32 operand becomes
 *         tf32 (tensor cores fed fp32 bits may just drop the low 13: truncation, u = 2^-10):
 *         4 u = 8 * 2^-11 then, a factor 2 over round to nearest (u = 2^-11): tol = 8 * 2^-11
 *         (not 4 * 2^-11, which truncation could reach with no margin at all).
 * A case without a magnitude reference (magnitude_run refuses: counted and printed) is held to
 * the old nmse bound instead, `fallback` (tf32 1e-5, bf16 1e-3). TOL_BF16 and TOL_TF32 are in
 * ops_harness.h. */

static void matmul_mode(lq_cuda_math math, double tol, double fallback, const char *mode, int mode_id,
                        const char *const *ops, size_t n_ops) {
    lq_ctx *cu = lq_cuda_test_ctx(LQ_DEVICE_CUDA, math);
    assert_non_null(cu);
    int fails = 0;
    g_mag_cases = g_mag_fallbacks = 0;
    for (size_t j = 0; j < n_ops; j++) {
        int op = lq_op_find(ops[j]);
        if (op < 0) {
            print_error("%s: not in the op table\n", ops[j]);
            fails++;
            continue;
        }
        if (!lq_op_forward_for(cu, lq_op_table[op]) || !lq_op_backward_for(cu, lq_op_table[op])) {
            print_error("%s: no CUDA kernel\n", ops[j]);
            fails++;
            continue;
        }
        for (int k = 0; k < N_CASES; k++)
            fails += run_case(g_cpu, cu, op, k, case_seed(op, k, mode_id), fallback, tol, mode, NULL);
    }
    lq_ctx_free(cu);
    print_message("%s mode: %d case(s), %d held to the nmse bound %.0e for want of a magnitude reference\n", mode,
                  g_mag_cases, g_mag_fallbacks, fallback);
    if (fails) fail_msg("%s mode: %d comparison(s) failed (tol %.3g x magnitude)", mode, fails, tol);
}

static const char *const gemm_ops[] = {"matmul", "qmatmul", "lora_linear"};

static void test_matmul_tf32(void **state) {
    (void)state;
    matmul_mode(LQ_CUDA_MATH_TF32, TOL_TF32, 1e-5, "tf32", 1, gemm_ops, 3);
}

static void test_matmul_bf16(void **state) {
    (void)state;
    matmul_mode(LQ_CUDA_MATH_BF16, TOL_BF16, 1e-3, "bf16", 2, gemm_ops, 3);
}


/* A seed from which qmatmul's gc_make draws an NF4 or FP4 weight (2 of its 8 formats), the first
 * after seed0; 0 if 200 draws give none (they do not: 200 misses have probability (3/4)^200). */
static uint64_t bnb4_case_seed(int op, uint64_t seed0) {
    for (uint64_t j = 0; j < 200; j++) {
        lq_ctx_clear_error(g_cpu);
        lq_ctx_step_reset(g_cpu);
        lq_rng rng;
        lq_rng_seed(&rng, seed0 + j);
        lq_gc_case c;
        memset(&c, 0, sizeof c);
        if (lq_op_table[op]->gc_make(g_cpu, &rng, &c) != LQ_OK || c.n_in < 2 || !c.in[1]) continue;
        if (c.in[1]->dtype == LQ_DTYPE_NF4 || c.in[1]->dtype == LQ_DTYPE_FP4) return seed0 + j;
    }
    return 0;
}

/* N_CASES cases of op (qmatmul or lora_linear) whose weight is NF4 or FP4, in the given math,
 * each element within tol times its magnitude reference (matmul_mode's bound). */
static void bnb4_mode(const char *name, lq_cuda_math math, double tol, double fallback, const char *mode, int mode_id) {
    lq_ctx *cu = lq_cuda_test_ctx(LQ_DEVICE_CUDA, math);
    assert_non_null(cu);
    int op = lq_op_find(name), fails = 0;
    assert_true(op >= 0);
    g_mag_cases = g_mag_fallbacks = 0;
    for (int k = 0; k < N_CASES; k++) {
        uint64_t seed = bnb4_case_seed(op, case_seed(op, k, mode_id));
        if (!seed) {
            print_error("%s [%s] case %d: no NF4 / FP4 draw\n", name, mode, k);
            fails++;
            continue;
        }
        fails += run_case(g_cpu, cu, op, k, seed, fallback, tol, mode, NULL);
    }
    lq_ctx_free(cu);
    print_message("%s %s: %d case(s), %d held to the nmse bound %.0e for want of a magnitude reference\n", name, mode,
                  g_mag_cases, g_mag_fallbacks, fallback);
    if (fails) fail_msg("%s %s: %d comparison(s) failed (tol %.3g x magnitude)", name, mode, fails, tol);
}

/* The QLoRA linear as training runs it: an NF4 / FP4 base. bf16 math takes cuda_qlinear.cu's bf16
 * path (each operand converted once; without dropout the adapter's dX inside the base product). */
static void test_lora_bnb4_tf32(void **state) {
    (void)state;
    bnb4_mode("lora_linear", LQ_CUDA_MATH_TF32, TOL_TF32, 1e-5, "tf32 nf4/fp4", 4);
}

static void test_lora_bnb4_bf16(void **state) {
    (void)state;
    bnb4_mode("lora_linear", LQ_CUDA_MATH_BF16, TOL_BF16, 1e-3, "bf16 nf4/fp4", 5);
}

/* The fused NF4 / FP4 linear (cuda_qlinear_fused.cu, LOQUAT_FUSED_QLINEAR=1 in bf16 math: W's
 * tile dequantized to bf16 in shared memory, WMMA products with fp32 accumulation, forward and
 * dX) on qmatmul cases with an NF4 / FP4 weight (small: partial 64 x 64 tiles), against the bf16
 * mode's bound: its operands are rounded to bf16 once, as there. */
static void test_qlinear_fused_bf16(void **state) {
    (void)state;
    const char *prev = getenv("LOQUAT_FUSED_QLINEAR");
    char *keep = prev ? strdup(prev) : NULL;
    setenv("LOQUAT_FUSED_QLINEAR", "1", 1);
    bnb4_mode("qmatmul", LQ_CUDA_MATH_BF16, TOL_BF16, 1e-3, "bf16 fused", 3);
    if (keep) setenv("LOQUAT_FUSED_QLINEAR", keep, 1);
    else unsetenv("LOQUAT_FUSED_QLINEAR");
    free(keep);
}

int main(void) {
    int rc = 0;
    if (!lq_cuda_test_should_run(&rc)) return rc;
    g_seed = lq_cuda_test_seed("test_cuda_ops");
    int n_ops = lq_op_count();
    if (n_ops > (int)(sizeof g_op_index / sizeof g_op_index[0])) {
        printf("test_cuda_ops: %d ops, room for %d\n", n_ops, (int)(sizeof g_op_index / sizeof g_op_index[0]));
        return 1;
    }
    struct CMUnitTest tests[64 + 6];
    int n = 0;
    for (int i = 0; i < n_ops; i++) {
        g_op_index[i] = i;
        tests[n++] = (struct CMUnitTest){lq_op_name(i), test_op, NULL, NULL, &g_op_index[i]};
    }
    tests[n++] = (struct CMUnitTest){"all_fresh_grads", test_all_fresh_grads, NULL, NULL, NULL};
    tests[n++] = (struct CMUnitTest){"matmul_tf32", test_matmul_tf32, NULL, NULL, NULL};
    tests[n++] = (struct CMUnitTest){"matmul_bf16", test_matmul_bf16, NULL, NULL, NULL};
    tests[n++] = (struct CMUnitTest){"lora_bnb4_tf32", test_lora_bnb4_tf32, NULL, NULL, NULL};
    tests[n++] = (struct CMUnitTest){"lora_bnb4_bf16", test_lora_bnb4_bf16, NULL, NULL, NULL};
    tests[n++] = (struct CMUnitTest){"qlinear_fused_bf16", test_qlinear_fused_bf16, NULL, NULL, NULL};
    return _cmocka_run_group_tests("test_cuda_ops", tests, (size_t)n, group_setup, group_teardown);
}
