#!/usr/bin/env bash
# tests/test_cuda_emu.sh: the GPU parity suites (tests/cuda/*, test_llama_random's device half,
# tests/test_cli_cuda.sh) on the CPU emulator (tools/cuda_emu, `make EMU=1`): every CUDA kernel's
# logic against the CPU path, on any machine that has the CUDA headers. Kernel logic only: never a
# GPU result (tests/cuda on a GPU is that). The emulated build goes inside $BUILD, in $BUILD/emu.
# Without the CUDA headers the suite is skipped with the reason (a SKIP line, not a pass).
set -u
build=${BUILD:-build}
cuda_home=${CUDA_HOME:-}
if [ -z "$cuda_home" ] && command -v nvcc >/dev/null 2>&1; then cuda_home=$(dirname "$(dirname "$(command -v nvcc)")"); fi
cuda_home=${cuda_home:-/usr/local/cuda}
if [ ! -f "$cuda_home/include/cuda_runtime.h" ] || [ ! -f "$cuda_home/include/cublas_v2.h" ]; then
    echo "SKIP test_cuda_emu: no CUDA headers under $cuda_home (cuda_runtime.h, cublas_v2.h): the emulator builds on them"
    exit 0
fi
exec make --no-print-directory EMU=1 BUILD="$build/emu" CUDA_HOME="$cuda_home" test-cuda-emu
