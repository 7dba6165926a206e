/* train/cmd_merge.c: placeholder until the command lands. */
#include <stdio.h>

#include "train/train.h"
#include "train/trainer.h"

int lq_cmd_merge(const lq_merge_opts *o) { (void)o; fprintf(stderr, "loquat merge: not built yet\n"); return 1; }
