#!/usr/bin/env bash
# tests/test_cli_badinput.sh: the hostile-input corpus (tests/badinput, made by
# tools/gen_badinput.py) through the real CLI, one case per line of tests/badinput/cases.tsv.
# Every case must exit with status 2 (not 1, not a signal) within 10 s under a 3 GB address-space
# limit, print a short stderr (at most 3 lines, 4 KB) matching the case's regex (the file or key
# and what is wrong), and leave the output folder it was given absent or empty (a case whose seed is
# "mkdir" gets it made empty first, for commands that write a file inside it; a case seeded with
# files must leave them exactly as they were). The corpus itself must come out unchanged.
# Run by tools/run_tests.sh with BUILD set to the build directory; exits non-zero if any check fails.
set -u
cd "$(dirname "$0")/.." || exit 1
# shellcheck source=tests/cli_harness.sh
source tests/cli_harness.sh
bad=tests/badinput
cases="$bad/cases.tsv"
if [ ! -f "$cases" ] || [ ! -f "$bad/yaml/good.yaml" ]; then
    echo "FAIL: $bad incomplete (make it with tools/gen_badinput.py)"
    exit 1
fi
TIME_LIMIT=10         # seconds per case (timeout's exit 124 / 137 fails the exit-status check)
MEM_LIMIT_KB=3000000  # ulimit -v: a parser that believes a size field and allocates it fails here
MAX_LINES=3           # one message, maybe a hint line
MAX_BYTES=4096        # a message never dumps the input

# An ASan build maps terabytes of shadow memory at start: no address-space limit fits it. There the
# cases run without the limit (an absurd malloc then makes ASan abort the run, which fails the
# exit-status check).
mem_limit=$MEM_LIMIT_KB
if grep -q __asan_init "$bin" 2>/dev/null; then
    mem_limit=unlimited
    echo "SKIP: the ${MEM_LIMIT_KB} KB address-space limit (ulimit -v) under AddressSanitizer; the cases run without it"
fi

check() { # check CONDITION-STATUS DESCRIPTION
    checks=$((checks + 1))
    if [ "$1" -ne 0 ]; then fail "$2"; fi
}

# --- controls: the unbroken versions of the inputs work, so each case fails for its own reason --
good=(--set "output_dir=$tmp/good")
expect_rc 0 "control: good.yaml" config "$bad/yaml/good.yaml" "${good[@]}"
expect_rc 0 "control: fixture model" generate --model tests/fixtures/qlora_tiny --prompt hi --max-tokens 2
expect_rc 0 "control: fixture adapter" generate --model tests/fixtures/qlora_tiny --adapter tests/fixtures/qlora_tiny/adapter_init \
    --prompt hi --max-tokens 2
# IDX through `loquat inspect` (tests/fixtures/idx, tools/gen_idx_fixtures.py: 3 images of 4 x 5,
# labels 7 2 9), plain and gzip, so the idx cases below reach the IDX reader for their own reasons
for f in images.idx images.idx.gz; do
    expect_rc 0 "control: inspect $f" inspect "tests/fixtures/idx/$f" && expect_text out 'IDX u8 images, shape \[3, 4, 5\]' "control: $f shape"
done
for f in labels.idx labels.idx.gz; do
    expect_rc 0 "control: inspect $f" inspect "tests/fixtures/idx/$f" && expect_text out 'IDX u8 labels, shape \[3\], largest label 9' "control: $f shape"
done

# --- inputs made here: too big to commit, or the output of a real run --------------------------
# a 10 MB line (past the YAML loader's size limit) as a value and as a key; a 3 MB one (under it,
# so the YAML parser and the schema meet it) as a value and as a key; an unterminated 10 MB jsonl line
long=$(head -c 10000000 /dev/zero | tr '\0' 7)
{ cat "$bad/yaml/good.yaml"; printf 'learning_rate: %s\n' "$long"; } >"$tmp/long_value.yaml"
{ cat "$bad/yaml/good.yaml"; printf '%s: 1\n' "$long"; } >"$tmp/long_key.yaml"
{ cat "$bad/yaml/good.yaml"; printf 'learning_rate: %s\n' "${long:0:3000000}"; } >"$tmp/long3_value.yaml"
{ cat "$bad/yaml/good.yaml"; printf 'k%s: 1\n' "${long:0:3000000}"; } >"$tmp/long3_key.yaml"
{ head -n 3 tests/fixtures/qlora_tiny/train.jsonl; printf '{"text": "%s' "$long"; } >"$tmp/long_line.jsonl"
unset long
# checkpoints of real one-step runs: the config's (r 4), and two other configs' (r 8; q, k, v)
ck_run() { # ck_run DIR ARGS...: a one-step run that saves checkpoint-1.h5 in DIR
    local dir=$1
    shift
    "$bin" train "$bad/yaml/good.yaml" --quiet --set "output_dir=$dir" --set max_steps=1 --set save_steps=1 "$@" \
        >"$tmp/out" 2>"$tmp/err"
    check "$([ -s "$dir/checkpoint-1.h5" ]; echo $?)" "control: one-step run $* saves checkpoint-1.h5 ($(tail -n 2 "$tmp/err"))"
}
ck_run "$tmp/run_r4"
ck_run "$tmp/run_r8" --set lora_r=8 --set lora_alpha=16
ck_run "$tmp/run_kv" --set "lora_target_modules=[q_proj, k_proj, v_proj]"
mkdir -p "$tmp/seed_truncated" "$tmp/seed_r8" "$tmp/seed_kv" "$tmp/seed_empty"
if [ -s "$tmp/run_r4/checkpoint-1.h5" ]; then
    size=$(stat -c %s "$tmp/run_r4/checkpoint-1.h5")
    head -c $((size / 2)) "$tmp/run_r4/checkpoint-1.h5" >"$tmp/seed_truncated/checkpoint-1.h5"
    cp "$tmp/seed_truncated/checkpoint-1.h5" "$tmp/truncated.h5"
