#!/usr/bin/env bash
# tools/gpu_bundle.sh: builds loquat with CUDA here and packs what a bare GPU machine needs to run the
# GPU checks and benchmarks (bench/gpu.sh) into one xz tarball: the binaries and every shared library
# they load except the C runtime and CUDA's own (the GPU machine brings its CUDA 13.x).
#
#   tools/gpu_bundle.sh [DEST]          DEST defaults to .gpu (git-ignored); writes DEST/loquat-gpu.tar.xz
#   BUILD=build/x JOBS=2 tools/gpu_bundle.sh
#
# The tarball holds bin/ (loquat, bench_gpu, bench_gpu_linear), tests/cuda/ (the parity suites), lib/
# (the libraries, named by their sonames), bench/ (the model configs bench_gpu reads), env.sh (sourced: sets
# LOQUAT_GPU_BIN / LOQUAT_GPU_LIB and defines lq_gpu_run, which runs a command with lib/ first on
# LD_LIBRARY_PATH without exporting it, so Python / torch never see these libraries) and MANIFEST
# (commit, build host, glibc versions needed). It travels to the GPU machine inside the working
# tree (the run tool's 64 MiB limit covers the whole tree), so its size is printed and checked.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.gpu}
build=${BUILD:-build/release-cuda}
jobs=${JOBS:-2}
limit_mib=${LIMIT_MIB:-48}

# C runtime (glibc's libraries, the loader, gcc's runtimes) and CUDA: the GPU machine has its own.
skip='^(linux-vdso|libc|libm|libmvec|libpthread|libdl|librt|libresolv|libutil|libnsl|libanl|ld-linux(-x86-64)?|libgcc_s|libstdc\+\+|libcudart|libcublas|libcublasLt|libcuda)\.so'

echo "gpu_bundle: building loquat (make CUDA=1 BUILD=$build) ..." >&2
make -s CUDA=1 BUILD="$build" -j"$jobs" all bench >&2
# The parity suites: one binary per tests/cuda/test_*.c (or .cu), by the Makefile's tests/ rule.
# A suite that does not build is left out with a warning (the bundle still serves the rest).
tests=()
for src in tests/cuda/test_*.c tests/cuda/test_*.cu; do
    [ -e "$src" ] || continue
    t=$build/tests/cuda/$(basename "${src%.*}")
    if make -s CUDA=1 BUILD="$build" -j"$jobs" "$t" >&2; then
        tests+=("$t")
    else
        echo "gpu_bundle: WARNING: $src does not build: left out of the bundle" >&2
    fi
done

# the device forward of a random NF4 model against the CPU's (tests/test_llama_random.c) runs with them
if make -s CUDA=1 BUILD="$build" -j"$jobs" "$build/tests/test_llama_random" >&2; then
    tests+=("$build/tests/test_llama_random")
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/loquat-gpu
mkdir -p "$root/bin" "$root/lib" "$root/tests/cuda" "$root/bench"
bins=("$build/loquat" "$build/bench/bench_gpu" "$build/bench/bench_gpu_linear")
cp "${bins[@]}" "$root/bin/"
for t in "${tests[@]}"; do cp "$t" "$root/tests/cuda/"; done
cp bench/*.json "$root/bench/"
# debug info is most of a binary's size; symbols stay for backtraces
strip --strip-debug "$root"/bin/* "$root"/tests/cuda/* 2>/dev/null || true

# Every library ldd resolves for any of the binaries (ldd lists the whole closure), by soname.
missing=0
while read -r so path; do
    if [[ "$so" =~ $skip ]]; then continue; fi
    if [ "$path" = "not" ]; then
        echo "gpu_bundle: $so: not found here" >&2
        missing=1
        continue
    fi
    [ -e "$root/lib/$so" ] || cp -L "$path" "$root/lib/$so"
done < <(for b in "$root"/bin/* "$root"/tests/cuda/*; do [ -e "$b" ] && ldd "$b"; done |
    awk '$2 == "=>" {print $1, $3}' | sort -u)
[ "$missing" = 0 ] || { echo "gpu_bundle: a library is missing; fix the build here first" >&2; exit 1; }
strip --strip-debug "$root"/lib/* 2>/dev/null || true

glibc=$(for f in "$root"/bin/* "$root"/tests/cuda/* "$root"/lib/*; do objdump -T "$f" 2>/dev/null; done |
    grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1 || true)
glibcxx=$(for f in "$root"/bin/* "$root"/tests/cuda/* "$root"/lib/*; do objdump -T "$f" 2>/dev/null; done |
    grep -o 'GLIBCXX_[0-9.]*' | sort -uV | tail -n 1 || true)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit="$commit+uncommitted"; fi
{
    echo "loquat GPU bundle"
    echo "commit: $commit"
    # bench/gpu.sh hashes its tree the same way and warns when the bundle is stale
    echo "source: $(find core quant autograd lora models io datasets train bench tests/cuda \( -name '*.c' -o -name '*.cu' -o -name '*.h' \) \
        -type f 2>/dev/null | LC_ALL=C sort | xargs sha256sum Makefile | sha256sum | cut -c1-16)"
    echo "built: $(date -u '+%Y-%m-%d %H:%M UTC') on $(. /etc/os-release && echo "$PRETTY_NAME"), $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/nvcc \1/p')"
    echo "needs: ${glibc:-GLIBC ?} ${glibcxx:-}, CUDA 13.x runtime and cuBLAS (not bundled), a driver for sm_80 / sm_90"
    echo "binaries: $(cd "$root" && ls bin/* tests/cuda/* 2>/dev/null | tr '\n' ' ')"
    echo "libraries: $(ls "$root/lib" | tr '\n' ' ')"
} >"$root/MANIFEST"
cat >"$root/env.sh" <<'EOF'
# env.sh (loquat GPU bundle): source it; then `lq_gpu_run CMD...` runs CMD with the bundled libraries
# first on LD_LIBRARY_PATH (CUDA's from /usr/local/cuda after them), without exporting it.
LOQUAT_GPU_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOQUAT_GPU_BIN=$LOQUAT_GPU_ROOT/bin
LOQUAT_GPU_LIB=$LOQUAT_GPU_ROOT/lib
lq_gpu_run() {
    LD_LIBRARY_PATH="$LOQUAT_GPU_LIB:${CUDA_HOME:-/usr/local/cuda}/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$@"
}
EOF

mkdir -p "$dest"
out=$dest/loquat-gpu.tar.xz
XZ_OPT=${XZ_OPT:--9 -T2} tar -C "$stage" -cJf "$out.tmp" loquat-gpu
mv "$out.tmp" "$out"
raw=$(du -sb "$root" | cut -f1)
size=$(stat -c %s "$out")
echo "gpu_bundle: $out: $(awk -v b="$size" 'BEGIN {printf "%.1f MiB", b / 1048576}') (unpacked $(awk -v b="$raw" 'BEGIN {printf "%.1f MiB", b / 1048576}')), ${#tests[@]} parity suite(s), $(ls "$root/lib" | wc -l) libraries; needs ${glibc:-?} ${glibcxx:-}"
if [ "$size" -gt $((limit_mib * 1048576)) ]; then
    echo "gpu_bundle: larger than $limit_mib MiB: it may not fit the run tool's 64 MiB with the tree" >&2
    exit 1
fi
echo "$out"
