/* core/status.h: status codes, the error record and the check macros every module uses. */
#ifndef LQ_CORE_STATUS_H
#define LQ_CORE_STATUS_H

#include <stdarg.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What went wrong, coarse enough for a caller to act on (the CLI maps these to exit codes). */
typedef enum lq_status {
    LQ_OK = 0,
    LQ_ERR_ARG,         /* an argument is invalid (NULL, out of range, wrong dtype) */
    LQ_ERR_SHAPE,       /* tensor shapes do not fit together */
    LQ_ERR_INPUT,       /* a user file or config is malformed or missing */
    LQ_ERR_IO,          /* the system refused a read or write (disk full, permission) */
    LQ_ERR_OOM,         /* an allocation failed */
    LQ_ERR_NUMERIC,     /* NaN or Inf where a finite value is required */
    LQ_ERR_UNSUPPORTED, /* valid request this build or device cannot do */
    LQ_ERR_STATE,       /* call made in the wrong state (e.g. backward twice) */
    LQ_ERR_INTERNAL,    /* a bug in loquat */
    LQ_ERR_INTERRUPTED, /* the user stopped the run (Ctrl-C); state was saved first */
    LQ_STATUS_COUNT
} lq_status;

#define LQ_ERR_MSG_MAX 512

/* The first failure is kept with where it happened; later failures do not overwrite it. */
typedef struct lq_err {
    lq_status status;
    const char *file;
    int line;
    char msg[LQ_ERR_MSG_MAX];
} lq_err;

const char *lq_status_name(lq_status s);
/* Exit code for a CLI: 0 ok, 2 bad usage / config / input, 1 any runtime failure. */
int lq_status_exit_code(lq_status s);

void lq_err_clear(lq_err *e);
/* Records s with a printf-style message (if e is non-NULL and holds no earlier error); returns s. */
lq_status lq_err_set(lq_err *e, lq_status s, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
lq_status lq_err_vset(lq_err *e, lq_status s, const char *file, int line, const char *fmt, va_list ap);
/* As lq_err_set, prefixing "check `expr` failed: ". */
lq_status lq_err_check(lq_err *e, lq_status s, const char *file, int line, const char *expr,
                       const char *fmt, ...) __attribute__((format(printf, 6, 7)));

#define LQ_ERR(e, s, ...) lq_err_set((e), (s), __FILE__, __LINE__, __VA_ARGS__)

/* Returns s from the calling function, with file:line, the failing expression and a hint. */
#define LQ_CHECK(e, cond, s, ...)                                                        \
    do {                                                                                 \
        if (!(cond)) return lq_err_check((e), (s), __FILE__, __LINE__, #cond, __VA_ARGS__); \
    } while (0)

/* Propagates a non-OK status. */
#define LQ_TRY(expr)                          \
    do {                                      \
        lq_status lq_try_s_ = (expr);         \
        if (lq_try_s_ != LQ_OK) return lq_try_s_; \
    } while (0)

#ifdef __cplusplus
}
#endif

#endif
