/* bench/bench_quant.c: dequant throughput beside memcpy, and the tiled quantized matmul beside
 * dequantize-then-sgemm and plain fp32 sgemm, measured side by side (A B A B, medians). */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "autograd/autograd.h"
#include "quant/quant.h"

#define MAX_REPS 64

typedef struct opts {
    int64_t n;         /* elements in the dequant throughput test */
    int reps;          /* timed rounds per comparison */
    int64_t tokens;    /* rows of x for the matmul shapes */
    int64_t tokens_4k; /* rows of x for the 4096 x 4096 shape */
    const char *commit;
    bool dequant, matmul;
    int ctx_threads; /* threads of the matmul's context (dequant); 0 = 2 then 1 */
    bool sweep;      /* tile sizes (only with --only sweep) */
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

static double median(const double *v, int n) {
    double s[MAX_REPS];
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    return n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

static void *xmalloc(size_t n) {
    void *p = aligned_alloc(64, (n + 63) / 64 * 64);
    if (!p) {
        fprintf(stderr, "bench_quant: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    memset(p, 0, n); /* touch every page before timing */
    return p;
}

/* --- quantized buffers ------------------------------------------------------------------------ */

typedef struct qbuf {
    lq_dtype t;
    const lq_dtype_traits *tr;
    void *codes;
    lq_qstate *qs;
    int64_t n;
} qbuf;

#define STATE_BLOCK 64

/* n elements of format t made from N(0, 0.02^2) floats with a few outliers: a chunk is quantized
 * through the traits table's encoder and repeated (codes and scales), which the dequantizer
 * cannot tell from fresh data. false when this build has no encoder for t. */
static bool qbuf_make(qbuf *q, lq_dtype t, int64_t n, uint64_t seed) {
    memset(q, 0, sizeof *q);
    const lq_dtype_traits *tr = lq_dtype_info(t);
    if (!tr || !tr->from_f32 || !tr->to_f32) return false;
    int64_t unit = tr->block_size > STATE_BLOCK ? tr->block_size : STATE_BLOCK;
    int64_t chunk = (int64_t)1 << 20;
    chunk = chunk / unit * unit;
    if (n % unit) return false;
    if (chunk > n) chunk = n;
    q->t = t;
    q->tr = tr;
    q->n = n;
    size_t bytes = lq_dtype_bytes(t, n), cbytes = lq_dtype_bytes(t, chunk);
    q->codes = xmalloc(bytes);
    int64_t nblk = (n + STATE_BLOCK - 1) / STATE_BLOCK, cblk = chunk / STATE_BLOCK;
    if (tr->needs_qstate) {
        q->qs = lq_qstate_alloc(nblk, STATE_BLOCK, false, false, 0);
        if (!q->qs) return false;
        q->qs->bits = t == LQ_DTYPE_I4 ? 4 : 8;
    }
    float *src = xmalloc((size_t)chunk * sizeof(float));
    lq_rng rng;
    lq_rng_seed(&rng, seed);
    for (int64_t i = 0; i < chunk; i++) src[i] = 0.02f * lq_rng_normal(&rng) * (i % 251 == 0 ? 6.0f : 1.0f);
    if (q->qs) { /* symmetric max|x| / qmax scales: the affine encoders take them as given */
        float qmax = (float)((1 << (q->qs->bits - 1)) - 1);
        for (int64_t b = 0; b < cblk; b++) {
            float m = 0.0f;
            for (int64_t i = b * STATE_BLOCK; i < (b + 1) * STATE_BLOCK; i++) m = fmaxf(m, fabsf(src[i]));
            q->qs->absmax[b] = m > 0.0f ? m / qmax : 1.0f;
        }
    }
    lq_err err = {0};
    if (tr->from_f32(src, q->codes, chunk, q->qs, 0, &err) != LQ_OK) {
        fprintf(stderr, "bench_quant: %s encoder: %s\n", tr->name, err.msg);
        exit(1);
    }
    free(src);
    for (int64_t off = chunk; off < n; off += chunk) {
        int64_t k = n - off < chunk ? n - off : chunk;
        memcpy((char *)q->codes + lq_dtype_bytes(t, off), q->codes, lq_dtype_bytes(t, k));
        if (q->qs)
            for (int64_t b = 0; b < k / STATE_BLOCK; b++) q->qs->absmax[off / STATE_BLOCK + b] = q->qs->absmax[b % cblk];
    }
    (void)cbytes;
    return true;
}

static void qbuf_free(qbuf *q) {
    free(q->codes);
    lq_qstate_free(q->qs);
}

/* to_f32 over n elements on `threads` threads, each a contiguous run of whole blocks. */
static void dequant_par(const qbuf *q, const void *codes, float *dst, int64_t n, int threads) {
    int64_t unit = q->tr->block_size * 2;
#pragma omp parallel num_threads(threads)
    {
        int tid = 0, cnt = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        cnt = omp_get_num_threads();
#endif
        int64_t units = n / unit;
        int64_t a = units * tid / cnt * unit, b = tid == cnt - 1 ? n : units * (tid + 1) / cnt * unit;
        if (b > a) q->tr->to_f32((const char *)codes + lq_dtype_bytes(q->t, a), dst + a, b - a, q->qs, a);
    }
}

static void memcpy_par(float *dst, const float *src, int64_t n, int threads) {
#pragma omp parallel num_threads(threads)
    {
        int tid = 0, cnt = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        cnt = omp_get_num_threads();
#endif
        int64_t a = n * tid / cnt, b = n * (tid + 1) / cnt;
        memcpy(dst + a, src + a, (size_t)(b - a) * sizeof(float));
    }
}

/* --- (a) dequant throughput ------------------------------------------------------------------- */

static void bench_dequant(const opts *o) {
    const lq_dtype types[] = {LQ_DTYPE_NF4, LQ_DTYPE_FP4, LQ_DTYPE_Q4_0, LQ_DTYPE_Q8_0, LQ_DTYPE_I8, LQ_DTYPE_BF16};
    int64_t n = o->n;
    float *dst = xmalloc((size_t)n * sizeof(float)), *msrc = xmalloc((size_t)n * sizeof(float));
    float *mdst = xmalloc((size_t)n * sizeof(float));
    double gb = (double)n * sizeof(float) / 1e9;
    printf("\n## Dequant throughput: %lld elements (%.0f MB of f32 output), medians of %d rounds\n\n", (long long)n,
           gb * 1e3, o->reps);
    printf("| format | threads | dequant GB/s | memcpy GB/s | dequant / memcpy |\n|---|---|---|---|---|\n");
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        qbuf q;
        if (!qbuf_make(&q, types[i], n, 1 + i)) {
            printf("| %s | - | not in this build's traits table | | |\n", lq_dtype_name(types[i]));
            continue;
        }
        for (int th = 1; th <= 2; th++) {
            double ta[MAX_REPS], tb[MAX_REPS];
            dequant_par(&q, q.codes, dst, n, th); /* warm-up */
            memcpy_par(mdst, msrc, n, th);
            for (int r = 0; r < o->reps; r++) {
                double t0 = now();
                dequant_par(&q, q.codes, dst, n, th);
                double t1 = now();
                memcpy_par(mdst, msrc, n, th);
                double t2 = now();
                ta[r] = t1 - t0;
                tb[r] = t2 - t1;
            }
            double a = gb / median(ta, o->reps), b = gb / median(tb, o->reps);
            printf("| %s | %d | %.2f | %.2f | %.0f%% |\n", q.tr->name, th, a, b, 100.0 * a / b);
            fflush(stdout);
        }
        qbuf_free(&q);
    }
    free(dst);
    free(msrc);
    free(mdst);
}

/* --- (b) matmul -------------------------------------------------------------------------------- */

/* y (M, N) = x (M, K) W^T three ways, and dX (M, K) = dY (M, N) W three ways, per round in turn:
 * forward   fp32 = cblas_sgemm on the float W; deq = dequantize all of W then that sgemm;
 *           tiled = lq_qmatmul (output allocation included);
 * backward  fp32 = cblas_sgemm accumulating into dX; op = lq_matmul_t's backward on the float W;
 *           tiled = lq_qmatmul's (both op backwards include what lq_backward_from does around the
 *           product: a zeroed dY buffer the upstream gradient is added into, a zeroed dX). */
static void bench_shape(const opts *o, lq_ctx *ctx, lq_dtype t, int64_t N, int64_t K, int64_t M) {
    qbuf q;
    if (!qbuf_make(&q, t, N * K, 7)) {
        printf("| %s | %lldx%lld | not in this build |\n", lq_dtype_name(t), (long long)N, (long long)K);
        return;
    }
    int threads = lq_ctx_threads(ctx);
    float *wf = xmalloc((size_t)(N * K) * sizeof(float)), *wd = xmalloc((size_t)(N * K) * sizeof(float));
    float *y = xmalloc((size_t)(M * N) * sizeof(float)), *dx = xmalloc((size_t)(M * K) * sizeof(float));
    dequant_par(&q, q.codes, wf, N * K, threads); /* the fp32 baseline multiplies the same values */
    lq_tensor w, wft;
    lq_err err = {0};
    if (lq_tensor_init(&w, t, 2, (int64_t[]){N, K}, q.codes, &err) != LQ_OK ||
        lq_tensor_init(&wft, LQ_DTYPE_F32, 2, (int64_t[]){N, K}, wf, &err) != LQ_OK) {
        fprintf(stderr, "bench_quant: %s\n", err.msg);
        exit(1);
    }
    w.qs = q.qs;
    lq_rng rng;
    lq_rng_seed(&rng, 5);
    lq_tensor *x = lq_new_leaf(ctx, 2, (int64_t[]){M, K}, true);
    lq_tensor *gy = lq_new(ctx, LQ_DTYPE_F32, 2, (int64_t[]){M, N});
    if (!x || !gy) exit(1);
    lq_fill_normal(x, &rng, 1.0f);
    lq_fill_normal(gy, &rng, 1.0f);
    lq_ctx_mark mark = lq_ctx_get_mark(ctx);
    const float *xd = x->data, *gd = gy->data;
    double tf[MAX_REPS], td[MAX_REPS], tq[MAX_REPS], bf[MAX_REPS], bo[MAX_REPS], bq[MAX_REPS];
    for (int r = -1; r < o->reps; r++) { /* round -1 warms up */
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, 1.0f, xd, (int)K, wf, (int)K, 0.0f, y,
                    (int)N);
        double t1 = now();
        dequant_par(&q, q.codes, wd, N * K, threads);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, 1.0f, xd, (int)K, wd, (int)K, 0.0f, y,
                    (int)N);
        double t2 = now();
        lq_tensor *yq = lq_qmatmul(ctx, x, &w);
        double t3 = now();
        if (!yq) {
            fprintf(stderr, "bench_quant: qmatmul: %s\n", lq_ctx_error(ctx)->msg);
            exit(1);
        }
        memset(dx, 0, (size_t)(M * K) * sizeof(float));
        double t4 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)K, (int)N, 1.0f, gd, (int)N, wf, (int)K, 1.0f,
                    dx, (int)K);
        double t5 = now();
        x->grad = NULL;
        lq_status s = lq_backward_from(ctx, yq, gy);
        double t6 = now();
        x->grad = NULL;
        lq_tensor *yf = s == LQ_OK ? lq_matmul_t(ctx, x, &wft, false, true) : NULL;
        double t7 = now();
        if (s == LQ_OK) s = yf ? lq_backward_from(ctx, yf, gy) : LQ_ERR_INTERNAL;
        double t8 = now();
        if (s != LQ_OK) {
            fprintf(stderr, "bench_quant: backward: %s\n", lq_ctx_error(ctx)->msg);
            exit(1);
        }
        x->grad = NULL;
        lq_ctx_reset_to(ctx, mark);
        if (r < 0) continue;
        tf[r] = t1 - t0;
        td[r] = t2 - t1;
        tq[r] = t3 - t2;
        bf[r] = t5 - t4;
        bq[r] = t6 - t5;
        bo[r] = t8 - t7;
    }
    double f = median(tf, o->reps), d = median(td, o->reps), qm = median(tq, o->reps);
    double b_f = median(bf, o->reps), b_o = median(bo, o->reps), b_q = median(bq, o->reps);
    double gflop = 2.0 * (double)M * (double)N * (double)K / 1e9;
    printf("| %s | %lldx%lld | %lld | %.2f (%.0f GF/s) | %.2f | %.2f | %.3f | **%.3f** | %.2f | %.2f | %.2f | %.3f | "
           "**%.3f** |\n",
           q.tr->name, (long long)N, (long long)K, (long long)M, 1e3 * f, gflop / f, 1e3 * d, 1e3 * qm, d / f, qm / f,
           1e3 * b_f, 1e3 * b_o, 1e3 * b_q, b_q / b_f, b_q / b_o);
    fflush(stdout);
    free(wf);
    free(wd);
    free(y);
    free(dx);
    qbuf_free(&q);
}

