#!/usr/bin/env bash
# Speed benchmark on a CUDA machine, under 5 minutes on one GPU.
#
#   PYTHONPATH=. scripts/gpu_bench.sh OUT_DIR
#
# Needs torch (>= 2.4) and timm; no pip, no network, no spikingjelly (its rows are skipped).
# Writes OUT_DIR/<run>.json (one `ftbc bench` object each), OUT_DIR/table.md,
# OUT_DIR/env.txt (GPU, driver, versions, commit) and OUT_DIR/commands.txt, and prints the table.
# Commit OUT_DIR as results/benchmarks/<date>-<gpu>/.
set -u -o pipefail
OUT=${1:?usage: scripts/gpu_bench.sh OUT_DIR}
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:-.}"
PY=${PYTHON:-python3}
STEP=${GPU_BENCH_STEP_TIMEOUT:-90}   # at most this many seconds per run
TOTAL=${GPU_BENCH_TOTAL:-270}        # and no run starts past this point: the script ends under 5 minutes

{
  date -u +%Y-%m-%dT%H:%M:%SZ
  git rev-parse HEAD 2>/dev/null || echo "no git"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch, platform; print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA')"
} > "$OUT/env.txt"
cat "$OUT/env.txt"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no CUDA device: nothing to benchmark" >&2; exit 1; }

: > "$OUT/commands.txt"
run() {  # run NAME ARGS...: one configuration, JSON to OUT/NAME.json; a failure is logged, not fatal
  local name=$1; shift
  local left=$(( TOTAL - SECONDS ))
  if (( left < 20 )); then echo "== $name: skipped, time budget spent" >&2; return; fi
  local limit=$(( left < STEP ? left : STEP ))
  echo "ftbc bench $*" >> "$OUT/commands.txt"
  echo "== $name (limit ${limit}s): ftbc bench $*" >&2
  if ! timeout "$limit" "$PY" -m ftbc bench --device cuda --no-check --output "$OUT/$name.json" "$@" > /dev/null 2> "$OUT/$name.log"; then
    echo "   failed or timed out (see $OUT/$name.log)" >&2
    rm -f "$OUT/$name.json"
  fi
}

# Headline (target: snn >= 3x faster than the step loop at batch 64), fp32 then the fast path.
run vgg16_T32_b64_fp32      --arch vgg16 --T 32 --batch 64 --rounds 5 --precision fp32
run vgg16_T32_b64_bf16_cl   --arch vgg16 --T 32 --batch 64 --rounds 5 --precision bf16 --channels-last --release-rounds 0
run vgg16_T32_b64_tf32_cl   --arch vgg16 --T 32 --batch 64 --rounds 5 --precision tf32 --channels-last --release-rounds 0 --only floor snn snn_s snn_m stepwise
# How it grows with T and batch.
run vgg16_T8_b64_bf16_cl    --arch vgg16 --T 8 --batch 64 --rounds 5 --precision bf16 --channels-last --release-rounds 0 --only floor snn snn_s stepwise ftbc_pass
run vgg16_T128_b64_bf16_cl  --arch vgg16 --T 128 --batch 64 --rounds 3 --precision bf16 --channels-last --release-rounds 0 --only floor snn stepwise ftbc_pass
run vgg16_T32_b128_bf16_cl  --arch vgg16 --T 32 --batch 128 --rounds 5 --precision bf16 --channels-last --release-rounds 0 --only floor snn snn_s stepwise ftbc_pass
run resnet20_T32_b64_fp32   --arch resnet20 --T 32 --batch 64 --rounds 5 --precision fp32
run resnet20_T32_b64_bf16_cl --arch resnet20 --T 32 --batch 64 --rounds 5 --precision bf16 --channels-last --release-rounds 0 --only floor snn snn_s snn_m stepwise ftbc_pass
# Last, as its first call compiles for up to a minute: the IF step as one fused kernel.
run vgg16_T32_b64_bf16_cl_compiled --arch vgg16 --T 32 --batch 64 --rounds 5 --precision bf16 --channels-last --compile-scan --release-rounds 0 --only floor snn snn_compiled stepwise

"$PY" -m ftbc.report.bench_table "$OUT" | tee "$OUT/table.md"
