"""The embedded run's output folder: a sink that writes each record as it arrives, then the summary.

Files (a contract other tools rely on): labels.csv, alignments.csv, labelers.csv, review_queue.csv,
final_labels.csv, dead_letters.csv, assignments.csv, taxonomy.json, summary.json, report.html and its PNG plots.
With several labelers, labels.csv has one row per clip for them all (see LabelProposal) and labelers.csv one row
per labeler and clip: its best label, that label's score and whether the clip kept it; with one, labelers.csv has
its header only and every disagreement is 0.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable

import numpy as np
from google.protobuf.message import Message

from auditoryhum import report, topics
from auditoryhum.backends import TextEmbedder
from auditoryhum.review.calibration import Summary as Calibration
from auditoryhum.stages.base import Out, Stage
from auditoryhum.stages.labeler import HINT_KEY
from auditoryhum.stages.review import ACTIONS as ACTION_NAMES
from auditoryhum.stages.review import HUMAN_MODEL_ID
from auditoryhum.taxonomy.builder import labels_in_several_clusters
from auditoryhum.taxonomy.metrics import agreement, lowest_mean
from auditoryhum.v1 import pipeline_pb2 as pb

COLUMNS = {
    "labels.csv": ("clip_id", "path", "model", "raw", "labels"),
    "alignments.csv": ("clip_id", "label", "score", "is_best"),
    "labelers.csv": ("clip_id", "model", "label", "score", "kept"),
    "review_queue.csv": ("clip_id", "path", "label", "score", "disagreement"),
    "final_labels.csv": ("clip_id", "path", "label", "source", "score", "final_score", "review_action",
                         "ground_truth", "model", "disagreement"),
    "dead_letters.csv": ("path", "stage", "reason"),
}
SOURCES = {pb.LABEL_SOURCE_MODEL: "model", pb.LABEL_SOURCE_HUMAN: "human"}
ACTIONS = {pb.REVIEW_ACTION_UNSPECIFIED: "", **ACTION_NAMES}


def taxonomy_dict(taxonomy: pb.Taxonomy) -> dict:
    return {
        "dataset": taxonomy.dataset,
        "k": taxonomy.k,
        "lambda": taxonomy.penalty_lambda,
        "algorithm": taxonomy.algorithm,
        "representation": taxonomy.representation,
        "embedder": taxonomy.embedder_id,
        "unique_labels": taxonomy.unique_labels,
        "clips": taxonomy.clips,
        "silhouette": taxonomy.silhouette,
        "adjusted_silhouette": taxonomy.adjusted_silhouette,
        "version": taxonomy.version,
        "trigger": taxonomy.trigger,
        "datasets": list(taxonomy.datasets),
        "novelty_threshold": taxonomy.novelty_threshold,
        "lineage": lineage_dict(taxonomy) if taxonomy.HasField("lineage") else None,
        "clusters": [
            {"id": c.cluster_id, "composite_label": c.composite_label, "size": c.size, "born_version": c.born_version,
             "scene_id": c.scene_id if taxonomy.scenes else None,
             "labels": [{"label": lc.label, "count": lc.count} for lc in c.labels]}
            for c in taxonomy.clusters
        ],
        "scenes": [
            {"id": s.scene_id, "composite_label": s.composite_label, "size": s.size,
             "cluster_ids": list(s.cluster_ids), "labels": [{"label": lc.label, "count": lc.count} for lc in s.labels]}
            for s in taxonomy.scenes
        ],
        "scene_silhouette": taxonomy.scene_silhouette if taxonomy.scenes else None,
        "scene_curve": [{"k": p.k, "silhouette": p.silhouette, "adjusted": p.adjusted} for p in taxonomy.scene_curve],
        "scenes_note": taxonomy.scenes_note,
        "k_criterion": taxonomy.k_criterion,
        "curve": [{"k": p.k, "silhouette": p.silhouette, "adjusted": p.adjusted} for p in taxonomy.curve],
        "labels_in_several_clusters": labels_in_several_clusters(taxonomy),
    }


def lineage_dict(taxonomy: pb.Taxonomy) -> dict:
    """What the rebuild made of the previous version's clusters (auditoryhum.taxonomy.lineage)."""
    lineage = taxonomy.lineage
    return {"previous_version": lineage.previous_version, "born": list(lineage.born), "retired": list(lineage.retired),
            "splits": [{"cluster_id": s.cluster_id, "into": list(s.into)} for s in lineage.splits],
            "merges": [{"from": list(m.sources), "cluster_id": m.cluster_id} for m in lineage.merges],
            "persisted": [{"cluster_id": p.cluster_id, "overlap": round(p.overlap, 4), "cosine": round(p.cosine, 4),
                           "similarity": round(p.similarity, 4)} for p in lineage.persisted]}


