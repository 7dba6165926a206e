/* quant/cpu.c: which vector instruction sets this CPU has, for run-time kernel choice. */
#include <pthread.h>

#include "quant/quant.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

/* CPUID costs microseconds in a VM and the dequant kernels ask on every call, so the answer is
 * computed once per process (pthread_once) and never changes after: a constant of the machine,
 * not mutable state. */
static lq_cpu_features detected;
static pthread_once_t detect_once = PTHREAD_ONCE_INIT;

static void detect(void) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    detected.avx2 = __builtin_cpu_supports("avx2");
    detected.fma = __builtin_cpu_supports("fma");
    unsigned a, b, c, d; /* clang has no __builtin_cpu_supports("f16c"): CPUID leaf 1, ECX bit 29 */
    detected.f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
    detected.avx512f = __builtin_cpu_supports("avx512f");
    detected.avx512bw = __builtin_cpu_supports("avx512bw");
#endif
}

lq_cpu_features lq_cpu_detect(void) {
    pthread_once(&detect_once, detect);
    return detected;
}
