/* train/cli.c: the loquat command line: a table of commands, a flag parser driven by it, help
 * text generated from it, and the commands this build can run (gradcheck). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cuda.h"
#include "train/qat.h"
#include "train/train.h"
#include "train/trainer.h"

#define CLI_MAX_ARGS 3
#define CLI_MAX_OPTS 12
#define CLI_MAX_REPEAT 64
#define CLI_EXIT_USAGE 2
#define GRADCHECK_TOLERANCE 1e-2

typedef enum cli_kind {
    CLI_SWITCH, /* --flag */
    CLI_STR,    /* --flag VALUE */
    CLI_INT,    /* --flag N, an integer in [1, max] */
    CLI_CHOICE, /* --flag one|of|these (meta lists the choices) */
    CLI_KV,     /* --flag key=value */
} cli_kind;

typedef struct cli_opt {
    const char *name; /* "--prompt"; NULL ends the list */
    cli_kind kind;
    const char *meta; /* value placeholder, or the choices of a CLI_CHOICE */
    bool required;
    bool repeat;
    long max; /* CLI_INT upper bound */
    const char *help;
} cli_opt;

typedef struct cli_arg {
    const char *name; /* NULL ends the list */
    bool optional;
    const char *help;
} cli_arg;

/* What the parser found: positionals in order, every value of every option. */
typedef struct cli_parsed {
    const char *pos[CLI_MAX_ARGS];
    int n_pos;
    const char *val[CLI_MAX_OPTS][CLI_MAX_REPEAT];
    int count[CLI_MAX_OPTS];
} cli_parsed;

struct cli_cmd;
typedef int (*cli_handler)(const struct cli_cmd *cmd, const cli_parsed *a);

typedef struct cli_cmd {
    const char *name;
    const char *summary; /* one line for `loquat --help` */
    const char *about;   /* a paragraph for `loquat <command> --help` */
    cli_arg args[CLI_MAX_ARGS + 1];
    cli_opt opts[CLI_MAX_OPTS + 1];
    cli_handler run;
} cli_cmd;

static int cmd_not_built(const cli_cmd *cmd, const cli_parsed *a);
static int cmd_gradcheck(const cli_cmd *cmd, const cli_parsed *a);
static int cmd_help(const cli_cmd *cmd, const cli_parsed *a);
static int cmd_quantize(const cli_cmd *cmd, const cli_parsed *a);
static int cmd_dequantize(const cli_cmd *cmd, const cli_parsed *a);
static int cmd_inspect(const cli_cmd *cmd, const cli_parsed *a);
static int cmd_generate(const cli_cmd *cmd, const cli_parsed *a);
static int cmd_perplexity(const cli_cmd *cmd, const cli_parsed *a);
static int cmd_train(const cli_cmd *cmd, const cli_parsed *a);
static int cmd_qat(const cli_cmd *cmd, const cli_parsed *a);
static int cmd_eval(const cli_cmd *cmd, const cli_parsed *a);
static int cmd_merge(const cli_cmd *cmd, const cli_parsed *a);
static int cmd_config(const cli_cmd *cmd, const cli_parsed *a);
static int cmd_mem(const cli_cmd *cmd, const cli_parsed *a);

