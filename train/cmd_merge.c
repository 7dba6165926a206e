/* train/cmd_merge.c: `loquat merge`: folds a PEFT LoRA adapter into its base model and exports the
 * merged model as a Hugging Face folder (safetensors) or one GGUF file.
 *
 * The base is loaded in its own dtype (a quantized GGUF base is dequantized per weight when the
 * adapter is merged, as PEFT's merge_and_unload does on a dequantized base): W' = deq(W) +
 * scaling * B A in float32, then converted to --dtype. Output is all-or-nothing: a GGUF file is
 * written atomically; a folder's files are first written into a temporary sibling folder and only
 * then renamed into place (each rename atomic), so a failure leaves no new file behind. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/file.h"
#include "lora/lora.h"
#include "models/models.h"
#include "train/cmd_quant_impl.h"
#include "train/train.h"

#define TOKENIZER_MAX_BYTES ((int64_t)256 << 20)

/* Files of a Hugging Face folder that describe the tokenizer and generation defaults. */
static const char *const tok_files[] = {"tokenizer.json",    "tokenizer_config.json", "special_tokens_map.json",
                                        "generation_config.json", "tokenizer.model",  "vocab.json",
                                        "merges.txt",        "added_tokens.json"};
#define N_TOK_FILES ((int)(sizeof tok_files / sizeof tok_files[0]))

typedef struct merge_job {
    const lq_merge_opts *o;
    bool gguf;
    lq_export_dtype dt;
    const char *dt_name;
    bool per_tensor; /* print a line per converted tensor (requantizing dtypes) */
    jbuf js;         /* the "tensors" array of --json */
    int n_rep;
    double sum_rmse, max_abs, min_sqnr;
    char *tmpdir; /* safetensors: the temporary sibling folder */
    const char *written[2 + N_TOK_FILES]; /* file names inside tmpdir */
    int n_written;
    int n_merged;
} merge_job;