def write_taxonomy(out: Path, taxonomy: pb.Taxonomy, embedder: TextEmbedder, *,
                   clips: list[tuple[str, str, str]] = (), scores: np.ndarray | None = None,
                   reviewed: np.ndarray | None = None, decided: np.ndarray | None = None, removed: int = 0,
                   calibration: Calibration | None = None) -> dict:
    """``reviewed``: the model scores of the clips selected for review; ``decided``: (score before, score after)
    of each clip a reviewer decided and kept, ``removed`` those marked unusable."""
    """taxonomy.json, report.html and its plots; returns the metrics (shared by `run` and `cluster`)."""
    (out / "taxonomy.json").write_text(json.dumps(taxonomy_dict(taxonomy), indent=2) + "\n")
    cluster_of = {lc.label: c.cluster_id for c in taxonomy.clusters for lc in c.labels}
    clip_cluster = {cc.clip_id: cc.cluster_id for cc in taxonomy.clip_clusters}
    metrics: dict = {
        "clips": taxonomy.clips, "unique_labels": taxonomy.unique_labels, "k": taxonomy.k,
        "lambda": taxonomy.penalty_lambda, "silhouette": taxonomy.silhouette,
        "adjusted_silhouette": taxonomy.adjusted_silhouette, "scenes": len(taxonomy.scenes),
    }
    if scores is not None and len(scores):
        metrics |= {"mu_c": float(np.mean(scores)), "mu_1pct": lowest_mean(scores)}
    if decided is not None and len(decided):  # the paper's uplift: the same pairs before and after the decisions
        metrics |= {"review_decided": len(decided) + removed, "review_removed": removed,
                    "review_mean_before": float(np.mean(decided[:, 0])), "review_mean_after": float(np.mean(decided[:, 1]))}
    elif reviewed is not None and len(reviewed):  # nobody decided: the selected labels stand as they were
        metrics |= {"review_decided": 0, "review_mean_before": float(np.mean(reviewed)), "review_mean_after": None}
    if clips:  # (clip id, label, ground truth); a clip's cluster is its own, or its label's
        assigned = [(clip_cluster.get(c, cluster_of.get(label)), gt) for c, label, gt in clips]
        assigned = [(k, gt) for k, gt in assigned if k is not None]
        metrics |= agreement([k for k, _ in assigned], [gt for _, gt in assigned]) or {}
    vectors = dict(zip(cluster_of, embedder.embed(list(cluster_of)))) if cluster_of else {}
    review_cut = float(np.max(reviewed)) if reviewed is not None and len(reviewed) else None
    report.write(out, taxonomy, vectors, metrics, scores, review_cut, calibration)
    return metrics