/* Every command, in the order `loquat --help` lists them. */
static const cli_cmd commands[] = {
    {"train", "fine-tune a model (LoRA, QLoRA or full) from a YAML config",
     "Runs the training job a config describes: model, adapters, data, optimizer, schedule,\n"
     "checkpoints. --set overrides any config key (dotted path) for this run.",
     {{"CONFIG.yaml", false, "the job's config file"}},
     {{"--set", CLI_KV, "key=value", false, true, 0, "override a config key, e.g. --set learning_rate=1e-4 (repeatable)"},
      {"--resume", CLI_SWITCH, NULL, false, false, 0, "continue from the newest complete checkpoint in the output directory"},
      {"--stop-after", CLI_INT, "N", false, false, 1L << 40, "stop after N optimizer steps, saving a checkpoint as Ctrl-C does"},
      {"--quiet", CLI_SWITCH, NULL, false, false, 0, "no progress line (metrics still go to metrics.jsonl)"}},
     cmd_train},
    {"qat", "quantization-aware training experiments: float vs PTQ vs QAT, integer export",
     "Runs the experiment a QAT config describes: the float baseline, post-training quantization\n"
     "(calibrated observers, no training) and quantization-aware training (fake-quant forward,\n"
     "straight-through backward) of its scheme (mode: float | ptq | qat), or with --compare all\n"
     "three for every scheme in its compare list. Each quantized model is converted to integer\n"
     "codes, exported (safetensors and HDF5) and evaluated again with integer arithmetic. Writes\n"
     "compare.md, compare.csv, compare.svg and metrics.jsonl into output_dir.",
     {{"CONFIG.yaml", false, "the experiment's config file"}},
     {{"--compare", CLI_SWITCH, NULL, false, false, 0, "float, PTQ and QAT for every scheme of the config's compare list"},
      {"--json", CLI_SWITCH, NULL, false, false, 0, "also print the results as one JSON object on the last line"},
      {"--set", CLI_KV, "key=value", false, true, 0, "override a config key, e.g. --set qat.epochs=2 (repeatable)"},
      {"--quiet", CLI_SWITCH, NULL, false, false, 0, "no progress lines or table (metrics still go to metrics.jsonl)"}},
     cmd_qat},
    {"eval", "evaluate a model or checkpoint on the eval set a config names",
     "Runs the evaluation a config describes (validation loss and perplexity of its base model,\n"
     "with an adapter if given) and prints the metrics.",
     {{"CONFIG.yaml", false, "the job's config file"}},
     {{"--set", CLI_KV, "key=value", false, true, 0, "override a config key (repeatable)"},
      {"--adapter", CLI_STR, "DIR", false, false, 0, "PEFT adapter folder applied on the base model"},
      {"--json", CLI_SWITCH, NULL, false, false, 0, "also print one JSON object on the last line"}},
     cmd_eval},
    {"perplexity", "perplexity of a model on a text file",
     "Tokenizes a text file and scores it the way llama.cpp's perplexity tool does: BOS first when\n"
     "the tokenizer adds one, non-overlapping windows of --ctx tokens (the first token of each set to\n"
     "BOS when it does), only the second half of each window's predictions scored; prints per-window\n"
     "progress on stderr and PPL = exp(mean NLL) with its error bar. Needs at least 2 * ctx tokens.",
     {{0}},
     {{"--model", CLI_STR, "PATH", true, false, 0, "GGUF file or Hugging Face model directory"},
      {"--data", CLI_STR, "FILE", true, false, 0, "plain-text file to score"},
      {"--ctx", CLI_INT, "N", false, false, 1L << 20, "tokens per window (default 512)"},
      {"--json", CLI_SWITCH, NULL, false, false, 0, "also print one JSON object on the last line"},
      {"--kv-cache", CLI_CHOICE, "f32|int8", false, false, 0, "score each window by incremental decoding through a KV cache of this dtype"},
      {"--adapter", CLI_STR, "DIR", false, false, 0, "PEFT LoRA adapter folder applied on the model"},
      {"--dump-logits", CLI_STR, "FILE", false, false, 0, "write the first window's ids and logits (1, T, V) f32 to a safetensors file"}},
     cmd_perplexity},
    {"generate", "generate text from a prompt",
     "Continues a prompt with a model, streaming the text as it comes (KV cache); stops at an\n"
     "end-of-generation token or --max-tokens. Greedy by default; --temperature > 0 samples (with\n"
     "--top-k / --top-p, seeded by --seed). --chat wraps the prompt as a user message in the model's\n"
     "chat template (ChatML-family templates). Speeds go to stderr.",
     {{0}},
     {{"--model", CLI_STR, "PATH", true, false, 0, "GGUF file or Hugging Face model directory"},
      {"--prompt", CLI_STR, "TEXT", false, false, 0, "the text to continue (default: start from BOS)"},
      {"--chat", CLI_SWITCH, NULL, false, false, 0, "apply the model's chat template"},
      {"--max-tokens", CLI_INT, "N", false, false, 1L << 20, "stop after N new tokens (default 128)"},
      {"--temperature", CLI_STR, "T", false, false, 0, "sampling temperature, 0 = greedy (default 0)"},
      {"--top-k", CLI_INT, "K", false, false, 1L << 24, "sample among the K most likely tokens"},
      {"--top-p", CLI_STR, "P", false, false, 0, "nucleus sampling mass in (0, 1] (default 1)"},
      {"--seed", CLI_STR, "S", false, false, 0, "random seed for sampling (default 0)"},
      {"--kv-cache", CLI_CHOICE, "f32|int8", false, false, 0, "KV cache storage: int8 = one f32 scale per token and head (default f32)"},
      {"--adapter", CLI_STR, "DIR", false, false, 0, "PEFT LoRA adapter folder applied on the model"}},
     cmd_generate},
    {"merge", "merge a LoRA adapter into its base model and export it",
     "Adds an adapter's low-rank update to the base weights in float32 (dequantizing a quantized\n"
     "base) and writes the merged model: a Hugging Face folder (config.json, model.safetensors and\n"
     "the tokenizer files) that transformers loads, or a GGUF file that llama.cpp loads, in the\n"
     "chosen dtype; a requantizing dtype reports each tensor's error.",
     {{0}},
     {{"--model", CLI_STR, "MODEL", true, false, 0, "base model: GGUF file or Hugging Face folder"},
      {"--adapter", CLI_STR, "DIR", true, false, 0, "adapter folder (PEFT layout)"},
      {"--out", CLI_STR, "PATH", true, false, 0, "output folder (safetensors) or .gguf file"},
      {"--format", CLI_CHOICE, "safetensors|gguf", false, false, 0, "output format (default: gguf for a .gguf path, else safetensors)"},
      {"--dtype", CLI_CHOICE, "f32|f16|bf16|q8_0|q4_0|nf4", false, false, 0, "weight dtype of the output (default f32)"},
      {"--json", CLI_SWITCH, NULL, false, false, 0, "also print the report as one JSON object on the last line"}},
     cmd_merge},
    {"quantize", "quantize a model file's weights to a low-bit format",
     "Reads a safetensors model (a file, a sharded model's index.json, or their folder), quantizes\n"
     "its linear weights (2-D float '*.weight' tensors) and writes one safetensors file; every other\n"
     "tensor is copied unchanged. nf4 / fp4 are written as transformers saves a bitsandbytes 4-bit\n"
     "model (W, W.absmax, W.quant_map, W.nested_absmax, W.nested_quant_map,\n"
     "W.quant_state.bitsandbytes__nf4|fp4), so transformers and bitsandbytes load the file; int8 /\n"
     "int4 use loquat's layout (W codes, W.scale, W.zero_point, W.quant_state.loquat__int8|int4).\n"
     "Names matching a skip pattern stay float; the default list, '*embed*,*lm_head*,*wte*,*wpe*,\n"
     "*norm*', keeps what transformers' bitsandbytes integration keeps (embeddings, the output head,\n"
     "norms). Prints RMSE, max abs error and SQNR (dB) of each tensor's round trip, then a summary.",
     {{"IN", false, "input safetensors file or model folder"}, {"OUT", false, "output .safetensors file"}},
     {{"--format", CLI_CHOICE, "nf4|fp4|int8|int4", true, false, 0, "target number format"},
      {"--block-size", CLI_INT, "N", false, false, 1L << 30, "nf4/fp4: elements per absmax, a power of two in 32..4096 (default 64)"},
      {"--double-quant", CLI_SWITCH, NULL, false, false, 0, "nf4/fp4: also quantize the absmax values (8-bit, block 256)"},
      {"--group-size", CLI_INT, "G", false, false, 1L << 30, "int8/int4: one scale per G elements of a row (default: per row)"},
      {"--asymmetric", CLI_SWITCH, NULL, false, false, 0, "int8/int4: with a zero point (default symmetric)"},
      {"--skip", CLI_STR, "GLOB,...", false, false, 0, "names to keep in float; replaces the default list ('' = none)"},
      {"--json", CLI_SWITCH, NULL, false, false, 0, "also print the report as one JSON object on the last line"}},
     cmd_quantize},
    {"dequantize", "expand a quantized model file back to f32/f16 weights",
     "Reads a safetensors file written by 'loquat quantize' or by transformers / bitsandbytes\n"
     "(4-bit nf4 / fp4, with or without double quantization) and writes one with plain float\n"
     "weights; other tensors are copied unchanged.",
     {{"IN", false, "input safetensors file or model folder"}, {"OUT", false, "output .safetensors file"}},
     {{"--dtype", CLI_CHOICE, "f32|f16|bf16", false, false, 0, "dtype of the expanded weights (default: the one each quant state records)"},
      {"--json", CLI_SWITCH, NULL, false, false, 0, "also print the report as one JSON object on the last line"}},
     cmd_dequantize},
    {"inspect", "list the tensors, dtypes and metadata of a model or checkpoint file",
     "Prints the header of a GGUF, safetensors or HDF5 file (told apart by their first bytes): every\n"
     "metadata key with its type and value (long arrays show their first 8 elements and their\n"
     "length), a table of tensors (name, dtype, shape outermost first, bytes) and the totals.\n"
     "For HDF5: every group, dataset (dtype, shape, bytes) and attribute (strings and small\n"
     "numeric values shown), in name order. For IDX (MNIST's u8 images or labels, plain or\n"
     "gzip): the shape.",
     {{"FILE", false, "the file to inspect"}},
     {{"--json", CLI_SWITCH, NULL, false, false, 0, "print one JSON object with the same information"}},
     cmd_inspect},
    {"config", "check a config file and print it with every default filled in",
     "Parses and validates a config, then prints the complete configuration a run would use.",
     {{"CONFIG.yaml", false, "the config file"}},
     {{"--set", CLI_KV, "key=value", false, true, 0, "override a config key (repeatable)"},
      {"--json", CLI_SWITCH, NULL, false, false, 0, "print one JSON object instead of YAML"}},
     cmd_config},
    {"mem", "estimate the memory a config's run needs",
     "Prints the bytes a run would take: frozen base, trainable parameters, optimizer state,\n"
     "activations per step with and without gradient checkpointing.",
     {{"CONFIG.yaml", false, "the config file"}},
     {{"--set", CLI_KV, "key=value", false, true, 0, "override a config key (repeatable)"},
      {"--json", CLI_SWITCH, NULL, false, false, 0, "also print one JSON object on the last line"}},
     cmd_mem},
    {"gradcheck", "check every op's backward against finite differences",
     "Runs each op in the op table (or the one named) on random shapes and compares its\n"
     "backward with central finite differences. Prints one line per op: name, max relative error,\n"
     "elements checked, worst case. Exits 0 when every error is below 1e-2, 1 otherwise.",
     {{0}},
     {{"--op", CLI_STR, "NAME", false, false, 0, "check only this op"},
      {"--trials", CLI_INT, "N", false, false, 100000, "random cases per op (default 4)"},
      {"--threads", CLI_INT, "N", false, false, 4096, "threads for op loops (default 1)"}},
     cmd_gradcheck},
    {"help", "show the help of a command",
     "Prints the command list, or the usage, arguments and options of one command.",
     {{"COMMAND", true, "the command to describe"}},
     {{0}},
     cmd_help},
};
static const int n_commands = (int)(sizeof commands / sizeof commands[0]);

