/* tests/test_trainer.c: the trainer: schedules vs transformers, checkpoint files, data rows vs the
 * PyTorch reference's, and interrupted + resumed runs reproducing an uninterrupted one bit for bit. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"
#include "train/config.h"
#include "train/trainer_impl.h"

/* --- lq_lr_at against transformers (tests/fixtures/trainer/schedule.lqfx) --------------------- */

static void test_lr_schedule(void **state) {
    (void)state;
    char p[4096];
    lq_fixture *fx = lq_fixture_load(lq_fixture_path("trainer/schedule.lqfx", p, sizeof p));
    int n_cases = 0;
    for (int i = 0;; i++, n_cases++) {
        const lq_fx_tensor *par = lq_fixture_find(fx, "sched/%d/params", i), *lr = lq_fixture_find(fx, "sched/%d/lr", i);
        if (!par) break;
        assert_non_null(lr);
        int32_t pp[3]; /* fixture data is unaligned */
        assert_int_equal(par->numel, 3);
        memcpy(pp, par->data, sizeof pp);
        int64_t total = pp[2], n = lr->numel / 8;
        assert_int_equal(n, total + 2);
        for (int64_t k = 0; k < n; k++) {
            double want;
            memcpy(&want, (const char *)lr->data + 8 * k, 8);
            double got = lq_lr_at((lq_lr_sched)pp[0], 3e-4, pp[1], total, k);
            if (got != want) fail_msg("case %d (sched %d warmup %d total %d) step %lld: lr %.17g, transformers %.17g", i,
                                      pp[0], pp[1], pp[2], (long long)k, got, want);
        }
    }
    assert_true(n_cases >= 8);
    lq_fixture_free(fx);
}

/* --- checkpoint files ------------------------------------------------------------------------ */

static char *make_tmpdir(char *buf, size_t n) {
    snprintf(buf, n, "/tmp/lq_test_trainer_XXXXXX");
    assert_non_null(mkdtemp(buf));
    return buf;
}

