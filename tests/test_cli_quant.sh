#!/usr/bin/env bash
# tests/test_cli_quant.sh: `loquat quantize` / `loquat dequantize` end to end on a tiny model:
# NF4 / FP4 output against files bitsandbytes wrote (tests/fixtures/quant_tiny, made by
# tools/gen_safetensors_fixtures.py), int8 / int4 round trips, the report, and bad input (exit 2,
# a message naming the file or option, no output file left). Needs no Python.
# Run by tools/run_tests.sh with BUILD set to the build directory; exits non-zero if any check fails.
set -u
fx="${LOQUAT_FIXTURES:-tests/fixtures}/quant_tiny"
# shellcheck source=tests/cli_harness.sh
source "$(dirname "$0")/cli_harness.sh"
# compares two safetensors files tensor by tensor (names, dtypes, shapes, bytes), any order
same="${BUILD:-build}/tests/test_io_safetensors"
if [ ! -x "$same" ]; then
    echo "FAIL: $same (the --same-tensors helper) not found"
    exit 1
fi

check() { # check CONDITION-STATUS DESCRIPTION
    checks=$((checks + 1))
    if [ "$1" -ne 0 ]; then fail "$2"; fi
}

expect_err() { # expect_err PATTERN DESCRIPTION (grep -E on the last stderr)
    checks=$((checks + 1))
    if ! grep -Eq -- "$1" <<<"$err"; then fail "$2: stderr lacks /$1/"; fi
}

no_leftovers() { # no_leftovers FILE DESCRIPTION: FILE absent and no temporary files in its folder
    checks=$((checks + 1))
    local dir
    dir=$(dirname "$1")
    if [ -e "$1" ]; then fail "$2: $1 was left behind"; return; fi
    if [ -d "$dir" ] && ls -A "$dir" | grep -q '\.tmp$'; then fail "$2: temporary file left in $dir"; fi
}

# json_num KEY: the number after "KEY": in the last stdout line (the --json object's top level
# comes before its "tensors" array, so the first match is the overall figure).
json_num() { tail -n 1 <<<"$out" | grep -Eo "\"$1\": [-0-9.e+]+" | head -n 1 | sed 's/.*: //'; }

# in_range X LO HI: LO <= X <= HI (decimal numbers)
in_range() { awk -v x="$1" -v lo="$2" -v hi="$3" 'BEGIN { exit !(x != "" && x + 0 >= lo && x + 0 <= hi) }'; }

for f in float nf4_bnb nf4dq_bnb fp4dq128_bnb nf4_bnb_deq int8_ref; do
    if [ ! -f "$fx/$f.safetensors" ]; then
        echo "FAIL: fixture $fx/$f.safetensors missing (make it with tools/gen_safetensors_fixtures.py)"
        exit 1
    fi
done
model="$fx/float.safetensors"

