"""Several labelers per clip in the embedded mode: every clip gets all labelers' answers in one proposal, keeps the
best-aligned label, and records how far apart the labelers' labels are; the review queue ranks by score,
disagreement or both."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from auditoryhum import pipeline
from auditoryhum.audio import load
from auditoryhum.backends.soundnet import SoundNetLabeler, SoundNetTagger, label_text
from auditoryhum.config import Settings
from auditoryhum.labelers import LabelerSpec, parse_labelers
from auditoryhum.labels import parse_labels
from auditoryhum.models import Models
from auditoryhum.quality.ranking import precision_at, read_descriptions, swap_experiment, with_reference
from auditoryhum.review.rank import suspect_order
from auditoryhum.stages.aligner import AlignerStage
from auditoryhum.stages.labeler import LabelerStage
from auditoryhum.stages.review import ReviewPolicy, ReviewStage
from auditoryhum.v1 import pipeline_pb2 as pb
from tests.conftest import LINCITY, SIMUTRANS

CLIPS = {"traffic": [LINCITY / "TraficHigh1.wav", LINCITY / "TraficLow2.wav"],
         "nature": [SIMUTRANS / "forest.wav", SIMUTRANS / "seagulls.wav"]}


def rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def load_clip(clip: pb.Clip, rate: int):
    return load(clip.uri, rate)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("multi") / "scenes"
    for scene, paths in CLIPS.items():
        (folder / scene).mkdir(parents=True)
        for p in paths:
            shutil.copy(p, folder / scene / p.name)
    return folder


def test_the_labelers_setting_names_models_and_rejects_bad_entries():
    assert parse_labelers("yamnet, qwen=/models/Qwen2-Audio , Qwen/Qwen2.5-Omni-3B") == [
        LabelerSpec("yamnet"), LabelerSpec("/models/Qwen2-Audio", "qwen"), LabelerSpec("Qwen/Qwen2.5-Omni-3B")]
    assert parse_labelers("a=/m/x=y") == [LabelerSpec("/m/x=y", "a")]  # the first "=" ends the name
    for bad, words in (("yamnet,,x", "is not [name=]model"), ("=/m/x", "is not [name=]model"),
                       ("yamnet,yamnet", "yamnet given twice")):
        with pytest.raises(ValueError, match=words.replace("[", r"\[")):
            parse_labelers(bad)
    with pytest.raises(ValueError, match="given twice"):
        Settings(labelers="a=yamnet,a=/m/q")
    assert Settings().labelers is None  # by default the profile's one labeler


def test_rank_by_disagreement_asks_for_a_fraction_and_two_labelers(audio_dir, tmp_path):
    with pytest.raises(ValueError, match="review_fraction"):
        Settings(review_rank="disagreement", review_threshold=0.5)
    with pytest.raises(ValueError, match="score threshold"):
        ReviewPolicy(threshold=0.5, rank="combined")
    with pytest.raises(pipeline.NeedsLabelers, match="two or more labelers"):
        pipeline.run(audio_dir, tmp_path / "out", Settings(review_rank="combined"))


def test_agreeing_labelers_are_0_apart_and_others_by_their_cosine(models):
    stage = LabelerStage([models.labeler], load_clip)
    traffic = stage.handle(pb.Clip(clip_id="t", uri=str(CLIPS["traffic"][0]), dataset="d"))[0].message
    aligner = AlignerStage(models.scorer, load_clip, embedder=lambda: models.embedder)

    def proposal(*labels: list[str]) -> pb.LabelProposal:
        answers = [pb.LabelerOutput(model_id=f"m{i}", labels=ls) for i, ls in enumerate(labels)]
        return pb.LabelProposal(clip=traffic.clip, labels=list(dict.fromkeys(x for ls in labels for x in ls)),
                                tags=traffic.tags, labelers=answers)

    agree, differ, silent = (out.message for [out] in aligner.handle_batch([
        proposal(["motor vehicle", "car"], ["car", "motor vehicle"]),
        proposal(["car engine"], ["church bells", "bird song"]),
        proposal(["car engine"], [], ["car engine"])]))
    assert agree.disagreement == 0.0 and agree.labelers[0].label == agree.labelers[1].label == agree.best_label
    scores = {s.label: s.score for s in differ.scores}
    other = max(["church bells", "bird song"], key=scores.get)
    assert [(b.model_id, b.label) for b in differ.labelers] == [("m0", "car engine"), ("m1", other)]
    assert differ.best_label == max(scores, key=scores.get) == "car engine" and differ.model_id == "m0"
    u, v = models.embedder.embed(["car engine", other])
    assert differ.disagreement == pytest.approx(1 - float(u @ v), abs=1e-6) and differ.disagreement > 0.2
    # A labeler with no usable label is 1 from each other: pairs (0, 1) and (1, 2) count 1, (0, 2) agree.
    assert silent.disagreement == pytest.approx(2 / 3) and silent.labelers[1].label == ""


def test_one_proposal_carries_every_labelers_answer(models, tiny_qwen2_audio):
    """The random-weight MLLM's text may hold labels or none: either way the clip keeps its proposal, with the
    MLLM's answer parsed from its own text."""
    from auditoryhum.backends.mllm import MllmLabeler

    mllm = MllmLabeler(str(tiny_qwen2_audio), model_id="qwen")
    clips = [pb.Clip(clip_id=p.stem, uri=str(p), dataset="d") for p in CLIPS["traffic"]]
    texts = [d.raw_text for d in mllm.describe([load(c.uri, mllm.sample_rate) for c in clips])]
    for clip, text, [out] in zip(clips, texts, LabelerStage([models.labeler, mllm], load_clip).handle_batch(clips)):
        proposal = out.message
        yamnet, qwen = proposal.labelers
        assert (yamnet.model_id, qwen.model_id) == (models.labeler.model_id, "qwen")
        assert qwen.raw_text == text and list(qwen.labels) == parse_labels(text) and yamnet.labels and yamnet.tags
        assert list(proposal.labels) == list(dict.fromkeys([*yamnet.labels, *qwen.labels]))
        assert proposal.tags == yamnet.tags and proposal.model_id == f"{yamnet.model_id}+qwen"


