"""The authors' published human annotations applied as review decisions: in the embedded run (`run --annotations`)
and over a real review service (`review import-csv`), on real recordings with the real labeler and aligner."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from auditoryhum import ingest, topics
from auditoryhum.bus.memory import InMemoryBus
from auditoryhum.cli import app
from auditoryhum.config import Settings
from auditoryhum.pipeline import audio_loader, run
from auditoryhum.review.annotations import AnnotationError
from auditoryhum.review.desk import ReviewDesk
from auditoryhum.runner import StageWorker
from auditoryhum.service import grpc_server
from auditoryhum.service.grpc_api import ReviewServicer
from auditoryhum.stages.aligner import AlignerStage
from auditoryhum.stages.review import ReviewPolicy, ReviewStage
from auditoryhum.v1 import pipeline_pb2 as pb
from auditoryhum.v1 import services_pb2_grpc as api_grpc
from tests.conftest import LINCITY, SIMUTRANS

# The dataset in the authors' order (file name); the annotation file's lines follow it.
CLIPS = [SIMUTRANS / "bus.wav", LINCITY / "Green1.wav", LINCITY / "Harbor1.wav", LINCITY / "TraficHigh1.wav",
         SIMUTRANS / "truck.wav"]


@pytest.fixture
def dataset(tmp_path) -> Path:
    folder = tmp_path / "scenes"
    folder.mkdir()
    for path in CLIPS:
        (folder / path.name).symlink_to(path)
    assert sorted(p.name for p in folder.iterdir()) == ["Green1.wav", "Harbor1.wav", "TraficHigh1.wav", "bus.wav",
                                                        "truck.wav"]
    return folder


def rows(path: Path) -> dict[str, dict]:
    with path.open() as f:
        return {Path(r["path"]).name: r for r in csv.DictReader(f)}


def test_run_reviews_exactly_the_annotated_clips_as_the_lines_say(dataset, tmp_path, models):
    notes = tmp_path / "scenes_yamnet_labels_annotations.csv"
    # lines: Green1, Harbor1, TraficHigh1, bus, truck; blank = not reviewed
    notes.write_text("\nBoat horn, Seagulls calling\n\nDog barking\nRoad traffic, Rain falling\n")
    summary = run(dataset, tmp_path / "out", Settings(k_max=3), models=models, annotations=notes).summary
    assert summary["annotations_applied"] == 3 and summary["annotations_skipped"] == []
    assert summary["reviewed"] == 3 and summary["review_decided"] == 3
    final = rows(tmp_path / "out/final_labels.csv")
    for name in ("Green1.wav", "TraficHigh1.wav"):
        assert (final[name]["source"], final[name]["review_action"]) == ("model", "")
    for name, typed in [("Harbor1.wav", {"boat horn", "seagulls calling"}), ("bus.wav", {"dog barking"}),
                        ("truck.wav", {"road traffic", "rain falling"})]:
        assert (final[name]["source"], final[name]["review_action"]) == ("human", "correct")
        assert final[name]["label"] in typed
    # Several pairs: the best-scored one is final (the aligner's scores of both are in alignments.csv).
    with (tmp_path / "out/alignments.csv").open() as f:
        truck = ingest.clip_id("scenes", "truck.wav")
        scored = {r["label"]: float(r["score"]) for r in csv.DictReader(f) if r["clip_id"] == truck}
    assert {"road traffic", "rain falling"} <= set(scored)
    assert final["truck.wav"]["label"] == max(("road traffic", "rain falling"), key=scored.get)
    uplift = json.loads((tmp_path / "out/summary.json").read_text())
    assert uplift["review_mean_before"] is not None and uplift["review_mean_after"] is not None


def test_an_annotation_file_for_other_clips_is_refused_before_anything_runs(dataset, tmp_path, models):
    notes = tmp_path / "other.csv"
    notes.write_text("\n\ncar horn\n\n\n\nbirds singing\n")  # 7 lines for 5 clips
    with pytest.raises(AnnotationError, match=r"other.csv:6: the file has 7 lines but the dataset .* has 5 clips"):
        run(dataset, tmp_path / "out", Settings(), models=models, annotations=notes)
    assert not (tmp_path / "out").exists()
    notes.write_text("\n!!!\n")
    with pytest.raises(AnnotationError, match=r"other.csv:2: '!!!' has no usable label \(for Harbor1.wav\)"):
        run(dataset, tmp_path / "out", Settings(), models=models, annotations=notes)


@pytest.fixture
def review_service(dataset, models):
    """A real review service whose tasks are the real aligner's scores of the first four clips."""
    worker = StageWorker(InMemoryBus(), ReviewStage(ReviewPolicy(threshold=2.0, auto_accept=False)))
    aligner = AlignerStage(models.scorer, audio_loader(Settings()))
    for path in sorted(dataset.iterdir())[:4]:
        clip = ingest.clip("scenes", path.name, str(path))
        (out,) = aligner.handle(pb.LabelProposal(clip=clip, model_id="m", labels=["church bells", "wind"]))
        worker.process(out.message)
    server, health, port = grpc_server.build_server(
        [(api_grpc.add_ReviewServiceServicer_to_server, ReviewServicer(ReviewDesk(worker)))], port=0, max_message_mb=4)
    server.start()
    yield worker, f"127.0.0.1:{port}"
    grpc_server.stop(server, health, grace_s=0).wait()


