/* train/cmd_quantize.c: `loquat quantize`: a safetensors model's linear weights to NF4 / FP4 in
 * transformers' bitsandbytes layout, or to int8 / int4 in loquat's affine layout.
 *
 * Which tensors: names ending in ".weight" with 2 dims and a float dtype (F32, F16, BF16, F64),
 * except those matching a skip glob (fnmatch, '*' also matches dots). transformers' bitsandbytes
 * integration replaces only nn.Linear modules and keeps the output embedding (lm_head), tied
 * weights and the model's last module in float; embeddings and norms are not Linear. A file
 * carries no module types, so the default skip list names them: DEFAULT_SKIP below. --skip
 * replaces that list ("--skip ''" skips nothing). Every other tensor is copied unchanged, and so
 * is the metadata ("format": "pt" is added when missing, as transformers needs it). IN may be a
 * sharded model (index.json or folder); the output is one file, with the first shard's metadata.
 * The quant states record the weight's dtype (float32 / float16 / bfloat16; F64 input is
 * quantized from its float32 rounding and recorded as float32).
 *
 * NF4 / FP4 (bitsandbytes QuantState.as_dict(packed=True), transformers' Linear4bit state dict):
 *   W                                  U8 [(n+1)/2, 1]  two codes per byte, element 2j high
 *   W.absmax                           F32 [blocks], or U8 [blocks] with --double-quant
 *   W.quant_map                        F32 [16]   the code values
 *   W.nested_absmax                    F32 [ceil(blocks / 256)]       (--double-quant)
 *   W.nested_quant_map                 F32 [256]  bitsandbytes' dynamic map (--double-quant)
 *   W.quant_state.bitsandbytes__nf4    U8: the JSON {"quant_type", "blocksize", "dtype",
 *                                      "shape"[, "nested_blocksize", "nested_dtype",
 *                                      "nested_offset"]} as json.dumps writes it
 * int8 / int4 (loquat's layout): symmetric by default (codes in [-2^(b-1), 2^(b-1) - 1]),
 * scales from each row's (or group's) min / max as torch's MinMaxObserver computes them:
 *   W                                  I8 [rows, cols] (int8), or U8 [(n+1)/2] (int4: element 2j
 *                                      in the low nibble, as loquat's I4 dtype)
 *   W.scale                            F32 [rows] (per row) or [rows, cols / G] (--group-size G)
 *   W.zero_point                       I8, shaped as W.scale (--asymmetric): torch's unsigned zero
 *                                      point minus 2^(b-1); the codes are shifted the same way
 *   W.quant_state.loquat__int8|int4    U8: JSON {"quant_type", "bits", "symmetric",
 *                                      "group_size" (0 = per row), "axis": 0, "dtype", "shape"}
 */
#include <fnmatch.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/cmd_quant_impl.h"
#include "train/train.h"

#define DEFAULT_SKIP "*embed*,*lm_head*,*wte*,*wpe*,*norm*"
#define DEFAULT_BLOCK 64
#define MIN_BLOCK 32
#define MAX_BLOCK 4096

typedef struct qjob {
    const char *in, *out;
    const lq_quantize_opts *o;
    bool bnb;
    lq_dtype bnb_type;
    int bits;
    long block, group;
    char *skip_buf;
    const char **skip;
    int n_skip;
    qout w;
    jbuf js; /* the "tensors" array of --json */
    qstats total;
    int n_quant, n_kept;
    int64_t bytes_in;
} qjob;

