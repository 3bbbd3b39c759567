"""Calibration from reviewers: clip score → probability that a reviewer accepts the model's label, per dataset.

The fit uses the dataset's recorded review decisions (``review_decisions_v1``): the score of the model's label when
the task was made, and whether the reviewer kept it. ``accept`` is a yes; ``correct``, ``relabel`` and ``unusable``
are a no (the reviewer did not keep the model's label). There is no fit below :data:`MIN_DECISIONS` decisions, or
with fewer than :data:`MIN_EACH` of either outcome: a curve fitted on one outcome says nothing about the other.

Methods (scikit-learn):

- ``isotonic`` (default): a non-decreasing step curve, assuming only that a higher score is never less likely to be
  accepted. Scorers differ in scale and shape (cosine similarities for CLAP, probabilities for the tag bridge), so
  no parametric shape is assumed; outside the decided scores the curve stays at its end values.
- ``platt``: a logistic curve sigmoid(a·score + b). Smoother with few decisions, and it extrapolates beyond the
  decided scores, which is also its risk when the decisions cover only the lowest scores.

The threshold for a target precision is the lowest score at which the calibrated P(accept) reaches it and the
decisions at or above it confirm it: their accepted share's one-sided 95 % lower bound (Wilson) reaches the target
too, or the threshold moves up to the lowest decided score where it does. The review stage decides from the lowest
scores up and asks after every decision, so a curve alone would cross early on a lucky run of accepts at the top of
the decided scores (isotonic pools them into one block), and platt would extrapolate beyond them. Functions work on
arrays; the store is read by :func:`decisions` and :func:`summarise` only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Connection, func, select

from auditoryhum.store import review_clips, review_decisions

METHODS = ("isotonic", "platt")
MIN_DECISIONS = 20
MIN_EACH = 5
Z = 1.645  # one-sided 95 %: how sure the decisions above a threshold must be that they reach the target
PRECISIONS = (0.8, 0.9, 0.95, 0.99)  # the report's table: where P(accept) crosses each
ACCEPTED = "accept"
CALIBRATED = "calibrated P(accept)"  # how the reason of a clip the calibration kept unreviewed starts


class NotCalibrated(ValueError):
    """Too few decisions, or one outcome only; the message says which."""


@dataclass(frozen=True)
class Calibration:
    method: str
    decisions: int
    accepted: int
    low: float  # the decided scores' range
    high: float
    knots: tuple[tuple[float, float], ...] = ()  # isotonic: (score, P(accept)), interpolated linearly between
    slope: float = 0.0  # platt: P(accept) = sigmoid(slope·score + intercept)
    intercept: float = 0.0
    # The decisions, by score: what confirms a threshold.
    scores: np.ndarray = field(default=None, repr=False, compare=False)
    outcomes: np.ndarray = field(default=None, repr=False, compare=False)

    def p_accept(self, scores) -> np.ndarray:
        s = np.asarray(scores, dtype=float)
        if self.method == "platt":
            return 1.0 / (1.0 + np.exp(-(self.slope * s + self.intercept)))
        x, y = np.array(self.knots).T
        return np.interp(s, x, y)

    def threshold(self, precision: float) -> float | None:
        """The lowest score at which P(accept) reaches ``precision`` and the decisions at or above it confirm it
        (see the module); None if there is none."""
        start = self._crossing(precision)
        if start is None:
            return None
        s, a = self.scores, self.outcomes
        first = int(np.searchsorted(s, start, side="left"))
        # Candidates: the crossing itself, then each distinct decided score above it; each with the decisions from it.
        k = np.concatenate([[first], np.flatnonzero(s[first + 1:] != s[first:-1]) + first + 1]) if first < len(s) \
            else np.array([], int)
        yes = np.concatenate([np.cumsum(a[::-1])[::-1], [0]])
        confirmed = np.flatnonzero(wilson_lower(yes[k], len(s) - k) >= precision)
        if not len(confirmed):
            return None
        i = int(confirmed[0])
        return start if i == 0 else float(s[k[i]])

    def _crossing(self, precision: float) -> float | None:
        """Where the fitted curve first reaches ``precision`` (isotonic: within the decided scores, and no lower
        than the lowest of them)."""
        if self.method == "platt":
            if self.slope <= 0:
                return None
            return (math.log(precision / (1 - precision)) - self.intercept) / self.slope
        x, y = np.array(self.knots).T
        reached = np.flatnonzero(y >= precision)
        if not len(reached):
            return None
        i = int(reached[0])
        if i == 0:
            return float(x[0])
        return float(x[i - 1] + (precision - y[i - 1]) * (x[i] - x[i - 1]) / (y[i] - y[i - 1]))

    def crossings(self, precisions=PRECISIONS) -> dict[float, float | None]:
        return {p: self.threshold(p) for p in precisions}

    def as_dict(self) -> dict:
        return {"method": self.method, "decisions": self.decisions, "accepted": self.accepted,
                "decided_scores": [self.low, self.high],
                "threshold_at": {f"{p:g}": t for p, t in self.crossings().items()}}


def wilson_lower(accepted, n, z: float = Z) -> np.ndarray:
    """One-sided lower confidence bound of an accepted share (Wilson score interval); 0 where n is 0."""
    n = np.asarray(n, dtype=float)
    safe = np.maximum(n, 1)
    p = np.asarray(accepted, dtype=float) / safe
    bound = (p + z * z / (2 * safe) - z * np.sqrt(p * (1 - p) / safe + z * z / (4 * safe * safe))) / (1 + z * z / safe)
    return np.where(n > 0, bound, 0.0)


def shortfall(accepted: np.ndarray) -> str | None:
    """Why these decisions are too few to calibrate on; None when they are enough."""
    n, yes = len(accepted), int(np.sum(accepted))
    if n < MIN_DECISIONS or min(yes, n - yes) < MIN_EACH:
        return (f"{n} decisions ({yes} accepted, {n - yes} not); calibration needs at least {MIN_DECISIONS} "
                f"with {MIN_EACH} of each")
    return None


def fit(scores, accepted, method: str = "isotonic") -> Calibration:
    """Fit P(accept | score); NotCalibrated when the decisions are too few or one-sided."""
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(METHODS)}, not {method!r}")
    s, a = np.asarray(scores, dtype=float), np.asarray(accepted, dtype=bool)
    if s.shape != a.shape or s.ndim != 1 or not np.all(np.isfinite(s)):
        raise ValueError("scores and accepted must be 1-d arrays of the same length, scores finite")
    if (why := shortfall(a)) is not None:
        raise NotCalibrated(why)
    order = np.argsort(s, kind="stable")
    common = dict(method=method, decisions=len(a), accepted=int(a.sum()), low=float(s.min()), high=float(s.max()),
                  scores=s[order], outcomes=a[order])
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        # Platt's scaling has no prior on the slope: (almost) no regularisation.
        model = LogisticRegression(C=1e6, max_iter=1000).fit(s[:, None], a)
        return Calibration(**common, slope=float(model.coef_[0, 0]), intercept=float(model.intercept_[0]))
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(s, a.astype(float))
    return Calibration(**common, knots=tuple(zip(map(float, model.X_thresholds_), map(float, model.y_thresholds_))))


def decisions(db: Connection, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """(score of the model's label, accepted) of every decision recorded for ``dataset``."""
    rows = db.execute(select(review_decisions.c.score_before, review_decisions.c.action)
                      .where(review_decisions.c.dataset == dataset, review_decisions.c.score_before.is_not(None))
                      .order_by(review_decisions.c.task_id)).all()
    return (np.array([r.score_before for r in rows], dtype=float),
            np.array([r.action == ACCEPTED for r in rows], dtype=bool))


def calibrated_threshold(db: Connection, dataset: str, precision: float, method: str) -> tuple[float | None, str]:
    """The dataset's score threshold for ``precision`` from its decisions so far, or None and why not."""
    scores, accepted = decisions(db, dataset)
    try:
        calibration = fit(scores, accepted, method)
    except NotCalibrated as exc:
        return None, str(exc)
    threshold = calibration.threshold(precision)
    if threshold is None:
        top = float(calibration.p_accept([calibration.low, calibration.high]).max())
        return None, (f"P(accept) does not reach {precision:g}, confirmed by the decisions above it, over the "
                      f"{calibration.decisions} decided scores {calibration.low:.4g} to {calibration.high:.4g} "
                      f"(at most {top:.2f})")
    return threshold, ""


@dataclass(frozen=True)
class Summary:
    """A dataset's calibration as the report and the CLI show it."""
    dataset: str
    scores: np.ndarray  # the decisions: score of the model's label, accepted
    accepted: np.ndarray
    calibration: Calibration | None
    why: str  # why there is no calibration ("" when there is)
    precision: float | None = None  # the precision mode's target, when it is on
    kept: int = 0  # clips the calibration kept unreviewed (they reached the target)

    @property
    def applied(self) -> bool:
        return self.kept > 0

    def note(self) -> str:
        """What the precision mode did; "" when it is off."""
        if self.precision is None:
            return ""
        if self.applied:
            return (f"target precision {self.precision:g} reached: reviewers decided the lowest scores until their "
                    f"decisions confirmed it; {self.kept} clips above kept the model's label unreviewed")
        return (f"target precision {self.precision:g} not applied ({self.why or 'no clip was left to keep'}): "
                f"clips were reviewed by lowest score (review_fraction), without a calibrated threshold")

    def as_dict(self) -> dict:
        found = self.calibration.as_dict() if self.calibration else {"decisions": len(self.accepted),
                                                                     "accepted": int(np.sum(self.accepted)),
                                                                     "not_calibrated": self.why}
        return found | ({"target_precision": self.precision, "applied": self.applied, "note": self.note()}
                        if self.precision is not None else {})


def summarise(db: Connection, dataset: str, method: str = "isotonic", precision: float | None = None) -> Summary:
    """The calibration of ``dataset`` from all its decisions, and what the precision mode did with it."""
    scores, accepted = decisions(db, dataset)
    try:
        calibration, why = fit(scores, accepted, method), ""
    except NotCalibrated as exc:
        calibration, why = None, str(exc)
    if calibration is not None and precision is not None and calibration.threshold(precision) is None:
        why = f"P(accept) never reaches {precision:g} over the decided scores"
    kept = db.execute(select(func.count()).select_from(review_clips).where(
        review_clips.c.dataset == dataset, review_clips.c.task_id.is_(None),
        review_clips.c.reason.startswith(CALIBRATED, autoescape=True))).scalar()
    return Summary(dataset, scores, accepted, calibration, why, precision, kept=kept)
