#!/usr/bin/env bash
# tests/test_cli_generate.sh: `loquat generate` and `loquat perplexity`: bad flags and files exit 2
# with a message naming the problem; on the tiny random Llama with a byte-level tokenizer
# (tests/fixtures/tokenizer_gguf/tiny_chat.gguf, tools/gen_tokenizer_gguf.py) greedy generation is
# deterministic, a seed fixes sampling, --chat runs, and perplexity gives a finite number (text
# and --json). Needs no Python. Run by tools/run_tests.sh with BUILD set to the build directory.
set -u
fxd="${LOQUAT_FIXTURES:-tests/fixtures}"
# shellcheck source=tests/cli_harness.sh
source "$(dirname "$0")/cli_harness.sh"

has() {
    checks=$((checks + 1))
    if ! grep -Eq -- "$1" <<<"$out"; then fail "$2: stdout lacks /$1/"; fi
}

has_err() {
    checks=$((checks + 1))
    if ! grep -Eq -- "$1" <<<"$err"; then fail "$2: stderr lacks /$1/"; fi
}

tiny="$fxd/tokenizer_gguf/tiny_chat.gguf"
notok="$fxd/llama_tiny/tied.f32.gguf"
text="$fxd/tokenizer/text.txt"

# --- bad input: generate
expect_rc 2 "generate without --model" generate --prompt hi && has_err 'missing required option --model' "no model"
expect_rc 2 "generate missing file" generate --model "$tmp/nope.gguf" --prompt hi && has_err 'nope\.gguf: cannot open' "missing model named"
expect_rc 2 "generate bad temperature" generate --model "$tiny" --temperature warm && has_err '--temperature expects a number' "temperature"
expect_rc 2 "generate negative temperature" generate --model "$tiny" --temperature -1 && has_err '--temperature' "negative temperature"
expect_rc 2 "generate top-p 0" generate --model "$tiny" --top-p 0 && has_err '--top-p expects a number in \(0, 1\]' "top-p 0"
expect_rc 2 "generate top-p 1.5" generate --model "$tiny" --top-p 1.5 && has_err '--top-p' "top-p 1.5"
expect_rc 2 "generate bad seed" generate --model "$tiny" --seed 1.5 && has_err '--seed expects a non-negative integer' "seed"
expect_rc 2 "generate max-tokens 0" generate --model "$tiny" --max-tokens 0 && has_err '--max-tokens expects an integer' "max-tokens"
expect_rc 2 "generate unknown flag" generate --model "$tiny" --temprature 1 && has_err "did you mean '--temperature'" "suggestion"
expect_rc 2 "generate, model without tokenizer" generate --model "$notok" --prompt hi && has_err 'tokenizer.*tokenizer\.ggml\.model' "no tokenizer"
expect_rc 2 "generate, not a model" generate --model "$text" --prompt hi && has_err 'text\.txt' "not a model named"
# --- bad input: perplexity
expect_rc 2 "perplexity without --data" perplexity --model "$tiny" && has_err 'missing required option --data' "no data"
expect_rc 2 "perplexity without --model" perplexity --data "$text" && has_err 'missing required option --model' "no model"
expect_rc 2 "perplexity missing data" perplexity --model "$tiny" --data "$tmp/none.txt" && has_err 'none\.txt: cannot open' "missing data named"
expect_rc 2 "perplexity missing model" perplexity --model "$tmp/none.gguf" --data "$text" && has_err 'none\.gguf: cannot open' "missing model named"
expect_rc 2 "perplexity ctx 2" perplexity --model "$tiny" --data "$text" --ctx 2 && has_err '--ctx must be at least 4' "ctx 2"
expect_rc 2 "perplexity ctx beyond model" perplexity --model "$tiny" --data "$text" --ctx 128 && has_err "beyond the model's 64 positions" "ctx 128"
printf 'a short text' >"$tmp/short.txt"
expect_rc 2 "perplexity too little text" perplexity --model "$tiny" --data "$tmp/short.txt" --ctx 16 && has_err 'at least 2 \* ctx = 32' "short text"

# --- the tiny model
if expect_rc 0 "greedy generation" generate --model "$tiny" --prompt "the cat" --max-tokens 24; then
    first="$out"
    has_err 'generated [0-9]+ tokens in .* tok/s' "speed on stderr"
    checks=$((checks + 1))
    [ -n "$first" ] || fail "greedy generation printed nothing"
    expect_rc 0 "greedy generation again" generate --model "$tiny" --prompt "the cat" --max-tokens 24
    checks=$((checks + 1))
    [ "$out" = "$first" ] || fail "greedy generation is not deterministic"
    expect_rc 0 "greedy with top-p set" generate --model "$tiny" --prompt "the cat" --max-tokens 24 --top-p 0.5
    checks=$((checks + 1))
    [ "$out" = "$first" ] || fail "temperature 0 must ignore --top-p"
