"""Choosing k: the default criterion on the synthetic label families, the paper's form, and bad settings."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from auditoryhum.config import Settings
from auditoryhum.quality.synthetic import FAST_SIZES, label_set, _Concepts
from auditoryhum.taxonomy import label_silhouette, select_k, weighted_silhouette
from auditoryhum.taxonomy.builder import TaxonomyBuilder
from auditoryhum.taxonomy.selection import CRITERIA, DEFAULT_CRITERION, auto_k_max


@pytest.fixture(scope="module")
def pool(models):
    return _Concepts(models.embedder)


@pytest.mark.parametrize("family", ["paraphrase", "subtypes"])
@pytest.mark.parametrize("counts", ["balanced", "zipf"])
def test_the_default_criterion_recovers_the_group_count_of_every_family(pool, family, counts):
    for size in FAST_SIZES:
        s = label_set(family, size, counts=counts, _pool=pool)
        assert len(s.x) == len(s.texts) == size and s.counts.min() >= 1
        sel = select_k(s.x, s.counts)
        assert sel.form == DEFAULT_CRITERION
        assert abs(sel.k - s.groups) <= 0.2 * s.groups, (size, sel.k, s.groups)


def test_synthetic_sets_are_real_text_seeded_and_grouped(pool):
    a = label_set("subtypes", 100, counts="zipf", _pool=pool)
    b = label_set("subtypes", 100, counts="zipf", _pool=pool)
    assert a.texts == b.texts and np.array_equal(a.counts, b.counts) and a.counts.max() > 3 * np.median(a.counts)
    assert label_set("subtypes", 100, counts="zipf", seed=1, _pool=pool).texts != a.texts
    # Labels sit closer to their own group than to the others: the truth is a real structure in the embeddings.
    assert weighted_silhouette(a.x, a.group, np.ones(len(a.x))) > 0.3
    with pytest.raises(ValueError, match="unknown family 'typos'"):
        label_set("typos", 10, _pool=pool)
    with pytest.raises(ValueError, match="unknown counts 'uniform'"):
        label_set("paraphrase", 10, counts="uniform", _pool=pool)


def test_large_sets_are_generated_around_real_variants(pool, monkeypatch):
    import auditoryhum.quality.synthetic as synthetic

    monkeypatch.setattr(synthetic, "TEXT_LIMIT", 50)  # the generated path, at a size a test can afford
    s = label_set("paraphrase", 400, counts="balanced", _pool=pool)
    assert s.texts is None and s.groups == 13 and len(s.x) == 400
    sel = select_k(s.x, s.counts)
    assert abs(sel.k - s.groups) <= 0.2 * s.groups


def test_the_papers_penalised_silhouette_is_still_selectable(pool):
    s = label_set("paraphrase", 30, counts="zipf", _pool=pool)
    u = len(s.x)
    sel = select_k(s.x, s.counts, k_max=12, criterion="linear")
    assert sel.form == "linear" and [p.k for p in sel.curve] == list(range(2, 13))
    for p in sel.curve:  # S_adj(k) = S(k) − 2·k/U on the duplicate-weighted silhouette
        assert p.adjusted == pytest.approx(p.silhouette - 2.0 * p.k / u)
    assert sel.k == max(sel.curve, key=lambda p: (p.adjusted, -p.k)).k
    assert weighted_silhouette(s.x, sel.labels, s.counts) == pytest.approx(
        next(p.silhouette for p in sel.curve if p.k == sel.k))
    # λ moves the paper's choice and nothing else: with λ = 0 it is the raw silhouette argmax.
    assert select_k(s.x, s.counts, k_max=12, criterion="linear", lam=0.0).k == sel.raw_best_k


def test_the_k_range_grows_with_the_label_count():
    assert auto_k_max(23) == 64 and auto_k_max(100_000) == 633
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8))
    sel = select_k(x, np.ones(400), k_max=300)
    ks = [p.k for p in sel.curve]
    assert ks[0] == 2 and ks[-1] >= 290 and len(ks) < 100  # a grid, not every k


def test_bad_settings_get_clear_errors(models):
    x = np.random.default_rng(0).normal(size=(10, 4))
    with pytest.raises(ValueError, match=r"unknown k criterion 'gap'; known: \['plateau', 'linear'\]"):
        select_k(x, np.ones(10), criterion="gap")
    with pytest.raises(ValueError, match="penalty λ=-1.0 must be a finite number ≥ 0"):
        select_k(x, np.ones(10), criterion="linear", lam=-1.0)
    with pytest.raises(ValueError, match="unknown k criterion 'aic'"):
        TaxonomyBuilder(models.embedder, criterion="aic")
    with pytest.raises(ValidationError, match="k_criterion"):
        Settings(k_criterion="elbow")
    assert Settings(k_criterion="linear").k_criterion == "linear" and Settings().k_criterion == "plateau"
    assert set(CRITERIA) == {"plateau", "linear"}


def test_the_label_silhouette_is_sklearns_over_unique_labels():
    from sklearn.metrics import silhouette_samples

    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 16))
    labels = rng.integers(0, 7, 300)
    value, stderr = label_silhouette(x, labels)
    s = silhouette_samples(x, labels, metric="cosine")
    assert value == pytest.approx(s.mean(), abs=1e-12) and stderr == pytest.approx(s.std() / np.sqrt(300))
