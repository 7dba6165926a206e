/* bench/bench_gpu.c: GPU benchmarks, one JSON line per measurement: NF4 dequant bandwidth against a
 * device copy (`dequant`), and QLoRA training steps on a random-init Llama (`step`). */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef LQ_HAVE_CUDA

/* A CPU build has nothing to measure: say so (77 = skipped, as the other benches). */
int main(void) {
    printf("bench_gpu: SKIPPED: built without CUDA (make CUDA=1 bench)\n");
    return 77;
}

#else

#include <cuda_runtime_api.h>

#define BENCH_NAME "bench_gpu"
#include "autograd/cuda_impl.h"
#include "bench/bench_gpu_util.h"
#include "core/cuda.h"
#include "core/rng.h"
#include "lora/lora.h"
#include "models/models.h"
#include "quant/dequant_cuda.h"
#include "quant/half.h"
#include "train/train.h"

/*   bench_gpu dequant [--shape 8192x8192 --shape 4096x14336] [--reps 20] [--warmup 3] [--check 1]
 *   bench_gpu step --config bench/smollm2-135m.json [--batch 8] [--seq 512] [--steps 10] [--warmup 3]
 *                  [--r 16] [--alpha 32] [--math tf32|fp32|bf16] [--checkpoint 0|1] [--seed 1] [--label s]
 *                  [--device cuda|cpu]   (cpu: the same step on the CPU, a dry run of this code)
 *
 * dequant: an NF4 weight double-quantized as bitsandbytes stores it (block 64, absmax as 8-bit codes
 * over the dynamic map with an f32 scale per 256 blocks) is expanded to f32 by lq_cuda_dequant, and
 * the same output bytes are copied device to device by cudaMemcpyAsync: the copy is the bandwidth a
 * dequant can hope for. Codes and scales are random bytes (speed does not depend on the values).
 * Each timed with CUDA events around one launch, the two interleaved rep by rep (A B A B), after
 * warm-up; medians. Each rep is queued behind a host function that holds the stream --lead-us
 * microseconds, so both intervals are GPU time (see dq_time; --lead-us 0 gives the older figures,
 * where the dequant's interval held the host's launch latency: ~4 us on an H200, 5% of 8192^2).
 * Bytes counted read + written: dequant n/2 codes + n/64 absmax codes + n/16384 floats + 4n out;
 * copy 4n + 4n. With --check 1 the f32 result is compared bit for bit with the CPU
 * dequant (lq_bnb4_dequantize) over the whole weight. lq_cuda_dequant_bf16 (bf16 output, 2n bytes
 * written) is timed too where this build has it, and checked against the CPU result rounded to bf16;
 * so is lq_cuda_dequant_bf16_rows into rows of cols + 16 (the bf16 QLoRA forward's [W | B] tile:
 * the same bytes, row-strided stores; "bf16_rows_*" fields, timed against the copy of 2n bytes).
 * A "dequant" JSON line per shape with both outputs; the checks run on an output first poisoned
 * with NaN.
 * Before them, one "dequant_ceiling" line per shape: a cudaMemsetAsync of the same output bytes
 * timed against the copy (A B A B), the write-only limit; its ceiling_ratio is the ratio a dequant
 * would show if it took no longer than that memset (the goal's denominator stays the copy).
 *
 * step: what a trainer does per micro-batch on the GPU: zero the adapter grads, mean next-token
 * cross-entropy (lq_llama_loss / counted), backward, AdamW; the context's arena is reset between
 * steps. The base is random (lq_llama_init_random: NF4, double quant, block 64) with the config's
 * shape; LoRA r / alpha on all seven projections, dropout 0. Ids are splitmix64 random tokens (the
 * stream bench/peer_qlora_gpu.py reproduces), labels the ids shifted by one, the last position
 * ignored: the B (T - 1) tokens HF's shifted loss counts. A step's time is host wall-clock up to a
 * device synchronisation after the AdamW update; median over --steps after --warmup. */

#define MAX_REPS 1000
#define MAX_SHAPES 8


static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int fail(const char *what, const char *msg) {
    fprintf(stderr, "bench_gpu: %s: %s\n", what, msg);
    return 1;
}

static const char *device_name(char *buf, size_t n) {
    struct cudaDeviceProp p;
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&p, dev) != cudaSuccess) snprintf(buf, n, "?");
    else snprintf(buf, n, "%s", p.name);
    return buf;
}

