/* tests/test_qlora_parity.c: a QLoRA run of the trainer on tests/fixtures/qlora_tiny against the
 * same run in PyTorch + PEFT + bitsandbytes (tools/gen_qlora_fixtures.py, expected.lqfx).
 *
 * The reference is float64 arithmetic on the float32 values loquat holds (NF4-dequantized base,
 * the PEFT adapter), so the differences measured here are loquat's float32 rounding alone. The
 * generator's own float32 run lands within ~2e-6 (step-1 grads) and ~1e-7 (losses) of it; the
 * issue's bound is 1e-4 relative for the losses and the step-1 LoRA grads (see REL_TOL, LOSS_TOL).
 * Also checked without the trainer: loquat's shuffle + packing give the reference's rows, and
 * lq_lr_at gives transformers' cosine-with-warmup rates. */
#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "datasets/datasets.h"
#include "io/io.h"
#include "train/config.h"
#include "train/trainer.h"
#include "testutil.h"

#define MAX_STEPS 64
#define PEFT_PREFIX "base_model.model."
/* The bound for the step-1 grads (relative; measured ~2e-6, as the generator's own float32
 * PyTorch run) and, per tensor, for the exported weights. */
#define REL_TOL 1e-4
/* Losses and grad norms: the 1e-4 would let a wrong optimizer step through (a 5% change of
 * max_grad_norm moves the losses of this short run by < 1e-4); float32 lands within ~1e-7 of the
 * float64 reference (loquat and PyTorch alike), so 1e-5 keeps a margin of 100 over that noise. */
#define LOSS_TOL 1e-5

static lq_fixture *g_fx;

static lq_fixture *fx(void) {
    if (!g_fx) {
        char p[512];
        g_fx = lq_fixture_load(lq_fixture_path("qlora_tiny/expected.lqfx", p, sizeof p));
    }
    return g_fx;
}

static const lq_fx_tensor *rec(const char *name, int dtype) {
    const lq_fx_tensor *r = lq_fixture_find(fx(), "%s", name);
    if (!r) fail_msg("expected.lqfx has no record %s (regenerate with tools/gen_qlora_fixtures.py)", name);
    if (r->dtype != dtype) fail_msg("expected.lqfx: %s has dtype %d, want %d", name, r->dtype, dtype);
    return r;
}

/* Record element i as a double (LQFX data need not be aligned). */
static double f32_at(const lq_fx_tensor *r, int64_t i) {
    float v;
    memcpy(&v, (const char *)r->data + i * 4, 4);
    return v;
}

static int32_t i32_at(const lq_fx_tensor *r, int64_t i) {
    int32_t v;
    memcpy(&v, (const char *)r->data + i * 4, 4);
    return v;
}

static double rel(double a, double b) { return fabs(a - b) / fmax(fabs(b), 1e-30); }

/* Record prefix + name, e.g. "long/" "loss". */
static const lq_fx_tensor *vrec(const char *variant, const char *name, int dtype) {
    char full[128];
    snprintf(full, sizeof full, "%s%s", variant, name);
    return rec(full, dtype);
}

#define MAX_EXTRA 4

/* Loads the fixture's config with its paths pointed at the fixture folder (which need not be the
 * repository's tests/fixtures), output_dir at out_dir, and the space-separated overrides extra. */
