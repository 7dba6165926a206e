/* train/metrics.c: the trainer's metrics.jsonl, its progress line and the SVG loss plot. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core/file.h"
#include "io/io.h"
#include "train/trainer_impl.h"

#define METRICS_MAX_FILE ((int64_t)1 << 30)

int64_t lq_peak_rss(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (int64_t)ru.ru_maxrss * 1024; /* Linux: KiB */
}

/* JSON has no NaN / Inf: those are written as null. */
static void put_num(FILE *f, const char *key, double v, bool comma) {
    if (isfinite(v)) fprintf(f, "\"%s\": %.9g%s", key, v, comma ? ", " : "");
    else fprintf(f, "\"%s\": null%s", key, comma ? ", " : "");
}

/* One line per call, flushed so a crash or Ctrl-C keeps everything up to the last step. */
void lq_metrics_step(lq_metrics *m, const lq_step_info *s, double elapsed_s) {
    if (!m->f) return;
    fprintf(m->f, "{\"step\": %lld, ", (long long)s->step);
    put_num(m->f, "loss", s->loss, true);
    put_num(m->f, "lr", s->lr, true);
    put_num(m->f, "grad_norm", s->grad_norm, true);
    fprintf(m->f, "\"tokens\": %lld, ", (long long)s->tokens);
    put_num(m->f, "tokens_per_s", s->tokens_per_s, true);
    put_num(m->f, "elapsed_s", elapsed_s, true);
    fprintf(m->f, "\"peak_rss_bytes\": %lld}\n", (long long)s->peak_rss);
    fflush(m->f);
}

void lq_metrics_eval(lq_metrics *m, int64_t step, double loss) {
    if (!m->f) return;
    fprintf(m->f, "{\"step\": %lld, ", (long long)step);
    put_num(m->f, "eval_loss", loss, true);
    put_num(m->f, "eval_ppl", exp(loss), false);
    fprintf(m->f, "}\n");
    fflush(m->f);
}

void lq_metrics_close(lq_metrics *m) {
    if (m->f) {
        fflush(m->f);
        fsync(fileno(m->f));
        fclose(m->f);
    }
    m->f = NULL;
}

/* Step of a metrics line, or -1 when it is not a well-formed object with an integer "step". */
static int64_t line_step(const char *s, size_t n) {
    cJSON *j = cJSON_ParseWithLength(s, n);
    int64_t step = -1;
    cJSON *st = j ? cJSON_GetObjectItemCaseSensitive(j, "step") : NULL;
    if (cJSON_IsNumber(st) && st->valuedouble >= 0 && st->valuedouble < 9e15 && st->valuedouble == floor(st->valuedouble))
        step = (int64_t)st->valuedouble;
    cJSON_Delete(j);
    return step;
}

lq_status lq_metrics_open(lq_metrics *m, const char *dir, int64_t keep_upto, lq_err *err) {
    memset(m, 0, sizeof *m);
    if ((size_t)snprintf(m->path, sizeof m->path, "%s/metrics.jsonl", dir) >= sizeof m->path)
        return LQ_ERR(err, LQ_ERR_INPUT, "%s: path too long", dir);
    if (keep_upto >= 0 && access(m->path, F_OK) == 0) {
        char *buf = NULL;
        size_t len = 0;
        LQ_TRY(lq_read_file(m->path, METRICS_MAX_FILE, "the metrics log", &buf, &len, err));
        lq_atomic_file af;
        lq_status st = lq_atomic_open(&af, m->path, err);
        for (size_t i = 0; i < len && st == LQ_OK;) {
            size_t j = i;
            while (j < len && buf[j] != '\n') j++;
            /* a line cut short by a crash has no newline and is dropped with the later ones */
            int64_t s = j < len ? line_step(buf + i, j - i) : -1;
            if (s >= 0 && s <= keep_upto) st = lq_atomic_write(&af, buf + i, j - i + 1, err);
            i = j + 1;
        }
        free(buf);
        if (st == LQ_OK) st = lq_atomic_commit(&af, err);
        lq_atomic_abort(&af);
        LQ_TRY(st);
    }
    m->f = fopen(m->path, keep_upto >= 0 ? "a" : "w");
    if (!m->f) return LQ_ERR(err, LQ_ERR_IO, "%s: cannot open for writing: %s", m->path, strerror(errno));
    return LQ_OK;
}