/* --- suggestions ---------------------------------------------------------------------------- */

/* Optimal-string-alignment distance (Levenshtein plus adjacent transpositions, so "trian" is
 * one edit from "train"). Long strings are not compared. */
static int edit_distance(const char *a, const char *b) {
    enum { N = 48 };
    int la = (int)strlen(a), lb = (int)strlen(b);
    if (la >= N || lb >= N) return N;
    int d[N][N];
    for (int i = 0; i <= la; i++) d[i][0] = i;
    for (int j = 0; j <= lb; j++) d[0][j] = j;
    for (int i = 1; i <= la; i++)
        for (int j = 1; j <= lb; j++) {
            int cost = a[i - 1] != b[j - 1];
            int v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v) v = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < v) v = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    return d[la][lb];
}

/* Tracks the closest candidate to word; close enough means a few edits for its length. */
typedef struct suggest {
    const char *word, *best;
    int best_d;
} suggest;

static void suggest_try(suggest *s, const char *cand) {
    if (!cand) return;
    int d = edit_distance(s->word, cand);
    size_t len = strlen(s->word);
    int limit = len <= 4 ? 1 : len <= 8 ? 2 : 3;
    if (d <= limit && (!s->best || d < s->best_d)) {
        s->best = cand;
        s->best_d = d;
    }
}

