#!/usr/bin/env bash
# The GPU checks, as one script for the lent GPU machine (../shared/device/README.md):
#   bash ../shared/device/make-kit.sh        # here, once: Ray + MLflow wheels in .devkit/
#   then on the device, carrying .devkit:  bash benchmarks/run_on_gpu.sh
# Writes benchmarks/results/train_overhead_cuda.json (and a copy under $OUT when set).
set -euo pipefail
source .devkit/kit-env.sh || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, ray, mlflow; print('torch', torch.__version__, 'ray', ray.__version__, 'mlflow', mlflow.__version__)"
# lesson 12's Darknet (default config: bs 256, 32 px), bf16 + channels_last, bare loop vs Ray Train
python3 benchmarks/train_overhead.py --device cuda "$@" 2> >(grep -v "logging_progress\|INFO" >&2)
if [ -n "${OUT:-}" ]; then cp benchmarks/results/train_overhead_cuda.json "$OUT/"; fi
