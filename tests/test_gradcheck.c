/* tests/test_gradcheck.c: every op in the op table against central finite differences, on
 * random shapes; and the checker itself must catch wrong backwards. */
#include "tests/testutil.h"

#include <stdio.h>
#include <stdlib.h>

#include "autograd/autograd_impl.h"

#define TRIALS 4         /* random cases per op */
#define TOLERANCE 1e-2   /* max |analytic - numeric| / max |numeric| */

static void test_every_op(void **state) {
    (void)state;
    lq_ctx *ctx = lq_test_ctx(2);
    int failures = 0;
    printf("%-12s %-12s %-8s  %s\n", "op", "max error", "checked", "worst case");
    for (int op = 0; op < lq_op_count(); op++) {
        double worst = 0;
        int64_t checked = 0;
        char worst_desc[256] = "";
        bool ok = true;
        for (int t = 0; t < TRIALS; t++) {
            lq_gc_result r;
            char desc[128];
            lq_status s = lq_gradcheck_op(ctx, op, (uint64_t)t + 1, &r, desc, sizeof desc);
            if (s != LQ_OK) {
                printf("%-12s FAILED: %s (case %s)\n", lq_op_name(op), lq_ctx_error(ctx)->msg, desc);
                lq_ctx_clear_error(ctx);
                ok = false;
                break;
            }
            checked += r.n_checked;
            if (r.error >= worst) {
                worst = r.error;
                snprintf(worst_desc, sizeof worst_desc, "%s; input %d [%lld] analytic %.6g numeric %.6g", desc,
                         r.worst_input, (long long)r.worst_index, r.analytic, r.numeric);
            }
        }
        if (ok) printf("%-12s %-12.3e %-8lld  %s\n", lq_op_name(op), worst, (long long)checked, worst_desc);
        if (!ok || !(worst < TOLERANCE)) {
            failures++;
            if (ok) printf("%-12s FAILED: error %.3e over tolerance %.0e\n", lq_op_name(op), worst, TOLERANCE);
        }
        lq_ctx_step_reset(ctx);
    }
    lq_ctx_free(ctx);
    assert_int_equal(failures, 0);
}

/* --- the checker catches a wrong backward -------------------------------------------------- */

static float g_factor; /* how wrong the fake op's backward is */

static lq_status fake_fwd(lq_ctx *ctx, lq_node *n) {
    (void)ctx;
    const float *x = n->in[0]->data;
    float *y = n->out->data;
    for (int64_t i = 0; i < lq_numel(n->out); i++) y[i] = x[i] * x[i] * x[i];
    return LQ_OK;
}

/* y = x^3, dx += 3 x^2 dy, scaled by g_factor to plant a bug. */
static lq_status fake_bwd(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    const float *x = n->in[0]->data, *gy = n->out->grad->data;
    for (int64_t i = 0; i < lq_numel(n->out); i++) gx[i] += g_factor * 3.0f * x[i] * x[i] * gy[i];
    return LQ_OK;
}

/* Overwrites instead of accumulating. */
static lq_status fake_bwd_assign(lq_ctx *ctx, lq_node *n) {
    float *gx;
    LQ_TRY(lq_grad_get(ctx, n->in[0], &gx));
    const float *x = n->in[0]->data, *gy = n->out->grad->data;
    for (int64_t i = 0; i < lq_numel(n->out); i++) gx[i] = 3.0f * x[i] * x[i] * gy[i];
    return LQ_OK;
}

static const lq_op_def fake_op = {"cube", fake_fwd, fake_bwd, NULL};
static const lq_op_def fake_op_assign = {"cube_assign", fake_fwd, fake_bwd_assign, NULL};

static lq_tensor *fake_call(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    lq_node *n = lq_node_begin(ctx, user, 1, in);
    if (!n || !lq_node_output(ctx, n, in[0]->ndim, in[0]->ne)) return NULL;
    /* feed it through another op so the cube's output is an intermediate */
    return lq_scale(ctx, lq_node_finish(ctx, n), 0.5f);
}

static double check_fake(const lq_op_def *op, float factor, lq_status *st) {
    lq_ctx *ctx = lq_test_ctx(1);
    lq_rng rng;
    lq_rng_seed(&rng, 7);
    lq_tensor *x = lq_gc_input(ctx, &rng, 2, (int64_t[]){3, 5}, -1, 1);
    g_factor = factor;
    lq_gc_result r;
    *st = lq_gradcheck(ctx, fake_call, (void *)op, 1, &x, NULL, &r);
    lq_ctx_free(ctx);
    return r.error;
}

static void test_checker_catches_bugs(void **state) {
    (void)state;
    lq_status st;
    double ok = check_fake(&fake_op, 1.0f, &st);
    assert_int_equal(st, LQ_OK);
    printf("correct backward: error %.3e\n", ok);
    assert_true(ok < TOLERANCE);
    double off = check_fake(&fake_op, 1.03f, &st); /* a 3% error */
    assert_int_equal(st, LQ_OK);
    printf("3%% wrong backward: error %.3e\n", off);
    assert_true(off > TOLERANCE);
    double sign = check_fake(&fake_op, -1.0f, &st);
    assert_true(sign > 1.0);
    check_fake(&fake_op_assign, 1.0f, &st);
    assert_int_equal(st, LQ_ERR_INTERNAL); /* the accumulation check fires */
}

/* Every registered op must have a gradcheck case; names must be unique. */
static void test_table_complete(void **state) {
    (void)state;
    assert_true(lq_op_count() > 0);
    for (int i = 0; i < lq_op_count(); i++) {
        assert_non_null(lq_op_table[i]->forward);
        assert_non_null(lq_op_table[i]->backward);
        assert_non_null(lq_op_table[i]->gc_make);
        assert_int_equal(lq_op_find(lq_op_name(i)), i);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_complete),
        cmocka_unit_test(test_checker_catches_bugs),
        cmocka_unit_test(test_every_op),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
