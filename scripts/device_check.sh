#!/usr/bin/env bash
# The prepared GPU check (adamgap/analysis/device_check.py): prints one table: ms per Adam step
# for 1 vs 1 000 seeds in one ensemble at the paper's settings, two identical device runs
# compared bit for bit, README Table 1 on the CPU vs the device, ResNet-18 images/s on random
# images. A few minutes on one GPU (at most 8); --small runs the same checks in seconds (CPU).
#   bash scripts/device_check.sh
#   bash scripts/device_check.sh --small --accelerator cpu --json /tmp/device.json
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # the CPU runs are tiny problems
exec python -m adamgap.analysis.device_check "$@"
