/* train/cmd_qat.c: `loquat qat CONFIG [--compare] [--json]`: runs the float / PTQ / QAT experiments a
 * config describes and writes the comparison table (markdown, CSV), a plot (SVG) and JSON. */
#define _XOPEN_SOURCE 700 /* nftw */
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "io/io.h"
#include "train/qat_impl.h"
#include "train/trainer_impl.h"

#define MAX_ROWS (1 + 2 * LQ_QAT_MAX_SCHEMES)

/* The float row's metric, for the gap columns. */
static const lq_qat_result *float_row(const lq_qat_result *r, int n) {
    for (int i = 0; i < n; i++)
        if (!strcmp(r[i].mode, "float")) return &r[i];
    return NULL;
}

/* Fraction of what PTQ loses that QAT wins back, for scheme s (NaN without both rows or a loss). */
static double recovered(const lq_qat_result *r, int n, const char *scheme, double flt, bool lm) {
    const lq_qat_result *p = NULL, *q = NULL;
    for (int i = 0; i < n; i++) {
        if (strcmp(r[i].scheme, scheme)) continue;
        if (!strcmp(r[i].mode, "ptq")) p = &r[i];
        if (!strcmp(r[i].mode, "qat")) q = &r[i];
    }
    if (!p || !q) return NAN;
    double ptq_gap = lm ? p->metric - flt : flt - p->metric, qat_gap = lm ? q->metric - flt : flt - q->metric;
    return ptq_gap > 0 ? 100.0 * (ptq_gap - qat_gap) / ptq_gap : NAN;
}

static void fmt_num(char *b, size_t n, double v, const char *f) {
    if (isnan(v)) snprintf(b, n, "-");
    else snprintf(b, n, f, v);
}

static lq_status write_tables(const lq_qat_config *c, const lq_qat_result *r, int n, bool compare, lq_err *err) {
    bool lm = r[0].lm;
    const lq_qat_result *fr = float_row(r, n);
    double flt = fr ? fr->metric : NAN;
    char path[4200];
    const char *metric = lm ? "perplexity" : "accuracy (%)";
    snprintf(path, sizeof path, "%s/compare.md", c->output_dir);
    FILE *md = fopen(path, "w");
    snprintf(path, sizeof path, "%s/compare.csv", c->output_dir);
    FILE *csv = fopen(path, "w");
    if (!md || !csv) {
        if (md) fclose(md);
        if (csv) fclose(csv);
        return LQ_ERR(err, LQ_ERR_IO, "%s: cannot write compare.md / compare.csv", c->output_dir);
    }
    fprintf(md, "# loquat qat%s: %s (%s)\n\n", compare ? " --compare" : "", c->model, c->source);
    fprintf(md, "| scheme | mode | %s | integer model | gap to float | PTQ gap recovered | size (bytes) | size vs float |\n",
            metric);
    fprintf(md, "|---|---|---:|---:|---:|---:|---:|---:|\n");
    fprintf(csv, "scheme,mode,%s,int_%s,gap_to_float,ptq_gap_recovered_pct,size_bytes,size_ratio,seconds\n",
            lm ? "perplexity" : "accuracy", lm ? "perplexity" : "accuracy");
    for (int i = 0; i < n; i++) {
        const lq_qat_result *x = &r[i];
        double gap = lm ? x->metric - flt : flt - x->metric;
        double rec = !strcmp(x->mode, "qat") ? recovered(r, n, x->scheme, flt, lm) : NAN;
        double ratio = fr && fr->size_bytes ? (double)x->size_bytes / (double)fr->size_bytes : NAN;
        char m[32], im[32], g[32], rc[32], rt[32];
        fmt_num(m, sizeof m, x->metric, lm ? "%.3f" : "%.2f");
        fmt_num(im, sizeof im, x->int_metric, lm ? "%.3f" : "%.2f");
        fmt_num(g, sizeof g, !strcmp(x->mode, "float") ? NAN : gap, lm ? "%+.3f" : "%+.2f");
        fmt_num(rc, sizeof rc, rec, "%.1f%%");
        fmt_num(rt, sizeof rt, ratio, "%.3f");
        fprintf(md, "| %s | %s | %s | %s | %s | %s | %lld | %s |\n", x->scheme, x->mode, m, im, g, rc, (long long)x->size_bytes, rt);
        fprintf(csv, "%s,%s,%.6g,%.6g,%.6g,%.6g,%lld,%.6g,%.1f\n", x->scheme, x->mode, x->metric, x->int_metric,
                !strcmp(x->mode, "float") ? 0.0 : gap, rec, (long long)x->size_bytes, ratio, x->seconds);
    }
    fprintf(md, "\n%s with fake quantization; \"integer model\" is the same model converted to integer codes and "
                "evaluated with integer arithmetic, read back from its safetensors export. Gap = %s. Recovered = "
                "(PTQ gap - QAT gap) / PTQ gap.\n",
            lm ? "Perplexity on the held-out text" : "Test accuracy",
            lm ? "perplexity - float perplexity" : "float accuracy - accuracy (points)");
    bool bad = ferror(md) || ferror(csv);
    bad |= fclose(md) != 0;
    bad |= fclose(csv) != 0;
    if (bad) return LQ_ERR(err, LQ_ERR_IO, "%s: writing compare.md / compare.csv failed", c->output_dir);
    return LQ_OK;
}

