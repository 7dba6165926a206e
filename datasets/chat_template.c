/* datasets/chat_template.c: renders a conversation with ChatML, directly or for a model whose chat template is ChatML-family. */
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

/* The default system prompt a ChatML template writes when the first message is not a system one:
 * the literal between "<|im_start|>system\n" and "<|im_end|>" inside the template (SmolLM2's
 * "{{ '<|im_start|>system\nYou are ...<|im_end|>\n' }}"). Jinja escapes inside the literal are
 * not interpreted; a template whose system part is built from variables gives none. */
static char *default_system(const char *tmpl) {
    static const char head[] = "<|im_start|>system\n", tail[] = "<|im_end|>";
    const char *p = strstr(tmpl, head);
    if (!p) return NULL;
    p += sizeof head - 1;
    const char *e = strstr(p, tail);
    if (!e || e == p) return NULL;
    for (const char *q = p; q < e; q++)
        if (*q == '\'' || *q == '"' || *q == '{' || *q == '}') return NULL; /* not one plain literal */
    char *s = malloc((size_t)(e - p) + 1);
    if (!s) return NULL;
    memcpy(s, p, (size_t)(e - p));
    s[e - p] = 0;
    return s;
}

lq_status lq_chat_render_template(const char *tmpl, const lq_chat_msg *msgs, size_t n, bool add_generation_prompt,
                                  char **out, size_t *out_len, lq_err *err) {
    if (!tmpl) return lq_chat_render_chatml(msgs, n, add_generation_prompt, out, out_len, err);
    if (!strstr(tmpl, "<|im_start|>"))
        return LQ_ERR(err, LQ_ERR_UNSUPPORTED,
                      "chat template: only ChatML-family templates (with <|im_start|>) are supported");
    if ((!msgs && n) || !out || !out_len) return LQ_ERR(err, LQ_ERR_ARG, "lq_chat_render_template: NULL argument");
    char *sys = (n == 0 || !msgs[0].role || strcmp(msgs[0].role, "system") != 0) ? default_system(tmpl) : NULL;
    if (!sys) return lq_chat_render_chatml(msgs, n, add_generation_prompt, out, out_len, err);
    lq_chat_msg *all = malloc((n + 1) * sizeof *all);
    if (!all) {
        free(sys);
        return LQ_ERR(err, LQ_ERR_OOM, "lq_chat_render_template: out of memory");
    }
    all[0] = (lq_chat_msg){"system", sys};
    if (n) memcpy(all + 1, msgs, n * sizeof *all);
    lq_status st = lq_chat_render_chatml(all, n + 1, add_generation_prompt, out, out_len, err);
    free(all), free(sys);
    return st;
}
