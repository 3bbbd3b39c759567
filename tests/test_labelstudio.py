"""Label Studio interchange, checked with the real `label-studio-sdk`: its LabelInterface parses our labeling config,
validates every exported task and prediction, and builds the annotation regions the import reads back; then a round
trip over real review state (real recordings, the real labeler and aligner), and the CLI over a real gRPC server."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import pytest
from label_studio_sdk.label_interface import LabelInterface
from typer.testing import CliRunner

from auditoryhum import ingest, topics
from auditoryhum.bus.memory import InMemoryBus
from auditoryhum.cli import app
from auditoryhum.config import Settings
from auditoryhum.pipeline import audio_loader
from auditoryhum.review.desk import ReviewDesk
from auditoryhum.review.labelstudio import export_tasks, import_annotations, labeling_config
from auditoryhum.runner import StageWorker, drain
from auditoryhum.service import grpc_server
from auditoryhum.service.grpc_api import ReviewServicer
from auditoryhum.stages.aligner import AlignerStage
from auditoryhum.stages.labeler import HINT_KEY, LabelerStage
from auditoryhum.stages.review import ReviewPolicy, ReviewStage
from auditoryhum.v1 import pipeline_pb2 as pb
from auditoryhum.v1 import services_pb2_grpc as api_grpc
from tests.conftest import TRAFFIC

# The SDK still uses pydantic's v1-style API (Region.to_json calls .dict()).
pytestmark = pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")

HOSTILE = '<script>alert(1)</script>" onerror="alert(2)'
SAVED = datetime(2026, 11, 28, 9, 30, tzinfo=timezone.utc)
UI = "http://127.0.0.1:8080"
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def interface() -> LabelInterface:
    return LabelInterface(labeling_config())


def review_worker(policy: ReviewPolicy = ReviewPolicy(threshold=0.5, auto_accept=False)) -> StageWorker:
    return StageWorker(InMemoryBus(), ReviewStage(policy))


def add_task(worker: StageWorker, clip_id: str, labels: dict[str, float], dataset: str = "ls", uri: str = "") -> None:
    """An aligned clip the review stage selects (its best score is under the threshold)."""
    best = max(labels, key=labels.get)
    worker.process(pb.Alignment(
        clip=pb.Clip(clip_id=clip_id, dataset=dataset, uri=uri or f"/audio/{clip_id}.wav"), model_id="yamnet-test",
        best_label=best, best_score=labels[best], scores=[pb.LabelScore(label=l, score=s) for l, s in labels.items()],
        tags=[pb.Tag(name="Vehicle", score=0.8), pb.Tag(name=HOSTILE, score=0.1)]))


def ui_audio(view) -> str:
    return f"{UI}/tasks/{quote(view.task_id, safe='')}/audio"


def annotation(interface: LabelInterface, regions: dict, *, at: datetime = SAVED, cancelled: bool = False,
               who: object = None) -> dict:
    """One annotation as Label Studio exports it, its result regions made by the SDK from ``regions``."""
    result = [json.loads(region.to_json()) for region in interface.create_regions(regions)]
    made = {"id": int(at.timestamp()) % 100_000, "result": result, "was_cancelled": cancelled,
            "completed_by": who or {"id": 7, "email": "ann@example.org"},
            "created_at": (at - timedelta(minutes=1)).isoformat().replace("+00:00", "Z"),
            "updated_at": at.isoformat().replace("+00:00", "Z"), "lead_time": 12.5}
    assert interface.validate_annotation(made), result
    return made


def exported(task: dict, *annotations: dict, ls_id: int = 1) -> dict:
    """A task of Label Studio's JSON export: what we imported, plus its id and annotations."""
    return {"id": ls_id, "data": task["data"], "predictions": task["predictions"], "annotations": list(annotations)}


