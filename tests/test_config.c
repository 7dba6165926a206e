/* tests/test_config.c: the fine-tuning YAML config: defaults, every key, write / parse round trip,
 * each error kind (file:line, key, did-you-mean), --set overrides, path expansion, the demo config. */
#include "tests/testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/autograd.h"
#include "lora/lora.h"
#include "train/config.h"
#include "train/yaml_tree.h"

#define MINIMAL "base_model: m.gguf\ndatasets:\n  - path: d.txt\n    type: text\noutput_dir: out\n"

static lq_status parse(const char *yaml, const char *const *sets, int n_sets, lq_train_config *c, lq_err *err) {
    lq_err_clear(err);
    return lq_train_config_parse(yaml, strlen(yaml), "t.yaml", sets, n_sets, c, err);
}

/* Parses and fails the test with the message if it does not parse. */
static void parse_ok(const char *yaml, const char *const *sets, int n_sets, lq_train_config *c) {
    lq_err err;
    if (parse(yaml, sets, n_sets, c, &err) != LQ_OK) fail_msg("parse failed: %s\n--- yaml:\n%s", err.msg, yaml);
}

/* Parses and checks the error message holds `want` (a whole "FILE:LINE: ..." phrase). */
static void parse_err(const char *yaml, const char *const *sets, int n_sets, const char *want) {
    lq_train_config c;
    lq_err err;
    lq_status st = parse(yaml, sets, n_sets, &c, &err);
    if (st == LQ_OK) {
        lq_train_config_free(&c);
        fail_msg("expected an error containing \"%s\", it parsed\n--- yaml:\n%s", want, yaml);
    }
    assert_int_equal(st, LQ_ERR_INPUT);
    if (!strstr(err.msg, want)) fail_msg("error\n  \"%s\"\nlacks\n  \"%s\"", err.msg, want);
    /* a failed parse leaves a config that frees cleanly (strings NULL) */
    assert_null(c.base_model);
    assert_int_equal(c.n_datasets, 0);
    lq_train_config_free(&c);
}

static void assert_str(const char *a, const char *b) {
    if (!a || !b) {
        if (a != b) fail_msg("'%s' != '%s'", a ? a : "(null)", b ? b : "(null)");
        return;
    }
    assert_string_equal(a, b);
}

static void assert_config_equal(const lq_train_config *a, const lq_train_config *b) {
    assert_str(a->base_model, b->base_model);
    assert_int_equal(a->load_in_4bit, b->load_in_4bit);
    assert_int_equal(a->bnb_4bit_quant_type, b->bnb_4bit_quant_type);
    assert_int_equal(a->bnb_4bit_use_double_quant, b->bnb_4bit_use_double_quant);
    assert_int_equal(a->quant_block_size, b->quant_block_size);
    assert_int_equal(a->base_quant_native, b->base_quant_native);
    assert_str(a->adapter, b->adapter);
    assert_int_equal(a->lora_r, b->lora_r);
    assert_true(a->lora_alpha == b->lora_alpha);
    assert_true(a->lora_dropout == b->lora_dropout);
    assert_int_equal(a->lora_targets, b->lora_targets);
    assert_int_equal(a->use_rslora, b->use_rslora);
    assert_str(a->lora_model_dir, b->lora_model_dir);
    assert_int_equal(a->n_datasets, b->n_datasets);
    for (int i = 0; i < a->n_datasets; i++) {
        assert_str(a->datasets[i].path, b->datasets[i].path);
        assert_int_equal(a->datasets[i].type, b->datasets[i].type);
    }
    assert_int_equal(a->n_test_datasets, b->n_test_datasets);
    for (int i = 0; i < a->n_test_datasets; i++) {
        assert_str(a->test_datasets[i].path, b->test_datasets[i].path);
        assert_int_equal(a->test_datasets[i].type, b->test_datasets[i].type);
    }
    assert_true(a->val_set_size == b->val_set_size);
    assert_int_equal(a->sequence_len, b->sequence_len);
    assert_int_equal(a->sample_packing, b->sample_packing);
    assert_str(a->dataset_prepared_path, b->dataset_prepared_path);
    assert_int_equal(a->micro_batch_size, b->micro_batch_size);
    assert_int_equal(a->gradient_accumulation_steps, b->gradient_accumulation_steps);
    assert_int_equal(a->num_epochs, b->num_epochs);
    assert_int_equal(a->max_steps, b->max_steps);
    assert_true(a->learning_rate == b->learning_rate);
    assert_int_equal(a->lr_scheduler, b->lr_scheduler);
    assert_int_equal(a->warmup_steps, b->warmup_steps);
    assert_true(a->warmup_ratio == b->warmup_ratio);
    assert_str(a->optimizer, b->optimizer);
    assert_true(a->adam_beta1 == b->adam_beta1);
    assert_true(a->adam_beta2 == b->adam_beta2);
    assert_true(a->adam_epsilon == b->adam_epsilon);
    assert_true(a->weight_decay == b->weight_decay);
    assert_true(a->max_grad_norm == b->max_grad_norm);
    assert_int_equal(a->gradient_checkpointing, b->gradient_checkpointing);
    assert_true(a->seed == b->seed);
    assert_int_equal(a->nan_policy, b->nan_policy);
    assert_str(a->output_dir, b->output_dir);
    assert_int_equal(a->save_steps, b->save_steps);
    assert_int_equal(a->save_total_limit, b->save_total_limit);
    assert_int_equal(a->eval_steps, b->eval_steps);
    assert_int_equal(a->logging_steps, b->logging_steps);
    assert_str(a->resume_from_checkpoint, b->resume_from_checkpoint);
    assert_str(a->device, b->device);
    assert_int_equal(a->cuda_math, b->cuda_math);
    assert_int_equal(a->threads, b->threads);
}

