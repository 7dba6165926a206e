#!/usr/bin/env bash
# bench/gpu.sh: the one script a GPU machine runs: the CUDA parity suites, the NF4 dequant and QLoRA
# linear benchmarks, and QLoRA training steps of loquat beside PyTorch + PEFT (A B A B), then a table.
#
#   bench/gpu.sh [--bundle .gpu/loquat-gpu.tar.xz] [--budget 480] [--rounds 3] [--steps 8] [--warmup 3]
#                [--math tf32[,bf16][,bf161s][,bf16nf][,bf16fused][,bf16flash][,bf16flash1s][,bf16flashnf]]
#                [--checkpoint 0[,1]] [--dry-run]
#                [--only parity,cli,dequant,linear,135m,1b,profile[,ncu][,sanitize]]
#   bench/gpu.sh --build ...     on a machine with loquat's libraries: builds in place (make CUDA=1)
#
# Default: unpacks the bundle tools/gpu_bundle.sh made (binaries + the shared libraries a bare GPU
# machine lacks) and runs from it, with the bundle's lib/ on LD_LIBRARY_PATH for loquat's binaries
# only (never exported: PyTorch keeps its own libraries). Models: bench/smollm2-135m.json (SmolLM2-135M:
# 576 hidden, 30 layers, 9 / 3 heads, vocab 49152, tied; batch 8 x 512) and bench/llama-1b.json (a
# ~1.04B Llama: Llama-3.2-1B's body, hidden 2048, intermediate 8192, 16 layers, 32 / 8 heads, with a
# 32000 vocab, tied; batch 4 x 512): random init, loquat's base NF4 (double quant, block 64), the
# peer's bf16; LoRA r 16 alpha 32 on all 7 projections; AdamW.
# Every part runs under `timeout`, clipped to what is left of --budget seconds (whole script), so a
# hang costs one part, not the lease; a part that no longer fits is skipped and says so. Logs and
# results.jsonl go to $OUT (else /tmp/loquat-gpu-<time>). The table comes LAST on stdout. Exit 0
# when every part ran and the parity suites passed, else 1.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
t_start=$(date +%s)

mode=bundle bundle=.gpu/loquat-gpu.tar.xz budget=480 rounds=3 steps=8 warmup=3 maths=tf32,bf16,bf161s,bf16nf,bf16flash ckpt=0 dry=0
only=parity,cli,dequant,linear,135m,1b,profile
usage() {
    sed -n '5,9p' "$0" | sed 's/^# *//' >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case "$1" in
    --build) mode=build; shift; continue ;;
    --dry-run) dry=1; shift; continue ;;
    --bundle) bundle=${2:?} ;; --budget) budget=${2:?} ;; --rounds) rounds=${2:?} ;; --steps) steps=${2:?} ;;
    --warmup) warmup=${2:?} ;; --math) maths=${2:?} ;; --checkpoint) ckpt=${2:?} ;; --only) only=${2:?} ;;
    *) usage ;;
    esac
    shift 2
