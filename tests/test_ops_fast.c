/* tests/test_ops_fast.c: the vectorized / fused fast paths of ops give bit for bit what their scalar
 * definitions give (dropout's counter-hash mask, the same-shape add), on sizes with ragged tails and
 * on 1 and 2 threads. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/autograd.h"
#include "core/rng.h"
#include "testutil.h"

/* Bitwise equality, naming the first differing element. */
static void assert_same_bits(const float *a, const float *b, int64_t n, const char *what) {
    for (int64_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0) {
            fail_msg("%s: element %lld differs: %.9g vs %.9g (expected)", what, (long long)i, (double)a[i], (double)b[i]);
        }
}

/* lq_dropout's definition (autograd.h, op_dropout.c): element i of the call with stream s at seed
 * seed is kept iff lq_u01_from_bits(lq_hash3(seed, s, i)) >= p; kept elements become x / (1 - p).
 * The first random op of a context after lq_ctx_set_seed uses stream 0. Backward: dx += mask dy / q. */
static void check_dropout(int threads, int64_t rows, int64_t cols, float p) {
    lq_ctx *ctx = lq_test_ctx(threads);
    lq_ctx_set_training(ctx, true);
    lq_ctx_set_seed(ctx, 4242);
    int64_t sh[2] = {rows, cols}, n = rows * cols;
    lq_tensor *x = lq_new_leaf(ctx, 2, sh, true);
    lq_rng rng;
    lq_rng_seed(&rng, (uint64_t)n);
    lq_fill_uniform(x, &rng, -3, 3);
    ((float *)x->data)[0] = -0.0f; /* a negative zero in the input and in the gradient below */
    lq_tensor *y = lq_dropout(ctx, x, p);
    assert_ctx_ok(ctx);
    lq_tensor *gy = lq_new(ctx, LQ_DTYPE_F32, 2, sh);
    lq_fill_uniform(gy, &rng, -1, 1);
    ((float *)gy->data)[n - 1] = -0.0f;
    assert_int_equal(lq_backward_from(ctx, y, gy), LQ_OK);
    float *ey = malloc((size_t)n * sizeof(float)), *eg = malloc((size_t)n * sizeof(float));
    const float *xv = x->data, *gv = gy->data;
    float q = 1.0f - p;
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++) {
        bool k = lq_u01_from_bits(lq_hash3(4242, 0, (uint64_t)i)) >= p;
        kept += k;
        ey[i] = k ? xv[i] / q : 0.0f;
        eg[i] = 0.0f; /* the leaf's grad starts at zero */
        if (k) eg[i] += gv[i] / q;
    }
    char what[96];
    snprintf(what, sizeof what, "dropout forward (%lld x %lld, p %.2f, %d threads)", (long long)rows, (long long)cols,
             (double)p, threads);
    assert_same_bits(y->data, ey, n, what);
    snprintf(what, sizeof what, "dropout backward (%lld x %lld, p %.2f, %d threads)", (long long)rows, (long long)cols,
             (double)p, threads);
    assert_same_bits(x->grad->data, eg, n, what);
    /* the mask is a fair draw: kept fraction within 5 sigma of 1 - p */
    double sd = sqrt((double)n * p * q);
    assert_true(fabs((double)kept - (double)n * q) <= 5 * sd + 1);
    free(ey);
    free(eg);
    lq_ctx_free(ctx);
}

static void test_dropout_matches_definition(void **state) {
    (void)state;
    for (int t = 1; t <= 2; t++) {
        check_dropout(t, 3, 5, 0.3f);        /* tail only */
        check_dropout(t, 7, 9, 0.05f);       /* one block and a tail */
        check_dropout(t, 257, 301, 0.05f);   /* above the threading threshold, odd size */
        check_dropout(t, 256, 576, 0.5f);
    }
}

/* y = a + b on equal contiguous shapes and its backward (each grad += dy), against plain loops. */
static void test_add_same_shape(void **state) {
    (void)state;
    for (int t = 1; t <= 2; t++) {
        lq_ctx *ctx = lq_test_ctx(t);
        int64_t sh[2] = {301, 257}, n = sh[0] * sh[1];
        lq_tensor *a = lq_new_leaf(ctx, 2, sh, true), *b = lq_new_leaf(ctx, 2, sh, true);
        lq_rng rng;
        lq_rng_seed(&rng, 7);
        lq_fill_uniform(a, &rng, -2, 2);
        lq_fill_uniform(b, &rng, -2, 2);
        lq_tensor *y = lq_add(ctx, a, b);
        lq_tensor *gy = lq_new(ctx, LQ_DTYPE_F32, 2, sh);
        lq_fill_uniform(gy, &rng, -1, 1);
        assert_ctx_ok(ctx);
        assert_int_equal(lq_backward_from(ctx, y, gy), LQ_OK);
        float *e = malloc((size_t)n * sizeof(float));
        for (int64_t i = 0; i < n; i++) e[i] = ((float *)a->data)[i] + ((float *)b->data)[i];
        assert_same_bits(y->data, e, n, "add forward");
        for (int64_t i = 0; i < n; i++) e[i] = 0.0f + ((float *)gy->data)[i];
        assert_same_bits(a->grad->data, e, n, "add backward (a)");
        assert_same_bits(b->grad->data, e, n, "add backward (b)");
        free(e);
        lq_ctx_free(ctx);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dropout_matches_definition),
        cmocka_unit_test(test_add_same_shape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