static int fail(lq_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(lq_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loquat merge: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return lq_status_exit_code(s);
}

static bool is_dir(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static bool is_file(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcasecmp(s + a - b, suf) == 0;
}

static void on_report(void *user, const char *name, double rmse, double max_abs, double sqnr_db) {
    merge_job *j = user;
    if (j->per_tensor)
        printf("converted  %-48s -> %-5s rmse %.4e  max_abs_err %.4e  sqnr %.2f dB\n", name, j->dt_name, rmse, max_abs,
               sqnr_db);
    jb_printf(&j->js, "%s{\"name\": ", j->n_rep ? ", " : "");
    jb_str(&j->js, name);
    jb_printf(&j->js, ", \"rmse\": %.6e, \"max_abs_err\": %.6e, \"sqnr_db\": ", rmse, max_abs);
    jb_pyfloat(&j->js, sqnr_db);
    jb_printf(&j->js, "}");
    j->sum_rmse += rmse;
    if (max_abs > j->max_abs) j->max_abs = max_abs;
    if (j->n_rep == 0 || sqnr_db < j->min_sqnr) j->min_sqnr = sqnr_db;
    j->n_rep++;
}

/* Copies src to dst (atomically). */
static lq_status copy_file(const char *src, const char *dst, lq_err *err) {
    char *buf = NULL;
    size_t n = 0;
    LQ_TRY(lq_read_file(src, TOKENIZER_MAX_BYTES, "a tokenizer file", &buf, &n, err));
    lq_atomic_file af = {0};
    lq_status s = lq_atomic_open(&af, dst, err);
    if (s == LQ_OK) s = lq_atomic_write(&af, buf, n, err);
    if (s == LQ_OK) s = lq_atomic_commit(&af, err);
    lq_atomic_abort(&af);
    free(buf);
    return s;
}

static char *join(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", a, b);
    return p;
}

/* The tokenizer.json fetch_model.sh puts beside a GGUF file: "<stem>.tokenizer.json", the stem
 * without ".gguf" and without a trailing quantization tag (".Q4_1", ".f16", ...), or with it. */
static char *gguf_tokenizer(const char *gguf) {
    size_t n = strlen(gguf);
    char *stem = malloc(n + 32), *cand = malloc(n + 32);
    if (!stem || !cand) {
        free(stem), free(cand);
        return NULL;
    }
    memcpy(stem, gguf, n + 1);
    if (ends_with(stem, ".gguf")) stem[n - 5] = '\0';
    for (int pass = 0; pass < 2; pass++) {
        snprintf(cand, n + 32, "%s.tokenizer.json", stem);
        if (is_file(cand)) {
            free(stem);
            return cand;
        }
        char *dot = strrchr(stem, '.'), *slash = strrchr(stem, '/');
        if (!dot || (slash && dot < slash)) break;
        *dot = '\0';
    }
    free(stem), free(cand);
    return NULL;
}

/* Copies the base's tokenizer files into the temporary folder; prints what it did. */
static lq_status copy_tokenizer(merge_job *j, lq_err *err) {
    const char *model = j->o->model;
    if (is_dir(model)) {
        for (int i = 0; i < N_TOK_FILES; i++) {
            char *src = join(model, tok_files[i]), *dst = join(j->tmpdir, tok_files[i]);
            lq_status s = (!src || !dst) ? LQ_ERR(err, LQ_ERR_OOM, "out of memory") : LQ_OK;
            if (s == LQ_OK && is_file(src)) {
                s = copy_file(src, dst, err);
                if (s == LQ_OK) j->written[j->n_written++] = tok_files[i];
            }
            free(src), free(dst);
            LQ_TRY(s);
        }
        if (j->n_written == 2)
            fprintf(stderr, "loquat merge: note: %s has no tokenizer files; the output has none\n", model);
        return LQ_OK;
    }
    char *src = gguf_tokenizer(model);
    if (!src) {
        fprintf(stderr,
                "loquat merge: note: no tokenizer.json found beside %s (looked for <stem>.tokenizer.json); the output "
                "folder has no tokenizer files\n", model);
        return LQ_OK;
    }
    char *dst = join(j->tmpdir, "tokenizer.json");
    lq_status s = dst ? copy_file(src, dst, err) : LQ_ERR(err, LQ_ERR_OOM, "out of memory");
    if (s == LQ_OK) {
        j->written[j->n_written++] = "tokenizer.json";
        fprintf(stderr, "loquat merge: tokenizer.json copied from %s\n", src);
    }
    free(src), free(dst);
    return s;
}

/* Removes the temporary folder and whatever is in it (only files this command wrote, plus any
 * atomic-write leftovers). */
static void remove_tmpdir(merge_job *j) {
    if (!j->tmpdir) return;
    DIR *d = opendir(j->tmpdir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char *p = join(j->tmpdir, e->d_name);
            if (p) remove(p);
            free(p);
        }
        closedir(d);
    }
    rmdir(j->tmpdir);
    free(j->tmpdir);
    j->tmpdir = NULL;
}

/* The temporary folder beside out: "<parent>/.<name>.merge.XXXXXX". */
static lq_status make_tmpdir(merge_job *j, lq_err *err) {
    char *a = strdup(j->o->out), *b = strdup(j->o->out);
    if (!a || !b) {
        free(a), free(b);
        return LQ_ERR(err, LQ_ERR_OOM, "out of memory");
    }
    const char *parent = dirname(a), *name = basename(b);
    size_t n = strlen(parent) + strlen(name) + 32;
    j->tmpdir = malloc(n);
    lq_status s = LQ_OK;
    if (!j->tmpdir) s = LQ_ERR(err, LQ_ERR_OOM, "out of memory");
    else {
        snprintf(j->tmpdir, n, "%s/.%s.merge.XXXXXX", parent, name);
        if (!mkdtemp(j->tmpdir)) {
            s = LQ_ERR(err, LQ_ERR_IO, "cannot create a folder beside %s (in %s): %s", j->o->out, parent,
                       strerror(errno));
            free(j->tmpdir);
            j->tmpdir = NULL;
        }
    }
    free(a), free(b);
    return s;
}

/* Moves the finished files into out (created if missing). */
static lq_status publish(merge_job *j, lq_err *err) {
    bool made = false;
    if (!is_dir(j->o->out)) {
        if (mkdir(j->o->out, 0777) != 0)
            return LQ_ERR(err, LQ_ERR_IO, "cannot create output folder %s: %s", j->o->out, strerror(errno));
        made = true;
    }
    /* model.safetensors goes last: a folder with it is a complete export */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < j->n_written; i++) {
            bool weights = strcmp(j->written[i], "model.safetensors") == 0;
            if (weights != (pass == 1)) continue;
            char *src = join(j->tmpdir, j->written[i]), *dst = join(j->o->out, j->written[i]);
            int rc = (src && dst) ? rename(src, dst) : -1;
            int e = errno;
            free(src), free(dst);
            if (rc != 0) {
                if (made) rmdir(j->o->out);
                return LQ_ERR(err, LQ_ERR_IO, "cannot move %s into %s: %s", j->written[i], j->o->out, strerror(e));
            }
        }
    int fd = open(j->o->out, O_RDONLY | O_DIRECTORY); /* make the renames durable */
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    return LQ_OK;
}

