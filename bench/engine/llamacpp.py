"""llama.cpp (``llama-cpp-python``, optional) on the same weights as GGUF: the slice written by our
writer in F32, BF16 and Q8_0, the default model's own Q4_1 file."""

from __future__ import annotations

import gc
from pathlib import Path

import torch

from bench.engine.agreement import agreement
from bench.engine.models import MELLUM_SLICE
from bench.engine.prefix import default_tokenizer
from bench.engine.variants import LlamaCpp, Variant, measure
from bench.report import progress
from engine import default_model_path
from engine.config import from_hf_dict


def llamacpp_files(model: str, state: dict[str, torch.Tensor] | None, folder: Path,
                   kinds: tuple[str, ...] = ("F32", "BF16", "Q8_0")) -> dict[Variant, Path]:
    """GGUF files for llama.cpp: the slice written by our writer (``kinds`` of F32, BF16, Q8_0;
    SmolLM2's tokenizer padded to the slice's vocabulary), or the default model's own Q4_1 file."""
    from gguf import GGMLQuantizationType

    from devtools.gguf_write import write_gguf

    if model == "default":
        return {Variant("llama.cpp", "Q4_1"): default_model_path()}
    tokenizer = default_tokenizer()
    config = from_hf_dict(MELLUM_SLICE)
    files = {}
    for label, qtype in (("F32", GGMLQuantizationType.F32), ("BF16", GGMLQuantizationType.BF16),
                         ("Q8_0", GGMLQuantizationType.Q8_0)):
        if label not in kinds:
            continue
        files[Variant("llama.cpp", label)] = path = folder / f"mellum-slice-{label}.gguf"
        progress(f"writing {path.name}")
        write_gguf(path, config, state, qtype, tokenizer=tokenizer, name="mellum-slice")
    return files


def measure_llamacpp(files: dict[Variant, Path], ours: dict[Variant, object], vocab: int, threads: int,
                     repeats: int, steps: int) -> dict[Variant, dict[str, float]]:
    """Each llama.cpp file in turn (one in memory at a time), alternating with our variants."""
    figures: dict[Variant, dict[str, float]] = {}
    for name, path in files.items():
        side = LlamaCpp(path, threads, 4096)
        measured = measure({name: side, **ours}, vocab, (512, 2048), repeats, steps)
        figures[name] = measured[name]
        for variant in ours:
            figures.setdefault(variant.measured_beside("llama.cpp"), {}).update(measured[variant])
        del side
        gc.collect()
    return figures


def same_model_check(files: dict[Variant, Path], model, threads: int) -> dict:
    """llama.cpp against our fp32 ``model`` on the file of the closest precision (the slice's F32,
    the default model's own Q4_1): see ``bench.engine.agreement``."""
    kind = "F32" if Variant("llama.cpp", "F32") in files else "Q4_1"
    return agreement(files[Variant("llama.cpp", kind)], kind, model, threads)


def llamacpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True