fi
[ -s "$tmp/run_r8/checkpoint-1.h5" ] && cp "$tmp/run_r8/checkpoint-1.h5" "$tmp/seed_r8/"
[ -s "$tmp/run_kv/checkpoint-1.h5" ] && cp "$tmp/run_kv/checkpoint-1.h5" "$tmp/seed_kv/"
: >"$tmp/seed_empty/checkpoint-1.h5"

# tree_sum DIR: every path under DIR with its content hash (empty for an absent DIR)
tree_sum() {
    [ -e "$1" ] || return 0
    (cd "$1" && find . -print0 | sort -z | xargs -0 -I{} sh -c 'if [ -f "{}" ]; then md5sum "{}"; else echo "{}"; fi')
}
corpus_before=$(find "$bad" -printf '%p %s %T@\n' | sort | md5sum)

# --- the cases ---------------------------------------------------------------------------------
declare -A per_kind
n_cases=0
slowest=0
slowest_id=
while IFS=$'\t' read -r id seed args regex; do
    case "$id" in '' | '#'*) continue ;; esac
    n_cases=$((n_cases + 1))
    kind=${id%%/*}
    per_kind[$kind]=$((${per_kind[$kind]:-0} + 1))
    out_dir="$tmp/o/${id//\//_}"
    sub() { local s=$1; s=${s//@BAD@/$bad}; s=${s//@OUT@/$out_dir}; s=${s//@TMP@/$tmp}; printf '%s' "$s"; }
    read -r -a argv <<<"$(sub "$args")"
    regex=$(sub "$regex")
    [ "$seed" = "-" ] || mkdir -p "$out_dir"
    case "$seed" in -|mkdir) ;; *) cp -a "$(sub "$seed")/." "$out_dir/" ;; esac
    before=$(tree_sum "$out_dir")
    t0=$(date +%s%N)
    (
        ulimit -v "$mem_limit"
        exec timeout -k 2 "$TIME_LIMIT" "$bin" "${argv[@]}"
    ) >"$tmp/out" 2>"$tmp/err" </dev/null
    rc=$?
    ms=$((($(date +%s%N) - t0) / 1000000))
    if [ "$ms" -gt "$slowest" ]; then slowest=$ms; slowest_id=$id; fi
    err=$(cat "$tmp/err")
    what="$id (loquat ${argv[*]:0:6})"
    # BADINPUT_SHOW=1: every case's exit status, time and message (to write or review a regex)
    [ -n "${BADINPUT_SHOW:-}" ] && echo "[$id] rc=$rc ${ms} ms: $(head -c 400 "$tmp/err")"
    checks=$((checks + 1))
    if [ "$rc" -ne 2 ]; then
        fail "$what: exit $rc, want 2$([ "$rc" -ge 124 ] && echo " (timeout or signal)")"
        continue
    fi
    checks=$((checks + 1))
    if [ -z "$err" ]; then fail "$what: nothing on stderr"; continue; fi
    expect_text err "$regex" "$what"
    lines=$(wc -l <"$tmp/err")
    bytes=$(wc -c <"$tmp/err")
    check "$([ "$lines" -le "$MAX_LINES" ] && [ "$bytes" -le "$MAX_BYTES" ]; echo $?)" \
        "$what: stderr has $lines lines, $bytes bytes (at most $MAX_LINES, $MAX_BYTES)"
    after=$(tree_sum "$out_dir")
    if [ "$seed" = "-" ] || [ "$seed" = "mkdir" ]; then
        check "$([ ! -e "$out_dir" ] || [ -z "$(ls -A "$out_dir")" ]; echo $?)" \
            "$what: left files in its output folder: $(ls -A "$out_dir" 2>/dev/null | head -n 5 | tr '\n' ' ')"
    else
        check "$([ "$before" = "$after" ]; echo $?)" "$what: changed its seeded output folder: $(diff <(echo "$before") <(echo "$after") | head -n 6 | tr '\n' ' ')"
    fi
done <"$cases"

check "$([ "$(find "$bad" -printf '%p %s %T@\n' | sort | md5sum)" = "$corpus_before" ]; echo $?)" \
    "the corpus in $bad was changed by a case (a file written next to an input?)"
summary=""
for k in $(printf '%s\n' "${!per_kind[@]}" | sort); do summary+=" $k ${per_kind[$k]},"; done
echo "badinput: $n_cases cases:${summary%,}; slowest $slowest_id ${slowest} ms"
check "$([ "$n_cases" -ge 80 ]; echo $?)" "cases.tsv has $n_cases cases (want 80+)"
harness_done test_cli_badinput.sh