void lq_progress_format(char *buf, size_t n, const lq_step_info *s, double eta_s) {
    long eta = isfinite(eta_s) && eta_s >= 0 ? (long)(eta_s + 0.5) : 0;
    char etab[32];
    if (eta >= 3600) snprintf(etab, sizeof etab, "%ld:%02ld:%02ld", eta / 3600, eta / 60 % 60, eta % 60);
    else snprintf(etab, sizeof etab, "%ld:%02ld", eta / 60, eta % 60);
    snprintf(buf, n, "step %lld/%lld  loss %.4f  lr %.2e  %.0f tok/s  ETA %s  peak %lld MiB", (long long)s->step,
             (long long)s->total, s->loss, s->lr, s->tokens_per_s, etab, (long long)(s->peak_rss >> 20));
}

/* --- loss.svg -------------------------------------------------------------------------------- */

typedef struct pt {
    double x, y;
} pt;

/* A "nice" tick spacing (1, 2 or 5 times a power of ten) giving about n ticks over span. */
static double nice_step(double span, int n) {
    if (!(span > 0)) return 1;
    double raw = span / n, p = pow(10, floor(log10(raw))), f = raw / p;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
}

static void xml_text(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '<') fputs("&lt;", f);
        else if (*s == '>') fputs("&gt;", f);
        else if (*s == '&') fputs("&amp;", f);
        else if (*s == '"') fputs("&quot;", f);
        else fputc(*s, f);
    }
}

static lq_status push(pt **a, size_t *n, size_t *cap, double x, double y, lq_err *err) {
    if (*n == *cap) {
        *cap = *cap ? 2 * *cap : 256;
        pt *b = realloc(*a, *cap * sizeof *b);
        if (!b) return LQ_ERR(err, LQ_ERR_OOM, "loss plot points");
        *a = b;
    }
    (*a)[(*n)++] = (pt){x, y};
    return LQ_OK;
}

static lq_status read_points(const char *path, pt **tr, size_t *ntr, pt **ev, size_t *nev, lq_err *err) {
    char *buf = NULL;
    size_t len = 0, ctr = 0, cev = 0;
    LQ_TRY(lq_read_file(path, METRICS_MAX_FILE, "the metrics log", &buf, &len, err));
    lq_status st = LQ_OK;
    for (size_t i = 0; i < len && st == LQ_OK;) {
        size_t j = i;
        while (j < len && buf[j] != '\n') j++;
        cJSON *o = cJSON_ParseWithLength(buf + i, j - i);
        cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "step"), *l = cJSON_GetObjectItemCaseSensitive(o, "loss"),
              *e = cJSON_GetObjectItemCaseSensitive(o, "eval_loss");
        if (cJSON_IsNumber(s) && cJSON_IsNumber(l) && isfinite(l->valuedouble))
            st = push(tr, ntr, &ctr, s->valuedouble, l->valuedouble, err);
        if (st == LQ_OK && cJSON_IsNumber(s) && cJSON_IsNumber(e) && isfinite(e->valuedouble))
            st = push(ev, nev, &cev, s->valuedouble, e->valuedouble, err);
        cJSON_Delete(o);
        i = j + 1;
    }
    free(buf);
    return st;
}