static void bench_matmul(const opts *o, int threads) {
    lq_ctx *ctx = NULL;
    lq_ctx_opts co = {.n_threads = threads, .arena_bytes = 64u << 20, .seed = 1};
    lq_err err = {0};
    if (lq_ctx_init(&ctx, &co, &err) != LQ_OK) {
        fprintf(stderr, "bench_quant: %s\n", err.msg);
        exit(1);
    }
    lq_ctx_set_grad(ctx, true);
    printf("\n## Quantized matmul, y = x W^T (W out x in), ctx threads %d; medians of %d rounds, ms\n\n", threads,
           o->reps);
    printf("forward: fp32 = cblas_sgemm on the float W (the dequantized values); deq = dequantize all of W "
           "(%d threads) then sgemm; tiled = lq_qmatmul. backward dX = dY W: fp32 = cblas_sgemm; op = lq_matmul_t's "
           "backward on the float W; tiled = lq_qmatmul's (both ops include the autograd's zeroed dY and dX)\n\n",
           threads);
    printf("| format | W | tokens | fp32 ms | deq ms | tiled ms | deq / fp32 | tiled / fp32 | bwd fp32 ms | bwd op ms "
           "| bwd tiled ms | bwd tiled / fp32 | bwd tiled / op |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    const lq_dtype types[] = {LQ_DTYPE_NF4, LQ_DTYPE_Q4_0, LQ_DTYPE_Q8_0, LQ_DTYPE_BF16};
    const int64_t shapes[][2] = {{576, 1536}, {1536, 576}, {4096, 4096}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
            int64_t M = shapes[s][0] == 4096 ? o->tokens_4k : o->tokens;
            bench_shape(o, ctx, types[i], shapes[s][0], shapes[s][1], M);
        }
    lq_ctx_free(ctx);
}

/* Tile sizes of the tiled matmul on one shape, each beside fp32 sgemm in the same round. */
static void bench_sweep(const opts *o, lq_dtype t, int64_t N, int64_t K, int64_t M) {
    /* 0 = the default; 1 << 20 columns = whole rows, i.e. row tiles in the forward too */
    static const lq_qmatmul_tiles tiles[] = {
        {0, 0, 0},          {4096, 128, 64},    {4096, 256, 128},     {2048, 512, 256},      {2048, 1024, 512},
        {1024, 2048, 512},  {2048, 2048, 1024}, {128, 1 << 20, 256}, {1024, 1 << 20, 1024},
    };
    enum { NT = sizeof tiles / sizeof tiles[0] };
    qbuf q;
    if (!qbuf_make(&q, t, N * K, 7)) return;
    lq_ctx *ctx = NULL;
    lq_ctx_opts co = {.n_threads = 2, .arena_bytes = 64u << 20, .seed = 1};
    lq_err err = {0};
    if (lq_ctx_init(&ctx, &co, &err) != LQ_OK) exit(1);
    float *wf = xmalloc((size_t)(N * K) * sizeof(float)), *y = xmalloc((size_t)(M * N) * sizeof(float));
    dequant_par(&q, q.codes, wf, N * K, 2);
    lq_tensor w;
    if (lq_tensor_init(&w, t, 2, (int64_t[]){N, K}, q.codes, &err) != LQ_OK) exit(1);
    w.qs = q.qs;
    lq_rng rng;
    lq_rng_seed(&rng, 5);
    lq_tensor *x = lq_new_leaf(ctx, 2, (int64_t[]){M, K}, true);
    lq_tensor *gy = lq_new(ctx, LQ_DTYPE_F32, 2, (int64_t[]){M, N});
    lq_fill_normal(x, &rng, 1.0f);
    lq_fill_normal(gy, &rng, 1.0f);
    lq_ctx_mark mark = lq_ctx_get_mark(ctx);
    double tf[MAX_REPS], tq[NT][MAX_REPS], tb[NT][MAX_REPS];
    for (int r = -1; r < o->reps; r++) {
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, 1.0f, x->data, (int)K, wf, (int)K,
                    0.0f, y, (int)N);
        double t1 = now();
        if (r >= 0) tf[r] = t1 - t0;
        for (int i = 0; i < NT; i++) {
            t0 = now();
            lq_tensor *yq = lq_qmatmul_tiled(ctx, x, &w, &tiles[i]);
            t1 = now();
            if (!yq || lq_backward_from(ctx, yq, gy) != LQ_OK) exit(1);
            double t2 = now();
            x->grad = NULL;
            lq_ctx_reset_to(ctx, mark);
            if (r >= 0) tq[i][r] = t1 - t0, tb[i][r] = t2 - t1;
        }
    }
    double f = median(tf, o->reps);
    printf("\n## Tile sweep: %s W %lldx%lld, %lld tokens, ctx threads 2; fp32 sgemm %.2f ms (medians of %d)\n\n",
           q.tr->name, (long long)N, (long long)K, (long long)M, 1e3 * f, o->reps);
    printf("| fwd tile rows x cols | bwd tile rows | fwd / fp32 | bwd (incl. zeroing dX) / fp32 fwd |\n|---|---|---|---|\n");
    lq_qmatmul_tiles d = lq_qmatmul_default_tiles(t, N, K);
    for (int i = 0; i < NT; i++) { /* the sizes the op used (clamped to W) */
        int64_t r = tiles[i].fwd_rows ? tiles[i].fwd_rows : d.fwd_rows;
        int64_t c = tiles[i].fwd_cols ? tiles[i].fwd_cols : d.fwd_cols;
        int64_t b = tiles[i].bwd_rows ? tiles[i].bwd_rows : d.bwd_rows;
        printf("| %lld x %lld%s | %lld | %.3f | %.3f |\n", (long long)(r < N ? r : N), (long long)(c < K ? c : K),
               i == 0 ? " (default)" : "", (long long)(b < N ? b : N), median(tq[i], o->reps) / f,
               median(tb[i], o->reps) / f);
    }
    free(wf);
    free(y);
    qbuf_free(&q);
    lq_ctx_free(ctx);
}

