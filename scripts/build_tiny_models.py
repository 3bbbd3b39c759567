"""Tiny random-weight stand-ins of the paper profile's models, for running its code path where no weights are.

    python scripts/build_tiny_models.py out/eval/tiny-models

Writes OUT/labeler (a Qwen2.5-Omni checkpoint), OUT/scorer (a CLAP checkpoint with its processor) and
OUT/embedder (a sentence-transformers folder like all-mpnet-base-v2), the layout ``python -m
auditoryhum.quality.harness --paper-models OUT`` reads. The builders are the test suite's own
(tests/tiny_models.py, seeded: the same folders every time); their outputs are gibberish by design.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.tiny_models

from tests import tiny_models  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    tiny_models.build_qwen2_5_omni(args.out / "labeler")
    tiny_models.build_clap(args.out / "scorer")
    tiny_models.build_sentence_model(args.out / "sentence").rename(args.out / "embedder")
    shutil.rmtree(args.out / "sentence")
    print(f"tiny paper models in {args.out}: labeler, scorer, embedder")


if __name__ == "__main__":
    main()
