#!/usr/bin/env bash
# tests/test_cli_crash.sh: crash safety of `loquat train` (issue #8 item 4) on the tiny QLoRA fixture:
# a run killed with SIGKILL at >= 20 random points (some while a checkpoint is being written) and
# resumed each time ends with the uninterrupted run's adapter bit for bit and its per-step losses;
# every resume starts from the newest complete checkpoint and no checkpoint is ever corrupt; an
# output folder that cannot be written gives a clear error and keeps the previous checkpoint.
# Run by tools/run_tests.sh with BUILD set to the build directory; exits non-zero if any check fails.
set -u
fx="${LOQUAT_FIXTURES:-tests/fixtures}/qlora_tiny"
# shellcheck source=tests/cli_harness.sh
source "$(dirname "$0")/cli_harness.sh"

if [ ! -f "$fx/config.yaml" ] || [ ! -f "$fx/model.safetensors" ]; then
    echo "FAIL: fixture $fx missing (make it with tools/gen_qlora_fixtures.py)"
    exit 1
fi
fx=$(cd "$fx" && pwd)
py=$(command -v python3 || true)
if [ -z "$py" ]; then
    echo "FAIL: python3 not found (needed to compare metrics.jsonl)"
    exit 1
fi

check() { # check CONDITION-STATUS DESCRIPTION
    checks=$((checks + 1))
    if [ "$1" -ne 0 ]; then fail "$2"; fi
}

# The fixture's config with absolute paths, lora_model_dir dropped; dropout > 0 so the data
# position and RNG state a checkpoint restores matter; a checkpoint after every step; 16-row steps
# so a run lasts long enough (~0.3 s) to be killed at many points.
cfg="$tmp/tiny.yaml"
sed -e "s#tests/fixtures/qlora_tiny#$fx#g" -e '/^lora_model_dir:/d' "$fx/config.yaml" >"$cfg"
common=(--set threads=1 --set save_steps=1 --set max_steps=24 --set lora_dropout=0.1 --set sequence_len=32
    --set micro_batch_size=4 --set gradient_accumulation_steps=4)