static void load_config(lq_train_config *cfg, const char *out_dir, const char *extra) {
    char dir[512], path[600], s[6 + MAX_EXTRA][700];
    lq_fixture_path("qlora_tiny", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/config.yaml", dir);
    snprintf(s[0], sizeof s[0], "output_dir=%s", out_dir);
    snprintf(s[1], sizeof s[1], "base_model=%s", dir);
    snprintf(s[2], sizeof s[2], "lora_model_dir=%s/adapter_init", dir);
    snprintf(s[3], sizeof s[3], "datasets.0.path=%s/train.jsonl", dir);
    snprintf(s[4], sizeof s[4], "test_datasets.0.path=%s/eval.jsonl", dir);
    snprintf(s[5], sizeof s[5], "threads=2");
    int n = 6;
    for (const char *e = extra ? extra : ""; *e;) {
        size_t len = strcspn(e, " ");
        if (len) {
            assert_true(n < 6 + MAX_EXTRA);
            snprintf(s[n++], sizeof s[0], "%.*s", (int)len, e);
        }
        e += len + (e[len] == ' ');
    }
    const char *sets[6 + MAX_EXTRA];
    for (int i = 0; i < n; i++) sets[i] = s[i];
    lq_err err;
    lq_err_clear(&err);
    if (lq_train_config_load(path, sets, n, cfg, &err) != LQ_OK) fail_msg("config: %s", err.msg);
}

/* ---- the data and the schedule, without the trainer --------------------------------------- */

/* The generator replicates loquat's shuffle and packing in Python; its rows must be ours. */
static void check_rows(const lq_docs *docs, const size_t *order, size_t n, int64_t seq_len, int32_t pad,
                       const char *name) {
    lq_err err;
    lq_err_clear(&err);
    lq_packed p;
    assert_int_equal(lq_pack(docs, order, n, seq_len, pad, &p, &err), LQ_OK);
    const lq_fx_tensor *r = rec(name, 1);
    assert_int_equal(r->ndim, 2);
    assert_int_equal(r->shape[0], p.n_rows);
    assert_int_equal(r->shape[1], seq_len);
    for (int64_t i = 0; i < p.n_rows * seq_len; i++)
        if (p.ids[i] != i32_at(r, i))
            fail_msg("%s: row %lld col %lld: loquat id %d, reference %d", name, (long long)(i / seq_len),
                     (long long)(i % seq_len), p.ids[i], i32_at(r, i));
    lq_packed_free(&p);
}

static void test_data_and_schedule(void **state) {
    (void)state;
    lq_train_config cfg;
    load_config(&cfg, "/nonexistent-unused", NULL);
    assert_int_equal(cfg.n_datasets, 1);
    char dir[512], path[600];
    lq_fixture_path("qlora_tiny", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    lq_err err;
    lq_err_clear(&err);
    lq_tokenizer *tok = NULL;
    if (lq_tokenizer_load(&tok, path, &err) != LQ_OK) fail_msg("%s", err.msg);
    int32_t eos = lq_tokenizer_token_to_id(tok, "<|endoftext|>");
    assert_true(eos >= 0);
    lq_data_opts o = {.format = LQ_DATA_JSONL, .eos_id = eos, .add_special = false};
    lq_docs train = {0}, eval = {0};
    if (lq_data_load(tok, cfg.datasets[0].path, &o, &train, &err) != LQ_OK) fail_msg("%s", err.msg);
    snprintf(path, sizeof path, "%s/eval.jsonl", dir);
    if (lq_data_load(tok, path, &o, &eval, &err) != LQ_OK) fail_msg("%s", err.msg);
    size_t *order = malloc(train.n * sizeof *order);
    assert_non_null(order);
    assert_int_equal(lq_data_shuffle(train.n, cfg.seed + 1, order, &err), LQ_OK);
    check_rows(&train, order, train.n, cfg.sequence_len, eos, "train/rows");
    check_rows(&eval, NULL, 0, cfg.sequence_len, eos, "eval/rows");

    const lq_fx_tensor *lr = rec("lr", 0);
    assert_int_equal(lr->numel, cfg.max_steps);
    for (int64_t k = 0; k < cfg.max_steps; k++) {
        double ours = lq_lr_at(cfg.lr_scheduler, cfg.learning_rate, cfg.warmup_steps, cfg.max_steps, k);
        double want = f32_at(lr, k);
        if (fabs(ours - want) > 1e-6 * fabs(want) + 1e-12)
            fail_msg("lr of update %lld: loquat %.9g, transformers %.9g", (long long)k, ours, want);
    }
    assert_true(fabs(cfg.max_grad_norm - f32_at(rec("max_grad_norm", 0), 0)) < 1e-6);
    free(order);
    lq_docs_free(&train);
    lq_docs_free(&eval);
    lq_tokenizer_free(tok);
    lq_train_config_free(&cfg);
}

/* ---- the full run --------------------------------------------------------------------------- */

typedef struct run_rec {
    int64_t n;
    lq_step_info info[MAX_STEPS];
    int grads_checked;  /* tensors compared after step 1's backward */
    int grads_bad;      /* of those, over the bound */
    double grad_worst;  /* largest normwise relative error ||a - b|| / ||b|| */
    double grad_worst_elem; /* largest |a - b| / max|b| of one tensor */
    char worst_name[128];
    char msg[1024];     /* the first problem, reported after the run */
} run_rec;

/* Keeps the first problem's message. */
static void note(run_rec *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(run_rec *r, const char *fmt, ...) {
    if (r->msg[0]) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->msg, sizeof r->msg, fmt, ap);
    va_end(ap);
}

/* Step 1: every LoRA grad (before clipping) against PEFT's. */
static int after_backward(void *user, int64_t step, lq_params *params) {
    run_rec *r = user;
    if (step != 1) return 0;
    const lq_fixture *f = fx();
    for (int i = 0; i < f->n; i++) {
        const lq_fx_tensor *e = &f->t[i];
        if (strncmp(e->name, "grad1/" PEFT_PREFIX, strlen("grad1/" PEFT_PREFIX)) != 0) continue;
        const char *pname = e->name + strlen("grad1/" PEFT_PREFIX);
        lq_tensor *t = lq_params_find(params, pname);
        r->grads_checked++;
        if (!t || !t->grad || lq_numel(t) != e->numel) {
            r->grads_bad++;
            note(r, "step 1: no parameter %s of the reference's shape in the adapter block", pname);
            continue;
        }
        const float *g = t->grad->data;
        double d2 = 0, b2 = 0, dmax = 0, bmax = 0;
        for (int64_t j = 0; j < e->numel; j++) {
            double b = f32_at(e, j), d = fabs((double)g[j] - b);
            d2 += d * d, b2 += b * b;
            dmax = fmax(dmax, d), bmax = fmax(bmax, fabs(b));
        }
        double nrel = sqrt(d2 / fmax(b2, 1e-300)), erel = dmax / fmax(bmax, 1e-300);
        if (nrel > r->grad_worst) {
            r->grad_worst = nrel;
            snprintf(r->worst_name, sizeof r->worst_name, "%s", pname);
        }
        r->grad_worst_elem = fmax(r->grad_worst_elem, erel);
        if (!(erel <= REL_TOL) || bmax == 0) {
            r->grads_bad++;
            note(r, "step 1 grad of %s: max |diff| / max |ref| = %.3g (bound %.0e)", pname, erel, REL_TOL);
        }
    }
    return 0;
}

static void after_step(void *user, const lq_step_info *info) {
    run_rec *r = user;
    if (r->n < MAX_STEPS) r->info[r->n++] = *info;
}

/* Eval losses from output_dir/metrics.jsonl lines {"step", "eval_loss", ...}: steps[i], loss[i]. */
static int read_evals(const char *dir, int64_t *steps, double *loss, int cap) {
    char path[700];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    if (!f) fail_msg("cannot open %s", path);
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        cJSON *o = cJSON_Parse(line);
        if (!o) fail_msg("%s: a line is not JSON: %s", path, line);
        cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "step");
        cJSON *el = cJSON_GetObjectItemCaseSensitive(o, "eval_loss");
        if (cJSON_IsNumber(st) && cJSON_IsNumber(el) && n < cap) {
            steps[n] = (int64_t)st->valuedouble;
            loss[n++] = el->valuedouble;
        }
        cJSON_Delete(o);
    }
    fclose(f);
    return n;
}