# --- NF4 / FP4 against bitsandbytes -----------------------------------------------------------
# The dequantized files of loquat's and bitsandbytes' quantizations are written by the same
# writer from tensors of the same names and metadata: byte-identical files mean every
# dequantized weight (and every copied tensor) is bit-identical.
# SQNR ranges: N(0, 1) weights, 4-bit codes scaled by the block's absmax: NF4 about 20.7 dB, FP4
# (E2M1) about 18 dB; a uniform b-bit grid over a row's range gives about 6.02 b + 4.77 - 20 log10(
# peak / rms) dB (int8 per row of 64: ~45 dB; int4 groups of 16 / 8: ~21 / ~25 dB).
for case in "nf4_bnb:19.5:22:nf4" "nf4dq_bnb:19.5:22:nf4 --double-quant" "fp4dq128_bnb:16:19.5:fp4 --block-size 128 --double-quant"; do
    IFS=: read -r ref lo hi spec <<<"$case"
    read -r -a opts <<<"$spec"
    tag="${opts[*]}"
    q="$tmp/q_$ref.safetensors"
    if expect_rc 0 "quantize $tag" quantize "$model" "$q" --format "${opts[@]}" --json; then
        checks=$((checks + 1))
        [ "$(grep -c '^quantized ' <<<"$out")" -eq 3 ] || fail "quantize $tag: want 3 'quantized' lines"
        checks=$((checks + 1))
        [ "$(grep -c '^kept ' <<<"$out")" -eq 4 ] || fail "quantize $tag: want 4 'kept' lines (embed, lm_head, norm, bias)"
        checks=$((checks + 1))
        grep -q '^kept .*lm_head.weight .*skip pattern' <<<"$out" || fail "quantize $tag: lm_head not kept by the default skip list"
        sqnr=$(json_num sqnr_db)
        in_range "$sqnr" "$lo" "$hi"
        check $? "quantize $tag: overall SQNR $sqnr dB outside $lo..$hi"
        eval "sqnr_${ref}=$sqnr"
        checks=$((checks + 1))
        [ "$(tail -n 1 <<<"$out" | grep -o '"name": ' | wc -l)" -eq 3 ] || fail "quantize $tag: --json lists 3 tensors"
        no_leftovers "$tmp/none" "quantize $tag"
        checks=$((checks + 1))
        "$same" --same-tensors "$q" "$fx/$ref.safetensors" 2>"$tmp/err" ||
            fail "quantize $tag: tensors differ from bitsandbytes' ($(head -n 3 "$tmp/err" | tr '\n' ' '))"
        if expect_rc 0 "dequantize loquat's $tag" dequantize "$q" "$tmp/d_ours.safetensors" &&
            expect_rc 0 "dequantize bitsandbytes' $tag" dequantize "$fx/$ref.safetensors" "$tmp/d_bnb.safetensors"; then
            cmp -s "$tmp/d_ours.safetensors" "$tmp/d_bnb.safetensors"
            check $? "$tag: loquat's quantization does not dequantize to bitsandbytes' values (files differ)"
            checks=$((checks + 1))
            "$same" --same-tensors "$tmp/d_bnb.safetensors" "$fx/${ref}_deq.safetensors" --subset 2>"$tmp/err" ||
                fail "$tag: loquat dequantize differs from bitsandbytes' dequantize_4bit ($(head -n 3 "$tmp/err" | tr '\n' ' '))"
        fi
        # the quant-state JSON (a U8 tensor's bytes) is the text bitsandbytes writes, byte for byte
        states() { grep -ao '{"quant_type": [^}]*}' "$1" | sort; }
        checks=$((checks + 1))
        if [ "$(states "$q" | wc -l)" -ne 3 ] || [ "$(states "$q")" != "$(states "$fx/$ref.safetensors")" ]; then
            fail "quantize $tag: quant-state JSON differs from bitsandbytes': $(states "$q" | head -n 1)"
        fi
    fi
done
if [ -n "${sqnr_nf4_bnb:-}" ] && [ -n "${sqnr_nf4dq_bnb:-}" ]; then
    # double quantization only perturbs the scales: it costs well under a dB
    awk -v a="$sqnr_nf4_bnb" -v b="$sqnr_nf4dq_bnb" 'BEGIN { d = a - b; exit !(d > -0.2 && d < 0.5) }'
    check $? "double quant changed SQNR implausibly ($sqnr_nf4_bnb vs $sqnr_nf4dq_bnb dB)"
fi

# dequantize --dtype and the float copies
if expect_rc 0 "dequantize --dtype bf16" dequantize "$fx/nf4_bnb.safetensors" "$tmp/d16.safetensors" --dtype bf16 --json; then
    checks=$((checks + 1))
    grep -q '"dtype": "BF16"' <<<"$(tail -n 1 <<<"$out")" || fail "dequantize --dtype bf16: JSON lacks BF16"
    checks=$((checks + 1))
    [ "$(grep -c '^dequantized .* -> BF16' <<<"$out")" -eq 3 ] || fail "dequantize --dtype bf16: want 3 BF16 tensors"
fi

