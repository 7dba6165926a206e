#!/usr/bin/env bash
# bench/quant.sh: builds and runs bench_quant (dequant throughput vs memcpy; tiled quantized matmul
# vs dequantize-then-sgemm vs fp32 sgemm) and prints its tables with the machine, threads,
# OpenBLAS and commit they belong to.
#
#   bench/quant.sh [bench_quant options]      e.g. bench/quant.sh --reps 15
#   BUILD=build/x bench/quant.sh              build elsewhere (default: build)
#
# Environment it sets unless you set it yourself (printed):
#   (loquat links the OpenMP build of OpenBLAS, so sgemm and loquat's own loops share one thread
#   pool; with the pthread build (make BLAS=pthread) the two pools fight over the cores and the
#   tiled matmul runs 1.7-3x slower at 2 threads unless OMP_WAIT_POLICY=passive.)
#   OPENBLAS_CORETYPE        OpenBLAS 0.3.21 takes some virtual x86 CPUs for a Prescott (SSE3 only);
#                            on a CPU with AVX-512F / AVX2 the script asks for SkylakeX / Haswell
#                            kernels so that fp32 sgemm, the baseline, is as fast as it can be.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
make -s BUILD="$build" bench >&2

flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
    if grep -qw avx512f <<<"$flags"; then export OPENBLAS_CORETYPE=SkylakeX
    elif grep -qw avx2 <<<"$flags"; then export OPENBLAS_CORETYPE=Haswell
    fi
fi

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit="$commit+uncommitted"; fi
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(. /etc/os-release && echo "$PRETTY_NAME"), $(${CC:-cc} --version | head -1)"
echo "OpenBLAS: $(pkg-config --modversion openblas 2>/dev/null || echo '?') ($(ldd "$build/bench/bench_quant" | sed -n 's/.*libopenblas.so.0 => \([^ ]*\).*/\1/p')), OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}, OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-default}"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "command: $build/bench/bench_quant --commit $commit $*"
echo
"$build/bench/bench_quant" --commit "$commit" "$@"
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
