#!/usr/bin/env bash
# Runs each cmocka test binary under valgrind memcheck; fails on any memory error or leak.
# Usage: tools/valgrind_tests.sh BUILD_DIR [TEST_NAME...]
set -euo pipefail
build=${1:-build}
shift || true
if ! command -v valgrind >/dev/null; then
    echo "valgrind not found: installing it"
    EXTRA_PKGS=valgrind tools/deps.sh
fi
if [ $# -gt 0 ]; then bins=("$@"); else bins=("$build"/tests/test_*); fi
status=0
# The real-model cases (SmolLM2, found through the cache folder) take many minutes under
# memcheck; they run natively and under ASan in `make test` / `make SANITIZE=1 test`. Here the
# cache is an empty folder, so those cases report themselves skipped and memcheck covers the rest.
LOQUAT_CACHE=$(mktemp -d)
export LOQUAT_CACHE
trap 'rm -rf "$LOQUAT_CACHE"' EXIT
for bin in "${bins[@]}"; do
    [ -x "$bin" ] || bin="$build/tests/$bin"
    log=$(mktemp)
    # OpenBLAS keeps its thread pool alive until exit: reachable blocks are not leaks.
    if OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 valgrind --tool=memcheck --error-exitcode=99 --leak-check=full \
        --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect --track-origins=yes \
        "$bin" >"$log" 2>&1; then
        echo "valgrind $(basename "$bin"): clean ($(grep -Eo 'ERROR SUMMARY: [0-9]+ errors' "$log"))"
    else
        echo "valgrind $(basename "$bin"): FAILED"
        grep -E '==[0-9]+==' "$log" | head -60
        status=1
    fi
    rm -f "$log"
done
exit $status
