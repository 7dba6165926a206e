/* autograd/ops/cuda_attention_flash.cu: a flash-style attention forward for bf16 math (opt-in,
 * LOQUAT_FLASH_ATTN=1): per block one tile of 64 query rows of one (batch, query head), a loop over
 * key tiles with an online softmax, Q K^T and P V on the tensor cores (WMMA 16x16x16 bf16, fp32
 * accumulation); the T x T scores never reach global memory. Writes O and L = per-row logsumexp
 * exactly where cuda_attention.cu's forward does, so either backward can follow it (the flash one
 * is cuda_attention_flash_bwd.cu). The selection for both directions is here. */
#include "autograd/ops/cuda_attention_flash.cuh"

extern "C" lq_status lq_cuda_flash_attn_fwd(lq_ctx *ctx, lq_node *n, float *L, const int32_t *doc);

/* Shapes as in cuda_attention.cu: q (B, T, Hq, D), k / v (B, T, Hkv, D), out like q; pair
 * p = b Hq + h (blockIdx.y), query head h reads kv head h / g. Block x takes query rows
 * [q0, q0 + 64), the last tile first (under a causal mask the later tiles have the most keys: they
 * start first). Warp w owns rows 16 w .. 16 w + 15 of the tile; lane l of a warp keeps row
 * 16 w + l / 2's running max m and sum l, and handles its keys j = (l & 1) + 2 t of each key tile.
 *
 * Per key tile [k0, k0 + 64) (causal: only tiles starting at or before the tile's last row):
 *   S = scale Q K^T (warp: 16 x 64, fp32), masked to -inf (causal j > i, doc ids differ, j >= T);
 *   m' = max(m, rowmax S), alpha = exp(m - m'), P = exp(S - m') (bf16 into shared memory),
 *   l = alpha l + rowsum P (fp32, before the rounding), O = alpha O + P V (O fp32 in shared memory:
 *   WMMA's accumulator layout is opaque, so the per-row rescale happens there, then the warp loads
 *   its O fragments, accumulates P V and stores them back).
 * At the end O / l and L = m + log l; a row that saw no key (m = -inf) gets O = 0, L = +INF
 * (op_attention.c's rule). Rows past T are computed on zero Q rows, masked, and never written. */
__global__ static void __launch_bounds__(FA_THREADS) k_flash_fwd(fa_args a) {
    extern __shared__ __align__(128) unsigned char fa_smem[];
    const int D = a.D, T = a.T, ldh = D + FA_PADH, ldo = D + FA_PADF, lds = FA_BK + FA_PADF, ldp = FA_BK + FA_PADH;
    const fa_fwd_layout y = fa_fwd_layout_of(D);
    __nv_bfloat16 *Qs = (__nv_bfloat16 *)(fa_smem + y.q), *Ks = (__nv_bfloat16 *)(fa_smem + y.k);
    __nv_bfloat16 *Vs = (__nv_bfloat16 *)(fa_smem + y.v), *Ps = (__nv_bfloat16 *)(fa_smem + y.p);
    float *Ss = (float *)(fa_smem + y.s), *Os = (float *)(fa_smem + y.o), *inv = (float *)(fa_smem + y.inv);
    int32_t *dock = (int32_t *)(fa_smem + y.dk);
    const int tid = (int)threadIdx.x, w = tid >> 5, lane = tid & 31, half = lane & 1, r = 16 * w + (lane >> 1);
    const int64_t p = blockIdx.y, b = p / a.Hq, h = p % a.Hq, kh = h / a.g;
    const int q0 = (int)(gridDim.x - 1 - blockIdx.x) * FA_BQ, i = q0 + r;
    const float *qh = a.q + b * a.qsb + h * a.qsh, *kp = a.k + b * a.ksb + kh * a.ksh;
    const float *vp = a.v + b * a.vsb + kh * a.vsh;
    const int32_t *docb = a.doc ? a.doc + b * T : NULL;
    const int32_t doci = docb && i < T ? docb[i] : 0;
    fa_load(Qs, ldh, qh, a.qld, q0, FA_BQ, T, D, a.vec4);
    fa_zero(Os, FA_BQ * ldo);
    float m = -INFINITY, l = 0.0f;
    const int kend = a.causal ? (T < q0 + FA_BQ ? T : q0 + FA_BQ) : T;
    for (int k0 = 0; k0 < kend; k0 += FA_BK) {
        fa_load(Ks, ldh, kp, a.kld, k0, FA_BK, T, D, a.vec4);
        fa_load(Vs, ldh, vp, a.vld, k0, FA_BK, T, D, a.vec4);
        if (docb)
            for (int j = tid; j < FA_BK; j += FA_THREADS) dock[j] = k0 + j < T ? docb[k0 + j] : 0;
        __syncthreads(); /* Q, O's zeros (first step), K, V, doc ids */
        for (int c = 0; c < FA_BK / 16; c++) /* S (16 x 16 block c) = Q_w K_c^T */
            fa_mma_nt(Ss + 16 * w * lds + 16 * c, lds, Qs + 16 * w * ldh, ldh, Ks + 16 * c * ldh, ldh, D);
        __syncwarp();
        /* the online softmax of row r over this lane's half of the tile, then the pair's exchange
         * (the shuffles are outside every branch: all 32 lanes take part) */
        float *srow = Ss + r * lds;
        float mx = -INFINITY;
        for (int t = 0; t < FA_BK / 2; t++) {
            const int j = half + 2 * t, gj = k0 + j;
            const bool vis = i < T && gj < T && (!a.causal || gj <= i) && (!docb || dock[j] == doci);
            const float s = vis ? srow[j] * a.scale : -INFINITY;
            srow[j] = s;
            mx = s > mx ? s : mx;
        }
        const float mo = __shfl_xor_sync(0xffffffffu, mx, 1);
        mx = mo > mx ? mo : mx;
        const float mn = m > mx ? m : mx;
        const bool any = mn != -INFINITY; /* the row has seen a key so far */
        const float alpha = any ? expf(m - mn) : 1.0f; /* m = -inf: 0 (O and l are still 0) */
        __nv_bfloat16 *prow = Ps + r * ldp;
        float sum = 0.0f;
        for (int t = 0; t < FA_BK / 2; t++) {
            const int j = half + 2 * t;
            const float pj = any ? expf(srow[j] - mn) : 0.0f; /* masked: exp(-inf) = 0 */
            sum += pj;
            prow[j] = __float2bfloat16_rn(pj);
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1); /* the same sum in both lanes of the row */
        if (any) {
            l = l * alpha + sum;
            m = mn;
            if (alpha != 1.0f)
                for (int d = half; d < D; d += 2) Os[r * ldo + d] *= alpha;
        }
        __syncwarp(); /* P and the rescaled O rows of this warp */
        for (int c = 0; c < D / 16; c++) /* O_w (16 x 16 block c) += P_w V_c */
            fa_mma_nn_add(Os + 16 * w * ldo + 16 * c, ldo, Ps + 16 * w * ldp, ldp, Vs + 16 * c, ldh, FA_BK);
        __syncthreads(); /* every warp is done with K, V and the doc ids before the next tile */
    }
    if (half == 0) {
        inv[r] = l > 0.0f ? 1.0f / l : 0.0f; /* a row that saw nothing: O = 0 */
        if (a.L && i < T) a.L[p * T + i] = m == -INFINITY ? INFINITY : m + logf(l);
    }
    __syncwarp();
    float *oh = a.o + b * a.osb + h * a.osh;
    for (int rr = 0; rr < 16; rr++) { /* the warp's rows, lanes along D (coalesced) */
        const int row = 16 * w + rr;
        if (q0 + row >= T) break; /* uniform over the warp */
        const float f = inv[row];
        for (int d = lane; d < D; d += 32) oh[(int64_t)(q0 + row) * a.old + d] = Os[row * ldo + d] * f;
    }
}

