/* tests/test_quant_spec.c: per-layer quantization specs (string form, glob rules and their
 * precedence) and the calibrator that keeps an observer per tensor name. */
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "quant/quant.h"

static bool same_bits(float a, float b)
{
    return memcmp(&a, &b, sizeof a) == 0;
}

/* kind 0: normal, 1: uniform in [-1, 2), 2: heavy tailed (Student t with 2 dof) */
static void fill(float *x, int64_t n, int kind, lq_rng *r)
{
    for (int64_t i = 0; i < n; i++) {
        float g = lq_rng_normal(r);
        if (kind == 0) x[i] = g;
        else if (kind == 1) x[i] = 3.0f * lq_rng_uniform(r) - 1.0f;
        else {
            float a = lq_rng_normal(r), b = lq_rng_normal(r);
            x[i] = g / sqrtf((a * a + b * b) / 2.0f + 1e-4f);
        }
    }
}

static void assert_msg_has(const lq_err *e, const char *needle)
{
    if (!strstr(e->msg, needle)) fail_msg("error message \"%s\" lacks \"%s\"", e->msg, needle);
}

/* --- specs ----------------------------------------------------------------------------------------- */

static void test_spec_parse(void **state)
{
    (void)state;
    lq_qspec q;
    lq_err err;
    lq_err_clear(&err);
    assert_int_equal(lq_qspec_parse("int4:g32:sym", &q, &err), LQ_OK);
    assert_true(q.enabled && q.bits == 4 && q.symmetric && q.granularity == LQ_GRAN_GROUP && q.group_size == 32);
    assert_true(q.observer == LQ_OBSERVER_MINMAX && !q.learnable);
    assert_int_equal(lq_qspec_parse("int8:channel", &q, &err), LQ_OK);
    assert_true(q.bits == 8 && q.symmetric && q.granularity == LQ_GRAN_CHANNEL && q.axis == 0);
    assert_int_equal(lq_qspec_parse("int3:asym:channel-1:mse=40:lsq", &q, &err), LQ_OK);
    assert_true(q.bits == 3 && !q.symmetric && q.axis == -1 && q.observer == LQ_OBSERVER_MSE &&
                q.observer_param == 40.0 && q.learnable);
    assert_int_equal(lq_qspec_parse("int8:asym:token:movavg=0.05", &q, &err), LQ_OK);
    assert_true(q.granularity == LQ_GRAN_TOKEN && q.observer == LQ_OBSERVER_MOVING_AVG && q.observer_param == 0.05);
    assert_int_equal(lq_qspec_parse("int6:pct", &q, &err), LQ_OK);
    assert_true(q.observer == LQ_OBSERVER_PERCENTILE && q.observer_param == 0.0 && q.granularity == LQ_GRAN_TENSOR);
    assert_int_equal(lq_qspec_parse("float", &q, &err), LQ_OK);
    assert_false(q.enabled);

    /* format round-trips */
    const char *rt[] = {"int4:g32:sym", "int2:asym:channel1:pct=99.5:lsq", "int8:token", "float", "int5:movavg=0.1"};
    for (size_t i = 0; i < sizeof rt / sizeof rt[0]; i++) {
        lq_qspec a, b;
        char buf[128];
        assert_int_equal(lq_qspec_parse(rt[i], &a, &err), LQ_OK);
        lq_qspec_format(&a, buf, sizeof buf);
        if (lq_qspec_parse(buf, &b, &err) != LQ_OK) fail_msg("\"%s\" formatted as \"%s\": %s", rt[i], buf, err.msg);
        assert_true(a.enabled == b.enabled && a.bits == b.bits && a.symmetric == b.symmetric &&
                    a.granularity == b.granularity && a.axis == b.axis && a.group_size == b.group_size &&
                    a.observer == b.observer && a.observer_param == b.observer_param && a.learnable == b.learnable);
    }

    /* errors name the token */
    struct { const char *s, *needle; } bad[] = {
        {"int4:g3x", "bad token \"g3x\""},        {"int9", "bad token \"int9\" (bits must be 2..8)"},
        {"fp4", "bad token \"fp4\""},             {"int4:g32:channel", "bad token \"channel\" (a second granularity)"},
        {"float:g32", "bad token \"g32\""},       {"int4:pct=abc", "bad token \"pct=abc\""},
        {"int4::sym", "bad token \"\""},          {"int4:g0", "bad token \"g0\""},
        {"int4:sym:asym", "bad token \"asym\""},  {"int4:pct=120", "percentile 120"},
        {"int4:channel7", "bad token \"channel7\""}, {"int4:minmax=3", "minmax takes no parameter"},
        {"int4:g32=5", "bad token \"g32=5\""},    {"", "bad token \"\""},
        {"int", "bad token \"int\""},             {"int-4", "bad token \"int-4\""},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        lq_err_clear(&err);
        assert_int_equal(lq_qspec_parse(bad[i].s, &q, &err), LQ_ERR_INPUT);
        if (!strstr(err.msg, bad[i].needle)) fail_msg("\"%s\": message \"%s\" lacks \"%s\"", bad[i].s, err.msg, bad[i].needle);
    }
}

