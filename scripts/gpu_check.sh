#!/usr/bin/env bash
# The GPU check, at most ~5 minutes on an H100: the gpu-marked tests, then training images/s
# (fp32, bf16 + channels_last, compiled), the benchmark's GPU section and TF32 drift, into one
# JSON. Usage: bash scripts/gpu_check.sh OUT_DIR [--dry-run]   (--dry-run: CPU, tiny sizes)
#
# On a GPU machine without the training stack's config packages (hydra-core, omegaconf, wandb,
# submitit) and no package index: carry their wheels, install them with --no-deps, and install
# the project itself with `pip install --no-deps -e .` against the machine's own torch.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: gpu_check.sh OUT_DIR [--dry-run]}
shift
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if [[ "${1:-}" != "--dry-run" ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia_smi.txt"
  timeout 150 python -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log"
fi
timeout 200 python scripts/gpu_check.py --out "$out/gpu_check.json" \
  --pytest-log "$out/gpu_tests.log" "$@"
