#!/usr/bin/env bash
# bench/train.sh: QLoRA training steps of loquat (bench/bench_train.c) beside PyTorch + PEFT
# (bench/peer_lora.py) on the same model, batch and settings, in one run: each configuration in its
# own process, rounds alternating A B A B, then medians and ratios as a table.
#
#   bench/train.sh [--rounds 2] [--steps 3] [--warmup 2] [--threads 2] [--batch 4] [--seq 256] [--r 16]
#                  [--peer fp32,nf4] [--ckpt 0,1]
#   BUILD=build/x bench/train.sh        build elsewhere (default: build)
#
# Configurations: loquat with gradient checkpointing off and on (--ckpt), the peer with an fp32 base
# loaded from the GGUF and with bitsandbytes' NF4 base (--peer; nf4 is skipped with a note if
# bitsandbytes' CPU 4-bit path fails here). Every run prints one JSON line; all of them are kept in
# $OUT (default /tmp/loquat-bench-train.jsonl) and the table is made from that file.
#
# Environment it sets unless you set it yourself (printed): OMP_NUM_THREADS = threads (both sides);
# OPENBLAS_CORETYPE = SkylakeX / Haswell on a CPU with AVX-512F / AVX2 (OpenBLAS 0.3.21 takes some
# virtual CPUs for a Prescott; the loquat CLI fixes this itself, see train/main.c, bench binaries
# do not). PyTorch uses its own bundled BLAS and ignores it.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
rounds=2 steps=3 warmup=2 threads=2 batch=4 seq=256 r=16 peers=fp32,nf4 ckpts=0,1
while [ $# -gt 0 ]; do
    case "$1" in
    --rounds) rounds=$2 ;; --steps) steps=$2 ;; --warmup) warmup=$2 ;; --threads) threads=$2 ;;
    --batch) batch=$2 ;; --seq) seq=$2 ;; --r) r=$2 ;; --peer) peers=$2 ;; --ckpt) ckpts=$2 ;;
    *) echo "usage: bench/train.sh [--rounds N] [--steps N] [--warmup N] [--threads N] [--batch B] [--seq T] [--r R] [--peer fp32,nf4] [--ckpt 0,1]" >&2; exit 2 ;;
    esac
    shift 2
done
make -s BUILD="$build" bench >&2
py=$(tools/pyenv.sh | tail -n 1)
model=$(tools/fetch_model.sh | tail -n 1)

flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
    if grep -qw avx512f <<<"$flags"; then export OPENBLAS_CORETYPE=SkylakeX
    elif grep -qw avx2 <<<"$flags"; then export OPENBLAS_CORETYPE=Haswell
    fi
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads}
out=${OUT:-/tmp/loquat-bench-train.jsonl}
: >"$out"

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit="$commit+uncommitted"; fi
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc --all) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, $(. /etc/os-release && echo "$PRETTY_NAME")"
echo "commit: $commit; model: $model"
echo "settings: batch $batch x seq $seq, LoRA r $r alpha $((2 * r)) dropout 0.05 all-linear, AdamW, $threads threads, $warmup warm-up + $steps timed steps, $rounds rounds"
echo "OpenBLAS: $(pkg-config --modversion openblas 2>/dev/null || echo '?'), OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}, OMP_NUM_THREADS=$OMP_NUM_THREADS, OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-default}"
echo "peer: $("$py" -c 'import torch, transformers, peft, bitsandbytes as b; print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, bitsandbytes {b.__version__}")' 2>/dev/null)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

common=(--batch "$batch" --seq "$seq" --r "$r" --steps "$steps" --warmup "$warmup" --threads "$threads")
run() { # label, command...: one JSON line (tagged with the label) into $out, progress to stderr
    local label=$1
    shift
    local line
    if line=$("$@" 2>/tmp/loquat-bench-train.err | tail -n 1) && [ -n "$line" ]; then
        echo "${line%\}}, \"label\": \"$label\"}" >>"$out"
        echo "  $label: $(sed -n 's/.*"tokens_per_s": \([0-9.]*\).*"train_peak_rss_mb": \([0-9.-]*\).*/\1 tokens\/s, training peak RSS \2 MB/p' <<<"$line")" >&2
    else
        echo "  $label: FAILED: $(tail -n 3 /tmp/loquat-bench-train.err | tr '\n' ' ')" >&2
    fi
}
for ((i = 1; i <= rounds; i++)); do
    echo "round $i/$rounds" >&2
    for c in ${ckpts//,/ }; do
        run "loquat nf4 ckpt=$c" "$build/bench/bench_train" --model "$model" --checkpoint "$c" "${common[@]}"
    done
    for p in ${peers//,/ }; do
        run "pytorch+peft $p" "$py" bench/peer_lora.py --model "$model" --base "$p" "${common[@]}"
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
"$py" - "$out" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r["label"], []).append(r)
# medians over the runs of each configuration; tokens/s from the median step time (not a median of
# rates, which with an even number of runs would not match the step time shown)
med = {k: {f: statistics.median(x[f] for x in v) for f in ("step_s_median", "train_peak_rss_mb", "peak_rss_mb", "weight_mb")} | {"n": len(v)} for k, v in by.items()}
for k, v in by.items():
    med[k]["tokens_per_s"] = v[0]["batch"] * v[0]["seq"] / med[k]["step_s_median"]
peer = "pytorch+peft fp32" if "pytorch+peft fp32" in med else next((k for k in med if k.startswith("pytorch")), None)
print(f"| configuration | runs | s / step | tokens/s | training peak RSS MB | process peak RSS MB | weights MB | tokens/s vs {peer or '-'} | peak RSS vs {peer or '-'} |")
print("|---|---|---|---|---|---|---|---|---|")
for k, m in med.items():
    rt = f"{m['tokens_per_s'] / med[peer]['tokens_per_s']:.2f}x" if peer else "-"
    rm = f"{m['train_peak_rss_mb'] / med[peer]['train_peak_rss_mb']:.2f}x" if peer else "-"
    print(f"| {k} | {m['n']} | {m['step_s_median']:.2f} | {m['tokens_per_s']:.1f} | {m['train_peak_rss_mb']:.0f} | {m['peak_rss_mb']:.0f} | {m['weight_mb']:.0f} | {rt} | {rm} |")
EOF
