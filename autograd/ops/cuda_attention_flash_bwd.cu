/* autograd/ops/cuda_attention_flash_bwd.cu: the flash attention backward (FlashAttention-2 style, no
 * atomics, deterministic) for bf16 math: P recomputed per tile from q, k and the saved L, the
 * products on the tensor cores (WMMA bf16, fp32 accumulation), dQ / dK / dV added to the gradient
 * buffers. Selected with the forward (lq_cuda_flash_attn_wanted, cuda_attention_flash.cu). */
#include "autograd/ops/cuda_attention_flash.cuh"

extern "C" lq_status lq_cuda_flash_attn_bwd(lq_ctx *ctx, lq_node *n, float *gq, float *gk, float *gv,
                                            const int acc[3]);

/* op_attention.c's derivation, per pair (b, h), kv head kh = h / g, with S = scale Q K^T,
 * P = exp(S - L) (0 where masked or L = +INF), O = P V:
 *   dV_kh += sum_h P^T dO_h,  dP = dO V^T,  dS = P (dP - Dv),  Dv_i = rowsum(P dP)_i = dO_i . O_i,
 *   dQ_h += scale dS K_kh,  dK_kh += scale sum_h dS^T Q_h.
 * Dv from O (k_flash_dvec): one dot product per row instead of a pass over P. Then two kernels,
 * each output element written by exactly one block (no atomics; the sums run in a fixed order):
 *   k_flash_bwd_kv: per 64 keys of one (batch, kv head): over the g query heads of the group and
 *     their query steps of 32 rows (causal: from the step holding the tile's first key on); or,
 *     where that gives too few blocks to fill the GPU (kv_split), per 64 keys of one (batch, query
 *     head) into a partial dK / dV per query head, which k_flash_kv_sum then adds up over the group
 *     in head order;
 *   k_flash_bwd_q: per 64 query rows of one (batch, query head): over the key tiles (causal: up
 *     to the tile's last row). */

/* Dv[p T + i] = sum_d dO[b, i, h, d] O[b, i, h, d] (fp32): one warp per row, 8 rows per block,
 * grid-stride. */
#define DV_WARPS 8
__global__ static void __launch_bounds__(32 * DV_WARPS) k_flash_dvec(fa_args a, float *Dv, int64_t rows) {
    const int lane = (int)(threadIdx.x & 31);
    for (int64_t row = (int64_t)blockIdx.x * DV_WARPS + (threadIdx.x >> 5); row < rows;
         row += (int64_t)gridDim.x * DV_WARPS) { /* the same row in every lane of the warp */
        const int64_t p = row / a.T, i = row % a.T, b = p / a.Hq, h = p % a.Hq;
        const float *d = a.dO + b * a.dsb + h * a.dsh + i * a.dld, *o = a.o + b * a.osb + h * a.osh + i * a.old;
        float s = 0.0f;
        for (int c = lane; c < a.D; c += 32) s += d[c] * o[c];
        for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
        if (lane == 0) Dv[row] = s;
    }
}

/* dK, dV of keys [k0, k0 + 64) of unit u = b Hkv + kh (blockIdx.y / hs, blockIdx.x) from the query
 * heads kh g + s hper .. + hper - 1 (s = blockIdx.y % hs, hs = g / hper). hs 1: gk += scale dK,
 * gv += dV directly; else written (not added) to slice s (pn floats each) of pk / pv (hs, B, T, Hkv,
 * D), unscaled,
 * every key row < T (zeros where no query step ran), for k_flash_kv_sum. Warp w owns keys
 * 16 w .. 16 w + 15 of the tile and their rows of S^T, dP^T, P^T, dS^T, dK, dV; lane l handles
 * key r = 16 w + l / 2 and the query columns (l & 1) + 2 t of each step. Per query step:
 *   S^T = K_w Q^T, dP^T = V_w dO^T (16 x 32 each), P^T = exp(scale S^T - L), dS^T = P^T (dP^T - Dv)
 *   (bf16), dV_w += P^T dO, dK_w += dS^T Q (fp32 in shared memory, loaded into the accumulator
 *   fragments and stored back). */