def test_the_config_parses_and_every_exported_task_and_prediction_validates(interface):
    interface.validate()
    assert {c.name: c.tag for c in interface.controls} == {
        "decision": "Choices", "label": "Choices", "correction": "TextArea", "hint": "TextArea"}
    assert interface.get_control("decision").labels == ["accept", "correct", "unusable", "relabel"]
    assert interface.get_control("label").dynamic_value  # the task's own labels, from its data
    assert "$" not in labeling_config().replace('value="$', "")  # every task value comes from data fields

    worker = review_worker()
    add_task(worker, "c1", {"car engine": 0.12, HOSTILE: 0.08, "road traffic": 0.05})
    add_task(worker, "c2", {"rain": 0.31})
    tasks = export_tasks(ReviewDesk(worker).tasks("ls"), ui_audio)

    assert [t["data"]["clip_id"] for t in tasks] == ["c1", "c2"]  # worst score first
    first = tasks[0]
    assert first["data"]["audio"] == f"{UI}/tasks/c1%2Freview/audio"
    assert {k: first["data"][k] for k in ("task_id", "dataset", "best_label", "score")} == {
        "task_id": "c1/review", "dataset": "ls", "best_label": "car engine", "score": pytest.approx(0.12)}
    assert [o["value"] for o in first["data"]["label_options"]] == ["car engine", HOSTILE, "road traffic"]
    assert HOSTILE in first["data"]["tags"] and HOSTILE not in labeling_config()
    for task in tasks:
        assert interface.validate_task({"data": task["data"]})
        [prediction] = task["predictions"]
        assert prediction["model_version"] == "yamnet-test"
        assert interface.validate_prediction(prediction, return_errors=True) == []
        picked = {r["from_name"]: r["value"]["choices"] for r in prediction["result"]}
        assert picked == {"decision": ["accept"], "label": [task["data"]["best_label"]]}
        assert picked["label"][0] in [o["value"] for o in task["data"]["label_options"]]
        loaded = interface.load_task(task["data"])  # the SDK fills each object tag from the task's data
        assert loaded.get_object("audio").value == task["data"]["audio"]
    # The SDK's validation is not vacuous: a decision outside the config is caught.
    wrong = {"result": [{"from_name": "decision", "to_name": "audio", "type": "choices",
                         "value": {"choices": ["maybe"]}}]}
    assert interface.validate_prediction(wrong, return_errors=True)


def test_import_maps_each_decision_and_reports_every_bad_item(interface):
    worker = review_worker()
    for i in range(12):
        add_task(worker, f"c{i}", {"car engine": 0.1 + i / 100, "road traffic": 0.05})
    tasks = export_tasks(ReviewDesk(worker).tasks("ls"), ui_audio)
    best, other = "car engine", "road traffic"
    later = SAVED + timedelta(hours=1)
    items = [
        exported(tasks[0], annotation(interface, {"decision": "accept", "label": best})),
        exported(tasks[1], annotation(interface, {"decision": "correct", "label": other})),
        exported(tasks[2], annotation(interface, {"decision": "correct", "label": best,
                                                  "correction": ["Police SIREN!!"]})),  # typed text wins
        exported(tasks[3], annotation(interface, {"decision": "unusable"}, who=42)),
        exported(tasks[4], annotation(interface, {"decision": "relabel", "hint": ["a dog barks behind the cars"]})),
        exported(tasks[5],  # the latest annotation that was not cancelled: neither the first nor the last listed
                 annotation(interface, {"decision": "unusable"}),
                 annotation(interface, {"decision": "accept"}, at=later),
                 annotation(interface, {"decision": "relabel", "hint": ["x"]}, at=SAVED - timedelta(hours=1)),
                 annotation(interface, {"decision": "relabel"}, at=later + timedelta(hours=1), cancelled=True)),
        exported(tasks[6], annotation(interface, {"label": best})),
        exported(tasks[7], annotation(interface, {"decision": "correct", "label": best})),
        exported(tasks[8], annotation(interface, {"decision": "relabel", "hint": ["   "]})),
        exported(tasks[9], annotation(interface, {"decision": "accept"}, cancelled=True)),
        exported(tasks[10]),
        {**exported(tasks[11], annotation(interface, {"decision": "accept"})),
         "data": {**tasks[11]["data"], "task_id": "c11"}},
        exported(tasks[0], {"result": [{"from_name": "decision", "to_name": "audio", "type": "choices",
                                        "value": {"choices": "accept"}}]}),
        "not a task",
    ]
    got = import_annotations(items, reviewer_prefix="ls:")
    assert len(got) == len(items)  # one answer per exported task: nothing dropped

    decided = [(g.ref, g.decision) for g in got[:6]]
    assert all(d is not None and not g.problem for g, (_, d) in zip(got, decided))
    accept, by_option, by_text, unusable, relabel, latest = (d for _, d in decided)
    assert (accept.task_id, accept.action, accept.label) == (tasks[0]["data"]["task_id"], pb.REVIEW_ACTION_ACCEPT, "")
    assert accept.reviewer == "ls:ann@example.org" and accept.decided_at.ToDatetime(timezone.utc) == SAVED
    assert (by_option.action, by_option.label) == (pb.REVIEW_ACTION_CORRECT, other)
    assert (by_text.action, by_text.label) == (pb.REVIEW_ACTION_CORRECT, "Police SIREN!!")
    assert (unusable.action, unusable.reviewer) == (pb.REVIEW_ACTION_UNUSABLE, "ls:user-42")
    assert (relabel.action, relabel.hint) == (pb.REVIEW_ACTION_RELABEL, "a dog barks behind the cars")
    assert latest.action == pb.REVIEW_ACTION_ACCEPT and latest.decided_at.ToDatetime(timezone.utc) == later

    problems = [(g.decision, g.skipped, g.problem) for g in got[6:]]
    assert all(decision is None for decision, _, _ in problems)
    expected = [(False, "no decision chosen"), (False, "model's own label"), (False, "relabel without a hint"),
                (True, "cancelled"), (True, "not annotated"), (False, "is not a review task id"),
                (False, "'decision' region has no list of choices"), (False, "not a task object")]
    for (_, skipped, problem), (want_skipped, words) in zip(problems, expected):
        assert skipped == want_skipped and words in problem, problem
    assert (got[-3].ref, got[-3].ls_id, got[-1].ls_id) == ("c11", "1", "#13")
    with pytest.raises(ValueError, match="list of tasks"):
        import_annotations({"tasks": []})


