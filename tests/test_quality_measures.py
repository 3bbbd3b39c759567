"""The label-quality measures on cases whose answers are known, and the evaluation set's truth file: what loads
and what is refused."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from auditoryhum.quality.measures import clustering_agreement, k_ratio, precision_at, swapped_label_auc
from auditoryhum.quality.truth import TruthError, load_truth


def pairwise_auc(scores: np.ndarray, true_index: list[int]) -> float:
    """The definition, one pair at a time: each clip's true score against each of its other scores."""
    wins = pairs = 0.0
    for row, t in zip(scores, true_index):
        for j, s in enumerate(row):
            if j != t:
                wins += 1.0 if row[t] > s else 0.5 if row[t] == s else 0.0
                pairs += 1
    return wins / pairs


def test_swapped_auc_is_one_for_a_perfect_scorer_zero_reversed_and_half_for_ties():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, size=40)
    noise = rng.uniform(0, 0.5, size=(40, 5))
    perfect = noise.copy()
    perfect[np.arange(40), truth] = 1.0
    assert swapped_label_auc(perfect, truth) == 1.0
    assert swapped_label_auc(-perfect, truth) == 0.0
    assert swapped_label_auc(np.full((40, 5), 0.3), truth) == 0.5
    # by hand: clip 0 wins 1 of 2; clip 1 wins one, ties one: (1 + 1.5) / 4
    assert swapped_label_auc(np.array([[0.5, 0.7, 0.3], [0.1, 0.3, 0.3]]), [0, 2]) == 0.625


def test_swapped_auc_agrees_with_the_pairwise_definition_on_random_scores():
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=(30, 6)), 1)  # rounded: plenty of ties
    truth = list(rng.integers(0, 6, size=30))
    assert swapped_label_auc(scores, truth) == pytest.approx(pairwise_auc(scores, truth))


@pytest.mark.parametrize("scores, truth, words", [
    (np.zeros((3, 1)), [0, 0, 0], "at least 2"),
    (np.zeros((3, 4)), [0, 1], "one true category per clip"),
    (np.zeros((2, 4)), [0, 4], "out of range"),
    (np.array([[0.1, np.nan], [0.2, 0.3]]), [0, 1], "finite"),
])
def test_swapped_auc_refuses_inconsistent_input(scores, truth, words):
    with pytest.raises(ValueError, match=words):
        swapped_label_auc(scores, truth)


def test_clustering_agreement_is_sklearns_nmi_and_ari():
    categories = ["rain"] * 4 + ["birds"] * 3 + ["traffic"] * 5
    renamed = [{"rain": 7, "birds": 2, "traffic": 0}[c] for c in categories]  # the same partition, other ids
    assert clustering_agreement(renamed, categories) == {"nmi": pytest.approx(1.0), "ari": pytest.approx(1.0)}
    merged = [0] * 7 + [1] * 5  # rain and birds in one cluster
    got = clustering_agreement(merged, categories)
    assert got["nmi"] == pytest.approx(normalized_mutual_info_score(categories, merged)) and got["nmi"] < 1
    assert got["ari"] == pytest.approx(adjusted_rand_score(categories, merged)) and got["ari"] < 1
    with pytest.raises(ValueError, match="3 cluster ids for 12 clips"):
        clustering_agreement([0, 1, 2], categories)


def test_k_ratio_against_the_true_count():
    assert k_ratio(3, 12) == 0.25 and k_ratio(12, 12) == 1.0 and 0.8 <= k_ratio(14, 12) <= 1.2
    with pytest.raises(ValueError):
        k_ratio(3, 0)


def test_precision_at_counts_the_truly_wrong_among_the_top_of_the_ranking():
    wrong = np.zeros(100, dtype=bool)
    wrong[[3, 17, 42, 60, 99]] = True  # 5 of 100 items
    first = [3, 17, 42, 60, 99] + [i for i in range(100) if not wrong[i]]
    assert precision_at(first, wrong) == {0.01: 1.0, 0.05: 1.0, 0.10: 0.5}
    assert precision_at(first[::-1], wrong) == {0.01: 0.0, 0.05: 0.0, 0.10: 0.0}
    interleaved = list(itertools.chain(*zip(first[:5], first[5:10]))) + first[10:]  # wrong, right, wrong, ...
    assert precision_at(interleaved, wrong, fractions=(0.02, 0.04, 0.10)) == {0.02: 0.5, 0.04: 0.5, 0.10: 0.5}
    # the top is at least one item: 1 % of 10 items is the first one
    assert precision_at([4, 0, 1, 2, 3, 5, 6, 7, 8, 9], [False] * 4 + [True] + [False] * 5) == \
        {0.01: 1.0, 0.05: 1.0, 0.10: 1.0}