static int fail(lq_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(lq_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loquat quantize: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return lq_status_exit_code(s);
}

/* Options that do not depend on the file. */
static int check_opts(qjob *j) {
    const lq_quantize_opts *o = j->o;
    const char *f = o->format ? o->format : "";
    j->bnb = strcmp(f, "nf4") == 0 || strcmp(f, "fp4") == 0;
    if (j->bnb) j->bnb_type = f[0] == 'n' ? LQ_DTYPE_NF4 : LQ_DTYPE_FP4;
    else if (strcmp(f, "int8") == 0) j->bits = 8;
    else if (strcmp(f, "int4") == 0) j->bits = 4;
    else return fail(LQ_ERR_ARG, "--format must be nf4, fp4, int8 or int4, got '%s'", f);
    if (j->bnb) {
        j->block = o->block_size ? o->block_size : DEFAULT_BLOCK;
        if (j->block < MIN_BLOCK || j->block > MAX_BLOCK || (j->block & (j->block - 1)) != 0)
            return fail(LQ_ERR_ARG, "--block-size must be a power of two from %d to %d, got %ld", MIN_BLOCK, MAX_BLOCK,
                        j->block);
        if (o->group_size) return fail(LQ_ERR_ARG, "--group-size applies to int8 / int4; %s uses --block-size", f);
        if (o->asymmetric) return fail(LQ_ERR_ARG, "--asymmetric applies to int8 / int4, not %s", f);
    } else {
        if (o->block_size) return fail(LQ_ERR_ARG, "--block-size applies to nf4 / fp4; %s uses --group-size", f);
        if (o->double_quant) return fail(LQ_ERR_ARG, "--double-quant applies to nf4 / fp4, not %s", f);
        if (o->group_size < 0) return fail(LQ_ERR_ARG, "--group-size must be positive, got %ld", o->group_size);
        j->group = o->group_size;
    }
    const char *list = o->skip ? o->skip : DEFAULT_SKIP;
    size_t len = strlen(list);
    j->skip_buf = malloc(len + 1);
    j->skip = calloc(len / 2 + 2, sizeof *j->skip);
    if (!j->skip_buf || !j->skip) return fail(LQ_ERR_OOM, "out of memory");
    memcpy(j->skip_buf, list, len + 1);
    for (char *save = NULL, *tok = strtok_r(j->skip_buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
        if (*tok) j->skip[j->n_skip++] = tok;
    return 0;
}

static bool is_float(lq_st_dtype t) { return t == LQ_ST_F32 || t == LQ_ST_F16 || t == LQ_ST_BF16 || t == LQ_ST_F64; }

/* NULL when t is to be quantized, else why it is kept (into buf). */
static const char *keep_reason(const qjob *j, const lq_st_tensor *t, char *buf, size_t n) {
    size_t len = strlen(t->name);
    if (len < 7 || strcmp(t->name + len - 7, ".weight") != 0) return "not a .weight";
    if (t->ndim != 2) return "not 2-D";
    if (!is_float(t->dtype)) return "not a float dtype";
    if (t->numel == 0) return "empty";
    for (int i = 0; i < j->n_skip; i++)
        if (fnmatch(j->skip[i], t->name, 0) == 0) {
            snprintf(buf, n, "matches skip pattern '%s'", j->skip[i]);
            return buf;
        }
    return NULL;
}

static void print_shape(FILE *f, int ndim, const int64_t *shape) {
    fputc('[', f);
    for (int d = 0; d < ndim; d++) fprintf(f, d ? ", %lld" : "%lld", (long long)shape[d]);
    fputc(']', f);
}

/* The quant-state JSON as a U8 tensor named W.quant_state.<key>. */
static bool add_state(qjob *j, const char *name, const char *key, jbuf *b) {
    if (b->failed) return false;
    int64_t len = (int64_t)b->n;
    char suffix[64];
    snprintf(suffix, sizeof suffix, QS_INFIX "%s", key);
    bool ok = qout_add(&j->w, name, suffix, LQ_ST_U8, 1, &len, b->p, true);
    b->p = NULL; /* owned by the list now (or freed) */
    return ok;
}

/* The layout is io/'s lq_st_bnb4 (shared with the merged NF4 export); its tensors move into the
 * output list. */
static lq_status quantize_bnb(qjob *j, const lq_st_tensor *t, const float *x, float *y, lq_err *err) {
    lq_st_bnb4 b;
    LQ_TRY(lq_st_bnb4_encode(&b, t->name, j->bnb_type, x, t->shape[0], t->shape[1], j->block, j->o->double_quant,
                             qs_torch_dtype_name(t->dtype), y, err));
    bool ok = true;
    for (int i = 0; i < b.n; i++) {
        ok = ok && qout_add(&j->w, b.t[i].name, "", b.t[i].dtype, b.t[i].ndim, b.t[i].shape, b.t[i].data, b.own[i]);
        b.own[i] = false; /* the list owns it now (or freed it) */
    }
    lq_st_bnb4_free(&b);
    if (!ok) return LQ_ERR(err, LQ_ERR_OOM, "out of memory for tensor '%s'", t->name);
    return LQ_OK;
}

static lq_status quantize_int(qjob *j, const lq_st_tensor *t, const float *x, float *y, lq_err *err) {
    int64_t rows = t->shape[0], cols = t->shape[1], n = t->numel;
    if (j->group && cols % j->group != 0)
        return LQ_ERR(err, LQ_ERR_ARG, "--group-size %ld does not divide the rows of tensor '%s' (%lld columns)", j->group,
                      t->name, (long long)cols);
    bool sym = !j->o->asymmetric;
    lq_affine_scheme sc = lq_affine_scheme_make(j->bits, sym, j->group ? LQ_GRAN_GROUP : LQ_GRAN_CHANNEL, 0, j->group);
    int64_t n_slots = 0;
    LQ_TRY(lq_affine_check(&sc, 2, t->shape, &n_slots, err));
    int64_t run = n / n_slots; /* consecutive elements sharing a scale: a row or a group */
    float *scale = malloc((size_t)n_slots * 4);
    int32_t *zp = malloc((size_t)n_slots * 4);
    int32_t *codes = malloc((size_t)n * 4);
    int8_t *zp8 = sym ? NULL : malloc((size_t)n_slots);
    lq_status s = LQ_OK;
    if (!scale || !zp || !codes || (!sym && !zp8)) s = LQ_ERR(err, LQ_ERR_OOM, "out of memory for tensor '%s'", t->name);
    for (int64_t k = 0; k < n_slots && s == LQ_OK; k++) {
        float lo = x[k * run], hi = lo;
        for (int64_t i = k * run; i < (k + 1) * run; i++) {
            if (!isfinite(x[i])) {
                s = LQ_ERR(err, LQ_ERR_NUMERIC, "tensor '%s': element %lld is %g", t->name, (long long)i, x[i]);
                break;
            }
            lo = x[i] < lo ? x[i] : lo;
            hi = x[i] > hi ? x[i] : hi;
        }
        lq_affine_qparams(lo, hi, j->bits, sym, &scale[k], &zp[k]);
    }
    if (s == LQ_OK) s = lq_affine_quantize(&sc, 2, t->shape, x, scale, sym ? NULL : zp, codes, 1, err);
    if (s == LQ_OK) s = lq_affine_dequantize(&sc, 2, t->shape, codes, scale, sym ? NULL : zp, y, 1, err);
    int32_t shift = sym ? 0 : 1 << (j->bits - 1); /* stored as signed codes */
    void *stored = NULL;
    if (s == LQ_OK) {
        if (j->bits == 8) {
            int8_t *c8 = malloc((size_t)n);
            for (int64_t i = 0; c8 && i < n; i++) c8[i] = (int8_t)(codes[i] - shift);
            stored = c8;
        } else {
            uint8_t *c4 = calloc((size_t)(n + 1) / 2, 1);
            for (int64_t i = 0; c4 && i < n; i++) c4[i / 2] |= (uint8_t)(((codes[i] - shift) & 0xf) << (4 * (i & 1)));
            stored = c4;
        }
        if (!stored) s = LQ_ERR(err, LQ_ERR_OOM, "out of memory for tensor '%s'", t->name);
    }
    if (s == LQ_OK) {
        int64_t cshape[2] = {rows, cols}, packed = (n + 1) / 2, sshape[2] = {rows, j->group ? cols / j->group : 1};
        bool ok = j->bits == 8 ? qout_add(&j->w, t->name, "", LQ_ST_I8, 2, cshape, stored, true)
                               : qout_add(&j->w, t->name, "", LQ_ST_U8, 1, &packed, stored, true);
        ok = ok && qout_add(&j->w, t->name, ".scale", LQ_ST_F32, j->group ? 2 : 1, sshape, scale, true);
        scale = NULL;
        if (!sym) {
            for (int64_t k = 0; k < n_slots; k++) zp8[k] = (int8_t)(zp[k] - shift);
            ok = ok && qout_add(&j->w, t->name, ".zero_point", LQ_ST_I8, j->group ? 2 : 1, sshape, zp8, true);
            zp8 = NULL;
        }
        jbuf b = {0};
        jb_printf(&b, "{\"quant_type\": \"int%d\", \"bits\": %d, \"symmetric\": %s, \"group_size\": %ld, \"axis\": 0, "
                      "\"dtype\": \"%s\", \"shape\": [%lld, %lld]}", j->bits, j->bits, sym ? "true" : "false", j->group,
                  qs_torch_dtype_name(t->dtype), (long long)rows, (long long)cols);
        char key[32];
        snprintf(key, sizeof key, QS_LOQUAT_PREFIX "int%d", j->bits);
        ok = ok && add_state(j, t->name, key, &b);
        free(b.p);
        if (!ok) s = LQ_ERR(err, LQ_ERR_OOM, "out of memory for tensor '%s'", t->name);
    }
    free(scale);
    free(zp);
    free(zp8);
    free(codes);
    return s;
}

static lq_status quantize_one(qjob *j, const lq_st_tensor *t, lq_err *err) {
    int64_t n = t->numel;
    float *x = malloc((size_t)n * 4), *y = malloc((size_t)n * 4);
    lq_status s = LQ_OK;
    if (!x || !y) s = LQ_ERR(err, LQ_ERR_OOM, "out of memory for tensor '%s' (%lld elements)", t->name, (long long)n);
    if (s == LQ_OK) s = lq_st_to_f32(t, x, err);
    if (s == LQ_OK) s = j->bnb ? quantize_bnb(j, t, x, y, err) : quantize_int(j, t, x, y, err);
    if (s == LQ_OK) {
        qstats st = {0};
        qstats_add(&st, x, y, n);
        qstats_add(&j->total, x, y, n);
        printf("quantized  %-48s %-5s ", t->name, lq_st_dtype_name(t->dtype));
        print_shape(stdout, t->ndim, t->shape);
        printf(" -> %s  rmse %.4e  max_abs_err %.4e  sqnr %.2f dB\n", j->o->format, qstats_rmse(&st), st.max_abs,
               qstats_sqnr_db(&st));
        jb_printf(&j->js, "%s{\"name\": ", j->n_quant ? ", " : "");
        jb_str(&j->js, t->name);
        jb_printf(&j->js, ", \"shape\": [%lld, %lld], \"rmse\": %.6e, \"max_abs_err\": %.6e, \"sqnr_db\": ",
                  (long long)t->shape[0], (long long)t->shape[1], qstats_rmse(&st), st.max_abs);
        jb_pyfloat(&j->js, qstats_sqnr_db(&st));
        jb_printf(&j->js, "}");
        j->n_quant++;
    }
    free(x);
    free(y);
    return s;
}

static int64_t out_bytes(const qout *w) {
    int64_t b = 0;
    for (int64_t i = 0; i < w->n; i++) {
        int64_t n = 1;
        for (int d = 0; d < w->t[i].ndim; d++) n *= w->t[i].shape[d];
        b += n * (int64_t)lq_st_dtype_size(w->t[i].dtype);
    }
    return b;
}

/* Copies the input's metadata, adding "format": "pt" when it has none, and writes the file. */
static lq_status write_output(qjob *j, const lq_st_model *m, lq_err *err) {
    const lq_st_file *f0 = lq_st_model_shard(m, 0);
    int64_t nm = lq_st_metadata_count(f0);
    lq_st_kv *kv = calloc((size_t)nm + 1, sizeof *kv);
    if (!kv) return LQ_ERR(err, LQ_ERR_OOM, "out of memory");
    for (int64_t i = 0; i < nm; i++) lq_st_metadata_at(f0, i, &kv[i].key, &kv[i].value);
    if (!lq_st_metadata(f0, "format")) kv[nm++] = (lq_st_kv){"format", "pt"};
    lq_status s = lq_st_write(j->out, j->w.t, j->w.n, kv, nm, err);
    free(kv);
    return s;
}

static int run_quantize(qjob *j) {
    lq_err err = {0};
    lq_st_model *m = NULL;
    lq_status s = lq_st_model_open(&m, j->in, &err);
    if (s != LQ_OK) return fail(s, "%s", err.msg);
    /* a file that already holds quant states would get a second set of them */
    for (int64_t i = 0; i < lq_st_model_count(m); i++)
        if (strstr(lq_st_model_tensor_at(m, i)->name, QS_INFIX)) {
            int rc = fail(LQ_ERR_INPUT, "%s is already quantized (it has '%s'); dequantize it first", j->in,
                          lq_st_model_tensor_at(m, i)->name);
            lq_st_model_close(m);
            return rc;
        }
    int rc = 0;
    for (int64_t i = 0; i < lq_st_model_count(m) && !rc; i++) {
        const lq_st_tensor *t = lq_st_model_tensor_at(m, i);
        j->bytes_in += (int64_t)t->nbytes;
        char why_buf[160];
        const char *why = keep_reason(j, t, why_buf, sizeof why_buf);
        if (why) {
            if (!qout_add(&j->w, t->name, "", t->dtype, t->ndim, t->shape, t->data, false))
                rc = fail(LQ_ERR_OOM, "out of memory");
            printf("kept       %-48s %-5s ", t->name, lq_st_dtype_name(t->dtype));
            print_shape(stdout, t->ndim, t->shape);
            printf("  (%s)\n", why);
            j->n_kept++;
            continue;
        }
        s = quantize_one(j, t, &err);
        if (s == LQ_ERR_NUMERIC) rc = fail(LQ_ERR_INPUT, "%s: %s", j->in, err.msg);
        else if (s != LQ_OK) rc = fail(s, "%s: %s", j->in, err.msg);
    }
    if (!rc && j->n_quant == 0)
        rc = fail(LQ_ERR_INPUT, "%s: no tensor to quantize (2-D float '*.weight' tensors not matching the skip list)",
                  j->in);
    if (!rc && j->js.failed) rc = fail(LQ_ERR_OOM, "out of memory");
    if (!rc) {
        s = write_output(j, m, &err);
        if (s != LQ_OK) rc = fail(s, "%s", err.msg);
    }
    if (!rc) {
        double sq = qstats_sqnr_db(&j->total);
        int64_t bo = out_bytes(&j->w);
        printf("%d tensor%s quantized to %s, %d kept; overall rmse %.4e, max_abs_err %.4e, sqnr %.2f dB; "
               "%lld -> %lld bytes; wrote %s\n", j->n_quant, j->n_quant == 1 ? "" : "s", j->o->format, j->n_kept,
               qstats_rmse(&j->total), j->total.max_abs, sq, (long long)j->bytes_in, (long long)bo, j->out);
        if (j->o->json) {
            jbuf b = {0};
            jb_printf(&b, "{\"command\": \"quantize\", \"input\": ");
            jb_str(&b, j->in);
            jb_printf(&b, ", \"output\": ");
            jb_str(&b, j->out);
            jb_printf(&b, ", \"format\": \"%s\", \"block_size\": %ld, \"double_quant\": %s, \"group_size\": %ld, "
                          "\"symmetric\": %s, \"quantized\": %d, \"kept\": %d, \"rmse\": %.6e, \"max_abs_err\": %.6e, "
                          "\"sqnr_db\": ", j->o->format, j->bnb ? j->block : 0, j->o->double_quant ? "true" : "false",
                      j->group, j->o->asymmetric ? "false" : "true", j->n_quant, j->n_kept, qstats_rmse(&j->total),
                      j->total.max_abs);
            jb_pyfloat(&b, sq);
            jb_printf(&b, ", \"bytes_in\": %lld, \"bytes_out\": %lld, \"tensors\": [", (long long)j->bytes_in,
                      (long long)bo);
            if (b.failed || j->js.failed) rc = fail(LQ_ERR_OOM, "out of memory");
            else printf("%s%s]}\n", b.p, j->js.p ? j->js.p : "");
            free(b.p);
        }
    }
    lq_st_model_close(m);
    return rc;
}

int lq_cmd_quantize(const char *in, const char *out, const lq_quantize_opts *opts) {
    qjob j = {0};
    j.in = in;
    j.out = out;
    j.o = opts;
    int rc = check_opts(&j);
    if (!rc) rc = run_quantize(&j);
    qout_free(&j.w);
    free(j.js.p);
    free(j.skip_buf);
    free(j.skip);
    return rc;
}
