#!/usr/bin/env bash
# tests/test_cli_merge.sh: `loquat merge` and --adapter end to end on the tiny QLoRA fixture
# (tests/fixtures/qlora_tiny: an HF Llama folder with a tokenizer, and adapter_init, a PEFT
# adapter with non-zero B made by tools/gen_qlora_fixtures.py): every format / dtype writes output
# that `loquat inspect` reads and `loquat perplexity` runs on; the merged f32 model (safetensors
# and GGUF, whose tokenizer.* metadata is converted from tokenizer.json) scores the same
# perplexity as the base with --adapter; bad input exits 2 (1 for an unwritable output) with a
# message and leaves nothing behind. Needs no Python (tools/check_peft_interop.py compares the
# same outputs with PEFT / transformers / gguf).
set -u
fx="${LOQUAT_FIXTURES:-tests/fixtures}/qlora_tiny"
# shellcheck source=tests/cli_harness.sh
source "$(dirname "$0")/cli_harness.sh"
for f in config.json model.safetensors tokenizer.json train.jsonl adapter_init/adapter_config.json \
    adapter_init/adapter_model.safetensors; do
    if [ ! -f "$fx/$f" ]; then
        echo "FAIL: fixture $fx/$f missing (make it with tools/gen_qlora_fixtures.py)"
        exit 1
    fi
done
ad="$fx/adapter_init"

check() { # check STATUS DESCRIPTION
    checks=$((checks + 1))
    if [ "$1" -ne 0 ]; then fail "$2"; fi
}

# no_leftovers PATH DESCRIPTION: PATH absent, and no temporary file / folder beside it
no_leftovers() {
    checks=$((checks + 1))
    local dir
    dir=$(dirname "$1")
    if [ -e "$1" ]; then fail "$2: $1 was left behind"; return; fi
    if [ -d "$dir" ] && ls -A "$dir" | grep -Eq '\.tmp$|\.merge\.'; then fail "$2: temporary file left in $dir: $(ls -A "$dir")"; fi
}

# ppl_of: the perplexity value printed by the last run ("perplexity: X +/- Y ...")
ppl_of() { sed -n 's/^perplexity: \([0-9.]*\) .*/\1/p' <<<"$out"; }

# rel_close A B TOL: |A - B| <= TOL * B
# F32_MERGE_TOL: the merged f32 model computes x (W + s B A)^T in one product, the base with --adapter
# x W^T + s (x A^T) B^T in three, so their logits differ by float32 rounding: seen 1.4e-7 of the
# perplexity (an AMD EPYC's OpenBLAS kernels; other machines printed the same 4 decimals). The
# adapter moves the perplexity by about 2.3e-2, so 1e-5 still fails a merge whose scale is 0.05% off.
F32_MERGE_TOL=1e-5
rel_close() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && d <= t * b) }'; }

# text to score: the fixture's training sentences (about 700 tokens: 21 windows of 32)
sed -n 's/^{"text": "\(.*\)"}$/\1/p' "$fx/train.jsonl" >"$tmp/text.txt"
ppl_args=(--data "$tmp/text.txt" --ctx 32)

expect_rc 0 "perplexity of the base" perplexity --model "$fx" "${ppl_args[@]}"
ppl_base=$(ppl_of)
ppl_ad= ppl_st_f32=
if expect_rc 0 "perplexity --adapter" perplexity --model "$fx" --adapter "$ad" "${ppl_args[@]}"; then
    ppl_ad=$(ppl_of)
    checks=$((checks + 1))
    [ -n "$ppl_ad" ] && [ "$ppl_ad" != "$ppl_base" ] || fail "--adapter does not change the perplexity ($ppl_base)"
fi
if expect_rc 0 "generate --adapter" generate --model "$fx" --adapter "$ad" --prompt "The garden" --max-tokens 4; then
    checks=$((checks + 1))
    [ -n "$out" ] || fail "generate --adapter: no text"
fi