/* A grouped bar chart: one group per scheme (PTQ and QAT bars), the float result as a line. */
static lq_status write_plot(const lq_qat_config *c, const lq_qat_result *r, int n, lq_err *err) {
    bool lm = r[0].lm;
    const lq_qat_result *fr = float_row(r, n);
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < n; i++) lo = fmin(lo, r[i].metric), hi = fmax(hi, r[i].metric);
    if (!isfinite(lo) || !isfinite(hi)) return LQ_OK;
    double base = lm ? 0 : fmax(0, floor((lo - 5) / 10) * 10), top = lm ? hi * 1.1 : fmin(100, ceil(hi + 1));
    if (top <= base) top = base + 1;
    char path[4200];
    snprintf(path, sizeof path, "%s/compare.svg", c->output_dir);
    FILE *f = fopen(path, "w");
    if (!f) return LQ_ERR(err, LQ_ERR_IO, "%s: cannot write", path);
    int W = 720, H = 400, L = 60, R = 20, T = 40, B = 60;
    int groups = 0;
    const char *names[LQ_QAT_MAX_SCHEMES];
    for (int i = 0; i < n; i++) {
        if (!strcmp(r[i].mode, "float")) continue;
        bool seen = false;
        for (int g = 0; g < groups; g++) seen |= !strcmp(names[g], r[i].scheme);
        if (!seen && groups < LQ_QAT_MAX_SCHEMES) names[groups++] = r[i].scheme;
    }
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    fprintf(f, "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n", W, H);
    fprintf(f, "<text x=\"%d\" y=\"22\" font-size=\"14\">%s: %s by scheme (PTQ vs QAT)</text>\n", L, c->model,
            lm ? "perplexity (lower is better)" : "test accuracy %");
    double pw = W - L - R, ph = H - T - B;
