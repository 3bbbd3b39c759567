"""The pure handlers of the four pipeline stages: a message in, the messages to publish out.

Handlers do no I/O of their own: models, audio loading and state come in through their constructors. The same
handlers run in the embedded runner (:mod:`auditoryhum.pipeline`) and in the distributed services.
"""

from auditoryhum.stages.base import Out, Stage, dead_letter

__all__ = ["Out", "Stage", "dead_letter"]