# --- int8 / int4 ------------------------------------------------------------------------------
# dequantized values against torch's fake quantization with PerChannelMinMaxObserver scales
for case in "int8:42:48:int8" "int8 --asymmetric:42:48:int8asym" "int4 --group-size 16:19:23.5:int4g16" \
    "int4 --group-size 8 --asymmetric:22.5:27:int4g8asym"; do
    IFS=: read -r spec lo hi ref <<<"$case"
    read -r -a opts <<<"$spec"
    q="$tmp/q_int.safetensors"
    if expect_rc 0 "quantize $spec" quantize "$model" "$q" --format "${opts[@]}" --json; then
        sqnr=$(json_num sqnr_db)
        in_range "$sqnr" "$lo" "$hi"
        check $? "quantize $spec: SQNR $sqnr dB outside $lo..$hi"
        if expect_rc 0 "dequantize $spec" dequantize "$q" "$tmp/d_int.safetensors" --dtype f32; then
            checks=$((checks + 1))
            [ "$(grep -c "^dequantized .*${opts[0]}" <<<"$out")" -eq 3 ] || fail "dequantize $spec: want 3 tensors"
            checks=$((checks + 1))
            "$same" --same-tensors "$tmp/d_int.safetensors" "$fx/${ref}_ref.safetensors" --subset 2>"$tmp/err" ||
                fail "$spec: dequantized weights differ from torch's fake quantization ($(head -n 3 "$tmp/err" | tr '\n' ' '))"
        fi
    fi
done

# --- bad input: exit 2, a message naming the file or option, no output --------------------------
o="$tmp/bad_out.safetensors"
expect_rc 2 "missing input" quantize "$tmp/nope.safetensors" "$o" --format nf4 &&
    expect_err "nope.safetensors: cannot open" "missing input is named"
no_leftovers "$o" "missing input"

printf 'hello, I am not a safetensors file\n' >"$tmp/text.safetensors"
expect_rc 2 "not safetensors" quantize "$tmp/text.safetensors" "$o" --format nf4 &&
    expect_err "text.safetensors: header length .* runs past the end" "not-safetensors is named"
no_leftovers "$o" "not safetensors"

