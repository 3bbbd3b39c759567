"""How the review queue ranks a dataset's clips, most suspect first (setting ``review_rank``).

- ``score``: lowest alignment score first (the paper's).
- ``disagreement``: highest disagreement between the clip's labelers first (see :mod:`auditoryhum.stages.aligner`);
  ties, such as every clip its labelers agree on (0), by score. With one labeler every clip ties: score order.
- ``combined``: the mean of the clip's two ranks, by score (lowest first) and by disagreement (highest first), each
  the average rank of its ties; ties by score.

``review_fraction`` is the top fraction of this order (at least one clip), whichever rank. ``review_threshold`` is a
score threshold, streamed clip by clip: it goes with ``score`` only, as the other ranks need the whole dataset.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import rankdata

RANKS = ("score", "disagreement", "combined")
REASONS = {"score": "lowest {:.0%} of dataset scores", "disagreement": "highest {:.0%} of labelers' disagreement",
           "combined": "top {:.0%} of low score and high disagreement (mean rank)"}


def suspect_order(scores: Sequence[float], disagreements: Sequence[float], rank: str) -> np.ndarray:
    """Indices of the clips, most suspect first; equal keys keep their input order."""
    if rank not in RANKS:
        raise ValueError(f"review rank {rank!r}: one of {', '.join(RANKS)}")
    scores, spread = np.asarray(scores, dtype=np.float64), np.asarray(disagreements, dtype=np.float64)
    if rank == "score":
        primary = scores
    elif rank == "disagreement":
        primary = -spread
    else:
        primary = (rankdata(scores) + rankdata(-spread)) / 2
    return np.lexsort((np.arange(len(scores)), scores, primary))
