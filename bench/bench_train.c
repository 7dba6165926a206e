/* bench/bench_train.c: tokens/s and peak RSS of QLoRA training steps on SmolLM2-135M: one JSON line. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "lora/lora.h"
#include "models/models.h"
#include "train/train.h"

/* One process = one configuration, so that ru_maxrss (the peak) belongs to it alone; bench/train.sh
 * runs this and bench/peer_lora.py alternately (A B A B) and prints medians and ratios.
 * A step is what a trainer does per micro-batch with gradient_accumulation_steps = 1: zero the
 * adapter grads, loss (mean cross-entropy of next-token labels) forward, backward, AdamW update;
 * the arena is reset between steps. As in the trainer, each activation gradient goes back to the
 * context's pool once its node's backward has run (--release-grads 0: kept to the step's end, for
 * A/B). Two warm-up steps by default: the arena finds its size in the
 * first and merges its chunks into one at the reset after it, so the second still pays the page
 * faults of first touching that block; from the third on a step allocates nothing. Ids are seeded
 * random tokens from the vocabulary (the same generator as peer_lora.py, so both see the same
 * batch), labels the ids shifted by one with the last position ignored: HF's causal-LM loss counts
 * the same B (T - 1) tokens. */

#define MAX_STEPS 256

typedef struct opts {
    const char *model;
    int64_t batch, seq;
    int r, steps, warmup, threads;
    float alpha, dropout;
    bool checkpoint;
    bool keep; /* --base keep: the GGUF's own blocks (base_quant: native) instead of NF4 */
    bool release; /* --release-grads: free each activation gradient once used (as the trainer) */
    uint64_t seed;
} opts;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Resident set now, MB (/proc/self/statm), and the peak so far (getrusage, KB on Linux). */
static double rss_now_mb(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, res = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = 0;
        fclose(f);
    }
    return (double)res * (double)sysconf(_SC_PAGESIZE) / 1e6;
}
static double rss_peak_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss * 1024.0 / 1e6;
}
/* The peak since the last reset_hwm() (VmHWM in /proc/self/status, kB); -1 if unreadable. Writing 5
 * to /proc/self/clear_refs resets it (Linux >= 4.0): the training peak then excludes the loader's. */
static double rss_hwm_mb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) kb = strtod(line + 6, NULL);
    if (f) fclose(f);
    return kb < 0 ? -1 : kb * 1024.0 / 1e6;
}
static void reset_hwm(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) {
        fputs("5", f);
        fclose(f);
    }
}

/* splitmix64: the id generator peer_lora.py reimplements, so both runs train on the same batch. */
static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int usage(void) {
    fprintf(stderr,
            "usage: bench_train [--model GGUF] [--batch 4] [--seq 256] [--r 16] [--alpha 32] [--dropout 0.05]\n"
            "                   [--steps 4] [--warmup 2] [--threads 2] [--checkpoint 0|1] [--seed 1]\n"
            "                   [--base nf4|keep] [--release-grads 1|0]\n");
    return 2;
}

static const char *default_model(char *buf, size_t n) {
    const char *cache = getenv("LOQUAT_CACHE"), *home = getenv("HOME");
    if (cache && *cache) snprintf(buf, n, "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf", cache);
    else snprintf(buf, n, "%s/.cache/loquat/models/SmolLM2-135M-Instruct.Q4_1.gguf", home ? home : ".");
    return buf;
}

