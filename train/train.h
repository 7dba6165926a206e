/* train/train.h: optimizers, gradient clipping and the loquat command line. */
#ifndef LQ_TRAIN_H
#define LQ_TRAIN_H

#include "autograd/autograd.h"

/* Runs the CLI; returns the process exit code (0 ok, 1 runtime failure, 2 bad usage/input). */
int lq_cli_main(int argc, char **argv);

#endif
