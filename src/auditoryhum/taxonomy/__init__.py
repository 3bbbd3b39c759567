"""Pure clustering core: group unique label embeddings and choose k.

Inputs are U unique-label embeddings with their clip counts; nothing here
knows about audio, models or I/O.
"""

from .cluster import ALGORITHMS, Clusterer, kmeans, ward
from .selection import PENALTIES, CurvePoint, Selection, penalised, select_k
from .silhouette import (
    SilhouetteResult,
    label_silhouette,
    sampled_weighted_silhouette,
    silhouette,
    unit_rows,
    weighted_silhouette,
)

__all__ = [
    "ALGORITHMS",
    "PENALTIES",
    "Clusterer",
    "CurvePoint",
    "Selection",
    "SilhouetteResult",
    "kmeans",
    "label_silhouette",
    "penalised",
    "sampled_weighted_silhouette",
    "select_k",
    "silhouette",
    "unit_rows",
    "ward",
    "weighted_silhouette",
]
