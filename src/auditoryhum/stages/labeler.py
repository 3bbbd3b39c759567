"""Labeler stage: a clip → its label proposal (the model's raw text, the post-processed labels and the tags)."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Callable, Sequence

from auditoryhum import topics
from auditoryhum.audio import Audio, AudioError
from auditoryhum.backends import Description, Labeler
from auditoryhum.labels import parse_labels
from auditoryhum.stages.base import Out, Stage, dead_letter
from auditoryhum.v1 import pipeline_pb2 as pb

HINT_KEY = "review_hint"  # Clip.metadata key of a reviewer's hint for re-labelling


class LabelerStage(Stage):
    """With an executor, a batch is split into one chunk per worker, each decoded and labelled on its own thread:
    decoding, features and the model all release the GIL, so two workers keep two cores busy.

    With several labelers, every one describes every clip and the clip gets one proposal carrying all their answers
    (LabelProposal.labelers), so the aligner sees them together: one record in, one out, as with one labeler. A
    labeler whose text has no usable label is recorded with no labels; the clip is dead-lettered only when no
    labeler gave one."""

    name = "labeler"
    consumes = (topics.CLIPS,)

    def __init__(self, labeler: Labeler | Sequence[Labeler], load_audio: Callable[[pb.Clip, int], Audio], *,
                 max_words: int = 2, executor: Executor | None = None, workers: int = 1):
        self.labelers = [labeler] if hasattr(labeler, "describe") else list(labeler)
        self.labeler = self.labelers[0]
        self.load_audio, self.max_words = load_audio, max_words
        self._executor, self._workers = executor, max(1, workers)

    def handle(self, message: pb.Clip) -> list[Out]:
        return self.handle_batch([message])[0]

    def handle_batch(self, clips: Sequence[pb.Clip]) -> list[list[Out]]:
        if self._executor is None or self._workers == 1 or len(clips) < 2:
            return self._label(clips)
        size = -(-len(clips) // self._workers)
        chunks = [clips[i : i + size] for i in range(0, len(clips), size)]
        return [outs for chunk in self._executor.map(self._label, chunks) for outs in chunk]

    def _label(self, clips: Sequence[pb.Clip]) -> list[list[Out]]:
        outs: list[list[Out]] = [[] for _ in clips]
        # Each labeler reads the audio at its own rate; a clip that cannot be read at one is dead-lettered.
        audio: dict[int, list[Audio | str]] = {}
        for rate in dict.fromkeys(labeler.sample_rate for labeler in self.labelers):
            audio[rate] = [self._load(clip, rate) for clip in clips]
        failed: dict[int, str] = {}
        for loaded in audio.values():
            for i, a in enumerate(loaded):
                if isinstance(a, str):
                    failed.setdefault(i, a)
        for i, reason in sorted(failed.items()):
            outs[i].append(dead_letter(self.name, reason, clips[i]))
        ready = [i for i in range(len(clips)) if i not in failed]
        if not ready:
            return outs
        hints = [clips[i].metadata.get(HINT_KEY, "") for i in ready]
        answers = [[self._answer(labeler, d) for d in labeler.describe([audio[labeler.sample_rate][i] for i in ready],
                                                                        hints)]
                   for labeler in self.labelers]
        for j, (i, hint) in enumerate(zip(ready, hints)):
            clip = clips[i]
            proposal = proposal_of(clip, [answer[j] for answer in answers])
            if not proposal.labels:
                text = "; ".join(repr(a.raw_text[:200]) for a in (answer[j] for answer in answers))
                outs[i].append(dead_letter(self.name, f"no usable label in model output {text}", clip))
                continue
            proposal.hint = hint
            outs[i].append(Out(topics.LABELS, clip.clip_id, proposal))
        return outs

    def _answer(self, labeler: Labeler, description: Description) -> pb.LabelerOutput:
        answer = pb.LabelerOutput(model_id=labeler.model_id, prompt_id=labeler.prompt_id,
                                  raw_text=description.raw_text,
                                  labels=parse_labels(description.raw_text, self.max_words))
        answer.tags.extend(pb.Tag(name=n, score=s) for n, s in description.tags)
        answer.class_probabilities.extend(description.probabilities)
        return answer

    def _load(self, clip: pb.Clip, rate: int) -> Audio | str:
        try:
            return self.load_audio(clip, rate)
        except AudioError as exc:
            return str(exc)


def proposal_of(clip: pb.Clip, answers: Sequence[pb.LabelerOutput]) -> pb.LabelProposal:
    """The clip's proposal from its labelers' answers: one labeler's as it is; several in ``labelers``, with the
    top-level fields describing them all (see LabelProposal)."""
    if len(answers) == 1:
        (a,) = answers
        return pb.LabelProposal(clip=clip, model_id=a.model_id, prompt_id=a.prompt_id, raw_text=a.raw_text,
                                labels=a.labels, tags=a.tags, class_probabilities=a.class_probabilities)
    return pb.LabelProposal(
        clip=clip, model_id="+".join(a.model_id for a in answers),
        prompt_id="+".join(dict.fromkeys(a.prompt_id for a in answers)),
        raw_text="\n".join(f"{a.model_id}: {a.raw_text}" for a in answers),
        labels=list(dict.fromkeys(label for a in answers for label in a.labels)),
        tags=next((a.tags for a in answers if a.tags), []),
        class_probabilities=next((a.class_probabilities for a in answers if a.class_probabilities), []),
        labelers=answers)
