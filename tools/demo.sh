#!/usr/bin/env bash
# tools/demo.sh: what `make demo` runs after building: fetches SmolLM2-135M-Instruct (4-bit GGUF)
# and Jane Austen's novels into the cache (tools/fetch_model.sh, tools/fetch_austen.sh), estimates
# the run's memory, fine-tunes with QLoRA on the CPU (configs/smollm2-austen-qlora.yaml: the
# trainer prints validation perplexity before and after and exports the PEFT adapter into the
# output folder), merges the adapter into the base twice (a Hugging Face safetensors folder, and a
# Q8_0 GGUF file), and writes a sample with the adapter. Each command is echoed before it runs.
#
#     tools/demo.sh [LOQUAT_BINARY]     (default build/loquat)
#
# The output folder (out/smollm2-austen, or $DEMO_OUT) is started afresh on every run.
# $DEMO_CONFIG replaces the config (e.g. a shorter run for checking this script).
set -euo pipefail

cli=${1:-build/loquat}
config=${DEMO_CONFIG:-configs/smollm2-austen-qlora.yaml}
out=${DEMO_OUT:-out/smollm2-austen}

[ -x "$cli" ] || { echo "demo: $cli is not built (run make)" >&2; exit 1; }
case "$out" in "" | / | . | ..) echo "demo: refusing output folder '$out'" >&2; exit 1 ;; esac

run() {
    echo
    echo "+ $*"
    "$@"
}

model=$(tools/fetch_model.sh | tail -n 1)
austen=$(tools/fetch_austen.sh | tail -n 1)
echo "demo: model $model"
echo "demo: texts in $austen"

run "$cli" mem "$config" --set output_dir="$out"
rm -rf "$out"
run "$cli" train "$config" --set output_dir="$out"
run "$cli" merge --model "$model" --adapter "$out" --out "$out/merged" --format safetensors
# (the per-tensor requantization report is left out here; the summary line stays)
run "$cli" merge --model "$model" --adapter "$out" --out "$out/merged-q8_0.gguf" --format gguf --dtype q8_0 |
    { grep -v '^converted ' || true; }
run "$cli" generate --model "$model" --adapter "$out" --max-tokens 80 --temperature 0.8 --top-p 0.95 --seed 42 \
    --prompt "It was a fine morning in the spring, and Catherine"
echo
echo "demo: done. The adapter (PEFT), metrics.jsonl and the loss plot are in $out; merged models in $out/merged and $out/merged-q8_0.gguf"
