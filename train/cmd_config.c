/* train/cmd_config.c: `loquat config CONFIG [--set k=v]... [--json]`: validates a fine-tuning
 * config and prints it resolved (every key, defaults filled in, paths expanded). */
#include <stdio.h>
#include <stdlib.h>

#include <cjson/cJSON.h>

#include "train/config.h"
#include "train/train.h"
#include "train/yaml_tree.h"

/* Text inside a "# ..." comment line: control characters (a newline would end it) become '?'. */
static void print_comment(const char *s) {
    for (; *s; s++) putchar((unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s);
}

int lq_cmd_config(const char *config, const char *const *sets, int n_sets, bool json) {
    lq_err err;
    lq_err_clear(&err);
    lq_train_config c;
    lq_status st = lq_train_config_load(config, sets, n_sets, &c, &err);
    if (st != LQ_OK) {
        fprintf(stderr, "loquat config: %s\n", err.msg);
        /* a config that cannot be read or is wrong is bad input (2), whatever the cause */
        return st == LQ_ERR_OOM || st == LQ_ERR_IO ? lq_status_exit_code(st) : 2;
    }
    int rc = 0;
    if (json) {
        cJSON *o = lq_yschema_to_json(lq_train_config_schema(), &c);
        char *s = o ? cJSON_PrintUnformatted(o) : NULL;
        if (s)
            printf("%s\n", s);
        else {
            fprintf(stderr, "loquat config: out of memory\n");
            rc = 1;
        }
        free(s);
        cJSON_Delete(o);
    } else {
        printf("# loquat config: ");
        print_comment(config);
        printf(", resolved (every key; defaults filled in, paths expanded)\n");
        if (n_sets) {
            printf("# overrides:");
            for (int i = 0; i < n_sets; i++) {
                printf(" --set ");
                print_comment(sets[i]);
            }
            printf("\n");
        }
        lq_yschema_write(stdout, lq_train_config_schema(), &c, true);
    }
    if (fflush(stdout) != 0) {
        fprintf(stderr, "loquat config: cannot write the output\n");
        rc = 1;
    }
    lq_train_config_free(&c);
    return rc;
}
