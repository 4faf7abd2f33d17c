#!/usr/bin/env bash
# FTBC's iterative rule (release settings) against the closed-form quantile solver,
# on the small CIFAR-10 networks of `ftbc quickstart --methods all`, on CPU.
# Usage: scripts/compare_ftbc_solvers.sh ANN_DIR DATA_ROOT OUT [T]
#   ANN_DIR holds ann_relu/, ann_qcfs/, ann_clip/ (model.safetensors + model.json)
set -euo pipefail
ann=${1:?ANN_DIR}; data=${2:?DATA_ROOT}; out=${3:?OUT}; T=${4:-4}
common=(--data-root "$data" --T "$T" --n-test 2000 --holdout 1000 --quiet)
for pair in relu:ftbc_relu qcfs:ftbc_qcfs clip:ftbc_rts; do
  act=${pair%%:*}; m=${pair#*:}
  # budget cpu_mse (baselines/budgets.py): only SNNC's MSE search (under the relu methods) on 16,384 positions
  extra=(--budget cpu_mse)
  # the release's settings (alpha, iterations, batches from docs/methods.md section 5.3), accuracy logged per iteration
  ftbc evaluate --checkpoint "$ann/ann_$act" --method "$m" "${common[@]}" "${extra[@]}" --out "$out/${m}_heuristic_T$T"
  ftbc evaluate --checkpoint "$ann/ann_$act" --method "${m}_quantile" "${common[@]}" "${extra[@]}" --out "$out/${m}_quantile_T$T"
done
