"""Triton adapter: Human-CLAP label scores via auditoryhum's ClapScorer (the in-process code)."""

import numpy as np
import triton_python_backend_utils as pb_utils

from auditoryhum.audio import Audio
from auditoryhum.backends import ScoreItem, serving
from auditoryhum.backends.clap import ClapScorer


class TritonPythonModel:
    def initialize(self, args):
        params = serving.parameters(args)
        path = serving.required(params, "model_path", "clap_scorer")
        self.scorer = ClapScorer(path, processor_path=params.get("processor_path") or None,
                                 model_id=params.get("model_id") or None, device=serving.device(args),
                                 resample_via_16k=params.get("resample_via_16k", "").lower() == "true")
        rate = int(params.get("sample_rate") or self.scorer.sample_rate)
        if rate != self.scorer.sample_rate:
            # Clients send audio at the configured rate: a mismatch would score every clip wrongly.
            raise ValueError(f"clap_scorer: config says {rate} Hz, the scorer takes {self.scorer.sample_rate} Hz")

    def execute(self, requests):
        responses, items = [None] * len(requests), {}
        rate = self.scorer.sample_rate
        for i, request in enumerate(requests):
            wave = pb_utils.get_input_tensor_by_name(request, "WAVEFORM").as_numpy().reshape(-1).astype(np.float32)
            labels = serving.texts(pb_utils.get_input_tensor_by_name(request, "LABELS").as_numpy().reshape(-1))
            problem = serving.waveform_problem(wave)
            if problem:  # this request's fault: the others of the batch still run
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(problem,
                                                                                     pb_utils.TritonError.INVALID_ARG))
            else:
                items[i] = ScoreItem(labels, audio=lambda w=wave: Audio(w, rate, rate, 1))
        # One audio batch and one text batch for every request the batcher merged.
        for i, scores in zip(items, self.scorer.score_batch(list(items.values()))):
            responses[i] = pb_utils.InferenceResponse([
                pb_utils.Tensor("SCORES", scores.scores.astype(np.float32)[None]),
                pb_utils.Tensor("AUDIO_EMBEDDING", scores.audio_embedding.astype(np.float32)[None])])
        return responses
