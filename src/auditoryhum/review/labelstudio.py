"""Label Studio interchange: pending review tasks out as a Label Studio import file, annotations back in as
review decisions.

The labeling config is fixed text. Everything that comes from a task (labels an LLM wrote, tags, ids) travels in the
task's ``data`` and Label Studio shows it as text, so no label can put markup into the config. A task's own label
candidates become its ``label`` choices through Label Studio's dynamic choices (``value="$label_options"``).

Importing reads Label Studio's JSON export: per task, the latest annotation that was not cancelled becomes one
:class:`~auditoryhum.v1.pipeline_pb2.ReviewDecision`. An item that cannot become one is reported with its reason,
never dropped: the result has one :class:`Imported` per exported task.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from auditoryhum.review.desk import MAX_TEXT_CHARS, TaskView
from auditoryhum.v1 import pipeline_pb2 as pb

DECISIONS = {"accept": pb.REVIEW_ACTION_ACCEPT, "correct": pb.REVIEW_ACTION_CORRECT,
             "unusable": pb.REVIEW_ACTION_UNUSABLE, "relabel": pb.REVIEW_ACTION_RELABEL}
TASK_SUFFIX = "/review"  # the review stage names a clip's task "<clip_id>/review"
MAX_TASK_ID_CHARS = 300

_CONFIG = """<View>
  <Audio name="audio" value="$audio"/>
  <Header value="Model's best label" size="5"/>
  <Text name="best_label" value="$best_label"/>
  <Header value="Score of the best label" size="6"/>
  <Text name="score" value="$score_text"/>
  <Header value="All labels and their scores" size="6"/>
  <Text name="candidates" value="$candidates"/>
  <Header value="Strongest tags of the clip" size="6"/>
  <Text name="tags" value="$tags"/>
  <Header value="Decision" size="4"/>
  <Choices name="decision" toName="audio" choice="single" required="true" showInline="true">
    <Choice value="accept" hotkey="1"/>
    <Choice value="correct" hotkey="2"/>
    <Choice value="unusable" hotkey="3"/>
    <Choice value="relabel" hotkey="4"/>
  </Choices>
  <View visibleWhen="choice-selected" whenTagName="decision" whenChoiceValue="correct">
    <Header value="Correct label: pick one of the clip's labels, or type a new one (typed text wins)" size="6"/>
    <Choices name="label" toName="audio" choice="single" value="$label_options"/>
    <TextArea name="correction" toName="audio" rows="1" maxSubmissions="1" editable="true"
              placeholder="e.g. dog barking"/>
  </View>
  <View visibleWhen="choice-selected" whenTagName="decision" whenChoiceValue="relabel">
    <Header value="Hint for the labeler: what should it listen for?" size="6"/>
    <TextArea name="hint" toName="audio" rows="2" maxSubmissions="1" editable="true"
              placeholder="e.g. a dog barks behind the traffic"/>
  </View>
