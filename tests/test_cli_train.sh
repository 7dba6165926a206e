#!/usr/bin/env bash
# tests/test_cli_train.sh: `loquat train` / `loquat eval` end to end on the tiny QLoRA fixture
# (tests/fixtures/qlora_tiny, made by tools/gen_qlora_fixtures.py): the files a run leaves
# (adapter, metrics.jsonl, loss.svg, checkpoints), Ctrl-C (exit 130, a checkpoint) then --resume,
# a non-finite loss (exit 1 naming the step), a missing dataset (exit 2 naming the path).
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

check() { # check CONDITION-STATUS DESCRIPTION
    checks=$((checks + 1))
    if [ "$1" -ne 0 ]; then fail "$2"; fi
}

# The fixture's config with absolute paths (so it runs from any folder), lora_model_dir dropped.
cfg="$tmp/tiny.yaml"
sed -e "s#tests/fixtures/qlora_tiny#$fx#g" -e '/^lora_model_dir:/d' "$fx/config.yaml" >"$cfg"
common=(--set threads=2 --set save_steps=2 --set save_total_limit=2)

# --- a short run -------------------------------------------------------------------------------
out1="$tmp/run1"
expect_rc 0 "short run" train "$cfg" "${common[@]}" --set "output_dir=$out1" --set max_steps=4
expect_text err '^step 4/4  loss [0-9.]+  lr [0-9.e+-]+  [0-9]+ tok/s  ETA [0-9:]+  peak [0-9]+ MiB$' "progress line"
expect_text err '^eval @ step 0: loss [0-9.]+ ppl [0-9.]+$' "eval line before training"
expect_text err 'eval ppl: [0-9.]+ -> [0-9.]+' "summary: perplexity before -> after"
expect_text err 'peak RSS: [0-9]+ MiB measured' "summary: peak RSS"
for f in adapter_config.json adapter_model.safetensors metrics.jsonl loss.svg checkpoint-4.h5; do
    check "$([ -s "$out1/$f" ]; echo $?)" "short run wrote $f"
done
check "$([ ! -e "$out1/checkpoint-2.h5" ] || [ -e "$out1/checkpoint-4.h5" ]; echo $?)" "checkpoints present"
# every metrics line is a JSON object with the keys the brief lists
py=$(command -v python3 || true)
if [ -n "$py" ]; then
    "$py" - "$out1/metrics.jsonl" <<'EOF' >"$tmp/jsoncheck" 2>&1
