/* quant/qstate.c: allocation of the per-block scale state quantized formats keep beside codes. */
#include <stdlib.h>

#include "core/cuda.h"
#include "quant/kernels_bnb.h"
#include "quant/quant.h"

lq_qstate *lq_qstate_alloc(int64_t n_blocks, int64_t block, bool zero, bool double_quant, int64_t block2) {
    if (n_blocks < 0 || block <= 0 || (double_quant && block2 <= 0)) return NULL;
    lq_qstate *qs = calloc(1, sizeof *qs);
    if (!qs) return NULL;
    qs->block = block;
    size_t nb = (size_t)(n_blocks > 0 ? n_blocks : 1);
    bool ok = true;
    if (double_quant) {
        qs->block2 = block2;
        qs->absmax_q = calloc(nb, 1);
        qs->absmax2 = calloc((size_t)((n_blocks + block2 - 1) / block2 + 1), sizeof(float));
        ok = qs->absmax_q && qs->absmax2;
    } else {
        qs->absmax = calloc(nb, sizeof(float));
        ok = qs->absmax != NULL;
    }
    if (ok && zero) {
        qs->zero = calloc(nb, sizeof(float));
        ok = qs->zero != NULL;
    }
    if (!ok) {
        lq_qstate_free(qs);
        return NULL;
    }
    return qs;
}

void lq_qstate_free(lq_qstate *qs) {
    if (!qs) return;
    if (qs->device) {
        lq_cuda_free(qs->absmax);
        lq_cuda_free(qs->zero);
        lq_cuda_free(qs->absmax_q);
        lq_cuda_free(qs->absmax2);
        lq_cuda_free((void *)qs->code2);
        free(qs);
        return;
    }
    free(qs->absmax);
    free(qs->zero);
    free(qs->absmax_q);
    free(qs->absmax2);
    free(qs);
}

float lq_qstate_absmax(const lq_qstate *qs, int64_t i) {
    /* the shared kernel keeps the multiply and the add unfused, as bitsandbytes computes them */
    return lq_bnb4_block_absmax(qs->absmax, qs->absmax_q, qs->absmax2, qs->code2, qs->block2, qs->offset, i);
}