#define Y(v) (T + ph * (1 - ((v) - base) / (top - base)))
    for (int k = 0; k <= 5; k++) {
        double v = base + (top - base) * k / 5;
        fprintf(f, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/><text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.*f</text>\n",
                L, W - R, Y(v), Y(v), L - 6, Y(v) + 4, lm ? 1 : 0, v);
    }
    double gw = groups ? pw / groups : pw;
    for (int g = 0; g < groups; g++) {
        for (int i = 0; i < n; i++) {
            if (strcmp(r[i].scheme, names[g])) continue;
            bool q = !strcmp(r[i].mode, "qat");
            double x = L + g * gw + gw * (q ? 0.5 : 0.15), v = fmax(base, fmin(top, r[i].metric));
            fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"/>\n", x, Y(v), gw * 0.33,
                    Y(base) - Y(v), q ? "#2a7" : "#e83");
        }
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%s</text>\n", L + (g + 0.5) * gw, H - B + 18, names[g]);
    }
    if (fr)
        fprintf(f, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#36c\" stroke-dasharray=\"6 3\"/>"
                   "<text x=\"%d\" y=\"%.1f\" fill=\"#36c\" text-anchor=\"end\">float %.2f</text>\n",
                L, W - R, Y(fr->metric), Y(fr->metric), W - R, Y(fr->metric) - 4, fr->metric);
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"12\" fill=\"#e83\"/><text x=\"%d\" y=\"%d\">PTQ</text>"
               "<rect x=\"%d\" y=\"%d\" width=\"12\" height=\"12\" fill=\"#2a7\"/><text x=\"%d\" y=\"%d\">QAT</text>\n",
            L, H - 24, L + 16, H - 14, L + 70, H - 24, L + 86, H - 14);
#undef Y
    fprintf(f, "</svg>\n");
    bool bad = ferror(f) != 0;
    bad |= fclose(f) != 0;
    return bad ? LQ_ERR(err, LQ_ERR_IO, "%s: write failed", path) : LQ_OK;
}

static void print_json(const lq_qat_result *r, int n) {
    cJSON *root = cJSON_CreateObject(), *a = cJSON_AddArrayToObject(root, "results");
    for (int i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "scheme", r[i].scheme);
        cJSON_AddStringToObject(o, "mode", r[i].mode);
        cJSON_AddNumberToObject(o, r[i].lm ? "perplexity" : "accuracy", r[i].metric);
        if (!isnan(r[i].int_metric)) cJSON_AddNumberToObject(o, r[i].lm ? "int_perplexity" : "int_accuracy", r[i].int_metric);
        cJSON_AddNumberToObject(o, "loss", r[i].loss);
        cJSON_AddNumberToObject(o, "size_bytes", (double)r[i].size_bytes);
        cJSON_AddNumberToObject(o, "seconds", r[i].seconds);
        cJSON_AddItemToArray(a, o);
    }
    char *s = cJSON_PrintUnformatted(root);
    if (s) printf("%s\n", s);
    free(s);
    cJSON_Delete(root);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

/* Bad input leaves nothing behind: the output folder goes if this run made it, else the files this
 * run made in it (metrics.jsonl, config.yaml, the token cache of a language-model run). */
typedef struct out_undo {
    bool dir, metrics, config, cache;
} out_undo;

static bool exists(const char *dir, const char *name) {
    char p[4200];
    struct stat sb;
    snprintf(p, sizeof p, "%s%s%s", dir, name[0] ? "/" : "", name);
    return stat(p, &sb) == 0;
}

static void undo_snapshot(out_undo *u, const char *dir) {
    u->dir = exists(dir, ""), u->metrics = exists(dir, "metrics.jsonl");
    u->config = exists(dir, "config.yaml"), u->cache = exists(dir, "cache");
}

