#!/usr/bin/env bash
# Install adamgap into the active Python environment, with the offline Fashion-MNIST files
# (Debian's dataset-fashion-mnist). `bash scripts/install.sh test` adds what the tests need:
# the test extra (pytest, ruff, ...) and a real Slurm (slurmctld slurmd slurm-client munge).
set -euo pipefail
cd "$(dirname "$0")/.."
debs=(dataset-fashion-mnist)
extra=""
if [ "${1:-}" = "test" ]; then
  debs+=(slurmctld slurmd slurm-client munge)
  extra="[test]"
fi
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  missing=()
  for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
else
  echo "note: not root with apt-get; install ${debs[*]} with your package manager" >&2
fi
python -m pip install -q --upgrade pip
python -m pip install -q -e ".${extra}"
