# tests/cli_harness.sh: shared by the tests/test_*.sh suites (sourced, not run): finds the CLI,
# runs it keeping stdout / stderr / exit code, counts checks and failures.
# Sets: bin (absolute path of loquat), tmp (a scratch folder removed on exit), checks, failures.
bin="${BUILD:-build}/loquat"
if [ ! -x "$bin" ]; then
    echo "FAIL: $bin not found or not executable"
    exit 1
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
checks=0

# run ARGS...: runs the CLI, keeping stdout, stderr and the exit code in $out, $err, $rc.
run() {
    "$bin" "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
    out=$(cat "$tmp/out")
    err=$(cat "$tmp/err")
}

fail() {
    failures=$((failures + 1))
    echo "FAIL: $*"
    echo "  stdout: $(tail -c 600 "$tmp/out")"
    echo "  stderr: $(head -c 600 "$tmp/err")"
}

# expect_rc CODE DESCRIPTION ARGS...: runs loquat ARGS and checks its exit code.
expect_rc() {
    local want=$1 what=$2
    shift 2
    checks=$((checks + 1))
    run "$@"
    if [ "$rc" -ne "$want" ]; then fail "$what: 'loquat $*' exited $rc, want $want"; return 1; fi
    return 0
}

# expect_text out|err PATTERN DESCRIPTION: grep -E on the last run's stdout or stderr.
expect_text() {
    local where=$1 pat=$2 what=$3 text
    checks=$((checks + 1))
    if [ "$where" = out ]; then text=$out; else text=$err; fi
    if ! grep -Eq -- "$pat" <<<"$text"; then fail "$what: std$where lacks /$pat/"; return 1; fi
    return 0
}

# harness_done NAME: prints the tally; the suite's exit status.
harness_done() {
    echo "$1: $checks checks, $failures failed"
    [ "$failures" -eq 0 ]
}
