#!/usr/bin/env bash
# tests/test_cli_qat.sh: `loquat qat` end to end: config errors (exit 2 naming the key and line), a
# small Fashion-MNIST --compare (table, CSV, plot, JSON, integer exports with packed codes; the integer model's
# accuracy equal to the fake-quant one within rounding; the same numbers on a second run), and
# language-model QAT on the tiny Llama fixture (perplexity rows, integer perplexity beside the
# fake-quant one, QAT loss falling). The Fashion-MNIST part needs tools/fetch_fashion_mnist.sh's
# data in the cache and reports SKIP without it.
# Run by tools/run_tests.sh with BUILD set to the build directory; exits non-zero if any check fails.
set -u
fx="${LOQUAT_FIXTURES:-tests/fixtures}/qlora_tiny"
# shellcheck source=tests/cli_harness.sh
source "$(dirname "$0")/cli_harness.sh"
fx=$(cd "$fx" && pwd)

check() { # check CONDITION-STATUS DESCRIPTION
    checks=$((checks + 1))
    if [ "$1" -ne 0 ]; then fail "$2"; fi
}

# --- config errors: exit 2, one message naming the key (and the line) ----------------------------------
cfg="$tmp/bad.yaml"
bad() { # bad DESCRIPTION REGEX  (the YAML on stdin)
    cat >"$cfg"
    expect_rc 2 "$1" qat "$cfg" && expect_text err "$2" "$1: message"
}
bad "misspelt key" "bad\.yaml:3: unknown key 'quantization\.wieghts' \(did you mean 'weights'\?\)" <<EOF
model: cnn
quantization:
  wieghts: int4:channel
output_dir: $tmp/o
EOF
bad "bad bit width" "bad\.yaml:3: key 'quantization\.weights': .*int9" <<EOF
model: cnn
quantization:
  weights: int9:channel
output_dir: $tmp/o
EOF
bad "bad mapping spec" "bad\.yaml:3: key 'quantization\.activations\.granularity'" <<EOF
model: mlp
quantization:
  activations: {bits: 8, granularity: per_row}
output_dir: $tmp/o
EOF
bad "unknown scheme" "key 'compare\.1': unknown scheme 'W5A5' \(presets: W8A8, W4A8" <<EOF
model: cnn
compare: [W8A8, W5A5]
output_dir: $tmp/o
EOF
bad "missing model" "missing required key 'model'" <<EOF
output_dir: $tmp/o
EOF
bad "bad mode" "key 'mode'" <<EOF
model: cnn
mode: int
output_dir: $tmp/o
EOF
bad "language model without text" "key 'datasets': a language model" <<EOF
model: $fx
output_dir: $tmp/o
EOF
bad "missing data folder" "data_dir '$tmp/nowhere': train-images-idx3-ubyte\(\.gz\) not found \(tools/fetch_fashion_mnist\.sh" <<EOF
model: cnn
data_dir: $tmp/nowhere
output_dir: $tmp/o
EOF
expect_rc 2 "bad --set" qat "$cfg" --set quantization.pact=maybe && expect_text err "--set quantization\.pact=maybe" "override named"

# --- Fashion-MNIST: a small --compare ----------------------------------------------------------------------
fm="${LOQUAT_CACHE:-$HOME/.cache/loquat}/data/fashion-mnist"
if [ ! -e "$fm/train-images-idx3-ubyte.gz" ] && [ ! -e "$fm/train-images-idx3-ubyte" ]; then
    echo "SKIP: Fashion-MNIST is not in $fm (tools/fetch_fashion_mnist.sh): the compare run is not checked"