__global__ static void __launch_bounds__(FA_THREADS) k_flash_bwd_kv(fa_args a, int hper, float *pk, float *pv, int64_t pn) {
    extern __shared__ __align__(128) unsigned char fa_smem[];
    const int D = a.D, T = a.T, ldh = D + FA_PADH, ldo = D + FA_PADF, lds = FA_KQ + FA_PADF, ldp = FA_KQ + FA_PADH;
    const fa_kv_layout y = fa_bwd_kv_layout(D);
    __nv_bfloat16 *Ks = (__nv_bfloat16 *)(fa_smem + y.k), *Vs = (__nv_bfloat16 *)(fa_smem + y.v);
    __nv_bfloat16 *Qs = (__nv_bfloat16 *)(fa_smem + y.q), *dOs = (__nv_bfloat16 *)(fa_smem + y.d);
    __nv_bfloat16 *Ps = (__nv_bfloat16 *)(fa_smem + y.p), *dSs = (__nv_bfloat16 *)(fa_smem + y.ds);
    float *Ss = (float *)(fa_smem + y.s), *Gs = (float *)(fa_smem + y.g);
    float *dKs = (float *)(fa_smem + y.dk), *dVs = (float *)(fa_smem + y.dv);
    float *Lq = (float *)(fa_smem + y.lq), *Dq = (float *)(fa_smem + y.dq);
    int32_t *docq = (int32_t *)(fa_smem + y.docq);
    const int tid = (int)threadIdx.x, w = tid >> 5, lane = tid & 31, half = lane & 1, r = 16 * w + (lane >> 1);
    const int hs = a.g / hper, s = (int)(blockIdx.y % hs);
    const int64_t u = blockIdx.y / hs, b = u / a.Hkv, kh = u % a.Hkv;
    const int k0 = (int)blockIdx.x * FA_KB, j = k0 + r;
    const int32_t *docb = a.doc ? a.doc + b * T : NULL;
    const int32_t docj = docb && j < T ? docb[j] : 0;
    fa_load(Ks, ldh, a.k + b * a.ksb + kh * a.ksh, a.kld, k0, FA_KB, T, D, a.vec4);
    fa_load(Vs, ldh, a.v + b * a.vsb + kh * a.vsh, a.vld, k0, FA_KB, T, D, a.vec4);
    fa_zero(dKs, FA_KB * ldo);
    fa_zero(dVs, FA_KB * ldo);
    const int qstart = a.causal ? k0 / FA_KQ * FA_KQ : 0; /* queries before k0 see none of these keys */
    for (int rh = s * hper; rh < (s + 1) * hper; rh++) {
        const int64_t h = kh * a.g + rh, p = b * a.Hq + h;
        const float *qh = a.q + b * a.qsb + h * a.qsh, *dh = a.dO + b * a.dsb + h * a.dsh;
        for (int q0 = qstart; q0 < T; q0 += FA_KQ) {
            __syncthreads(); /* the previous step's Q, dO, L, Dv are no longer read */
            fa_load(Qs, ldh, qh, a.qld, q0, FA_KQ, T, D, a.vec4);
            fa_load(dOs, ldh, dh, a.dld, q0, FA_KQ, T, D, a.vec4);
            for (int t = tid; t < FA_KQ; t += FA_THREADS) {
                const int gi = q0 + t;
                Lq[t] = gi < T ? a.L[p * T + gi] : INFINITY;
                Dq[t] = gi < T ? a.Dv[p * T + gi] : 0.0f;
                docq[t] = docb && gi < T ? docb[gi] : 0;
            }
            __syncthreads(); /* K, V, the zeroed dK, dV (first step), this step's Q, dO, L, Dv */
            for (int c = 0; c < FA_KQ / 16; c++) { /* S^T = K_w Q_c^T, dP^T = V_w dO_c^T */
                fa_mma_nt(Ss + 16 * w * lds + 16 * c, lds, Ks + 16 * w * ldh, ldh, Qs + 16 * c * ldh, ldh, D);
                fa_mma_nt(Gs + 16 * w * lds + 16 * c, lds, Vs + 16 * w * ldh, ldh, dOs + 16 * c * ldh, ldh, D);
            }
            __syncwarp();
            for (int t = 0; t < FA_KQ / 2; t++) {
                const int c = half + 2 * t, gi = q0 + c;
                const bool vis = j < T && gi < T && (!a.causal || j <= gi) && (!docb || docq[c] == docj);
                const float lc = Lq[c];
                const float pv = vis && lc < INFINITY ? expf(Ss[r * lds + c] * a.scale - lc) : 0.0f;
                Ps[r * ldp + c] = __float2bfloat16_rn(pv);
                dSs[r * ldp + c] = __float2bfloat16_rn(pv * (Gs[r * lds + c] - Dq[c]));
            }
            __syncwarp();
            for (int c = 0; c < D / 16; c++) { /* dV_w += P^T_w dO, dK_w += dS^T_w Q (16 x 16 block c) */
                fa_mma_nn_add(dVs + 16 * w * ldo + 16 * c, ldo, Ps + 16 * w * ldp, ldp, dOs + 16 * c, ldh, FA_KQ);
                fa_mma_nn_add(dKs + 16 * w * ldo + 16 * c, ldo, dSs + 16 * w * ldp, ldp, Qs + 16 * c, ldh, FA_KQ);
            }
        }
    }
    __syncthreads(); /* dK, dV complete (the zeros too, should no query step have run) */
    for (int rr = 0; rr < 16; rr++) { /* lanes along D (coalesced) */
        const int row = 16 * w + rr, gj = k0 + row;
        if (gj >= T) break; /* uniform over the warp */
        const int64_t off = ((b * T + gj) * a.Hkv + kh) * (int64_t)D;
        if (hs > 1) {
            const int64_t po = off + s * pn;
            for (int d = lane; d < D; d += 32) {
                if (pk) pk[po + d] = dKs[row * ldo + d];
                if (pv) pv[po + d] = dVs[row * ldo + d];
            }
        } else {
            for (int d = lane; d < D; d += 32) {
                if (a.gk) a.gk[off + d] = (a.acck ? a.gk[off + d] : 0.0f) + a.scale * dKs[row * ldo + d];
                if (a.gv) a.gv[off + d] = (a.accv ? a.gv[off + d] : 0.0f) + dVs[row * ldo + d];
            }
        }
    }
}