@pytest.fixture(scope="module")
def two_labelers(audio_dir, tiny_qwen2_audio, tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "out"
    settings = Settings(labelers=f"yamnet,qwen={tiny_qwen2_audio}", class_from_folder=True, review_fraction=0.25,
                        review_rank="combined")
    pipeline.run(audio_dir, out, settings, models=Models(settings))
    return out


def test_labelers_that_agree_on_every_clip_are_0_apart(audio_dir, tmp_path):
    pipeline.run(audio_dir, tmp_path, Settings(labelers="a=yamnet,b=yamnet", review_rank="disagreement"))
    finals = rows(tmp_path / "final_labels.csv")
    assert len(finals) == 4 and {r["disagreement"] for r in finals} == {"0.000000"}
    assert {r["model"] for r in finals} == {"a"}  # the first labeler that proposed the kept label
    assert [r["model"] for r in rows(tmp_path / "labelers.csv")] == ["a", "b"] * 4
    [queued] = rows(tmp_path / "review_queue.csv")  # all tie at 0: the lowest score
    assert float(queued["score"]) == min(float(r["score"]) for r in finals)


def test_every_clip_keeps_its_best_aligned_label_and_records_the_disagreement(two_labelers, models):
    out = two_labelers
    finals = {r["clip_id"]: r for r in rows(out / "final_labels.csv")}
    assert len(finals) == 4 and not rows(out / "dead_letters.csv")
    by_clip: dict[str, list[dict]] = {}
    for r in rows(out / "labelers.csv"):
        by_clip.setdefault(r["clip_id"], []).append(r)
    yamnet_id = models.tagger.model_id
    for clip_id, final in finals.items():
        answers = by_clip[clip_id]
        assert [a["model"] for a in answers] == [yamnet_id, "qwen"]  # both labelers answered every clip
        scored = {a["label"]: float(a["score"]) for a in rows(out / "alignments.csv") if a["clip_id"] == clip_id}
        assert final["label"] == max(scored, key=scored.get)
        assert float(final["score"]) == pytest.approx(max(scored.values()), abs=1e-5)
        kept = [a for a in answers if a["kept"] == "1"]
        assert kept and final["model"] == kept[0]["model"] and kept[0]["label"] == final["label"]
        labels = [a["label"] or None for a in answers]
        vectors = [models.embedder.embed([x])[0] if x else None for x in labels]
        expected = 1.0 if any(v is None for v in vectors) else (0.0 if labels[0] == labels[1] else 1 - float(vectors[0] @ vectors[1]))
        assert float(final["disagreement"]) == pytest.approx(expected, abs=1e-5)
    raw = {r["clip_id"]: r["raw"] for r in rows(out / "labels.csv")}
    assert all(text.startswith(f"{yamnet_id}: ") and "\nqwen: " in text for text in raw.values())


def test_the_review_queue_is_the_top_of_the_combined_rank(two_labelers):
    finals = rows(two_labelers / "final_labels.csv")
    scores = np.array([float(r["score"]) for r in finals])
    spread = np.array([float(r["disagreement"]) for r in finals])
    # the mean of the two ranks (average ranks of ties), by hand
    low = np.array([(np.sum(scores < s) + (np.sum(scores == s) + 1) / 2) for s in scores])
    high = np.array([(np.sum(spread > d) + (np.sum(spread == d) + 1) / 2) for d in spread])
    mean = (low + high) / 2
    best = min(range(len(finals)), key=lambda i: (mean[i], scores[i]))
    [queued] = rows(two_labelers / "review_queue.csv")  # 25 % of 4 clips
    assert queued["clip_id"] == finals[best]["clip_id"]
    assert float(queued["disagreement"]) == pytest.approx(spread[best], abs=1e-6)


def alignment(clip_id: str, score: float, spread: float) -> pb.Alignment:
    return pb.Alignment(clip=pb.Clip(clip_id=clip_id, dataset="d"), best_label=f"label {clip_id}", best_score=score,
                        disagreement=spread)


@pytest.mark.parametrize("rank, expected, reason", [
    ("score", ["a", "b"], "lowest 40% of dataset scores"),
    ("disagreement", ["d", "c"], "highest 40% of labelers' disagreement"),
    # mean ranks: a (1+4.5)/2, b (2+4.5)/2, c (3+2)/2, d (4+1)/2, e (5+3)/2: c and d tie at 2.5, c scores lower
    ("combined", ["c", "d"], "top 40% of low score and high disagreement (mean rank)"),
])
def test_review_selects_the_top_fraction_of_its_rank(rank, expected, reason):
    stage = ReviewStage(ReviewPolicy(fraction=0.4, rank=rank))
    stage.handle(pb.DatasetAnnouncement(dataset="d", expected_clips=5))
    outs = []
    for clip_id, score, spread in (("a", 0.1, 0.0), ("b", 0.2, 0.0), ("c", 0.3, 0.5), ("d", 0.4, 0.9),
                                   ("e", 0.5, 0.2)):
        outs += stage.handle(alignment(clip_id, score, spread))
    tasks = [o.message for o in outs if isinstance(o.message, pb.ReviewTask)]
    assert [t.alignment.clip.clip_id for t in tasks] == expected and {t.reason for t in tasks} == {reason}
    finals = [o.message for o in outs if isinstance(o.message, pb.FinalLabel)]
    assert len(finals) == 5 and {f.clip.clip_id: f.disagreement for f in finals}["d"] == pytest.approx(0.9)


def test_rank_ties_fall_back_to_score_and_precision_counts_the_top():
    assert list(suspect_order([0.3, 0.1, 0.2], [0.0, 0.0, 0.0], "disagreement")) == [1, 2, 0]
    assert precision_at([3, 0, 1, 2], [True, False, False, True], (0.25, 0.5, 1.0)) == {0.25: 1.0, 0.5: 1.0, 1.0: 0.5}


def test_the_swap_experiment_counts_swapped_labels_that_were_kept(models):
    stage = LabelerStage([models.labeler], load_clip)
    clips = [pb.Clip(clip_id=p.stem, uri=str(p), dataset="d", ground_truth=scene)
             for scene, paths in CLIPS.items() for p in paths]
    descriptions = {"traffic": "road traffic", "nature": "birds singing"}
    proposals = [with_reference(outs[0].message, descriptions[c.ground_truth])
                 for c, outs in zip(clips, stage.handle_batch(clips))]
    assert [b.model_id for b in proposals[0].labelers] == [models.labeler.model_id, "reference"]
    aligner = AlignerStage(models.scorer, load_clip, embedder=lambda: models.embedder)
    rows_ = swap_experiment(proposals, [c.ground_truth for c in clips], descriptions, aligner, swap=0.5, repeats=4)
    assert [r["rank"] for r in rows_] == ["score", "disagreement", "combined"]
    for r in rows_:
        assert r["swapped"] == 2 and r["clips"] == 4 and 0 <= r["wrong_kept"] <= 2
        assert all(0.0 <= r[k] <= 1.0 for k in ("p@1%", "p@5%", "p@10%"))
    # top 1 %, 5 % and 10 % of 4 clips are all the first clip
    assert all(r["p@1%"] == r["p@5%"] == r["p@10%"] for r in rows_)
    assert math.isclose(rows_[0]["base_rate"], rows_[0]["wrong_kept"] / 4)


def test_descriptions_come_from_a_truth_table(tmp_path):
    truth = tmp_path / "truth.csv"
    truth.write_text("path,category,description\ntraffic/a.wav,traffic,road traffic\nfarm/b.wav,farm,farm animals\n")
    assert read_descriptions(truth) == {"traffic": "road traffic", "farm": "farm animals"}
    truth.write_text("path,category\ntraffic/a.wav,traffic\n")
    with pytest.raises(ValueError, match="'category' and 'description'"):
        read_descriptions(truth)


@pytest.fixture(scope="module")
def soundnet():
    return SoundNetLabeler(SoundNetTagger())


def test_soundnet_names_the_scene_a_clip_was_recorded_in(soundnet):
    """SoundNet's Places head, on real recordings: road traffic sounds like roads and car parks, a sports crowd like
    a stadium."""
    assert len(soundnet.tagger.class_names) == 401 and soundnet.sample_rate == 22_050
    clips = [load(p, soundnet.sample_rate) for p in (LINCITY / "TraficHigh2.wav", LINCITY / "SportsCroud1.wav")]
    probs = soundnet.tagger.tag(clips)
    assert probs.shape == (2, 401) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    traffic, crowd = soundnet.describe(clips)
    assert set(parse_labels(traffic.raw_text)) & {"parking lot", "highway", "raceway"}
    assert "stadium" in parse_labels(crowd.raw_text)
    scores = [s for _, s in crowd.tags]
    assert len(scores) == 10 and scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(probs[1].max())
    assert crowd.raw_text == ", ".join(dict.fromkeys(label_text(n) for n, _ in crowd.tags[:3]))


def test_a_corrected_clip_keeps_the_labelers_disagreement_like_its_score():
    stage = ReviewStage(ReviewPolicy(fraction=0.5, auto_accept=False, rank="disagreement"))
    stage.handle(pb.DatasetAnnouncement(dataset="d", expected_clips=2))
    stage.handle(alignment("a", 0.1, 0.1))
    [task] = [o.message for o in stage.handle(alignment("b", 0.6, 0.7)) if isinstance(o.message, pb.ReviewTask)]
    assert task.alignment.clip.clip_id == "b"
    [rescore] = stage.handle(pb.ReviewDecision(task_id=task.task_id, action=pb.REVIEW_ACTION_CORRECT,
                                               label="church bells"))
    human = pb.Alignment(clip=rescore.message.clip, model_id="human", best_label="church bells", best_score=0.8)
    [final] = [o.message for o in stage.handle(human) if isinstance(o.message, pb.FinalLabel)]
    assert (final.label, final.score, final.final_score) == ("church bells", pytest.approx(0.6), pytest.approx(0.8))
    assert final.disagreement == pytest.approx(0.7) and final.model_id == "human"