def cli(*args: str):
    return CliRunner().invoke(app, ["review", "import-csv", *args], env={"COLUMNS": "300"})


def decided(worker: StageWorker) -> list[pb.ReviewDecision]:
    reader = worker.bus.subscribe("test", [topics.REVIEW_DECISIONS])
    return [r.message() for r in reader.poll(100)]


def test_import_csv_applies_every_line_or_none(review_service, dataset, tmp_path):
    worker, address = review_service
    notes = tmp_path / "notes.csv"
    notes.write_text("\nBoat horn\n\n\nRoad traffic\n")  # truck.wav (line 5) has no task
    result = cli(str(notes), "--dataset-root", str(dataset), "--review", address)
    assert result.exit_code == 1 and "notes.csv:5: truck.wav has no pending review task" in result.output
    assert decided(worker) == []  # nothing applied

    notes.write_text("\n\n\ncar horn\n\n\n")  # trailing blank lines are fine
    result = cli(str(notes), "--dataset-root", str(dataset), "--review", address, "--dataset", "other")
    assert result.exit_code == 1 and "bus.wav has no pending review task" in result.output  # another dataset's ids

    notes.write_text("\nBoat horn, Seagulls\n\n\nRoad traffic\n")
    result = cli(str(notes), "--dataset-root", str(dataset), "--review", address, "--skip-unselected")
    assert result.exit_code == 0, result.output
    assert "1 applied, 1 skipped" in result.output and "rescoring" in result.output
    (decision,) = decided(worker)
    assert (decision.clip_id, decision.action, decision.label) == (
        ingest.clip_id("scenes", "Harbor1.wav"), pb.REVIEW_ACTION_CORRECT, "Boat horn, Seagulls")
    assert decision.reviewer == "annotations:notes.csv"
    # the correction's pairs go to the aligner, all of them
    rescore = [r.message() for r in worker.bus.subscribe("t2", [topics.LABELS]).poll(100)]
    assert [list(m.labels) for m in rescore] == [["boat horn", "seagulls"]]


def test_run_can_take_the_lines_as_hints_for_the_labeler(dataset, tmp_path, models):
    notes = tmp_path / "hints.csv"
    notes.write_text("\n\n\nlisten for the engine\n")  # bus.wav only
    summary = run(dataset, tmp_path / "out", Settings(k_max=3), models=models, annotations=notes,
                  annotation_action="relabel").summary
    assert summary["annotations_applied"] == 1
    final = rows(tmp_path / "out/final_labels.csv")
    assert (final["bus.wav"]["source"], final["bus.wav"]["review_action"]) == ("model", "relabel")
    assert all(final[n]["review_action"] == "" for n in final if n != "bus.wav")