/* " (did you mean 'x'?)" or "" */
static const char *suggest_hint(const suggest *s, char *buf, size_t n) {
    if (!s->best) return "";
    snprintf(buf, n, " (did you mean '%s'?)", s->best);
    return buf;
}

/* --- help ----------------------------------------------------------------------------------- */

static const cli_cmd *find_command(const char *name) {
    for (int i = 0; i < n_commands; i++)
        if (strcmp(commands[i].name, name) == 0) return &commands[i];
    return NULL;
}

static int n_opts(const cli_cmd *c) {
    int n = 0;
    while (n < CLI_MAX_OPTS && c->opts[n].name) n++;
    return n;
}

static int n_args(const cli_cmd *c, bool required_only) {
    int n = 0;
    for (int i = 0; i < CLI_MAX_ARGS && c->args[i].name; i++)
        if (!required_only || !c->args[i].optional) n++;
    return n;
}

static void print_synopsis(FILE *f, const cli_cmd *c) {
    fprintf(f, "usage: loquat %s", c->name);
    for (int i = 0; i < n_args(c, false); i++)
        fprintf(f, c->args[i].optional ? " [%s]" : " %s", c->args[i].name);
    for (int i = 0; i < n_opts(c); i++) {
        const cli_opt *o = &c->opts[i];
        fprintf(f, " %s%s%s%s%s%s", o->required ? "" : "[", o->name, o->meta ? " " : "", o->meta ? o->meta : "",
                o->required ? "" : "]", o->repeat ? "..." : "");
    }
    fputc('\n', f);
}

