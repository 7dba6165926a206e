/* tests/test_transformer.c: a tiny Llama-style transformer (embedding, RMSNorm, RoPE, grouped-
 * query causal attention, SwiGLU MLP, tied LM head, cross-entropy) run forward and backward and
 * gradchecked as a whole, plain and with the block checkpointed. */
#include "tests/testutil.h"

#include "autograd/autograd_impl.h"

#include <stdio.h>
#include <string.h>

enum { B = 2, T = 5, V = 7, C = 8, HQ = 2, HKV = 1, HD = 4, FF = 12 };

/* Inputs of the whole model, in gradcheck order. */
enum { P_EMB, P_N1, P_WQ, P_WK, P_WV, P_WO, P_N2, P_WG, P_WU, P_WD, P_NF, N_P };

typedef struct model_in {
    lq_tensor *ids, *targets, *pos;
    bool checkpoint;
    bool dropout;
} model_in;

/* One decoder block on h (B, T, C); in[] holds the parameters. */
static lq_tensor *block(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const model_in *m = user;
    lq_tensor *h = in[N_P]; /* the block input rides after the parameters */
    lq_tensor *x = lq_rmsnorm(ctx, h, in[P_N1], 1e-5f);
    lq_tensor *q = lq_reshape(ctx, lq_matmul_t(ctx, x, in[P_WQ], false, true), 4, (int64_t[]){B, T, HQ, HD});
    lq_tensor *k = lq_reshape(ctx, lq_matmul_t(ctx, x, in[P_WK], false, true), 4, (int64_t[]){B, T, HKV, HD});
    lq_tensor *v = lq_reshape(ctx, lq_matmul_t(ctx, x, in[P_WV], false, true), 4, (int64_t[]){B, T, HKV, HD});
    lq_rope_params rp = {.layout = LQ_ROPE_HALF, .theta = 10000.0f};
    q = lq_rope(ctx, q, m->pos, &rp);
    k = lq_rope(ctx, k, m->pos, &rp);
    lq_attn_params ap = {.causal = true};
    lq_tensor *a = lq_reshape(ctx, lq_attention(ctx, q, k, v, &ap), 3, (int64_t[]){B, T, HQ * HD});
    lq_tensor *o = lq_matmul_t(ctx, a, in[P_WO], false, true);
    if (m->dropout) o = lq_dropout(ctx, o, 0.25f);
    h = lq_add(ctx, h, o);
    x = lq_rmsnorm(ctx, h, in[P_N2], 1e-5f);
    lq_tensor *g = lq_matmul_t(ctx, x, in[P_WG], false, true);
    lq_tensor *u = lq_matmul_t(ctx, x, in[P_WU], false, true);
    return lq_add(ctx, h, lq_matmul_t(ctx, lq_swiglu(ctx, g, u), in[P_WD], false, true));
}

static lq_tensor *model(lq_ctx *ctx, lq_tensor *const *in, int n_in, void *user) {
    (void)n_in;
    const model_in *m = user;
    if (m->dropout) lq_ctx_set_seed(ctx, 99); /* the same masks on every gradcheck evaluation */
    lq_tensor *args[N_P + 1];
    memcpy(args, in, N_P * sizeof *args);
    args[N_P] = lq_embedding(ctx, in[P_EMB], m->ids);
    lq_tensor *h = m->checkpoint ? lq_checkpoint(ctx, block, (void *)m, N_P + 1, args) : block(ctx, args, N_P + 1, (void *)m);
    h = lq_rmsnorm(ctx, h, in[P_NF], 1e-5f);
    lq_tensor *logits = lq_matmul_t(ctx, h, in[P_EMB], false, true); /* tied LM head */
    return lq_cross_entropy(ctx, logits, m->targets, LQ_IGNORE_INDEX, LQ_REDUCE_MEAN);
}

static void make_inputs(lq_ctx *ctx, lq_tensor **p, model_in *m) {
    lq_rng rng;
    lq_rng_seed(&rng, 2026);
    int64_t shapes[N_P][2] = {{V, C}, {C, 0}, {HQ * HD, C}, {HKV * HD, C}, {HKV * HD, C}, {C, HQ * HD},
                              {C, 0}, {FF, C}, {FF, C}, {C, FF}, {C, 0}};
    for (int i = 0; i < N_P; i++) {
        bool norm = shapes[i][1] == 0;
        p[i] = lq_new_leaf(ctx, norm ? 1 : 2, shapes[i], true);
        if (norm) lq_fill_uniform(p[i], &rng, 0.8f, 1.2f);
        else lq_fill_normal(p[i], &rng, 0.5f);
    }
    m->ids = lq_gc_ids(ctx, &rng, 2, (int64_t[]){B, T}, 0, V - 1);
    m->targets = lq_gc_ids(ctx, &rng, 2, (int64_t[]){B, T}, 0, V - 1);
    ((int32_t *)m->targets->data)[3] = LQ_IGNORE_INDEX;
    m->pos = lq_new(ctx, LQ_DTYPE_I32, 1, (int64_t[]){T});
    for (int t = 0; t < T; t++) ((int32_t *)m->pos->data)[t] = t;
    assert_ctx_ok(ctx);
}

static void check(bool checkpoint, bool dropout) {
    lq_ctx *ctx = lq_test_ctx(2);
    lq_ctx_set_training(ctx, dropout);
    lq_tensor *p[N_P];
    model_in m = {.checkpoint = checkpoint, .dropout = dropout};
    make_inputs(ctx, p, &m);
    /* forward + backward once, for the loss value */
    lq_ctx_mark mk = lq_ctx_get_mark(ctx);
    lq_tensor *loss = model(ctx, p, N_P, &m);
    assert_ctx_ok(ctx);
    assert_non_null(loss);
    float l0 = *(float *)loss->data;
    assert_int_equal(lq_backward(ctx, loss), LQ_OK);
    for (int i = 0; i < N_P; i++) assert_non_null(p[i]->grad); /* every parameter got a gradient */
    for (int i = 0; i < N_P; i++) p[i]->grad = NULL;
    lq_ctx_reset_to(ctx, mk);
    lq_gc_result r;
    lq_gc_opts o = {.step = 1e-2f, .seed = 5};
    assert_int_equal(lq_gradcheck(ctx, model, &m, N_P, p, &o, &r), LQ_OK);
    printf("tiny transformer (checkpoint %d, dropout %d): loss %.4f, %lld elements checked, max error %.3e "
           "(input %d [%lld]: analytic %.6g numeric %.6g)\n",
           checkpoint, dropout, l0, (long long)r.n_checked, r.error, r.worst_input, (long long)r.worst_index,
           r.analytic, r.numeric);
    assert_true(r.error < 1e-2);
    assert_ctx_ok(ctx);
    lq_ctx_free(ctx);
}

static void test_block_gradcheck(void **state) {
    (void)state;
    check(false, false);
}

static void test_block_gradcheck_checkpointed(void **state) {
    (void)state;
    check(true, false);
}

static void test_block_gradcheck_dropout_checkpointed(void **state) {
    (void)state;
    check(true, true);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_block_gradcheck),
        cmocka_unit_test(test_block_gradcheck_checkpointed),
        cmocka_unit_test(test_block_gradcheck_dropout_checkpointed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
