/* train/cmd_mem.c: `loquat mem CONFIG [--set k=v]... [--json]`: the memory estimate of a run, part
 * by part, with and without gradient checkpointing. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lora/lora.h"
#include "train/mem.h"
#include "train/train.h"

static double mib(int64_t b) { return (double)b / 1048576.0; }

/* "q,k,v,o" style list of the targets. */
static void targets_str(uint32_t mask, char *buf, size_t n) {
    size_t o = 0;
    buf[0] = '\0';
    for (int t = 0; t < LQ_LORA_N_TARGETS && o < n; t++)
        if (mask & (1u << t))
            o += (size_t)snprintf(buf + o, n - o, "%s%s", o ? "," : "", lq_lora_target_name((lq_lora_target)t));
}

static void add_num(cJSON *o, const char *k, int64_t v) { cJSON_AddNumberToObject(o, k, (double)v); }

int lq_cmd_mem(const char *config, const char *const *sets, int n_sets, bool json) {
    lq_err err = {0};
    lq_train_config cfg;
    if (lq_train_config_load(config, sets, n_sets, &cfg, &err) != LQ_OK) {
        fprintf(stderr, "loquat mem: %s\n", err.msg);
        return lq_status_exit_code(err.status);
    }
    lq_mem_estimate e;
    if (lq_mem_estimate_run(&cfg, &e, &err) != LQ_OK) {
        fprintf(stderr, "loquat mem: %s\n", err.msg);
        lq_train_config_free(&cfg);
        return lq_status_exit_code(err.status);
    }
    bool ck = cfg.gradient_checkpointing, q4 = cfg.load_in_4bit && !cfg.base_quant_native;
    char tg[128];
    targets_str(cfg.lora_targets, tg, sizeof tg);
    char base_what[96];
    if (q4)
        snprintf(base_what, sizeof base_what, "%s, block %lld%s", cfg.bnb_4bit_quant_type == LQ_DTYPE_FP4 ? "fp4" : "nf4",
                 (long long)(cfg.quant_block_size > 0 ? cfg.quant_block_size : 64),
                 cfg.bnb_4bit_use_double_quant ? ", double quant" : "");
    else
        snprintf(base_what, sizeof base_what, "the file's own dtypes");

    printf("memory estimate for %s\n", config);
    printf("  model %s; micro-batch %lld x %lld tokens; LoRA r %d on %s\n", cfg.base_model,
           (long long)cfg.micro_batch_size, (long long)cfg.sequence_len, cfg.lora_r, tg);
    printf("  %-34s %10s\n", "part", "MiB");
    printf("  %-34s %10.1f  (%s; f32 embedding and norms)\n", "base weights", mib(e.base), base_what);
    printf("  %-34s %10.1f\n", "LoRA adapters (f32)", mib(e.adapters));
    printf("  %-34s %10.1f\n", "adapter gradients", mib(e.grads));
    printf("  %-34s %10.1f\n", "AdamW moments", mib(e.optimizer));
    printf("  %-34s %10.1f%s\n", "activations (step, eval batch)", mib(e.activations), ck ? "" : "  <- this run");
    printf("  %-34s %10.1f%s\n", "activations, gradient checkpointing", mib(e.activations_ckpt), ck ? "  <- this run" : "");
    printf("  %-34s %10.1f\n", "load workspace (one f32 weight)", mib(e.workspace));
    printf("  %-34s %10.1f\n", "data (tokenized, packed)", mib(e.data));
    printf("  %-34s %10.1f\n", "runtime (code, libraries, tokenizer)", mib(e.runtime));
    printf("  %-34s %10.1f  (clean pages of the model file read at load)\n", "model file mapping", mib(e.mapped));
    int64_t t_ck = ck ? e.total : e.total_other, t_plain = ck ? e.total_other : e.total;
    printf("  %-34s %10.1f\n", "total without checkpointing", mib(t_plain));
    printf("  %-34s %10.1f\n", "total with checkpointing", mib(t_ck));
    printf("estimated total %.0f MiB (gradient_checkpointing: %s)\n", mib(e.total), ck ? "true" : "false");
    /* device: cuda holds the base, the adapter block, its grads, the moments and the activation
     * arenas on the GPU (the activation figure is the CPU arenas': the device's are close) */
    bool cuda = cfg.device && strcmp(cfg.device, "cuda") == 0;
    int64_t dev_bytes = e.base + e.adapters + e.grads + e.optimizer + (ck ? e.activations_ckpt : e.activations);
    if (cuda)
        printf("on the device (device: cuda): about %.0f MiB (base weights, adapters, gradients, AdamW moments, "
               "activations)\n", mib(dev_bytes));

    int64_t avail = lq_mem_available();
    lq_err cerr = {0};
    if (lq_mem_check(&e, &cerr) != LQ_OK) fprintf(stderr, "loquat mem: warning: %s\n", cerr.msg);

    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "config", config);
        cJSON_AddBoolToObject(o, "gradient_checkpointing", ck);
        add_num(o, "base", e.base);
        add_num(o, "adapters", e.adapters);
        add_num(o, "grads", e.grads);
        add_num(o, "optimizer", e.optimizer);
        add_num(o, "activations", e.activations);
        add_num(o, "activations_ckpt", e.activations_ckpt);
        add_num(o, "workspace", e.workspace);
        add_num(o, "data", e.data);
        add_num(o, "runtime", e.runtime);
        add_num(o, "mapped", e.mapped);
        add_num(o, "total", e.total);
        add_num(o, "total_other", e.total_other);
        add_num(o, "total_ckpt", t_ck);
        add_num(o, "total_no_ckpt", t_plain);
        add_num(o, "mem_available", avail);
        cJSON_AddBoolToObject(o, "fits", avail < 0 || e.total <= avail);
        if (cuda) add_num(o, "device_bytes", dev_bytes);
        char *s = cJSON_PrintUnformatted(o);
        if (s) printf("%s\n", s);
        free(s);
        cJSON_Delete(o);
    }
    lq_train_config_free(&cfg);
    return 0;
}
