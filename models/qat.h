/* models/qat.h: quantization-aware layers (a linear or conv2d whose weights and input activations
 * are fake-quantized in training, observed for PTQ, or converted to real integer codes), and the
 * small Fashion-MNIST models built from them (MLP, LeNet-style CNN). */
#ifndef LQ_MODELS_QAT_H
#define LQ_MODELS_QAT_H

#include "autograd/autograd.h"
#include "quant/quant.h"

/* How a quantized layer runs its forward. */
typedef enum lq_qat_mode {
    LQ_QAT_FLOAT = 0,  /* plain float: y = x W^T + b (or the conv) */
    LQ_QAT_CALIBRATE,  /* float forward; static activation observers see each input (PTQ calibration) */
    LQ_QAT_FAKE,       /* fake-quantized weights and activations with straight-through gradients
                        * (QAT training; PTQ / QAT evaluation). Static activation observers keep
                        * updating while the context is in training mode and they are not frozen */
    LQ_QAT_INT,        /* real integer arithmetic on the converted codes (lq_qlayer_convert):
                        * int8 activation codes x int weight codes, int32 accumulation per group */
} lq_qat_mode;

typedef enum lq_qlayer_kind { LQ_QLAYER_LINEAR = 0, LQ_QLAYER_CONV2D } lq_qlayer_kind;

/* The integer form of a layer after lq_qlayer_convert: weight codes and scales, and the activation
 * quantizer's frozen parameters. Shapes: W (N, K) for a linear; a conv's (O, C, KH, KW) is held as
 * (N = O, K = C KH KW). Scales are expanded to one per (row, group): w_scale / w_zp (N, G) with
 * G = K / w_group (per tensor / channel: w_group = K, so G = 1). */
typedef struct lq_qlayer_int {
    bool ready;
    int w_bits;           /* 2..8; 0 = weights stay float (w_f32 holds them) */
    int64_t n, k, w_group, n_groups;
    int8_t *w_codes;      /* (N, K) signed or unsigned-in-int8 codes; NULL for float weights */
    float *w_scale;       /* (N, G) */
    int32_t *w_zp;        /* (N, G); zeros for symmetric */
    float *w_f32;         /* (N, K) when w_bits == 0 */
    /* activations: a_bits 0 = float; static = one scale / zero point frozen from the observer
     * (or PACT's alpha); dynamic = per row (per token) at run time */
    int a_bits;
    bool a_dynamic, a_symmetric;
    int32_t a_qmin, a_qmax;
    float a_scale;
    int32_t a_zp;
} lq_qlayer_int;

typedef struct lq_qlayer {
    char name[LQ_NAME_MAX];  /* "conv1", "fc2", "model.layers.3.self_attn.q_proj" */
    lq_qlayer_kind kind;
    lq_tensor *weight;       /* f32 (N, K) or (O, C, KH, KW); a parameter (or frozen) */
    lq_tensor *bias;         /* (N) or NULL */
    lq_conv2d_params conv;
    lq_qspec wspec;          /* weights: enabled false = float. Granularity tensor / channel (axis 0,
                              * the output channel) / group (along K) */
    lq_qspec aspec;          /* input activations: enabled false = float. Granularity tensor = static
                              * (observer, or PACT), token = dynamic per row (a conv: per sample) */
    bool pact;               /* activations: PACT clipping [0, alpha] with alpha learned */
    /* state */
    lq_observer aobs;        /* static activation observer (per tensor) */
    bool aobs_ready;
    lq_observer wobs;        /* weight observer, reset and fed the current weights at each forward */
    bool wobs_ready;
    lq_tensor *w_scale;      /* LSQ (wspec.learnable): (slots) learned weight scale, a parameter */
    lq_tensor *a_scale;      /* LSQ on a static activation: (1) learned scale, a parameter */
    lq_tensor *a_zp;         /* its zero point (asymmetric), a parameter; NULL = 0 */
    lq_tensor *pact_alpha;   /* PACT: (1) learned clipping level, a parameter */
    bool lsq_ready;          /* learned scales initialised from the observers (lq_qlayer_init_learned) */
    bool group_fallback;     /* set by setup: the spec's group size does not divide K, so the weights
                              * are quantized per output channel instead (a conv's 25 or 150 inputs
                              * under g32); callers report it */
    lq_qlayer_int q;         /* filled by lq_qlayer_convert */
} lq_qlayer;

/* Checks the layer's specs against its weight (bits, group size dividing K, LSQ only per tensor /
 * channel, PACT only with static asymmetric activations...) and sets up the activation observer.
 * Errors name the layer. The learned tensors (w_scale, a_scale, a_zp, pact_alpha) must already be
 * declared by the caller when the specs ask for them (lq_qlayer_declare_params). */
lq_status lq_qlayer_setup(lq_qlayer *l, int n_threads, lq_err *err);
/* Declares the learned quantizer tensors a layer's specs need in p (named "<name>.w_scale",
 * "<name>.a_scale", "<name>.a_zp", "<name>.pact_alpha"; no weight decay), before p is finalized. */
lq_status lq_qlayer_declare_params(lq_qlayer *l, lq_params *p, lq_err *err);
/* Initialises the learned quantizer values from the current weights and the activation observer
 * (LSQ scale = the min-max scale; PACT alpha = the observed max, or 6 without one). Called once
 * when fake quantization turns on. */
lq_status lq_qlayer_init_learned(lq_qlayer *l, lq_err *err);
void lq_qlayer_free(lq_qlayer *l);