static void print_command_help(FILE *f, const cli_cmd *c) {
    print_synopsis(f, c);
    fprintf(f, "\n%s\n", c->about);
    if (c->run == cmd_not_built) fprintf(f, "(This build does not have the '%s' command yet.)\n", c->name);
    if (n_args(c, false) > 0) {
        fprintf(f, "\narguments:\n");
        for (int i = 0; i < n_args(c, false); i++)
            fprintf(f, "  %-24s %s%s\n", c->args[i].name, c->args[i].help, c->args[i].optional ? " (optional)" : "");
    }
    fprintf(f, "\noptions:\n");
    for (int i = 0; i < n_opts(c); i++) {
        const cli_opt *o = &c->opts[i];
        char left[64];
        snprintf(left, sizeof left, "%s%s%s", o->name, o->meta ? " " : "", o->meta ? o->meta : "");
        fprintf(f, "  %-24s %s%s\n", left, o->help, o->required ? " (required)" : "");
    }
    fprintf(f, "  %-24s %s\n", "-h, --help", "show this help");
}

static void print_main_help(FILE *f) {
    fprintf(f, "loquat %s: quantization-aware training and QLoRA fine-tuning\n\n", LQ_VERSION);
    fprintf(f, "usage: loquat <command> [arguments] [options]\n       loquat --help | --version\n\ncommands:\n");
    for (int i = 0; i < n_commands; i++)
        fprintf(f, "  %-12s %s%s\n", commands[i].name, commands[i].summary,
                commands[i].run == cmd_not_built ? " (not built yet)" : "");
    fprintf(f, "\nRun 'loquat <command> --help' for a command's arguments and options.\n");
}

static int usage_error(const cli_cmd *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int usage_error(const cli_cmd *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loquat%s%s: ", c ? " " : "", c ? c->name : "");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (c) fprintf(stderr, "; see 'loquat %s --help'\n", c->name);
    else fprintf(stderr, "; see 'loquat --help'\n");
    return CLI_EXIT_USAGE;
}

/* --- parsing -------------------------------------------------------------------------------- */

static bool is_help_flag(const char *s) { return strcmp(s, "-h") == 0 || strcmp(s, "--help") == 0; }

static bool choice_ok(const char *choices, const char *v) {
    size_t n = strlen(v);
    for (const char *p = choices; *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, v, n) == 0) return true;
        p += len + (bar ? 1 : 0);
    }
    return false;
}

/* Checks one option value against its kind; a usage error names the option and the value. */
static int check_value(const cli_cmd *c, const cli_opt *o, const char *v) {
    switch (o->kind) {
    case CLI_INT: {
        char *end = NULL;
        errno = 0;
        long x = strtol(v, &end, 10);
        if (errno || end == v || *end || x < 1 || x > o->max)
            return usage_error(c, "%s expects an integer from 1 to %ld, got '%s'", o->name, o->max, v);
        return 0;
    }
    case CLI_CHOICE:
        if (!choice_ok(o->meta, v)) return usage_error(c, "%s must be one of %s, got '%s'", o->name, o->meta, v);
        return 0;
    case CLI_KV: {
        const char *eq = strchr(v, '=');
        if (!eq || eq == v) return usage_error(c, "%s expects key=value, got '%s'", o->name, v);
        return 0;
    }
    default: return 0;
    }
}

/* Parses a command's arguments (argv[0] is the first one after the command name). */
static int parse_args(const cli_cmd *c, int argc, char **argv, cli_parsed *a) {
    memset(a, 0, sizeof *a);
    bool only_pos = false;
    int max_pos = n_args(c, false), nopt = n_opts(c);
    for (int i = 0; i < argc; i++) {
        const char *s = argv[i];
        if (!only_pos && strcmp(s, "--") == 0) {
            only_pos = true;
            continue;
        }
        if (only_pos || s[0] != '-' || s[1] == '\0') {
            if (a->n_pos >= max_pos) return usage_error(c, "unexpected argument '%s'", s);
            a->pos[a->n_pos++] = s;
            continue;
        }
        const char *eq = strchr(s, '=');
        size_t name_len = eq ? (size_t)(eq - s) : strlen(s);
        int k = -1;
        for (int j = 0; j < nopt; j++)
            if (strlen(c->opts[j].name) == name_len && strncmp(c->opts[j].name, s, name_len) == 0) k = j;
        if (k < 0) {
            char name[64], hint[96];
            snprintf(name, sizeof name, "%.*s", (int)(name_len < 63 ? name_len : 63), s);
            suggest sg = {name, NULL, 0};
            for (int j = 0; j < nopt; j++) suggest_try(&sg, c->opts[j].name);
            suggest_try(&sg, "--help");
            return usage_error(c, "unknown option '%s'%s", name, suggest_hint(&sg, hint, sizeof hint));
        }
        const cli_opt *o = &c->opts[k];
        const char *v = "";
        if (o->kind == CLI_SWITCH) {
            if (eq) return usage_error(c, "option %s takes no value", o->name);
        } else if (eq) {
            v = eq + 1;
        } else {
            if (i + 1 >= argc) return usage_error(c, "option %s needs a value (%s)", o->name, o->meta);
            v = argv[++i];
        }
        if (a->count[k] > 0 && !o->repeat) return usage_error(c, "option %s given more than once", o->name);
        if (a->count[k] >= CLI_MAX_REPEAT)
            return usage_error(c, "option %s given more than %d times", o->name, CLI_MAX_REPEAT);
        int rc = check_value(c, o, v);
        if (rc) return rc;
        a->val[k][a->count[k]++] = v;
    }
    if (a->n_pos < n_args(c, true)) return usage_error(c, "missing %s argument", c->args[a->n_pos].name);
    for (int j = 0; j < nopt; j++)
        if (c->opts[j].required && a->count[j] == 0)
            return usage_error(c, "missing required option %s %s", c->opts[j].name, c->opts[j].meta);
    return 0;
}

