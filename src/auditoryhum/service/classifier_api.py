"""``ClassifierService``: the scene recogniser that `auditoryhum train` exported, over gRPC (a clip in, its scene
and class probabilities out).

Status codes, as the other APIs map them (:mod:`auditoryhum.service.grpc_api`): INVALID_ARGUMENT for no audio, an
unknown model or audio that cannot be used (unreadable, corrupt, too long, silent); PERMISSION_DENIED for a
clip.uri outside the URI policy (the same words whether or not anything is there); NOT_FOUND for nothing at an
allowed clip.uri; FAILED_PRECONDITION for a model the MODEL_DIR cannot give; UNAVAILABLE for a back-end away for
now (Triton, an object store); DEADLINE_EXCEEDED once the call's deadline passes.
"""

from __future__ import annotations

from typing import Callable

import grpc
import numpy as np

from auditoryhum import audio
from auditoryhum.edge.recogniser import RecogniserError
from auditoryhum.edge.serving import MODELS, SceneRecognisers
from auditoryhum.service import deadlines
from auditoryhum.service.grpc_api import _Abort, _invalid, _quote, _rpc
from auditoryhum.uris import UriRefused
from auditoryhum.v1 import pipeline_pb2 as pb
from auditoryhum.v1 import services_pb2 as api
from auditoryhum.v1 import services_pb2_grpc as api_grpc

RATE = 16_000  # the recogniser's front end (recogniser.json's sample_rate)


class ClassifierServicer(api_grpc.ClassifierServiceServicer):
    """``load_audio`` reads a clip.uri (with the URI policy and the service's limits); ``limits`` apply to inline
    audio."""

    def __init__(self, recognisers: SceneRecognisers, load_audio: Callable[[pb.Clip, int], audio.Audio],
                 limits: audio.AudioLimits):
        self.recognisers, self.load_audio, self.limits = recognisers, load_audio, limits

    @_rpc
    def ClassifyAudio(self, request: api.ClassifyAudioRequest) -> api.ClassifyAudioResponse:
        inline = request.HasField("inline")
        if inline and not request.inline.data:
            raise _invalid(f"inline ({_quote(request.inline.name)}) has no data")
        if not inline and not request.clip.uri:
            raise _invalid("no audio: set inline.data, or clip.uri")
        if request.model and request.model not in MODELS:
            raise _invalid(f"unknown model {_quote(request.model)}; one of: {', '.join(MODELS)}")
        try:
            loaded = self.recognisers.get(request.model)
        except RecogniserError as exc:
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, f"model {request.model or 'default'}: {exc}") from exc
        clip = self._read(request, inline)
        try:
            probs = np.asarray(loaded.recogniser.classify([clip])[0], dtype=np.float64)
        except RecogniserError as exc:  # a model that loaded but cannot run (Triton's differs from the MODEL_DIR's)
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, f"model {loaded.model}: {exc}") from exc
        scenes = [api.SceneProbability(cluster_id=int(c["cluster_id"]), composite_label=c["composite_label"],
                                       probability=float(p)) for c, p in zip(loaded.recogniser.classes, probs)]
        return api.ClassifyAudioResponse(scene=scenes[int(np.argmax(probs))], probabilities=scenes,
                                         model=loaded.model, precision=loaded.precision, model_id=loaded.model_id,
                                         taxonomy_version=loaded.taxonomy_version,
                                         patches=loaded.patches(len(clip.samples)), duration_s=clip.duration_s)

    def _read(self, request: api.ClassifyAudioRequest, inline: bool) -> audio.Audio:
        """The clip's audio at 16 kHz, read within the call's deadline."""
        where = f"inline ({_quote(request.inline.name)})" if inline else f"clip.uri {_quote(request.clip.uri)}"
        if inline:
            budget = audio.DecodeBudget(self.limits.max_request_decoded_bytes)
            read = lambda clip, rate: audio.load_bytes(request.inline.data, rate, self.limits, budget)  # noqa: E731
        else:
            read = self.load_audio
        try:
            return deadlines.current().guard(read)(request.clip, RATE)
        except UriRefused as exc:
            raise _Abort(grpc.StatusCode.PERMISSION_DENIED, f"{where}: {exc}") from exc
        except audio.AudioError as exc:
            missing = isinstance(exc.__cause__, FileNotFoundError)
            raise _Abort(grpc.StatusCode.NOT_FOUND if missing else grpc.StatusCode.INVALID_ARGUMENT,
                         f"{where}: cannot classify the clip: {exc}") from exc