# --- safetensors ------------------------------------------------------------------------------
for dt in f32 f16 bf16 nf4; do
    o="$tmp/st_$dt"
    expect_rc 0 "merge safetensors $dt" merge --model "$fx" --adapter "$ad" --out "$o" --dtype "$dt" --json || continue
    checks=$((checks + 1))
    grep -q '"merged_modules": 14' <<<"$(tail -n 1 <<<"$out")" || fail "merge $dt: JSON does not count 14 merged modules"
    for f in config.json model.safetensors tokenizer.json tokenizer_config.json generation_config.json; do
        checks=$((checks + 1))
        [ -f "$o/$f" ] || fail "merge safetensors $dt: $o/$f missing"
    done
    no_leftovers "$tmp/none" "merge safetensors $dt"
    expect_rc 0 "inspect the $dt export" inspect "$o/model.safetensors"
    case $dt in
    nf4)
        # transformers' bitsandbytes layout: packed U8 codes + quant-state JSON per linear weight
        expect_text out 'q_proj\.weight\.quant_state\.bitsandbytes__nf4 +U8' "nf4: quant state listed"
        expect_text out 'q_proj\.weight\.nested_absmax +F32' "nf4: double-quantized absmax"
        checks=$((checks + 1))
        grep -q '"quant_method": "bitsandbytes"' "$o/config.json" || fail "nf4: config.json lacks quantization_config"
        run merge --model "$fx" --adapter "$ad" --out "$tmp/st_nf4b" --dtype nf4 --json
        checks=$((checks + 1))
        [ "$(grep -c '^converted .* -> nf4' <<<"$out")" -eq 14 ] || fail "merge nf4: want 14 per-tensor report lines"
        # NF4 on near-Gaussian weights: about 20.5 dB (tests/test_cli_quant.sh's range)
        sq=$(tail -n 1 <<<"$out" | grep -Eo '"sqnr_db_min": [-0-9.e+]+' | sed 's/.*: //')
        awk -v x="$sq" 'BEGIN { exit !(x != "" && x > 17 && x < 23) }'
        check $? "merge nf4: min SQNR $sq dB outside 17..23"
        ;;
    *)
        checks=$((checks + 1))
        grep -q "\"torch_dtype\": \"$(sed 's/f32/float32/;s/bf16/bfloat16/;s/^f16/float16/' <<<"$dt")\"" "$o/config.json" ||
            fail "merge $dt: config.json torch_dtype"
        if expect_rc 0 "perplexity on the $dt safetensors export" perplexity --model "$o" "${ppl_args[@]}"; then
            p=$(ppl_of)
            if [ "$dt" = f32 ]; then
                ppl_st_f32=$p
                rel_close "$p" "$ppl_ad" "$F32_MERGE_TOL"
                check $? "merged f32 perplexity $p not within $F32_MERGE_TOL of base --adapter $ppl_ad"
            else
                rel_close "$p" "$ppl_ad" 0.01
                check $? "merged $dt perplexity $p not within 1% of $ppl_ad"
            fi
        fi
        ;;
    esac
done

# --- GGUF -------------------------------------------------------------------------------------
for dt in f32 f16 bf16 q8_0 q4_0; do
    o="$tmp/m_$dt.gguf"
    expect_rc 0 "merge gguf $dt" merge --model "$fx" --adapter "$ad" --out "$o" --dtype "$dt" || continue
    if [ "$dt" = q8_0 ] || [ "$dt" = q4_0 ]; then
        checks=$((checks + 1)) # 14 adapted projections + token_embd; norms stay f32
        [ "$(grep -c "^converted .* -> $dt" <<<"$out")" -eq 15 ] || fail "merge gguf $dt: want 15 per-tensor report lines"
        expect_text out "15 tensors converted to $dt: mean rmse" "merge gguf $dt: summary line"
    fi
    if expect_rc 0 "inspect the $dt GGUF" inspect "$o"; then
        expect_text out 'tokenizer\.ggml\.model +string +"gpt2"' "gguf $dt: tokenizer metadata from tokenizer.json"
        expect_text out "blk\\.1\\.ffn_down\\.weight +$(tr a-z A-Z <<<"$dt") " "gguf $dt: weights stored as $dt"
        expect_text out 'blk\.1\.ffn_norm\.weight +F32 ' "gguf $dt: norms stay f32"
    fi
    if expect_rc 0 "perplexity on the $dt GGUF" perplexity --model "$o" "${ppl_args[@]}"; then
        p=$(ppl_of)
        if [ "$dt" = f32 ]; then
            # the same weights as the f32 safetensors export, and the GGUF's tokenizer gives the same
            # ids: the same perplexity to the last digit
            rel_close "$p" "$ppl_ad" "$F32_MERGE_TOL"
            check $? "merged f32 GGUF perplexity $p not within $F32_MERGE_TOL of base --adapter $ppl_ad"
            checks=$((checks + 1))
            [ "$p" = "${ppl_st_f32:-}" ] || fail "merged f32 GGUF perplexity $p != the f32 safetensors export's ${ppl_st_f32:-}"
        else
            rel_close "$p" "$ppl_ad" 0.05
            check $? "merged $dt GGUF perplexity $p not within 5% of $ppl_ad"
        fi
    fi
