"""Scene recognisers for edge devices, trained on a run's taxonomy: its clusters (composite labels) are the classes.

Floors, bottom up: ``errors`` → ``models`` (torch modules) → ``dataset`` (a run folder → clips, classes, split by
recording) → ``features`` (patches, YAMNet embeddings) → ``train`` → ``export`` (ONNX, int8, agreement check) →
``card`` (model card, metrics) → ``recogniser`` (inference from a MODEL_DIR, no torch). ``recogniser`` is what a
device or a server imports; the rest needs torch and only runs where models are trained.
"""

from auditoryhum.edge.errors import EdgeError

__all__ = ["EdgeError"]
