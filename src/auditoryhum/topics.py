"""Versioned topic names. Every record is keyed by clip id, except dataset-wide control messages (by dataset).

The partition is the key's, except on the topics the stateful stages read (:func:`partition_key`): there it is
the dataset's (review) or the taxonomy's (clusterer), so N replicas split the datasets between them and each
dataset's records reach one replica, in order. The key stays the clip id: only the partition differs.
"""

DATASETS = "auditoryhum.datasets.v1"
CLIPS = "auditoryhum.clips.v1"
LABELS = "auditoryhum.labels.v1"
ALIGNMENTS = "auditoryhum.alignments.v1"
REVIEW_TASKS = "auditoryhum.review.tasks.v1"
REVIEW_DECISIONS = "auditoryhum.review.decisions.v1"
FINAL_LABELS = "auditoryhum.labels.final.v1"
TAXONOMY = "auditoryhum.taxonomy.v1"
ASSIGNMENTS = "auditoryhum.taxonomy.assignments.v1"  # clips assigned to a built taxonomy as they arrive
DLQ = "auditoryhum.dlq.v1"
# Not in ALL: ingest's own record of each shard's progress (auditoryhum.bus.ledger), compacted, one partition.
INGEST_PROGRESS = "auditoryhum.ingest.progress.v1"

ALL = (DATASETS, CLIPS, LABELS, ALIGNMENTS, REVIEW_TASKS, REVIEW_DECISIONS, FINAL_LABELS, TAXONOMY, ASSIGNMENTS, DLQ)

# What each service's consumer group (auditoryhum-<service>) reads, for `auditoryhum status` to report its lag
# without loading the stages; tests/test_kube.py checks it against each stage's `consumes`.
CONSUMES = {"labeler": (CLIPS,), "aligner": (LABELS,), "review": (DATASETS, ALIGNMENTS, DLQ, REVIEW_DECISIONS),
            "clusterer": (FINAL_LABELS,)}


def taxonomy_of(clip) -> str:
    """The taxonomy a clip joins: its own field, else its dataset's (one taxonomy per dataset, as before)."""
    return clip.taxonomy or clip.dataset


def partition_key(topic: str, message) -> str | None:
    """What picks the record's partition instead of its key, or None (the key does). Review decides per dataset
    and the clusterer per taxonomy, so every record one of them reads about a dataset (or taxonomy) lands on one
    partition: one replica owns it at a time. Hashed like a key (Kafka's murmur2), on every topic alike, so a
    dataset has the same partition number on each topic, and Kafka's default range assignment gives them all to
    one consumer. Review decisions are not routed: the replica a reviewer calls applies them under the dataset's
    row lock (auditoryhum.review.desk); their copy on the bus is the record, whose replay changes nothing."""
    name = type(message).__name__
    if topic == FINAL_LABELS:
        if name == "FinalLabel":
            return taxonomy_of(message.clip)
        if name == "DatasetSealed":
            return message.taxonomy or message.dataset
    elif topic == ALIGNMENTS and name == "Alignment":
        return message.clip.dataset or None
    elif topic == DLQ and name == "DeadLetter":
        return message.dataset or None
    elif topic == DATASETS and name == "DatasetAnnouncement":
        return message.dataset
    return None


ROUTED = (DATASETS, ALIGNMENTS, DLQ, FINAL_LABELS)  # the topics partition_key may route