class OutputWriter(Stage):
    name = "outputs"
    consumes = (topics.LABELS, topics.ALIGNMENTS, topics.REVIEW_TASKS, topics.FINAL_LABELS, topics.TAXONOMY,
                topics.DLQ)

    def __init__(self, out: Path, on_clip_done: Callable[[], None] = lambda: None, *, dataset: str | None = None):
        self.out, self.dataset = out, dataset  # dataset: keep only its records (a shared topic holds many)
        out.mkdir(parents=True, exist_ok=True)
        self._files = {name: (out / name).open("w", newline="", encoding="utf-8") for name in COLUMNS}
        self._csv = {name: csv.writer(f) for name, f in self._files.items()}
        for name, columns in COLUMNS.items():
            self._csv[name].writerow(columns)
        self.scores: list[float] = []
        self.dead_letters = 0
        self.failed_clips = 0  # clips dead-lettered before scoring
        self.reviewed_scores: list[float] = []
        self.decided: list[tuple[float, float]] = []  # (score before, score after) of each decided, kept clip
        self.removed = 0
        self.taxonomies: dict[str, pb.Taxonomy] = {}
        self._on_clip_done = on_clip_done
        self._seen: set[tuple] = set()

    def _first(self, message: Message) -> bool:
        """False for a replayed copy (at-least-once delivery): a record's identity is its type, clip and the
        reviewer's hint it was made under, so a re-labelled clip's second answer still counts."""
        if isinstance(message, pb.DeadLetter):
            key = ("DeadLetter", message.clip_id, message.stage, message.reason) if message.clip_id else None
        elif isinstance(message, pb.DatasetSealed):
            key = ("DatasetSealed", message.dataset)
        else:
            clip = message.alignment.clip if isinstance(message, pb.ReviewTask) else getattr(message, "clip", None)
            key = (type(message).__name__, clip.clip_id, clip.metadata.get(HINT_KEY, ""),
                   getattr(message, "model_id", "")) if clip else None
        if key is None:
            return True
        if key in self._seen:
            return False
        self._seen.add(key)
        return True

    def handle(self, message: Message) -> list[Out]:
        if isinstance(message, pb.ReviewTask):
            dataset = message.alignment.clip.dataset
        else:
            dataset = message.clip.dataset if hasattr(message, "clip") else getattr(message, "dataset", None)
        if (self.dataset is not None and dataset != self.dataset) or not self._first(message):
            return []
        if isinstance(message, pb.LabelProposal):
            self._csv["labels.csv"].writerow((message.clip.clip_id, message.clip.uri, message.model_id,
                                              message.raw_text, ", ".join(message.labels)))
        elif isinstance(message, pb.Alignment):
            for s in message.scores:
                self._csv["alignments.csv"].writerow((message.clip.clip_id, s.label, f"{s.score:.6f}",
                                                      int(s.label == message.best_label)))
            for b in message.labelers:
                self._csv["labelers.csv"].writerow((message.clip.clip_id, b.model_id, b.label, f"{b.score:.6f}",
                                                    int(b.label == message.best_label)))
            if message.model_id != HUMAN_MODEL_ID and HINT_KEY not in message.clip.metadata:  # not a review round
                self.scores.append(message.best_score)
                self._on_clip_done()
        elif isinstance(message, pb.ReviewTask):
            a = message.alignment
            self._csv["review_queue.csv"].writerow((a.clip.clip_id, a.clip.uri, a.best_label, f"{a.best_score:.6f}",
                                                    f"{a.disagreement:.6f}"))
            self.reviewed_scores.append(a.best_score)
        elif isinstance(message, pb.FinalLabel):
            self._csv["final_labels.csv"].writerow((message.clip.clip_id, message.clip.uri, message.label,
                                                    SOURCES.get(message.source, "unknown"), f"{message.score:.6f}",
                                                    f"{message.final_score:.6f}", ACTIONS[message.review_action],
                                                    message.clip.ground_truth, message.model_id,
                                                    f"{message.disagreement:.6f}"))
            if message.review_action:
                self.decided.append((message.score, message.final_score))
        elif isinstance(message, pb.DatasetSealed):
            self.removed += message.removed
        elif isinstance(message, pb.DeadLetter):
            self._csv["dead_letters.csv"].writerow((message.uri, message.stage, message.reason))
            self.dead_letters += 1
            if message.stage in ("labeler", "aligner"):
                self.failed_clips += 1
                self._on_clip_done()
        elif isinstance(message, pb.Taxonomy):
            self.taxonomies[message.dataset] = message
        return []

    def finish(self, dataset: str, embedder: TextEmbedder, extra: dict | None = None,
               calibration: Calibration | None = None) -> dict:
        """Close the streams, join final labels with the taxonomy, write the taxonomy, report and summary.
        ``calibration``: the review stage's, from its decisions."""
        for f in self._files.values():
            f.close()
        taxonomy = self.taxonomies.get(dataset, pb.Taxonomy(dataset=dataset))
        cluster_of = {lc.label: c for c in taxonomy.clusters for lc in c.labels}
        by_id = {c.cluster_id: c for c in taxonomy.clusters}
        scene_label = {s.scene_id: s.composite_label for s in taxonomy.scenes}
        clip_cluster = {cc.clip_id: by_id[cc.cluster_id] for cc in taxonomy.clip_clusters}
        clips: list[tuple[str, str, str]] = []
        with (self.out / "final_labels.csv").open(newline="", encoding="utf-8") as src, \
                (self.out / "assignments.csv").open("w", newline="", encoding="utf-8") as dst:
            writer = csv.writer(dst)
            writer.writerow(("clip_id", "path", "label", "cluster_id", "composite_label", "scene_id", "scene_label"))
            for row in csv.DictReader(src):
                cluster = clip_cluster.get(row["clip_id"]) or cluster_of.get(row["label"])
                scene = cluster.scene_id if cluster and scene_label else None
                writer.writerow((row["clip_id"], row["path"], row["label"],
                                 cluster.cluster_id if cluster else "", cluster.composite_label if cluster else "",
                                 "" if scene is None else scene, scene_label.get(scene, "")))
                clips.append((row["clip_id"], row["label"], row["ground_truth"]))
        metrics = write_taxonomy(self.out, taxonomy, embedder, clips=clips, scores=np.asarray(self.scores),
                                 reviewed=np.asarray(self.reviewed_scores),
                                 decided=np.asarray(self.decided).reshape(-1, 2), removed=self.removed,
                                 calibration=calibration)
        summary = {
            "dataset": dataset,
            **metrics,
            "clips": len(self.scores) + self.failed_clips,  # every clip ingested, not only those clustered
            "labelled": len(self.scores),
            "dead_letters": self.dead_letters,
            "reviewed": len(self.reviewed_scores),
            "mu_c": metrics.get("mu_c"),
            "mu_1pct": metrics.get("mu_1pct"),
            **({"calibration": calibration.as_dict()} if calibration is not None else {}),
            **(extra or {}),
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary
