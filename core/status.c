/* core/status.c: status names, exit codes and the error record. */
#include "core/status.h"

#include <stdio.h>
#include <string.h>

static const char *const status_names[LQ_STATUS_COUNT] = {
    [LQ_OK] = "ok",
    [LQ_ERR_ARG] = "invalid argument",
    [LQ_ERR_SHAPE] = "shape mismatch",
    [LQ_ERR_INPUT] = "bad input",
    [LQ_ERR_IO] = "i/o error",
    [LQ_ERR_OOM] = "out of memory",
    [LQ_ERR_NUMERIC] = "non-finite value",
    [LQ_ERR_UNSUPPORTED] = "unsupported",
    [LQ_ERR_STATE] = "invalid state",
    [LQ_ERR_INTERNAL] = "internal error",
    [LQ_ERR_INTERRUPTED] = "interrupted",
};

const char *lq_status_name(lq_status s) {
    if ((unsigned)s >= LQ_STATUS_COUNT) return "unknown status";
    return status_names[s];
}

int lq_status_exit_code(lq_status s) {
    switch (s) {
    case LQ_OK: return 0;
    case LQ_ERR_ARG:
    case LQ_ERR_SHAPE:
    case LQ_ERR_INPUT: return 2;
    default: return 1;
    }
}

void lq_err_clear(lq_err *e) {
    if (!e) return;
    e->status = LQ_OK;
    e->file = NULL;
    e->line = 0;
    e->msg[0] = '\0';
}

lq_status lq_err_vset(lq_err *e, lq_status s, const char *file, int line, const char *fmt, va_list ap) {
    if (!e || e->status != LQ_OK) return s;
    e->status = s;
    e->file = file;
    e->line = line;
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    return s;
}

lq_status lq_err_set(lq_err *e, lq_status s, const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    lq_err_vset(e, s, file, line, fmt, ap);
    va_end(ap);
    return s;
}

lq_status lq_err_check(lq_err *e, lq_status s, const char *file, int line, const char *expr,
                       const char *fmt, ...) {
    if (!e || e->status != LQ_OK) return s;
    char hint[LQ_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(hint, sizeof hint, fmt, ap);
    va_end(ap);
    return lq_err_set(e, s, file, line, "check `%s` failed: %s", expr, hint);
}