static void rm_rf(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[1200];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) rm_rf(p);
        else unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

/* The exported adapter vs the reference's final LoRA weights. After S AdamW steps an element
 * moves by at most sum_k lr_k (|m/sqrt(v)| <= ~1); a relative gradient error e changes each update
 * by about e * lr_k, so the final weights differ by ~e * sum lr_k (~1e-2 e) absolutely, against
 * weights of ~0.1: the same bound REL_TOL of each tensor's largest element holds with margin. */
static void check_final_adapter(const char *out) {
    lq_err err;
    lq_err_clear(&err);
    char path[700];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", out);
    lq_st_file *sf = NULL;
    if (lq_st_open(&sf, path, &err) != LQ_OK) fail_msg("%s", err.msg);
    const lq_fixture *f = fx();
    int n_final = 0;
    double ww = 0;
    for (int i = 0; i < f->n; i++) {
        const lq_fx_tensor *e = &f->t[i];
        if (strncmp(e->name, "final/", 6) != 0) continue;
        const lq_st_tensor *st_t = lq_st_find(sf, e->name + 6);
        if (!st_t) fail_msg("%s has no tensor %s", path, e->name + 6);
        assert_int_equal(st_t->numel, e->numel);
        float *a = malloc((size_t)e->numel * sizeof *a), *b = malloc((size_t)e->numel * sizeof *b);
        assert_true(a && b);
        if (lq_st_to_f32(st_t, a, &err) != LQ_OK) fail_msg("%s", err.msg);
        memcpy(b, e->data, (size_t)e->numel * sizeof *b);
        double bmax = 0, dmax = 0;
        for (int64_t j = 0; j < e->numel; j++) {
            bmax = fmax(bmax, fabs(b[j]));
            dmax = fmax(dmax, fabs((double)a[j] - b[j]));
        }
        ww = fmax(ww, dmax / bmax);
        assert_allclose(a, b, e->numel, 0.0, REL_TOL * bmax, e->name);
        free(a);
        free(b);
        n_final++;
    }
    lq_st_close(sf);
    assert_int_equal(n_final, 2 * 7 * 2);
    print_message("final adapter: worst max|diff|/max|ref| %.3g over %d tensors\n", ww, n_final);
}