/* g[i] += f sum_s part[s n + i] for s = 0 .. hs - 1 in order (the partial dK or dV of the hs query
 * heads of a kv group, k_flash_bwd_kv); acc_g 0: g[i] = 0 + that (a fresh g). Four floats per
 * thread step (n % 4 == 0, 16-byte aligned buffers: the caller checks), grid-stride. */
__global__ static void __launch_bounds__(256)
    k_flash_kv_sum(float *g, const float *part, int64_t n, int hs, float f, int acc_g) {
    const int64_t n4 = n / 4;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += (int64_t)gridDim.x * blockDim.x) {
        float4 acc = ((const float4 *)part)[i];
        for (int t = 1; t < hs; t++) {
            const float4 x = ((const float4 *)(part + (int64_t)t * n))[i];
            acc.x += x.x;
            acc.y += x.y;
            acc.z += x.z;
            acc.w += x.w;
        }
        float4 y = acc_g ? ((float4 *)g)[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        y.x += f * acc.x;
        y.y += f * acc.y;
        y.z += f * acc.z;
        y.w += f * acc.w;
        ((float4 *)g)[i] = y;
    }
}

/* dQ of query rows [q0, q0 + 64) of pair p (blockIdx.y; the last tile first, as the forward).
 * Warp w owns rows 16 w .. 16 w + 15; lane l handles row r = 16 w + l / 2, keys (l & 1) + 2 t.
 * Per key tile: S = Q_w K^T, dP = dO_w V^T (16 x 64), dS = P (dP - Dv) (bf16), dQ_w += dS K.
 * At the end gq += scale dQ for rows < T. */
