#!/usr/bin/env bash
# Runs a short real QLoRA job of the loquat CLI under valgrind memcheck and fails on any report:
# `loquat train configs/tiny-qlora.yaml` (3 steps: stopped after step 2 with a checkpoint, then
# --resume to the end and the adapter export), `loquat eval` with the trained adapter, and
# `loquat merge` to a safetensors folder and to a Q8_0 GGUF file. Each command must also exit
# with its usual status and leave its usual files.
# Usage: tools/valgrind_train.sh [BUILD_DIR]   (default build; needs BUILD_DIR/loquat)
# Conventions as tools/valgrind_tests.sh: one thread for OpenMP and OpenBLAS, definite and
# indirect leaks are errors; OpenBLAS's thread pool lives until exit, so reachable blocks are not.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
bin="$build/loquat"
if [ ! -x "$bin" ]; then
    echo "valgrind_train: $bin not found (build it with make BUILD=$build)"
    exit 1
fi
if ! command -v valgrind >/dev/null; then
    echo "valgrind not found: installing it"
    EXTRA_PKGS=valgrind tools/deps.sh
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# LOQUAT_BLAS_REEXEC=1: main.c's OpenBLAS core check would otherwise re-exec the binary once,
# and the re-executed process would run outside memcheck (valgrind does not follow an exec
# unless --trace-children=yes). The check only picks faster kernels; the code paths are the same.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 LOQUAT_BLAS_REEXEC=1
vg=(valgrind --tool=memcheck --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect
    --show-leak-kinds=definite,indirect --track-origins=yes --num-callers=30)
status=0

# memcheck WANT_RC NAME ARGS...: runs loquat ARGS under memcheck; the run must exit WANT_RC with a
# clean report (exit 99 = a memcheck error; any other mismatch = the command itself failed).
memcheck() {
    local want=$1 name=$2
    shift 2
    local log="$tmp/$name.log" t0 rc
    t0=$(date +%s)
    set +e
    "${vg[@]}" --log-file="$tmp/$name.vg" "$bin" "$@" >"$log" 2>&1
    rc=$?
    set -e
    if [ "$rc" -eq "$want" ] && grep -q 'ERROR SUMMARY: 0 errors' "$tmp/$name.vg"; then
        echo "valgrind $name: clean ($(($(date +%s) - t0)) s; $(grep -Eo 'total heap usage: [0-9,]+ allocs' "$tmp/$name.vg"))"
    else
        echo "valgrind $name: FAILED (exit $rc, want $want)"
        tail -n 15 "$log" | sed 's/^/  /'
        grep -E '^==[0-9]+==' "$tmp/$name.vg" | head -80
        status=1
    fi
}

# check CONDITION-STATUS DESCRIPTION: a file the commands must have written
check() {
    if [ "$1" -ne 0 ]; then
        echo "valgrind_train: $2"
        status=1
    fi
}

out="$tmp/run"
run=(configs/tiny-qlora.yaml --quiet --set "output_dir=$out" --set max_steps=3 --set save_steps=2 --set eval_steps=2
     --set logging_steps=1 --set threads=1)
memcheck 0 train-stop train "${run[@]}" --stop-after 2
check "$([ -s "$out/checkpoint-2.h5" ]; echo $?)" "the stopped run left no checkpoint-2.h5"
memcheck 0 train-resume train "${run[@]}" --resume
check "$(grep -q 'resuming from .*checkpoint-2\.h5' "$tmp/train-resume.log"; echo $?)" "the second run did not resume from checkpoint-2.h5"
check "$([ -s "$out/adapter_model.safetensors" ] && [ -s "$out/checkpoint-3.h5" ]; echo $?)" "the resumed run did not finish (no adapter or checkpoint-3.h5)"
memcheck 0 eval eval configs/tiny-qlora.yaml --set "output_dir=$out" --set threads=1 --adapter "$out"
check "$(grep -Eq '^eval: loss [0-9.]+' "$tmp/eval.log"; echo $?)" "eval printed no loss"
memcheck 0 merge-safetensors merge --model tests/fixtures/qlora_tiny --adapter "$out" --out "$tmp/merged"
check "$([ -s "$tmp/merged/model.safetensors" ]; echo $?)" "merge wrote no merged/model.safetensors"
memcheck 0 merge-gguf merge --model tests/fixtures/qlora_tiny --adapter "$out" --out "$tmp/merged.gguf" --dtype q8_0
check "$([ -s "$tmp/merged.gguf" ]; echo $?)" "merge wrote no merged.gguf"
# a refused run (bad input) frees what it built on its way out too
memcheck 2 train-refused train "${run[@]}" --set "output_dir=$tmp/refused" --set datasets.0.path=tests/badinput/jsonl/bad_json_line.jsonl
exit $status