static int parse(int argc, char **argv, opts *o, char *mbuf, size_t mn) {
    *o = (opts){.batch = 4, .seq = 256, .r = 16, .alpha = 32.0f, .dropout = 0.05f, .steps = 4, .warmup = 2,
                .threads = 2, .seed = 1, .release = true};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return usage();
        if (!strcmp(a, "--model")) o->model = v;
        else if (!strcmp(a, "--batch")) o->batch = atoll(v);
        else if (!strcmp(a, "--seq")) o->seq = atoll(v);
        else if (!strcmp(a, "--r")) o->r = atoi(v);
        else if (!strcmp(a, "--alpha")) o->alpha = strtof(v, NULL);
        else if (!strcmp(a, "--dropout")) o->dropout = strtof(v, NULL);
        else if (!strcmp(a, "--steps")) o->steps = atoi(v);
        else if (!strcmp(a, "--warmup")) o->warmup = atoi(v);
        else if (!strcmp(a, "--threads")) o->threads = atoi(v);
        else if (!strcmp(a, "--checkpoint")) o->checkpoint = atoi(v) != 0;
        else if (!strcmp(a, "--release-grads")) o->release = atoi(v) != 0;
        else if (!strcmp(a, "--seed")) o->seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--base") && (!strcmp(v, "nf4") || !strcmp(v, "keep"))) o->keep = !strcmp(v, "keep");
        else return usage();
        i++;
    }
    if (!o->model) o->model = default_model(mbuf, mn);
    if (o->batch < 1 || o->seq < 2 || o->r < 1 || o->steps < 1 || o->steps > MAX_STEPS || o->warmup < 0 ||
        o->threads < 1) {
        fprintf(stderr, "bench_train: batch >= 1, seq >= 2, r >= 1, steps 1..%d, warmup >= 0, threads >= 1\n",
                MAX_STEPS);
        return 2;
    }
    return 0;
}

static int fail(const char *what, const char *msg) {
    fprintf(stderr, "bench_train: %s: %s\n", what, msg);
    return 1;
}