static void rm_rf(const char *dir) {
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void fill_ckpt(lq_ckpt *c, int64_t numel, float *a, float *m, float *v, char (*mods)[LQ_NAME_MAX]) {
    for (int64_t i = 0; i < numel; i++) {
        a[i] = sinf((float)i) * 0.1f;
        m[i] = cosf((float)i) * 1e-3f;
        v[i] = (float)i * 1e-6f;
    }
    memset(mods, 0, 3 * LQ_NAME_MAX);
    snprintf(mods[0], LQ_NAME_MAX, "model.layers.0.self_attn.q_proj");
    snprintf(mods[1], LQ_NAME_MAX, "model.layers.0.self_attn.v_proj");
    snprintf(mods[2], LQ_NAME_MAX, "model.layers.1.mlp.down_proj");
    *c = (lq_ckpt){.step = 17, .epoch = 2, .row = 8, .micro = 70, .adam_t = 16, .n_skipped = 1, .seed = 0xDEADBEEFCAFEull,
                   .eval_before = 3.25, .numel = numel, .params = a, .m = m, .v = v, .n_mods = 3, .mods = mods,
                   .config = "base_model: x\nlora_r: 8\n"};
}

static void test_ckpt_roundtrip_and_corruption(void **state) {
    (void)state;
    char dir[64], path[128];
    make_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/checkpoint-17.h5", dir);
    enum { N = 1000 };
    static float a[N], m[N], v[N];
    char mods[3][LQ_NAME_MAX];
    lq_ckpt c, r;
    fill_ckpt(&c, N, a, m, v, mods);
    lq_err err = {0};
    assert_int_equal(lq_ckpt_save(path, &c, &err), LQ_OK);
    assert_int_equal(lq_ckpt_load(path, &r, &err), LQ_OK);
    assert_int_equal(r.step, 17);
    assert_int_equal(r.epoch, 2);
    assert_int_equal(r.row, 8);
    assert_int_equal(r.micro, 70);
    assert_int_equal(r.adam_t, 16);
    assert_int_equal(r.n_skipped, 1);
    assert_true(r.seed == 0xDEADBEEFCAFEull);
    assert_true(r.eval_before == 3.25);
    assert_int_equal(r.numel, N);
    assert_memory_equal(r.params, a, sizeof a);
    assert_memory_equal(r.m, m, sizeof m);
    assert_memory_equal(r.v, v, sizeof v);
    assert_int_equal(r.n_mods, 3);
    assert_string_equal(r.mods[2], "model.layers.1.mlp.down_proj");
    assert_string_equal(r.config, c.config);
    lq_ckpt_free(&r);

    /* one flipped bit in the middle of the params array: the checksum catches it */
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    unsigned char *bytes = malloc((size_t)size);
    fseek(f, 0, SEEK_SET);
    assert_int_equal(fread(bytes, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    unsigned char *hit = NULL;
    for (long i = 0; i + 64 <= size && !hit; i++)
        if (memcmp(bytes + i, &a[500], 64) == 0) hit = bytes + i;
    assert_non_null(hit);
    hit[5] ^= 0x10;
    char bad[160];
    snprintf(bad, sizeof bad, "%s/checkpoint-18.h5", dir);
    f = fopen(bad, "wb");
    fwrite(bytes, 1, (size_t)size, f);
    fclose(f);
    lq_err e2 = {0};
    assert_int_equal(lq_ckpt_load(bad, &r, &e2), LQ_ERR_INPUT);
    assert_non_null(strstr(e2.msg, "checksum"));
    assert_non_null(strstr(e2.msg, "checkpoint-18.h5"));
    /* a file cut short (a crash mid-copy) is refused, not read */
    f = fopen(bad, "wb");
    fwrite(bytes, 1, (size_t)size / 2, f);
    fclose(f);
    lq_err e3 = {0};
    assert_int_equal(lq_ckpt_load(bad, &r, &e3), LQ_ERR_INPUT);
    free(bytes);
    rm_rf(dir);
}

static void test_ckpt_prune(void **state) {
    (void)state;
    char dir[64], path[128];
    make_tmpdir(dir, sizeof dir);
    static float a[10], m[10], v[10];
    char mods[3][LQ_NAME_MAX];
    lq_ckpt c;
    fill_ckpt(&c, 10, a, m, v, mods);
    lq_err err = {0};
    int steps[] = {10, 2, 3, 1}; /* 10 sorts last by number, first by name */
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/checkpoint-%d.h5", dir, steps[i]);
        assert_int_equal(lq_ckpt_save(path, &c, &err), LQ_OK);
    }
    assert_int_equal(lq_ckpt_prune(dir, 2, &err), LQ_OK);
    char **paths;
    int64_t *st;
    int n;
    assert_int_equal(lq_ckpt_list(dir, &paths, &st, &n, &err), LQ_OK);
    assert_int_equal(n, 2);
    assert_int_equal(st[0], 3);
    assert_int_equal(st[1], 10);
    lq_ckpt_list_free(paths, st, n);
    DIR *d = opendir(dir);
    struct dirent *e;
    int files = 0;
    while ((e = readdir(d)) != NULL) files += e->d_name[0] != '.';
    closedir(d);
    assert_int_equal(files, 2); /* no temporaries left */
    rm_rf(dir);
}

/* --- tiny runs on tests/fixtures/qlora_tiny ------------------------------------------------------ */

/* The fixture's run with dropout on (so the per-micro-batch seeds matter), more steps than one
 * epoch holds (11), and periodic saves pruned to two. */
static void tiny_config(lq_train_config *cfg, const char *out, int64_t max_steps, const char *extra) {
    char base[4096], tr[4096], ev[4096], yaml[16384];
    lq_fixture_path("qlora_tiny", base, sizeof base);
    lq_fixture_path("qlora_tiny/train.jsonl", tr, sizeof tr);
    lq_fixture_path("qlora_tiny/eval.jsonl", ev, sizeof ev);
    snprintf(yaml, sizeof yaml,
             "base_model: %s\nload_in_4bit: true\nbnb_4bit_quant_type: nf4\nbnb_4bit_use_double_quant: true\n"
             "adapter: lora\nlora_r: 4\nlora_alpha: 8\nlora_dropout: 0.1\nlora_target_modules: all-linear\n"
             "datasets:\n  - path: %s\n    type: completion\ntest_datasets:\n  - path: %s\n    type: completion\n"
             "sequence_len: 32\nsample_packing: true\nmicro_batch_size: 2\ngradient_accumulation_steps: 2\n"
             "max_steps: %lld\nlearning_rate: 0.005\nlr_scheduler: cosine\nwarmup_steps: 2\nweight_decay: 0.01\n"
             "max_grad_norm: 1.0\nseed: 7\neval_steps: 5\nsave_steps: 2\nsave_total_limit: 2\nthreads: 2\n"
             "output_dir: %s\n%s",
             base, tr, ev, (long long)max_steps, out, extra ? extra : "");
    lq_err err = {0};
    if (lq_train_config_parse(yaml, strlen(yaml), "tiny.yaml", NULL, 0, cfg, &err) != LQ_OK)
        fail_msg("config: %s", err.msg);
}

typedef struct rec {
    double loss[64];
    double norm[64];
    int64_t first, n;
} rec;

static void on_step(void *user, const lq_step_info *s) {
    rec *r = user;
    if (r->n == 0) r->first = s->step;
    assert_true(r->n < 64);
    r->loss[r->n] = s->loss;
    r->norm[r->n++] = s->grad_norm;
}

/* Runs a trainer; returns its status, copying the final adapter block into *params. */
static lq_status run_tiny(const lq_train_config *cfg, bool resume, int64_t stop_after, rec *r, float **params,
                          int64_t *numel, lq_err *err) {
    lq_trainer_opts o = {.resume = resume, .stop_after = stop_after, .quiet = true,
                         .hooks = {.user = r, .after_step = on_step}};
    lq_trainer *t;
    lq_status st = lq_trainer_init(&t, cfg, &o, err);
    if (st != LQ_OK) return st;
    st = lq_trainer_run(t, err);
    if (params) {
        *numel = lq_params_numel(t->set->params);
        *params = malloc((size_t)*numel * sizeof(float));
        memcpy(*params, lq_params_data(t->set->params), (size_t)*numel * sizeof(float));
    }
    lq_trainer_free(t);
    return st;
}

static bool have_tiny(void) {
    char p[4096];
    struct stat sb;
    return stat(lq_fixture_path("qlora_tiny/model.safetensors", p, sizeof p), &sb) == 0;
}

/* The rows the trainer builds equal the reference's (tools/gen_qlora_fixtures.py replicates the
 * pipeline in Python with the tokenizers library). */
static void test_data_rows_match_reference(void **state) {
    (void)state;
    if (!have_tiny()) skip();
    char dir[64], p[4096];
    make_tmpdir(dir, sizeof dir);
    lq_train_config cfg;
    tiny_config(&cfg, dir, 6, NULL);
    lq_llama_model *m;
    lq_lm_tok tok;
    lq_err err = {0};
    assert_int_equal(lq_trn_load_model(&cfg, &m, &tok, &err), LQ_OK);
    lq_train_data d;
    if (lq_train_data_load(&d, &cfg, &tok, &err) != LQ_OK) fail_msg("%s", err.msg);
    lq_fixture *fx = lq_fixture_load(lq_fixture_path("qlora_tiny/expected.lqfx", p, sizeof p));
    const lq_fx_tensor *tr = lq_fixture_find(fx, "train/rows"), *ev = lq_fixture_find(fx, "eval/rows");
    assert_non_null(tr);
    assert_non_null(ev);
    assert_int_equal(d.epoch_rows.n_rows, tr->shape[0]);
    assert_int_equal(d.epoch_rows.seq_len, tr->shape[1]);
    assert_memory_equal(d.epoch_rows.ids, tr->data, (size_t)tr->numel * 4);
    assert_int_equal(d.eval_rows.n_rows, ev->shape[0]);
    assert_memory_equal(d.eval_rows.ids, ev->data, (size_t)ev->numel * 4);
    lq_fixture_free(fx);
    lq_train_data_free(&d);
    lq_llama_free(m);
    lq_lm_tok_free(&tok);
    lq_train_config_free(&cfg);
    rm_rf(dir);
}

static int count_ckpts(const char *dir, int64_t *newest) {
    char **paths;
    int64_t *st;
    int n;
    lq_err err = {0};
    assert_int_equal(lq_ckpt_list(dir, &paths, &st, &n, &err), LQ_OK);
    *newest = n ? st[n - 1] : -1;
    lq_ckpt_list_free(paths, st, n);
    return n;
}

static void write_garbage(const char *path, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    for (size_t i = 0; i < n; i++) fputc((int)(i * 131 % 251), f);
    fclose(f);
}

/* Uninterrupted 14 steps vs --stop-after 5 then resume (past the epoch boundary at 11): every
 * later loss and grad norm bitwise equal, the final adapters too; newer corrupt / partial
 * checkpoints are skipped; save_total_limit keeps the two newest. */
static void test_resume_is_bitwise(void **state) {
    (void)state;
    if (!have_tiny()) skip();
    char da[64], db[64], p[4400];
    make_tmpdir(da, sizeof da);
    make_tmpdir(db, sizeof db);
    const int64_t total = 14, k = 5;
    lq_train_config ca, cb;
    tiny_config(&ca, da, total, NULL);
    tiny_config(&cb, db, total, NULL);
    static rec ra, rb1, rb2;
    float *pa, *pb;
    int64_t na, nb;
    lq_err err = {0};
    if (run_tiny(&ca, false, 0, &ra, &pa, &na, &err) != LQ_OK) fail_msg("run A: %s", err.msg);
    assert_int_equal(ra.n, total);
    for (int i = 0; i < total; i++) assert_true(isfinite(ra.loss[i]));
    int64_t newest;
    assert_int_equal(count_ckpts(da, &newest), 2); /* saves at 2, 4, ... 12 and 14, two kept */
    assert_int_equal(newest, total);

    if (run_tiny(&cb, false, k, &rb1, NULL, NULL, &err) != LQ_OK) fail_msg("run B: %s", err.msg);
    assert_int_equal(rb1.n, k);
    for (int i = 0; i < k; i++) assert_true(memcmp(&rb1.loss[i], &ra.loss[i], sizeof(double)) == 0);
    assert_int_equal(count_ckpts(db, &newest), 2);
    assert_int_equal(newest, k);
    /* a newer checkpoint that is garbage and one cut short must be skipped */
    snprintf(p, sizeof p, "%s/checkpoint-9.h5", db);
    write_garbage(p, 4096);
    char src[4200];
    snprintf(src, sizeof src, "%s/checkpoint-%lld.h5", db, (long long)k);
    snprintf(p, sizeof p, "head -c 20000 '%s' > '%s/checkpoint-8.h5'", src, db);
    assert_int_equal(system(p), 0);

    if (run_tiny(&cb, true, 0, &rb2, &pb, &nb, &err) != LQ_OK) fail_msg("resume: %s", err.msg);
    assert_int_equal(rb2.first, k + 1);
    assert_int_equal(rb2.n, total - k);
    for (int i = 0; i < rb2.n; i++) {
        if (memcmp(&rb2.loss[i], &ra.loss[k + i], sizeof(double)) != 0 || memcmp(&rb2.norm[i], &ra.norm[k + i], sizeof(double)) != 0)
            fail_msg("step %lld: resumed loss %.17g norm %.17g, uninterrupted %.17g / %.17g", (long long)(k + 1 + i),
                     rb2.loss[i], rb2.norm[i], ra.loss[k + i], ra.norm[k + i]);
    }
    assert_int_equal(na, nb);
    assert_memory_equal(pa, pb, (size_t)na * sizeof(float));
    /* the adapter was exported, and metrics.jsonl holds each step once */
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", db);
    assert_int_equal(access(p, F_OK), 0);
    snprintf(p, sizeof p, "%s/loss.svg", db);
    assert_int_equal(access(p, F_OK), 0);
    snprintf(p, sizeof p, "%s/metrics.jsonl", db);
    FILE *f = fopen(p, "r");
    assert_non_null(f);
    char line[1024];
    int seen[32] = {0};
    while (fgets(line, sizeof line, f))
        if (strstr(line, "\"loss\"")) {
            int s = atoi(strstr(line, "\"step\": ") + 8);
            assert_true(s >= 1 && s <= total);
            seen[s]++;
        }
    fclose(f);
    for (int s = 1; s <= total; s++) assert_int_equal(seen[s], 1);
    free(pa);
    free(pb);
    lq_train_config_free(&ca);
    lq_train_config_free(&cb);
    rm_rf(da);
    rm_rf(db);
}

/* A huge learning rate blows the adapters up: the run stops with LQ_ERR_NUMERIC naming the step,
 * and keeps the last good checkpoint; on_nan: skip carries on and counts the skipped steps. */
static void test_nan_stops(void **state) {
    (void)state;
    if (!have_tiny()) skip();
    char dir[64];
    make_tmpdir(dir, sizeof dir);
    lq_train_config cfg;
    tiny_config(&cfg, dir, 6, NULL);
    cfg.warmup_steps = 0;
    cfg.learning_rate = 1e30;
    cfg.lr_scheduler = LQ_SCHED_CONSTANT;
    cfg.max_grad_norm = 0;
    cfg.save_steps = 1;
    static rec r;
    lq_err err = {0};
    lq_status st = run_tiny(&cfg, false, 0, &r, NULL, NULL, &err);
    assert_int_equal(st, LQ_ERR_NUMERIC);
    assert_non_null(strstr(err.msg, "step "));
    assert_true(strstr(err.msg, "nan") || strstr(err.msg, "inf"));
    assert_non_null(strstr(err.msg, "first non-finite gradient"));
    int64_t newest;
    int n = count_ckpts(dir, &newest);
    assert_true(r.n >= 1 && n >= 1);
    assert_int_equal(newest, r.first + r.n - 1); /* the last good step's checkpoint, none after */
    lq_train_config_free(&cfg);
    rm_rf(dir);
}

/* on_nan: skip: the blown-up steps are skipped (no update, grads zeroed) and the run goes on. */
static void test_nan_skip(void **state) {
    (void)state;
    if (!have_tiny()) skip();
    char dir[64];
    make_tmpdir(dir, sizeof dir);
    lq_train_config cfg;
    tiny_config(&cfg, dir, 4, NULL);
    cfg.learning_rate = 1e30;
    cfg.warmup_steps = 0;
    cfg.lr_scheduler = LQ_SCHED_CONSTANT;
    cfg.max_grad_norm = 0;
    cfg.nan_policy = LQ_NAN_SKIP;
    static rec r;
    lq_err err = {0};
    lq_status st = run_tiny(&cfg, false, 0, &r, NULL, NULL, &err);
    if (st != LQ_OK) fail_msg("%s", err.msg);
    assert_int_equal(r.n, 4);
    assert_true(isfinite(r.loss[0]));
    for (int i = 1; i < 4; i++) assert_false(isfinite(r.loss[i]) && isfinite(r.norm[i]));
    lq_train_config_free(&cfg);
    rm_rf(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lr_schedule),
        cmocka_unit_test(test_ckpt_roundtrip_and_corruption),
        cmocka_unit_test(test_ckpt_prune),
        cmocka_unit_test(test_data_rows_match_reference),
        cmocka_unit_test(test_resume_is_bitwise),
        cmocka_unit_test(test_nan_stops),
        cmocka_unit_test(test_nan_skip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