# newest_ckpt DIR: step of the newest checkpoint-<step>.h5 in DIR (-1 when none); temp files
# (.checkpoint-<step>.h5.<pid>.tmp) do not count.
newest_ckpt() {
    local best=-1 f s
    for f in "$1"/checkpoint-*.h5; do
        [ -e "$f" ] || continue
        s=${f##*/checkpoint-}
        s=${s%.h5}
        [[ $s =~ ^[0-9]+$ ]] || continue
        if [ "$s" -gt "$best" ]; then best=$s; fi
    done
    echo "$best"
}

# --- 1. the uninterrupted reference run ----------------------------------------------------------
ref="$tmp/ref"
expect_rc 0 "reference run" train "$cfg" "${common[@]}" --set "output_dir=$ref"
check "$([ -s "$ref/adapter_model.safetensors" ]; echo $?)" "reference run wrote its adapter"

# --- 2. SIGKILL at random points, resume each time ------------------------------------------------
# Each start is killed in one of three ways (chosen with a seeded $RANDOM), aimed at step k = the
# newest checkpoint + 1 (or + 2, a third of the time) so a start advances only a step or two and
# the run needs many starts:
#   0. mid-write: when this start's temp file for checkpoint-k appears. Under strace, which delays
#      every fsync by 20 ms, the kill lands inside the write (a plain write lasts microseconds);
#   1. between checkpoints: 0-9 ms after checkpoint-k.h5 appears (mid-step, in the eval, or in
#      the next save);
#   2. anywhere: after a random 0-199 ms (loading, the first eval, a step, a save), or when
#      checkpoint-(k+1) appears if that comes first.
# When k is past the last step the start is let run: the loop ends when a start exits 0.
# LeakSanitizer cannot run under ptrace (strace): in an ASan build it would fail every start that
# exits normally. Leaks are checked by the other suites under ASan and by valgrind; not here.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
slow_fsync=()
if command -v strace >/dev/null 2>&1 &&
    strace -f -qq -o /dev/null -e trace=fsync -e inject=fsync:delay_enter=1000 true 2>/dev/null; then
    slow_fsync=(strace -f -qq -o /dev/null -e trace=fsync -e inject=fsync:delay_enter=20000)
else
    echo "SKIP (strace with fault injection not available): kills are not aimed inside checkpoint writes"
fi
RANDOM=${LOQUAT_CRASH_SEED:-4242}
cdir="$tmp/crash"
mkdir -p "$cdir"
kills=0 in_write=0 resumes_checked=0 finished=0 starts=0
t_start=$(date +%s)
while [ "$starts" -lt 200 ] && [ $(($(date +%s) - t_start)) -lt 120 ]; do
    starts=$((starts + 1))
    newest=$(newest_ckpt "$cdir")
    resume=()
    if [ "$newest" -ge 0 ]; then resume=(--resume); fi
    k=$((newest < 0 ? 1 : newest + 1)); k=$((k + (RANDOM % 3 == 0))) # + 1 a third of the time
    mode=$((RANDOM % 3))
    if [ "$mode" -eq 0 ] && [ ${#slow_fsync[@]} -eq 0 ]; then mode=1; fi
    leftovers=" $(cd "$cdir" && echo .checkpoint-*.tmp) "
    wrap=()
    if [ "$mode" -eq 0 ]; then wrap=("${slow_fsync[@]}"); fi
    "${wrap[@]}" "$bin" train "$cfg" "${common[@]}" --set "output_dir=$cdir" "${resume[@]}" >"$tmp/out" 2>"$tmp/err.$starts" &
    pid=$!
    victim=$pid
    if [ "$k" -le 24 ]; then
        case $mode in
        0)  victim=
            while [ -z "$victim" ] && kill -0 "$pid" 2>/dev/null; do
                for f in "$cdir"/.checkpoint-"$k".h5.*.tmp; do
                    [ -e "$f" ] || continue
                    case $leftovers in *" ${f##*/} "*) continue ;; esac
                    victim=${f##*.h5.}
                    victim=${victim%.tmp}
                    break
                done
            done ;;
        1)  while [ ! -e "$cdir/checkpoint-$k.h5" ] && kill -0 "$pid" 2>/dev/null; do :; done
            sleep "0.00$((RANDOM % 10))" ;;
        *)  # (or at once when checkpoint-(k+1) appears, so that this start too advances <= 2 steps)
            now=${EPOCHREALTIME/[.,]/}
            deadline=$((now + (RANDOM % 200) * 1000))
            while [ "$now" -lt "$deadline" ] && [ ! -e "$cdir/checkpoint-$((k + 1)).h5" ] && kill -0 "$pid" 2>/dev/null; do
                now=${EPOCHREALTIME/[.,]/}
            done ;;
        esac
        if [ -n "$victim" ]; then kill -9 "$victim" 2>/dev/null; fi
    fi
    wait "$pid" 2>/dev/null
    krc=$? # not rc: expect_rc below sets that
    if [ -n "${LOQUAT_CRASH_VERBOSE:-}" ]; then echo "start $starts: newest $newest, k $k, mode $mode, exit $krc"; fi
    cp "$tmp/err.$starts" "$tmp/err"
    if [ "$krc" -eq 137 ]; then
        kills=$((kills + 1))
        # a temp file of this start stays: the kill came between its creation and the rename
        for f in "$cdir"/.checkpoint-*.tmp; do
            [ -e "$f" ] || continue
            case $leftovers in *" ${f##*/} "*) ;; *) in_write=$((in_write + 1)); break ;; esac
        done
    fi
    # the start resumed from the newest complete checkpoint there was (when it got as far as saying so)
    if [ "$newest" -ge 0 ] && grep -q '^resuming from' "$tmp/err.$starts"; then
        resumes_checked=$((resumes_checked + 1))
        checks=$((checks + 1))
        if ! grep -Eq "^resuming from .*/checkpoint-$newest\.h5 \(step $newest\)$" "$tmp/err.$starts"; then
            fail "start $starts: resumed from the wrong checkpoint (newest complete: checkpoint-$newest.h5)"
        fi
    fi
    checks=$((checks + 1))
    if grep -Eq 'warning|corrupt|partial' "$tmp/err.$starts"; then
        fail "start $starts: a checkpoint was skipped or found corrupt: $(grep -E 'warning|corrupt|partial' "$tmp/err.$starts" | head -3)"
    fi
    if [ "$krc" -ne 0 ] && [ "$krc" -ne 137 ]; then
        checks=$((checks + 1))
        fail "start $starts exited $krc (neither 0 nor killed)"
        break
    fi
    # the newest checkpoint left by the kill opens as HDF5 (the next start also checks its checksum)
    n2=$(newest_ckpt "$cdir")
    if [ "$n2" -ge 0 ]; then
        expect_rc 0 "start $starts: checkpoint-$n2.h5 left by the kill opens" inspect "$cdir/checkpoint-$n2.h5" >/dev/null
    fi
    if [ "$krc" -eq 0 ]; then
        finished=1
        break
    fi
done
t_end=$(date +%s)
echo "crash: $kills SIGKILLs ($in_write while a checkpoint was being written), $starts starts," \
    "$resumes_checked resumes checked, $((t_end - t_start)) s"