def test_import_reads_an_export_written_by_the_real_label_studio_server(interface):
    """The fixture is what Label Studio 1.23.2 (`label-studio` from PyPI, run locally) exported after our config and
    six exported tasks were imported into a project and annotated through its REST API: four decisions, one task
    whose only annotation was cancelled, one never annotated. Its annotator is an id, not an email."""
    export = json.loads((FIXTURES / "labelstudio-1.23.2-export.json").read_text())
    for task in export:
        assert interface.validate_task({"data": task["data"]})
        assert all(interface.validate_annotation(a) for a in task["annotations"] if not a["was_cancelled"])
    got = import_annotations(export, reviewer_prefix="ls:")
    decided = [(g.ref, g.ls_id, g.decision.action, g.decision.label, g.decision.hint, g.decision.reviewer)
               for g in got if g.decision is not None]
    assert decided == [
        ("clip0/review", "2", pb.REVIEW_ACTION_ACCEPT, "", "", "ls:user-1"),
        ("clip1/review", "3", pb.REVIEW_ACTION_CORRECT, "road traffic", "", "ls:user-1"),
        ("clip2/review", "4", pb.REVIEW_ACTION_CORRECT, "Police SIREN!!", "", "ls:user-1"),
        ("clip3/review", "5", pb.REVIEW_ACTION_RELABEL, "", "a dog barks behind the traffic", "ls:user-1")]
    assert got[0].decision.decided_at.ToDatetime(timezone.utc).year == 2026
    assert [(g.ref, g.skipped, g.problem) for g in got if g.decision is None] == [
        ("clip4/review", True, "every annotation was cancelled (skipped in Label Studio)"),
        ("clip5/review", True, "not annotated")]


