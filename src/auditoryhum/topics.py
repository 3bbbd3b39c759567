"""Versioned topic names. Every record is keyed by clip id, except dataset-wide control messages (by dataset)."""

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
