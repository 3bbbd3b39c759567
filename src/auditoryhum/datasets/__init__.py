"""The paper's datasets, read exactly as published, each clip carrying its ground-truth class (and split).

``LAYOUTS`` names them; :func:`load` lists a source as one of them, or as plain files (``files``: a folder, a
CSV of URIs or an object-store prefix, :mod:`auditoryhum.manifest`). Every loader checks the layout and fails
with :class:`DatasetLayoutError` naming the file (and row) at fault, before anything is processed. Clips are
listed in the authors' order (by file name), which the published label and annotation files follow row by row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from auditoryhum import manifest
from auditoryhum.datasets._common import DatasetLayoutError
from auditoryhum.datasets.advance import load_advance
from auditoryhum.datasets.ahead import load_ahead_ds
from auditoryhum.datasets.tau import load_tau2019, load_tau2021

LAYOUTS: dict[str, Callable[[Path], manifest.Manifest]] = {
    "advance": load_advance,
    "ahead-ds": load_ahead_ds,
    "tau2019": load_tau2019,
    "tau2021": load_tau2021,
}

__all__ = ["LAYOUTS", "DatasetLayoutError", "load"]


def load(source: str, layout: str = "files", *, class_from_folder: bool = False) -> manifest.Manifest:
    if layout == "files":
        return manifest.load(source, class_from_folder=class_from_folder)
    if layout not in LAYOUTS:
        raise manifest.ManifestError(f"unknown dataset layout {layout!r}; known: files, {', '.join(LAYOUTS)}")
    return LAYOUTS[layout](Path(source))