/* Device memory in use by the whole process (context and library workspaces included), MB. */
static double device_used_mb(double *total_mb) {
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) return -1;
    if (total_mb) *total_mb = (double)tot / 1e6;
    return (double)(tot - fr) / 1e6;
}

/* ---------------------------------------------------------------------------------------------
 * dequant
 * ------------------------------------------------------------------------------------------- */

typedef struct dq_opts {
    int64_t rows[MAX_SHAPES], cols[MAX_SHAPES];
    int n_shapes, reps, warmup, lead_us;
    bool check;
    uint64_t seed;
} dq_opts;

static float event_ms(cudaEvent_t a, cudaEvent_t b) {
    float ms = -1;
    if (cudaEventElapsedTime(&ms, a, b) != cudaSuccess) return -1;
    return ms;
}

/* Host buffers of one weight and its state, and their device copies. */
typedef struct dq_weight {
    int64_t n, nb, nb2, cols; /* cols: the row length of the rows variant */
    uint8_t *codes, *aq;
    float *a2, offset;
    uint8_t *d_codes, *d_aq;
    float *d_a2, *d_code2;
} dq_weight;

static void dq_weight_free(dq_weight *w) {
    free(w->codes), free(w->aq), free(w->a2);
    lq_cuda_free(w->d_codes), lq_cuda_free(w->d_aq), lq_cuda_free(w->d_a2), lq_cuda_free(w->d_code2);
}

static int dq_weight_make(dq_weight *w, int64_t n, uint64_t seed, lq_err *err) {
    memset(w, 0, sizeof *w);
    w->n = n, w->nb = n / 64, w->nb2 = (w->nb + LQ_BNB_BLOCK2 - 1) / LQ_BNB_BLOCK2;
    w->codes = malloc((size_t)n / 2), w->aq = malloc((size_t)w->nb), w->a2 = malloc((size_t)w->nb2 * sizeof(float));
    if (!w->codes || !w->aq || !w->a2) return fail("dequant", "out of host memory");
    lq_rng rng;
    lq_rng_seed(&rng, seed);
    for (int64_t i = 0; i < n / 2; i++) w->codes[i] = (uint8_t)(lq_rng_u64(&rng) >> 56);
    for (int64_t i = 0; i < w->nb; i++) w->aq[i] = (uint8_t)(lq_rng_u64(&rng) >> 56);
    for (int64_t i = 0; i < w->nb2; i++) w->a2[i] = 0.01f + 0.02f * lq_rng_uniform(&rng);
    w->offset = 0.03f;
    w->d_codes = lq_cuda_malloc((size_t)n / 2, err);
    w->d_aq = lq_cuda_malloc((size_t)w->nb, err);
    w->d_a2 = lq_cuda_malloc((size_t)w->nb2 * sizeof(float), err);
    w->d_code2 = lq_cuda_malloc(256 * sizeof(float), err);
    if (!w->d_codes || !w->d_aq || !w->d_a2 || !w->d_code2) return fail("dequant: device memory", err->msg);
    if (lq_cuda_copy(w->d_codes, w->codes, (size_t)n / 2, LQ_COPY_H2D, NULL, err) != LQ_OK ||
        lq_cuda_copy(w->d_aq, w->aq, (size_t)w->nb, LQ_COPY_H2D, NULL, err) != LQ_OK ||
        lq_cuda_copy(w->d_a2, w->a2, (size_t)w->nb2 * sizeof(float), LQ_COPY_H2D, NULL, err) != LQ_OK ||
        lq_cuda_copy(w->d_code2, lq_bnb_dynamic_map(), 256 * sizeof(float), LQ_COPY_H2D, NULL, err) != LQ_OK)
        return fail("dequant: upload", err->msg);
    return 0;
}

/* What dq_time times against the copy: the dequant (f32 or bf16 output), or a memset of the same
 * output bytes (the write-only ceiling). */
typedef enum dq_what { DQ_F32, DQ_BF16, DQ_BF16_ROWS, DQ_SET_F32, DQ_SET_BF16 } dq_what;
#define DQ_ROW_PAD 16 /* the rows variant's extra columns per row */