int main(int argc, char **argv) {
    opts o;
    char mbuf[1024];
    int rc = parse(argc, argv, &o, mbuf, sizeof mbuf);
    if (rc) return rc;
    if (access(o.model, R_OK) != 0) {
        fprintf(stderr, "bench_train: SKIPPED: no model at %s (tools/fetch_model.sh fetches it)\n", o.model);
        return 77;
    }
    double rss0 = rss_now_mb();
    lq_err err;
    lq_err_clear(&err);
    lq_llama_load_opts lo = {.quant = o.keep ? LQ_BASE_KEEP : LQ_BASE_NF4, .block_size = 64, .double_quant = true};
    lq_llama_model *m = NULL;
    double t0 = now();
    if (lq_llama_load_ex(o.model, &lo, &m, &err) != LQ_OK) return fail(o.model, err.msg);
    double load_s = now() - t0;
    lq_lora_cfg lc = {.r = o.r, .alpha = o.alpha, .dropout = o.dropout, .targets = LQ_LORA_ALL_LINEAR};
    lq_lora_set *set = NULL;
    if (lq_llama_lora_create(m, &lc, o.seed, &set, &err) != LQ_OK) return fail("lora", err.msg);
    /* torch.optim.AdamW's defaults with PEFT's usual learning rate (peer_lora.py: the same) */
    lq_adamw_cfg ac = {.lr = 2e-4f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f,
                       .n_threads = o.threads};
    lq_adamw opt;
    if (lq_adamw_init(&opt, set->params, &ac, &err) != LQ_OK) return fail("adamw", err.msg);
    lq_ctx_opts co = {.n_threads = o.threads, .seed = o.seed};
    lq_ctx *ctx = NULL;
    if (lq_ctx_init(&ctx, &co, &err) != LQ_OK) return fail("context", err.msg);
    lq_ctx_set_training(ctx, true);
    lq_ctx_set_release_grads(ctx, o.release);
    double rss_load = rss_now_mb();
    reset_hwm();

    int64_t V = lq_llama_model_config(m)->vocab_size, BT = o.batch * o.seq;
    int64_t sh[2] = {o.batch, o.seq};
    int32_t *ids_v = malloc((size_t)BT * sizeof *ids_v);
    if (!ids_v) return fail("ids", "out of memory");
    uint64_t gs = o.seed;
    for (int64_t i = 0; i < BT; i++) ids_v[i] = (int32_t)(splitmix(&gs) % (uint64_t)V);

    double times[MAX_STEPS], fwd_t[MAX_STEPS], first_loss = 0, last_loss = 0;
    lq_llama_fwd_opts fo = {.checkpoint = o.checkpoint};
    for (int s = 0; s < o.warmup + o.steps; s++) {
        double a = now();
        lq_ctx_step_reset(ctx);
        lq_params_zero_grad(set->params);
        lq_tensor *ids = lq_new(ctx, LQ_DTYPE_I32, 2, sh), *lab = lq_new(ctx, LQ_DTYPE_I32, 2, sh);
        if (!ids || !lab) return fail("step", lq_ctx_error(ctx)->msg);
        memcpy(ids->data, ids_v, (size_t)BT * sizeof *ids_v);
        int32_t *lv = lab->data;
        for (int64_t i = 0; i < BT; i++) lv[i] = (i + 1) % o.seq ? ids_v[i + 1] : LQ_IGNORE_INDEX;
        int64_t counted = 0;
        lq_tensor *sum = lq_llama_loss(ctx, m, ids, lab, &fo, &counted);
        lq_tensor *loss = lq_scale(ctx, sum, counted ? 1.0f / (float)counted : 0.0f);
        double b = now();
        if (!loss || lq_backward(ctx, loss) != LQ_OK) return fail("step", lq_ctx_error(ctx)->msg);
        if (lq_adamw_step(&opt, set->params, ac.lr, &err) != LQ_OK) return fail("adamw", err.msg);
        double c = now();
        float l = *(const float *)loss->data;
        fprintf(stderr, "bench_train: step %d%s: loss %.4f, forward %.2f s, backward + update %.2f s, %.1f tokens/s\n",
                s, s < o.warmup ? " (warm-up)" : "", (double)l, b - a, c - b, (double)BT / (c - a));
        if (s == 0) first_loss = l;
        last_loss = l;
        if (s >= o.warmup) {
            times[s - o.warmup] = c - a;
            fwd_t[s - o.warmup] = b - a;
        }
    }
    lq_arena_stats as = lq_ctx_arena_stats(ctx);
    double peak = rss_peak_mb(), train_peak = rss_hwm_mb();
    qsort(times, (size_t)o.steps, sizeof times[0], cmp_double);
    qsort(fwd_t, (size_t)o.steps, sizeof fwd_t[0], cmp_double);
    double med = o.steps % 2 ? times[o.steps / 2] : 0.5 * (times[o.steps / 2 - 1] + times[o.steps / 2]);
    double fmed = o.steps % 2 ? fwd_t[o.steps / 2] : 0.5 * (fwd_t[o.steps / 2 - 1] + fwd_t[o.steps / 2]);
    printf("{\"impl\": \"loquat\", \"base\": \"%s\", \"checkpoint\": %s, \"threads\": %d, \"batch\": %lld, "
           "\"seq\": %lld, \"r\": %d, \"steps\": %d, \"step_s_median\": %.4f, \"fwd_s_median\": %.4f, "
           "\"tokens_per_s\": %.2f, \"peak_rss_mb\": %.1f, \"train_peak_rss_mb\": %.1f, \"rss_start_mb\": %.1f, "
           "\"rss_after_load_mb\": %.1f, \"weight_mb\": %.2f, \"trainable\": %lld, \"arena_high_water_mb\": %.1f, "
           "\"release_grads\": %s, \"grad_pool_high_water_mb\": %.1f, \"grad_pool_mb\": %.1f, "
           "\"load_s\": %.2f, \"loss_first\": %.4f, \"loss_last\": %.4f, \"openblas_core\": \"%s\"}\n",
           o.keep ? "gguf-native" : "nf4-dq64", o.checkpoint ? "true" : "false", o.threads, (long long)o.batch,
           (long long)o.seq, o.r, o.steps, med, fmed, (double)BT / med, peak, train_peak, rss0, rss_load,
           (double)lq_llama_weight_bytes(m) / 1e6, (long long)lq_params_count_elements(set->params),
           (double)as.high_water / 1e6, o.release ? "true" : "false", (double)as.pool_high_water / 1e6,
           (double)as.pool_capacity / 1e6, load_s, first_loss, last_loss, openblas_get_corename());
    free(ids_v);
    lq_adamw_free(&opt);
    lq_ctx_free(ctx);
    lq_llama_free(m);
    lq_lora_set_free(set);
    return 0;
}
