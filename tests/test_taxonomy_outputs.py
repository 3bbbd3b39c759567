"""Taxonomy products: the `cluster` command, report.html and its plots, classify, composite labels."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from auditoryhum.taxonomy.builder import TaxonomyBuilder, labels_in_several_clusters
from auditoryhum.taxonomy.index import TaxonomyIndex
from auditoryhum.taxonomy.naming import PROMPT, TransformersGenerator, cluster_prompt, frequent_labels_name
from tests.test_cli import auditoryhum

GROUPS = {
    "traffic": {"car engine": 20, "truck engine": 9, "passing cars": 5, "road traffic": 4},
    "birds": {"bird song": 15, "birds chirping": 8, "songbirds": 3, "bird calls": 2},
    "rain": {"heavy rain": 12, "rain falling": 6, "rainfall": 3, "light rain": 1},
}
HOSTILE = '<img src=x onerror=alert(1)>'


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, path
    return struct.unpack(">II", data[16:24])


def test_cluster_command_writes_taxonomy_and_report(tmp_path):
    table = tmp_path / "final_labels.csv"
    with table.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "label", "score", "ground_truth"])
        for group, counts in GROUPS.items():
            for label, count in counts.items():
                for i in range(count):
                    w.writerow([f"{label}{i}", label, 0.5 + 0.01 * (i % 40), group])
        w.writerow(["evil", HOSTILE, 0.1, "traffic"])
    result = auditoryhum("cluster", str(table), "--out", str(tmp_path / "out"), "--k-max", "6")
    assert result.returncode == 0, result.stderr
    taxonomy = json.loads((tmp_path / "out" / "taxonomy.json").read_text())
    assert taxonomy["k"] == 3 and taxonomy["lambda"] == 2.0 and len(taxonomy["curve"]) == 5
    assert {frozenset(l["label"] for l in c["labels"]) - {"img srcx"} for c in taxonomy["clusters"]} == \
        {frozenset(g) for g in GROUPS.values()}
    page = (tmp_path / "out" / "report.html").read_text()
    for png in ("selection_curve.png", "label_map.png", "score_histogram.png"):
        assert f'src="{png}"' in page
        width, height = png_size(tmp_path / "out" / png)
        assert width > 300 and height > 200
    assert "<img src=x" not in page  # table labels go through the paper's post-processing first
    assert "nmi" in page and "purity" in page


def test_report_escapes_hostile_labels(models, tmp_path):
    from auditoryhum.outputs import write_taxonomy

    counts = {**GROUPS["traffic"], HOSTILE: 2, "<script>alert(1)</script>": 3}
    taxonomy = TaxonomyBuilder(models.embedder, k_max=3).build("<b>ds</b>", counts)
    write_taxonomy(tmp_path, taxonomy, models.embedder)
    page = (tmp_path / "report.html").read_text()
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>ds" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;ds&lt;/b&gt;" in page


def test_classify_maps_new_labels_to_the_nearest_cluster(models):
    counts = {label: c for g in GROUPS.values() for label, c in g.items()}
    taxonomy = TaxonomyBuilder(models.embedder, k_max=6).build("d", counts)
    index = TaxonomyIndex(taxonomy, models.embedder)
    cluster_of = {lc.label: c.cluster_id for c in taxonomy.clusters for lc in c.labels}
    matches = index.classify(["bird song", "drizzle", "motorway traffic", "sparrows chirping"])
    assert [m.cluster_id for m in matches] == [cluster_of["bird song"], cluster_of["heavy rain"],
                                               cluster_of["car engine"], cluster_of["bird song"]]
    assert all(-1 <= m.similarity <= 1 for m in matches) and matches[0].similarity > 0.5


def test_paper_prompt_and_deterministic_offline_names():
    counts = {"rain falling": 6, "heavy rain": 12, "rainfall": 6}
    assert cluster_prompt(counts) == "\n".join(
        [PROMPT, "heavy rain, 12", "rain falling, 6", "rainfall, 6", "Total samples: 24"])
    assert PROMPT.startswith("Provide a short sentence to describe this set of audio samples.")
    assert frequent_labels_name(counts) == "heavy rain / rain falling" == frequent_labels_name(dict(reversed(counts.items())))


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory) -> Path:
    """A random-weight GPT-2 with a word-level tokenizer trained here: the real generation path, no hub."""
    import torch
    from tokenizers import Tokenizer, models as tk_models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = " ".join([PROMPT, "Total samples:", *[l for g in GROUPS.values() for l in g], "traffic birds rain"])
    tok = Tokenizer(tk_models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([words] * 3, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[EOS]"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]", pad_token="[EOS]")
    config = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=512, n_embd=32, n_layer=1, n_head=2,
                        eos_token_id=1, bos_token_id=1)
    path = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)  # random weights, but the same ones every run
    model = GPT2LMHeadModel(config)
    model.generation_config.suppress_tokens = [0, 1]  # random weights favour [UNK]/[EOS]: make it say words
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_llm_names_the_clusters_when_configured(models, tiny_llm):
    generator = TransformersGenerator(str(tiny_llm), max_new_tokens=8)
    counts = {label: c for g in GROUPS.values() for label, c in g.items()}
    taxonomy = TaxonomyBuilder(models.embedder, k_max=6, namer=generator).build("d", counts)
    prompts = [cluster_prompt({lc.label: lc.count for lc in c.labels}) for c in taxonomy.clusters]
    answers = generator.generate(prompts)
    assert all(a.strip() for a in answers), "greedy decoding of the tiny model yields words"
    assert [c.composite_label for c in taxonomy.clusters] == [" ".join(a.split()) for a in answers]
    assert [c.composite_label for c in taxonomy.clusters] != [frequent_labels_name({lc.label: lc.count for lc in c.labels})
                                                               for c in taxonomy.clusters]


def test_class_vectors_cluster_clips_and_report_labels_split_across_clusters(models):
    """Clips with the same label but different audio may land in different clusters."""
    rng = np.random.default_rng(0)
    groups = {"traffic": ["car engine", "road traffic"], "birds": ["bird song", "birds chirping"],
              "rain": ["heavy rain", "rain falling"]}
    centres = {g: models.embedder.embed([" ".join(labels)])[0] for g, labels in groups.items()}
    clip_ids, labels, audio = [], [], []
    for g, members in groups.items():
        for i in range(20):
            clip_ids.append(f"{g}{i}")
            # Two bird clips actually sound like rain: their labels are wrong, their audio is not.
            sound = "rain" if g == "birds" and i < 2 else g
            labels.append(members[i % 2])
            audio.append(centres[sound] + rng.normal(0, 0.02, len(centres[g])))
    builder = TaxonomyBuilder(models.embedder, k_max=8, representation="class-vector")
    taxonomy = builder.build_class_vectors("d", clip_ids, labels, np.stack(audio))
    assert taxonomy.representation == "class-vector" and taxonomy.k == 3 and taxonomy.clips == 60
    cluster = {cc.clip_id: cc.cluster_id for cc in taxonomy.clip_clusters}
    assert len(cluster) == 60 and cluster["birds0"] == cluster["rain5"] != cluster["birds5"]
    split = sorted({cluster["birds0"], cluster["birds5"]})
    assert labels_in_several_clusters(taxonomy) == {"bird song": split, "birds chirping": split}
    sizes = {c.cluster_id: c.size for c in taxonomy.clusters}
    assert sorted(sizes.values()) == [18, 20, 22]
