#!/usr/bin/env bash
# Stop the daemons .ci/slurm-up.sh started (by the PIDs it recorded).
PIDS=${SLURM_CI_PIDS:-/tmp/slurm-ci.pids}
[ -f "$PIDS" ] && xargs -r kill < "$PIDS" 2>/dev/null
rm -f "$PIDS"
