#!/usr/bin/env bash
# tests/test_cli_inspect.sh: `loquat inspect` on a GGUF file gguf-py wrote and a safetensors file
# the safetensors package wrote (text and --json), format told by magic not extension, HDF5 (a file
# tests/test_hdf5_inspect writes),
# bad files exit 2 with a message naming the file. Needs no Python (JSON checked with grep).
# Run by tools/run_tests.sh with BUILD set to the build directory; exits non-zero if any check fails.
set -u
fxd="${LOQUAT_FIXTURES:-tests/fixtures}"
# shellcheck source=tests/cli_harness.sh
source "$(dirname "$0")/cli_harness.sh"

has() { # has PATTERN DESCRIPTION (grep -E on the last stdout)
    checks=$((checks + 1))
    if ! grep -Eq -- "$1" <<<"$out"; then fail "$2: stdout lacks /$1/"; fi
}

has_err() {
    checks=$((checks + 1))
    if ! grep -Eq -- "$1" <<<"$err"; then fail "$2: stderr lacks /$1/"; fi
}

g="$fxd/gguf/all_types.gguf"
st="$fxd/st_ref.safetensors"

# --- GGUF, text
if expect_rc 0 "inspect gguf" inspect "$g"; then
    has 'GGUF version 3, alignment 32' "gguf header"
    has '^  general\.architecture +string +"llama"$' "string kv"
    has '^  test\.u64 +uint64 +9223372036854775813$' "uint64 kv exact"
    has '^  test\.i8 +int8 +-100$' "int8 kv"
    has '^  test\.f32 +float32 +3\.25$' "float32 kv"
    has '^  test\.bool +bool +true$' "bool kv"
    has '^  test\.arr_str +array\[string\] +\["a", "", ".*", "tok en", ".*the"\] \(5 elements\)$' "string array"
    has '^  test\.arr_f32 +array\[float32\] +\[-3, -2\.5, -2, -1\.5, -1, -0\.5, 0, 0\.5, \.\.\.\] \(20 elements\)$' "long array abbreviated"
    has '^  q4k\.weight +Q4_K +\[2, 256\] +288$' "q4_K tensor row (shape outermost first)"
    has '^  attn\.bias +F32 +\[2, 3, 4\] +96$' "3-D tensor row"
    has '^  q8\.weight +Q8_0 +\[2, 64\] +136$' "q8_0 row"
    has '^total: 7 tensors, 831 parameters, 700 bytes$' "gguf totals"
    checks=$((checks + 1))
    [ "$(grep -c '^  test\.' <<<"$out")" -eq 25 ] || fail "gguf: want 25 test.* keys listed"
fi

# --- GGUF, JSON: one line, one object
if expect_rc 0 "inspect gguf --json" inspect "$g" --json; then
    checks=$((checks + 1))
    [ "$(wc -l <"$tmp/out")" -eq 1 ] || fail "gguf --json: want one line"
    has '^\{"file":".*all_types\.gguf","format":"gguf","version":3,"alignment":32,' "json header"
    has '\{"key":"test\.u64","type":"uint64","value":9223372036854775813\}' "json uint64 exact"
    has '\{"key":"test\.arr_f32","type":"array","elem_type":"float32","length":20,"value":\[-3,-2\.5,-2,-1\.5,-1,-0\.5,0,0\.5\],"truncated":true\}' "json long array"
    has '\{"name":"q4k\.weight","dtype":"Q4_K","loadable":true,"shape":\[2,256\],"params":512,"bytes":288\}' "json tensor"
    has '"tensor_count":7,"parameter_count":831,"total_bytes":700\}$' "json totals"
fi

# --- the format is told by the magic, not the extension
cp "$g" "$tmp/model.safetensors"
expect_rc 0 "gguf named .safetensors" inspect "$tmp/model.safetensors" && has 'GGUF version 3' "gguf by magic"
cp "$st" "$tmp/model.gguf"
expect_rc 0 "safetensors named .gguf" inspect "$tmp/model.gguf" && has ': safetensors$' "safetensors by magic"

# --- safetensors
if expect_rc 0 "inspect safetensors" inspect "$st"; then
    has '^  source +string +"safetensors ' "safetensors metadata"
    has '^  f32 +F32 +\[2, 3, 4\] +96$' "safetensors f32 row"
    has '^  bool +BOOL +\[5\] +5  \(unsupported by loquat\)$' "unsupported dtype flagged"
    has '^total: 14 tensors, 92 parameters, 274 bytes$' "safetensors totals"
