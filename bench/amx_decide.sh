#!/usr/bin/env bash
# The runs that settle issue 25 on a CPU with AMX, in one command
# (bench/README.md, "bf16 on an AMX CPU: the runs that decide"):
#
#   bench/amx_decide.sh [--skip-install] [--rounds R] [--out DIR] [--quick]
#
# 1. builds (build/, with the tests) and runs `ctest -R amx`: our AMX kernel,
#    both blocks, on the tiles, against fp64, its emulation and each other;
# 2. bench/run.sh --parts bf16: fp32, bf16 (oneDNN where built with it), our
#    AMX kernel in each block, auto, PyTorch fp32 and bf16 autocast, the
#    targets >= 2x fp32 and >= 1.3x PyTorch bf16 autocast;
# 3. the peaks (fp32 FMA, vdpbf16ps, AMX) and comrope-dnnl-gemm-bench: every
#    ViT-B/16 GEMM shape on oneDNN, our vdpbf16ps and both AMX blocks;
# 4. bench/profile.py at batch 1 and 8, each block: where the time goes;
# 5. bench/ab.py, interleaved rounds: the 2x2 block against the 1x3,
#    attention on the tiles (--attention-gemm 1) against fp32 attention,
#    then the K block KC_AMX 256 against 768 (a second build, -DKC_AMX=768).
#
# Everything lands in DIR (default bench/results/amx-<date>), with the
# CPU's name and flags (cpu.txt) and a summary of the deciding figures
# (summary.txt). Where /proc/cpuinfo has no amx_bf16 it stops at once
# (exit 77), unless COMROPE_AMX_DECIDE_ANYWAY=1: a dry run of the pipeline,
# every AMX figure then the engine's refusal. About an hour on 2 cores;
# --quick: ViT-Ti/16 and one round, a smoke test of the pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."

install=1
rounds=6
quick=()
preset=vit-b16
out="bench/results/amx-$(date -u +%Y%m%d-%H%M)"
while [ $# -gt 0 ]; do
  case "$1" in
    --skip-install) install=0 ;;
    --rounds) rounds=$2; shift ;;
    --out) out=$2; shift ;;
    --quick) quick=(--quick); preset=vit-ti16; rounds=1 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "amx_decide: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

if ! grep -qw amx_bf16 /proc/cpuinfo && [ "${COMROPE_AMX_DECIDE_ANYWAY:-0}" != 1 ]; then
  echo "amx_decide: no amx_bf16 in /proc/cpuinfo: these runs need an AMX CPU (Intel Sapphire Rapids or later)"
  grep -m1 "model name" /proc/cpuinfo || true
  exit 77
fi

mkdir -p "$out"
log() { echo "== amx_decide [$(date -u +%H:%M:%S)] $*"; }
{
  grep -m1 "model name" /proc/cpuinfo
  grep -m1 "cpu family" /proc/cpuinfo
  grep -m1 "^flags" /proc/cpuinfo | tr ' ' '\n' | grep -E "^(avx512f|avx512_bf16|amx_bf16|amx_tile|amx_int8)$" |
    tr '\n' ' '
  echo
  echo "cores: $(nproc)  OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}  kernel: $(uname -r)"
  echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
} >"$out/cpu.txt"
cat "$out/cpu.txt"

if [ "$install" = 1 ]; then
  log "packages (scripts/install-deps.sh build test tools bench)"
  scripts/install-deps.sh build test tools bench
fi

log "1/5 build (build/, tests on) and ctest -R amx"
cmake -S . -B build -DCOMROPE_BUILD_TESTS=ON >"$out/build.log" 2>&1
cmake --build build -j "$(nproc)" >>"$out/build.log" 2>&1 || { tail -n 30 "$out/build.log"; exit 1; }
# the AMX parts on this CPU; a failure is a finding, not the end of the runs
ctest --test-dir build -R amx --output-on-failure -V >"$out/ctest-amx.log" 2>&1 || echo "amx_decide: ctest -R amx FAILED (see $out/ctest-amx.log)"
grep -E "Passed|Failed|Skipped|hardware vs emulated|worst" "$out/ctest-amx.log" || true

log "2/5 bench/run.sh --parts bf16 (engine fp32, bf16, our AMX blocks, auto; PyTorch fp32, bf16 autocast)"
bench/run.sh --skip-install ${quick[@]+"${quick[@]}"} --parts bf16 --rounds "$((rounds < 3 ? rounds : 3))" \
  --out "$out/run" | tee "$out/run.log"