def test_round_trip_over_real_review_state_gives_the_final_labels(interface, models):
    """Real recordings through the real labeler and aligner into a review that waits for people; the pending tasks
    go out to Label Studio and its annotations come back as decisions, applied at the desk."""
    settings = Settings()
    load = audio_loader(settings)
    bus = InMemoryBus()
    workers = [StageWorker(bus, LabelerStage(models.labeler, load, max_words=settings.max_words)),
               StageWorker(bus, AlignerStage(models.scorer, load, models.scorer_rate)),
               StageWorker(bus, ReviewStage(ReviewPolicy(fraction=1.0, auto_accept=False), settings.max_words))]
    final_topic = bus.subscribe("test-final-labels", [topics.FINAL_LABELS])
    clips = [ingest.clip("ls-e2e", path.name, str(path)) for path in TRAFFIC[:5]]
    bus.publish(topics.DATASETS, "ls-e2e", pb.DatasetAnnouncement(dataset="ls-e2e", expected_clips=len(clips)))
    for clip in clips:
        bus.publish(topics.CLIPS, clip.clip_id, clip)
    drain(workers)
    desk = ReviewDesk(workers[2])
    views = desk.tasks("ls-e2e")
    assert len(views) == 5 and not final_topic.poll(100)  # every clip waits for a reviewer

    tasks = export_tasks(views, ui_audio)
    for task in tasks:
        assert interface.validate_task({"data": task["data"]})
        assert interface.validate_prediction(task["predictions"][0], return_errors=True) == []
    # Correct by option: a clip with a second label to pick.
    pick = next(i for i, t in enumerate(tasks) if len(t["data"]["label_options"]) > 1)
    order = [pick] + [i for i in range(5) if i != pick]
    option = tasks[pick]["data"]["label_options"][1]["value"]
    hint = "listen for the horn"
    annotated = [exported(tasks[i], annotation(interface, regions), ls_id=n) for n, (i, regions) in enumerate(zip(
        order, [{"decision": "correct", "label": option},
                {"decision": "accept", "label": tasks[order[1]]["data"]["best_label"]},
                {"decision": "correct", "correction": ["Police SIREN!!"]},
                {"decision": "unusable"},
                {"decision": "relabel", "hint": [hint]}]))]
    items = import_annotations(json.loads(json.dumps(annotated)), reviewer_prefix="ls:")
    outcomes = [desk.decide(item.decision) for item in items]
    assert [o.status for o in outcomes] == ["rescoring", "final", "rescoring", "removed", "relabelling"]
    drain(workers)  # the corrections are re-scored by the aligner; the re-labelled clip goes round again

    out = [r.message() for r in final_topic.poll(100)]
    finals = {m.clip.clip_id: m for m in out if isinstance(m, pb.FinalLabel)}
    ids = [tasks[i]["data"]["clip_id"] for i in order]
    assert set(finals) == {ids[0], ids[1], ids[2], ids[4]}  # the unusable clip is out
    expect = {ids[0]: (option, pb.LABEL_SOURCE_HUMAN, pb.REVIEW_ACTION_CORRECT),
              ids[1]: (tasks[order[1]]["data"]["best_label"], pb.LABEL_SOURCE_HUMAN, pb.REVIEW_ACTION_ACCEPT),
              ids[2]: ("police siren", pb.LABEL_SOURCE_HUMAN, pb.REVIEW_ACTION_CORRECT)}
    for clip_id, want in expect.items():
        assert (finals[clip_id].label, finals[clip_id].source, finals[clip_id].review_action) == want
    relabelled = finals[ids[4]]
    assert relabelled.review_action == pb.REVIEW_ACTION_RELABEL and relabelled.clip.metadata[HINT_KEY] == hint
    assert [m for m in out if isinstance(m, pb.DatasetSealed)] == [
        pb.DatasetSealed(dataset="ls-e2e", final_labels=4, removed=1)]
    stats = desk.stats("ls-e2e")
    assert (stats.decided, stats.accepted, stats.corrected, stats.unusable, stats.relabelled, stats.pending) == \
        (5, 1, 2, 1, 1, 0)
    # Importing the same export again changes nothing.
    assert all(desk.decide(item.decision).duplicate for item in items)
    drain(workers)
    assert not final_topic.poll(100)


@pytest.fixture
def review_service():
    """The review desk behind a real gRPC server that requires a token."""
    worker = review_worker()
    desk = ReviewDesk(worker)
    server, health, port = grpc_server.build_server(
        [(api_grpc.add_ReviewServiceServicer_to_server, ReviewServicer(desk))], port=0, max_message_mb=4,
        token="s3cret")
    server.start()
    yield desk, worker, f"127.0.0.1:{port}"
    grpc_server.stop(server, health, grace_s=0).wait()


def cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "300", "AUDITORYHUM_AUTH_TOKEN": ""})