fi
if expect_rc 0 "inspect safetensors --json" inspect "$st" --json; then
    has '"format":"safetensors"' "st json format"
    has '\{"name":"bf16","dtype":"BF16","loadable":true,"shape":\[5,3\],"params":15,"bytes":30\}' "st json tensor"
    has '"tensor_count":14,"parameter_count":92,"total_bytes":274\}$' "st json totals"
fi

# --- bad files: exit 2, one message naming the file
expect_rc 2 "missing file" inspect "$tmp/nope.gguf" && has_err "$tmp/nope.gguf: cannot open" "missing file message"
head -c 100 "$g" >"$tmp/trunc.gguf"
expect_rc 2 "truncated gguf" inspect "$tmp/trunc.gguf" && has_err "trunc\.gguf: .*(truncated|cannot fit)" "truncated gguf message"
checks=$((checks + 1))
[ -s "$tmp/out" ] && fail "truncated gguf printed to stdout"
printf 'GGUF\x07\x00\x00\x00' >"$tmp/v7.gguf"
head -c 40 /dev/zero >>"$tmp/v7.gguf"
expect_rc 2 "gguf version 7" inspect "$tmp/v7.gguf" && has_err "v7\.gguf: GGUF version 7 is not supported" "version message"
printf 'hello world, not a model' >"$tmp/junk.bin"
expect_rc 2 "junk file" inspect "$tmp/junk.bin" && has_err "junk\.bin: " "junk message"
expect_rc 2 "a directory" inspect "$tmp" && has_err "$tmp: " "directory message"
checks=$((checks + 1))
[ "$(wc -l <"$tmp/err")" -eq 1 ] || fail "bad file: want a one-line message"
expect_rc 2 "no FILE" inspect && has_err "missing FILE" "usage message"

# --- HDF5: a file tests/test_hdf5_inspect writes with the HDF5 C library
h5w="${BUILD:-build}/tests/test_hdf5_inspect"
checks=$((checks + 1))
if ! "$h5w" --write "$tmp/ckpt.bin" 2>"$tmp/err"; then
    fail "could not write the HDF5 fixture with $h5w"
else
    if expect_rc 0 "hdf5 by magic" inspect "$tmp/ckpt.bin"; then
        has 'ckpt\.bin: HDF5$' "hdf5 header"
        has '^  /model/layer0 +group$' "hdf5 group"
        has '^  /model/layer0/weight +float32 +\[2, 3\] +24$' "hdf5 dataset row"
        has '^  /model@note +string +scalar +"say \\"hi\\""$' "hdf5 string attribute"
        has '^  /@version +int64 +scalar +3$' "hdf5 int attribute"
        has '^  /model/layer0/weight@dims +int32 +\[4\] +\[7, -8, 9, 10\]$' "hdf5 array attribute"
        has '^total: 3 tensors, 14 parameters, 60 bytes$' "hdf5 totals"
    fi
    if expect_rc 0 "hdf5 --json" inspect "$tmp/ckpt.bin" --json; then
        checks=$((checks + 1))
        [ "$(wc -l <"$tmp/out")" -eq 1 ] || fail "hdf5 --json: want one line"
        has '"format":"hdf5"' "hdf5 json format"
        has '\{"object":"/model","name":"lr","dtype":"float64","shape":\[\],"value":0\.25\}' "hdf5 json attribute"
        has '\{"name":"/model/layer0/weight","dtype":"float32","loadable":true,"shape":\[2,3\],"params":6,"bytes":24\}' "hdf5 json dataset"
        has '"tensor_count":3,"parameter_count":14,"total_bytes":60\}$' "hdf5 json totals"
    fi
    head -c 1000 "$tmp/ckpt.bin" >"$tmp/cut.h5"
    expect_rc 2 "truncated hdf5" inspect "$tmp/cut.h5" && has_err "cut\.h5: HDF5 .*truncated file" "truncated hdf5 message"
    checks=$((checks + 1))
    [ "$(wc -l <"$tmp/err")" -eq 1 ] || fail "truncated hdf5: want a one-line message (HDF5's own error stack silenced)"
fi
printf '\x89HDF\r\n\x1a\n' >"$tmp/sig.bin"
expect_rc 2 "hdf5 signature only" inspect "$tmp/sig.bin" && has_err "sig\.bin: " "hdf5 signature message"
: >"$tmp/empty.h5"
expect_rc 2 "empty .h5" inspect "$tmp/empty.h5" && has_err "empty\.h5: not an HDF5 file" "empty h5 message"

# --- help
expect_rc 0 "inspect --help" inspect --help && has '^usage: loquat inspect FILE \[--json\]$' "usage line"

if [ "$failures" -ne 0 ]; then
    echo "test_cli_inspect: $failures of $checks checks failed"
    exit 1
fi
echo "test_cli_inspect: all $checks checks passed"