/* write -> parse gives an equal config, and writing that again gives the same text. */
static void check_round_trip(const lq_train_config *c) {
    char *y = lq_train_config_to_yaml(c);
    assert_non_null(y);
    lq_train_config back;
    parse_ok(y, NULL, 0, &back);
    assert_config_equal(c, &back);
    char *y2 = lq_train_config_to_yaml(&back);
    assert_non_null(y2);
    assert_string_equal(y, y2);
    /* one line per key */
    int lines = 0;
    for (const char *p = y; *p; p++) lines += *p == '\n';
    assert_int_equal(lines, 45);
    free(y);
    free(y2);
    lq_train_config_free(&back);
}

/* --- defaults ------------------------------------------------------------------------------ */

/* The values config.h documents for every key left out. */
static void test_defaults(void **state) {
    (void)state;
    lq_train_config c;
    parse_ok(MINIMAL, NULL, 0, &c);
    assert_string_equal(c.source, "t.yaml");
    assert_string_equal(c.base_model, "m.gguf");
    assert_true(c.load_in_4bit);
    assert_int_equal(c.bnb_4bit_quant_type, LQ_DTYPE_NF4);
    assert_true(c.bnb_4bit_use_double_quant);
    assert_int_equal(c.quant_block_size, 64);
    assert_false(c.base_quant_native);
    assert_string_equal(c.adapter, "lora");
    assert_int_equal(c.lora_r, 8);
    assert_true(c.lora_alpha == 16);
    assert_true(c.lora_dropout == 0.05);
    assert_int_equal(c.lora_targets, (1u << LQ_LORA_Q) | (1u << LQ_LORA_K) | (1u << LQ_LORA_V) | (1u << LQ_LORA_O));
    assert_false(c.use_rslora);
    assert_null(c.lora_model_dir);
    assert_int_equal(c.n_datasets, 1);
    assert_string_equal(c.datasets[0].path, "d.txt");
    assert_int_equal(c.datasets[0].type, LQ_DATA_TEXT);
    assert_int_equal(c.n_test_datasets, 0);
    assert_true(c.val_set_size == 0);
    assert_int_equal(c.sequence_len, 512);
    assert_true(c.sample_packing);
    assert_null(c.dataset_prepared_path);
    assert_int_equal(c.micro_batch_size, 1);
    assert_int_equal(c.gradient_accumulation_steps, 1);
    assert_int_equal(c.num_epochs, 1);
    assert_int_equal(c.max_steps, 0);
    assert_true(c.learning_rate == 2e-4);
    assert_int_equal(c.lr_scheduler, LQ_SCHED_COSINE);
    assert_int_equal(c.warmup_steps, 0);
    assert_true(c.warmup_ratio == 0);
    assert_string_equal(c.optimizer, "adamw");
    assert_true(c.adam_beta1 == 0.9 && c.adam_beta2 == 0.999 && c.adam_epsilon == 1e-8);
    assert_true(c.weight_decay == 0);
    assert_true(c.max_grad_norm == 1.0);
    assert_false(c.gradient_checkpointing);
    assert_true(c.seed == 42);
    assert_int_equal(c.nan_policy, LQ_NAN_STOP);
    assert_string_equal(c.output_dir, "out");
    assert_int_equal(c.save_steps, 0);
    assert_int_equal(c.save_total_limit, 0);
    assert_int_equal(c.eval_steps, 0);
    assert_int_equal(c.logging_steps, 1);
    assert_null(c.resume_from_checkpoint);
    assert_string_equal(c.device, "cpu");
    assert_int_equal(c.cuda_math, LQ_CUDA_MATH_TF32);
    assert_int_equal(c.threads, 0);
    check_round_trip(&c);
    lq_train_config_free(&c);

    /* lq_train_config_defaults: the same numbers, no strings */
    lq_train_config d;
    lq_train_config_defaults(&d);
    assert_int_equal(d.lora_r, 8);
    assert_int_equal(d.sequence_len, 512);
    assert_true(d.learning_rate == 2e-4);
    assert_null(d.base_model);
    assert_null(d.adapter);
    lq_train_config_free(&d);

    /* YAML null (empty value or ~) means the default */
    parse_ok(MINIMAL "lora_r:\nlearning_rate: ~\nlora_target_modules: null\nadapter:\n", NULL, 0, &c);
    assert_int_equal(c.lora_r, 8);
    assert_true(c.learning_rate == 2e-4);
    assert_string_equal(c.adapter, "lora");
    assert_int_equal(c.lora_targets, 0xFu);
    lq_train_config_free(&c);
}

/* --- every key ----------------------------------------------------------------------------- */