done
py=${PYTHON:-python3}
out=${OUT:-/tmp/loquat-gpu-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$out/logs"
results=$out/results.jsonl parity=$out/parity.txt status=$out/parts.txt
: >"$results"; : >"$parity"; : >"$status"
want() { [[ ",$only," == *",$1,"* ]]; }
# sources a build depends on, hashed (tools/gpu_bundle.sh writes the same into MANIFEST)
src_hash() {
    find core quant autograd lora models io datasets train bench tests/cuda \( -name '*.c' -o -name '*.cu' -o -name '*.h' \) \
        -type f 2>/dev/null | LC_ALL=C sort | xargs sha256sum Makefile | sha256sum | cut -c1-16
}
elapsed() { echo $(($(date +%s) - t_start)); }
log() { printf '[%4ss] %s\n' "$(elapsed)" "$*"; }

# --- the binaries: from the bundle (default) or built here (--build) --------------------------------
lqenv=(env)
if [ "$mode" = build ]; then
    build=${BUILD:-build/release-cuda}
    log "building: make CUDA=1 BUILD=$build all bench + tests/cuda"
    if [ "$dry" = 0 ]; then
        make -s CUDA=1 BUILD="$build" -j"${JOBS:-$(nproc)}" all bench >"$out/logs/build.log" 2>&1 ||
            { log "BUILD FAILED (see $out/logs/build.log)"; tail -n 20 "$out/logs/build.log"; exit 1; }
        for src in tests/cuda/test_*.c tests/cuda/test_*.cu; do
            [ -e "$src" ] || continue
            make -s CUDA=1 BUILD="$build" "$build/tests/cuda/$(basename "${src%.*}")" >>"$out/logs/build.log" 2>&1 ||
                log "WARNING: $src does not build"
        done
    fi
    bench_bin=$build/bench/bench_gpu lin_bin=$build/bench/bench_gpu_linear test_dir=$build/tests/cuda cfg_dir=bench
    manifest="commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') (built in place)"
else
    work=${LOQUAT_GPU_DIR:-/tmp/loquat-gpu-bundle}
    [ -f "$bundle" ] || { log "no bundle at $bundle: run tools/gpu_bundle.sh here first (or --build)"; exit 1; }
    if ! { rm -rf "$work" && mkdir -p "$work" && tar -C "$work" -xJf "$bundle"; }; then
        log "cannot unpack $bundle"
        exit 1
    fi
    root=$work/loquat-gpu
    bench_bin=$root/bin/bench_gpu lin_bin=$root/bin/bench_gpu_linear test_dir=$root/tests/cuda cfg_dir=$root/bench
    lqenv=(env "LD_LIBRARY_PATH=$root/lib:${CUDA_HOME:-/usr/local/cuda}/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
    manifest=$(sed -n 's/^commit: /commit /p' "$root/MANIFEST")
    log "bundle $bundle unpacked into $root ($manifest)"
    sed 's/^/    /' "$root/MANIFEST"
    # the same hash tools/gpu_bundle.sh wrote: a bundle built from other sources than this tree's
    here=$(src_hash)
    if grep -q "^source: $here\$" "$root/MANIFEST"; then log "bundle built from this tree's sources ($here)"
    else log "WARNING: the bundle was built from OTHER sources than this tree's (this tree: $here): rebuild it"; fi
fi
tests=()
for t in "$test_dir"/test_*; do [ -x "$t" ] && tests+=("$t"); done

# --- what machine ------------------------------------------------------------------------------------
echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "gpu: $(nvidia-smi -L 2>&1 | head -n 4 | tr '\n' ' ')"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv,noheader 2>&1 |
    sed 's/^/gpu details: /' | head -n 4
echo "host: $(nproc) cores, $(ldd --version 2>&1 | head -n 1), $(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-?}")"
echo "settings: budget ${budget} s, rounds $rounds, $warmup warm-up + $steps timed steps, loquat cuda_math $maths, checkpoint $ckpt, logs in $out"
# a library the loader cannot find shows here at once, not as a cryptic failure later
for b in "$bench_bin" "$lin_bin" "${tests[@]}"; do
    [ -e "$b" ] || { log "MISSING: $b"; continue; }
    miss=$("${lqenv[@]}" ldd "$b" 2>&1 | grep -i 'not found' | tr -s ' \t' ' ')
    [ -z "$miss" ] || log "WARNING: $(basename "$b") cannot load:$miss"
done

# --- running one part ---------------------------------------------------------------------------------
# part NAME LIMIT CMD...: runs CMD with timeout min(LIMIT, what the budget has left minus a reserve
# for the table); stdout / stderr into logs/NAME.{out,err}; JSON lines ({"bench": ...}) of its stdout
# go to results.jsonl tagged with NAME; one line per part in parts.txt: NAME rc seconds.
reserve=15
part() {
    local name=$1 limit=$2
    shift 2
    local left=$((budget - $(elapsed) - reserve))
    [ "$limit" -lt "$left" ] || limit=$left
    if [ "$dry" = 1 ]; then
        log "$name (timeout ${limit}s): $*"
        echo "$name dry 0" >>"$status"
        return 0
    fi
    if [ "$limit" -lt 10 ]; then
        log "$name: SKIPPED: the budget is spent"
        echo "$name budget 0" >>"$status"
        return 124
    fi
    local t0 rc
    t0=$(date +%s)
    timeout -k 5 "$limit" "$@" >"$out/logs/$name.out" 2>"$out/logs/$name.err"
    rc=$?
    local dt=$(($(date +%s) - t0))
    grep '^{"bench"' "$out/logs/$name.out" | sed "s/}\$/, \"part\": \"$name\"}/" >>"$results"
    echo "$name $rc $dt" >>"$status"
    case $rc in
    0) log "$name: ok (${dt}s)" ;;
    77) log "$name: SKIPPED: $(grep -h 'SKIPPED' "$out/logs/$name.out" "$out/logs/$name.err" | head -n 1)" ;;
    124 | 137) log "$name: TIMED OUT after ${dt}s (limit ${limit}s); last words: $(tail -n 2 "$out/logs/$name.err" | tr '\n' ' ')" ;;
    *) log "$name: FAILED (exit $rc, ${dt}s): $(tail -n 3 "$out/logs/$name.err" "$out/logs/$name.out" 2>/dev/null | grep -v '^==>' | tr '\n' ' ' | cut -c1-400)" ;;
    esac
    return $rc
}

