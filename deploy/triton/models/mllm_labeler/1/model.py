"""Triton adapter: the paper's MLLM labeler via auditoryhum's MllmLabeler (the in-process code)."""

import numpy as np
import triton_python_backend_utils as pb_utils

from auditoryhum.audio import Audio
from auditoryhum.backends import serving
from auditoryhum.backends.mllm import MllmLabeler


class TritonPythonModel:
    def initialize(self, args):
        params = serving.parameters(args)
        path = serving.required(params, "model_path", "mllm_labeler")
        self.labeler = MllmLabeler(path, model_id=params.get("model_id") or None, device=serving.device(args),
                                   max_new_tokens=int(params.get("max_new_tokens") or 64),
                                   load_in_4bit={"true": True, "auto": None}.get(
                                       params.get("load_in_4bit", "").lower(), False))
        rate = int(params.get("sample_rate") or self.labeler.sample_rate)
        if rate != self.labeler.sample_rate:
            # Clients send audio at the configured rate: a mismatch would mislabel every clip.
            raise ValueError(f"mllm_labeler: config says {rate} Hz, the model's processor wants "
                             f"{self.labeler.sample_rate} Hz")

    def execute(self, requests):
        responses, clips, hints = [None] * len(requests), {}, {}
        rate = self.labeler.sample_rate
        for i, request in enumerate(requests):
            wave = pb_utils.get_input_tensor_by_name(request, "WAVEFORM").as_numpy().reshape(-1).astype(np.float32)
            hint = pb_utils.get_input_tensor_by_name(request, "HINT")
            problem = serving.waveform_problem(wave)
            if problem:  # this request's fault: the others of the batch still run
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(problem,
                                                                                     pb_utils.TritonError.INVALID_ARG))
            else:
                clips[i] = Audio(wave, rate, rate, 1)
                hints[i] = serving.texts(hint.as_numpy().reshape(-1))[0] if hint is not None else ""
        # The requests the batcher merged become one batched generate call (left-padded prompts).
        for i, description in zip(clips, self.labeler.describe(list(clips.values()), list(hints.values()))):
            responses[i] = pb_utils.InferenceResponse([
                pb_utils.Tensor("TEXT", np.array([[description.raw_text.encode("utf-8")]], dtype=np.object_))])
        return responses
