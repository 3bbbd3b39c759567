"""Triton adapter: sentence embeddings via auditoryhum's SentenceEmbedder (the in-process code and its cache)."""

import numpy as np
import triton_python_backend_utils as pb_utils

from auditoryhum.backends import serving
from auditoryhum.backends.text import SentenceEmbedder, embedder_id


class TritonPythonModel:
    def initialize(self, args):
        params = serving.parameters(args)
        path = params.get("model_path") or None
        self.embedder = SentenceEmbedder(path, model_id=params.get("model_id") or embedder_id(path))

    def execute(self, requests):
        # One encode call for every text of the merged requests; one row per batch row back.
        batches = [serving.texts(pb_utils.get_input_tensor_by_name(r, "TEXT").as_numpy().reshape(-1))
                   for r in requests]
        vectors = self.embedder.embed([t for batch in batches for t in batch])
        bounds = np.cumsum([0] + [len(b) for b in batches])
        return [pb_utils.InferenceResponse([pb_utils.Tensor("EMBEDDING", vectors[a:b])])
                for a, b in zip(bounds[:-1], bounds[1:])]