static const char *every_key =
    "base_model: /models/base\n"
    "load_in_4bit: false\n"
    "bnb_4bit_quant_type: fp4\n"
    "bnb_4bit_use_double_quant: no\n"
    "quant_block_size: 128\n"
    "base_quant: native\n"
    "adapter: qlora\n"
    "lora_r: 16\n"
    "lora_alpha: 32.5\n"
    "lora_dropout: 0.1\n"
    "lora_target_modules: [q_proj, self_attn.v_proj, model.layers.0.mlp.down_proj]\n"
    "use_rslora: yes\n"
    "lora_model_dir: \"adapters/start\"\n"
    "datasets:\n"
    "  - path: a.jsonl\n"
    "    type: completion\n"
    "  - {path: 'b dir/with \"quotes\" and \\\\', type: alpaca}\n"
    "  - path: c.jsonl\n"
    "    type: chat\n"
    "test_datasets:\n"
    "  - path: held.txt\n"
    "    type: text\n"
    "val_set_size: 0\n"
    "sequence_len: 1024\n"
    "sample_packing: false\n"
    "dataset_prepared_path: cache/tok\n"
    "micro_batch_size: 3\n"
    "gradient_accumulation_steps: 5\n"
    "num_epochs: 2\n"
    "max_steps: 77\n"
    "learning_rate: 1.5e-5\n"
    "lr_scheduler: linear\n"
    "warmup_steps: 7\n"
    "warmup_ratio: 0.125\n"
    "optimizer: adamw_torch_fused\n"
    "adam_beta1: 0.85\n"
    "adam_beta2: 0.95\n"
    "adam_epsilon: 1.0e-6\n"
    "weight_decay: 0.01\n"
    "max_grad_norm: 0\n"
    "gradient_checkpointing: true\n"
    "seed: 18446744073709551615\n"
    "on_nan: skip\n"
    "output_dir: runs/x\n"
    "save_steps: 25\n"
    "save_total_limit: 3\n"
    "eval_steps: 50\n"
    "logging_steps: 10\n"
    "resume_from_checkpoint: runs/x/checkpoint-25.h5\n"
    "device: cuda\n"
    "cuda_math: bf16\n"
    "threads: 6\n";

static void test_every_key(void **state) {
    (void)state;
    lq_train_config c;
    parse_ok(every_key, (const char *const[]){"load_in_4bit=false"}, 1, &c);
    assert_string_equal(c.base_model, "/models/base");
    assert_false(c.load_in_4bit);
    assert_int_equal(c.bnb_4bit_quant_type, LQ_DTYPE_FP4);
    assert_false(c.bnb_4bit_use_double_quant);
    assert_int_equal(c.quant_block_size, 128);
    assert_true(c.base_quant_native);
    assert_string_equal(c.adapter, "lora");
    assert_int_equal(c.lora_r, 16);
    assert_true(c.lora_alpha == 32.5);
    assert_true(c.lora_dropout == 0.1);
    assert_int_equal(c.lora_targets, (1u << LQ_LORA_Q) | (1u << LQ_LORA_V) | (1u << LQ_LORA_DOWN));
    assert_true(c.use_rslora);
    assert_string_equal(c.lora_model_dir, "adapters/start");
    assert_int_equal(c.n_datasets, 3);
    assert_string_equal(c.datasets[0].path, "a.jsonl");
    assert_int_equal(c.datasets[0].type, LQ_DATA_JSONL);
    assert_string_equal(c.datasets[1].path, "b dir/with \"quotes\" and \\\\");
    assert_int_equal(c.datasets[1].type, LQ_DATA_ALPACA);
    assert_int_equal(c.datasets[2].type, LQ_DATA_CHAT);
    assert_int_equal(c.n_test_datasets, 1);
    assert_string_equal(c.test_datasets[0].path, "held.txt");
    assert_int_equal(c.test_datasets[0].type, LQ_DATA_TEXT);
    assert_int_equal(c.sequence_len, 1024);
    assert_false(c.sample_packing);
    assert_string_equal(c.dataset_prepared_path, "cache/tok");
    assert_int_equal(c.micro_batch_size, 3);
    assert_int_equal(c.gradient_accumulation_steps, 5);
    assert_int_equal(c.num_epochs, 2);
    assert_int_equal(c.max_steps, 77);
    assert_true(c.learning_rate == 1.5e-5);
    assert_int_equal(c.lr_scheduler, LQ_SCHED_LINEAR);
    assert_int_equal(c.warmup_steps, 7);
    assert_true(c.warmup_ratio == 0.125);
    assert_string_equal(c.optimizer, "adamw");
    assert_true(c.adam_beta1 == 0.85 && c.adam_beta2 == 0.95 && c.adam_epsilon == 1e-6);
    assert_true(c.weight_decay == 0.01);
    assert_true(c.max_grad_norm == 0);
    assert_true(c.gradient_checkpointing);
    assert_true(c.seed == UINT64_MAX);
    assert_int_equal(c.nan_policy, LQ_NAN_SKIP);
    assert_string_equal(c.output_dir, "runs/x");
    assert_int_equal(c.save_steps, 25);
    assert_int_equal(c.save_total_limit, 3);
    assert_int_equal(c.eval_steps, 50);
    assert_int_equal(c.logging_steps, 10);
    assert_string_equal(c.resume_from_checkpoint, "runs/x/checkpoint-25.h5");
    assert_string_equal(c.device, "cuda");
    assert_int_equal(c.cuda_math, LQ_CUDA_MATH_BF16);
    assert_int_equal(c.threads, 6);
    check_round_trip(&c);

    /* the FILE* writer gives the same text as the string one */
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    assert_int_equal(lq_train_config_write(m, &c), LQ_OK);
    fclose(m);
    char *y = lq_train_config_to_yaml(&c);
    assert_string_equal(buf, y);
    /* schema order: the first and last keys, and lora_target_linear (input only) absent */
    assert_true(strncmp(y, "base_model: ", 12) == 0);
    assert_non_null(strstr(y, "\nthreads: 6\n"));
    assert_null(strstr(y, "lora_target_linear"));
    free(buf);
    free(y);
    lq_train_config_free(&c);

    /* all seven projections are written as all-linear and read back */
    parse_ok(MINIMAL "lora_target_modules: all-linear\nval_set_size: 0.25\n", NULL, 0, &c);
    assert_int_equal(c.lora_targets, LQ_LORA_ALL_LINEAR);
    check_round_trip(&c);
    lq_train_config_free(&c);
    /* axolotl's lora_target_linear: true adds every projection; a single name is a one-entry list */
    parse_ok(MINIMAL "lora_target_modules: q_proj\nlora_target_linear: true\n", NULL, 0, &c);
    assert_int_equal(c.lora_targets, LQ_LORA_ALL_LINEAR);
    lq_train_config_free(&c);
    parse_ok(MINIMAL "lora_target_modules: v_proj\nlora_target_linear: false\nval_set_size: 12\n", NULL, 0, &c);
    assert_int_equal(c.lora_targets, 1u << LQ_LORA_V);
    assert_true(c.val_set_size == 12);
    lq_train_config_free(&c);
}

