/* train/cli.c: the loquat command line (placeholder until the CLI issue item lands). */
#include <stdio.h>

#include "train/train.h"

int lq_cli_main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    printf("loquat\n");
    return 0;
}