# --- 1. parity suites ---------------------------------------------------------------------------------
if want parity; then
    if [ ${#tests[@]} -eq 0 ]; then
        log "parity: no suites in $test_dir"
        echo "none 1 0 0 0 - -" >>"$parity"
    fi
    parity_end=$(($(elapsed) + 150))
    for t in "${tests[@]}"; do
        name=$(basename "$t")
        lim=$((parity_end - $(elapsed)))
        [ "$lim" -le 120 ] || lim=120
        [ "$lim" -ge 10 ] || lim=0
        part "parity-$name" "$lim" "${lqenv[@]}" LOQUAT_CUDA_REQUIRED=1 "$t"
        rc=$?
        [ "$dry" = 1 ] && continue
        o=$out/logs/parity-$name.out
        [ -f "$o" ] || { echo "$name $rc 0 0 0 - -" >>"$parity"; continue; }
        p=$(cat "$o" "${o%.out}.err" 2>/dev/null | grep -c '^\[       OK \]')
        f=$(cat "$o" "${o%.out}.err" 2>/dev/null | grep -cE '^\[  FAILED  \] [A-Za-z_]')
        k=$(grep -Eo '^\[  SKIPPED \] [0-9]+' "$o" | grep -Eo '[0-9]+$' | awk '{s+=$1} END {print s+0}')
        seed=$(sed -n 's/.*seed \([0-9]*\) (replay.*/\1/p' "$o" | head -n 1)
        bad=$(grep -E '^\[  FAILED  \] [A-Za-z_]' "$o" | awk '{print $4}' | sort -u | tr '\n' ',' | sed 's/,$//')
        echo "$name $rc $p $f $k ${seed:--} ${bad:--}" >>"$parity"
    done
fi

# --- 1a. a replay of a seed that once failed (LOQUAT_REPLAY="suite:seed[,suite:seed]") -----------------
if want parity && [ -n "${LOQUAT_REPLAY:-}" ]; then
    for rs in ${LOQUAT_REPLAY//,/ }; do
        suite=${rs%%:*} seed=${rs#*:}
        [ -x "$test_dir/$suite" ] && part "replay-$suite-$seed" 60 "${lqenv[@]}" LOQUAT_CUDA_REQUIRED=1 \
            LOQUAT_CUDA_SEED="$seed" "$test_dir/$suite"
    done
fi
# --- 1a'. the suites whose kernels share memory between threads (flash attention, the dY / du and fused
# NF4 kernels, the row reductions) under NVIDIA's compute-sanitizer: memcheck (out-of-bounds and
# misaligned accesses) and racecheck (shared-memory hazards between a block's threads), which the CPU
# emulator's order check can only approach. Not in the defaults (--only ...,sanitize): slow tools -----
if want sanitize; then
    cs=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /usr/local/cuda*/compute-sanitizer/compute-sanitizer \
        "$(dirname "$(command -v nvcc || echo .)")/compute-sanitizer" 2>/dev/null | head -n 1)
    for tool in memcheck racecheck; do
        for suite in ${LOQUAT_SANITIZE_SUITES:-test_cuda_flash test_cuda_wide test_cuda_ops}; do
            if [ -z "$cs" ] || [ ! -x "$test_dir/$suite" ]; then
                log "sanitize-$tool-$suite: SKIPPED: ${cs:+no $suite}${cs:-no compute-sanitizer on this machine}"
                continue
            fi
            part "sanitize-$tool-$suite" 90 "${lqenv[@]}" LOQUAT_CUDA_REQUIRED=1 "$cs" --tool "$tool" \
                --error-exitcode 9 "$test_dir/$suite"
            [ "$dry" = 1 ] || grep -E '^========= (ERROR SUMMARY|RACECHECK SUMMARY)' "$out/logs/sanitize-$tool-$suite.out" |
                sed "s/^/    $tool $suite: /" || true
        done
    done
fi

# --- 1b. `loquat train` / `loquat eval` with device: cuda against the CPU (tests/test_cli_cuda.sh) -------
if want cli; then
    if [ "$mode" = build ]; then clibuild=$build
    else
        clibuild=$work/cli
        mkdir -p "$clibuild"
        printf '#!/bin/sh\nexec env LD_LIBRARY_PATH="%s" "%s" "$@"\n' "$root/lib:${CUDA_HOME:-/usr/local/cuda}/lib64" \
            "$root/bin/loquat" >"$clibuild/loquat"
        chmod +x "$clibuild/loquat"
    fi
    part cli-cuda 90 env BUILD="$clibuild" bash tests/test_cli_cuda.sh
fi

# --- 2. dequant bandwidth -------------------------------------------------------------------------------
if want dequant; then
    part dequant 60 "${lqenv[@]}" "$bench_bin" dequant --shape 8192x8192 --shape 4096x14336 --reps 20 --warmup 3
fi

# --- 2b. the QLoRA linear's parts: dequant, the base products in every math (cuBLAS, cuBLASLt), the
# f32 -> bf16 cast, the whole op; the 1B and 135M projections (bench/bench_gpu_linear.c) -------------
if want linear; then
    part linear 60 "${lqenv[@]}" "$lin_bin" --reps 20 --warmup 3
fi

# --- 3. training steps, A B A B ---------------------------------------------------------------------
loquat_step() { # name config batch math limit; math bf16fused / bf16flash = bf16 with the fused NF4
    # kernel (LOQUAT_FUSED_QLINEAR) / the fused attention (LOQUAT_FLASH_ATTN); bf16flash1s = bf16flash on
    # one stream (LOQUAT_CUDA_SIDE_STREAM=0: the adapters' products not beside the dequant);
    # bf16flashnf = bf16flash without the QLoRA linear's two fusions (LOQUAT_CUDA_LORA_FUSE=0);
    # bf161s / bf16nf: the same two switches on the default bf16 path (cuBLAS attention)
    local m=$4 fused=0 flash=0 side=1 lfuse=1
    [ "$m" = bf16fused ] && m=bf16 fused=1
    [ "$m" = bf16flash ] && m=bf16 flash=1
    [ "$m" = bf16flash1s ] && m=bf16 flash=1 side=0
    [ "$m" = bf16flashnf ] && m=bf16 flash=1 lfuse=0
    [ "$m" = bf161s ] && m=bf16 side=0
    [ "$m" = bf16nf ] && m=bf16 lfuse=0
    part "$1" "$5" "${lqenv[@]}" LOQUAT_FUSED_QLINEAR=$fused LOQUAT_FLASH_ATTN=$flash LOQUAT_CUDA_SIDE_STREAM=$side \
        LOQUAT_CUDA_LORA_FUSE=$lfuse \
        "$bench_bin" step --config "$cfg_dir/$2" --batch "$3" \
        --seq 512 --steps "$steps" --warmup "$warmup" --r 16 --alpha 32 --math "$m" --checkpoint "$ckpt" --label "$1"
}
peer_step() { # name config batch limit
    part "$1" "$4" "$py" bench/peer_qlora_gpu.py --config "bench/$2" --batch "$3" --seq 512 --steps "$steps" \
        --warmup "$warmup" --r 16 --alpha 32 --checkpoint "$ckpt" --label "$1"
}
# --checkpoint 0,1: both sides without and with gradient checkpointing (the part names say which)
ckpts=$ckpt
for ((i = 1; i <= rounds; i++)); do
    for ckpt in ${ckpts//,/ }; do
        c=""
        [ "$ckpt" = 1 ] && c="-ckpt"
        if want 135m; then
            for m in ${maths//,/ }; do loquat_step "135m-loquat-$m$c-r$i" smollm2-135m.json 8 "$m" 75; done
            peer_step "135m-peer-bf16$c-r$i" smollm2-135m.json 8 90
        fi
        if want 1b; then
            for m in ${maths//,/ }; do loquat_step "1b-loquat-$m$c-r$i" llama-1b.json 4 "$m" 120; done
            peer_step "1b-peer-bf16$c-r$i" llama-1b.json 4 90
        fi
    done
done
ckpt=${ckpts%%,*}

# --- 4. where a step's time goes: every op timed on its own (LOQUAT_PROFILE=1) -----------------------
if want profile; then
    for mdl in ${LOQUAT_PROFILES:-135m:smollm2-135m.json:8:bf16 1b:llama-1b.json:4:bf16}; do
        IFS=: read -r tag cfg bsz pm <<<"$mdl"
        tag=$tag-$pm
        part "profile-$tag" 60 "${lqenv[@]}" LOQUAT_PROFILE=1 "$bench_bin" step --config "$cfg_dir/$cfg" --batch "$bsz" \
            --seq 512 --steps 2 --warmup 2 --r 16 --alpha 32 --math "$pm" --checkpoint "$ckpt" --label "profile-$tag"
        if [ "$dry" = 0 ] && [ -f "$out/logs/profile-$tag.err" ]; then
            echo "--- per-op time, $tag (top 14)"
            sed -n '/per-op time/,$p' "$out/logs/profile-$tag.err" | sed -n '2,16p'
            grep -E '^all ops' "$out/logs/profile-$tag.err" || true
        fi
    done
fi

# --- 5. per-kernel time under ncu (not in the defaults: --only ...,ncu): one warm-up and one timed step
# of each LOQUAT_NCU entry (tag:config:batch:math, math bf16flash = bf16 with LOQUAT_FLASH_ATTN=1), every
# kernel timed by Nsight Compute's gpu__time_duration (clocks left as they are); bench/ncu_table.py
# prints the kernels by time per step ------------------------------------------------------------------
if want ncu; then
    ncu_bin=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
    for mdl in ${LOQUAT_NCU:-1b:llama-1b.json:4:bf16 1b:llama-1b.json:4:bf16flash}; do
        IFS=: read -r tag cfg bsz pm <<<"$mdl"
        tag=$tag-$pm flash=0
        [ "$pm" = bf16flash ] && pm=bf16 flash=1
        if [ -z "$ncu_bin" ]; then
            log "ncu-$tag: SKIPPED: no ncu on this machine"
            continue
        fi
        part "ncu-$tag" 120 "${lqenv[@]}" LOQUAT_FLASH_ATTN=$flash "$ncu_bin" --clock-control none --csv \
            --print-units base --print-kernel-base function --metrics gpu__time_duration.sum "$bench_bin" step --config "$cfg_dir/$cfg" --batch "$bsz" --seq 512 --steps 1 \
            --warmup 1 --r 16 --alpha 32 --math "$pm" --checkpoint "$ckpt" --label "ncu-$tag"
        if [ "$dry" = 0 ] && [ -s "$out/logs/ncu-$tag.out" ]; then # the CSV, among the bench's own lines
            echo "--- per-kernel time, $tag (ncu)"
            "$py" bench/ncu_table.py "$out/logs/ncu-$tag.out" 2 25 || true
        fi
    done
fi

# --- the table (last) -----------------------------------------------------------------------------------
echo
echo "===== loquat GPU run: done in $(elapsed) s; logs: $out"
if [ "$dry" = 1 ]; then
    echo "(dry run: nothing was executed)"
    exit 0
fi
# with OUT (a results folder to collect) set, the logs go there as one archive
if [ -n "${OUT:-}" ] && tar -czf "$out/logs.tgz" -C "$out" logs 2>/dev/null; then rm -rf "$out/logs"; fi
"$py" bench/gpu_table.py "$results" "$parity" "$status" "$manifest" ||
    { echo "(table failed; raw results:)"; cat "$results" "$parity" "$status"; }
ok=1
while read -r name rc dt; do [ "$rc" = 0 ] || ok=0; done <"$status"
while read -r name rc p f rest; do [ "$rc" = 0 ] && [ "$f" = 0 ] || ok=0; done <"$parity"
[ "$ok" = 1 ]