# mkst FILE HEADER DATA: an 8-byte little-endian header length, HEADER, then DATA (printf escapes)
mkst() {
    local n=${#2} le="" i
    for i in 0 1 2 3 4 5 6 7; do le+=$(printf '\\x%02x' $(((n >> (8 * i)) & 255))); done
    printf "$le" >"$1"
    printf '%s' "$2" >>"$1"
    printf "$3" >>"$1"
}
mkst "$tmp/corrupt.safetensors" '{"w.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,20]}}' '\x00\x00\x80\x3f\x00\x00\x80\x3f\x00\x00\x80\x3f\x00\x00\x80\x3f'
expect_rc 2 "corrupt header" quantize "$tmp/corrupt.safetensors" "$o" --format nf4 &&
    expect_err "corrupt.safetensors: tensor 'w.weight': data_offsets \[0, 20\]" "corrupt header names file and tensor"
no_leftovers "$o" "corrupt header"

mkst "$tmp/badjson.safetensors" '{"w.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},}' ''
expect_rc 2 "invalid JSON header" quantize "$tmp/badjson.safetensors" "$o" --format nf4 &&
    expect_err "badjson.safetensors: the header is not valid JSON" "invalid JSON is named"

expect_rc 2 "unknown format" quantize "$model" "$o" --format nf5 && expect_err "--format must be one of" "unknown format names the option"
for bs in 48 16 8192 0; do
    expect_rc 2 "block size $bs" quantize "$model" "$o" --format nf4 --block-size "$bs" &&
        expect_err "--block-size" "block size $bs names the option"
done
no_leftovers "$o" "bad block sizes"
expect_rc 2 "group size not dividing" quantize "$model" "$o" --format int4 --group-size 48 &&
    expect_err "--group-size 48 does not divide the rows of tensor 'model.layers.0" "group size names option and tensor"
no_leftovers "$o" "group size not dividing"
expect_rc 2 "block size with int8" quantize "$model" "$o" --format int8 --block-size 64 && expect_err "--block-size applies to nf4" "block size with int8"
expect_rc 2 "group size with nf4" quantize "$model" "$o" --format nf4 --group-size 32 && expect_err "--group-size applies to int8" "group size with nf4"
expect_rc 2 "double quant with int4" quantize "$model" "$o" --format int4 --double-quant && expect_err "--double-quant applies" "double quant with int4"
expect_rc 2 "nothing to quantize" quantize "$model" "$o" --format nf4 --skip '*' && expect_err "no tensor to quantize" "skip everything"
expect_rc 2 "already quantized" quantize "$fx/nf4_bnb.safetensors" "$o" --format nf4 && expect_err "already quantized" "already quantized is named"
expect_rc 2 "dequantize a float file" dequantize "$model" "$o" && expect_err "float.safetensors: no quantized tensors" "float file to dequantize"
expect_rc 2 "dequantize bad dtype" dequantize "$fx/nf4_bnb.safetensors" "$o" --dtype f64 && expect_err "--dtype must be one of" "bad dtype"
no_leftovers "$o" "bad options"

# a quant state that lies about its tensors
mkst "$tmp/badstate.safetensors" '{"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"w.quant_state.bitsandbytes__nf4":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}' '\x01\x02{}'
expect_rc 2 "bad quant state" dequantize "$tmp/badstate.safetensors" "$o" &&
    expect_err "badstate.safetensors: tensor 'w.quant_state.bitsandbytes__nf4': \"dtype\" must be" "bad quant state named"
json='{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [4, 4]}'
mkst "$tmp/badstate2.safetensors" "{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},\"w.quant_state.bitsandbytes__nf4\":{\"dtype\":\"U8\",\"shape\":[${#json}],\"data_offsets\":[2,$((2 + ${#json}))]}}" "\\x01\\x02$json"
expect_rc 2 "codes shorter than the shape" dequantize "$tmp/badstate2.safetensors" "$o" &&
    expect_err "tensor 'w': U8 with 2 elements, want U8 with 8" "short codes named"
# hand-made int4 file: codes 1, 2 packed in one byte (element 0 in the low nibble), scale 1
json4='{"quant_type": "int4", "bits": 4, "symmetric": true, "group_size": 0, "axis": 0, "dtype": "float32", "shape": [1, 2]}'
n4=${#json4}
hdr4="\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},\"w.scale\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[1,5]},\"w.quant_state.loquat__int4\":{\"dtype\":\"U8\",\"shape\":[$n4],\"data_offsets\":[5,$((5 + n4))]}"
mkst "$tmp/onestate.safetensors" "{$hdr4}" "\\x21\\x00\\x00\\x80\\x3f$json4"
expect_rc 0 "hand-made int4 file" dequantize "$tmp/onestate.safetensors" "$tmp/one.safetensors"
checks=$((checks + 1))
[ "$(tail -c 8 "$tmp/one.safetensors" | od -An -tx1 | tr -d ' \n')" = "0000803f00000040" ] ||
    fail "hand-made int4 file: want the floats 1 and 2"
# ... with a second state for the same tensor
mkst "$tmp/twostates.safetensors" "{$hdr4,\"w.quant_state.loquat__int8\":{\"dtype\":\"U8\",\"shape\":[$n4],\"data_offsets\":[$((5 + n4)),$((5 + 2 * n4))]}}" "\\x21\\x00\\x00\\x80\\x3f$json4$json4"
expect_rc 2 "two quant states" dequantize "$tmp/twostates.safetensors" "$o" &&
    expect_err "twostates.safetensors: tensor 'w' has two quant states" "two quant states for one tensor refused"
no_leftovers "$o" "bad quant states"

# an old output file survives a failed run; an unwritable output is a runtime error (exit 1)
printf 'old contents\n' >"$o"
expect_rc 2 "failed run keeps old file" quantize "$model" "$o" --format nf4 --block-size 48
checks=$((checks + 1))
[ "$(cat "$o")" = "old contents" ] || fail "a failed quantize changed the existing output file"
rm -f "$o"
expect_rc 1 "unwritable output" quantize "$model" "$tmp/no/such/dir/out.safetensors" --format nf4 &&
    expect_err "no/such/dir/out.safetensors: cannot create a temporary file" "unwritable output is named"
no_leftovers "$tmp/no/such/dir/out.safetensors" "unwritable output"

harness_done test_cli_quant