__global__ static void __launch_bounds__(FA_THREADS) k_flash_bwd_q(fa_args a) {
    extern __shared__ __align__(128) unsigned char fa_smem[];
    const int D = a.D, T = a.T, ldh = D + FA_PADH, ldo = D + FA_PADF, lds = FA_BK + FA_PADF, ldp = FA_BK + FA_PADH;
    const fa_q_layout y = fa_bwd_q_layout(D);
    __nv_bfloat16 *Qs = (__nv_bfloat16 *)(fa_smem + y.q), *dOs = (__nv_bfloat16 *)(fa_smem + y.d);
    __nv_bfloat16 *Ks = (__nv_bfloat16 *)(fa_smem + y.k), *Vs = (__nv_bfloat16 *)(fa_smem + y.v);
    __nv_bfloat16 *dSs = (__nv_bfloat16 *)(fa_smem + y.ds);
    float *Ss = (float *)(fa_smem + y.s), *Gs = (float *)(fa_smem + y.g), *dQs = (float *)(fa_smem + y.dq);
    int32_t *dock = (int32_t *)(fa_smem + y.dk);
    const int tid = (int)threadIdx.x, w = tid >> 5, lane = tid & 31, half = lane & 1, r = 16 * w + (lane >> 1);
    const int64_t p = blockIdx.y, b = p / a.Hq, h = p % a.Hq, kh = h / a.g;
    const int q0 = (int)(gridDim.x - 1 - blockIdx.x) * FA_BQ, i = q0 + r;
    const float *kp = a.k + b * a.ksb + kh * a.ksh, *vp = a.v + b * a.vsb + kh * a.vsh;
    const int32_t *docb = a.doc ? a.doc + b * T : NULL;
    const int32_t doci = docb && i < T ? docb[i] : 0;
    const float Li = i < T ? a.L[p * T + i] : INFINITY, Di = i < T ? a.Dv[p * T + i] : 0.0f;
    fa_load(Qs, ldh, a.q + b * a.qsb + h * a.qsh, a.qld, q0, FA_BQ, T, D, a.vec4);
    fa_load(dOs, ldh, a.dO + b * a.dsb + h * a.dsh, a.dld, q0, FA_BQ, T, D, a.vec4);
    fa_zero(dQs, FA_BQ * ldo);
    const int kend = a.causal ? (T < q0 + FA_BQ ? T : q0 + FA_BQ) : T;
    for (int k0 = 0; k0 < kend; k0 += FA_BK) {
        fa_load(Ks, ldh, kp, a.kld, k0, FA_BK, T, D, a.vec4);
        fa_load(Vs, ldh, vp, a.vld, k0, FA_BK, T, D, a.vec4);
        if (docb)
            for (int t = tid; t < FA_BK; t += FA_THREADS) dock[t] = k0 + t < T ? docb[k0 + t] : 0;
        __syncthreads(); /* Q, dO, the zeroed dQ (first tile), K, V, doc ids */
        for (int c = 0; c < FA_BK / 16; c++) { /* S = Q_w K_c^T, dP = dO_w V_c^T */
            fa_mma_nt(Ss + 16 * w * lds + 16 * c, lds, Qs + 16 * w * ldh, ldh, Ks + 16 * c * ldh, ldh, D);
            fa_mma_nt(Gs + 16 * w * lds + 16 * c, lds, dOs + 16 * w * ldh, ldh, Vs + 16 * c * ldh, ldh, D);
        }
        __syncwarp();
        for (int t = 0; t < FA_BK / 2; t++) {
            const int jj = half + 2 * t, gj = k0 + jj;
            const bool vis = i < T && gj < T && (!a.causal || gj <= i) && (!docb || dock[jj] == doci);
            const float pv = vis && Li < INFINITY ? expf(Ss[r * lds + jj] * a.scale - Li) : 0.0f;
            dSs[r * ldp + jj] = __float2bfloat16_rn(pv * (Gs[r * lds + jj] - Di));
        }
        __syncwarp();
        for (int c = 0; c < D / 16; c++) /* dQ_w (16 x 16 block c) += dS_w K_c */
            fa_mma_nn_add(dQs + 16 * w * ldo + 16 * c, ldo, dSs + 16 * w * ldp, ldp, Ks + 16 * c, ldh, FA_BK);
        __syncthreads(); /* every warp is done with K, V and the doc ids before the next tile */
    }
    float *gh = a.gq + ((b * T) * a.Hq + h) * (int64_t)D; /* contiguous (B, T, Hq, D) */
    for (int rr = 0; rr < 16; rr++) {
        const int row = 16 * w + rr;
        if (q0 + row >= T) break; /* uniform over the warp */
        for (int d = lane; d < D; d += 32)
            gh[(int64_t)(q0 + row) * a.Hq * D + d] =
                (a.accq ? gh[(int64_t)(q0 + row) * a.Hq * D + d] : 0.0f) + a.scale * dQs[row * ldo + d];
    }
}

