#!/usr/bin/env bash
# tests/test_cli_cuda.sh: `device: cuda` through `loquat train` / `loquat eval`. A build without
# CUDA refuses it before any work (exit 2, naming the key 'device'); a CUDA build on a machine
# without a usable GPU likewise (exit 1). With a GPU: the tiny QLoRA run on the device (cuda_math:
# fp32) against the same run on the CPU (eval perplexity before and after), a stop / --resume on
# the device against the uninterrupted run, `loquat eval` on the device against the CPU, and a
# tf32 run. Run by tools/run_tests.sh with BUILD set; exits non-zero if any check fails.
set -u
fx="${LOQUAT_FIXTURES:-tests/fixtures}/qlora_tiny"
# shellcheck source=tests/cli_harness.sh
source "$(dirname "$0")/cli_harness.sh"

if [ ! -f "$fx/config.yaml" ] || [ ! -f "$fx/model.safetensors" ]; then
    echo "FAIL: fixture $fx missing (make it with tools/gen_qlora_fixtures.py)"
    exit 1
fi
fx=$(cd "$fx" && pwd)

check() { # check CONDITION-STATUS DESCRIPTION
    checks=$((checks + 1))
    if [ "$1" -ne 0 ]; then fail "$2"; fi
}

# close A B TOL: |A - B| <= TOL * max(|A|, |B|, 1e-6)
close() {
    awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; m = a < 0 ? -a : a; n = b < 0 ? -b : b;
        if (n > m) m = n; if (m < 1e-6) m = 1e-6; exit !(a != "" && b != "" && d <= t * m) }'
}

cfg="$tmp/tiny.yaml"
sed -e "s#tests/fixtures/qlora_tiny#$fx#g" "$fx/config.yaml" >"$cfg"
common=(--set threads=2 --set max_steps=4 --set save_steps=2)

"$bin" --version >"$tmp/version" 2>&1
version=$(cat "$tmp/version")

if grep -q 'built without CUDA' <<<"$version"; then
    # --- a CPU build: the config asks for what this build cannot do ----------------------------
    expect_rc 2 "train device cuda, CPU build" train "$cfg" "${common[@]}" --set "output_dir=$tmp/run1" --set device=cuda
    expect_text err "key 'device': cuda asked for, but this build has no CUDA backend \(rebuild with make CUDA=1" \
        "refusal names the key and why"
    check "$([ ! -e "$tmp/run1" ]; echo $?)" "nothing written for a refused run"
    expect_rc 2 "eval device cuda, CPU build" eval "$cfg" --set "output_dir=$tmp/run2" --set device=cuda
    expect_text err "key 'device': cuda asked for, but this build has no CUDA backend" "eval refusal names the key"
    check "$([ ! -e "$tmp/run2" ]; echo $?)" "nothing written for a refused eval"
    # the key's values are checked like any other's
    expect_rc 2 "bad cuda_math" train "$cfg" --set "output_dir=$tmp/run3" --set cuda_math=fp16
    expect_text err "key 'cuda_math': expected one of tf32, bf16, fp32, got 'fp16'" "bad cuda_math named"
    echo "SKIP: device: cuda runs (this build has no CUDA)"
    harness_done test_cli_cuda.sh
    exit $?
fi

if ! grep -Eq 'cuda: [1-9][0-9]* device' <<<"$version"; then
    # --- a CUDA build without a usable device: a runtime failure -------------------------------
    expect_rc 1 "train device cuda, no GPU" train "$cfg" "${common[@]}" --set "output_dir=$tmp/run1" --set device=cuda
    expect_text err "key 'device': cuda asked for, but no CUDA device is usable" "refusal names the key and why"
    check "$([ ! -e "$tmp/run1" ]; echo $?)" "nothing written for a refused run"
    expect_rc 1 "eval device cuda, no GPU" eval "$cfg" --set "output_dir=$tmp/run2" --set device=cuda
    expect_text err "key 'device': cuda asked for, but no CUDA device is usable" "eval refusal names the key"
    echo "SKIP: device: cuda runs (no CUDA device: $version)"
    harness_done test_cli_cuda.sh
    exit $?
fi

# --- a GPU: the same run on both devices ---------------------------------------------------------
# "eval ppl: A -> B" of the last run's summary
ppl() { sed -nE 's/^eval ppl: ([0-9.]+) -> ([0-9.]+)$/\1 \2/p' <<<"$err"; }

expect_rc 0 "cpu run" train "$cfg" "${common[@]}" --set "output_dir=$tmp/cpu"
read -r cpu_before cpu_after <<<"$(ppl)"
expect_rc 0 "cuda run (fp32)" train "$cfg" "${common[@]}" --set "output_dir=$tmp/gpu" --set device=cuda --set cuda_math=fp32
expect_text err '^peak device memory: [0-9]+ MiB' "device memory reported"
read -r gpu_before gpu_after <<<"$(ppl)"
for f in adapter_config.json adapter_model.safetensors metrics.jsonl loss.svg checkpoint-2.h5 checkpoint-4.h5; do
    check "$([ -s "$tmp/gpu/$f" ]; echo $?)" "cuda run wrote $f"
done
check "$(close "$cpu_before" "$gpu_before" 1e-4; echo $?)" "eval ppl before training: cpu $cpu_before, cuda $gpu_before"
check "$(close "$cpu_after" "$gpu_after" 2e-3; echo $?)" "eval ppl after training: cpu $cpu_after, cuda $gpu_after"

# stop after 2 steps (a checkpoint from the device), resume on the device: the same end
expect_rc 0 "cuda stop-after 2" train "$cfg" "${common[@]}" --set "output_dir=$tmp/gpu2" --set device=cuda \
    --set cuda_math=fp32 --stop-after 2
expect_rc 0 "cuda resume" train "$cfg" "${common[@]}" --set "output_dir=$tmp/gpu2" --set device=cuda --set cuda_math=fp32 --resume
expect_text err 'resuming from .*checkpoint-2\.h5' "resumed from step 2"
read -r _ res_after <<<"$(ppl)"
check "$(close "$gpu_after" "$res_after" 1e-4; echo $?)" "resumed run ends where the straight one did: $gpu_after, $res_after"

# eval of the trained adapter on both devices
expect_rc 0 "cpu eval" eval "$cfg" --set "output_dir=$tmp/gpu" --adapter "$tmp/gpu"
cpu_eval=$(sed -nE 's/^eval: loss ([0-9.]+) .*/\1/p' <<<"$out")
expect_rc 0 "cuda eval" eval "$cfg" --set "output_dir=$tmp/gpu" --adapter "$tmp/gpu" --set device=cuda --set cuda_math=fp32
gpu_eval=$(sed -nE 's/^eval: loss ([0-9.]+) .*/\1/p' <<<"$out")
check "$(close "$cpu_eval" "$gpu_eval" 1e-4; echo $?)" "eval loss: cpu $cpu_eval, cuda $gpu_eval"

# tf32 (the default): a finished run with a finite perplexity
expect_rc 0 "cuda run (tf32)" train "$cfg" "${common[@]}" --set "output_dir=$tmp/gpu3" --set device=cuda
read -r _ tf_after <<<"$(ppl)"
check "$(close "$cpu_after" "$tf_after" 5e-2; echo $?)" "tf32 run near the cpu one: cpu $cpu_after, tf32 $tf_after"

harness_done test_cli_cuda.sh
