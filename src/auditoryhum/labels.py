"""The paper's label post-processing, exactly, applied to every labeler's raw text.

line breaks become ", " (a model answering one pair a line gives several labels) → lower-case → drop all
punctuation except commas → split on commas → drop non-ASCII → strip → keep at most ``max_words`` words per
label (extra words are cut, not the label) → drop empties.
Duplicates are removed keeping first occurrence, so a clip never scores the same label twice.
"""

from __future__ import annotations

import string
import unicodedata

_PUNCT_EXCEPT_COMMA = "".join(c for c in string.punctuation if c != ",")


def _is_punctuation(char: str) -> bool:
    # ASCII punctuation plus Unicode punctuation (“smart quotes”, “…”, “—”), commas kept.
    return char in _PUNCT_EXCEPT_COMMA or (char != "," and unicodedata.category(char).startswith("P"))


def parse_labels(raw: str, max_words: int = 2) -> list[str]:
    """Turn raw model text like ``"Car horn, Busy-street!"`` into ``["car horn", "busystreet"]``."""
    if max_words < 1:
        raise ValueError("max_words must be at least 1")
    text = "".join(c for c in ", ".join(raw.splitlines()).lower() if not _is_punctuation(c))
    labels: list[str] = []
    for part in text.split(","):
        ascii_part = part.encode("ascii", "ignore").decode("ascii")
        words = ascii_part.split()[:max_words]
        label = " ".join(words)
        if label and label not in labels:
            labels.append(label)
    return labels
