/* train/schedule.c: learning-rate schedules, as transformers' get_*_schedule_with_warmup. */
#include <math.h>

#include "train/trainer.h"

/* The arithmetic mirrors transformers' lambdas (double throughout, same operation order) so the
 * rates agree to the last bit: LambdaLR multiplies the base rate by the lambda's value. */
double lq_lr_at(lq_lr_sched s, double lr, int64_t warmup, int64_t total, int64_t step) {
    if (step < warmup) return lr * ((double)step / (double)(warmup > 1 ? warmup : 1));
    double f = 1.0;
    int64_t span = total - warmup > 1 ? total - warmup : 1;
    switch (s) {
    case LQ_SCHED_CONSTANT: f = 1.0; break;
    case LQ_SCHED_LINEAR: f = fmax(0.0, (double)(total - step) / (double)span); break;
    case LQ_SCHED_COSINE: {
        double progress = (double)(step - warmup) / (double)span;
        /* transformers: math.pi * num_cycles(0.5) * 2.0 * progress; pi * 0.5 * 2.0 == pi exactly */
        f = fmax(0.0, 0.5 * (1.0 + cos(M_PI * 0.5 * 2.0 * progress)));
        break;
    }
    }
    return lr * f;
}