/* Whether the dK / dV kernel takes one query head per block (partials summed by k_flash_kv_sum)
 * rather than a whole kv group: only under GQA (g > 1), and only when the grouped grid has fewer
 * than four blocks per SM. Two 91 KiB blocks fit an SM at D 64, so such a grid runs in under two
 * waves, and under a causal mask its first key tile has (T / 32) g query steps to the last tile's
 * 2 g: the longest block sets the time (at the 1B bench shape, 256 blocks on 132 SMs, 64 steps
 * against 36 on average). Split, the longest has T / 32 steps, at the cost of writing and reading
 * the partials (2 g floats per key gradient element). LOQUAT_FLASH_KV_SPLIT=0 / 1 forces either
 * (the tests run both); the sum needs 16-byte aligned gradient buffers. */
static bool kv_split(const fa_args *a, int64_t blocks, const float *gk, const float *gv) {
    if (a->g <= 1 || (uintptr_t)gk % 16 != 0 || (uintptr_t)gv % 16 != 0) return false;
    const char *e = getenv("LOQUAT_FLASH_KV_SPLIT");
    if (e && (strcmp(e, "0") == 0 || strcmp(e, "1") == 0)) return e[0] == '1';
    int dev = 0, sms = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
        (void)cudaGetLastError(); /* a query that failed only costs the split */
        return false;
    }
    return blocks < 4 * (int64_t)sms;
}

/* gq / gk / gv (NULL: not wanted; else device buffers of the inputs' contiguous shapes) +=
 * the gradients from out's gradient, L = saved[1] and the doc ids (saved[2], or uploaded here);
 * acc[i] 0: that buffer is fresh and is assigned instead (every element written).
 * Scratch (Dv, a doc copy) comes from the device arena: the caller resets it afterwards. */