engine=build-bench/comrope-bench-engine
model=$out/run/cache/$preset-comrope-ap

log "3/5 peaks and comrope-dnnl-gemm-bench (each ViT-B/16 GEMM shape)"
for op in fma bf16 amx; do
  echo "$op: $(build/comrope-fma-peak --threads 2 --op "$op")"
done | tee "$out/peaks.txt"
if [ -x build/comrope-dnnl-gemm-bench ]; then
  build/comrope-dnnl-gemm-bench --threads 2 | tee "$out/gemm-shapes.jsonl"
else
  echo "no comrope-dnnl-gemm-bench: this build has no oneDNN (libdnnl-dev)" | tee "$out/gemm-shapes.jsonl"
fi

log "4/5 bench/profile.py, batch 1 and 8, each AMX block"
for batch in 1 8; do
  for shape in 1x3 2x2; do
    /usr/bin/python3 bench/profile.py --model "$model" --precision bf16 --gemm-backend amx --amx-shape "$shape" \
      --batch "$batch" --engine "$engine" --out "$out/profile-b$batch-$shape" >"$out/profile-b$batch-$shape.txt" 2>&1 ||
      echo "amx_decide: profile b$batch $shape failed (see $out/profile-b$batch-$shape.txt)"
    tail -n 25 "$out/profile-b$batch-$shape.txt"
  done
done

log "5/5 bench/ab.py: the 2x2 block against the 1x3; attention on the tiles; KC_AMX 256 against 768"
cp "$engine" "$out/engine-kc256"
cmake -S . -B build-kc768 -DCOMROPE_BUILD_TESTS=OFF -DCMAKE_C_FLAGS=-DKC_AMX=768 >"$out/build-kc768.log" 2>&1
cmake --build build-kc768 -j "$(nproc)" --target comrope-bench-engine >>"$out/build-kc768.log" 2>&1 ||
  { tail -n 30 "$out/build-kc768.log"; exit 1; }
cp build-kc768/comrope-bench-engine "$out/engine-kc768"
for batch in 1 8; do
  /usr/bin/python3 bench/ab.py --model "$model" --precision bf16 --gemm-backend amx --batch "$batch" \
    --rounds "$rounds" "$out/engine-kc256" "$out/engine-kc256" --arg "1:--amx-shape 2x2" |
    tee "$out/ab-shape-b$batch.txt" || echo "amx_decide: ab.py shapes b$batch failed"
  # each block: with a head of 64, the 1x3 block's 48-column tiles compute 96 columns in P v, the 2x2's 64
  for res in 224 384; do
    for shape in 1x3 2x2; do
      /usr/bin/python3 bench/ab.py --model "$model" --precision bf16 --gemm-backend amx --batch "$batch" \
        --resolution "$res" --rounds "$rounds" "$out/engine-kc256" "$out/engine-kc256" \
        --arg "0:--amx-shape $shape" --arg "1:--amx-shape $shape --attention-gemm 1" |
        tee "$out/ab-attention-$shape-$res-b$batch.txt" || echo "amx_decide: ab.py attention $shape $res b$batch failed"
    done
  done
  for shape in 1x3 2x2; do
    /usr/bin/python3 bench/ab.py --model "$model" --precision bf16 --gemm-backend amx --batch "$batch" \
      --rounds "$rounds" "$out/engine-kc256" "$out/engine-kc768" \
      --arg "0:--amx-shape $shape" --arg "1:--amx-shape $shape" |
      tee "$out/ab-kc-$shape-b$batch.txt" || echo "amx_decide: ab.py KC b$batch $shape failed"
  done
done

{
  cat "$out/cpu.txt"
  echo
  echo "## ctest -R amx"
  grep -E "tests passed|tests failed|hardware vs emulated" "$out/ctest-amx.log" || true
  echo
  echo "## bench/run.sh --parts bf16: the targets"
  grep -E "^ *(PASS|FAIL) " "$out/run.log" || true
  echo
  echo "## peaks (GFLOP/s, 2 threads)"
  cat "$out/peaks.txt"
  echo
  echo "## ratios, interleaved rounds (bench/ab.py): [1] against [0]"
  for f in "$out"/ab-*.txt; do
    [ -f "$f" ] || continue
    echo "$(basename "$f" .txt): $(grep -E "ratio to \[0\]" "$f" | tail -n 1 | sed 's/^ *//')"
  done
} >"$out/summary.txt"
log "done: $out/summary.txt"
cat "$out/summary.txt"
