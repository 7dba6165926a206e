/* datasets/chat_template.c: renders a conversation with the ChatML template. */
#include <stdlib.h>
#include <string.h>

#include "datasets/datasets.h"

lq_status lq_chat_render_chatml(const lq_chat_msg *msgs, size_t n, bool add_generation_prompt, char **out,
                                size_t *out_len, lq_err *err) {
    static const char open[] = "<|im_start|>", close[] = "<|im_end|>\n", gen[] = "<|im_start|>assistant\n";
    if ((!msgs && n) || !out || !out_len) return LQ_ERR(err, LQ_ERR_ARG, "lq_chat_render_chatml: NULL argument");
    *out = NULL, *out_len = 0;
    size_t total = add_generation_prompt ? sizeof gen - 1 : 0;
    for (size_t i = 0; i < n; i++) {
        if (!msgs[i].role || !msgs[i].content)
            return LQ_ERR(err, LQ_ERR_ARG, "lq_chat_render_chatml: message %zu has no role or content", i);
        size_t add = sizeof open - 1 + strlen(msgs[i].role) + 1 + strlen(msgs[i].content) + sizeof close - 1;
        if (total > SIZE_MAX - add - 1) return LQ_ERR(err, LQ_ERR_ARG, "lq_chat_render_chatml: conversation too long");
        total += add;
    }
    char *o = malloc(total + 1);
    if (!o) return LQ_ERR(err, LQ_ERR_OOM, "lq_chat_render_chatml: out of memory for %zu bytes", total + 1);
    size_t k = 0;
#define PUT(s, l) (memcpy(o + k, (s), (l)), k += (l))
    for (size_t i = 0; i < n; i++) {
        PUT(open, sizeof open - 1);
        PUT(msgs[i].role, strlen(msgs[i].role));
        PUT("\n", 1);
        PUT(msgs[i].content, strlen(msgs[i].content));
        PUT(close, sizeof close - 1);
    }
    if (add_generation_prompt) PUT(gen, sizeof gen - 1);
#undef PUT
    o[k] = 0;
    *out = o, *out_len = k;
    return LQ_OK;
}