static void undo_apply(const out_undo *u, const char *dir) {
    char p[4200];
    if (!u->dir) {
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        return;
    }
    const char *names[3] = {"metrics.jsonl", "config.yaml", "cache"};
    const bool had[3] = {u->metrics, u->config, u->cache};
    for (int i = 0; i < 3; i++) {
        if (had[i]) continue;
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        nftw(p, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    }
}

static int exit_code(lq_status s) {
    switch (s) {
    case LQ_OK: return 0;
    case LQ_ERR_ARG:
    case LQ_ERR_INPUT:
    case LQ_ERR_SHAPE: return 2;
    case LQ_ERR_INTERRUPTED: return 130;
    default: return 1;
    }
}

int lq_cmd_qat(const char *config, const char *const *sets, int n_sets, bool compare, bool json, bool quiet) {
    lq_err err = {0};
    lq_qat_config c;
    lq_status st = lq_qat_config_load(config, sets, n_sets, &c, &err);
    if (st != LQ_OK) {
        fprintf(stderr, "loquat qat: %s\n", err.msg);
        return exit_code(st);
    }
    if (c.threads <= 0) {
        long nc = sysconf(_SC_NPROCESSORS_ONLN);
        c.threads = nc > 0 ? (int)nc : 1;
    }
    out_undo undo;
    undo_snapshot(&undo, c.output_dir);
    st = lq_mkdirs(c.output_dir, &err);
    lq_qat_log log = {.quiet = quiet, .tty = isatty(2) == 1, .t0 = lq_qat_now()};
    char path[4200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", c.output_dir);
    if (st == LQ_OK && !(log.metrics = fopen(path, "w")))
        st = LQ_ERR(&err, LQ_ERR_IO, "%s: cannot create it", path);
    if (st == LQ_OK) { /* the resolved config beside the results */
        snprintf(path, sizeof path, "%s/config.yaml", c.output_dir);
        FILE *f = fopen(path, "w");
        if (f) {
            lq_qat_config_write(f, &c);
            fclose(f);
        }
    }
    lq_qat_result res[MAX_ROWS];
    int n = 0;
    const lq_qat_scheme *schemes = compare ? c.compare : &c.quantization.scheme;
    int n_schemes = compare ? c.n_compare : 1;
    if (st == LQ_OK) {
        if (!compare && !c.quantization.scheme.name) { /* the row label: W4A8, W4G32-DYN8, W8A32 ... */
            const lq_qat_scheme *q = &c.quantization.scheme;
            char nm[64];
            int wb = q->weights.enabled ? q->weights.bits : 32, ab = q->activations.enabled ? q->activations.bits : 32;
            if (q->weights.enabled && q->weights.granularity == LQ_GRAN_GROUP)
                snprintf(nm, sizeof nm, "W%dG%lld", wb, (long long)q->weights.group_size);
            else
                snprintf(nm, sizeof nm, "W%d", wb);
            size_t l = strlen(nm);
            if (q->activations.enabled && q->activations.granularity == LQ_GRAN_TOKEN) snprintf(nm + l, sizeof nm - l, "-DYN%d", ab);
            else snprintf(nm + l, sizeof nm - l, "A%d%s", ab, q->pact ? "-PACT" : "");
            c.quantization.scheme.name = strdup(nm);
        }
        st = lq_qat_is_classifier(&c) ? lq_qat_cls_run(&c, schemes, n_schemes, compare, &log, res, &n, &err)
                                      : lq_qat_lm_run(&c, schemes, n_schemes, compare, &log, res, &n, &err);
    }
    if (log.metrics) fclose(log.metrics);
    for (int i = 0; i < n; i++) res[i].lm = !lq_qat_is_classifier(&c);
    if (st == LQ_OK && n > 0) st = write_tables(&c, res, n, compare, &err);
    if (st == LQ_OK && n > 0) st = write_plot(&c, res, n, &err);
    if (st != LQ_OK) {
        fprintf(stderr, "loquat qat: %s\n", err.msg);
        if (exit_code(st) == 2) undo_apply(&undo, c.output_dir);
        lq_qat_config_free(&c);
        return exit_code(st);
    }
    if (!quiet) {
        snprintf(path, sizeof path, "%s/compare.md", c.output_dir);
        FILE *f = fopen(path, "r");
        char line[512];
        while (f && fgets(line, sizeof line, f)) fputs(line, stdout);
        if (f) fclose(f);
        printf("\nwritten: %s/compare.md, compare.csv, compare.svg, metrics.jsonl\n", c.output_dir);
    }
    if (json) print_json(res, n);
    lq_qat_config_free(&c);
    return 0;
}
