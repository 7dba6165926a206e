#!/usr/bin/env bash
# tests/test_cli.sh: the loquat command line's help, exit codes and hints, and `gradcheck`.
# Run by tools/run_tests.sh with BUILD set to the build directory; exits non-zero if any check fails.
set -u
# shellcheck source=tests/cli_harness.sh
source "$(dirname "$0")/cli_harness.sh"

commands="train qat eval perplexity generate merge quantize dequantize inspect config mem gradcheck"

# top-level help and version
for h in --help -h; do
    if expect_rc 0 "help" "$h"; then
        for c in $commands; do expect_text out "^  $c " "'loquat $h' lists $c"; done
    fi
done
expect_rc 0 "version" --version && expect_text out "^loquat [0-9]" "--version prints the version"
expect_rc 2 "no command" && expect_text err "no command" "no command says so"

# every command's help
for c in $commands; do
    if expect_rc 0 "$c --help" "$c" --help; then
        expect_text out "^usage: loquat $c" "'loquat $c --help' prints the usage"
        expect_text out "--help" "'loquat $c --help' lists its options"
    fi
    expect_rc 0 "$c -h" "$c" -h
done
expect_rc 0 "generate help" generate --help &&
    expect_text out "--prompt TEXT" "generate's help names --prompt" &&
    expect_text out "--model PATH" "generate's help names --model"
expect_rc 0 "quantize help" quantize --help && expect_text out "--format nf4\|fp4\|int8\|int4" "quantize formats"
expect_rc 0 "train help" train --help && expect_text out "\[--set key=value\]\.\.\." "train's --set is repeatable"

# unknown commands and flags: exit 2 with a hint on stderr, nothing on stdout
expect_rc 2 "unknown command" trian x.yaml &&
    expect_text err "unknown command 'trian'" "unknown command is named" &&
    expect_text err "did you mean 'train'\?" "unknown command gets a suggestion" &&
    expect_text err "loquat --help" "unknown command points at --help"
checks=$((checks + 1))
[ -z "$out" ] || fail "unknown command printed to stdout"
expect_rc 2 "unknown command, nothing close" zzzzzzzz
expect_rc 2 "unknown top-level flag" --frobnicate && expect_text err "unknown option '--frobnicate'" "flag named"
expect_rc 2 "unknown command flag" generate --model m.gguf --prompt hi --promt x &&
    expect_text err "did you mean '--prompt'\?" "unknown flag gets a suggestion"
expect_rc 2 "unknown gradcheck flag" gradcheck --trails 2 && expect_text err "did you mean '--trials'\?" "suggestion"
expect_rc 2 "switch given a value" qat c.yaml --compare=yes
expect_rc 2 "bad choice" dequantize in out --dtype f64 && expect_text err "f32\|f16\|bf16" "choices listed"
expect_rc 2 "bad integer" gradcheck --trials 0
expect_rc 2 "bad integer" gradcheck --threads x
expect_rc 2 "bad --set" train c.yaml --set novalue

# missing required arguments
expect_rc 2 "missing CONFIG" train && expect_text err "missing CONFIG.yaml" "missing argument named"
expect_rc 2 "missing --model" generate --prompt hi && expect_text err "--model" "missing option named"
expect_rc 2 "missing --out" merge --model a --adapter b && expect_text err "--out" "missing option named"
expect_rc 2 "missing --format" quantize in out && expect_text err "missing required option --format" "missing --format named"
expect_rc 2 "missing OUT" dequantize in
expect_rc 2 "missing option value" perplexity --model m --data
expect_rc 2 "extra argument" inspect a b

# gradcheck works
if expect_rc 0 "gradcheck --op matmul" gradcheck --op matmul; then
    expect_text out "^matmul +[0-9.]+e[-+][0-9]+ +[0-9]+ " "gradcheck prints a matmul line"
    checks=$((checks + 1))
    n=$(grep -Ec "^[a-z_0-9]+ +[0-9.]+e" <<<"$out")
    [ "$n" -eq 1 ] || fail "gradcheck --op matmul printed $n op lines, want 1"
fi
expect_rc 0 "gradcheck --op=silu with options" gradcheck --op=silu --trials 2 --threads 2 &&
    expect_text out "^silu " "gradcheck prints a silu line"
expect_rc 2 "gradcheck unknown op" gradcheck --op nosuchop && expect_text err "unknown op 'nosuchop'" "op named"
expect_rc 2 "gradcheck misspelt op" gradcheck --op matmull && expect_text err "did you mean 'matmul'\?" "op hint"

# config-driven commands on a config that does not exist: exit 2 naming the file
for args in "train x.yaml" "eval x.yaml" "config x.yaml" "mem x.yaml" "train x.yaml --set a.b=1 --set c=2 --resume" \
    "qat x.yaml" "qat x.yaml --compare --json"; do
    # shellcheck disable=SC2086
    expect_rc 2 "missing config" $args && expect_text err "x\.yaml" "file named"
done

harness_done test_cli.sh