/* Last value of the named option, or NULL if it was not given. */
static const char *opt_value(const cli_cmd *c, const cli_parsed *a, const char *name) {
    for (int j = 0; j < n_opts(c); j++)
        if (strcmp(c->opts[j].name, name) == 0) return a->count[j] ? a->val[j][a->count[j] - 1] : NULL;
    return NULL;
}

/* --- commands ------------------------------------------------------------------------------- */

static int cmd_not_built(const cli_cmd *cmd, const cli_parsed *a) {
    (void)a;
    fprintf(stderr, "loquat %s: this build does not have the '%s' command yet\n", cmd->name, cmd->name);
    return lq_status_exit_code(LQ_ERR_UNSUPPORTED);
}

static int cmd_help(const cli_cmd *cmd, const cli_parsed *a) {
    (void)cmd;
    if (a->n_pos == 0) {
        print_main_help(stdout);
        return 0;
    }
    const cli_cmd *c = find_command(a->pos[0]);
    if (!c) {
        char hint[96];
        suggest sg = {a->pos[0], NULL, 0};
        for (int i = 0; i < n_commands; i++) suggest_try(&sg, commands[i].name);
        return usage_error(NULL, "unknown command '%s'%s", a->pos[0], suggest_hint(&sg, hint, sizeof hint));
    }
    print_command_help(stdout, c);
    return 0;
}

/* One op over `trials` random cases: prints its line; returns true when it passed. */
static bool gradcheck_one(lq_ctx *ctx, int op, int trials) {
    double worst = 0;
    int64_t checked = 0;
    char worst_desc[320] = "";
    for (int t = 0; t < trials; t++) {
        lq_gc_result r;
        char desc[128] = "";
        lq_status s = lq_gradcheck_op(ctx, op, (uint64_t)t + 1, &r, desc, sizeof desc);
        if (s != LQ_OK) {
            printf("%-14s FAILED        %-9s  %s (case %s)\n", lq_op_name(op), "-", lq_ctx_error(ctx)->msg, desc);
            lq_ctx_clear_error(ctx);
            lq_ctx_step_reset(ctx);
            return false;
        }
        checked += r.n_checked;
        if (t == 0 || !(r.error <= worst)) { /* NaN counts as worst */
            worst = r.error;
            snprintf(worst_desc, sizeof worst_desc, "%s; input %d [%lld] analytic %.6g numeric %.6g", desc,
                     r.worst_input, (long long)r.worst_index, r.analytic, r.numeric);
        }
        lq_ctx_step_reset(ctx);
    }
    bool ok = worst < GRADCHECK_TOLERANCE;
    printf("%-14s %-13.3e %-9lld  %s%s\n", lq_op_name(op), worst, (long long)checked, worst_desc,
           ok ? "" : "  <- over tolerance");
    return ok;
}

