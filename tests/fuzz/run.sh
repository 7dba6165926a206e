#!/usr/bin/env bash
# tests/fuzz/run.sh DIR TARGET...: runs each DIR/fuzz_<target> for FUZZ_SECONDS (default 60), one
# after another (one core: -jobs / -workers are never used), on a scratch corpus
# DIR/corpus/<target> that grows across runs, with the committed seeds (tests/fuzz/corpus/<target>)
# and fixed crashes (tests/fuzz/regress/<target>) as read-only extra corpora: libFuzzer only writes
# into the first folder, so the committed ones are never touched. Prints a table (target, execs,
# execs/s, new units, findings) and exits non-zero on any crash, leak, timeout or OOM, naming the
# reproducer (replay it with DIR/fuzz_<target> FILE).
set -u
dir=$1
shift
secs=${FUZZ_SECONDS:-60}
here=$(cd "$(dirname "$0")" && pwd)

max_len() { # per-target input size limit: a bit above the largest seed
    case $1 in
    tokenizer_json) echo 16384 ;;
    adapter_config | gguf) echo 16384 ;;
    safetensors | yaml_config | qat_config | hf_config) echo 8192 ;;
    *) echo 4096 ;;
    esac
}

declare -a rows
bad=0
for t in "$@"; do
    bin="$dir/fuzz_$t"
    if [ ! -x "$bin" ]; then
        echo "fuzz: $bin not built"
        bad=1
        continue
    fi
    work="$dir/work/$t"
    scratch="$dir/corpus/$t"
    mkdir -p "$work" "$scratch"
    rm -f "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-* "$work"/slow-unit-*
    extra=()
    for d in "$here/corpus/$t" "$here/regress/$t"; do [ -d "$d" ] && extra+=("$d"); done
    dict=()
    [ -f "$here/dict/$t.dict" ] && dict=(-dict="$here/dict/$t.dict")
    log="$work/log.txt"
    echo "=== fuzz_$t: ${secs}s, -max_len=$(max_len "$t")"
    # OMP / BLAS threads pinned to one; ASan's leak check on (libFuzzer reports leaks per input)
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
        "$bin" -max_total_time="$secs" -max_len="$(max_len "$t")" -rss_limit_mb=2048 -malloc_limit_mb=2048 \
        -timeout=10 -print_final_stats=1 -artifact_prefix="$work/" "${dict[@]}" "$scratch" "${extra[@]}" \
        >"$log" 2>&1
    rc=$?
    execs=$(grep -Eo 'stat::number_of_executed_units: [0-9]+' "$log" | tail -1 | grep -Eo '[0-9]+$')
    eps=$(grep -Eo 'stat::average_exec_per_sec: +[0-9]+' "$log" | tail -1 | grep -Eo '[0-9]+$')
    newu=$(grep -Eo 'stat::new_units_added: +[0-9]+' "$log" | tail -1 | grep -Eo '[0-9]+$')
    cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 | grep -Eo '[0-9]+$')
    arts=$(ls "$work" | grep -E '^(crash|leak|timeout|oom)-' || true)
    found=none
    if [ "$rc" -ne 0 ] || [ -n "$arts" ]; then
        bad=1
        found="exit $rc"
        for a in $arts; do found="$found; $work/$a"; done
        grep -E '^(==[0-9]+==ERROR|SUMMARY|.*runtime error)' "$log" | head -5
        echo "  log: $log"
    fi
    rows+=("$(printf '%-15s %10s %9s %8s %7s  %s' "$t" "${execs:-?}" "${eps:-?}" "${newu:-?}" "${cov:-?}" "$found")")
done
echo
printf '%-15s %10s %9s %8s %7s  %s\n' target execs execs/s new_units cov findings
for r in "${rows[@]}"; do echo "$r"; done
exit "$bad"