static void test_rules_precedence(void **state)
{
    (void)state;
    lq_qrules *rules;
    lq_err err;
    lq_err_clear(&err);
    assert_int_equal(lq_qrules_init(&rules, &err), LQ_OK);
    /* general first, exceptions after: all linear layers int4 g32, lm_head int8, norms float */
    assert_int_equal(lq_qrules_add_str(rules, "*.weight", "int8:channel", &err), LQ_OK);
    assert_int_equal(lq_qrules_add_str(rules, "model.layers.*.mlp.*_proj.weight", "int4:g32", &err), LQ_OK);
    assert_int_equal(lq_qrules_add_str(rules, "model.layers.*.self_attn.[qkvo]_proj.weight", "int4:g32:lsq", &err),
                     LQ_OK);
    assert_int_equal(lq_qrules_add_str(rules, "lm_head.weight", "int8:channel:mse", &err), LQ_OK);
    assert_int_equal(lq_qrules_add_str(rules, "*norm*", "float", &err), LQ_OK);
    assert_int_equal(lq_qrules_count(rules), 5);
    struct { const char *name; int rule, bits; } want[] = {
        {"model.layers.0.mlp.gate_proj.weight", 1, 4},
        {"model.layers.17.mlp.down_proj.weight", 1, 4},
        {"model.layers.3.self_attn.k_proj.weight", 2, 4},
        {"model.layers.3.self_attn.qk_proj.weight", 0, 8}, /* [qkvo] matches one character */
        {"lm_head.weight", 3, 8},
        {"model.layers.3.input_layernorm.weight", 4, 0},
        {"model.norm.weight", 4, 0},
        {"model.embed_tokens.weight", 0, 8},
        {"model.layers.0.mlp.gate_proj.bias", -1, 0}, /* no rule: stays float */
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        lq_qspec q;
        int r = lq_qrules_resolve(rules, want[i].name, &q);
        if (r != want[i].rule) fail_msg("%s: rule %d, want %d", want[i].name, r, want[i].rule);
        assert_int_equal(q.enabled ? q.bits : 0, want[i].bits);
    }
    lq_qspec q;
    lq_qrules_resolve(rules, "model.layers.3.self_attn.v_proj.weight", &q);
    assert_true(q.learnable && q.granularity == LQ_GRAN_GROUP && q.group_size == 32);
    lq_qrules_resolve(rules, "lm_head.weight", &q);
    assert_true(q.observer == LQ_OBSERVER_MSE && q.granularity == LQ_GRAN_CHANNEL);
    lq_qrules_free(rules);

    /* the same rules in the other order: the general rule, now last, wins everywhere it matches */
    assert_int_equal(lq_qrules_init(&rules, &err), LQ_OK);
    assert_int_equal(lq_qrules_add_str(rules, "*norm*", "float", &err), LQ_OK);
    assert_int_equal(lq_qrules_add_str(rules, "model.layers.*.mlp.*_proj.weight", "int4:g32", &err), LQ_OK);
    assert_int_equal(lq_qrules_add_str(rules, "*.weight", "int8:channel", &err), LQ_OK);
    assert_int_equal(lq_qrules_resolve(rules, "model.norm.weight", &q), 2);
    assert_true(q.enabled && q.bits == 8);
    assert_int_equal(lq_qrules_resolve(rules, "model.layers.0.mlp.up_proj.weight", &q), 2);
    assert_int_equal(lq_qrules_resolve(rules, "model.layers.0.input_layernorm.bias", &q), 0);
    assert_false(q.enabled);

    /* a bad rule names its pattern and token and leaves the list as it was */
    lq_err_clear(&err);
    assert_int_equal(lq_qrules_add_str(rules, "lm_head.*", "int4:gg", &err), LQ_ERR_INPUT);
    assert_msg_has(&err, "quant rule \"lm_head.*\"");
    assert_msg_has(&err, "bad token \"gg\"");
    lq_qspec bad = {.enabled = true, .bits = 12};
    lq_err_clear(&err);
    assert_int_equal(lq_qrules_add(rules, "x", &bad, &err), LQ_ERR_ARG);
    assert_msg_has(&err, "bits 12 outside 2..8");
    lq_err_clear(&err);
    assert_int_equal(lq_qrules_add_str(rules, "", "int8", &err), LQ_ERR_INPUT);
    assert_int_equal(lq_qrules_count(rules), 3);
    lq_qrules_free(rules);
}