static int cmd_gradcheck(const cli_cmd *cmd, const cli_parsed *a) {
    const char *op_name = opt_value(cmd, a, "--op");
    const char *trials_s = opt_value(cmd, a, "--trials");
    const char *threads_s = opt_value(cmd, a, "--threads");
    int trials = trials_s ? atoi(trials_s) : 4; /* already checked by the parser */
    int threads = threads_s ? atoi(threads_s) : 1;
    int only = -1;
    if (op_name) {
        only = lq_op_find(op_name);
        if (only < 0) {
            char hint[96];
            suggest sg = {op_name, NULL, 0};
            for (int i = 0; i < lq_op_count(); i++) suggest_try(&sg, lq_op_name(i));
            return usage_error(cmd, "unknown op '%s'%s", op_name, suggest_hint(&sg, hint, sizeof hint));
        }
    }
    lq_ctx *ctx = NULL;
    lq_err err = {0};
    lq_ctx_opts o = {.n_threads = threads, .arena_bytes = (size_t)1 << 20, .seed = 1234};
    lq_status s = lq_ctx_init(&ctx, &o, &err);
    if (s != LQ_OK) {
        fprintf(stderr, "loquat gradcheck: %s\n", err.msg);
        return lq_status_exit_code(s);
    }
    printf("%-14s %-13s %-9s  %s\n", "op", "max error", "checked", "worst case");
    int n_ops = 0, n_failed = 0;
    for (int op = 0; op < lq_op_count(); op++) {
        if (only >= 0 && op != only) continue;
        n_ops++;
        if (!gradcheck_one(ctx, op, trials)) n_failed++;
    }
    lq_ctx_free(ctx);
    printf("%d op%s checked, %d failed (tolerance %.0e, %d trial%s each, %d thread%s)\n", n_ops, n_ops == 1 ? "" : "s",
           n_failed, GRADCHECK_TOLERANCE, trials, trials == 1 ? "" : "s", threads, threads == 1 ? "" : "s");
    return n_failed ? lq_status_exit_code(LQ_ERR_NUMERIC) : 0;
}

/* quantize / dequantize: the work is in train/cmd_quantize.c and train/cmd_dequantize.c. */
static int cmd_quantize(const cli_cmd *cmd, const cli_parsed *a) {
    const char *bs = opt_value(cmd, a, "--block-size"), *gs = opt_value(cmd, a, "--group-size");
    lq_quantize_opts o = {
        .format = opt_value(cmd, a, "--format"),
        .block_size = bs ? atol(bs) : 0, /* already range-checked by the parser */
        .double_quant = opt_value(cmd, a, "--double-quant") != NULL,
        .group_size = gs ? atol(gs) : 0,
        .asymmetric = opt_value(cmd, a, "--asymmetric") != NULL,
        .skip = opt_value(cmd, a, "--skip"),
        .json = opt_value(cmd, a, "--json") != NULL,
    };
    return lq_cmd_quantize(a->pos[0], a->pos[1], &o);
}

static int cmd_dequantize(const cli_cmd *cmd, const cli_parsed *a) {
    return lq_cmd_dequantize(a->pos[0], a->pos[1], opt_value(cmd, a, "--dtype"), opt_value(cmd, a, "--json") != NULL);
}

/* inspect: the work is in train/cmd_inspect.c. */
static int cmd_inspect(const cli_cmd *cmd, const cli_parsed *a) {
    return lq_cmd_inspect(a->pos[0], opt_value(cmd, a, "--json") != NULL);
}

/* generate / perplexity: the work is in train/cmd_generate.c and train/cmd_perplexity.c. */
static int cmd_generate(const cli_cmd *cmd, const cli_parsed *a) {
    const char *mt = opt_value(cmd, a, "--max-tokens"), *tk = opt_value(cmd, a, "--top-k");
    lq_generate_opts o = {
        .model = opt_value(cmd, a, "--model"),
        .prompt = opt_value(cmd, a, "--prompt"),
        .chat = opt_value(cmd, a, "--chat") != NULL,
        .max_tokens = mt ? atol(mt) : 0, /* range-checked by the parser */
        .temperature = opt_value(cmd, a, "--temperature"),
        .top_p = opt_value(cmd, a, "--top-p"),
        .top_k = tk ? atol(tk) : 0,
        .seed = opt_value(cmd, a, "--seed"),
        .kv_cache = opt_value(cmd, a, "--kv-cache"),
        .adapter = opt_value(cmd, a, "--adapter"),
    };
    return lq_cmd_generate(&o);
}

static int cmd_perplexity(const cli_cmd *cmd, const cli_parsed *a) {
    const char *c = opt_value(cmd, a, "--ctx");
    lq_perplexity_opts o = {opt_value(cmd, a, "--model"), opt_value(cmd, a, "--data"), c ? atol(c) : 0,
                            opt_value(cmd, a, "--json") != NULL, opt_value(cmd, a, "--kv-cache"),
                            opt_value(cmd, a, "--adapter"), opt_value(cmd, a, "--dump-logits")};
    return lq_cmd_perplexity(&o);
}

/* --- fine-tuning: the work is in train/cmd_train.c, cmd_merge.c, cmd_config.c, cmd_mem.c ------ */

