#!/usr/bin/env bash
# tests/test_cli_config.sh: `loquat config` end to end: the demo config resolves (exit 0) and its
# printed form reads back to the same config; --set overrides; --json is one JSON object; bad
# configs exit 2 with a message naming file:line and the key. Needs python3 (stdlib json) only.
# Run by tools/run_tests.sh with BUILD set to the build directory; exits non-zero if any check fails.
set -u
# shellcheck source=tests/cli_harness.sh
source "$(dirname "$0")/cli_harness.sh"
demo="$(cd "$(dirname "$0")/.." && pwd)/configs/smollm2-austen-qlora.yaml"
# PyYAML from the fixture generators' environment, if it is there (the check is skipped without)
venv_py="${LOQUAT_CACHE:-$HOME/.cache/loquat}/venv/bin/python"
export LOQUAT_CACHE="$tmp/cache"

check() { # check CONDITION-STATUS DESCRIPTION
    checks=$((checks + 1))
    if [ "$1" -ne 0 ]; then fail "$2"; fi
}

# --- the demo config ------------------------------------------------------------------------------
if expect_rc 0 "demo config" config "$demo"; then
    expect_text out "^lora_r: 16 " "demo: lora_r"
    expect_text out "^base_model: \"$tmp/cache/models/SmolLM2-135M-Instruct.Q4_1.gguf\"" "demo: base_model expanded"
    expect_text out "^lora_target_modules: all-linear " "demo: all-linear"
    expect_text out "^datasets: \[\{path: \"$tmp/cache/data/austen/northangerabbey.txt\", type: text\}\]" "demo: datasets"
    expect_text out "^learning_rate: 0.0003 " "demo: learning_rate"
    expect_text out "^threads: 0 " "demo: last key"
    # the printed config is itself a config that prints the same
    grep -v '^# ' <<<"$out" >"$tmp/resolved.yaml"
    first=$(grep -v '^# ' <<<"$out")
    if expect_rc 0 "printed config reads back" config "$tmp/resolved.yaml"; then
        checks=$((checks + 1))
        [ "$(grep -v '^# ' <<<"$out")" = "$first" ] || fail "printed config reads back: a different config"
    fi
fi

# --- --set -----------------------------------------------------------------------------------------
if expect_rc 0 "--set" config "$demo" --set lora_r=8 --set 'lora_target_modules=[q_proj,v_proj]' \
    --set datasets.0.path=/x/y.jsonl --set datasets.0.type=completion --set learning_rate=; then
    expect_text out "^lora_r: 8 " "--set lora_r"
    expect_text out "^lora_target_modules: \[q_proj, v_proj\] " "--set a list"
    expect_text out "^datasets: \[\{path: \"/x/y.jsonl\", type: completion\}\]" "--set nested keys"
    expect_text out "^learning_rate: 0.0002 " "--set key= restores the default"
fi
expect_rc 2 "--set unknown key" config "$demo" --set lora_rr=8 &&
    expect_text err "--set lora_rr=8: unknown key 'lora_rr' \(did you mean 'lora_r'\?\)" "--set unknown key: message"
expect_rc 2 "--set bad value" config "$demo" --set micro_batch_size=0 &&
    expect_text err "--set micro_batch_size=0: key 'micro_batch_size': expected an integer" "--set bad value: message"

# --- --json ----------------------------------------------------------------------------------------
if expect_rc 0 "--json" config "$demo" --json; then
    checks=$((checks + 1))
    if ! python3 -c '
