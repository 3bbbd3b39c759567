"""Triton adapter: YAMNet logits for log-mel patches, via auditoryhum's YamnetTagger (the in-process code)."""

import numpy as np
import triton_python_backend_utils as pb_utils

from auditoryhum.backends import serving
from auditoryhum.backends.yamnet import YamnetTagger


class TritonPythonModel:
    def initialize(self, args):
        params = serving.parameters(args)
        self.tagger = YamnetTagger(threads=int(params.get("threads") or 0))
        wanted = params.get("model_id", "")
        if wanted and wanted != self.tagger.model_id:
            # Labels are recorded under this id: serving a different YAMNet under it would mislabel them.
            raise ValueError(f"yamnet_patches: config asks for {wanted}, installed is {self.tagger.model_id}")

    def execute(self, requests):
        # The dynamic batcher hands over several requests: one ONNX call for all their patches.
        batches = [pb_utils.get_input_tensor_by_name(r, "PATCHES").as_numpy() for r in requests]
        logits = self.tagger.patch_logits(np.concatenate(batches)[:, None])
        bounds = np.cumsum([0] + [len(b) for b in batches])
        return [pb_utils.InferenceResponse([pb_utils.Tensor("LOGITS", logits[a:b])])
                for a, b in zip(bounds[:-1], bounds[1:])]