extern "C" lq_status lq_cuda_flash_attn_bwd(lq_ctx *ctx, lq_node *n, float *gq, float *gk, float *gv,
                                            const int acc[3]) {
    fa_args a;
    const float *op;
    if (!fa_args_of(n, &a) || !fa_view(n->out, &op, &a.osb, &a.osh, &a.old))
        return LQ_ERR(&ctx->err, LQ_ERR_UNSUPPORTED, "attention: flash needs unit-stride head vectors");
    a.o = (float *)op;
    /* dO: out's gradient, contiguous (B, T, Hq, D) */
    a.dO = (const float *)n->out->grad->data;
    a.dld = (int64_t)a.Hq * a.D;
    a.dsb = (int64_t)a.T * a.dld;
    a.dsh = a.D;
    a.vec4 = a.vec4 && fa_vec4(a.dO, a.dsb, a.dsh, a.dld);
    a.gq = gq;
    a.gk = gk;
    a.gv = gv;
    a.accq = acc[0];
    a.acck = acc[1];
    a.accv = acc[2];
    a.L = (float *)n->saved[1];
    a.doc = (const int32_t *)n->saved[2];
    if (!a.doc && n->n_in > 3 && !(a.doc = lq_cuda_upload_i32(ctx, n->in[3]))) return ctx->err.status;
    int64_t B = n->in[0]->ne[0], pairs = B * a.Hq, units = B * a.Hkv, rows = pairs * a.T;
    if (rows <= 0 || (!gq && !gk && !gv)) return LQ_OK;
    float *Dv = (float *)lq_ctx_dalloc(ctx, (size_t)rows * sizeof(float));
    if (!Dv) return ctx->err.status;
    a.Dv = Dv;
    cudaStream_t st = (cudaStream_t)lq_cuda_stream(ctx);
    int64_t dvb = (rows + DV_WARPS - 1) / DV_WARPS;
    k_flash_dvec<<<(unsigned)(dvb > 65535 * 8 ? 65535 * 8 : dvb), 32 * DV_WARPS, 0, st>>>(a, Dv, rows);
    LQ_CUDA_LAUNCHED(ctx, "flash attention rowsum(dO O)");
    if (gk || gv) {
        const int64_t tiles = (a.T + FA_KB - 1) / FA_KB, nk = units * a.T * (int64_t)a.D;
        const int hper = kv_split(&a, tiles * units, gk, gv) ? 1 : a.g, hs = a.g / hper;
        float *pk = NULL, *pv = NULL;
        if (hs > 1 && ((gk && !(pk = (float *)lq_ctx_dalloc(ctx, (size_t)(hs * nk) * sizeof(float)))) ||
                       (gv && !(pv = (float *)lq_ctx_dalloc(ctx, (size_t)(hs * nk) * sizeof(float))))))
            return ctx->err.status;
        size_t smem = fa_bwd_kv_layout(a.D).total;
        FA_SMEM_OPTIN(ctx, k_flash_bwd_kv, smem);
        dim3 grid((unsigned)tiles, (unsigned)(units * hs));
        k_flash_bwd_kv<<<grid, FA_THREADS, smem, st>>>(a, hper, pk, pv, nk);
        LQ_CUDA_LAUNCHED(ctx, "flash attention dK dV");
        for (int t = 0; t < 2 && hs > 1; t++) {
            float *g = t ? gv : gk, *part = t ? pv : pk;
            if (!g) continue;
            const int64_t b4 = (nk / 4 + 255) / 256;
            k_flash_kv_sum<<<(unsigned)(b4 < 4096 ? b4 : 4096), 256, 0, st>>>(g, part, nk, hs, t ? 1.0f : a.scale,
                                                                              t ? a.accv : a.acck);
            LQ_CUDA_LAUNCHED(ctx, "flash attention dK dV group sum");
        }
    }
    if (gq) {
        size_t smem = fa_bwd_q_layout(a.D).total;
        FA_SMEM_OPTIN(ctx, k_flash_bwd_q, smem);
        dim3 grid((unsigned)((a.T + FA_BQ - 1) / FA_BQ), (unsigned)pairs);
        k_flash_bwd_q<<<grid, FA_THREADS, smem, st>>>(a);
        LQ_CUDA_LAUNCHED(ctx, "flash attention dQ");
    }
    return LQ_OK;
}