/* Index of an option in cmd's table (the parser stores values by that index). */
static int opt_index(const cli_cmd *cmd, const char *name) {
    for (int i = 0; i < CLI_MAX_OPTS && cmd->opts[i].name; i++)
        if (strcmp(cmd->opts[i].name, name) == 0) return i;
    return -1;
}

/* Every value given for a repeatable option (NULL-free array inside a), and their count. */
static const char *const *opt_values(const cli_cmd *cmd, const cli_parsed *a, const char *name, int *n) {
    int i = opt_index(cmd, name);
    *n = i < 0 ? 0 : a->count[i];
    return i < 0 ? NULL : a->val[i];
}

static int cmd_train(const cli_cmd *cmd, const cli_parsed *a) {
    int n_sets;
    const char *const *sets = opt_values(cmd, a, "--set", &n_sets);
    const char *sa = opt_value(cmd, a, "--stop-after");
    lq_trainer_opts o = {.resume = opt_value(cmd, a, "--resume") != NULL,
                         .stop_after = sa ? atoll(sa) : 0,
                         .quiet = opt_value(cmd, a, "--quiet") != NULL};
    return lq_cmd_train(a->pos[0], sets, n_sets, &o);
}

static int cmd_qat(const cli_cmd *cmd, const cli_parsed *a) {
    int n_sets;
    const char *const *sets = opt_values(cmd, a, "--set", &n_sets);
    return lq_cmd_qat(a->pos[0], sets, n_sets, opt_value(cmd, a, "--compare") != NULL,
                      opt_value(cmd, a, "--json") != NULL, opt_value(cmd, a, "--quiet") != NULL);
}

static int cmd_eval(const cli_cmd *cmd, const cli_parsed *a) {
    int n_sets;
    const char *const *sets = opt_values(cmd, a, "--set", &n_sets);
    return lq_cmd_eval(a->pos[0], sets, n_sets, opt_value(cmd, a, "--adapter"), opt_value(cmd, a, "--json") != NULL);
}

static int cmd_merge(const cli_cmd *cmd, const cli_parsed *a) {
    lq_merge_opts o = {opt_value(cmd, a, "--model"), opt_value(cmd, a, "--adapter"), opt_value(cmd, a, "--out"),
                       opt_value(cmd, a, "--format"), opt_value(cmd, a, "--dtype"),
                       opt_value(cmd, a, "--json") != NULL};
    return lq_cmd_merge(&o);
}

static int cmd_config(const cli_cmd *cmd, const cli_parsed *a) {
    int n_sets;
    const char *const *sets = opt_values(cmd, a, "--set", &n_sets);
    return lq_cmd_config(a->pos[0], sets, n_sets, opt_value(cmd, a, "--json") != NULL);
}

static int cmd_mem(const cli_cmd *cmd, const cli_parsed *a) {
    int n_sets;
    const char *const *sets = opt_values(cmd, a, "--set", &n_sets);
    return lq_cmd_mem(a->pos[0], sets, n_sets, opt_value(cmd, a, "--json") != NULL);
}

/* --- entry ---------------------------------------------------------------------------------- */

int lq_cli_main(int argc, char **argv) {
    if (argc < 2) {
        print_main_help(stderr);
        return usage_error(NULL, "no command given");
    }
    const char *first = argv[1];
    if (is_help_flag(first)) {
        print_main_help(stdout);
        return 0;
    }
    if (strcmp(first, "--version") == 0 || strcmp(first, "-V") == 0) {
#ifdef _OPENMP
        const char *omp = "on";
#else
        const char *omp = "off";
#endif
        char cuda[512];
        lq_cuda_devices(cuda, sizeof cuda);
        printf("loquat %s (openmp: %s; cuda: %s)\n", LQ_VERSION, omp, cuda);
        return 0;
    }
    if (first[0] == '-') {
        char hint[96];
        suggest sg = {first, NULL, 0};
        suggest_try(&sg, "--help");
        suggest_try(&sg, "--version");
        return usage_error(NULL, "unknown option '%s'%s", first, suggest_hint(&sg, hint, sizeof hint));
    }
    const cli_cmd *c = find_command(first);
    if (!c) {
        char hint[96];
        suggest sg = {first, NULL, 0};
        for (int i = 0; i < n_commands; i++) suggest_try(&sg, commands[i].name);
        return usage_error(NULL, "unknown command '%s'%s", first, suggest_hint(&sg, hint, sizeof hint));
    }
    for (int i = 2; i < argc && strcmp(argv[i], "--") != 0; i++)
        if (is_help_flag(argv[i])) {
            print_command_help(stdout, c);
            return 0;
        }
    cli_parsed a;
    int rc = parse_args(c, argc - 2, argv + 2, &a);
    if (rc) return rc;
    return c->run(c, &a);
}