done
# the format follows the extension unless --format says otherwise
expect_rc 0 "--format gguf on a path without .gguf" merge --model "$fx" --adapter "$ad" --out "$tmp/plain" --format gguf &&
    { checks=$((checks + 1)); [ -f "$tmp/plain" ] || fail "--format gguf: $tmp/plain is not a file"; }

# --- bad input --------------------------------------------------------------------------------
o="$tmp/bad_out"
expect_rc 2 "missing adapter folder" merge --model "$fx" --adapter "$tmp/no_adapter" --out "$o" &&
    expect_text err 'no_adapter: No such file' "missing adapter is named"
no_leftovers "$o" "missing adapter"
expect_rc 2 "perplexity with a missing adapter" perplexity --model "$fx" --adapter "$tmp/no_adapter" "${ppl_args[@]}" &&
    expect_text err 'no_adapter' "perplexity: missing adapter is named"

# an adapter made for another model: qlora_tiny's (hidden 64) on llama_tiny (hidden 32)
other="${LOQUAT_FIXTURES:-tests/fixtures}/llama_tiny/untied"
expect_rc 2 "adapter of another model" merge --model "$other" --adapter "$ad" --out "$o" &&
    expect_text err 'does not fit the model.*(features|shape|is \()' "shape mismatch is explained"
no_leftovers "$o" "adapter of another model"
expect_rc 2 "perplexity --adapter of another model" perplexity --model "$other" --adapter "$ad" "${ppl_args[@]}" &&
    expect_text err 'does not fit the model' "perplexity: shape mismatch is explained"
expect_rc 2 "generate --adapter of another model" generate --model "$other" --adapter "$ad" --max-tokens 2

expect_rc 2 "nf4 as GGUF" merge --model "$fx" --adapter "$ad" --out "$o.gguf" --dtype nf4 &&
    expect_text err 'GGUF has no NF4' "nf4 + gguf is explained"
no_leftovers "$o.gguf" "nf4 as GGUF"
expect_rc 2 "q8_0 as safetensors" merge --model "$fx" --adapter "$ad" --out "$o" --dtype q8_0 &&
    expect_text err 'GGUF block type' "q8_0 + safetensors is explained"
no_leftovers "$o" "q8_0 as safetensors"

expect_rc 1 "output folder under a missing folder" merge --model "$fx" --adapter "$ad" --out "$tmp/missing/out" &&
    expect_text err 'cannot create' "unwritable output is explained"
no_leftovers "$tmp/missing" "unwritable output"
expect_rc 1 "GGUF under a missing folder" merge --model "$fx" --adapter "$ad" --out "$tmp/missing/m.gguf" &&
    expect_text err 'missing/m\.gguf' "unwritable GGUF is named"
no_leftovers "$tmp/missing" "unwritable GGUF"
printf 'x' >"$tmp/afile"
expect_rc 2 "safetensors output onto a file" merge --model "$fx" --adapter "$ad" --out "$tmp/afile" &&
    expect_text err 'not a folder' "file as output folder is explained"
checks=$((checks + 1))
[ "$(cat "$tmp/afile")" = x ] || fail "the existing file was changed"

harness_done test_cli_merge
