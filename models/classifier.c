/* models/classifier.c: the Fashion-MNIST models (an MLP and a LeNet-5-style CNN) built from
 * quantization-aware layers: construction, torch's default initialisation, forward. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "autograd/autograd_impl.h"
#include "core/rng.h"
#include "models/qat.h"

typedef struct layer_def {
    const char *name;
    lq_qlayer_kind kind;
    int64_t shape[4]; /* weight: (out, in) or (O, C, KH, KW) */
    int pad;
} layer_def;

static const layer_def mlp_defs[] = {
    {"fc1", LQ_QLAYER_LINEAR, {256, 784}, 0},
    {"fc2", LQ_QLAYER_LINEAR, {128, 256}, 0},
    {"fc3", LQ_QLAYER_LINEAR, {10, 128}, 0},
};
static const layer_def cnn_defs[] = {
    {"conv1", LQ_QLAYER_CONV2D, {6, 1, 5, 5}, 2},
    {"conv2", LQ_QLAYER_CONV2D, {16, 6, 5, 5}, 0},
    {"fc1", LQ_QLAYER_LINEAR, {120, 400}, 0},
    {"fc2", LQ_QLAYER_LINEAR, {84, 120}, 0},
    {"fc3", LQ_QLAYER_LINEAR, {10, 84}, 0},
};

bool lq_cls_arch_parse(const char *s, lq_cls_arch *out) {
    if (s && !strcmp(s, "mlp")) return *out = LQ_CLS_MLP, true;
    if (s && !strcmp(s, "cnn")) return *out = LQ_CLS_CNN, true;
    return false;
}

const char *lq_cls_arch_name(lq_cls_arch a) { return a == LQ_CLS_CNN ? "cnn" : "mlp"; }

void lq_classifier_free(lq_classifier *m) {
    if (!m) return;
    for (int i = 0; i < m->n_layers; i++) lq_qlayer_free(&m->layers[i]);
    lq_params_free(m->params);
    memset(m, 0, sizeof *m);
}

lq_status lq_classifier_init(lq_classifier *m, lq_cls_arch arch, lq_cls_spec_fn resolve, void *user, uint64_t seed,
                             int n_threads, lq_err *err) {
    memset(m, 0, sizeof *m);
    m->arch = arch;
    const layer_def *defs = arch == LQ_CLS_CNN ? cnn_defs : mlp_defs;
    int n = arch == LQ_CLS_CNN ? (int)(sizeof cnn_defs / sizeof *cnn_defs) : (int)(sizeof mlp_defs / sizeof *mlp_defs);
    lq_status st = lq_params_init(&m->params, err);
    if (st != LQ_OK) return st;
    char nm[LQ_NAME_MAX + 16];
    for (int i = 0; i < n && st == LQ_OK; i++) {
        const layer_def *d = &defs[i];
        lq_qlayer *l = &m->layers[i];
        m->n_layers = i + 1;
        snprintf(l->name, sizeof l->name, "%s", d->name);
        l->kind = d->kind;
        l->conv = (lq_conv2d_params){.pad_h = d->pad, .pad_w = d->pad};
        int nd = d->kind == LQ_QLAYER_CONV2D ? 4 : 2;
        snprintf(nm, sizeof nm, "%s.weight", d->name);
        l->weight = lq_params_add(m->params, nm, nd, d->shape, 0, err);
        snprintf(nm, sizeof nm, "%s.bias", d->name);
        l->bias = l->weight ? lq_params_add(m->params, nm, 1, d->shape, LQ_TENSOR_NO_DECAY, err) : NULL;
        if (!l->bias) st = err->status;
        if (resolve && st == LQ_OK) resolve(d->name, i, n, &l->wspec, &l->aspec, &l->pact, user);
        if (st == LQ_OK) st = lq_qlayer_declare_params(l, m->params, err);
    }
    if (st == LQ_OK) st = lq_params_finalize(m->params, err);
    /* torch's nn.Linear / nn.Conv2d reset_parameters: kaiming_uniform(a = sqrt(5)) gives
     * U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weight, and the bias draws from the same bound */
    lq_rng rng;
    lq_rng_seed(&rng, seed);
    for (int i = 0; i < m->n_layers && st == LQ_OK; i++) {
        lq_qlayer *l = &m->layers[i];
        int64_t fan_in = lq_numel(l->weight) / l->weight->ne[0];
        float bound = 1.0f / sqrtf((float)fan_in);
        lq_fill_uniform(l->weight, &rng, -bound, bound);
        lq_fill_uniform(l->bias, &rng, -bound, bound);
        st = lq_qlayer_setup(l, n_threads, err);
    }
    if (st != LQ_OK) lq_classifier_free(m);
    return st;
}

lq_status lq_classifier_copy_weights(lq_classifier *dst, const lq_classifier *src, lq_err *err) {
    LQ_CHECK(err, dst->arch == src->arch && dst->n_layers == src->n_layers, LQ_ERR_ARG,
             "classifier: copying weights between different architectures");
    for (int i = 0; i < dst->n_layers; i++) {
        lq_qlayer *d = &dst->layers[i];
        const lq_qlayer *s = &src->layers[i];
        memcpy(d->weight->data, s->weight->data, lq_nbytes(d->weight));
        memcpy(d->bias->data, s->bias->data, lq_nbytes(d->bias));
    }
    return LQ_OK;
}

static lq_tensor *flatten(lq_ctx *ctx, lq_tensor *x) {
    if (!x) return NULL;
    int64_t s[2] = {x->ne[0], lq_numel(x) / x->ne[0]};
    return lq_reshape(ctx, lq_contiguous(ctx, x), 2, s);
}

lq_tensor *lq_classifier_forward(lq_ctx *ctx, lq_classifier *m, lq_tensor *x, lq_qat_mode mode) {
    if (!ctx || lq_ctx_status(ctx) != LQ_OK || !x) return NULL;
    if (x->ndim != 4 || x->ne[1] != 1 || x->ne[2] != 28 || x->ne[3] != 28)
        return LQ_OP_FAIL(ctx, LQ_ERR_SHAPE, "classifier: input must be (B, 1, 28, 28)");
    lq_pool2d_params pool = {.kernel_h = 2, .kernel_w = 2};
    lq_tensor *h = x;
    if (m->arch == LQ_CLS_CNN) {
        h = lq_max_pool2d(ctx, lq_relu(ctx, lq_qlayer_forward(ctx, &m->layers[0], h, mode)), &pool);
        h = lq_max_pool2d(ctx, lq_relu(ctx, lq_qlayer_forward(ctx, &m->layers[1], h, mode)), &pool);
        h = flatten(ctx, h);
        h = lq_relu(ctx, lq_qlayer_forward(ctx, &m->layers[2], h, mode));
        h = lq_relu(ctx, lq_qlayer_forward(ctx, &m->layers[3], h, mode));
        return lq_qlayer_forward(ctx, &m->layers[4], h, mode);
    }
    h = flatten(ctx, h);
    h = lq_relu(ctx, lq_qlayer_forward(ctx, &m->layers[0], h, mode));
    h = lq_relu(ctx, lq_qlayer_forward(ctx, &m->layers[1], h, mode));
    return lq_qlayer_forward(ctx, &m->layers[2], h, mode);
}