check "$([ "$finished" -eq 1 ]; echo $?)" "the killed run finally completed (exit 0)"
check "$([ "$kills" -ge 20 ]; echo $?)" "at least 20 SIGKILLs (got $kills)"
if [ ${#slow_fsync[@]} -gt 0 ]; then
    check "$([ "$in_write" -ge 1 ]; echo $?)" "at least one SIGKILL landed during a checkpoint write (got $in_write)"
else
    echo "SKIP (no strace fault injection): whether a SIGKILL landed inside a checkpoint write is not checked ($in_write did)"
fi
check "$([ "$resumes_checked" -ge 10 ]; echo $?)" "at least 10 resumes checked (got $resumes_checked)"

# A kill after the final checkpoint but before the adapter export leaves this folder's state: the
# next --resume starts from checkpoint-24 and only exports (its final eval line must not repeat).
if [ "$finished" -eq 1 ]; then
    expect_rc 0 "resume from the final checkpoint" train "$cfg" "${common[@]}" --set "output_dir=$cdir" --resume
    expect_text err "resuming from .*/checkpoint-24\.h5 \(step 24\)" "resumed from the final checkpoint"
fi

# --- 3. same adapter bit for bit, each step's loss once and equal --------------------------------
checks=$((checks + 1))
if ! cmp -s "$ref/adapter_model.safetensors" "$cdir/adapter_model.safetensors"; then
    fail "adapter_model.safetensors differs from the uninterrupted run's"
fi
check "$(cmp -s "$ref/adapter_config.json" "$cdir/adapter_config.json"; echo $?)" "adapter_config.json equals the uninterrupted run's"
"$py" - "$ref/metrics.jsonl" "$cdir/metrics.jsonl" <<'EOF' >"$tmp/cmp" 2>&1
import json, sys
def load(p):
    rows = [json.loads(l) for l in open(p)]
    keys = [(o["step"], "loss" in o) for o in rows]
    assert len(keys) == len(set(keys)), f"{p}: a step's line appears twice: {keys}"
    return {k: o for k, o in zip(keys, rows)}
a, b = load(sys.argv[1]), load(sys.argv[2])
assert sorted(a) == sorted(b), f"different lines: {sorted(set(a) ^ set(b))}"
steps = sorted(s for s, is_loss in a if is_loss)
assert steps == list(range(1, 25)), steps
for k in a:
    for f in ("loss", "lr", "grad_norm", "tokens", "eval_loss"):
        if f in a[k]:
            assert a[k][f] == b[k][f], f"step {k[0]} {f}: {a[k][f]!r} vs {b[k][f]!r}"
print("ok")
EOF
check "$(grep -q '^ok$' "$tmp/cmp"; echo $?)" "metrics.jsonl: each step once, losses equal to the uninterrupted run's ($(tail -c 300 "$tmp/cmp"))"
# every checkpoint left opens, no temp file is named like a checkpoint
for f in "$cdir"/checkpoint-*.h5; do
    expect_rc 0 "final $f opens" inspect "$f" >/dev/null
done

# --- 4. an output folder that cannot be written ---------------------------------------------------
# A first run stops after a checkpoint of step 2; the folder is made read-only; the resumed run's
# first write (its metrics log rewrite) must fail naming the path, and checkpoint-2 must still
# resume after chmod 755. Then the folder turns read-only mid-run: the checkpoint save fails.
# Root ignores mode bits: there a full tmpfs (or a file-size limit) and a file as parent instead.
ro="$tmp/ro"
expect_rc 0 "run stopped after step 2" train "$cfg" "${common[@]}" --set "output_dir=$ro" --stop-after 2
check "$([ -s "$ro/checkpoint-2.h5" ]; echo $?)" "checkpoint-2 written"
cp "$ro/checkpoint-2.h5" "$tmp/ck2.copy"
chmod 555 "$ro"
if touch "$ro/.probe" 2>/dev/null; then
    rm -f "$ro/.probe"
    chmod 755 "$ro"
    echo "SKIP (running as root: permissions are not enforced): read-only output_dir; checking a full disk / a file as parent instead"
    # A full disk: a 300 KiB tmpfs (cache + two 100 KiB checkpoints fit, a third does not) when this
    # container may mount one, else a file-size limit (ulimit -f, SIGXFSZ ignored: EFBIG on write).
    mnt="$tmp/tmpfs"
    mkdir -p "$mnt"
    if mount -t tmpfs -o size=300k tmpfs "$mnt" 2>/dev/null; then
        trap 'umount "$mnt" 2>/dev/null; rm -rf "$tmp"' EXIT
        full="$mnt/o" limit=unlimited how="a 300 KiB tmpfs" cause='No space|disk full'
    else
        echo "SKIP (mount -t tmpfs not permitted here): full tmpfs; using a file-size limit instead"
        full="$tmp/full" limit=60 how="ulimit -f 60" cause='File too large|disk full'
    fi
    expect_rc 0 "run stopped after step 2 ($how)" train "$cfg" "${common[@]}" --set "output_dir=$full" --stop-after 2
    cp "$full/checkpoint-2.h5" "$tmp/ck2f.copy"
    (trap '' XFSZ; ulimit -f "$limit"; "$bin" train "$cfg" "${common[@]}" --set "output_dir=$full" --resume) >"$tmp/out" 2>"$tmp/err"
    rc=$?
    err=$(cat "$tmp/err")
    checks=$((checks + 1))
    if [ "$rc" -ne 1 ] && [ "$rc" -ne 2 ]; then fail "disk full ($how): exit $rc, want 1 or 2"; fi
    expect_text err "$full/.*($cause)" "disk full ($how): the message names the path and the cause"
    check "$(cmp -s "$tmp/ck2f.copy" "$full/checkpoint-2.h5"; echo $?)" "disk full ($how): checkpoint-2 intact"
    check "$([ ! -e "$full/checkpoint-3.h5" ]; echo $?)" "disk full ($how): no partial checkpoint-3.h5"
    # room again (a bigger tmpfs / no limit): the run resumes from checkpoint-2 and ends as the reference
    if [ "$limit" = unlimited ]; then mount -o remount,size=16m "$mnt"; fi
    expect_rc 0 "resume after the disk full ($how)" train "$cfg" "${common[@]}" --set "output_dir=$full" --resume
    expect_text err "resuming from .*/checkpoint-2\.h5 \(step 2\)" "resumed from checkpoint-2 after the disk full"
    check "$(cmp -s "$ref/adapter_model.safetensors" "$full/adapter_model.safetensors"; echo $?)" \
        "resumed after the disk full: same adapter as the uninterrupted run"
    if [ "$limit" = unlimited ]; then umount "$mnt"; fi
    # output_dir under a regular file: no folder can be made there
    : >"$tmp/plainfile"
    run train "$cfg" "${common[@]}" --set "output_dir=$tmp/plainfile/out"
    checks=$((checks + 1))
    if [ "$rc" -ne 1 ] && [ "$rc" -ne 2 ]; then fail "output_dir under a file: exit $rc, want 1 or 2"; fi
    expect_text err "$tmp/plainfile" "output_dir under a file: the message names the path"
else
    run train "$cfg" "${common[@]}" --set "output_dir=$ro" --resume
    chmod 755 "$ro"
    checks=$((checks + 1))
    if [ "$rc" -ne 1 ] && [ "$rc" -ne 2 ]; then fail "read-only output_dir: exit $rc, want 1 or 2"; fi
    expect_text err "$ro/.*(Permission denied|no permission)" "read-only output_dir: the message names the path and the cause"
    check "$(cmp -s "$tmp/ck2.copy" "$ro/checkpoint-2.h5"; echo $?)" "read-only output_dir: checkpoint-2 intact"
    expect_rc 0 "resume after chmod 755" train "$cfg" "${common[@]}" --set "output_dir=$ro" --resume
    expect_text err "resuming from .*/checkpoint-2\.h5 \(step 2\)" "resumed from checkpoint-2"
    check "$(cmp -s "$ref/adapter_model.safetensors" "$ro/adapter_model.safetensors"; echo $?)" \
        "resumed after the permission error: same adapter as the uninterrupted run"
    # the folder turns read-only while the run is going: the next checkpoint save itself fails
    ro2="$tmp/ro2"
    "${slow_fsync[@]}" "$bin" train "$cfg" "${common[@]}" --set "output_dir=$ro2" >"$tmp/out" 2>"$tmp/err" &
    pid=$!
    while [ ! -e "$ro2/checkpoint-2.h5" ] && kill -0 "$pid" 2>/dev/null; do :; done
    chmod 555 "$ro2"
    wait "$pid"
    rc=$?
    err=$(cat "$tmp/err")
    chmod 755 "$ro2"
    checks=$((checks + 1))
    if [ "$rc" -ne 1 ] && [ "$rc" -ne 2 ]; then fail "output_dir read-only mid-run: exit $rc, want 1 or 2"; fi
    expect_text err "$ro2/checkpoint-[0-9]+\.h5: cannot create the checkpoint .*Permission denied" \
        "read-only mid-run: the failed save names the checkpoint and the cause"
    n_ro=$(newest_ckpt "$ro2")
    expect_rc 0 "resume after the mid-run permission error" train "$cfg" "${common[@]}" --set "output_dir=$ro2" --resume
    expect_text err "resuming from .*/checkpoint-$n_ro\.h5 \(step $n_ro\)" "resumed from the newest checkpoint ($n_ro) left"
    check "$(cmp -s "$ref/adapter_model.safetensors" "$ro2/adapter_model.safetensors"; echo $?)" \
        "resumed after the mid-run permission error: same adapter as the uninterrupted run"
fi

harness_done test_cli_crash.sh
