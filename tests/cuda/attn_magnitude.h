/* tests/cuda/attn_magnitude.h: the magnitude reference of the attention op's output and gradients
 * (q, k, v, dO contiguous (B, T, H, D); doc (B, T) or NULL), for the suites that check attention
 * against the CPU by the rounding-error bound of its sums rather than by an nmse relative to the
 * result: test_cuda_flash (bf16 kernels) and the fp32 op check (ops_harness.h). */
#ifndef LQ_TESTS_CUDA_ATTN_MAGNITUDE_H
#define LQ_TESTS_CUDA_ATTN_MAGNITUDE_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

/* The magnitude references (double, from the inputs; independent of the kernels): per element the
 * sum of the absolute values of the terms whose sum the quantity is, with P computed here in double
 * by op_attention.c's rules, A_ij = sum_d |dO_id| |v_jd| (the terms of dP = dO V^T, whose rounding
 * error is ~u A, not ~u |dP|) and Dv_i = sum_j P_ij dP_ij's terms sum_j P_ij A_ij:
 *   M_O[i]  = sum_j P_ij |v_j|,                  M_dv[j] = sum_{h, i} P_ij |dO_i|,
 *   M_dq[i] = scale sum_j P_ij (A_ij + sum_l P_il A_il) |k_j|,
 *   M_dk[j] = scale sum_{h, i} P_ij (A_ij + sum_l P_il A_il) |q_i|     (elementwise over d).
 * dq and dk nearly cancel where a row sees few keys (one key: exactly 0 in fp32, while bf16 leaves
 * ~u of the terms), so the bounds are relative to these, not to the results. */
typedef struct attn_mags {
    double *o, *dq, *dk, *dv;
} attn_mags;

static bool attn_magnitudes(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, bool causal, const float *q,
                            const float *k, const float *v, const float *dO, const int32_t *doc, float scale,
                            attn_mags *m) {
    int64_t g = Hq / Hkv;
    int64_t nq = B * T * Hq * D, nk = B * T * Hkv * D;
    m->o = calloc((size_t)nq, sizeof(double));
    m->dq = calloc((size_t)nq, sizeof(double));
    m->dk = calloc((size_t)nk, sizeof(double));
    m->dv = calloc((size_t)nk, sizeof(double));
    double *P = malloc((size_t)T * sizeof(double)), *dP = malloc((size_t)T * sizeof(double));
    bool ok = m->o && m->dq && m->dk && m->dv && P && dP;
    for (int64_t b = 0; ok && b < B; b++)
        for (int64_t h = 0; h < Hq; h++)
            for (int64_t i = 0; i < T; i++) {
                int64_t kh = h / g, qi = ((b * T + i) * Hq + h) * D;
                double mx = -INFINITY, sum = 0.0, dv = 0.0;
                for (int64_t j = 0; j < T; j++) {
                    bool vis = (!causal || j <= i) && (!doc || doc[b * T + j] == doc[b * T + i]);
                    double s = 0.0, d = 0.0;
                    int64_t kj = ((b * T + j) * Hkv + kh) * D;
                    for (int64_t c = 0; c < D; c++) {
                        s += (double)q[qi + c] * k[kj + c];
                        d += fabs((double)dO[qi + c] * v[kj + c]);
                    }
                    P[j] = vis ? scale * s : -INFINITY;
                    dP[j] = d;
                    if (P[j] > mx) mx = P[j];
                }
                for (int64_t j = 0; j < T; j++) sum += P[j] = P[j] == -INFINITY ? 0.0 : exp(P[j] - mx);
                for (int64_t j = 0; j < T; j++) P[j] /= sum, dv += P[j] * dP[j];
                for (int64_t j = 0; j < T; j++) {
                    if (P[j] == 0.0) continue;
                    int64_t kj = ((b * T + j) * Hkv + kh) * D;
                    double a = P[j] * (dP[j] + dv);
                    for (int64_t c = 0; c < D; c++) {
                        m->o[qi + c] += P[j] * fabs(v[kj + c]);
                        m->dq[qi + c] += scale * a * fabs(k[kj + c]);
                        m->dk[kj + c] += scale * a * fabs(q[qi + c]);
                        m->dv[kj + c] += P[j] * fabs(dO[qi + c]);
                    }
                }
            }
    free(P);
    free(dP);
    return ok;
}

static void attn_mags_free(attn_mags *m) {
    free(m->o), free(m->dq), free(m->dk), free(m->dv);
    m->o = m->dq = m->dk = m->dv = NULL;
}

#endif