import json, sys
steps = evals = 0
for line in open(sys.argv[1]):
    o = json.loads(line)
    if "loss" in o:
        assert set(o) == {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s", "peak_rss_bytes"}, o
        steps += 1
    else:
        assert set(o) == {"step", "eval_loss", "eval_ppl"}, o
        evals += 1
assert steps == 4 and evals >= 2, (steps, evals)
print("ok")
EOF
    check "$(grep -q '^ok$' "$tmp/jsoncheck"; echo $?)" "metrics.jsonl lines are valid JSON ($(head -c 300 "$tmp/jsoncheck"))"
fi
check "$(grep -Eq '"peft_type":[[:space:]]*"LORA"' "$out1/adapter_config.json"; echo $?)" "adapter_config.json is a PEFT LoRA config"
check "$(grep -q '<svg' "$out1/loss.svg" && grep -q '<polyline' "$out1/loss.svg" && grep -q 'tiny.yaml' "$out1/loss.svg"; echo $?)" \
    "loss.svg has a curve and the config's name"

# --- eval with the trained adapter -------------------------------------------------------------
expect_rc 0 "eval with adapter" eval "$cfg" --set "output_dir=$out1" --adapter "$out1" --json
expect_text out '^eval: loss [0-9.]+ ppl [0-9.]+ \([0-9]+ tokens\)$' "eval line"
expect_text out '"eval_loss"' "eval json"

# --- a fresh run into a folder with an earlier run's checkpoints is refused: nothing is lost ----
n_before=$(ls "$out1" | grep -c '^checkpoint-')
expect_rc 2 "fresh run over an earlier one" train "$cfg" "${common[@]}" --set "output_dir=$out1" --set max_steps=1
expect_text err 'earlier run.*--resume' "stale checkpoints named, --resume suggested"
check "$([ "$(ls "$out1" | grep -c '^checkpoint-')" -eq "$n_before" ] && [ "$n_before" -ge 1 ]; echo $?)" "the earlier run's checkpoints kept"

# --- Ctrl-C, then --resume ---------------------------------------------------------------------
# Bigger steps (16 rows) so the run is still going when the signal comes.
out2="$tmp/run2"
slow=("${common[@]}" --set "output_dir=$out2" --set max_steps=24 --set micro_batch_size=4 --set gradient_accumulation_steps=4 --set save_steps=0)
"$bin" train "$cfg" "${slow[@]}" >"$tmp/out" 2>"$tmp/err" &
pid=$!
for _ in $(seq 1 600); do
    grep -q '"loss"' "$out2/metrics.jsonl" 2>/dev/null && break
    sleep 0.05
done
kill -INT "$pid"
wait "$pid"
rc=$?
out=$(cat "$tmp/out")
err=$(cat "$tmp/err")
checks=$((checks + 1))
if [ "$rc" -ne 130 ]; then fail "Ctrl-C: exit $rc, want 130"; fi
expect_text err 'interrupted at step [0-9]+: checkpoint saved to .*checkpoint-[0-9]+\.h5; resume with loquat train .* --resume' "Ctrl-C message"
n_ck=$(ls "$out2" | grep -c '^checkpoint-[0-9]*\.h5$')
check "$([ "$n_ck" -ge 1 ]; echo $?)" "Ctrl-C left a checkpoint"
expect_rc 0 "resume after Ctrl-C" train "$cfg" "${slow[@]}" --resume
expect_text err 'resuming from .*checkpoint-[0-9]+\.h5' "resume message"
check "$([ -s "$out2/adapter_model.safetensors" ] && [ -s "$out2/checkpoint-24.h5" ]; echo $?)" "resumed run finished"
check "$([ "$(grep -c '"loss"' "$out2/metrics.jsonl")" -eq 24 ]; echo $?)" "metrics.jsonl holds each of the 24 steps once"

# --- a non-finite loss -------------------------------------------------------------------------
out3="$tmp/run3"
expect_rc 1 "lr 1e30" train "$cfg" "${common[@]}" --set "output_dir=$out3" --set learning_rate=1e30 --set warmup_steps=0 \
    --set save_steps=1 --set max_steps=6
expect_text err 'step [0-9]+: loss is (nan|inf) \(micro-batch [0-9]+\); first non-finite gradient: model\.layers\.' "NaN message"
expect_text err 'last good checkpoint stays: .*checkpoint-1\.h5' "last good checkpoint named"

# --- bad input ---------------------------------------------------------------------------------
expect_rc 2 "missing dataset" train "$cfg" --set "output_dir=$tmp/run4" --set "datasets.0.path=$tmp/nope.jsonl"
expect_text err "$tmp/nope.jsonl" "missing dataset named"
expect_rc 2 "resume without a checkpoint" train "$cfg" --set "output_dir=$tmp/run5" --resume
expect_text err 'no usable checkpoint' "resume without a checkpoint says so"

# the config's lora_r / lora_alpha must match a lora_model_dir's
cfg_init="$tmp/tiny_init.yaml"
sed -e "s#tests/fixtures/qlora_tiny#$fx#g" "$fx/config.yaml" >"$cfg_init"
expect_rc 2 "lora_model_dir rank mismatch" train "$cfg_init" --set "output_dir=$tmp/run6" --set lora_r=8
expect_text err 'lora_model_dir .*r=4.*lora_r=8' "rank mismatch names both values"
# device: cuda (refused without CUDA or a GPU, run with one): tests/test_cli_cuda.sh

# a run far larger than the machine's memory is refused before allocating, with the estimate
expect_rc 2 "run larger than memory" train "$cfg" --set "output_dir=$tmp/run8" --set micro_batch_size=512 --set sequence_len=4096
expect_text err "needs about [0-9]+ MiB \(loquat mem's estimate\).*MemAvailable" "estimate and MemAvailable named"
check "$([ ! -e "$tmp/run8" ]; echo $?)" "nothing written for a refused run"

harness_done test_cli_train.sh
