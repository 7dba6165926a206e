/* train/train.h: optimizers, gradient clipping and the loquat command line. */
#ifndef LQ_TRAIN_H
#define LQ_TRAIN_H

#include "autograd/autograd.h"

#define LQ_VERSION "0.1.0-dev"

/* ---------------------------------------------------------------------------------------------
 * Optimizers. Each works on the whole contiguous parameter block of an lq_params (data and grad,
 * lq_params_numel() floats, alignment padding included): one elementwise loop, so the result does
 * not depend on the thread count. Weight decay applies to the prefix [0, lq_params_decay_numel()),
 * i.e. to every parameter not flagged LQ_TENSOR_NO_DECAY. Padding stays zero.
 * The arithmetic follows PyTorch's single-tensor (foreach=False) implementations step by step.
 * ------------------------------------------------------------------------------------------- */

/* torch.optim.AdamW: decoupled weight decay, bias-corrected moments. */
typedef struct lq_adamw_cfg {
    float lr;           /* default learning rate (lq_adamw_step takes the per-step one) */
    float beta1, beta2; /* in [0, 1) */
    float eps;          /* > 0 */
    float weight_decay; /* >= 0 */
    int n_threads;      /* 0 = 1 */
} lq_adamw_cfg;

typedef struct lq_adamw {
    lq_adamw_cfg cfg;
    int64_t numel; /* length of m and v (the parameter block it was made for) */
    float *m;      /* first moment (exp_avg) */
    float *v;      /* second moment (exp_avg_sq) */
    int64_t t;     /* steps taken; the bias corrections use it (checkpoints save m, v, t) */
} lq_adamw;

/* Allocates zeroed moments for p's block (p must be finalized) and validates cfg. */
lq_status lq_adamw_init(lq_adamw *opt, const lq_params *p, const lq_adamw_cfg *cfg, lq_err *err);
/* One update with learning rate lr (schedules drive it); t += 1. Reads the grads, leaves them. */
lq_status lq_adamw_step(lq_adamw *opt, lq_params *p, float lr, lq_err *err);
void lq_adamw_free(lq_adamw *opt);

/* torch.optim.SGD: L2 weight decay added to the gradient, optional (Nesterov) momentum. */
typedef struct lq_sgd_cfg {
    float lr;
    float momentum;     /* >= 0; 0 = plain SGD (no buffer) */
    float dampening;    /* in [0, 1]; must be 0 with nesterov */
    float weight_decay; /* >= 0 */
    bool nesterov;      /* needs momentum > 0 */
    int n_threads;      /* 0 = 1 */
} lq_sgd_cfg;

typedef struct lq_sgd {
    lq_sgd_cfg cfg;
    int64_t numel;
    float *buf; /* momentum buffer (NULL when momentum == 0) */
    int64_t t;  /* steps taken; the buffer starts as the first step's gradient */
    bool ready; /* set by lq_sgd_init */
} lq_sgd;

lq_status lq_sgd_init(lq_sgd *opt, const lq_params *p, const lq_sgd_cfg *cfg, lq_err *err);
lq_status lq_sgd_step(lq_sgd *opt, lq_params *p, float lr, lq_err *err);
void lq_sgd_free(lq_sgd *opt);

/* Total L2 norm of every gradient in p (accumulated in double in a fixed order, so it is the same
 * on any thread count); if max_norm / (norm + 1e-6) < 1 the grads are scaled by it, as
 * torch.nn.utils.clip_grad_norm_ does. Returns the norm before clipping. A non-finite norm is
 * returned as is with the grads untouched (the caller reports it). max_norm <= 0 or NaN turns
 * clipping off (the norm is still returned). */
double lq_clip_grad_norm(lq_params *p, float max_norm, int n_threads);

/* ---------------------------------------------------------------------------------------------
 * Command line
 * ------------------------------------------------------------------------------------------- */

/* Runs the CLI; returns the process exit code (0 ok, 1 runtime failure, 2 bad usage/input). */
int lq_cli_main(int argc, char **argv);

/* `loquat quantize` / `loquat dequantize` (train/cmd_quantize.c, train/cmd_dequantize.c). Each
 * prints its report on stdout and any error on stderr, and returns the exit code; on failure no
 * output file is left behind. */
typedef struct lq_quantize_opts {
    const char *format;  /* "nf4" | "fp4" | "int8" | "int4" */
    long block_size;     /* nf4 / fp4: elements per absmax, 32..4096, a power of two; 0 = 64 */
    bool double_quant;   /* nf4 / fp4: quantize the absmax values too (bitsandbytes' nested state) */
    long group_size;     /* int8 / int4: elements per scale along each row; 0 = one per row */
    bool asymmetric;     /* int8 / int4: with a zero point (default symmetric) */
    const char *skip;    /* comma-separated globs of names kept in float; NULL = the default list */
    bool json;           /* also print one JSON object as the last line */
} lq_quantize_opts;
int lq_cmd_quantize(const char *in, const char *out, const lq_quantize_opts *opts);
/* dtype: "f32" | "f16" | "bf16", or NULL for the dtype each tensor's quant state records. */
int lq_cmd_dequantize(const char *in, const char *out, const char *dtype, bool json);
/* `loquat inspect` (train/cmd_inspect.c): prints a GGUF or safetensors file's metadata and tensor
 * table (one JSON object with json); exit 0, 2 for a missing or malformed file, 1 for HDF5. */
int lq_cmd_inspect(const char *path, bool json);

#endif
