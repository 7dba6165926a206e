/* autograd/op_table.c: the registry of every differentiable op (name, forward, backward,
 * gradcheck case). An op missing here is missing from gradcheck, and the suite fails. */
#include <string.h>

#include "autograd/autograd_impl.h"

/* X-list of op definitions (each defined in autograd/ops/op_<name>.c or beside its feature). */
#define LQ_OP_LIST(X)                                                                            \
    /* shape and layout */                                                                        \
    X(contiguous) X(reshape) X(transpose) X(permute) X(slice) X(concat)                          \
    /* elementwise and reductions */                                                              \
    X(add) X(sub) X(mul) X(scale) X(sum) X(mean)                                                 \
    /* linear algebra */                                                                          \
    X(matmul)                                                                                     \
    /* activations (group C adds relu, gelu, swiglu here) */                                      \
    X(relu) X(gelu) X(swiglu)                                                                     \
    X(silu)                                                                                       \
    /* transformer (group A adds embedding, rope, attention here) */                              \
    X(embedding) X(rope) X(attention)                                                             \
    /* normalisation, softmax, losses, dropout (group B adds its ops here) */                     \
    X(rmsnorm) X(layernorm) X(softmax) X(log_softmax) X(cross_entropy) X(dropout)                 \
    /* convolution and pooling (group C adds conv2d, max_pool2d, avg_pool2d here) */             \
    X(conv2d) X(max_pool2d) X(avg_pool2d)                                                         \
    /* training structure */                                                                      \
    X(checkpoint)                                                                                 \
    /* quantized base weights */                                                                  \
    X(qmatmul) X(lora_linear)                                                                     \
    /* fake quantization (QAT) */                                                                 \
    X(fake_quant) X(fake_quant_lsq) X(pact) X(fake_quant_dynamic) X(fake_quant_bnb4)

#define LQ_DECLARE_OP(name) extern const lq_op_def lq_op_##name;
LQ_OP_LIST(LQ_DECLARE_OP)

#define LQ_OP_ENTRY(name) &lq_op_##name,
const lq_op_def *const lq_op_table[] = {LQ_OP_LIST(LQ_OP_ENTRY)};
const int lq_op_table_len = (int)(sizeof lq_op_table / sizeof lq_op_table[0]);

/* The ops whose one implementation serves both devices (lq_op_any_device): views, data movement
 * through lq_strided_to / lq_grad_add, and the checkpoint, which re-runs other ops. */
#define LQ_OP_ANY_DEVICE_LIST(X) X(contiguous) X(reshape) X(transpose) X(permute) X(slice) X(concat) X(checkpoint)

bool lq_op_any_device(const lq_op_def *op) {
#define LQ_OP_IS(name) if (op == &lq_op_##name) return true;
    LQ_OP_ANY_DEVICE_LIST(LQ_OP_IS)
#undef LQ_OP_IS
    return false;
}

int lq_op_count(void) { return lq_op_table_len; }

const char *lq_op_name(int i) { return (i >= 0 && i < lq_op_table_len) ? lq_op_table[i]->name : NULL; }

int lq_op_find(const char *name) {
    for (int i = 0; i < lq_op_table_len; i++)
        if (name && strcmp(lq_op_table[i]->name, name) == 0) return i;
    return -1;
}
