#!/usr/bin/env bash
# tests/test_cli_mem.sh: `loquat mem` on the tiny QLoRA config (tests/fixtures/qlora_tiny): the
# table, the "estimated total" line, --json's last line (parsed with python3: the parts add up to
# the totals), --set overrides (checkpointing swaps the totals), and bad configs exit 2 naming
# the file and what is wrong.
# Run by tools/run_tests.sh with BUILD set to the build directory; exits non-zero if any check fails.
set -u
fxd="${LOQUAT_FIXTURES:-tests/fixtures}"
# shellcheck source=tests/cli_harness.sh
source "$(dirname "$0")/cli_harness.sh"

# The fixture config leaves output_dir to the caller.
cfg="$tmp/tiny.yaml"
{
    cat "$fxd/qlora_tiny/config.yaml"
    echo "output_dir: $tmp/out"
} >"$cfg"

if expect_rc 0 "mem on the tiny config" mem "$cfg"; then
    expect_text out '^  base weights +[0-9]+\.[0-9] ' "base row"
    expect_text out '^  activations, gradient checkpointing +[0-9]+\.[0-9]' "checkpointed activations row"
    expect_text out '^  total without checkpointing +[0-9]+\.[0-9]' "total row"
    expect_text out '^estimated total [0-9]+ MiB \(gradient_checkpointing: false\)$' "the trainer's line"
fi

# --json: one object on the last line; the parts add up to the totals.
check_json() { # check_json WANT_CKPT
    checks=$((checks + 1))
    if ! tail -n 1 "$tmp/out" | python3 -c '
import json, sys
want_ckpt = sys.argv[1] == "true"
o = json.loads(sys.stdin.read())
parts = ["base", "adapters", "grads", "optimizer", "workspace", "data", "runtime", "mapped"]
for k in parts + ["activations", "activations_ckpt", "total", "total_other", "mem_available"]:
    assert isinstance(o[k], (int, float)), k
common = sum(o[k] for k in parts)
assert o["gradient_checkpointing"] == want_ckpt
assert o["total_no_ckpt"] == common + o["activations"], "no-ckpt total"
assert o["total_ckpt"] == common + o["activations_ckpt"], "ckpt total"
assert o["total"] == (o["total_ckpt"] if want_ckpt else o["total_no_ckpt"]), "total follows the setting"
assert o["activations_ckpt"] < o["activations"], "checkpointing lowers activations"
assert o["adapters"] > 0 and o["optimizer"] == 2 * o["adapters"] and o["grads"] == o["adapters"]
print(round(o["total"] / 1048576))
' "$1" >"$tmp/mib" 2>"$tmp/pyerr"; then
        fail "--json (checkpointing $1): $(cat "$tmp/pyerr")"
        return
    fi
    checks=$((checks + 1))
    grep -q "^estimated total $(cat "$tmp/mib") MiB" "$tmp/out" || fail "--json total does not match the printed line"
}
expect_rc 0 "mem --json" mem "$cfg" --json && check_json false
expect_rc 0 "mem --json --set gradient_checkpointing=true" mem "$cfg" --json --set gradient_checkpointing=true &&
    check_json true

# A larger micro-batch needs more.
run mem "$cfg" --json
small=$(tail -n 1 "$tmp/out")
run mem "$cfg" --json --set micro_batch_size=8 --set sequence_len=64
big=$(tail -n 1 "$tmp/out")
checks=$((checks + 1))
python3 -c 'import json, sys; a, b = (json.loads(x) for x in sys.argv[1:]); assert b["activations"] > 4 * a["activations"]' \
    "$small" "$big" 2>/dev/null || fail "activations grow with micro_batch_size and sequence_len"

# Bad configs: exit 2, the message names the file and the problem.
expect_rc 2 "missing config" mem "$tmp/nope.yaml" && expect_text err 'nope\.yaml' "missing config named"
printf 'base_model: %s\nlora_rr: 4\noutput_dir: %s\n' "$fxd/qlora_tiny" "$tmp/out" >"$tmp/typo.yaml"
expect_rc 2 "unknown key" mem "$tmp/typo.yaml" && expect_text err 'typo\.yaml:2' "unknown key: file:line"
expect_rc 2 "missing base model" mem "$cfg" --set base_model="$tmp/absent.gguf" &&
    expect_text err 'absent\.gguf' "missing model named"
expect_rc 2 "missing dataset" mem "$cfg" --set datasets.0.path="$tmp/absent.jsonl" &&
    expect_text err 'absent\.jsonl' "missing dataset named"
expect_rc 2 "no config" mem

harness_done test_cli_mem