def test_cli_exports_over_grpc_and_imports_with_a_row_per_task(review_service, interface, tmp_path):
    desk, worker, address = review_service
    recording = str(TRAFFIC[0])
    for i in range(5):
        add_task(worker, f"t{i}", {"car engine": 0.1 + i / 100, "road traffic": 0.05},
                 uri=recording if i == 0 else "")

    refused = cli("review", "export", "--review", address, "--audio-base-url", UI, "--out", str(tmp_path / "x"))
    assert refused.exit_code == 1 and "UNAUTHENTICATED" in refused.stderr  # no token
    result = cli("review", "export", "--review", address, "--token", "s3cret", "--audio-base-url", UI + "/",
                 "--out", str(tmp_path / "ls"))
    assert result.exit_code == 0, result.output
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert (tmp_path / "ls" / "labeling_config.xml").read_text() == labeling_config()
    assert [t["data"]["audio"] for t in tasks][:2] == [f"{UI}/tasks/t0%2Freview/audio", f"{UI}/tasks/t1%2Freview/audio"]
    for task in tasks:
        assert interface.validate_task({"data": task["data"]})
        assert interface.validate_prediction(task["predictions"][0], return_errors=True) == []
    by_uri = cli("review", "export", "--review", address, "--token", "s3cret", "--audio-from-uri", "--dataset", "ls",
                 "--out", str(tmp_path / "uri"))
    assert by_uri.exit_code == 0, by_uri.output
    uris = [t["data"]["audio"] for t in json.loads((tmp_path / "uri" / "tasks.json").read_text())]
    assert uris[0] == f"file://{recording}" and uris[1] == "file:///audio/t1.wav"
    both = cli("review", "export", "--review", address, "--audio-from-uri", "--audio-base-url", UI, "--out", "y")
    assert both.exit_code == 2 and "exactly one" in both.output

    desk.claim("t3/review", "web:alice")  # a reviewer in the web UI holds this one
    ghost = {**tasks[4], "data": {**tasks[4]["data"], "task_id": "ghost/review"}}
    export = [exported(tasks[0], annotation(interface, {"decision": "accept"}), ls_id=1),
              exported(tasks[1], annotation(interface, {"decision": "correct", "correction": ["Dog barking!!"]}),
                       ls_id=2),
              exported(tasks[2], annotation(interface, {"decision": "correct", "correction": ["!!!"]}), ls_id=3),
              exported(tasks[3], annotation(interface, {"decision": "unusable"}), ls_id=4),
              exported(ghost, annotation(interface, {"decision": "accept"}), ls_id=5),
              exported(tasks[4], annotation(interface, {"decision": "relabel"}), ls_id=6),
              exported(tasks[4], ls_id=7),
              exported({**tasks[4], "data": {**tasks[4]["data"], "task_id": "[/bold]"}}, ls_id=8)]
    file = tmp_path / "export.json"
    file.write_text(json.dumps(export))

    first = cli("review", "import", str(file), "--review", address, "--token", "s3cret")
    assert first.exit_code == 1, first.output  # some were refused
    rows = {line.split("│")[2].strip(): line for line in first.stdout.splitlines() if line.count("│") == 5}
    for ls_id, words in {"1": ("t0/review", "applied", "final"), "2": ("t1/review", "applied", "rescoring"),
                         "3": ("t2/review", "refused", "INVALID_ARGUMENT", "no usable label"),
                         "4": ("t3/review", "refused", "FAILED_PRECONDITION", "web:alice"),
                         "5": ("ghost/review", "refused", "NOT_FOUND"),
                         "6": ("t4/review", "invalid", "relabel without a hint"),
                         "7": ("t4/review", "skipped", "not annotated"),
                         "8": ("[/bold]", "invalid", "is not a review task id")}.items():  # shown as it is
        assert all(w in rows[ls_id] for w in words), rows[ls_id]
    assert "2 applied, 0 duplicate, 3 refused, 2 invalid, 1 skipped" in first.stdout
    stats = desk.stats("ls")
    assert (stats.accepted, stats.corrected, stats.pending) == (1, 1, 3)
    assert {d.reviewer for d in _decisions(worker)} == {"ls:ann@example.org"}

    again = cli("review", "import", str(file), "--review", address, "--token", "s3cret")
    assert "0 applied, 2 duplicate" in again.stdout
    unauthorised = cli("review", "import", str(file), "--review", address, "--token", "wrong")
    assert unauthorised.exit_code == 1 and "UNAUTHENTICATED" in unauthorised.stderr
    for text, words in (("not json", "Expecting value"), ('{"tasks": []}', "expected a list of tasks")):
        file.write_text(text)
        bad = cli("review", "import", str(file), "--review", address, "--token", "s3cret")
        assert bad.exit_code == 1 and words in bad.stderr and "Traceback" not in bad.output


def _decisions(worker: StageWorker) -> list[pb.ReviewDecision]:
    """The decisions the desk put on the bus for the record."""
    reader = worker.bus.subscribe("test-decisions", [topics.REVIEW_DECISIONS])
    return [r.message() for r in reader.poll(100)]