lq_status lq_metrics_plot(const char *metrics_path, const char *svg_path, const char *title, lq_err *err) {
    pt *tr = NULL, *ev = NULL;
    size_t ntr = 0, nev = 0;
    lq_status st = read_points(metrics_path, &tr, &ntr, &ev, &nev, err);
    if (st != LQ_OK) {
        free(tr);
        free(ev);
        return st;
    }
    double x0 = 0, x1 = 1, y0 = INFINITY, y1 = -INFINITY;
    for (size_t i = 0; i < ntr; i++) {
        x1 = fmax(x1, tr[i].x);
        y0 = fmin(y0, tr[i].y);
        y1 = fmax(y1, tr[i].y);
    }
    for (size_t i = 0; i < nev; i++) {
        x1 = fmax(x1, ev[i].x);
        y0 = fmin(y0, ev[i].y);
        y1 = fmax(y1, ev[i].y);
    }
    if (!(y0 <= y1)) y0 = 0, y1 = 1;
    if (y1 - y0 < 1e-9) y0 -= 0.5, y1 += 0.5;
    double ys = nice_step(y1 - y0, 6), xs = nice_step(x1 - x0, 8);
    y0 = floor(y0 / ys) * ys;
    y1 = ceil(y1 / ys) * ys;
    x1 = ceil(x1 / xs) * xs;
    const double W = 800, H = 480, L = 70, R = 20, T = 40, B = 50, pw = W - L - R, ph = H - T - B;
#define SX(v) (L + ((v) - x0) / (x1 - x0) * pw)
#define SY(v) (T + ph - ((v) - y0) / (y1 - y0) * ph)
    lq_atomic_file af;
    LQ_TRY(lq_atomic_open(&af, svg_path, err));
    char *txt = NULL;
    size_t tl = 0;
    FILE *f = open_memstream(&txt, &tl);
    if (!f) {
        lq_atomic_abort(&af);
        free(tr);
        free(ev);
        return LQ_ERR(err, LQ_ERR_OOM, "loss plot");
    }
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
               "font-family=\"sans-serif\" font-size=\"12\">\n", W, H, W, H);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n<text x=\"%.0f\" y=\"24\" text-anchor=\"middle\" "
               "font-size=\"16\">", W / 2);
    xml_text(f, title);
    fprintf(f, "</text>\n");
    for (double y = y0; y <= y1 + ys * 1e-6; y += ys) {
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", L, SY(y), L + pw, SY(y));
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", L - 6, SY(y) + 4, y);
    }
    for (double x = x0; x <= x1 + xs * 1e-6; x += xs) {
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#000\"/>\n", SX(x), T + ph, SX(x), T + ph + 5);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g</text>\n", SX(x), T + ph + 18, x);
    }
    fprintf(f, "<path d=\"M%.1f %.1f V%.1f H%.1f\" fill=\"none\" stroke=\"#000\"/>\n", L, T, T + ph, L + pw);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">step</text>\n", L + pw / 2, H - 10);
    fprintf(f, "<text x=\"16\" y=\"%.1f\" text-anchor=\"middle\" transform=\"rotate(-90 16 %.1f)\">loss</text>\n",
            T + ph / 2, T + ph / 2);
    if (ntr) {
        fprintf(f, "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"");
        for (size_t i = 0; i < ntr; i++) fprintf(f, "%s%.1f,%.1f", i ? " " : "", SX(tr[i].x), SY(tr[i].y));
        fprintf(f, "\"/>\n");
    }
    for (size_t i = 0; i < nev; i++)
        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"#d62728\"/>\n", SX(ev[i].x), SY(ev[i].y));
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#1f77b4\" stroke-width=\"1.5\"/>"
               "<text x=\"%.1f\" y=\"%.1f\">train loss</text>\n", L + pw - 150, T + 12, L + pw - 130, T + 12, L + pw - 125, T + 16);
    fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"#d62728\"/><text x=\"%.1f\" y=\"%.1f\">eval loss</text>\n",
            L + pw - 140, T + 30, L + pw - 125, T + 34);
    fprintf(f, "</svg>\n");
#undef SX
#undef SY
    fclose(f);
    free(tr);
    free(ev);
    st = lq_atomic_write(&af, txt, tl, err);
    free(txt);
    if (st == LQ_OK) st = lq_atomic_commit(&af, err);
    lq_atomic_abort(&af);
    return st;
}
