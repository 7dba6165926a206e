/* tests/fuzz/fuzz_qat_config.c: libFuzzer target for the QAT config loader (train/qat_config.c over
 * yaml_tree.c / yaml_schema.c: compact and mapping specs, compare schemes, overrides): the input is
 * the YAML text, optionally followed by NUL-separated "--set" overrides. An accepted config must
 * write back as YAML that parses to the same config, and resolve a layer's specs for every scheme. */
#include <stdio.h>

#include "train/qat.h"
#include "tests/fuzz/fuzz_util.h"

#define MAX_SETS 4

static char *to_yaml(const lq_qat_config *c) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) abort();
    lq_qat_config_write(f, c);
    fclose(f);
    return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t yl = fuzz_split(data, size, "", 1);
    char *sets[MAX_SETS];
    int n_sets = fuzz_sets(data, size, yl, sets, MAX_SETS);
    lq_qat_config c;
    lq_err err;
    lq_err_clear(&err);
    lq_status st = lq_qat_config_parse((const char *)data, yl, "fuzz.yaml", (const char *const *)sets, n_sets, &c, &err);
    for (int i = 0; i < n_sets; i++) free(sets[i]);
    if (st != LQ_OK) {
        fuzz_note(err.msg);
        if (err.status == LQ_OK || !err.msg[0]) abort();
        return 0;
    }
    static const char *const layers[] = {"conv1", "fc3", "model.layers.0.self_attn.q_proj"};
    for (int s = -1; s < c.n_compare; s++)
        for (int i = 0; i < 3; i++) {
            lq_qspec w, a;
            bool pact;
            lq_qat_resolve(&c, s < 0 ? &c.quantization.scheme : &c.compare[s], layers[i], i, 3, &w, &a, &pact);
            if (pact && !a.enabled) abort(); /* PACT never without quantized activations */
        }
    char *y1 = to_yaml(&c);
    lq_qat_config c2;
    lq_err_clear(&err);
    if (lq_qat_config_parse(y1, strlen(y1), "fuzz.yaml", NULL, 0, &c2, &err) != LQ_OK) {
        fprintf(stderr, "round trip: the written config does not parse: %s\n--- written:\n%s\n", err.msg, y1);
        abort();
    }
    char *y2 = to_yaml(&c2);
    if (strcmp(y1, y2) != 0) {
        fprintf(stderr, "round trip: the config changed:\n--- first:\n%s\n--- second:\n%s\n", y1, y2);
        abort();
    }
    free(y1), free(y2);
    lq_qat_config_free(&c);
    lq_qat_config_free(&c2);
    return 0;
}
