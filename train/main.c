/* train/main.c: entry point of the loquat command-line tool. */
#include "train/train.h"

int main(int argc, char **argv) { return lq_cli_main(argc, argv); }
