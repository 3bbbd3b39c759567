"""What every stage shares: the output record, the handler contract and dead letters."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, ContextManager, Sequence

from google.protobuf.message import Message

from auditoryhum import topics
from auditoryhum.v1 import pipeline_pb2 as pb

if TYPE_CHECKING:
    from auditoryhum.store import Store


@dataclass(frozen=True)
class Out:
    topic: str
    key: str
    message: Message


class Stage:
    """A handler: ``handle`` maps one message to the records to publish.

    Stages whose model is faster on batches override ``handle_batch``; the runner always calls ``handle_batch``.
    Expected bad input becomes a dead letter inside the handler; anything else raised is the runner's to catch.
    """

    name: str = "stage"
    consumes: tuple[str, ...] = ()
    store: "Store | None" = None  # a stage with state: its outputs go through the store's outbox

    def handle(self, message: Message) -> list[Out]:
        raise NotImplementedError

    def handle_batch(self, messages: Sequence[Message]) -> list[list[Out]]:
        return [self.handle(m) for m in messages]

    def transaction(self) -> ContextManager:
        """Held by the runner around handling a batch and emitting its outputs; stateful stages commit their state
        in it, together with their outputs (written to the store's outbox, relayed once it commits)."""
        return nullcontext()


def dead_letter(stage: str, reason: str, message: Message | None = None, *, clip: pb.Clip | None = None,
                payload: bytes | None = None, payload_type: str = "") -> Out:
    """A dead-letter record carrying the reason and the original payload, keyed by clip id when there is one."""
    if clip is None and message is not None:
        clip = message if isinstance(message, pb.Clip) else getattr(message, "clip", None)
    letter = pb.DeadLetter(
        stage=stage,
        reason=reason,
        payload_type=message.DESCRIPTOR.full_name if message is not None else payload_type,
        payload=message.SerializeToString() if message is not None else (payload or b""),
    )
    if clip is not None:
        letter.clip_id, letter.dataset, letter.uri = clip.clip_id, clip.dataset, clip.uri
    letter.failed_at.GetCurrentTime()
    return Out(topics.DLQ, letter.clip_id or stage, letter)
