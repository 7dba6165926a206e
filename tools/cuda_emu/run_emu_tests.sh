#!/usr/bin/env bash
# tools/cuda_emu/run_emu_tests.sh BIN... [SCRIPT.sh...]: runs the GPU parity suites built with EMU=1
# on the CPU emulator, each twice: threads started lowest id first (forward), then under the order
# check (race: LQ_CUDA_EMU_RACE=1, every launch run forward and again with its blocks and threads
# in the opposite order, device memory compared byte for byte, and each block's writes against the
# others'; the suite checks the second run's results), since a missing barrier or a race shows in
# one order or the other (LQ_CUDA_EMU_ORDERS="forward reverse" runs the plain orders instead); a
# shell suite (tests/test_cli_cuda.sh, with BUILD from the environment) once. One line per run (passed /
# failed / skipped, wall seconds), then a summary. LOQUAT_CUDA_REQUIRED=1: a suite that finds no
# (emulated) device fails instead of skipping. A pass here checks kernel logic only, never a GPU.
# LQ_CUDA_EMU_WRAP="valgrind -q --error-exitcode=9" runs each binary under a wrapper (the suites'
# device buffers are host memory here, so memcheck sees reads past an allocation).
set -u
read -r -a wrap <<<"${LQ_CUDA_EMU_WRAP:-}"
export LOQUAT_CUDA_REQUIRED=1
orders=${LQ_CUDA_EMU_ORDERS:-forward race}
pass=0
fail=0
skip=0
bad=()
lines=()
for bin in "$@"; do
    name=$(basename "$bin")
    if [[ "$bin" == *.sh ]]; then
        echo "=== $name (emulated on the CPU; BUILD=${BUILD:-})"
        out=$(mktemp)
        t0=$(date +%s.%N)
        LQ_CUDA_EMU_ORDER=forward bash "$bin" 2>&1 | tee "$out"
        rc=${PIPESTATUS[0]}
        t1=$(date +%s.%N)
        k=$(grep -c '^SKIP' "$out")
        rm -f "$out"
        if [ "$rc" -eq 0 ]; then p=1 f=0; else p=0 f=1 bad+=("$name (exit $rc)"); fi
        pass=$((pass + p))
        fail=$((fail + f))
        skip=$((skip + k))
        lines+=("$(printf '%-22s %-8s %4d passed %3d failed %3d skipped %24s %6.1f s' "$name" script "$p" "$f" "$k" \
            "" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")")
        continue
    fi
    for order in $orders; do
        race=0 ord=$order
        [ "$order" = race ] && race=1 ord=forward
        echo "=== $name (emulated on the CPU; LQ_CUDA_EMU_ORDER=$ord LQ_CUDA_EMU_RACE=$race)"
        out=$(mktemp)
        t0=$(date +%s.%N)
        LQ_CUDA_EMU_ORDER=$ord LQ_CUDA_EMU_RACE=$race "${wrap[@]}" "$bin" 2>&1 | tee "$out"
        rc=${PIPESTATUS[0]}
        t1=$(date +%s.%N)
        p=$(grep -Eo '^\[  PASSED  \] [0-9]+' "$out" | grep -Eo '[0-9]+$' | awk '{s+=$1} END {print s+0}')
        f=$(grep -Eo '^\[  FAILED  \] [0-9]+' "$out" | grep -Eo '[0-9]+$' | awk '{s+=$1} END {print s+0}')
        k=$(grep -Eo '^\[  SKIPPED \] [0-9]+' "$out" | grep -Eo '[0-9]+$' | awk '{s+=$1} END {print s+0}')
        k=$((k + $(grep -c '^SKIPPED: ' "$out")))
        # the emulator's own findings (deadlock, divergent barrier, shuffle of an idle lane, a race)
        w=$(grep -c '^lq_cuda_emu: ' "$out")
        rm -f "$out"
        if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
        [ "$rc" -ne 0 ] && bad+=("$name $order (exit $rc)")
        # a finding of the emulator's is a kernel bug even where the results came out right
        if [ "$w" -gt 0 ]; then
            f=$((f + 1))
            bad+=("$name $order ($w emulator warning(s))")
        fi
        pass=$((pass + p))
        fail=$((fail + f))
        skip=$((skip + k))
        lines+=("$(printf '%-22s %-8s %4d passed %3d failed %3d skipped %3d emulator warnings %6.1f s' "$name" \
            "$order" "$p" "$f" "$k" "$w" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")")
    done
done
echo
echo "CUDA parity suites on the CPU emulator (kernel logic only; not a GPU run):"
printf '  %s\n' "${lines[@]}"
[ ${#bad[@]} -gt 0 ] && echo "failed: ${bad[*]}"
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ] && [ ${#bad[@]} -eq 0 ]