/* llama.cpp cannot load a GGUF without tokenizer.* metadata: say so when the export has none (a
 * Hugging Face base whose tokenizer.json is missing or not a byte-level BPE llama.cpp names). */
static void note_gguf_tokenizer(const char *path) {
    lq_err e = {0};
    lq_gguf_file *g = NULL;
    if (lq_gguf_open(&g, path, &e) != LQ_OK) return;
    if (!lq_gguf_find_kv(g, "tokenizer.ggml.model"))
        fprintf(stderr, "loquat merge: note: %s has no tokenizer.* metadata (the base had none loquat could convert: "
                        "byte-level BPE tokenizer.json with a gpt-2 or smollm pre-tokenizer); llama.cpp needs it to "
                        "load the file\n", path);
    lq_gguf_close(g);
}

static int check_opts(merge_job *j) {
    const lq_merge_opts *o = j->o;
    if (!o->model || !o->adapter || !o->out) return fail(LQ_ERR_ARG, "--model, --adapter and --out are required");
    if (o->format && strcmp(o->format, "gguf") != 0 && strcmp(o->format, "safetensors") != 0)
        return fail(LQ_ERR_ARG, "--format must be safetensors or gguf, got '%s'", o->format);
    j->gguf = o->format ? strcmp(o->format, "gguf") == 0 : ends_with(o->out, ".gguf");
    j->dt_name = o->dtype ? o->dtype : "f32";
    if (!lq_export_dtype_parse(j->dt_name, &j->dt))
        return fail(LQ_ERR_ARG, "--dtype must be f32, f16, bf16, q8_0, q4_0 or nf4, got '%s'", j->dt_name);
    if (j->gguf && j->dt == LQ_EXPORT_NF4)
        return fail(LQ_ERR_ARG, "--dtype nf4 cannot be written as GGUF (GGUF has no NF4 type); use --format "
                                "safetensors, or --dtype q4_0 / q8_0");
    if (!j->gguf && (j->dt == LQ_EXPORT_Q8_0 || j->dt == LQ_EXPORT_Q4_0))
        return fail(LQ_ERR_ARG, "--dtype %s is a GGUF block type; use --format gguf (or f32 / f16 / bf16 / nf4 for "
                                "safetensors)", j->dt_name);
    j->per_tensor = j->dt == LQ_EXPORT_Q8_0 || j->dt == LQ_EXPORT_Q4_0 || j->dt == LQ_EXPORT_NF4;
    struct stat sb;
    if (stat(o->model, &sb) != 0) return fail(LQ_ERR_INPUT, "--model %s: %s", o->model, strerror(errno));
    if (!is_dir(o->adapter))
        return fail(LQ_ERR_INPUT, "--adapter %s: %s", o->adapter,
                    stat(o->adapter, &sb) != 0 ? strerror(errno) : "not a folder (a PEFT adapter folder is expected)");
    if (j->gguf && is_dir(o->out)) return fail(LQ_ERR_ARG, "--out %s is a folder; a GGUF export is one file", o->out);
    if (!j->gguf && stat(o->out, &sb) == 0 && !S_ISDIR(sb.st_mode))
        return fail(LQ_ERR_ARG, "--out %s exists and is not a folder; a safetensors export is a folder", o->out);
    return 0;
}