import json, sys
c = json.load(sys.stdin)
assert c["lora_r"] == 16 and c["lora_alpha"] == 32 and c["seed"] == 42, c
assert c["lora_target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
assert c["datasets"][0]["type"] == "text" and c["lora_model_dir"] is None
assert c["load_in_4bit"] is True and c["learning_rate"] == 3e-4 and len(c) == 45, len(c)
' <<<"$out"; then
        fail "--json: not the demo config as one JSON object"
    fi
fi

# --- what a real YAML reader (PyYAML) makes of our files ---------------------------------------------
# The printed config must mean to PyYAML exactly what --json says, and every value the demo file
# gives (other than paths, which we expand) must be what loquat read.
if [ -x "$venv_py" ] && "$venv_py" -c 'import yaml' 2>/dev/null; then
    run config "$demo" --json
    echo "$out" >"$tmp/demo.json"
    run config "$demo"
    echo "$out" >"$tmp/demo.out.yaml"
    checks=$((checks + 1))
    if ! "$venv_py" - "$demo" "$tmp/demo.out.yaml" "$tmp/demo.json" <<'PY'; then
import json, sys, yaml
src, printed, js = sys.argv[1:]
want = json.load(open(js))
def norm(d):
    d = dict(d)
    if d.get("lora_target_modules") == "all-linear":
        d["lora_target_modules"] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return d
got = norm(yaml.safe_load(open(printed)))
assert got == want, {k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)}
paths = {"base_model", "output_dir", "lora_model_dir", "dataset_prepared_path", "resume_from_checkpoint"}
for k, v in norm(yaml.safe_load(open(src))).items():
    if k in paths or v is None:
        continue
    if k in ("datasets", "test_datasets"):
        assert [e["type"] for e in v] == [e["type"] for e in want[k]], k
        continue
    assert v == want[k], (k, v, want[k])
PY
        fail "PyYAML reads the demo or the printed config differently from loquat"
    fi
else
    echo "SKIP: PyYAML cross-check ($venv_py with yaml not found; tools/pyenv.sh makes it)"
fi

# --- bad configs: exit 2, file:line and the key ------------------------------------------------------
base='base_model: m.gguf
datasets:
  - path: d.txt
    type: text
output_dir: out'
bad() { # bad NAME EXTRA-YAML PATTERN
    printf '%s\n%s\n' "$base" "$2" >"$tmp/$1.yaml"
    expect_rc 2 "bad config $1" config "$tmp/$1.yaml" && expect_text err "$3" "bad config $1: message"
}
bad typo "lora_rr: 8" "$tmp/typo.yaml:6: unknown key 'lora_rr' \(did you mean 'lora_r'\?\)"
bad type "learning_rate: abc" "$tmp/type.yaml:6: key 'learning_rate': expected a positive number, got 'abc'"
bad int "lora_r: 1.5" "$tmp/int.yaml:6: key 'lora_r': expected an integer"
bad dup $'lora_r: 4\nlora_r: 8' "$tmp/dup.yaml:7: duplicate key 'lora_r' \(first given at line 6\)"
bad enum "lr_scheduler: cosin" "$tmp/enum.yaml:6: key 'lr_scheduler': expected one of constant, linear, cosine, got 'cosin'"
bad tab $'lora_r: 4\n\tlora_alpha: 8' "$tmp/tab.yaml:7: YAML syntax error"
bad native "base_quant: native" "$tmp/native.yaml:6: key 'base_quant'"
bad block "quant_block_size: 100" "$tmp/block.yaml:6: key 'quant_block_size'"
printf 'base_model: m\ndatasets:\n  - path: d\noutput_dir: o\n' >"$tmp/notype.yaml"
expect_rc 2 "dataset without type" config "$tmp/notype.yaml" &&
    expect_text err "$tmp/notype.yaml:3: key 'datasets.0.type' is required" "dataset without type: message"
printf 'base_model: m\noutput_dir: o\n' >"$tmp/nodata.yaml"
expect_rc 2 "missing datasets" config "$tmp/nodata.yaml" &&
    expect_text err "$tmp/nodata.yaml: missing required key 'datasets'" "missing datasets: message"
: >"$tmp/empty.yaml"
expect_rc 2 "empty config" config "$tmp/empty.yaml" && expect_text err "empty.yaml: the config is empty" "empty: message"
expect_rc 2 "missing file" config "$tmp/nope.yaml" && expect_text err "nope.yaml" "missing file: message"
expect_rc 2 "no config" config

harness_done test_cli_config.sh