/* --- calibrator ------------------------------------------------------------------------------------ */

static void test_calibrator(void **state)
{
    (void)state;
    lq_qrules *rules;
    lq_calibrator *cal;
    lq_err err;
    lq_err_clear(&err);
    assert_int_equal(lq_qrules_init(&rules, &err), LQ_OK);
    assert_int_equal(lq_qrules_add_str(rules, "*.weight", "int4:g16", &err), LQ_OK);
    assert_int_equal(lq_qrules_add_str(rules, "*.act", "int8:asym:movavg=0.1", &err), LQ_OK);
    assert_int_equal(lq_qrules_add_str(rules, "*.tok", "int8:token", &err), LQ_OK);
    assert_int_equal(lq_qrules_add_str(rules, "*norm*", "float", &err), LQ_OK);
    assert_int_equal(lq_calibrator_init(&cal, rules, 2, &err), LQ_OK);

    /* reference observers built by hand from the same specs */
    lq_observer ref_w, ref_a;
    lq_observer_config cw = lq_observer_config_default(), ca = lq_observer_config_default();
    cw.bits = 4;
    cw.granularity = LQ_GRAN_GROUP;
    cw.group_size = 16;
    ca.kind = LQ_OBSERVER_MOVING_AVG;
    ca.symmetric = false;
    ca.param = 0.1;
    assert_int_equal(lq_observer_init(&ref_w, &cw, NULL), LQ_OK);
    assert_int_equal(lq_observer_init(&ref_a, &ca, NULL), LQ_OK);

    lq_rng r;
    lq_rng_seed(&r, 5);
    float w[8 * 32], a[4 * 32], nw[32];
    int64_t ws[2] = {8, 32}, as[3] = {2, 2, 32}, ns = 32;
    fill(w, 8 * 32, 2, &r);
    fill(nw, 32, 0, &r);
    for (int b = 0; b < 4; b++) {
        fill(a, 4 * 32, b % 3, &r);
        assert_int_equal(lq_calibrator_observe(cal, "l0.weight", w, 2, ws, &err), LQ_OK);
        assert_int_equal(lq_calibrator_observe(cal, "l0.act", a, 3, as, &err), LQ_OK);
        assert_int_equal(lq_calibrator_observe(cal, "l0.norm.weight", nw, 1, &ns, &err), LQ_OK);
        assert_int_equal(lq_calibrator_observe(cal, "l0.tok", a, 3, as, &err), LQ_OK);
        assert_int_equal(lq_calibrator_observe(cal, "unmatched", a, 3, as, &err), LQ_OK);
        assert_int_equal(lq_observer_update(&ref_w, w, 2, ws, NULL), LQ_OK);
        assert_int_equal(lq_observer_update(&ref_a, a, 3, as, NULL), LQ_OK);
    }
    assert_int_equal(lq_calibrator_count(cal), 2);
    assert_string_equal(lq_calibrator_name(cal, 0), "l0.weight");
    assert_string_equal(lq_calibrator_name(cal, 1), "l0.act");
    assert_null(lq_calibrator_name(cal, 2));
    assert_null(lq_calibrator_find(cal, "l0.norm.weight"));
    assert_non_null(lq_calibrator_find(cal, "l0.act"));

    float s[16], rs[16];
    int32_t z[16], rz[16];
    int64_t n = 0;
    assert_int_equal(lq_calibrator_qparams(cal, "l0.weight", s, z, 16, &n, &err), LQ_OK);
    assert_int_equal(n, 16);
    lq_observer_qparams(&ref_w, rs, rz, NULL);
    assert_memory_equal(s, rs, sizeof s);
    assert_memory_equal(z, rz, sizeof z);
    assert_int_equal(lq_calibrator_qparams(cal, "l0.act", s, z, 16, &n, &err), LQ_OK);
    assert_int_equal(n, 1);
    lq_observer_qparams(&ref_a, rs, rz, NULL);
    assert_true(same_bits(s[0], rs[0]) && z[0] == rz[0] && z[0] > 0);

    lq_err_clear(&err);
    assert_int_equal(lq_calibrator_qparams(cal, "l0.weight", s, z, 8, &n, &err), LQ_ERR_SHAPE);
    lq_err_clear(&err);
    assert_int_equal(lq_calibrator_qparams(cal, "l0.norm.weight", s, z, 16, &n, &err), LQ_ERR_ARG);
    assert_msg_has(&err, "\"l0.norm.weight\" stays float");
    lq_err_clear(&err);
    assert_int_equal(lq_calibrator_qparams(cal, "l0.tok", s, z, 16, &n, &err), LQ_ERR_ARG);
    assert_msg_has(&err, "per token");
    lq_err_clear(&err);
    assert_int_equal(lq_calibrator_qparams(cal, "nope", s, z, 16, &n, &err), LQ_ERR_ARG);
    assert_msg_has(&err, "never observed");

    /* errors name the tensor; a group size that does not fit is caught at the first batch */
    w[37] = NAN;
    lq_err_clear(&err);
    assert_int_equal(lq_calibrator_observe(cal, "l0.weight", w, 2, ws, &err), LQ_ERR_NUMERIC);
    assert_msg_has(&err, "tensor \"l0.weight\": observer input element 37 [1, 5] is NaN");
    w[37] = 0.0f;
    int64_t odd[2] = {8, 24};
    lq_err_clear(&err);
    assert_int_equal(lq_calibrator_observe(cal, "l1.weight", w, 2, odd, &err), LQ_ERR_SHAPE);
    assert_msg_has(&err, "tensor \"l1.weight\": observer: group size 16 does not divide the last dim 24");

    /* frozen: further batches change nothing */
    lq_calibrator_freeze(cal);
    for (int i = 0; i < 4 * 32; i++) a[i] = 100.0f * (float)i;
    assert_int_equal(lq_calibrator_observe(cal, "l0.act", a, 3, as, &err), LQ_OK);
    assert_int_equal(lq_calibrator_qparams(cal, "l0.act", s, z, 16, &n, &err), LQ_OK);
    assert_true(same_bits(s[0], rs[0]) && z[0] == rz[0]);

    lq_observer_free(&ref_w);
    lq_observer_free(&ref_a);
    lq_calibrator_free(cal);
    lq_qrules_free(rules);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_parse),
        cmocka_unit_test(test_rules_precedence),
        cmocka_unit_test(test_calibrator),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
