/* train/main.c: entry point of the loquat command-line tool (and its OpenBLAS core check). */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <unistd.h>

#include "quant/quant.h"
#include "train/train.h"

/* OpenBLAS 0.3.21 (Debian's DYNAMIC_ARCH build) takes some virtual x86 CPUs, this AVX-512 Xeon
 * among them, for a "Prescott" and runs its SSE3 kernels: a large sgemm is then ~4x slower than
 * with the SkylakeX kernels (bench/RESULTS.md, "Training step"). It picks its core when the
 * library loads, before main, and reads OPENBLAS_CORETYPE only then, so the only fix from inside
 * is to set the variable and exec ourselves once more. Where OPENBLAS_CORETYPE is already set
 * (the user's choice) or the re-exec already happened (LOQUAT_BLAS_REEXEC, the loop guard), or
 * the core OpenBLAS chose is already at least what the CPU supports, nothing happens. Silent
 * unless LOQUAT_VERBOSE is set to a non-empty value other than 0. */
#define REEXEC_MARK "LOQUAT_BLAS_REEXEC"

static int verbose(void) {
    const char *v = getenv("LOQUAT_VERBOSE");
    return v && *v && !(v[0] == '0' && !v[1]);
}

/* Is core (OpenBLAS's name) a kernel set at least as wide as want ("SkylakeX" or "Haswell")? */
static int core_is_enough(const char *core, const char *want) {
    static const char *const avx512[] = {"skylakex", "cooperlake", "sapphirerapids", NULL};
    static const char *const avx2[] = {"haswell", "zen", "skylakex", "cooperlake", "sapphirerapids", NULL};
    const char *const *ok = strcasecmp(want, "SkylakeX") == 0 ? avx512 : avx2;
    for (int i = 0; ok[i]; i++)
        if (strcasecmp(core, ok[i]) == 0) return 1;
    return 0;
}

static void fix_openblas_core(char **argv) {
    if (getenv("OPENBLAS_CORETYPE") || getenv(REEXEC_MARK)) return;
    lq_cpu_features f = lq_cpu_detect();
    const char *want = f.avx512f && f.avx512bw ? "SkylakeX" : f.avx2 && f.fma ? "Haswell" : NULL;
    const char *core = openblas_get_corename();
    if (!want || !core || core_is_enough(core, want)) return;
    if (verbose())
        fprintf(stderr, "loquat: OpenBLAS chose core %s on a CPU with %s kernels; re-running with OPENBLAS_CORETYPE=%s\n",
                core, want, want);
    if (setenv("OPENBLAS_CORETYPE", want, 1) != 0 || setenv(REEXEC_MARK, "1", 1) != 0) return;
    execv("/proc/self/exe", argv);
    /* exec failed (no /proc?): carry on with the slow kernels rather than fail */
    if (verbose()) perror("loquat: re-exec for OPENBLAS_CORETYPE failed");
}

int main(int argc, char **argv) {
    fix_openblas_core(argv);
    return lq_cli_main(argc, argv);
}