fi
if expect_rc 0 "sampled generation" generate --model "$tiny" --prompt "the cat" --max-tokens 24 --temperature 1 --seed 7; then
    s7="$out"
    expect_rc 0 "sampled again" generate --model "$tiny" --prompt "the cat" --max-tokens 24 --temperature 1 --seed 7
    checks=$((checks + 1))
    [ "$out" = "$s7" ] || fail "the same seed gave different text"
    expect_rc 0 "another seed" generate --model "$tiny" --prompt "the cat" --max-tokens 24 --temperature 1 --seed 8
    checks=$((checks + 1))
    [ "$out" != "$s7" ] || fail "seeds 7 and 8 gave the same 24 tokens"
    expect_rc 0 "top-k 1 is greedy" generate --model "$tiny" --prompt "the cat" --max-tokens 24 --temperature 1 --top-k 1 --seed 9
    checks=$((checks + 1))
    [ "$out" = "$first" ] || fail "--top-k 1 differs from greedy"
fi
# the Hugging Face folder path: the same weights (llama_tiny/tied) with the same tokenizer as a
# tokenizer.json give the same greedy text
if [ -n "${first:-}" ] && [ -f "$fxd/llama_tiny/tied/model.safetensors" ]; then
    mkdir -p "$tmp/hf"
    cp "$fxd/llama_tiny/tied/"* "$tmp/hf/"
    cp "$fxd/tokenizer_gguf/tiny_tokenizer.json" "$tmp/hf/tokenizer.json"
    expect_rc 0 "greedy generation, HF folder" generate --model "$tmp/hf" --prompt "the cat" --max-tokens 24
    checks=$((checks + 1))
    [ "$out" = "$first" ] || fail "HF folder and GGUF give different greedy text"
    rm "$tmp/hf/tokenizer.json"
    expect_rc 2 "HF folder without tokenizer.json" generate --model "$tmp/hf" --prompt hi && has_err 'tokenizer\.json: cannot open' "missing tokenizer.json named"
fi
expect_rc 0 "chat" generate --model "$tiny" --chat --prompt "hello" --max-tokens 8
expect_rc 0 "no prompt: starts from BOS" generate --model "$tiny" --max-tokens 4
if expect_rc 0 "perplexity" perplexity --model "$tiny" --data "$text" --ctx 16 --json; then
    has '^perplexity: [0-9]+\.[0-9]+ \+/- [0-9.]+ \([0-9]+ tokens scored, [0-9]+ windows of 16\)$' "perplexity line"
    has_err '^\[1/[0-9]+\] ppl [0-9.]+' "per-window progress"
    last=$(tail -n 1 "$tmp/out")
    checks=$((checks + 1))
    grep -Eq '^\{"perplexity": [0-9]+\.[0-9]+, .*"ctx": 16, "bos": true, .*\}$' <<<"$last" || fail "json last line: $last"
    ppl=$(sed -E 's/^\{"perplexity": ([0-9.]+),.*/\1/' <<<"$last")
    checks=$((checks + 1))
    awk -v p="$ppl" 'BEGIN { exit !(p > 1 && p < 100000) }' || fail "perplexity $ppl is not a finite number > 1"
    # windows: the 15 scored per window = 16 - 1 - 8 = 7
    has '\(([0-9]+) tokens scored' "scored count"
    n_scored=$(sed -nE 's/.*\(([0-9]+) tokens scored, ([0-9]+) windows.*/\1 \2/p' <<<"$out")
    checks=$((checks + 1))
    awk -v s="${n_scored% *}" -v w="${n_scored#* }" 'BEGIN { exit !(s == 7 * w && w >= 2) }' || fail "scored $n_scored: want 7 per window"
fi

# --- --kv-cache f32|int8
expect_rc 2 "generate bad --kv-cache" generate --model "$tiny" --kv-cache int4 && has_err "int4" "bad kv-cache named"
if [ -n "${first:-}" ]; then
    expect_rc 0 "greedy, f32 KV cache" generate --model "$tiny" --prompt "the cat" --max-tokens 24 --kv-cache f32 &&
        has_err 'f32 KV cache, [0-9]+ bytes per token' "f32 cache bytes reported"
    checks=$((checks + 1))
    [ "$out" = "$first" ] || fail "--kv-cache f32 differs from the default"
    expect_rc 0 "greedy, int8 KV cache" generate --model "$tiny" --prompt "the cat" --max-tokens 24 --kv-cache int8 &&
        has_err 'int8 KV cache, [0-9]+ bytes per token' "int8 cache bytes reported"
fi
if [ -n "${ppl:-}" ]; then
    for kvt in f32 int8; do
        expect_rc 0 "perplexity --kv-cache $kvt" perplexity --model "$tiny" --data "$text" --ctx 16 --json --kv-cache $kvt || continue
        p2=$(tail -n 1 "$tmp/out" | sed -E 's/^\{"perplexity": ([0-9.]+),.*/\1/')
        checks=$((checks + 1))
        grep -q "\"kv_cache\": \"$kvt\"" "$tmp/out" || fail "perplexity json lacks kv_cache $kvt"
        # f32 cache: the plain forward's value (float rounding only); int8: within 5 %
        tol=$([ $kvt = f32 ] && echo 0.0001 || echo 0.05)
        checks=$((checks + 1))
        awk -v a="$p2" -v b="$ppl" -v t="$tol" 'BEGIN { d = (a - b) / b; if (d < 0) d = -d; exit !(d <= t) }' ||
            fail "perplexity with $kvt cache $p2 vs $ppl (tolerance $tol)"
    done
fi

if [ "$failures" -ne 0 ]; then
    echo "test_cli_generate: $failures of $checks checks failed"
    exit 1
fi
echo "test_cli_generate: all $checks checks passed"
