"""Triton adapter: the composite-label LLM via auditoryhum's TransformersGenerator (the in-process code)."""

import numpy as np
import triton_python_backend_utils as pb_utils

from auditoryhum.backends import serving
from auditoryhum.taxonomy.naming import TransformersGenerator


class TritonPythonModel:
    def initialize(self, args):
        params = serving.parameters(args)
        path = serving.required(params, "model_path", "namer")
        self.generator = TransformersGenerator(path, max_new_tokens=int(params.get("max_new_tokens") or 40),
                                               model_id=params.get("model_id") or None, device=serving.device(args))

    def execute(self, requests):
        prompts = [serving.texts(pb_utils.get_input_tensor_by_name(r, "PROMPT").as_numpy().reshape(-1))[0]
                   for r in requests]
        return [pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", np.array([[a.encode("utf-8")]], dtype=np.object_))])
                for a in self.generator.generate(prompts)]
