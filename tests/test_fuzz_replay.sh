#!/usr/bin/env bash
# tests/test_fuzz_replay.sh: replays every fuzz target's seed corpus (tests/fuzz/corpus/<target>)
# and fixed crash reproducers (tests/fuzz/regress/<target>) through $BUILD/fuzz/replay_<target>
# (the libFuzzer targets built by gcc with tests/fuzz/replay.c as main; `make test` builds them,
# and under `make SANITIZE=1 test` they run with ASan + UBSan). A non-zero exit or a signal on
# any input fails the suite, naming the input. Also checks that the replayer itself fails on a
# missing folder (so a broken replayer cannot pass by doing nothing).
# Run by tools/run_tests.sh with BUILD set to the build directory; exits non-zero if any check fails.
set -u
build="${BUILD:-build}"
fz="tests/fuzz"
targets="safetensors st_index gguf hf_config tokenizer_json adapter_config yaml_config qat_config jsonl idx ckpt"
checks=0
failures=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fail() {
    failures=$((failures + 1))
    echo "FAIL: $*"
}

for t in $targets; do
    bin="$build/fuzz/replay_$t"
    checks=$((checks + 1))
    if [ ! -x "$bin" ]; then
        fail "$bin not built (make test builds it; tests/fuzz/fuzz.mk)"
        continue
    fi
    dirs=()
    for d in "$fz/corpus/$t" "$fz/regress/$t"; do [ -d "$d" ] && dirs+=("$d"); done
    if [ ! -d "$fz/corpus/$t" ] || [ -z "$(ls -A "$fz/corpus/$t")" ]; then
        fail "$t: seed corpus $fz/corpus/$t is missing or empty"
        continue
    fi
    "$bin" "${dirs[@]}" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    if [ "$rc" -ne 0 ]; then
        # name the input: rerun one file at a time
        culprit="?"
        for f in $(find "${dirs[@]}" -type f | sort); do
            if ! "$bin" "$f" >/dev/null 2>&1; then culprit=$f; break; fi
        done
        fail "$t: replay exited $rc (first failing input: $culprit)"
        head -c 1500 "$tmp/err"
        continue
    fi
    n=$(awk '{ s += $(NF - 1) } END { print s + 0 }' "$tmp/out")
    echo "ok: $t: $n inputs replayed"
done

# the replayer must report a folder it cannot read
checks=$((checks + 1))
if [ -x "$build/fuzz/replay_idx" ] && "$build/fuzz/replay_idx" "$tmp/no_such_folder" >/dev/null 2>&1; then
    fail "replay_idx accepted a missing folder"
fi
echo "test_fuzz_replay.sh: $checks checks, $failures failed"
[ "$failures" -eq 0 ]