static int dq_run(const dq_weight *w, const lq_qstate *qs, void *d_out, dq_what what) {
    lq_err err;
    lq_err_clear(&err);
    lq_status st = LQ_OK;
    switch (what) {
    case DQ_F32: st = lq_cuda_dequant(LQ_DTYPE_NF4, w->d_codes, d_out, w->n, 0, qs, NULL, &err); break;
    case DQ_BF16: st = lq_cuda_dequant_bf16(LQ_DTYPE_NF4, w->d_codes, d_out, w->n, 0, qs, NULL, &err); break;
    case DQ_BF16_ROWS:
        st = lq_cuda_dequant_bf16_rows(LQ_DTYPE_NF4, w->d_codes, d_out, w->n / w->cols, w->cols, w->cols + DQ_ROW_PAD,
                                       0, qs, NULL, &err);
        break;
    case DQ_SET_F32: CK(cudaMemsetAsync(d_out, 0, (size_t)w->n * 4, 0)); break;
    case DQ_SET_BF16: CK(cudaMemsetAsync(d_out, 0, (size_t)w->n * 2, 0)); break;
    }
    return st == LQ_OK ? 0 : fail("dequant", err.msg);
}

/* Times o->reps runs of `what` interleaved with as many copies of the output bytes (A B A B), after
 * o->warmup of each; medians into *dq_ms, *cp_ms. Each rep behind lq_bench_lead(o->lead_us): both
 * intervals GPU time (the copy's, queued behind the dequant, always was); lead_us 0: the older way,
 * where the dequant's interval also held the host's launch latency. */
static int dq_time(const dq_weight *w, const lq_qstate *qs, void *d_out, void *d_copy, dq_what what, const dq_opts *o,
                   double *dq_ms, double *cp_ms) {
    size_t out_bytes = (size_t)w->n * (what == DQ_F32 || what == DQ_SET_F32 ? 4 : 2);
    cudaEvent_t ev[4];
    for (int i = 0; i < 4; i++) CK(cudaEventCreate(&ev[i]));
    double tdq[MAX_REPS], tcp[MAX_REPS];
    for (int r = 0; r < o->warmup + o->reps; r++) {
        CK(lq_bench_lead(0, &o->lead_us));
        CK(cudaEventRecord(ev[0], 0));
        if (dq_run(w, qs, d_out, what)) return 1;
        CK(cudaEventRecord(ev[1], 0));
        CK(cudaEventRecord(ev[2], 0));
        CK(cudaMemcpyAsync(d_copy, d_out, out_bytes, cudaMemcpyDeviceToDevice, 0));
        CK(cudaEventRecord(ev[3], 0));
        CK(cudaEventSynchronize(ev[3]));
        if (r >= o->warmup) {
            tdq[r - o->warmup] = event_ms(ev[0], ev[1]);
            tcp[r - o->warmup] = event_ms(ev[2], ev[3]);
        }
    }
    for (int i = 0; i < 4; i++) CK(cudaEventDestroy(ev[i]));
    *dq_ms = lq_bench_median(tdq, o->reps);
    *cp_ms = lq_bench_median(tcp, o->reps);
    return 0;
}

/* Mismatches of a fresh dequant (`what` DQ_F32 or DQ_BF16) with the CPU's: the output is poisoned
 * (0xff bytes, NaN) first, so an element the kernel never writes counts too; ref is the CPU's f32
 * result, ref16 its bf16 rounding; got: host room for n floats. -1 on failure. */
static int64_t dq_mismatches(const dq_weight *w, const lq_qstate *qs, void *d_out, dq_what what, const float *ref,
                             const uint16_t *ref16, void *got) {
    lq_err err;
    lq_err_clear(&err);
    const int64_t n = w->n, C = w->cols, ld = what == DQ_BF16_ROWS ? C + DQ_ROW_PAD : C;
    const size_t bytes = (size_t)(n / C * ld) * (what == DQ_F32 ? 4 : 2);
    if (lq_cuda_memset(d_out, 0xff, bytes, NULL, &err) != LQ_OK || dq_run(w, qs, d_out, what) ||
        lq_cuda_sync(NULL, &err) != LQ_OK || lq_cuda_copy(got, d_out, bytes, LQ_COPY_D2H, NULL, &err) != LQ_OK) {
        if (err.msg[0]) fail("dequant: check", err.msg);
        return -1;
    }
    int64_t bad = 0;
    if (what == DQ_F32)
        for (int64_t i = 0; i < n; i++) bad += memcmp(&ref[i], (const float *)got + i, 4) != 0;
    else
        for (int64_t i = 0; i < n; i++) bad += ((const uint16_t *)got)[i / C * ld + i % C] != ref16[i];
    return bad;
}

/* Per shape: the write-only ceiling (a memset of the output bytes against the copy), then the
 * dequant: f32 and bf16 output against the copy, each checked against the CPU. */