@pytest.mark.parametrize("ranking, wrong, words", [
    ([0, 1, 1], [True, False, False], "each once"),
    ([0, 1], [True, False, False], "all 3 items"),
    ([], [], "no items"),
])
def test_precision_at_refuses_a_ranking_that_is_not_one(ranking, wrong, words):
    with pytest.raises(ValueError, match=words):
        precision_at(ranking, wrong)


# The truth file --------------------------------------------------------------------------------------------------

@pytest.fixture
def clips(tmp_path):
    for name in ("rain/a.wav", "rain/b.wav", "birds/c.wav", "birds/d.wav"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"RIFF")  # loading the truth checks files exist, not their audio
    return tmp_path


def write_truth(folder, text: str, encoding: str = "utf-8"):
    path = folder / "truth.csv"
    path.write_bytes(text.encode(encoding))
    return path


GOOD = ("path,category,description,source\n"
        "rain/a.wav,rain,rain falling,7kaa-data\nrain/b.wav,rain,rain falling,\n"
        "birds/c.wav,birds,birdsong,x\nbirds/d.wav,birds,birdsong,x\n")


def test_truth_loads_paths_categories_and_one_description_per_category(clips):
    truth = load_truth(write_truth(clips, "\ufeff" + GOOD))  # a spreadsheet's byte-order mark is fine
    assert truth.root == clips.resolve()
    assert truth.paths == tuple((clips / p).resolve() for p in ("rain/a.wav", "rain/b.wav", "birds/c.wav",
                                                                "birds/d.wav"))
    assert truth.categories == ("rain", "rain", "birds", "birds")
    assert truth.descriptions == {"rain": "rain falling", "birds": "birdsong"} and truth.names == ["rain", "birds"]


@pytest.mark.parametrize("text, words", [
    ("path,category\nrain/a.wav,rain\n", "missing column(s) description"),
    ("file,label,text\nrain/a.wav,rain,rain\n", "missing column(s) path, category, description"),
    (GOOD + "rain/zz.wav,rain,rain falling,\n", "truth.csv:6: 'rain/zz.wav' is not a file"),
    (GOOD + "../outside.wav,rain,rain falling,\n", "must be relative"),
    (GOOD.replace("birds/d.wav", "/etc/passwd"), "must be relative"),
    (GOOD.replace("birds/d.wav,birds,birdsong", "birds/d.wav,birds,song"), "'birds' is described as 'song' here"),
    (GOOD + "rain/a.wav,rain,rain falling,\n", "listed twice (line 2)"),
    (GOOD.replace("birds,birdsong", "birds,bird\x1b[31msong"), "control characters"),
    (GOOD.replace("birds/c.wav,birds,", "birds/c.wav,,"), "truth.csv:4: empty category"),
    (GOOD.replace("birds,birdsong", "birds," + "very " * 30), "longer than 100"),
    (GOOD.replace("birds,birdsong", "birds,rain falling"), "categories rain, birds share a description"),
    ("path,category,description\nrain/a.wav,rain,rain\nrain/b.wav,rain,rain\n", "at least 2 categories"),
    ("path,category,description\nrain/a.wav,rain\n", "3 columns expected"),
])
def test_truth_refuses_what_it_cannot_use_and_says_where(clips, text, words):
    with pytest.raises(TruthError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_truth(write_truth(clips, text))


def test_truth_refuses_a_missing_or_non_text_file(clips):
    with pytest.raises(TruthError, match="missing"):
        load_truth(clips / "nowhere.csv")
    with pytest.raises(TruthError, match="not UTF-8"):
        load_truth(write_truth(clips, GOOD.replace("birdsong", "chant d'oiseau é"), encoding="latin-1"))