/* --- errors: each kind, with its line -------------------------------------------------------- */

typedef struct err_case {
    const char *yaml, *want;
} err_case;

static void test_errors(void **state) {
    (void)state;
    /* MINIMAL is 5 lines: a key appended is on line 6 */
    static const err_case cases[] = {
        {MINIMAL "lora_rr: 8\n", "t.yaml:6: unknown key 'lora_rr' (did you mean 'lora_r'?)"},
        {MINIMAL "learning_rat: 1e-4\n", "t.yaml:6: unknown key 'learning_rat' (did you mean 'learning_rate'?)"},
        {MINIMAL "wandb_project: x\n", "t.yaml:6: unknown key 'wandb_project'"},
        {MINIMAL "learning_rate: abc\n", "t.yaml:6: key 'learning_rate': expected a positive number, got 'abc'"},
        {MINIMAL "learning_rate: 0\n", "t.yaml:6: key 'learning_rate': expected a positive number, got '0'"},
        {MINIMAL "learning_rate: .nan\n", "key 'learning_rate': expected a positive number"},
        {MINIMAL "lora_r: 1.5\n", "t.yaml:6: key 'lora_r': expected an integer in [1, 65536], got '1.5'"},
        {MINIMAL "lora_r: 0\n", "t.yaml:6: key 'lora_r': expected an integer"},
        {MINIMAL "lora_r: [1]\n", "t.yaml:6: key 'lora_r': expected an integer in [1, 65536], got a list"},
        {MINIMAL "\nlora_r: 8\nlora_r: 9\n", "t.yaml:8: duplicate key 'lora_r' (first given at line 7)"},
        {"- a\n- b\n", "t.yaml:1: the top level must be a mapping (key: value lines), got a list"},
        {"just text\n", "t.yaml:1: the top level must be a mapping (key: value lines), got 'just text'"},
        {"", "t.yaml: the config is empty"},
        {"# nothing but a comment\n", "t.yaml: the config is empty"},
        {MINIMAL "lora_r: 8\n\tlora_alpha: 16\n", "t.yaml:7: YAML syntax error:"},
        {MINIMAL "lora_target_modules: [q_proj\n", "t.yaml:7: YAML syntax error:"},
        {"base_model: m\ndatasets:\n  - path: d\n    type: text\n", "t.yaml: missing required key 'output_dir'"},
        {"base_model: m\noutput_dir: o\n", "t.yaml: missing required key 'datasets'"},
        {"datasets:\n  - path: d\n    type: text\noutput_dir: o\n", "t.yaml: missing required key 'base_model'"},
        {"base_model:\ndatasets:\n  - path: d\n    type: text\noutput_dir: o\n",
         "t.yaml:1: key 'base_model' is required"},
        {"base_model: m\ndatasets: []\noutput_dir: o\n", "t.yaml:2: key 'datasets': needs at least one entry"},
        {"base_model: m\ndatasets: d.txt\noutput_dir: o\n", "t.yaml:2: key 'datasets': expected a list"},
        {"base_model: m\noutput_dir: o\ndatasets:\n  - path: d\n", "t.yaml:4: key 'datasets.0.type' is required"},
        {"base_model: m\noutput_dir: o\ndatasets:\n  - type: text\n", "t.yaml:4: key 'datasets.0.path' is required"},
        {"base_model: m\noutput_dir: o\ndatasets:\n  - path: d\n    type: txt\n",
         "t.yaml:5: key 'datasets.0.type': expected one of text, completion, alpaca, chat, got 'txt' (did you mean "
         "'text'?)"},
        {"base_model: m\noutput_dir: o\ndatasets:\n  - path: d\n    type: text\n    split: train\n",
         "t.yaml:6: unknown key 'datasets.0.split'"},
        {MINIMAL "lora_target_modules: [q_proj, qv_proj]\n",
         "t.yaml:6: key 'lora_target_modules': 'qv_proj' is not a projection name"},
        {MINIMAL "lora_target_modules: all_linear\n", "(did you mean 'all-linear'?)"},
        {MINIMAL "lora_target_modules: []\n", "t.yaml:6: key 'lora_target_modules': the list is empty"},
        {MINIMAL "lora_target_linear: maybe\n", "t.yaml:6: key 'lora_target_linear': expected true or false"},
        {MINIMAL "base_quant: native\n", "t.yaml:6: key 'base_quant': native keeps a GGUF model's own blocks, so "
                                         "load_in_4bit must be false"},
        {MINIMAL "load_in_4bit: true\nbase_quant: native\n", "t.yaml:7: key 'base_quant'"},
        {MINIMAL "bnb_4bit_quant_type: nf5\n",
         "t.yaml:6: key 'bnb_4bit_quant_type': expected one of nf4, fp4, got 'nf5' (did you mean 'nf4'?)"},
        {MINIMAL "quant_block_size: 48\n", "t.yaml:6: key 'quant_block_size': expected an integer in [32, 4096], a "
                                           "power of two, got '48'"},
        {MINIMAL "quant_block_size: 8192\n", "t.yaml:6: key 'quant_block_size'"},
        {MINIMAL "quant_block_size: 16\n", "t.yaml:6: key 'quant_block_size'"},
        {MINIMAL "micro_batch_size: 0\n", "t.yaml:6: key 'micro_batch_size': expected an integer"},
        {MINIMAL "gradient_accumulation_steps: -2\n", "t.yaml:6: key 'gradient_accumulation_steps'"},
        {MINIMAL "sequence_len: 2000000\n", "t.yaml:6: key 'sequence_len': expected an integer in [1, 1048576]"},
        {MINIMAL "lora_dropout: 1\n", "t.yaml:6: key 'lora_dropout': expected a number in [0, 1), got '1'"},
        {MINIMAL "warmup_ratio: 1.0\n", "t.yaml:6: key 'warmup_ratio': expected a number in [0, 1)"},
        {MINIMAL "val_set_size: -0.1\n", "t.yaml:6: key 'val_set_size': expected a number >= 0"},
        {MINIMAL "val_set_size: 2.5\n", "t.yaml:6: key 'val_set_size': 2.5 is neither a fraction"},
        {MINIMAL "val_set_size: 0.1\ntest_datasets:\n  - {path: v.txt, type: text}\n",
         "t.yaml:6: key 'val_set_size': test_datasets already give the validation set"},
        {MINIMAL "optimizer: sgd\n",
         "t.yaml:6: key 'optimizer': expected one of adamw, adamw_torch, adamw_torch_fused, got 'sgd'"},
        {MINIMAL "lr_scheduler: cosin\n", "t.yaml:6: key 'lr_scheduler': expected one of constant, linear, cosine, "
                                          "got 'cosin' (did you mean 'cosine'?)"},
        {MINIMAL "device: gpu\n", "t.yaml:6: key 'device': expected one of cpu, cuda, got 'gpu'"},
        {MINIMAL "cuda_math: fp16\n", "t.yaml:6: key 'cuda_math': expected one of tf32, bf16, fp32, got 'fp16'"},
        {MINIMAL "on_nan: ignore\n", "t.yaml:6: key 'on_nan': expected one of stop, skip, got 'ignore'"},
        {MINIMAL "threads: -1\n", "t.yaml:6: key 'threads': expected an integer in [0, 4096], got '-1'"},
        {MINIMAL "seed: -1\n", "t.yaml:6: key 'seed': expected an integer >= 0, got '-1'"},
        {MINIMAL "seed: 18446744073709551616\n", "t.yaml:6: key 'seed'"},
        {MINIMAL "logging_steps: 0\n", "t.yaml:6: key 'logging_steps'"},
        {MINIMAL "load_in_4bit: maybe\n", "t.yaml:6: key 'load_in_4bit': expected true or false, got 'maybe'"},
        {MINIMAL "sample_packing: 1\n", "t.yaml:6: key 'sample_packing': expected true or false, got '1'"},
        {MINIMAL "max_steps: 1e3\n", "t.yaml:6: key 'max_steps': expected an integer"},
        {MINIMAL "output_dir: \"\"\n", "duplicate key 'output_dir' (first given at line 5)"},
        {"base_model: \"\"\ndatasets:\n  - {path: d, type: text}\noutput_dir: o\n",
         "t.yaml:1: key 'base_model': expected a path, got ''"},
        {MINIMAL "lora_model_dir: [a, b]\n", "t.yaml:6: key 'lora_model_dir': expected a path, got a list"},
        {MINIMAL "a: &x 1\nb: *x\n", "t.yaml:7: YAML aliases (*x) are not supported"},
        {MINIMAL "---\nlora_r: 4\n", "t.yaml:6: a second YAML document"},
        {MINIMAL "? [a, b]\n: 1\n", "t.yaml:6: a key must be a name, not a list"},
        {"base_model: m\ndatasets:\n  - path: d\n    type: text\n  - path: e\n    type: chat\n    bogus: 1\n"
         "output_dir: o\n",
         "t.yaml:7: unknown key 'datasets.1.bogus'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) parse_err(cases[i].yaml, NULL, 0, cases[i].want);

    /* the tab hint, and more datasets than fit */
    parse_err(MINIMAL "lora_r: 8\n\tlora_alpha: 16\n", NULL, 0, "tabs cannot indent YAML, use spaces");
    char big[4096] = "base_model: m\noutput_dir: o\ndatasets:\n";
    for (int i = 0; i <= LQ_CFG_MAX_DATASETS; i++) strcat(big, "  - {path: d, type: text}\n");
    parse_err(big, NULL, 0, "t.yaml:4: key 'datasets': 17 entries, at most 16 are allowed");
    /* nesting deeper than the parser allows */
    char deep[512] = MINIMAL "x: ";
    for (int i = 0; i < 40; i++) strcat(deep, "[");
    parse_err(deep, NULL, 0, "nested more than 32 levels deep");

    /* a mapping too wide to be a config */
    size_t cap = 5000 * 16;
    char *wide = malloc(cap);
    assert_non_null(wide);
    size_t l = 0;
    for (int i = 0; i < 5000; i++) l += (size_t)snprintf(wide + l, cap - l, "k%d: %d\n", i, i);
    parse_err(wide, NULL, 0, "t.yaml:4097: more than 4096 entries in one mapping or list");
    free(wide);

    /* a missing file names the path */
    lq_train_config c;
    lq_err err;
    lq_err_clear(&err);
    assert_int_equal(lq_train_config_load("/nonexistent/dir/c.yaml", NULL, 0, &c, &err), LQ_ERR_INPUT);
    assert_non_null(strstr(err.msg, "/nonexistent/dir/c.yaml"));
}

/* --- --set ----------------------------------------------------------------------------------- */

static void test_overrides(void **state) {
    (void)state;
    lq_train_config c;
    const char *sets[] = {"lora_r=32",
                          "learning_rate=1e-3",
                          "lora_target_modules=[q_proj,v_proj]",
                          "datasets.0.path=x.jsonl",
                          "datasets.0.type=completion",
                          "datasets.1={path: y.txt, type: text}",
                          "datasets.2.path=z.jsonl",
                          "datasets.2.type=alpaca",
                          "test_datasets.0.path=t.txt",
                          "test_datasets.0.type=text",
                          "gradient_checkpointing=yes",
                          "lora_alpha=",
                          "lora_r=24"};
    parse_ok(MINIMAL "lora_alpha: 64\n", sets, (int)(sizeof sets / sizeof *sets), &c);
    assert_int_equal(c.lora_r, 24); /* the later --set wins */
    assert_true(c.learning_rate == 1e-3);
    assert_int_equal(c.lora_targets, (1u << LQ_LORA_Q) | (1u << LQ_LORA_V));
    assert_int_equal(c.n_datasets, 3);
    assert_string_equal(c.datasets[0].path, "x.jsonl");
    assert_int_equal(c.datasets[0].type, LQ_DATA_JSONL);
    assert_string_equal(c.datasets[1].path, "y.txt");
    assert_string_equal(c.datasets[2].path, "z.jsonl");
    assert_int_equal(c.datasets[2].type, LQ_DATA_ALPACA);
    assert_int_equal(c.n_test_datasets, 1);
    assert_string_equal(c.test_datasets[0].path, "t.txt");
    assert_true(c.gradient_checkpointing);
    assert_true(c.lora_alpha == 16); /* an empty value is null: the default */
    lq_train_config_free(&c);

    /* errors name the override, not a line */
    parse_err(MINIMAL, (const char *const[]){"lora_rr=8"}, 1, "--set lora_rr=8: unknown key 'lora_rr' (did you mean 'lora_r'?)");
    parse_err(MINIMAL, (const char *const[]){"lora_r=abc"}, 1,
              "--set lora_r=abc: key 'lora_r': expected an integer in [1, 65536], got 'abc'");
    parse_err(MINIMAL, (const char *const[]){"datasets.0.typo=text"}, 1,
              "--set datasets.0.typo=text: unknown key 'datasets.0.typo' (did you mean 'type'?)");
    parse_err(MINIMAL, (const char *const[]){"datasets.1.path=x"}, 1,
              "--set datasets.1.path=x: key 'datasets.1.type' is required");
    parse_err(MINIMAL, (const char *const[]){"datasets.5.path=x"}, 1, "--set datasets.5.path=x: index 5 is out of range");
    parse_err(MINIMAL, (const char *const[]){"datasets.x.path=x"}, 1, "--set datasets.x.path=x: 'x' indexes a list");
    parse_err(MINIMAL, (const char *const[]){"lora_r"}, 1, "--set lora_r: expected key=value");
    parse_err(MINIMAL, (const char *const[]){"=4"}, 1, "--set =4: expected key=value");
    parse_err(MINIMAL, (const char *const[]){"datasets..path=x"}, 1, "--set datasets..path=x: the key has an empty part");
    parse_err(MINIMAL, (const char *const[]){"lora_r=[1"}, 1, "--set lora_r=[1: YAML syntax error");
    parse_err(MINIMAL, (const char *const[]){"base_model.x=1"}, 1, "--set base_model.x=1: 'x' is inside a single value");
    parse_err(MINIMAL, (const char *const[]){"base_quant=native"}, 1,
              "--set base_quant=native: key 'base_quant': native keeps");
    parse_err(MINIMAL, (const char *const[]){"output_dir="}, 1, "--set output_dir=: key 'output_dir' is required");
    /* an override fixes what the file got wrong (values are read after every override) */
    parse_ok(MINIMAL "lora_r: zero\n", (const char *const[]){"lora_r=2"}, 1, &c);
    assert_int_equal(c.lora_r, 2);
    lq_train_config_free(&c);
}

/* --- paths ----------------------------------------------------------------------------------- */

static void test_paths(void **state) {
    (void)state;
    setenv("LQ_TEST_CFG_DIR", "/data/x", 1);
    unsetenv("LQ_TEST_CFG_UNSET");
    setenv("LQ_TEST_CFG_EMPTY", "", 1);
    setenv("HOME", "/home/tester", 1);
    lq_train_config c;
    parse_ok("base_model: ${LQ_TEST_CFG_DIR}/m.gguf\n"
             "datasets:\n"
             "  - path: ${LQ_TEST_CFG_UNSET:-~/cache}/a.txt\n"
             "    type: text\n"
             "  - path: ${LQ_TEST_CFG_EMPTY:-/e}/b.txt\n"
             "    type: text\n"
             "  - path: ~\n" /* YAML null: a required key */
             "    type: text\n"
             "output_dir: ~/runs/$HOME/a~b\n"
             "lora_model_dir: ${LQ_TEST_CFG_UNSET:-${LQ_TEST_CFG_DIR}/ad}\n"
             "dataset_prepared_path: rel/${LQ_TEST_CFG_UNSET:-}x\n"
             "resume_from_checkpoint: \"~\"\n",
             (const char *const[]){"datasets.2.path=~/c.txt"}, 1, &c);
    assert_string_equal(c.base_model, "/data/x/m.gguf");
    assert_string_equal(c.datasets[0].path, "/home/tester/cache/a.txt");
    assert_string_equal(c.datasets[1].path, "/e/b.txt"); /* set but empty: the default, as the shell's :- */
    assert_string_equal(c.datasets[2].path, "/home/tester/c.txt");
    assert_string_equal(c.output_dir, "/home/tester/runs/$HOME/a~b"); /* only a leading ~ and ${...} */
    assert_string_equal(c.lora_model_dir, "/data/x/ad");
    assert_string_equal(c.dataset_prepared_path, "rel/x");
    assert_string_equal(c.resume_from_checkpoint, "/home/tester"); /* quoted: a path, not null */
    lq_train_config_free(&c);

    parse_err("base_model: ${LQ_TEST_CFG_UNSET}/m\ndatasets:\n  - {path: d, type: text}\noutput_dir: o\n", NULL, 0,
              "t.yaml:1: key 'base_model': environment variable 'LQ_TEST_CFG_UNSET' is not set");
    parse_err(MINIMAL "lora_model_dir: ${LQ_TEST_CFG_DIR\n", NULL, 0,
              "t.yaml:6: key 'lora_model_dir': '${' without a closing '}'");
    parse_err(MINIMAL "lora_model_dir: ${1BAD}\n", NULL, 0, "t.yaml:6: key 'lora_model_dir': '${1BAD}' is not");
    parse_err(MINIMAL "lora_model_dir: ${A:=b}\n", NULL, 0, "t.yaml:6: key 'lora_model_dir': '${A:=b}' is not");
    parse_err(MINIMAL, (const char *const[]){"output_dir=${LQ_TEST_CFG_UNSET}"}, 1,
              "--set output_dir=${LQ_TEST_CFG_UNSET}: key 'output_dir': environment variable 'LQ_TEST_CFG_UNSET'");
    parse_err(MINIMAL "dataset_prepared_path: ${LQ_TEST_CFG_EMPTY:-}\n", NULL, 0,
              "t.yaml:6: key 'dataset_prepared_path': '${LQ_TEST_CFG_EMPTY:-}' expands to an empty path");
}

/* --- the YAML layer -------------------------------------------------------------------------- */

static void test_yaml_tree(void **state) {
    (void)state;
    lq_ynode *root;
    lq_err err;
    lq_err_clear(&err);
    const char *y = "a: 1\nb:\n  - x\n  - 'y'\n  - {k: v}\nc: \"q\\tz\"\nd: ~\n";
    assert_int_equal(lq_yaml_parse(y, strlen(y), "y", &root, &err), LQ_OK);
    assert_int_equal(root->kind, LQ_YNODE_MAP);
    assert_int_equal(root->n, 4);
    const lq_ynode *kn, *b = lq_ynode_get(root, "b", &kn);
    assert_int_equal(kn->line, 2);
    assert_int_equal(b->kind, LQ_YNODE_SEQ);
    assert_int_equal(b->n, 3);
    assert_int_equal(b->kids[1]->line, 4);
    assert_true(b->kids[0]->plain);
    assert_false(b->kids[1]->plain);
    assert_string_equal(lq_ynode_get(b->kids[2], "k", NULL)->str, "v");
    assert_string_equal(lq_ynode_get(root, "c", NULL)->str, "q\tz");
    assert_true(lq_ynode_is_null(lq_ynode_get(root, "d", NULL)));
    assert_false(lq_ynode_is_null(b->kids[1]));
    assert_int_equal(lq_yaml_override(root, "b.2.k=[1, 2]", &err), LQ_OK);
    const lq_ynode *k = lq_ynode_get(b->kids[2], "k", NULL);
    assert_int_equal(k->kind, LQ_YNODE_SEQ);
    assert_int_equal(k->line, 0);
    char w[64];
    assert_string_equal(lq_ynode_where(k, w, sizeof w), "--set b.2.k=[1, 2]");
    assert_int_equal(lq_yaml_override(root, "e.f.0=z", &err), LQ_OK); /* creates e: {f: [z]} */
    const lq_ynode *e = lq_ynode_get(root, "e", NULL);
    assert_int_equal(e->kind, LQ_YNODE_MAP);
    assert_string_equal(lq_ynode_get(e, "f", NULL)->kids[0]->str, "z");
    lq_ynode_free(root);

    assert_int_equal(lq_edit_distance("lora_rr", "lora_r"), 1);
    assert_int_equal(lq_edit_distance("kitten", "sitting"), 3);
    assert_int_equal(lq_edit_distance("", "abc"), 3);
    const char *cands[] = {"seed", "lora_r", "lora_alpha"};
    assert_string_equal(lq_did_you_mean("lora_alhpa", cands, 3), "lora_alpha");
    assert_null(lq_did_you_mean("xy", cands, 3));
    assert_null(lq_did_you_mean("wandb_project", cands, 3));
}

/* --- the demo config --------------------------------------------------------------------------- */

static void test_demo_config(void **state) {
    (void)state;
    char path[512];
    const char *fx = getenv("LOQUAT_FIXTURES");
    if (fx && *fx)
        snprintf(path, sizeof path, "%s/../../configs/smollm2-austen-qlora.yaml", fx);
    else
        snprintf(path, sizeof path, "configs/smollm2-austen-qlora.yaml");
    char *old = getenv("LOQUAT_CACHE") ? strdup(getenv("LOQUAT_CACHE")) : NULL;
    setenv("LOQUAT_CACHE", "/tmp/lq-cfg-test-cache", 1);
    lq_train_config c;
    lq_err err;
    lq_err_clear(&err);
    lq_status st = lq_train_config_load(path, NULL, 0, &c, &err);
    if (old) setenv("LOQUAT_CACHE", old, 1); else unsetenv("LOQUAT_CACHE");
    free(old);
    if (st != LQ_OK) fail_msg("%s: %s", path, err.msg);
    /* what the issue asks of the demo */
    assert_string_equal(c.base_model, "/tmp/lq-cfg-test-cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_true(c.load_in_4bit && c.bnb_4bit_use_double_quant);
    assert_int_equal(c.bnb_4bit_quant_type, LQ_DTYPE_NF4);
    assert_int_equal(c.quant_block_size, 64);
    assert_int_equal(c.lora_r, 16);
    assert_true(c.lora_alpha == 32 && c.lora_dropout == 0.05);
    assert_int_equal(c.lora_targets, LQ_LORA_ALL_LINEAR);
    assert_int_equal(c.n_datasets, 1);
    assert_string_equal(c.datasets[0].path, "/tmp/lq-cfg-test-cache/data/austen/northangerabbey.txt");
    assert_int_equal(c.datasets[0].type, LQ_DATA_TEXT);
    assert_int_equal(c.n_test_datasets, 1);
    assert_string_equal(c.test_datasets[0].path, "/tmp/lq-cfg-test-cache/data/austen/persuasion_heldout.txt");
    assert_int_equal(c.sequence_len, 256);
    assert_int_equal(c.micro_batch_size, 4);
    assert_int_equal(c.gradient_accumulation_steps, 1);
    assert_int_equal(c.max_steps, 30);
    assert_int_equal(c.lr_scheduler, LQ_SCHED_COSINE);
    assert_int_equal(c.warmup_steps, 3);
    assert_int_equal(c.eval_steps, 0);
    assert_int_equal(c.save_steps, 10);
    assert_int_equal(c.save_total_limit, 2);
    assert_int_equal(c.logging_steps, 1);
    assert_true(c.seed == 42);
    assert_string_equal(c.output_dir, "out/smollm2-austen");
    assert_int_equal(c.threads, 0);
    assert_string_equal(c.source, path);
    check_round_trip(&c);
    lq_train_config_free(&c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),  cmocka_unit_test(test_every_key), cmocka_unit_test(test_errors),
        cmocka_unit_test(test_overrides), cmocka_unit_test(test_paths),     cmocka_unit_test(test_yaml_tree),
        cmocka_unit_test(test_demo_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