else
    small=(--set "data_dir=$fm" --set model=mlp --set train_limit=2048 --set test_limit=1000 --set train.epochs=1
           --set qat.epochs=1 --set "compare=[W8A8, W4A8, W4G32-DYN8]" --set logging_steps=8 --set threads=2)
    o1="$tmp/fm1"
    expect_rc 0 "fmnist compare" qat configs/fmnist-compare.yaml --compare --json "${small[@]}" --set "output_dir=$o1"
    expect_text out '^\| W4A8 \| qat \| [0-9.]+ \| [0-9.]+ \|' "table row for W4A8 qat"
    last=$(tail -n 1 "$tmp/out")
    n=$(grep -o '"mode":"\(float\|ptq\|qat\)"' <<<"$last" | wc -l)
    check "$([ "$n" -eq 7 ]; echo $?)" "JSON: 7 results (float + 3 schemes x ptq, qat), got $n"
    check "$(grep -q '^{"results":\[{"scheme":"float","mode":"float","accuracy":' <<<"$last"; echo $?)" "JSON shape"
    for f in compare.md compare.csv compare.svg metrics.jsonl float.safetensors W4A8-qat.safetensors W4A8-qat.h5 \
        W4G32-DYN8-ptq.safetensors; do
        check "$([ -s "$o1/$f" ]; echo $?)" "wrote $f"
    done
    # the integer model's accuracy equals the fake-quant one within rounding: at most 1 of the
    # 1000 test images may flip (an activation code at a rounding boundary)
    bad_rows=$(awk -F, 'NR > 1 && $2 != "float" { d = $3 - $4; if (d < 0) d = -d; if (d > 0.1001) print $1 "-" $2 }' "$o1/compare.csv")
    check "$([ -z "$bad_rows" ]; echo $?)" "integer accuracy == fake-quant accuracy (differs: $bad_rows)"
    rows=$(awk -F, 'NR > 1 && $2 != "float" && $4 != "" { n++ } END { print n + 0 }' "$o1/compare.csv")
    check "$([ "$rows" -eq 6 ]; echo $?)" "every quantized row has an integer accuracy ($rows)"
    # the export holds packed 4-bit codes and per-group scales
    expect_rc 0 "inspect the W4G32 export" inspect "$o1/W4G32-DYN8-qat.safetensors"
    expect_text out 'fc2\.weight +U8 +\[128, 128\]' "fc2 weight packed two codes per byte"
    expect_text out 'fc2\.weight_scale +F32 +\[128, 8\]' "fc2 scales: one per group of 32"
    expect_text out 'fc1\.weight_scale +F32 +\[256, 1\]' "fc1 (784 inputs: no group of 32 divides them) per channel"
    # deterministic: the same config and seed give the same numbers
    o2="$tmp/fm2"
    expect_rc 0 "fmnist compare, again" qat configs/fmnist-compare.yaml --compare --quiet "${small[@]}" --set "output_dir=$o2"
    check "$(cmp -s <(cut -d, -f1-8 "$o1/compare.csv") <(cut -d, -f1-8 "$o2/compare.csv"); echo $?)" "same results on a second run"
fi

# --- language-model QAT on the tiny Llama fixture ------------------------------------------------------------
lm="$tmp/lm.yaml"
cat >"$lm" <<EOF
model: $fx
datasets: [{path: $fx/train.jsonl, type: completion}]
test_datasets: [{path: $fx/eval.jsonl, type: completion}]
sequence_len: 32
batch_size: 4
qat: {max_steps: 8, learning_rate: 1.0e-3, lr_scheduler: constant}
quantization: {weights: "int4:g32", activations: "int8:asym:token"}
compare: [W4G32-DYN8]
output_dir: $tmp/lm
eval_batch_size: 8
logging_steps: 1
threads: 2
EOF
expect_rc 0 "language-model compare" qat "$lm" --compare --json
last=$(tail -n 1 "$tmp/out")
check "$(grep -q '"scheme":"W4G32-DYN8","mode":"qat","perplexity":' <<<"$last"; echo $?)" "JSON has the QAT perplexity"
# integer vs fake-quant perplexity: within 1% (codes equal; float sums in another order can move an
# activation code across a rounding boundary, and that compounds over the layers)
rel=$(awk -F, 'NR > 1 && $2 != "float" { d = ($4 - $3) / $3; if (d < 0) d = -d; if (d > m) m = d } END { print m + 0 }' "$tmp/lm/compare.csv")
check "$(awk -v r="$rel" 'BEGIN { exit !(r < 0.01) }'; echo $?)" "integer perplexity within 1% of fake-quant ($rel)"
first=$(grep '"run": "W4G32-DYN8-qat"' "$tmp/lm/metrics.jsonl" | head -n 2 | grep -o '"loss": [0-9.e+-]*' | cut -d' ' -f2 | paste -sd+ | bc -l)
lastl=$(grep '"run": "W4G32-DYN8-qat"' "$tmp/lm/metrics.jsonl" | tail -n 2 | grep -o '"loss": [0-9.e+-]*' | cut -d' ' -f2 | paste -sd+ | bc -l)
check "$(awk -v a="$first" -v b="$lastl" 'BEGIN { exit !(a > 0 && b < a) }'; echo $?)" "LM QAT loss falls ($first -> $lastl, two steps each)"

harness_done test_cli_qat.sh
