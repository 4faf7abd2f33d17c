#!/usr/bin/env bash
# The one-GPU CIFAR-10 reproduction run: train VGG-16 with ReLU, QCFS (L=4) and the clipped ReLU
# for as many epochs as fit, run every registered method at T = 1..64 on the full test set, and write the
# per-T table, timings and hardware into OUTDIR, in under 8 minutes on one H200.
#
# Usage: scripts/gpu_reproduce.sh OUTDIR [--tiny] [options of python -m ftbc.run.reproduce]
#   --tiny          the same steps on CPU with a small net and a class subset, in under 3 minutes
#   --data PATH     CIFAR-10 archive or extracted folder (default: data/cifar10-jpeg.tar.gz or
#                   data/cifar10-jpeg inside the checkout; data/ is git-ignored)
# Runs the package from the checkout (PYTHONPATH=.); needs python3 with torch, torchvision, timm, pandas,
# safetensors and PyYAML ($PYTHON to pick another interpreter); no pip, network or snakemake.
# Progress goes to the terminal and to OUTDIR/log.txt.
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,12p' "$0"; exit 2; }
out=$1; shift
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$repo"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
"${PYTHON:-python3}" -m ftbc.run.reproduce "$out" "$@" 2>&1 | tee "$out/log.txt"
exit "${PIPESTATUS[0]}"