</View>
"""


def labeling_config() -> str:
    """The Label Studio labeling config of review tasks (XML): audio, the model's label, score and tags, a decision,
    a corrected label (one of the clip's own labels, or free text) and a re-label hint."""
    return _CONFIG


def task_view(task: pb.ReviewTask) -> TaskView:
    """A task as the gRPC API sends it, in the desk's own shape."""
    a = task.alignment
    leased = bool(task.lease_owner)
    return TaskView(task_id=task.task_id, dataset=a.clip.dataset, clip_id=a.clip.clip_id, uri=a.clip.uri,
                    score=a.best_score, best_label=a.best_label, scores=[(s.label, s.score) for s in a.scores],
                    tags=[(t.name, t.score) for t in a.tags], reason=task.reason,
                    lease_owner=task.lease_owner if leased else None,
                    lease_expires=task.lease_expires.ToNanoseconds() / 1e9 if leased else None, task=task)


def export_tasks(tasks: Iterable[TaskView], audio_url: Callable[[TaskView], str]) -> list[dict]:
    """Label Studio's import format, one task per review task, with a prediction that pre-selects "accept" and
    the model's best label (``model_version`` is the labeling model's id)."""
    return [_export(view, audio_url(view)) for view in tasks]


def _export(view: TaskView, audio: str) -> dict:
    ranked = sorted(view.scores, key=lambda pair: -pair[1])
    options = list(dict.fromkeys(label for label in (view.best_label, *(label for label, _ in ranked)) if label))
    data = {
        "audio": audio, "task_id": view.task_id, "clip_id": view.clip_id, "dataset": view.dataset,
        "best_label": view.best_label, "score": round(float(view.score), 6), "score_text": f"{view.score:.4f}",
        "candidates": "; ".join(f"{label} ({score:.4f})" for label, score in ranked) or "(none)",
        "tags": "; ".join(f"{name} ({score:.2f})" for name, score in view.tags) or "(none)",
        "reason": view.reason, "label_options": [{"value": label} for label in options],
    }
    result = [_choice("decision", "accept")]
    if view.best_label:
        result.append(_choice("label", view.best_label))
    return {"data": data, "predictions": [{"model_version": view.task.alignment.model_id or "unknown",
                                           "result": result}]}


def _choice(control: str, value: str) -> dict:
    return {"id": f"{control}-0", "from_name": control, "to_name": "audio", "type": "choices",
            "value": {"choices": [value]}}


@dataclass(frozen=True)
class Imported:
    """What one exported task became: a decision, or the reason there is none. ``ref`` is our task id when the
    task has one; ``ls_id`` is Label Studio's (or ``#<index>`` in the export). ``skipped`` marks a task nobody
    annotated (or whose every annotation was cancelled), as opposed to an annotation that cannot be used."""

    ref: str
    ls_id: str
    decision: pb.ReviewDecision | None = None
    problem: str = ""
    skipped: bool = False


def import_annotations(exported: Any, reviewer_prefix: str = "") -> list[Imported]:
    """Each task of a Label Studio JSON export (a list of tasks with ``annotations[].result[]``) as a decision.

    The reviewer is ``reviewer_prefix`` + the annotator's email (or ``user-<id>``). Raises ValueError only when
    the export as a whole is not a list of tasks."""
    if not isinstance(exported, list):
        raise ValueError("not a Label Studio JSON export: expected a list of tasks")
    return [_import(i, item, reviewer_prefix) for i, item in enumerate(exported)]


class _Bad(Exception):
    pass


def _import(index: int, item: Any, prefix: str) -> Imported:
    if not isinstance(item, dict):
        return Imported("", f"#{index}", problem="not a task object")
    ls_id = str(item["id"]) if isinstance(item.get("id"), (int, str)) else f"#{index}"
    data = item.get("data") if isinstance(item.get("data"), dict) else {}
    task_id = data.get("task_id")
    ref = task_id[:MAX_TASK_ID_CHARS] if isinstance(task_id, str) else ""
    if not _task_id_ok(task_id):
        return Imported(ref, ls_id, problem=f"data.task_id {str(task_id)[:80]!r} is not a review task id "
                                     f"(expected '<clip_id>{TASK_SUFFIX}')")
    annotations = item.get("annotations") or []
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        return Imported(ref, ls_id, problem="annotations is not a list of objects")
    if not annotations:
        return Imported(ref, ls_id, problem="not annotated", skipped=True)
    kept = [a for a in annotations if not a.get("was_cancelled")]
    if not kept:
        return Imported(ref, ls_id, problem="every annotation was cancelled (skipped in Label Studio)", skipped=True)
    # The latest save wins; without timestamps, the last in the list.
    latest = max(enumerate(kept), key=lambda pair: (_timestamp(pair[1]), pair[0]))[1]
    try:
        decision = _decision(task_id, data.get("best_label"), latest)
    except _Bad as exc:
        return Imported(ref, ls_id, problem=str(exc))
    decision.reviewer = prefix + _annotator(latest.get("completed_by"))
    when = _when(latest)
    if when is not None:
        decision.decided_at.FromDatetime(when)
    return Imported(ref, ls_id, decision=decision)


def _task_id_ok(task_id: Any) -> bool:
    return (isinstance(task_id, str) and task_id.endswith(TASK_SUFFIX) and len(task_id) > len(TASK_SUFFIX)
            and len(task_id) <= MAX_TASK_ID_CHARS and task_id.isprintable())


def _decision(task_id: str, best_label: Any, annotation: dict) -> pb.ReviewDecision:
    values = _results(annotation.get("result"))
    chosen = values.get("decision", [])
    if not chosen:
        raise _Bad("no decision chosen")
    if len(chosen) > 1 or chosen[0] not in DECISIONS:
        raise _Bad(f"decision {chosen!r} is not one of {', '.join(DECISIONS)}")
    action = DECISIONS[chosen[0]]
    decision = pb.ReviewDecision(task_id=task_id, action=action)
    if action == pb.REVIEW_ACTION_CORRECT:
        typed = ", ".join(t.strip() for t in values.get("correction", []) if t.strip())
        picked = values.get("label", [])
        if len(picked) > 1:
            raise _Bad(f"correct: {len(picked)} labels picked; pick one")
        if not typed and picked and picked[0] == best_label:  # the prediction's pre-selected label, left as it was
            raise _Bad("correct with the model's own label: accept instead, or pick or type another label")
        decision.label = typed or (picked[0].strip() if picked else "")
        if not decision.label:
            raise _Bad("correct without a label: pick one of the clip's labels or type the correct one")
    elif action == pb.REVIEW_ACTION_RELABEL:
        decision.hint = "\n".join(t.strip() for t in values.get("hint", []) if t.strip())
        if not decision.hint:
            raise _Bad("relabel without a hint: say what the labeler should listen for")
    for name in ("label", "hint"):
        if len(getattr(decision, name)) > MAX_TEXT_CHARS:
            raise _Bad(f"the {name} has {len(getattr(decision, name))} characters; at most {MAX_TEXT_CHARS}")
    return decision


def _results(result: Any) -> dict[str, list[str]]:
    """Control name → its chosen values or typed texts. Regions of controls this config does not have (a project
    may add its own) are left alone."""
    if not isinstance(result, list):
        raise _Bad("annotation result is not a list")
    values: dict[str, list[str]] = {}
    for region in result:
        if not isinstance(region, dict):
            raise _Bad("annotation result has a region that is not an object")
        name, kind = region.get("from_name"), {"choices": "choices", "textarea": "text"}.get(region.get("type"))
        if name not in ("decision", "label", "correction", "hint") or kind is None:
            continue
        got = (region.get("value") or {}).get(kind) if isinstance(region.get("value"), dict) else None
        if not isinstance(got, list) or not all(isinstance(v, str) for v in got):
            raise _Bad(f"the {name!r} region has no list of {kind}")
        values.setdefault(name, []).extend(got)
    return values


def _annotator(who: Any) -> str:
    if isinstance(who, dict):
        email = who.get("email")
        if isinstance(email, str) and email.strip():
            return email.strip()
        who = who.get("id")
    return f"user-{who}" if isinstance(who, (int, str)) and str(who).strip() else "unknown"


def _when(annotation: dict) -> datetime | None:
    """When the annotation was last saved, if Label Studio said so (a time without a zone is taken as UTC)."""
    for key in ("updated_at", "created_at"):
        text = annotation.get(key)
        if isinstance(text, str):
            try:
                when = datetime.fromisoformat(text)
            except ValueError:
                continue
            return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    return None


def _timestamp(annotation: dict) -> float:
    when = _when(annotation)
    return when.timestamp() if when else float("-inf")