static void print_summary(merge_job *j) {
    const lq_merge_opts *o = j->o;
    printf("merged %d adapted module%s into %s; wrote %s (%s, %s)\n", j->n_merged, j->n_merged == 1 ? "" : "s",
           o->model, o->out, j->gguf ? "gguf" : "safetensors", j->dt_name);
    if (j->n_rep)
        printf("%d tensor%s converted to %s: mean rmse %.4e, max_abs_err %.4e, min sqnr %.2f dB\n", j->n_rep,
               j->n_rep == 1 ? "" : "s", j->dt_name, j->sum_rmse / j->n_rep, j->max_abs, j->min_sqnr);
    if (!o->json) return;
    jbuf b = {0};
    jb_printf(&b, "{\"command\": \"merge\", \"model\": ");
    jb_str(&b, o->model);
    jb_printf(&b, ", \"adapter\": ");
    jb_str(&b, o->adapter);
    jb_printf(&b, ", \"output\": ");
    jb_str(&b, o->out);
    jb_printf(&b, ", \"format\": \"%s\", \"dtype\": \"%s\", \"merged_modules\": %d, \"converted\": %d, "
                  "\"rmse_mean\": %.6e, \"max_abs_err\": %.6e, \"sqnr_db_min\": ",
              j->gguf ? "gguf" : "safetensors", j->dt_name, j->n_merged, j->n_rep, j->n_rep ? j->sum_rmse / j->n_rep : 0,
              j->max_abs);
    if (j->n_rep) jb_pyfloat(&b, j->min_sqnr);
    else jb_printf(&b, "null");
    jb_printf(&b, ", \"tensors\": [");
    if (!b.failed && !j->js.failed) printf("%s%s]}\n", b.p, j->js.p ? j->js.p : "");
    free(b.p);
}

static int run(merge_job *j) {
    const lq_merge_opts *o = j->o;
    lq_err err = {0};
    lq_llama_model *m = NULL;
    lq_lora_set *set = NULL;
    int rc = 0;
    lq_status s = lq_llama_load(o->model, &m, &err);
    if (s != LQ_OK) {
        rc = fail(s, "%s", err.msg);
        goto done;
    }
    s = lq_peft_load(&set, o->adapter, &err);
    if (s != LQ_OK) {
        rc = fail(s, "%s", err.msg);
        goto done;
    }
    s = lq_llama_lora_attach(m, set, &err);
    if (s != LQ_OK) {
        rc = fail(s, "adapter %s does not fit the model %s: %s", o->adapter, o->model, err.msg);
        goto done;
    }
    j->n_merged = set->n;
    s = lq_llama_lora_merge(m, &err);
    if (s != LQ_OK) {
        rc = fail(s, "merging %s: %s", o->adapter, err.msg);
        goto done;
    }
    if (j->gguf) {
        s = lq_llama_save_gguf_as(m, o->out, j->dt, on_report, j, &err);
        if (s == LQ_OK) note_gguf_tokenizer(o->out);
    } else {
        s = make_tmpdir(j, &err);
        if (s == LQ_OK) s = lq_llama_save_hf(m, j->tmpdir, j->dt, on_report, j, &err);
        if (s == LQ_OK) {
            j->written[j->n_written++] = "config.json";
            j->written[j->n_written++] = "model.safetensors";
            s = copy_tokenizer(j, &err);
        }
        if (s == LQ_OK) s = publish(j, &err);
    }
    if (s != LQ_OK) {
        rc = fail(s, "%s", err.msg);
        goto done;
    }
    if (j->js.failed) {
        rc = fail(LQ_ERR_OOM, "out of memory");
        goto done;
    }
    print_summary(j);
done:
    remove_tmpdir(j);
    lq_llama_free(m);
    lq_lora_set_free(set);
    return rc;
}

int lq_cmd_merge(const lq_merge_opts *o) {
    merge_job j = {0};
    j.o = o;
    int rc = check_opts(&j);
    if (!rc) rc = run(&j);
    free(j.js.p);
    return rc;
}