static int bench_dequant(const dq_opts *o) {
    char dev[256];
    device_name(dev, sizeof dev);
    bool have_bf16 = lq_cuda_dequant_bf16_supported(LQ_DTYPE_NF4);
    int rc = 0;
    for (int s = 0; s < o->n_shapes && !rc; s++) {
        int64_t R = o->rows[s], C = o->cols[s], n = R * C;
        lq_err err;
        lq_err_clear(&err);
        dq_weight w;
        rc = dq_weight_make(&w, n, o->seed + (uint64_t)s, &err);
        w.cols = C;
        float *d_out = rc ? NULL : lq_cuda_malloc((size_t)n * 4, &err); /* room for the rows variant too */
        float *d_copy = d_out ? lq_cuda_malloc((size_t)n * 4, &err) : NULL;
        if (!rc && !d_copy) rc = fail("dequant: device memory", err.msg);
        lq_qstate qs = {.block = 64, .absmax_q = w.d_aq, .absmax2 = w.d_a2, .code2 = w.d_code2,
                        .block2 = LQ_BNB_BLOCK2, .offset = w.offset, .device = true};
        /* bytes moved: read codes + absmax codes + nested scales, write the output */
        const double in_b = (double)n / 2 + (double)w.nb + 4.0 * (double)w.nb2 + 256 * 4;
        const double dq_b = in_b + 4.0 * (double)n, cp_b = 8.0 * (double)n, b_b = in_b + 2.0 * (double)n,
                     bc_b = 4.0 * (double)n;
        /* the write-only ceiling: how fast these output bytes can be written at all; ceiling_ratio =
         * the ratio a dequant would reach if it took no longer than this memset */
        double set_ms = 0, scp_ms = 0, set16_ms = 0, scp16_ms = 0;
        if (!rc) rc = dq_time(&w, &qs, d_out, d_copy, DQ_SET_F32, o, &set_ms, &scp_ms);
        if (!rc && have_bf16)
            rc = dq_time(&w, &qs, d_out, d_copy, DQ_SET_BF16, o, &set16_ms, &scp16_ms);
        if (!rc) {
            double cp_gbs = cp_b / (scp_ms * 1e-3) / 1e9;
            printf("{\"bench\": \"dequant_ceiling\", \"device\": \"%s\", \"dtype\": \"nf4-dq64\", \"rows\": %lld, "
                   "\"cols\": %lld, \"reps\": %d, \"lead_us\": %d, \"memset_ms\": %.4f, \"memset_gbps\": %.1f, "
                   "\"copy_ms\": %.4f, \"copy_gbps\": %.1f, \"ceiling_ratio\": %.3f",
                   dev, (long long)R, (long long)C, o->reps, o->lead_us, set_ms,
                   4.0 * (double)n / (set_ms * 1e-3) / 1e9, scp_ms, cp_gbs, dq_b / (set_ms * 1e-3) / 1e9 / cp_gbs);
            if (have_bf16) {
                double c16 = bc_b / (scp16_ms * 1e-3) / 1e9;
                printf(", \"bf16_memset_ms\": %.4f, \"bf16_memset_gbps\": %.1f, \"bf16_copy_ms\": %.4f, "
                       "\"bf16_copy_gbps\": %.1f, \"bf16_ceiling_ratio\": %.3f",
                       set16_ms, 2.0 * (double)n / (set16_ms * 1e-3) / 1e9, scp16_ms, c16,
                       b_b / (set16_ms * 1e-3) / 1e9 / c16);
            }
            printf("}\n");
            fflush(stdout);
        }
        /* the CPU's result, compared with the f32 output and (rounded to bf16) the bf16 one */
        float *ref = NULL;
        uint16_t *ref16 = NULL;
        void *got = NULL;
        if (!rc && o->check) {
            ref = malloc((size_t)n * 4), ref16 = malloc((size_t)n * 2), got = malloc((size_t)n * 4);
            if (!ref || !ref16 || !got) rc = fail("dequant", "out of host memory for the check");
            else {
                lq_qstate hqs = {.block = 64, .absmax_q = w.aq, .absmax2 = w.a2, .code2 = lq_bnb_dynamic_map(),
                                 .block2 = LQ_BNB_BLOCK2, .offset = w.offset};
                lq_bnb4_dequantize(LQ_DTYPE_NF4, w.codes, n, &hqs, ref);
                for (int64_t i = 0; i < n; i++) ref16[i] = lq_f32_to_bf16(ref[i]);
            }
        }
        double dq_ms = 0, cp_ms = 0, bq_ms = 0, bc_ms = 0;
        int64_t bad = -1, bad16 = -1;
        if (!rc) rc = dq_time(&w, &qs, d_out, d_copy, DQ_F32, o, &dq_ms, &cp_ms);
        if (!rc && ref && (bad = dq_mismatches(&w, &qs, d_out, DQ_F32, ref, ref16, got)) < 0) rc = 1;
        if (!rc && have_bf16) rc = dq_time(&w, &qs, d_out, d_copy, DQ_BF16, o, &bq_ms, &bc_ms);
        if (!rc && have_bf16 && ref && (bad16 = dq_mismatches(&w, &qs, d_out, DQ_BF16, ref, ref16, got)) < 0) rc = 1;
        /* the rows variant, where the kernel takes the shape */
        bool rows_ok = have_bf16 &&
                       lq_cuda_dequant_bf16_rows_ok(LQ_DTYPE_NF4, w.d_codes, d_out, R, C, C + DQ_ROW_PAD, 0, &qs);
        double rq_ms = 0, rc_ms = 0;
        int64_t badr = -1;
        if (!rc && rows_ok) rc = dq_time(&w, &qs, d_out, d_copy, DQ_BF16_ROWS, o, &rq_ms, &rc_ms);
        if (!rc && rows_ok && ref && (badr = dq_mismatches(&w, &qs, d_out, DQ_BF16_ROWS, ref, ref16, got)) < 0) rc = 1;
        if (!rc) {
            double dq_gbs = dq_b / (dq_ms * 1e-3) / 1e9, cp_gbs = cp_b / (cp_ms * 1e-3) / 1e9;
            printf("{\"bench\": \"dequant\", \"device\": \"%s\", \"dtype\": \"nf4-dq64\", "
                   "\"rows\": %lld, \"cols\": %lld, \"reps\": %d, \"lead_us\": %d, \"out\": \"f32\", "
                   "\"dequant_ms\": %.4f, "
                   "\"copy_ms\": %.4f, \"dequant_bytes\": %.0f, \"copy_bytes\": %.0f, \"dequant_gbps\": %.1f, "
                   "\"copy_gbps\": %.1f, \"ratio\": %.3f, \"mismatches\": %lld",
                   dev, (long long)R, (long long)C, o->reps, o->lead_us, dq_ms, cp_ms, dq_b, cp_b, dq_gbs, cp_gbs,
                   dq_gbs / cp_gbs, (long long)bad);
            if (have_bf16) {
                double b_gbs = b_b / (bq_ms * 1e-3) / 1e9, bc_gbs = bc_b / (bc_ms * 1e-3) / 1e9;
                printf(", \"bf16_dequant_ms\": %.4f, \"bf16_copy_ms\": %.4f, \"bf16_dequant_gbps\": %.1f, "
                       "\"bf16_copy_gbps\": %.1f, \"bf16_ratio\": %.3f, \"bf16_mismatches\": %lld",
                       bq_ms, bc_ms, b_gbs, bc_gbs, b_gbs / bc_gbs, (long long)bad16);
                if (rows_ok) {
                    double r_gbs = b_b / (rq_ms * 1e-3) / 1e9, rc_gbs = bc_b / (rc_ms * 1e-3) / 1e9;
                    printf(", \"bf16_rows_ms\": %.4f, \"bf16_rows_copy_ms\": %.4f, \"bf16_rows_gbps\": %.1f, "
                           "\"bf16_rows_ratio\": %.3f, \"bf16_rows_mismatches\": %lld",
                           rq_ms, rc_ms, r_gbs, r_gbs / rc_gbs, (long long)badr);
                }
            } else {
                printf(", \"bf16\": null");
            }
            printf("}\n");
            fflush(stdout);
        }
        free(ref), free(ref16), free(got);
        lq_cuda_free(d_out), lq_cuda_free(d_copy);
        dq_weight_free(&w);
    }
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * step
 * ------------------------------------------------------------------------------------------- */

#define MAX_STEPS 256

typedef struct st_opts {
    const char *config, *label;
    int64_t batch, seq;
    int r, steps, warmup;
    float alpha;
    lq_cuda_math math;
    bool checkpoint;
    bool cpu; /* --device cpu: the same step on the CPU (a dry run of this code without a GPU) */
    uint64_t seed;
} st_opts;

/* splitmix64: the id generator bench/peer_qlora_gpu.py (and bench_train / peer_lora) reimplement. */
static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static const char *math_name(lq_cuda_math m) {
    return m == LQ_CUDA_MATH_FP32 ? "fp32" : m == LQ_CUDA_MATH_BF16 ? "bf16" : "tf32";
}

/* Weights of a Llama of this config (embedding, every projection, norms, lm_head unless tied). */
static int64_t llama_params(const lq_llama_config *c) {
    int64_t H = c->hidden_size, I = c->intermediate_size, D = c->head_dim;
    int64_t q = c->num_attention_heads * D, kv = c->num_key_value_heads * D;
    int64_t layer = H * q + 2 * H * kv + q * H + 3 * H * I + 2 * H;
    return c->num_hidden_layers * layer + H + c->vocab_size * H * (c->tie_word_embeddings ? 1 : 2);
}

static int bench_step(const st_opts *o) {
    lq_err err;
    lq_err_clear(&err);
    char dev[256] = "cpu";
    if (!o->cpu) device_name(dev, sizeof dev);
    lq_llama_config cfg;
    if (lq_llama_config_load(&cfg, o->config, &err) != LQ_OK) return fail(o->config, err.msg);

    double t0 = now();
    lq_llama_load_opts lo = {.quant = LQ_BASE_NF4, .block_size = 64, .double_quant = true};
    lq_llama_model *m = NULL;
    if (lq_llama_init_random(&cfg, &lo, o->seed, &m, &err) != LQ_OK) return fail("init_random", err.msg);
    double init_s = now() - t0;
    lq_lora_cfg lc = {.r = o->r, .alpha = o->alpha, .dropout = 0.0f, .targets = LQ_LORA_ALL_LINEAR};
    lq_lora_set *set = NULL;
    if (lq_llama_lora_create(m, &lc, o->seed, &set, &err) != LQ_OK) return fail("lora", err.msg);
    t0 = now();
    if (!o->cpu && lq_llama_to_device(m, &err) != LQ_OK) return fail("to_device", err.msg);
    if (!o->cpu && lq_params_to_device(set->params, &err) != LQ_OK) return fail("params_to_device", err.msg);
    double upload_s = now() - t0;
    /* torch.optim.AdamW's defaults with PEFT's usual learning rate (peer_qlora_gpu.py: the same) */
    lq_adamw_cfg ac = {.lr = 2e-4f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.01f, .n_threads = 1};
    lq_adamw opt;
    if (lq_adamw_init(&opt, set->params, &ac, &err) != LQ_OK) return fail("adamw", err.msg);
    /* LOQUAT_PROFILE=1: every op timed on its own (the device waited for after each): a breakdown,
     * not a throughput figure */
    const char *prof = getenv("LOQUAT_PROFILE");
    bool profile = prof && *prof && strcmp(prof, "0") != 0;
    lq_ctx_opts co = {.n_threads = 1, .seed = o->seed, .device = o->cpu ? LQ_DEVICE_CPU : LQ_DEVICE_CUDA,
                      .cuda_math = o->math, .profile = profile};
    lq_ctx *ctx = NULL;
    if (lq_ctx_init(&ctx, &co, &err) != LQ_OK) return fail("context", err.msg);
    lq_ctx_set_training(ctx, true);
    lq_ctx_set_release_grads(ctx, true);
    double weights_mb = (double)lq_llama_weight_bytes(m) / 1e6;

    int64_t V = cfg.vocab_size, BT = o->batch * o->seq, sh[2] = {o->batch, o->seq};
    int32_t *ids_v = malloc((size_t)BT * sizeof *ids_v);
    if (!ids_v) return fail("ids", "out of memory");
    uint64_t gs = o->seed;
    for (int64_t i = 0; i < BT; i++) ids_v[i] = (int32_t)(splitmix(&gs) % (uint64_t)V);

    double times[MAX_STEPS], first_loss = 0, last_loss = 0;
    lq_llama_fwd_opts fo = {.checkpoint = o->checkpoint};
    for (int s = 0; s < o->warmup + o->steps; s++) {
        double a = now();
        lq_ctx_step_reset(ctx);
        lq_params_zero_grad(set->params);
        /* i32 ids and labels stay on the host in a CUDA context; the ops that read them upload them */
        lq_tensor *ids = lq_new(ctx, LQ_DTYPE_I32, 2, sh), *lab = lq_new(ctx, LQ_DTYPE_I32, 2, sh);
        if (!ids || !lab) return fail("step", lq_ctx_error(ctx)->msg);
        memcpy(ids->data, ids_v, (size_t)BT * sizeof *ids_v);
        int32_t *lv = lab->data;
        for (int64_t i = 0; i < BT; i++) lv[i] = (i + 1) % o->seq ? ids_v[i + 1] : LQ_IGNORE_INDEX;
        int64_t counted = 0;
        lq_tensor *sum = lq_llama_loss(ctx, m, ids, lab, &fo, &counted);
        lq_tensor *loss = lq_scale(ctx, sum, counted ? 1.0f / (float)counted : 0.0f);
        if (!loss || lq_backward(ctx, loss) != LQ_OK) return fail("step", lq_ctx_error(ctx)->msg);
        if (lq_adamw_step(&opt, set->params, ac.lr, &err) != LQ_OK) return fail("adamw", err.msg);
        if (!o->cpu && lq_cuda_sync(NULL, &err) != LQ_OK) return fail("step: sync", err.msg);
        double c = now();
        float l = lq_tensor_get_f32(ctx, loss, 0);
        fprintf(stderr, "bench_gpu: step %d%s: loss %.4f, %.2f ms, %.0f tokens/s\n", s, s < o->warmup ? " (warm-up)" : "",
                (double)l, 1e3 * (c - a), (double)BT / (c - a));
        if (l != l) return fail("step", "the loss is NaN");
        if (s == 0) first_loss = l;
        last_loss = l;
        if (s >= o->warmup) times[s - o->warmup] = c - a;
        if (s + 1 == o->warmup) { /* the steady state from here: the arena has found its size */
            lq_cuda_mem_reset_peak();
            if (profile) {
                char tmp[64];
                lq_ctx_profile_report(ctx, tmp, sizeof tmp, true);
            }
        }
    }
    if (profile) {
        static char rep[16384];
        lq_ctx_profile_report(ctx, rep, sizeof rep, false);
        fprintf(stderr, "bench_gpu: per-op time over the %d timed steps (%s):\n%s", o->steps, o->label ? o->label : "",
                rep);
    }
    uint64_t act_shared = 0, act_made = 0;
    lq_cuda_act_bf16_counts(ctx, &act_shared, &act_made);
    if (act_made)
        fprintf(stderr, "bench_gpu: bf16 activation copies per step: %.1f made, %.1f shared\n",
                (double)act_made / (o->warmup + o->steps), (double)act_shared / (o->warmup + o->steps));
    lq_cuda_mem mem = lq_cuda_mem_stats();
    double total_mb = -1, used_mb = o->cpu ? -1 : device_used_mb(&total_mb);
    double med = lq_bench_median(times, o->steps);
    printf("{\"bench\": \"step\", \"impl\": \"loquat\", \"label\": \"%s\", \"device\": \"%s\", \"config\": \"%s\", "
           "\"params\": %lld, \"base\": \"nf4-dq64\", \"cuda_math\": \"%s\", \"checkpoint\": %s, \"batch\": %lld, "
           "\"seq\": %lld, \"r\": %d, \"alpha\": %.1f, \"trainable\": %lld, \"warmup\": %d, \"steps\": %d, "
           "\"ms_per_step\": %.2f, \"tokens_per_s\": %.1f, \"peak_mem_mb\": %.1f, \"device_used_mb\": %.1f, "
           "\"device_total_mb\": %.1f, \"weights_mb\": %.1f, \"init_s\": %.2f, \"upload_s\": %.2f, "
           "\"loss_first\": %.4f, \"loss_last\": %.4f}\n",
           o->label ? o->label : "", o->cpu ? "cpu" : dev, o->config, (long long)llama_params(&cfg), math_name(o->math),
           o->checkpoint ? "true" : "false", (long long)o->batch, (long long)o->seq, o->r, (double)o->alpha,
           (long long)lq_params_count_elements(set->params), o->warmup, o->steps, 1e3 * med, (double)BT / med,
           (double)mem.peak / 1e6, used_mb, total_mb, weights_mb, init_s, upload_s, first_loss, last_loss);
    free(ids_v);
    lq_adamw_free(&opt);
    lq_ctx_free(ctx);
    lq_llama_free(m);
    lq_lora_set_free(set);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * command line
 * ------------------------------------------------------------------------------------------- */

/* Whether a CUDA device is usable; if not, says why (the caller exits 77: skipped). */
static bool have_device(void) {
    char buf[512];
    if (lq_cuda_devices(buf, sizeof buf) >= 1) return true;
    printf("bench_gpu: SKIPPED: %s\n", buf);
    return false;
}

static int usage(void) {
    fprintf(stderr,
            "usage: bench_gpu dequant [--shape RxC]... [--reps 20] [--warmup 3] [--lead-us 200] [--check 1]\n"
            "                         [--seed 1]\n"
            "       bench_gpu step [--config bench/smollm2-135m.json] [--batch 8] [--seq 512] [--steps 10]\n"
            "                      [--warmup 3] [--r 16] [--alpha 32] [--math tf32|fp32|bf16] [--checkpoint 0|1]\n"
            "                      [--seed 1] [--label text] [--device cuda|cpu]\n");
    return 2;
}

static int main_dequant(int argc, char **argv) {
    dq_opts o = {.reps = 20, .warmup = 3, .lead_us = 200, .check = true, .seed = 1};
    for (int i = 2; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long long r = 0, c = 0;
        if (!v) return usage();
        if (!strcmp(a, "--shape") && o.n_shapes < MAX_SHAPES && sscanf(v, "%lldx%lld", &r, &c) == 2) {
            o.rows[o.n_shapes] = r, o.cols[o.n_shapes++] = c;
        } else if (!strcmp(a, "--reps")) o.reps = atoi(v);
        else if (!strcmp(a, "--warmup")) o.warmup = atoi(v);
        else if (!strcmp(a, "--check")) o.check = atoi(v) != 0;
        else if (!strcmp(a, "--lead-us")) o.lead_us = atoi(v);
        else if (!strcmp(a, "--seed")) o.seed = strtoull(v, NULL, 10);
        else return usage();
    }
    if (!o.n_shapes) {
        o.rows[0] = 8192, o.cols[0] = 8192;
        o.rows[1] = 4096, o.cols[1] = 14336;
        o.n_shapes = 2;
    }
    for (int s = 0; s < o.n_shapes; s++)
        if (o.rows[s] < 1 || o.cols[s] < 1 || (o.rows[s] * o.cols[s]) % 64) {
            fprintf(stderr, "bench_gpu: --shape %lldx%lld: rows * cols must be a positive multiple of 64\n",
                    (long long)o.rows[s], (long long)o.cols[s]);
            return 2;
        }
    if (o.reps < 1 || o.reps > MAX_REPS || o.warmup < 0 || o.lead_us < 0 || o.lead_us > 100000) {
        fprintf(stderr, "bench_gpu: reps 1..%d, warmup >= 0, lead-us 0..100000\n", MAX_REPS);
        return 2;
    }
    if (!have_device()) return 77;
    return bench_dequant(&o);
}

static int main_step(int argc, char **argv) {
    st_opts o = {.config = "bench/smollm2-135m.json", .batch = 8, .seq = 512, .r = 16, .alpha = 32.0f, .steps = 10,
                 .warmup = 3, .math = LQ_CUDA_MATH_TF32, .seed = 1};
    for (int i = 2; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return usage();
        if (!strcmp(a, "--config")) o.config = v;
        else if (!strcmp(a, "--label")) o.label = v;
        else if (!strcmp(a, "--batch")) o.batch = atoll(v);
        else if (!strcmp(a, "--seq")) o.seq = atoll(v);
        else if (!strcmp(a, "--r")) o.r = atoi(v);
        else if (!strcmp(a, "--alpha")) o.alpha = strtof(v, NULL);
        else if (!strcmp(a, "--steps")) o.steps = atoi(v);
        else if (!strcmp(a, "--warmup")) o.warmup = atoi(v);
        else if (!strcmp(a, "--checkpoint")) o.checkpoint = atoi(v) != 0;
        else if (!strcmp(a, "--seed")) o.seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--device") && (!strcmp(v, "cpu") || !strcmp(v, "cuda"))) o.cpu = !strcmp(v, "cpu");
        else if (!strcmp(a, "--math") && !strcmp(v, "tf32")) o.math = LQ_CUDA_MATH_TF32;
        else if (!strcmp(a, "--math") && !strcmp(v, "fp32")) o.math = LQ_CUDA_MATH_FP32;
        else if (!strcmp(a, "--math") && !strcmp(v, "bf16")) o.math = LQ_CUDA_MATH_BF16;
        else return usage();
    }
    if (o.batch < 1 || o.seq < 2 || o.r < 1 || o.steps < 1 || o.steps > MAX_STEPS || o.warmup < 0) {
        fprintf(stderr, "bench_gpu: batch >= 1, seq >= 2, r >= 1, steps 1..%d, warmup >= 0\n", MAX_STEPS);
        return 2;
    }
    if (!o.cpu && !have_device()) return 77;
    return bench_step(&o);
}

int main(int argc, char **argv) {
    if (argc < 2) return usage();
    if (!strcmp(argv[1], "dequant")) return main_dequant(argc, argv);
    if (!strcmp(argv[1], "step")) return main_step(argc, argv);
    return usage();
}

#endif
