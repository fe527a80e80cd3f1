#!/usr/bin/env bash
# On a machine with a CUDA GPU, after `bash scripts/setup.sh` (the test extra brings transformers):
# the engine's device tests on CUDA, then the GPU benchmark of the real Mellum2 configuration
# (bench/results/gpu.md). FOCAL_GPU_DEVICE picks another device (cuda:1); the tests run the same
# script on the CPU in a reduced mode, so it cannot rot.
set -euo pipefail
cd "$(dirname "$0")/.."
device="${FOCAL_GPU_DEVICE:-cuda}"
.venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible: run the reduced mode instead, python -m bench.gpu --reduced --device cpu --out /tmp/gpu')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
FOCAL_TEST_DEVICE="$device" .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_engine_device.py
.venv/bin/python -m bench.gpu --device "$device"
