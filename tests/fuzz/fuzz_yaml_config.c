/* tests/fuzz/fuzz_yaml_config.c: libFuzzer target for the fine-tuning config loader
 * (train/config.c over yaml_tree.c / yaml_schema.c): the input is the YAML text, optionally
 * followed by NUL-separated "--set" overrides ("key=value"). An accepted config must write back
 * as YAML that parses to the same config (the round trip checkpoints rely on), and to JSON. */
#include <cjson/cJSON.h>

#include "train/config.h"
#include "train/yaml_tree.h"
#include "tests/fuzz/fuzz_util.h"

#define MAX_SETS 4

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t yl = fuzz_split(data, size, "", 1);
    char *sets[MAX_SETS];
    int n_sets = fuzz_sets(data, size, yl, sets, MAX_SETS);
    lq_train_config c;
    lq_err err;
    lq_err_clear(&err);
    lq_status st = lq_train_config_parse((const char *)data, yl, "fuzz.yaml", (const char *const *)sets, n_sets, &c, &err);
    for (int i = 0; i < n_sets; i++) free(sets[i]);
    if (st != LQ_OK) {
        fuzz_note(err.msg);
        if (err.status == LQ_OK || !err.msg[0]) abort();
        lq_train_config_free(&c);
        return 0;
    }
    char *y1 = lq_train_config_to_yaml(&c);
    if (!y1) abort();
    cJSON *j = lq_yschema_to_json(lq_train_config_schema(), &c);
    if (!j) abort();
    cJSON_Delete(j);
    lq_train_config c2;
    lq_err_clear(&err);
    if (lq_train_config_parse(y1, strlen(y1), "fuzz.yaml", NULL, 0, &c2, &err) != LQ_OK) {
        fprintf(stderr, "round trip: the written config does not parse: %s\n--- written:\n%s\n", err.msg, y1);
        abort();
    }
    char *y2 = lq_train_config_to_yaml(&c2);
    if (!y2 || strcmp(y1, y2) != 0) {
        fprintf(stderr, "round trip: the config changed:\n--- first:\n%s\n--- second:\n%s\n", y1, y2 ? y2 : "(null)");
        abort();
    }
    free(y1);
    free(y2);
    lq_train_config_free(&c);
    lq_train_config_free(&c2);
    return 0;
}