/* One run of the fixture's config against the reference run `variant` ("" = the main one, whose
 * step-1 grads and final weights are checked too; "long/", "nopack/": with the overrides of the
 * variant's "sets" record), plus the overrides extra (NULL = none). */
static void parity_run(const char *variant, const char *extra) {
    char out[] = "/tmp/lq_qlora_parity_XXXXXX", sets[512];
    assert_non_null(mkdtemp(out));
    const bool main_run = !variant[0];
    sets[0] = 0;
    if (!main_run) {
        const lq_fx_tensor *v = vrec(variant, "sets", 2);
        snprintf(sets, sizeof sets, "%.*s", (int)v->numel, (const char *)v->data);
    }
    if (extra) snprintf(sets + strlen(sets), sizeof sets - strlen(sets), "%s%s", sets[0] ? " " : "", extra);
    lq_train_config cfg;
    load_config(&cfg, out, sets);
    print_message("run with %s\n", sets[0] ? sets : "the fixture's config");
    static run_rec r;
    memset(&r, 0, sizeof r);
    lq_trainer_opts opts = {.quiet = true, .hooks = {.user = &r, .after_backward = main_run ? after_backward : NULL,
                                                     .after_step = after_step}};
    lq_err err;
    lq_err_clear(&err);
    lq_trainer *t = NULL;
    lq_status st = lq_trainer_init(&t, &cfg, &opts, &err);
    if (st == LQ_OK) st = lq_trainer_run(t, &err);
    lq_trainer_free(t);
    if (st != LQ_OK) fail_msg("trainer: %s", err.msg);

    /* step 1's grads */
    if (main_run) {
        print_message("step-1 LoRA grads: %d tensors, worst normwise rel err %.3g (%s), worst max|diff|/max|ref| "
                      "%.3g\n", r.grads_checked, r.grad_worst, r.worst_name, r.grad_worst_elem);
        assert_int_equal(r.grads_checked, 2 * 7 * 2);
        if (r.grads_bad) fail_msg("%d of %d step-1 grads off: %s", r.grads_bad, r.grads_checked, r.msg);
    }

    /* per-step loss, grad norm, lr, tokens */
    const lq_fx_tensor *loss = vrec(variant, "loss", 0), *gn = vrec(variant, "grad_norm", 0),
                       *lr = vrec(variant, "lr", 0), *tok = vrec(variant, "tokens", 1);
    assert_int_equal(r.n, loss->numel);
    double wl = 0, wg = 0;
    for (int64_t k = 0; k < r.n; k++) {
        const lq_step_info *s = &r.info[k];
        assert_int_equal(s->step, k + 1);
        assert_int_equal(s->total, loss->numel);
        if (s->tokens != i32_at(tok, k))
            fail_msg("step %lld: %lld counted labels, reference %d", (long long)(k + 1), (long long)s->tokens,
                     i32_at(tok, k));
        wl = fmax(wl, rel(s->loss, f32_at(loss, k)));
        wg = fmax(wg, rel(s->grad_norm, f32_at(gn, k)));
        if (rel(s->loss, f32_at(loss, k)) > LOSS_TOL)
            fail_msg("step %lld loss: loquat %.8f, PEFT %.8f", (long long)(k + 1), s->loss, f32_at(loss, k));
        if (rel(s->grad_norm, f32_at(gn, k)) > LOSS_TOL)
            fail_msg("step %lld grad norm: loquat %.8f, PEFT %.8f", (long long)(k + 1), s->grad_norm, f32_at(gn, k));
        if (fabs(s->lr - f32_at(lr, k)) > 1e-6 * fabs(f32_at(lr, k)) + 1e-12)
            fail_msg("step %lld lr: loquat %.9g, transformers %.9g", (long long)(k + 1), s->lr, f32_at(lr, k));
    }
    print_message("per-step loss: worst rel err %.3g; grad norm: %.3g (%lld steps)\n", wl, wg, (long long)r.n);
    if (main_run) { /* the fixture's max_grad_norm makes some steps clip and some not: both paths run */
        int n_clipped = 0;
        for (int64_t k = 0; k < r.n; k++) n_clipped += r.info[k].grad_norm > cfg.max_grad_norm;
        if (n_clipped == 0 || n_clipped == r.n)
            fail_msg("%d of %lld steps clipped at max_grad_norm %g: regenerate the fixture", n_clipped, (long long)r.n,
                     cfg.max_grad_norm);
    }

    /* eval losses (metrics.jsonl) */
    const lq_fx_tensor *es = vrec(variant, "eval_step", 1), *el = vrec(variant, "eval_loss", 0);
    int64_t steps[16];
    double ev[16];
    int ne = read_evals(out, steps, ev, 16);
    assert_int_equal(ne, es->numel);
    double we = 0;
    for (int i = 0; i < ne; i++) {
        assert_int_equal(steps[i], i32_at(es, i));
        we = fmax(we, rel(ev[i], f32_at(el, i)));
        if (rel(ev[i], f32_at(el, i)) > LOSS_TOL)
            fail_msg("eval loss at step %lld: loquat %.8f, PEFT %.8f", (long long)steps[i], ev[i], f32_at(el, i));
    }
    print_message("eval loss (%d evals): worst rel err %.3g\n", ne, we);

    if (main_run) check_final_adapter(out);

    lq_train_config_free(&cfg);
    rm_rf(out);
}

static void test_parity_run(void **state) {
    (void)state;
    parity_run("", NULL);
}

/* Recomputing each layer in backward must not change a number that matters. */
static void test_parity_run_checkpointed(void **state) {
    (void)state;
    parity_run("", "gradient_checkpointing=true");
}

/* Past the first epoch: the second shuffle, the dropped remainder rows, a longer schedule. */
static void test_parity_run_long(void **state) {
    (void)state;
    parity_run("long/", NULL);
}

/* sample_packing false: one document per row, truncated and padded. */
static void test_parity_run_nopack(void **state) {
    (void)state;
    parity_run("nopack/", NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_data_and_schedule),
        cmocka_unit_test(test_parity_run),
        cmocka_unit_test(test_parity_run_checkpointed),
        cmocka_unit_test(test_parity_run_long),
        cmocka_unit_test(test_parity_run_nopack),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    lq_fixture_free(g_fx);
    return rc;
}
