"""Calibration from reviewers: the fit recovers a known score → P(accept) relation, too few or one-sided decisions
give none, the review stage's precision mode calibrates from decisions (and falls back without them), and the
report and the CLI show it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError
from sqlalchemy import select

from auditoryhum import report, topics
from auditoryhum.config import Settings
from auditoryhum.review.calibration import (MIN_DECISIONS, NotCalibrated, calibrated_threshold,
                                            decisions, fit, summarise, wilson_lower)
from auditoryhum.stages.review import FINAL, PENDING, SCORED, ReviewPolicy, ReviewStage
from auditoryhum.store import Store, review_clips
from auditoryhum.v1 import pipeline_pb2 as pb
from tests.test_cli import auditoryhum
from tests.test_stages import alignment, by_topic

SLOPE, OFFSET = 10.0, -5.0  # the reviewers' known behaviour: P(accept | score) = sigmoid(10·score − 5)


def truth(scores):
    return 1.0 / (1.0 + np.exp(-(SLOPE * np.asarray(scores) + OFFSET)))


def analytic_threshold(precision: float) -> float:
    return (math.log(precision / (1 - precision)) - OFFSET) / SLOPE


def drawn(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0, 1, n)
    return scores, rng.uniform(size=n) < truth(scores)


@pytest.mark.parametrize("method, max_tol, mean_tol, threshold_tol", [("isotonic", 0.12, 0.04, 0.08),
                                                                      ("platt", 0.04, 0.02, 0.03)])
def test_the_fit_recovers_a_known_relation_and_its_thresholds(method, max_tol, mean_tol, threshold_tol):
    """Tolerances hold across seeds at 2000 decisions; isotonic is a step curve, so its are wider."""
    scores, accepted = drawn(2000)
    calibration = fit(scores, accepted, method)
    grid = np.array([0.2, 0.35, 0.5, 0.65, 0.8])
    assert np.abs(calibration.p_accept(grid) - truth(grid)).max() < max_tol
    fine = np.linspace(0.05, 0.95, 181)
    assert np.abs(calibration.p_accept(fine) - truth(fine)).mean() < mean_tol
    assert calibration.decisions == 2000 and calibration.accepted == int(accepted.sum())
    for precision in (0.8, 0.9, 0.95):
        assert calibration.threshold(precision) == pytest.approx(analytic_threshold(precision), abs=threshold_tol)


def test_too_few_or_one_sided_decisions_give_no_calibration():
    scores, accepted = drawn(MIN_DECISIONS - 1)
    with pytest.raises(NotCalibrated, match=f"{MIN_DECISIONS - 1} decisions"):
        fit(scores, accepted)
    scores = np.linspace(0, 1, 200)
    with pytest.raises(NotCalibrated, match="200 accepted, 0 not"):
        fit(scores, np.ones(200, bool))
    with pytest.raises(NotCalibrated, match="3 accepted, 197 not"):
        fit(scores, np.arange(200) >= 197)
    with pytest.raises(ValueError, match="isotonic, platt"):
        fit(scores, scores > 0.5, "spline")
    with pytest.raises(ValueError, match="same length"):
        fit(scores, scores[:-1] > 0.5)


def test_a_threshold_needs_the_decisions_above_it_to_confirm_the_target():
    """A lucky run of accepts at the top of the decided scores (the stage decides from the bottom up) must not set
    the threshold: the decisions at or above it must reach the target at the one-sided 95 % Wilson bound."""
    assert wilson_lower(25, 25) == pytest.approx(25 / (25 + 1.645 ** 2))
    scores = np.linspace(0, 1, 100)
    accepted = np.arange(100) % 3 == 1  # a third accepted below the run, not the score just below it
    for run, confirmed in ((5, False), (24, False), (25, True)):  # 25/(25 + 1.645²) ≥ 0.9 > 24/(24 + 1.645²)
        accepted[-run:] = True
        calibration = fit(scores, accepted)
        assert calibration.p_accept([1.0])[0] == 1.0  # the curve reaches the target in every case
        threshold = calibration.threshold(0.9)
        if confirmed:
            assert scores[-run - 1] < threshold <= scores[-run]
        else:
            assert threshold is None
    # Platt's curve crosses beyond the decided scores: nothing there confirms it.
    low, yes = drawn(2000)
    calibration = fit(low[low < 0.6], yes[low < 0.6], "platt")
    assert calibration.slope > 0 and calibration._crossing(0.9) > 0.6 and calibration.threshold(0.9) is None


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.2])
def test_bad_review_precisions_are_refused(bad):
    with pytest.raises(ValidationError, match="review_precision"):
        Settings(review_precision=bad)
    with pytest.raises(ValueError, match="review precision"):
        ReviewPolicy(precision=bad)


def test_precision_and_threshold_are_exclusive(tmp_path):
    with pytest.raises(ValidationError, match="not both"):
        Settings(review_precision=0.9, review_threshold=0.3)
    with pytest.raises(ValueError, match="not both"):
        ReviewPolicy(threshold=0.3, precision=0.9)
    with pytest.raises(ValidationError, match="review_calibration"):
        Settings(review_calibration="spline")
    result = auditoryhum("run", str(tmp_path), "--review-precision", "0.9", "--review-threshold", "0.3")
    assert result.returncode == 2 and "not both" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "notes.csv").write_text("dog bark\n")
    notes = str(tmp_path / "notes.csv")
    result = auditoryhum("run", str(tmp_path), "--review-precision", "0.9", "--annotations", notes)
    assert result.returncode == 2 and "no target precision with it" in result.stderr


def fill(stage: ReviewStage, n: int, dataset: str = "d") -> list:
    """A complete dataset of n clips with evenly spread scores in [0, 1)."""
    outs = stage.handle(pb.DatasetAnnouncement(dataset=dataset, expected_clips=n))
    for i in range(n):
        outs += stage.handle(alignment(f"{dataset}{i:04d}", i / n, dataset))
    return outs


def statuses(stage: ReviewStage, dataset: str = "d") -> dict[str, str]:
    with stage.store.transaction() as db:
        return dict(db.execute(select(review_clips.c.clip_id, review_clips.c.status)
                               .where(review_clips.c.dataset == dataset)).all())


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'review.db'}"
    return request.getfixturevalue("postgres_db")


def test_precision_mode_reviews_from_the_lowest_scores_until_the_decisions_confirm_the_target(url):
    """Reviewers accept with the known probability. The stage reviews the lowest scores a batch at a time until the
    decisions confirm the target; then the held clips are final, unreviewed. The stage restarts half-way (its state
    is a database): the calibration comes back from the stored decisions."""
    n, precision = 300, 0.9
    stage = ReviewStage(ReviewPolicy(fraction=0.05, auto_accept=False, precision=precision), store=Store(url))
    outs = fill(stage, n)
    tasks = by_topic(outs)[topics.REVIEW_TASKS]
    assert len(tasks) == 15 and topics.FINAL_LABELS not in by_topic(outs)  # the rest are held, not final
    assert "until calibrated" in tasks[0].reason
    rng = np.random.default_rng(1)
    decided, kept, restarted = 0, [], False
    while tasks:
        task = tasks.pop(0)
        score = task.alignment.best_score
        action = pb.REVIEW_ACTION_ACCEPT if rng.uniform() < truth(score) else pb.REVIEW_ACTION_UNUSABLE
        got = by_topic(stage.handle(pb.ReviewDecision(task_id=task.task_id, action=action)))
        decided += 1
        tasks += got.get(topics.REVIEW_TASKS, [])
        kept += [m for m in got.get(topics.FINAL_LABELS, []) if isinstance(m, pb.FinalLabel) and not m.review_action]
        if decided == 30 and not restarted:
            stage.store.close()
            stage, restarted = ReviewStage(stage.policy, store=Store(url)), True
    sealed = [m for m in got[topics.FINAL_LABELS] if isinstance(m, pb.DatasetSealed)]
    assert sealed and sealed[0].final_labels + sealed[0].removed == n
    with stage.store.transaction() as db:
        threshold, why = calibrated_threshold(db, "d", precision, "isotonic")
        summary = summarise(db, "d", "isotonic", precision)
        reasons = dict(db.execute(select(review_clips.c.score, review_clips.c.reason)
                                  .where(review_clips.c.reason.startswith("calibrated"))).all())
    applied = {float(r.rsplit(" ", 1)[1].rstrip(")")) for r in reasons.values()}
    assert len(applied) == 1  # the threshold the held clips were kept at, once
    (applied,) = applied
    assert applied == pytest.approx(analytic_threshold(precision), abs=0.1)
    assert why == "" and threshold == pytest.approx(analytic_threshold(precision), abs=0.1)
    kept_scores = sorted(f.score for f in kept)
    assert kept and kept_scores[0] >= applied and sorted(reasons) == kept_scores
    assert set(reasons.values()) == {f"calibrated P(accept) at least 0.9 (score ≥ {applied:.4g})"}
    # Every clip below the kept ones was reviewed, and what was kept meets the target under the known relation.
    assert decided == n - len(kept) == summary.calibration.decisions
    assert kept_scores[0] == pytest.approx(decided / n)
    assert np.mean(truth(kept_scores)) >= precision and truth(applied) >= precision - 0.1
    assert summary.applied and summary.kept == len(kept) and f"{len(kept)} clips above kept" in summary.note()


def test_without_enough_decisions_precision_mode_falls_back_to_the_fraction():
    # No reviewers: the lowest fraction is queued (and keeps its labels), as without a target.
    stage = ReviewStage(ReviewPolicy(fraction=0.1, auto_accept=True, precision=0.95))
    got = by_topic(fill(stage, 50))
    assert len(got[topics.REVIEW_TASKS]) == 5 and isinstance(got[topics.FINAL_LABELS][-1], pb.DatasetSealed)
    with stage.store.transaction() as db:
        note = summarise(db, "d", precision=0.95).note()
    assert "not applied (0 decisions" in note and "reviewed by lowest score" in note
    # Reviewers who decide too little: closing the review finalises the held clips with the model's label.
    stage = ReviewStage(ReviewPolicy(fraction=0.1, auto_accept=False, precision=0.95))
    tasks = by_topic(fill(stage, 50))[topics.REVIEW_TASKS]
    stage.handle(pb.ReviewDecision(task_id=tasks[0].task_id, action=pb.REVIEW_ACTION_ACCEPT))
    assert list(statuses(stage).values()).count(SCORED) == 45 and list(statuses(stage).values()).count(PENDING) == 4
    closed = stage.close_review("d")
    assert sum(isinstance(m.message, pb.FinalLabel) for m in closed) == 49
    assert set(statuses(stage).values()) == {FINAL} and isinstance(closed[-1].message, pb.DatasetSealed)
    with stage.store.transaction() as db:
        assert decisions(db, "d")[1].tolist() == [True]
        summary = summarise(db, "d", precision=0.95)
    assert summary.calibration is None and not summary.applied and "1 decisions (1 accepted, 0 not)" in summary.why


def test_the_report_shows_the_calibration(tmp_path):
    stage = ReviewStage(ReviewPolicy(fraction=1.0, auto_accept=False))
    tasks = by_topic(fill(stage, 300))[topics.REVIEW_TASKS]
    rng = np.random.default_rng(2)
    for task in tasks:
        accept = rng.uniform() < truth(task.alignment.best_score)
        stage.handle(pb.ReviewDecision(task_id=task.task_id, label="dog bark",
                                       action=pb.REVIEW_ACTION_ACCEPT if accept else pb.REVIEW_ACTION_CORRECT))
    with stage.store.transaction() as db:
        summary = summarise(db, "d", "platt", precision=0.9)
    cal = summary.calibration
    page = report.write(tmp_path, pb.Taxonomy(dataset="d"), {}, {}, calibration=summary).read_text()
    accepted = int(summary.accepted.sum())
    assert "<h2>Calibration from reviewers</h2>" in page
    assert f"300 decisions ({accepted} accepted, {300 - accepted} corrected" in page
    assert "fitted by platt regression" in page
    for p in (0.8, 0.9, 0.95):
        assert f"<tr><td>{p:g}</td><td>{cal.threshold(p):.4f}</td></tr>" in page
    assert "<tr><td>0.99</td><td>not reached</td></tr>" in page  # ~12 decisions above it cannot confirm 99 %
    assert cal.threshold(0.9) == pytest.approx(analytic_threshold(0.9), abs=0.05)
    assert "target precision 0.9 not applied" in page  # fraction 1.0: every clip was reviewed, none held
    assert 'src="review_calibration.png"' in page and (tmp_path / "review_calibration.png").stat().st_size > 5000
    with Store().transaction() as db:
        nothing = summarise(db, "d", precision=0.95)
    few = report.write(tmp_path / "few", pb.Taxonomy(dataset="d"), {}, {}, calibration=nothing).read_text()
    assert "Not calibrated: 0 decisions" in few and "review_calibration.png" not in few


def test_the_cli_prints_each_datasets_calibration_from_the_state(tmp_path):
    url = f"sqlite:///{tmp_path / 'review.db'}"
    stage = ReviewStage(ReviewPolicy(fraction=1.0, auto_accept=False), store=Store(url))
    for dataset, n in (("scenes", 120), ("few", 8)):
        for task in by_topic(fill(stage, n, dataset))[topics.REVIEW_TASKS]:
            accept = task.alignment.best_score >= 0.5
            stage.handle(pb.ReviewDecision(task_id=task.task_id, action=pb.REVIEW_ACTION_ACCEPT if accept
                                           else pb.REVIEW_ACTION_UNUSABLE))
    stage.store.close()
    result = auditoryhum("review", "calibration", "--url", url, "--out", str(tmp_path / "plots"))
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:]]
            for line in result.stdout.splitlines() if line.count("│") > 3}
    # Accepted exactly from 0.5: the isotonic curve rises between the scores 59/120 and 60/120; the 60 accepts
    # above confirm 0.95 (60/(60 + 1.645²) ≥ 0.95), not 0.99.
    assert rows["scenes"][:6] == ["120", "60", *(f"{(59 + p) / 120:.4f}" for p in (0.8, 0.9, 0.95)), "not reached"]
    assert rows["few"][:6] == ["8", "4", "-", "-", "-", "-"] and "needs at least 20" in rows["few"][6]
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"scenes_calibration.png", "few_calibration.png"}
    missing = auditoryhum("review", "calibration", "--url", f"sqlite:///{tmp_path / 'none.db'}")
    assert missing.returncode == 1 and "no such database file" in missing.stderr


def test_the_embedded_run_reviews_in_batches_through_the_ui_and_reports_the_calibration(models, tmp_path):
    """`run --review-ui --review-precision`: a reviewer works through the browser UI (real HTTP); each decided batch
    brings the next lowest scores, since 12 clips can never calibrate, and the report says the target fell back."""
    import httpx

    from auditoryhum import pipeline
    from tests.review_state import csrf_of
    from tests.test_pipeline import SCENES

    audio_dir = tmp_path / "mini"
    for scene, paths in SCENES.items():
        (audio_dir / scene).mkdir(parents=True)
        for p in paths:
            (audio_dir / scene / p.name).write_bytes(p.read_bytes())
    served, decided = [], []

    def reviewer(url: str, pending: int) -> None:
        served.append(pending)
        with httpx.Client(base_url=url, follow_redirects=False, timeout=60) as c:
            c.post("/signin", data={"csrf": csrf_of(c.get("/signin").text), "name": "ann", "next": "/"})
            where = c.post("/next", data={"csrf": csrf_of(c.get("/").text)}).headers["location"]
            while where != "/":  # each decision leads to the next task, "/" when none is left
                action = "accept" if len(decided) % 3 else "unusable"
                answer = c.post(f"{where}/decision", data={"csrf": csrf_of(c.get(where).text), "action": action})
                decided.append(action)
                where = answer.headers["location"]
            assert c.post("/finish", data={"csrf": csrf_of(c.get("/").text)}).status_code == 200

    settings = Settings(max_duration_s=10, class_from_folder=True, review_fraction=0.2, review_precision=0.9)
    result = pipeline.run(audio_dir, tmp_path / "out", settings, models=models,
                          review_ui=pipeline.ReviewUi(port=0, on_ready=reviewer))
    assert served == [3]  # ceil(20 % of 12): the first batch
    assert len(decided) == 12 and result.summary["reviewed"] == 12  # batch after batch, every clip
    calibration = result.summary["calibration"]
    assert calibration["decisions"] == 12 and calibration["accepted"] == decided.count("accept") == 8
    assert calibration["applied"] is False and "not applied (12 decisions" in calibration["note"]
    page = (tmp_path / "out" / "report.html").read_text()
    assert "12 decisions (8 accepted, 4 corrected, re-labelled or unusable)" in page
    assert "target precision 0.9 not applied" in page and 'src="review_calibration.png"' in page