/* The largest dynamic shared memory of the three kernels at head size D. */
static size_t fa_smem_need(int D) {
    size_t f = fa_fwd_layout_of(D).total, kv = fa_bwd_kv_layout(D).total, q = fa_bwd_q_layout(D).total;
    size_t m = f > kv ? f : kv;
    return m > q ? m : q;
}

/* LOQUAT_FLASH_ATTN=1 (read each call), bf16 math, D % 16 == 0 and 16 <= D <= FA_DMAX (the device's
 * opt-in shared memory must hold the largest kernel's tiles: 110.5 / 145.4 / 144.2 KiB for the
 * forward / dK dV / dQ kernels at D 128, 70.5 / 89.4 / 96.2 KiB at D 64; an H100 opts in to 227
 * KiB, an A100 to 163), q, k, v and out with
 * unit-stride head vectors, and at most 65535 (batch, head) pairs (grid y). The same answer for the
 * forward and the backward of a node (same ctx, env, shapes). */
extern "C" bool lq_cuda_flash_attn_wanted(lq_ctx *ctx, const lq_node *n) {
    const char *e = getenv("LOQUAT_FLASH_ATTN");
    if (!e || strcmp(e, "1") != 0 || ctx->cuda_math != LQ_CUDA_MATH_BF16) return false;
    const lq_tensor *q = n->in[0];
    int64_t D = q->ne[3], pairs = q->ne[0] * q->ne[2];
    if (D < 16 || D > FA_DMAX || D % 16 != 0 || pairs > 65535 || q->ne[1] > 0x7fffffff) return false;
    fa_args a;
    const float *op;
    int64_t sb, sh, ld;
    if (!fa_args_of(n, &a) || !fa_view(n->out, &op, &sb, &sh, &ld)) return false;
    int dev = 0, optin = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
        (void)cudaGetLastError(); /* not this op's error to report: the cuBLAS path runs instead */
        return false;
    }
    return fa_smem_need((int)D) <= (size_t)optin;
}

/* out = attention(q, k, v) by k_flash_fwd; L (B Hq T floats) written when not NULL (recorded
 * nodes); doc: the device doc ids or NULL. The caller checked lq_cuda_flash_attn_wanted. */
extern "C" lq_status lq_cuda_flash_attn_fwd(lq_ctx *ctx, lq_node *n, float *L, const int32_t *doc) {
    fa_args a;
    const float *op;
    if (!fa_args_of(n, &a) || !fa_view(n->out, &op, &a.osb, &a.osh, &a.old))
        return LQ_ERR(&ctx->err, LQ_ERR_UNSUPPORTED, "attention: flash needs unit-stride head vectors");
    a.o = (float *)op;
    a.L = L;
    a.doc = doc;
    int64_t pairs = n->in[0]->ne[0] * (int64_t)a.Hq;
    if (a.T <= 0 || pairs <= 0) return LQ_OK;
    size_t smem = fa_fwd_layout_of(a.D).total;
    FA_SMEM_OPTIN(ctx, k_flash_fwd, smem);
    dim3 grid((unsigned)((a.T + FA_BQ - 1) / FA_BQ), (unsigned)pairs);
    k_flash_fwd<<<grid, FA_THREADS, smem, (cudaStream_t)lq_cuda_stream(ctx)>>>(a);
    LQ_CUDA_LAUNCHED(ctx, "flash attention forward");
    return LQ_OK;
}
