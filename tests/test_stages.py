"""The four handlers on their own, without any bus: message in, messages out."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditoryhum import topics
from auditoryhum.config import Settings
from auditoryhum.pipeline import audio_loader
from auditoryhum.stages.aligner import AlignerStage
from auditoryhum.stages.clusterer import ClustererStage
from auditoryhum.stages.labeler import HINT_KEY, LabelerStage
from auditoryhum.stages.review import HUMAN_MODEL_ID, ReviewPolicy, ReviewStage
from auditoryhum.taxonomy.builder import TaxonomyBuilder
from auditoryhum.v1 import pipeline_pb2 as pb
from tests.conftest import SIMUTRANS, write_bad_files

VEHICLE_WORDS = ("vehicle", "traffic", "car", "truck", "engine", "road", "bus", "motor")


def clip_of(path: Path, dataset: str = "d") -> pb.Clip:
    return pb.Clip(clip_id=path.stem, uri=str(path), dataset=dataset)


def single(outs):
    assert len(outs) == 1
    return outs[0]


@pytest.fixture(scope="module")
def labeler(models):
    return LabelerStage(models.labeler, audio_loader(Settings()))


@pytest.fixture(scope="module")
def aligner(models):
    return AlignerStage(models.scorer, audio_loader(Settings()))


def test_traffic_clips_get_vehicle_labels(labeler, traffic_clips):
    outs = labeler.handle_batch([clip_of(p) for p in traffic_clips])
    for path, out in zip(traffic_clips, outs):
        proposal = single(out).message
        assert single(out).topic == topics.LABELS and isinstance(proposal, pb.LabelProposal)
        assert proposal.clip.uri == str(path) and proposal.model_id.startswith("yamnet")
        assert any(w in label for label in proposal.labels for w in VEHICLE_WORDS), (path.name, proposal.labels)
        assert proposal.labels == [l for l in proposal.labels if l == l.lower() and len(l.split()) <= 2]
        assert proposal.tags and proposal.tags[0].score >= proposal.tags[-1].score


def test_other_scenes_are_not_called_traffic(labeler):
    proposal = single(labeler.handle(clip_of(SIMUTRANS / "forest.wav"))).message
    assert "bird" in proposal.labels or "animal" in proposal.labels, proposal.labels
    assert not any(w in l for l in proposal.labels for w in ("traffic", "car", "truck"))


def test_contradicting_label_scores_below_the_clips_own_best(labeler, aligner, traffic_clips):
    for path in traffic_clips:
        proposal = single(labeler.handle(clip_of(path))).message
        proposal.labels.extend(["birds singing", "church choir"])
        alignment = single(aligner.handle(proposal)).message
        scores = {s.label: s.score for s in alignment.scores}
        assert alignment.best_label not in ("birds singing", "church choir")
        assert alignment.best_score == max(scores.values())
        assert scores["birds singing"] < alignment.best_score - 0.2, scores
        assert scores["church choir"] < alignment.best_score - 0.2, scores


def test_bad_audio_becomes_dead_letters_with_reasons(models, tmp_path):
    stage = LabelerStage(models.labeler, audio_loader(Settings(max_duration_s=10)))
    expected = write_bad_files(tmp_path)
    clips = [clip_of(tmp_path / name) for name in expected]
    for c, outs in zip(clips, stage.handle_batch(clips)):
        letter = single(outs).message
        assert single(outs).topic == topics.DLQ and isinstance(letter, pb.DeadLetter)
        assert letter.stage == "labeler" and letter.clip_id == c.clip_id and letter.uri == c.uri
        assert expected[Path(c.uri).name] in letter.reason
        assert pb.Clip.FromString(letter.payload) == c  # the original message is kept


def test_labeler_passes_a_reviewers_hint_and_rejects_empty_output(traffic_clips, models):
    class Mute:
        model_id, prompt_id, sample_rate = "mute", "p", 16000

        def describe(self, clips, hints=None):
            from auditoryhum.backends import Description
            self.hints = list(hints)
            return [Description("!!! ...")] * len(clips)

    mute = Mute()
    c = clip_of(traffic_clips[0])
    c.metadata[HINT_KEY] = "there is a siren"
    letter = single(LabelerStage(mute, audio_loader(Settings())).handle(c)).message
    assert mute.hints == ["there is a siren"]
    assert isinstance(letter, pb.DeadLetter) and "no usable label" in letter.reason


def alignment(clip_id: str, score: float, dataset: str = "d", label: str = "car") -> pb.Alignment:
    return pb.Alignment(clip=pb.Clip(clip_id=clip_id, dataset=dataset), best_label=label, best_score=score,
                        scores=[pb.LabelScore(label=label, score=score)], model_id="m")


def by_topic(outs):
    grouped: dict[str, list] = {}
    for o in outs:
        grouped.setdefault(o.topic, []).append(o.message)
    return grouped


def test_review_selects_the_lowest_percent_when_the_dataset_is_complete():
    stage = ReviewStage(ReviewPolicy(fraction=0.02))
    outs = stage.handle(pb.DatasetAnnouncement(dataset="d", expected_clips=151))
    for i in range(150):
        outs += stage.handle(alignment(f"c{i:03d}", 0.5 + i / 1000))
        if i < 149:
            assert not outs, "nothing is decided before the dataset is complete"
    outs += stage.handle(alignment("c000", 0.5))  # a replay changes nothing
    outs += stage.handle(pb.DeadLetter(stage="labeler", clip_id="bad", dataset="d"))
    got = by_topic(outs)
    assert [t.alignment.clip.clip_id for t in got[topics.REVIEW_TASKS]] == ["c000", "c001", "c002"]  # ceil(2% of 150)
    finals = [m for m in got[topics.FINAL_LABELS] if isinstance(m, pb.FinalLabel)]
    assert sorted(f.clip.clip_id for f in finals) == [f"c{i:03d}" for i in range(150)]
    assert all(f.source == pb.LABEL_SOURCE_MODEL for f in finals)
    sealed = got[topics.FINAL_LABELS][-1]
    assert sealed == pb.DatasetSealed(dataset="d", final_labels=150, dead_letters=1)


def test_review_threshold_mode_streams_and_human_decisions_become_final_labels():
    stage = ReviewStage(ReviewPolicy(threshold=0.3, auto_accept=False))
    stage.handle(pb.DatasetAnnouncement(dataset="d", expected_clips=4))
    assert by_topic(stage.handle(alignment("ok", 0.9)))[topics.FINAL_LABELS][0].label == "car"
    tasks = [by_topic(stage.handle(alignment(c, 0.1)))[topics.REVIEW_TASKS][0] for c in ("a", "b", "c")]
    assert not by_topic(stage.handle(alignment("a", 0.1)))  # replay
    correct = pb.ReviewDecision(task_id=tasks[0].task_id, action=pb.REVIEW_ACTION_CORRECT, label="Police SIREN!!")
    rescore = by_topic(stage.handle(correct))[topics.LABELS][0]  # the aligner scores the correction first
    assert (rescore.model_id, list(rescore.labels), rescore.clip.clip_id) == (HUMAN_MODEL_ID, ["police siren"], "a")
    assert stage.handle(correct) == []  # decisions are idempotent
    final = by_topic(stage.handle(pb.Alignment(clip=rescore.clip, model_id=HUMAN_MODEL_ID, best_label="police siren",
                                               best_score=0.7)))[topics.FINAL_LABELS][0]
    assert (final.label, final.source, final.review_action) == ("police siren", pb.LABEL_SOURCE_HUMAN,
                                                                pb.REVIEW_ACTION_CORRECT)
    assert (final.score, final.final_score) == (pytest.approx(0.1), pytest.approx(0.7))  # before, after
    assert stage.handle(pb.ReviewDecision(task_id=tasks[1].task_id, action=pb.REVIEW_ACTION_UNUSABLE)) == []
    back = by_topic(stage.handle(pb.ReviewDecision(task_id=tasks[2].task_id, action=pb.REVIEW_ACTION_RELABEL,
                                                   hint="a dog barks")))
    assert back[topics.CLIPS][0].metadata[HINT_KEY] == "a dog barks" and topics.FINAL_LABELS not in back
    done = by_topic(stage.handle(alignment("c", 0.2, label="dog bark")))[topics.FINAL_LABELS]
    assert (done[0].label, done[0].source, done[0].review_action) == ("dog bark", pb.LABEL_SOURCE_MODEL,
                                                                       pb.REVIEW_ACTION_RELABEL)
    assert (done[0].score, done[0].final_score) == (pytest.approx(0.1), pytest.approx(0.2))
    assert done[1] == pb.DatasetSealed(dataset="d", final_labels=3, dead_letters=0, removed=1)


def test_clusterer_builds_once_the_dataset_is_sealed(models):
    stage = ClustererStage(TaxonomyBuilder(models.embedder, k_max=8, criterion="linear"))
    groups = {
        "vehicles": ["car engine", "truck engine", "passing cars", "road traffic", "motor vehicle", "bus engine"],
        "birds": ["bird song", "birds chirping", "songbirds", "bird calls", "birds singing", "chirping sparrows"],
        "rain": ["heavy rain", "rain falling", "rainfall", "rain drops", "light rain", "pouring rain"],
    }
    labels = [label for members in groups.values() for n, label in enumerate(members) for _ in range(6 - n)]
    outs = stage.handle(pb.DatasetSealed(dataset="d", final_labels=len(labels)))
    for i, label in enumerate(labels):
        assert not outs
        outs = stage.handle(pb.FinalLabel(clip=pb.Clip(clip_id=f"c{i}", dataset="d"), label=label))
    taxonomy = single(outs).message
    assert single(outs).topic == topics.TAXONOMY and taxonomy.k == len(taxonomy.clusters) == 3
    assert {frozenset(lc.label for lc in c.labels) for c in taxonomy.clusters} == {frozenset(g) for g in groups.values()}
    assert sum(c.size for c in taxonomy.clusters) == taxonomy.clips == len(labels)
    assert {c.composite_label for c in taxonomy.clusters} == {"car engine / truck engine",
                                                             "bird song / birds chirping", "heavy rain / rain falling"}
    assert [p.k for p in taxonomy.curve] == list(range(2, 9))
    assert taxonomy.adjusted_silhouette == pytest.approx(taxonomy.silhouette - 2.0 * 3 / 18)


def test_a_correction_with_several_pairs_keeps_the_best_scored_one(aligner, traffic_clips):
    """As in the authors' code, every pair a reviewer types is scored and the best one is final, not the first."""
    stage = ReviewStage(ReviewPolicy(threshold=2.0, auto_accept=False))  # every clip goes to review
    clip = clip_of(traffic_clips[0])
    scored = single(aligner.handle(pb.LabelProposal(clip=clip, model_id="m", labels=["church bells"]))).message
    (task,) = by_topic(stage.handle(scored))[topics.REVIEW_TASKS]
    typed = "Rain falling, Dog barking, Road traffic"
    rescore = by_topic(stage.handle(pb.ReviewDecision(task_id=task.task_id, action=pb.REVIEW_ACTION_CORRECT,
                                                      label=typed)))[topics.LABELS][0]
    assert list(rescore.labels) == ["rain falling", "dog barking", "road traffic"]
    alignment = single(aligner.handle(rescore)).message
    by_label = {s.label: s.score for s in alignment.scores}
    assert alignment.best_label == "road traffic" == max(by_label, key=by_label.get)
    final = by_topic(stage.handle(alignment))[topics.FINAL_LABELS][0]
    assert (final.label, final.final_score) == ("road traffic", pytest.approx(by_label["road traffic"]))
    assert final.source == pb.LABEL_SOURCE_HUMAN and final.review_action == pb.REVIEW_ACTION_CORRECT