/* The forward in a mode: x (M, K) for a linear -> (M, N); x (B, C, H, W) for a conv ->
 * (B, O, OH, OW). NULL with the error in ctx on failure. */
lq_tensor *lq_qlayer_forward(lq_ctx *ctx, lq_qlayer *l, lq_tensor *x, lq_qat_mode mode);

/* Weight scales / zero points as the fake-quant forward uses them now (learned, or from the
 * current weights with the spec's observer), per slot of wspec's scheme; *n_slots gets the count.
 * scale and zp are malloc'd. */
lq_status lq_qlayer_weight_qparams(const lq_qlayer *l, float **scale, int32_t **zp, int64_t *n_slots, lq_err *err);

/* Converts the layer to its integer form (l->q): weight codes with the qparams the fake-quant
 * forward uses, and the activation quantizer frozen as it stands. */
lq_status lq_qlayer_convert(lq_qlayer *l, lq_err *err);
void lq_qlayer_int_free(lq_qlayer_int *q);

/* ---------------------------------------------------------------------------------------------
 * Fashion-MNIST models (models/classifier.c): input (B, 1, 28, 28) f32 in [0, 1] -> logits (B, 10).
 *   mlp: flatten -> fc1 784x256 -> relu -> fc2 256x128 -> relu -> fc3 128x10
 *   cnn: conv1 1->6 5x5 pad 2 -> relu -> maxpool 2 -> conv2 6->16 5x5 -> relu -> maxpool 2 ->
 *        flatten 400 -> fc1 400x120 -> relu -> fc2 120x84 -> relu -> fc3 84x10   (LeNet-5)
 * Every conv / linear is a quantized layer; weights start as torch's default init (kaiming-uniform
 * a = sqrt(5), bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))) from the seed.
 * ------------------------------------------------------------------------------------------- */

typedef enum lq_cls_arch { LQ_CLS_MLP = 0, LQ_CLS_CNN } lq_cls_arch;

#define LQ_CLS_MAX_LAYERS 8

typedef struct lq_classifier {
    lq_cls_arch arch;
    lq_qlayer layers[LQ_CLS_MAX_LAYERS];
    int n_layers;
    lq_params *params;  /* weights, biases and learned quantizer tensors, one block */
} lq_classifier;

/* Builds the model: layer specs from resolve(name, &wspec, &aspec, &pact, user) (NULL = all
 * float); declares and finalizes the parameters; initialises the weights from seed. */
typedef void (*lq_cls_spec_fn)(const char *name, int index, int n_layers, lq_qspec *wspec, lq_qspec *aspec, bool *pact,
                               void *user);
lq_status lq_classifier_init(lq_classifier *m, lq_cls_arch arch, lq_cls_spec_fn resolve, void *user, uint64_t seed,
                             int n_threads, lq_err *err);
void lq_classifier_free(lq_classifier *m);
/* Copies every weight and bias (by layer name) from src, e.g. a trained float model into a QAT one. */
lq_status lq_classifier_copy_weights(lq_classifier *dst, const lq_classifier *src, lq_err *err);
/* Logits (B, 10) for x (B, 1, 28, 28). */
lq_tensor *lq_classifier_forward(lq_ctx *ctx, lq_classifier *m, lq_tensor *x, lq_qat_mode mode);
/* Names "mlp" / "cnn"; false when unknown. */
bool lq_cls_arch_parse(const char *s, lq_cls_arch *out);
const char *lq_cls_arch_name(lq_cls_arch a);

/* ---------------------------------------------------------------------------------------------
 * Llama (models/llama_qat.c): every decoder linear (q k v o gate up down of each layer) becomes a
 * trainable f32 quantization-aware layer named "model.layers.<i>.<parent>.<proj>": weights
 * dequantized from the loaded model into one parameter block (with the specs' learned quantizer
 * tensors), the model's weight slots pointing at them while attached. The forward routes those
 * projections through lq_qlayer_forward in the mode lq_llama_qat_set_mode sets. The embedding,
 * norms and lm_head stay as loaded (frozen, float). One attachment per model at a time.
 * ------------------------------------------------------------------------------------------- */

struct lq_llama_model;
typedef struct lq_llama_qat lq_llama_qat;
/* resolve (NULL = every layer float) gives each layer's specs; index counts the linears in order
 * (layer 0's q .. down, then layer 1's ...). */
lq_status lq_llama_qat_attach(struct lq_llama_model *m, lq_cls_spec_fn resolve, void *user, int n_threads,
                              lq_llama_qat **out, lq_err *err);
/* Detaches (the model's original weights come back) and frees. */
void lq_llama_qat_free(lq_llama_qat *q);
lq_params *lq_llama_qat_params(lq_llama_qat *q);
int lq_llama_qat_count(const lq_llama_qat *q);
lq_qlayer *lq_llama_qat_layer(lq_llama_qat *q, int i);
void lq_llama_qat_set_mode(struct lq_llama_model *m, lq_qat_mode mode);
/* Copies every layer's weight (by index) into / out of a flat f32 array (the linears' weights in
 * order; lq_llama_qat_weights_numel floats). */
int64_t lq_llama_qat_weights_numel(const lq_llama_qat *q);
void lq_llama_qat_get_weights(const lq_llama_qat *q, float *dst);
void lq_llama_qat_set_weights(lq_llama_qat *q, const float *src);

#endif
