"""``--protocol reference``: the authors' Ward + euclidean silhouette on every clip, computed on unique labels,
checked against scikit-learn run exactly as the reference code runs it, on the expanded rows."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import silhouette_score
from sklearn.metrics.cluster import contingency_matrix

from auditoryhum.backends.yamnet import class_names, short_name
from auditoryhum.config import Settings
from auditoryhum.labels import parse_labels
from auditoryhum.models import Models
from auditoryhum.taxonomy.reference import partition, reference_select_k, ward_merges
from auditoryhum.taxonomy.selection import penalised


def label_set(embedder, n_labels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Real label texts (AudioSet's class names, post-processed as model labels are) embedded by the real MiniLM,
    with Zipf clip counts: some labels on many clips, most on a few, as an MLLM's labels are."""
    names = list(dict.fromkeys(l for n in class_names() for l in parse_labels(short_name(n))[:1]))
    rng = np.random.default_rng(seed)
    labels = [names[i] for i in np.sort(rng.choice(len(names), n_labels, replace=False))]
    counts = np.minimum(rng.zipf(1.6, n_labels), 200)
    return embedder.embed(labels).astype(np.float64), counts


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    table = contingency_matrix(a, b)
    return bool(((table > 0).sum(axis=0) == 1).all() and ((table > 0).sum(axis=1) == 1).all())


@pytest.mark.parametrize("n_labels, seed", [(300, 0), (380, 1)])
def test_reference_protocol_equals_sklearn_on_the_expanded_rows(models, n_labels, seed, tmp_path):
    x, counts = label_set(models.embedder, n_labels, seed)
    rows = np.repeat(x, counts, axis=0)  # one row per clip, duplicates included, as the reference embeds them
    assert 2000 <= len(rows) <= 6000
    u = len(x)
    selection = reference_select_k(x, counts, k_max=u)
    curve = {p.k: p for p in selection.curve}
    assert sorted(curve) == list(range(2, u + 1))  # k from 2 up to the unique count
    merges = ward_merges(x, counts)
    # scikit-learn's path, the reference's code: Ward on the rows, cut at k, silhouette_score (euclidean).
    tree = AgglomerativeClustering(linkage="ward", compute_full_tree=True, memory=str(tmp_path))
    for k in (2, 3, 7, 25, 60, 150, u - 1, u):
        expected = tree.set_params(n_clusters=k).fit_predict(rows)
        ours = np.repeat(partition(merges, u, k), counts)
        assert same_partition(ours, expected), k
        assert curve[k].silhouette == pytest.approx(silhouette_score(rows, expected), abs=1e-6), k
    # The chosen k over a range is the one the sklearn sweep chooses with the same penalty.
    small = reference_select_k(x, counts, k_max=20)
    adjusted = [penalised(silhouette_score(rows, tree.set_params(n_clusters=k).fit_predict(rows)), k, u, 2.0)
                for k in range(2, 21)]
    assert small.k == 2 + int(np.argmax(adjusted))
    assert same_partition(np.repeat(small.labels, counts), tree.set_params(n_clusters=small.k).fit_predict(rows))


def test_the_reference_protocol_is_a_setting_and_sweeps_up_to_the_unique_count(models):
    counts = {"car horn": 5, "road traffic": 9, "traffic noise": 3, "birds singing": 4, "bird song": 6,
              "rain falling": 2, "heavy rain": 7}
    settings = Settings(protocol="reference")
    builder = Models(settings).taxonomy_builder()
    assert (builder.protocol, builder.k_max) == ("reference", None)
    builder.embedder = models.embedder  # the same MiniLM, already loaded
    taxonomy = builder.build("d", counts)
    assert [p.k for p in taxonomy.curve] == list(range(2, 8)) and taxonomy.algorithm == "reference"
    assert len(taxonomy.clusters) == taxonomy.k and sum(c.size for c in taxonomy.clusters) == sum(counts.values())
    assert sorted(l.label for c in taxonomy.clusters for l in c.labels) == sorted(counts)
    assert all(p.adjusted == pytest.approx(p.silhouette - 2.0 * p.k / 7) for p in taxonomy.curve)
    assert taxonomy.k == max(taxonomy.curve, key=lambda p: p.adjusted).k
    assert Models(Settings(protocol="reference", k_max=4)).taxonomy_builder().k_max == 4
    with pytest.raises(ValueError):
        Settings(protocol="sklearn")
    # Too many unique labels for its U x U matrices: refused up front, not a MemoryError minutes in.
    with pytest.raises(ValueError, match="20001 unique labels would need 9 GiB; use the default protocol"):
        reference_select_k(np.ones((20_001, 2)), np.ones(20_001))
