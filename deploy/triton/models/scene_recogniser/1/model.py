"""Triton adapter: per-patch logits of the scene recogniser, via auditoryhum's Recogniser (the in-process code)."""

import numpy as np
import triton_python_backend_utils as pb_utils

from auditoryhum.backends import serving
from auditoryhum.edge.recogniser import Recogniser


class TritonPythonModel:
    def initialize(self, args):
        params = serving.parameters(args)
        self.recogniser = Recogniser(serving.required(params, "model_dir", "scene_recogniser"),
                                     model=params.get("model") or "cnn", precision=params.get("precision") or "int8",
                                     threads=int(params.get("threads") or 1))

    def execute(self, requests):
        # The dynamic batcher hands over several requests: one ONNX call for all their patches.
        batches = [pb_utils.get_input_tensor_by_name(r, "PATCHES").as_numpy() for r in requests]
        patches = np.concatenate(batches)[:, None]
        logits = self.recogniser.logits(self.recogniser.patch_inputs(patches))
        bounds = np.cumsum([0] + [len(b) for b in batches])
        return [pb_utils.InferenceResponse([pb_utils.Tensor("LOGITS", logits[a:b])])
                for a, b in zip(bounds[:-1], bounds[1:])]
