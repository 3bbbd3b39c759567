"""Clusterer stage: collects a dataset's final labels and, once the dataset is sealed, builds its taxonomy.

Labels and taxonomies live in a :class:`~auditoryhum.store.Store`: a restarted service keeps what it had
collected, and a replayed final label overwrites its own row (one label per clip, never two).
"""

from __future__ import annotations

from collections import Counter
from typing import ContextManager

import numpy as np
from google.protobuf.message import Message
from sqlalchemy import Connection, delete, func, insert, select, update

from auditoryhum import topics
from auditoryhum.stages.base import Out, Stage, dead_letter
from auditoryhum.store import Store, cluster_datasets, cluster_labels
from auditoryhum.taxonomy.builder import TaxonomyBuilder
from auditoryhum.v1 import pipeline_pb2 as pb


class ClustererStage(Stage):
    name = "clusterer"
    consumes = (topics.FINAL_LABELS,)

    def __init__(self, builder: TaxonomyBuilder, store: Store | None = None):
        self.builder = builder
        self.store = store or Store()

    def transaction(self) -> ContextManager:
        return self.store.transaction()

    def handle(self, message: Message) -> list[Out]:
        with self.store.transaction() as db:
            if isinstance(message, pb.FinalLabel):
                clip = message.clip
                embedding = None
                if self.builder.representation == "class-vector":
                    if not message.audio_embedding:
                        return [dead_letter(self.name, "class-vector clustering needs the clip's audio embedding",
                                            message)]
                    embedding = np.asarray(message.audio_embedding, dtype=np.float32).tobytes()
                # A later decision for a clip replaces the earlier one.
                db.execute(delete(cluster_labels).where(cluster_labels.c.dataset == clip.dataset,
                                                        cluster_labels.c.clip_id == clip.clip_id))
                db.execute(insert(cluster_labels).values(dataset=clip.dataset, clip_id=clip.clip_id,
                                                         label=message.label, audio_embedding=embedding))
                return self._maybe_build(db, clip.dataset)
            if isinstance(message, pb.DatasetSealed):
                self._dataset(db, message.dataset)
                db.execute(update(cluster_datasets).where(cluster_datasets.c.dataset == message.dataset)
                           .values(expected=message.final_labels))
                return self._maybe_build(db, message.dataset)
            return []

    def counts(self, dataset: str) -> Counter[str]:
        with self.store.transaction() as db:
            return Counter(dict(db.execute(select(cluster_labels.c.label, func.count())
                                           .where(cluster_labels.c.dataset == dataset)
                                           .group_by(cluster_labels.c.label)).all()))

    def labels_count(self, dataset: str) -> int:
        with self.store.transaction() as db:
            return self._labels(db, dataset)

    def taxonomy(self, dataset: str) -> pb.Taxonomy | None:
        with self.store.transaction() as db:
            blob = db.execute(select(cluster_datasets.c.taxonomy)
                              .where(cluster_datasets.c.dataset == dataset)).scalar()
            return pb.Taxonomy.FromString(blob) if blob else None

    def build(self, dataset: str, builder: TaxonomyBuilder | None = None) -> pb.Taxonomy:
        """Build (or rebuild, e.g. with other settings) the dataset's taxonomy from the labels collected so far."""
        builder = builder or self.builder
        with self.store.transaction() as db:
            rows = db.execute(select(cluster_labels.c.clip_id, cluster_labels.c.label,
                                     cluster_labels.c.audio_embedding)
                              .where(cluster_labels.c.dataset == dataset,
                                     cluster_labels.c.audio_embedding.is_not(None))
                              .order_by(cluster_labels.c.clip_id)).all() \
                if builder.representation == "class-vector" else []
            if rows:
                taxonomy = builder.build_class_vectors(
                    dataset, [r.clip_id for r in rows], [r.label for r in rows],
                    np.stack([np.frombuffer(r.audio_embedding, dtype=np.float32) for r in rows]))
            else:
                taxonomy = builder.build(dataset, self.counts(dataset))
            self._dataset(db, dataset)
            db.execute(update(cluster_datasets).where(cluster_datasets.c.dataset == dataset)
                       .values(taxonomy=taxonomy.SerializeToString()))
            return taxonomy

    def _dataset(self, db: Connection, dataset: str):
        row = db.execute(select(cluster_datasets).where(cluster_datasets.c.dataset == dataset)).first()
        if row is None:
            db.execute(insert(cluster_datasets).values(dataset=dataset, published=False))
            row = db.execute(select(cluster_datasets).where(cluster_datasets.c.dataset == dataset)).first()
        return row

    def _labels(self, db: Connection, dataset: str) -> int:
        return db.execute(select(func.count()).select_from(cluster_labels)
                          .where(cluster_labels.c.dataset == dataset)).scalar()

    def _maybe_build(self, db: Connection, dataset: str) -> list[Out]:
        state = self._dataset(db, dataset)
        if state.published or state.expected is None or self._labels(db, dataset) < state.expected:
            return []
        db.execute(update(cluster_datasets).where(cluster_datasets.c.dataset == dataset).values(published=True))
        return [Out(topics.TAXONOMY, dataset, self.build(dataset))]
