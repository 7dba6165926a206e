/* train/cmd_config.c: placeholder until the command lands. */
#include <stdio.h>

#include "train/train.h"
#include "train/trainer.h"

int lq_cmd_config(const char *config, const char *const *sets, int n_sets, bool json) { (void)config; (void)sets; (void)n_sets; (void)json; fprintf(stderr, "loquat config: not built yet\n"); return 1; }
