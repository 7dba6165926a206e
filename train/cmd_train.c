/* train/cmd_train.c: placeholder until the command lands. */
#include <stdio.h>

#include "train/train.h"
#include "train/trainer.h"

int lq_cmd_train(const char *config, const char *const *sets, int n_sets, const lq_trainer_opts *opts) { (void)config; (void)sets; (void)n_sets; (void)opts; fprintf(stderr, "loquat train: not built yet\n"); return 1; }
int lq_cmd_eval(const char *config, const char *const *sets, int n_sets, const char *adapter, bool json) { (void)config; (void)sets; (void)n_sets; (void)adapter; (void)json; fprintf(stderr, "loquat eval: not built yet\n"); return 1; }
