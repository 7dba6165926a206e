#!/usr/bin/env bash
# Runs every test binary given, prints each one's output, and ends with one summary line
# "N passed, N failed" over all of them (a binary that crashes counts as a failure).
set -u
build=$1
shift
pass=0
fail=0
skipped=0
failed_bins=()
for bin in "$@"; do
    name=$(basename "$bin")
    echo "=== $name"
    out=$(mktemp)
    "$bin" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    p=$(grep -Eo '^\[  PASSED  \] [0-9]+' "$out" | grep -Eo '[0-9]+$' | awk '{s+=$1} END {print s+0}')
    f=$(grep -Eo '^\[  FAILED  \] [0-9]+' "$out" | grep -Eo '[0-9]+$' | awk '{s+=$1} END {print s+0}')
    k=$(grep -Eo '^\[  SKIPPED \] [0-9]+' "$out" | grep -Eo '[0-9]+$' | awk '{s+=$1} END {print s+0}')
    # a binary that cannot run at all (tests/cuda/ without a GPU) prints one "SKIPPED: <reason>"
    # line and exits 0: one skip, no pass
    k=$((k + $(grep -c '^SKIPPED: ' "$out")))
    skipped=$((skipped + k))
    rm -f "$out"
    pass=$((pass + p))
    fail=$((fail + f))
    if [ "$rc" -ne 0 ]; then
        [ "$f" -eq 0 ] && fail=$((fail + 1))
        failed_bins+=("$name (exit $rc)")
    fi
done
# LQ_RUN_TESTS_NO_SCRIPTS=1: only the binaries given (make test-cuda)
for s in tests/test_*.sh; do
    [ "${LQ_RUN_TESTS_NO_SCRIPTS:-0}" = 1 ] && break
    [ -e "$s" ] || continue
    echo "=== $(basename "$s")"
    out=$(mktemp)
    BUILD="$build" bash "$s" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    # a shell suite reports each part it could not run as a line starting "SKIP"
    skipped=$((skipped + $(grep -c '^SKIP' "$out")))
    rm -f "$out"
    if [ "$rc" -eq 0 ]; then pass=$((pass + 1)); else fail=$((fail + 1)); failed_bins+=("$(basename "$s")"); fi
done
echo
if [ ${#failed_bins[@]} -gt 0 ]; then
    echo "failed: ${failed_bins[*]}"
fi
echo "$pass passed, $fail failed, $skipped skipped"
[ "$fail" -eq 0 ] && [ ${#failed_bins[@]} -eq 0 ]
