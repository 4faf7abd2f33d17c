#!/usr/bin/env bash
# The smoke grid (.test/config/config.yaml, narrowed by the overlay .test/config/slurm.yaml)
# through the SLURM profile on the one-node cluster of .ci/slurm-up.sh, including a job
# cancelled with scancel and the rerun that finishes the grid.
# Usage: .ci/slurm-smoke.sh DATA_ROOT WORKDIR
set -euo pipefail
data=${1:?DATA_ROOT}; work=${2:?WORKDIR}
# No accounting database here: squeue for status, no account.
sm=(snakemake --workflow-profile workflow/profiles/slurm --configfile .test/config/config.yaml .test/config/slurm.yaml
    --config "data_root=$data" "workdir=$work" "results=$work/tables"
    --jobs 8 --slurm-status-command squeue --slurm-no-account --slurm-init-seconds-before-status-checks 2
    --seconds-between-status-checks 2
    --default-resources slurm_partition=debug mem_mb=2000 runtime=30)

echo "== SLURM: start the grid, cancel the first evaluation job with scancel"
"${sm[@]}" > "$work.log" 2>&1 &
pid=$!
cancelled=""
for _ in $(seq 600); do
  job=$(squeue -h -t R -o "%i %k" | awk '$2 ~ /evaluate_snn/ {print $1; exit}')
  if [ -n "$job" ]; then scancel "$job"; cancelled=$job; break; fi
  kill -0 $pid 2> /dev/null || break
  sleep 1
done
set +e; wait $pid; first=$?; set -e
echo "first run exit status $first (cancelled SLURM job ${cancelled:-none})"
[ -n "$cancelled" ] || { echo "no evaluation job was seen running"; tail -30 "$work.log"; exit 1; }
[ "$first" -ne 0 ] || { echo "the cancelled job should have failed the first run"; exit 1; }
find "$work/snn" -name result.json -printf "%p %T@\n" | sort > "$work.kept"
echo "results kept after the cancel: $(wc -l < "$work.kept")"

echo "== SLURM: rerun; only what is missing is run"
"${sm[@]}" >> "$work.log" 2>&1 || { tail -40 "$work.log"; exit 1; }
test -s "$work/tables/cifar10.md"
find "$work/snn" -name result.json -printf "%p %T@\n" | sort > "$work.after"
echo "results after the rerun: $(wc -l < "$work.after")"
redone=$(comm -23 "$work.kept" "$work.after" | wc -l)
[ "$redone" -eq 0 ] || { echo "$redone finished results were rewritten by the rerun"; exit 1; }
"${sm[@]}" -n 2>&1 | grep -q "Nothing to be done" || { echo "a third run would redo work"; exit 1; }
echo "SLURM smoke grid: ok"