static void usage(void) {
    fprintf(stderr,
            "usage: bench_quant [--n ELEMENTS] [--reps R] [--tokens M] [--tokens-4k M] [--commit SHA]\n"
            "                   [--only dequant|matmul|sweep] [--ctx-threads N (default: 2, then 1)]\n");
    exit(2);
}

int main(int argc, char **argv) {
    opts o = {.n = (int64_t)1 << 27, .reps = 9, .tokens = 512, .tokens_4k = 512, .commit = "unknown",
              .dequant = true, .matmul = true};
    for (int i = 1; i < argc; i += 2) { /* every option takes a value */
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        if (!strcmp(a, "--n")) o.n = atoll(v);
        else if (!strcmp(a, "--reps")) o.reps = atoi(v);
        else if (!strcmp(a, "--tokens")) o.tokens = atoll(v);
        else if (!strcmp(a, "--tokens-4k")) o.tokens_4k = atoll(v);
        else if (!strcmp(a, "--commit")) o.commit = v;
        else if (!strcmp(a, "--ctx-threads")) o.ctx_threads = atoi(v);
        else if (!strcmp(a, "--only")) {
            o.dequant = !strcmp(v, "dequant");
            o.matmul = !strcmp(v, "matmul");
            o.sweep = !strcmp(v, "sweep");
        }
        else usage();
    }
    if (o.reps < 1 || o.reps > MAX_REPS || o.n < 4096 || o.n % 4096 || o.tokens < 1 || o.tokens_4k < 1 ||
        o.ctx_threads < 0)
        usage();
    char model[256] = "unknown";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
                snprintf(model, sizeof model, "%s", strchr(line, ':') + 2);
                model[strcspn(model, "\n")] = 0;
                break;
            }
        fclose(f);
    }
    int procs = 1;
#ifdef _OPENMP
    procs = omp_get_num_procs();
#endif
    lq_cpu_features cf = lq_cpu_detect();
    printf("# bench_quant\n\nmachine: %s, %d cores (avx2 %d, avx512f %d); commit %s\n", model, procs, cf.avx2,
           cf.avx512f, o.commit);
    printf("OpenBLAS: %s (core %s), %d threads\n", openblas_get_config(), openblas_get_corename(),
           openblas_get_num_threads());
    if (o.dequant) bench_dequant(&o);
    if (o.sweep) {
        bench_sweep(&o, LQ_DTYPE_NF4, 4096, 4096, o.tokens_4k);
        bench_sweep(&o, LQ_DTYPE_NF4, 576, 1536, o.tokens);
    }
    if (o.matmul) {
        if (o.ctx_threads != 1) bench_matmul(&o, o.ctx_threads ? o.ctx_threads : 2);
        if (o.ctx_threads == 0 || o.ctx_threads == 1) bench_matmul(&o, 1);
    }
    return 0;
}
