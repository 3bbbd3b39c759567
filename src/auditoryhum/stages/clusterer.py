"""Clusterer stage: collects final labels per living taxonomy, builds it once a dataset of it is sealed, then keeps
it alive: later clips are assigned to the current version at once, and a policy rebuilds it as a new version.

A taxonomy (``topics.taxonomy_of(clip)``: the clip's own, else its dataset's) may span datasets. Every build is a
version (1, 2, ...) kept in the store; a rebuild links its clusters to the previous version's
(:mod:`auditoryhum.taxonomy.lineage`), so a persisting cluster keeps its id and name. A final label arriving once
its taxonomy has a version is assigned to the nearest cluster (the Classify path) and published as a
``ClipAssignment``, ``novel`` when its label is new and further from every centroid than the version's novelty
threshold; it is also stored, so the next build includes it.

Labels and versions live in a :class:`~auditoryhum.store.Store`: a restarted service keeps what it had collected,
and a replayed final label overwrites its own row (one label per clip, never two).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, ContextManager, Sequence

import numpy as np
from google.protobuf.message import Message
from sqlalchemy import Connection, delete, func, insert, select, update

from auditoryhum import topics
from auditoryhum.stages.base import Out, Stage, dead_letter
from auditoryhum.store import Store, cluster_datasets, cluster_labels, lock_name, lock_row, taxonomy_versions
from auditoryhum.taxonomy.builder import TaxonomyBuilder
from auditoryhum.taxonomy.index import Match, TaxonomyIndex, label_vectors, novelty_threshold
from auditoryhum.taxonomy.lineage import first_version, link
from auditoryhum.v1 import pipeline_pb2 as pb

if TYPE_CHECKING:
    from auditoryhum.config import Settings

MAX_INDEXES = 64  # taxonomy versions whose centroids are kept in memory


@dataclass(frozen=True)
class LivingPolicy:
    """When an assigned clip is novel, and when a taxonomy that has a version is rebuilt (see config.Settings)."""

    novel_share: float | None = 0.2
    min_clips: int = 20
    after_clips: int | None = 1000
    novelty_threshold: float | None = None
    novelty_percentile: float = 10.0
    # The count trigger scales with the taxonomy: 1,000 new clips are news to a taxonomy of 2,000, not to one of
    # 100,000, where rebuilding every 1,000 would keep the clusterer building instead of assigning.
    growth_share: float | None = 0.1

    @classmethod
    def from_settings(cls, s: "Settings") -> "LivingPolicy":
        return cls(s.rebuild_novel_share, s.rebuild_min_clips, s.rebuild_after_clips, s.novelty_threshold,
                   s.novelty_percentile, s.rebuild_growth_share)

    def trigger(self, since: int, novel: int, built: int = 0) -> str | None:
        """Why ``since`` clips assigned since the last build, ``novel`` of them novel, call for a rebuild of a
        version that holds ``built`` clips."""
        if self.after_clips is not None and since >= max(self.after_clips, math.ceil((self.growth_share or 0) * built)):
            return f"{since} new clips"
        if self.novel_share is not None and since >= self.min_clips and novel >= self.novel_share * since:
            return f"novel share {novel}/{since}"
        return None


class ClustererStage(Stage):
    name = "clusterer"
    consumes = (topics.FINAL_LABELS,)

    def __init__(self, builder: TaxonomyBuilder, store: Store | None = None, policy: LivingPolicy | None = None):
        self.builder = builder
        self.store = store or Store()
        self.policy = policy or LivingPolicy()
        self._indexes: dict[tuple[str, int], TaxonomyIndex] = {}
        self._indexes_lock = threading.Lock()

    def transaction(self) -> ContextManager:
        return self.store.transaction()

    def handle_batch(self, messages: Sequence[Message]) -> list[list[Out]]:
        # A batch's labels are embedded in one model call, for the clips assigned as they arrive.
        labels = [m.label for m in messages if isinstance(m, pb.FinalLabel)]
        vectors = label_vectors(self.builder.embedder, labels) if labels else {}
        return [self._handle(m, vectors) for m in messages]

    def handle(self, message: Message) -> list[Out]:
        return self._handle(message, {})

    def _handle(self, message: Message, vectors: dict[str, np.ndarray]) -> list[Out]:
        with self.store.transaction() as db:
            if isinstance(message, pb.FinalLabel):
                return self._final_label(db, message, vectors)
            if isinstance(message, pb.DatasetSealed):
                self._lock(db, message.taxonomy or message.dataset)
                self._dataset(db, message.dataset)
                db.execute(update(cluster_datasets).where(cluster_datasets.c.dataset == message.dataset)
                           .values(expected=message.final_labels))
                return self._maybe_build(db, message.dataset, message.taxonomy or message.dataset)
            return []

    def _final_label(self, db: Connection, message: pb.FinalLabel, vectors: dict[str, np.ndarray]) -> list[Out]:
        clip, name = message.clip, topics.taxonomy_of(message.clip)
        self._lock(db, name)
        embedding = None
        if self.builder.representation == "class-vector":
            if not message.audio_embedding:
                return [dead_letter(self.name, "class-vector clustering needs the clip's audio embedding", message)]
            embedding = np.asarray(message.audio_embedding, dtype=np.float32).tobytes()
        current = self._version(db, name)
        assignment = self._assign(name, current, clip, message.label, vectors) if current is not None else None
        # A later decision for a clip replaces the earlier one.
        db.execute(delete(cluster_labels).where(cluster_labels.c.dataset == clip.dataset,
                                                cluster_labels.c.clip_id == clip.clip_id))
        db.execute(insert(cluster_labels).values(
            dataset=clip.dataset, clip_id=clip.clip_id, label=message.label, audio_embedding=embedding, taxonomy=name,
            assigned_version=assignment.version if assignment else None,
            novel=assignment.novel if assignment else None))
        outs = self._maybe_build(db, clip.dataset, name)
        if assignment is not None:
            outs = [Out(topics.ASSIGNMENTS, name, assignment), *outs, *self._maybe_rebuild(db, name, current.clips)]
        return outs

    def _assign(self, name: str, current: pb.Taxonomy, clip: pb.Clip, label: str,
                vectors: dict[str, np.ndarray]) -> pb.ClipAssignment | None:
        if not current.clusters:  # a build of no usable labels: nothing to assign to until a rebuild
            return None
        [match] = self.index(current).classify([label], vectors)
        return pb.ClipAssignment(clip=clip, taxonomy=name, version=current.version, cluster_id=match.cluster_id,
                                 composite_label=match.composite_label, label=label, similarity=match.similarity,
                                 novel=is_novel(match, current))

    # -- reading ---------------------------------------------------------------------------------------------------

    def counts(self, name: str) -> Counter[str]:
        with self.store.transaction() as db:
            return self._counts(db, name)

    def labels_count(self, name: str) -> int:
        with self.store.transaction() as db:
            return db.execute(select(func.count()).select_from(cluster_labels)
                              .where(cluster_labels.c.taxonomy == name)).scalar()

    def taxonomy(self, name: str, version: int = 0) -> pb.Taxonomy | None:
        """Version ``version`` of the taxonomy (0: the current one); None when there is no such taxonomy or version."""
        with self.store.transaction() as db:
            return self._version(db, name, version)

    def versions(self, name: str) -> list[pb.Taxonomy]:
        """Every version, oldest first, without its clusters, curve and clip clusters."""
        with self.store.transaction() as db:
            rows = db.execute(select(*ROW).where(taxonomy_versions.c.taxonomy == name)
                              .order_by(taxonomy_versions.c.version)).all()
        listed = []
        for row in rows:
            taxonomy = _parse(row)
            for field in ("clusters", "curve", "clip_clusters"):
                taxonomy.ClearField(field)
            listed.append(taxonomy)
        return listed

    def index(self, taxonomy: pb.Taxonomy) -> TaxonomyIndex:
        """The Classify path's index of a stored version (ValueError for a taxonomy without clusters)."""
        key = (taxonomy.dataset, taxonomy.version)
        with self._indexes_lock:
            index = self._indexes.get(key)
        if index is None:
            index = TaxonomyIndex(taxonomy, self.builder.embedder)
            with self._indexes_lock:
                while len(self._indexes) >= MAX_INDEXES:
                    self._indexes.pop(next(iter(self._indexes)))
                self._indexes[key] = index
        return index

    # -- building --------------------------------------------------------------------------------------------------

    def build(self, name: str, builder: TaxonomyBuilder | None = None, trigger: str = "on demand") -> list[Out]:
        """A new version of the taxonomy from every label it holds now (e.g. with other settings), linked to the
        previous one; returns its record on the taxonomy topic."""
        with self.store.transaction() as db:
            self._lock(db, name)  # whichever replica is asked: one build of a taxonomy at a time, numbered in turn
            return [Out(topics.TAXONOMY, name, self._build(db, name, builder or self.builder, trigger))]

    def _build(self, db: Connection, name: str, builder: TaxonomyBuilder, trigger: str) -> pb.Taxonomy:
        where = cluster_labels.c.taxonomy == name
        rows = db.execute(select(cluster_labels.c.clip_id, cluster_labels.c.label, cluster_labels.c.audio_embedding)
                          .where(where, cluster_labels.c.audio_embedding.is_not(None))
                          .order_by(cluster_labels.c.dataset, cluster_labels.c.clip_id)).all() \
            if builder.representation == "class-vector" else []
        if rows:
            taxonomy = builder.build_class_vectors(
                name, [r.clip_id for r in rows], [r.label for r in rows],
                np.stack([np.frombuffer(r.audio_embedding, dtype=np.float32) for r in rows]))
        else:
            taxonomy = builder.build(name, self._counts(db, name))
        previous = self._version(db, name)
        taxonomy.version = previous.version + 1 if previous is not None else 1
        taxonomy.trigger = trigger
        taxonomy.datasets.extend(db.execute(select(cluster_labels.c.dataset).where(where).distinct()
                                            .order_by(cluster_labels.c.dataset)).scalars())
        labels = [lc.label for t in (taxonomy, previous) if t is not None for c in t.clusters for lc in c.labels]
        vectors = label_vectors(builder.embedder, labels)
        if previous is None:
            first_version(taxonomy)
        else:
            link(previous, taxonomy, vectors)
        taxonomy.novelty_threshold = self.policy.novelty_threshold if self.policy.novelty_threshold is not None \
            else novelty_threshold(taxonomy, vectors, self.policy.novelty_percentile)
        db.execute(insert(taxonomy_versions).values(taxonomy=name, version=taxonomy.version, created_at=time.time(),
                                                    trigger=trigger, taxonomy_pb=taxonomy.SerializeToString()))
        # The clips assigned since the last build are in this one: the policy counts afresh.
        db.execute(update(cluster_labels).where(where, cluster_labels.c.assigned_version.is_not(None))
                   .values(assigned_version=None, novel=None))
        return taxonomy

    def _maybe_build(self, db: Connection, dataset: str, name: str) -> list[Out]:
        """The first build of a taxonomy: once a dataset of it is sealed and all its final labels are in."""
        state = self._dataset(db, dataset)
        if state.published or state.expected is None or self._labels(db, dataset) < state.expected:
            return []
        db.execute(update(cluster_datasets).where(cluster_datasets.c.dataset == dataset).values(published=True))
        if self._version(db, name) is not None:  # its clips were assigned as they came; the policy rebuilds
            return []
        return [Out(topics.TAXONOMY, name, self._build(db, name, self.builder, f"sealed {dataset}"))]

    def _maybe_rebuild(self, db: Connection, name: str, built: int) -> list[Out]:
        # ix_cluster_labels_v1_assigned covers this count: it reads the clips assigned since the build, not all.
        since, novel = db.execute(select(func.count(), func.count().filter(cluster_labels.c.novel.is_(True)))
                                  .where(cluster_labels.c.taxonomy == name,
                                         cluster_labels.c.assigned_version.is_not(None))).one()
        trigger = self.policy.trigger(since, novel, built)
        return [] if trigger is None else [Out(topics.TAXONOMY, name, self._build(db, name, self.builder, trigger))]

    # -- state -----------------------------------------------------------------------------------------------------

    def _version(self, db: Connection, name: str, version: int = 0) -> pb.Taxonomy | None:
        query = select(*ROW).where(taxonomy_versions.c.taxonomy == name)
        query = query.where(taxonomy_versions.c.version == version) if version else \
            query.order_by(taxonomy_versions.c.version.desc()).limit(1)
        row = db.execute(query).first()
        return _parse(row) if row else None

    def _counts(self, db: Connection, name: str) -> Counter[str]:
        return Counter(dict(db.execute(select(cluster_labels.c.label, func.count())
                                       .where(cluster_labels.c.taxonomy == name)
                                       .group_by(cluster_labels.c.label)).all()))

    @staticmethod
    def _lock(db: Connection, name: str) -> None:
        """Every change to a taxonomy takes its lock first: replicas sharing the store (the stream's owner, a gRPC
        BuildTaxonomy on another replica, a consumer finishing a batch after a rebalance) change it one at a time,
        each reading what the one before committed."""
        lock_name(db, "taxonomy", name)

    def _dataset(self, db: Connection, dataset: str):
        """The dataset's row (created if missing; taken under its taxonomy's lock)."""
        return lock_row(db, cluster_datasets, dataset=dataset)

    def _labels(self, db: Connection, dataset: str) -> int:
        return db.execute(select(func.count()).select_from(cluster_labels)
                          .where(cluster_labels.c.dataset == dataset)).scalar()


def is_novel(match: Match, taxonomy: pb.Taxonomy) -> bool:
    """A label the version does not hold, further from every centroid than its novelty threshold."""
    return not match.known and match.similarity < taxonomy.novelty_threshold


ROW = (taxonomy_versions.c.version, taxonomy_versions.c.trigger, taxonomy_versions.c.taxonomy_pb)


def _parse(row) -> pb.Taxonomy:
    taxonomy = pb.Taxonomy.FromString(row.taxonomy_pb)
    # The row's number and trigger are authoritative (a build migrated from before versions has neither).
    taxonomy.version, taxonomy.trigger = row.version, row.trigger
    return taxonomy
