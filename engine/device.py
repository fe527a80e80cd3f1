"""Which dtype to run in on a device: bf16 where the hardware has bf16 matrix units, else fp32.

On a CPU with AMX or AVX512-BF16, bf16 prefill runs on the matrix units and beats fp32 (the fp32
and bf16 rows of bench/results/engine.md measure by how much); without them bf16 matmuls are
emulated and slower than fp32.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@cache
def cpu_has_bf16_units() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in _BF16_CPU_FLAGS)


def preferred_dtype(device: torch.device | str = "cpu") -> torch.dtype:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if cpu_has_bf16_units() else torch.float32


def parse_device(name: str) -> torch.device:
    """``auto`` (the first CUDA GPU when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: no CUDA GPU is visible to this process")
    return device


def parse_dtype(name: str, device: torch.device | str = "cpu") -> torch.dtype:
    """``auto``, ``float32``/``fp32`` or ``bfloat16``/``bf16``."""
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name == "auto":
        return preferred_dtype(device)
    if name not in names:
        raise ValueError(f"unknown dtype {name!r}; use auto, float32 or bfloat16")
    return names[name]
