"""Broad scenes over fine clusters: families of labels come back as scenes, named by the clusters' naming, browsable
in report.html and carried in taxonomy.json."""

from __future__ import annotations

import json
import math
from collections import Counter
from html.parser import HTMLParser

import numpy as np
import pytest

from auditoryhum.outputs import taxonomy_dict, write_taxonomy
from auditoryhum.taxonomy.builder import TaxonomyBuilder
from auditoryhum.taxonomy.hierarchy import MAX_SCENE_LABELS
from auditoryhum.taxonomy.naming import clean_name, cluster_prompt, frequent_labels_name, ranked
from auditoryhum.v1 import pipeline_pb2 as pb

# Three families, each of four sub-types a fine taxonomy keeps apart.
FAMILIES = {
    "vehicle": [["car engine", "car engine running", "engine idling"], ["truck", "diesel truck", "lorry driving"],
                ["train passing", "railway train", "train horn"], ["jet plane", "airplane flying", "aircraft overhead"]],
    "bird": [["bird song", "songbird singing", "birds chirping"], ["crow cawing", "crows calling", "raven croak"],
             ["owl hooting", "owl call", "night owl"], ["seagull crying", "gulls calling", "seagulls"]],
    "speech": [["man speaking", "male speech", "man talking"], ["woman speaking", "female voice", "woman talking"],
               ["child speaking", "kids talking", "children voices"], ["crowd chatter", "people talking", "conversation"]],
}
FAMILY = {label: family for family, groups in FAMILIES.items() for group in groups for label in group}
COUNTS = {label: 3 + (i * 7 + j * 3) % 11 for groups in FAMILIES.values() for i, group in enumerate(groups)
          for j, label in enumerate(group)}
HOSTILE = {"<script>alert(1)</script>": 2, '"><img src=x onerror=alert(2)>': 1}


def merged(taxonomy, scene) -> Counter:
    by_id = {c.cluster_id: c for c in taxonomy.clusters}
    return sum((Counter({lc.label: lc.count for lc in by_id[i].labels}) for i in scene.cluster_ids), Counter())


@pytest.fixture(scope="module")
def taxonomy(models):
    return TaxonomyBuilder(models.embedder, k_min=8, k_max=14).build("families", COUNTS)


@pytest.mark.parametrize("options", [{}, {"algorithm": "ward"}, {"protocol": "reference"}],
                         ids=["kmeans", "ward", "reference"])
def test_scenes_recover_the_label_families(models, taxonomy, options):
    built = taxonomy if not options else TaxonomyBuilder(models.embedder, k_min=8, k_max=14, **options).build(
        "families", COUNTS)
    assert built.k >= 8 and not built.scenes_note
    families = [{FAMILY[lc.label] for i in s.cluster_ids for lc in built.clusters[i].labels} for s in built.scenes]
    assert sorted(map(sorted, families)) == [["bird"], ["speech"], ["vehicle"]]
    assert [p.k for p in built.scene_curve] == list(range(2, math.ceil(math.sqrt(built.k)) + 1))
    assert built.scene_silhouette == next(p.silhouette for p in built.scene_curve if p.k == 3)


def test_every_cluster_is_in_one_scene_and_the_sizes_add_up(taxonomy):
    ids = [i for s in taxonomy.scenes for i in s.cluster_ids]
    assert sorted(ids) == [c.cluster_id for c in taxonomy.clusters]
    for s in taxonomy.scenes:
        assert all(taxonomy.clusters[i].scene_id == s.scene_id for i in s.cluster_ids)
        assert s.size == sum(taxonomy.clusters[i].size for i in s.cluster_ids)
        assert [(lc.label, lc.count) for lc in s.labels] == ranked(merged(taxonomy, s))[:MAX_SCENE_LABELS]
        assert s.composite_label == frequent_labels_name(merged(taxonomy, s), 3)  # the offline namer
    assert sum(s.size for s in taxonomy.scenes) == taxonomy.clips == sum(COUNTS.values())
    assert [s.size for s in taxonomy.scenes] == sorted((s.size for s in taxonomy.scenes), reverse=True)
    assert [s.scene_id for s in taxonomy.scenes] == list(range(len(taxonomy.scenes)))


class Recorder:
    """A text generator that answers each prompt with a numbered name (the namer's interface, no model)."""
    model_id = "recorder"

    def __init__(self):
        self.prompts: list[str] = []

    def generate(self, prompts):
        self.prompts += prompts
        return [f"  name {len(self.prompts) - len(prompts) + i}\nsecond line" for i in range(len(prompts))]


def test_a_configured_namer_names_scenes_with_the_composite_label_prompt(models):
    namer = Recorder()
    built = TaxonomyBuilder(models.embedder, k_min=8, k_max=14, namer=namer).build("families", COUNTS)
    scene_prompts = namer.prompts[len(built.clusters):]
    assert sorted(scene_prompts) == sorted(cluster_prompt(merged(built, s)) for s in built.scenes)
    names = dict(zip(namer.prompts, ("name " + str(i) for i in range(len(namer.prompts)))))
    assert [s.composite_label for s in built.scenes] == [names[cluster_prompt(merged(built, s))] for s in built.scenes]
    assert clean_name(namer.generate(["x"])[0]) == f"name {len(namer.prompts) - 1}"


def test_clip_clusters_of_class_vectors_get_scenes_too(models):
    rng = np.random.default_rng(0)
    groups = [(family, group) for family, gs in FAMILIES.items() for group in gs]
    centres = models.embedder.embed([" ".join(g) for _, g in groups])
    clip_ids, labels, audio, family_of = [], [], [], {}
    for (family, group), centre in zip(groups, centres):
        for i in range(6):
            clip_ids.append(f"{group[0]}{i}")
            family_of[clip_ids[-1]] = family
            labels.append(group[i % 3])
            audio.append(centre + rng.normal(0, 0.01, len(centre)))
    built = TaxonomyBuilder(models.embedder, k_min=8, k_max=14, representation="class-vector").build_class_vectors(
        "clips", clip_ids, labels, np.stack(audio))
    scene_of = {c.cluster_id: c.scene_id for c in built.clusters}
    families = {}
    for cc in built.clip_clusters:
        families.setdefault(scene_of[cc.cluster_id], set()).add(family_of[cc.clip_id])
    assert built.k >= 8 and sorted(map(sorted, families.values())) == [["bird"], ["speech"], ["vehicle"]]
    assert sum(s.size for s in built.scenes) == len(clip_ids)


def test_three_clusters_make_no_scenes_and_say_why(models, tmp_path):
    counts = {label: n for label, n in COUNTS.items() if FAMILY[label] != "speech" or label.startswith("man ")}
    built = TaxonomyBuilder(models.embedder, k_min=3, k_max=3).build("small", counts)
    assert built.k == 3 and not built.scenes and not built.scene_curve
    assert built.scenes_note == "3 clusters: broad scenes need at least 4"
    doc = taxonomy_dict(built)
    assert doc["scenes"] == [] and doc["scene_silhouette"] is None and {c["scene_id"] for c in doc["clusters"]} == {None}
    write_taxonomy(tmp_path, built, models.embedder)
    page = (tmp_path / "report.html").read_text()
    assert "No broad scenes: 3 clusters: broad scenes need at least 4." in page and "<details" not in page


class Hierarchy(HTMLParser):
    """Reads the scene browser back: scene summary → its clusters' summaries → their label items."""

    def __init__(self):
        super().__init__()
        self.scenes: list[dict] = []
        self._stack: list[str] = []  # classes of the open <details>
        self._text: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "details":
            self._stack.append(attrs.get("class", ""))
            if attrs.get("class") == "scene":
                self.scenes.append({"id": attrs["id"], "summary": "", "clusters": []})
            elif attrs.get("class") == "cluster":
                assert self._stack[-2:-1] == ["scene"], "a cluster opens inside its scene"
                self.scenes[-1]["clusters"].append({"id": attrs["id"], "summary": "", "labels": []})
        elif tag in ("summary", "li"):
            self._text = []

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "details":
            self._stack.pop()
        elif tag in ("summary", "li") and self._text is not None:
            text, self._text = "".join(self._text), None
            target = self.scenes[-1]["clusters"][-1] if self._stack[-1] == "cluster" else self.scenes[-1]
            if tag == "summary":
                target["summary"] = text
            else:
                target["labels"].append(text)


def test_report_browses_scenes_to_clusters_to_labels_and_escapes_labels(models, tmp_path):
    counts = {**COUNTS, **HOSTILE}
    built = TaxonomyBuilder(models.embedder, k_min=8, k_max=14).build("<b>families</b>", counts)
    assert built.scenes
    write_taxonomy(tmp_path, built, models.embedder)
    page = (tmp_path / "report.html").read_text()
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>families" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    parser = Hierarchy()
    parser.feed(page)
    by_id = {c.cluster_id: c for c in built.clusters}
    assert [s["id"] for s in parser.scenes] == [f"scene-{s.scene_id}" for s in built.scenes]
    for shown, scene in zip(parser.scenes, built.scenes):
        assert shown["summary"] == (f"Scene {scene.scene_id}: {scene.composite_label}, {scene.size} clips in "
                                    f"{len(scene.cluster_ids)} clusters")
        assert [c["id"] for c in shown["clusters"]] == [f"cluster-{i}" for i in scene.cluster_ids]
        for c in shown["clusters"]:
            cluster = by_id[int(c["id"].split("-")[1])]
            assert c["summary"] == f"Cluster {cluster.cluster_id}: {cluster.composite_label}, {cluster.size} clips"
            assert c["labels"] == [f"{lc.label} ({lc.count})" for lc in cluster.labels[:12]]
    shown_labels = {label for s in parser.scenes for c in s["clusters"] for label in c["labels"]}
    assert {f"{label} ({n})" for label, n in HOSTILE.items()} <= shown_labels  # shown as text, intact
    doc = json.loads((tmp_path / "taxonomy.json").read_text())
    assert [(s["id"], s["cluster_ids"], s["size"]) for s in doc["scenes"]] == [
        (s.scene_id, list(s.cluster_ids), s.size) for s in built.scenes]
    assert all(c["scene_id"] == by_id[c["id"]].scene_id for c in doc["clusters"])
    assert doc["scene_silhouette"] == built.scene_silhouette and len(doc["scene_curve"]) == len(built.scene_curve)


def test_a_rebuild_renumbers_the_scenes_with_their_clusters(models, taxonomy):
    """The lineage gives persisting clusters their old ids and new ones fresh ids: scenes follow."""
    from auditoryhum.taxonomy.lineage import first_version, link

    old = pb.Taxonomy()
    old.CopyFrom(taxonomy)
    old.version = 1
    first_version(old)
    old.next_cluster_id = 100  # fresh ids start far from the builder's 0..k-1, so a stale id shows
    grown = {**COUNTS, "tram bell": 9, "tram passing": 6}
    new = TaxonomyBuilder(models.embedder, k_min=8, k_max=14).build("families", grown)
    new.version = 2
    before = {s.scene_id: sorted(tuple(sorted(lc.label for lc in new.clusters[i].labels)) for i in s.cluster_ids)
              for s in new.scenes}
    link(old, new, dict(zip(grown, models.embedder.embed(list(grown)))))
    by_id = {c.cluster_id: c for c in new.clusters}
    assert any(i >= 100 for i in by_id) and sorted(i for s in new.scenes for i in s.cluster_ids) == sorted(by_id)
    assert {s.scene_id: sorted(tuple(sorted(lc.label for lc in by_id[i].labels)) for i in s.cluster_ids)
            for s in new.scenes} == before
    assert all(by_id[i].scene_id == s.scene_id for s in new.scenes for i in s.cluster_ids)


def test_the_harness_measures_scenes_against_the_audioset_top_level(tmp_path):
    """Two scenes over four categories: speech+crowd (Human sounds) and traffic+train (Sounds of things), one
    train clip astray (labelled like speech)."""
    from auditoryhum.quality.scenes import scene_row
    from auditoryhum.quality.truth import Truth

    clips = [("speech", 0, 0)] * 3 + [("crowd", 1, 0)] * 3 + [("traffic", 2, 1)] * 3 + [("train", 3, 1)] * 2 + [
        ("train", 0, 0), ("harbour", 2, 1)]
    paths = [tmp_path / f"{c}{i}.wav" for i, (c, _, _) in enumerate(clips)]
    with (tmp_path / "assignments.csv").open("w") as f:
        f.write("clip_id,path,label,cluster_id,composite_label,scene_id,scene_label\n")
        f.writelines(f"c{i},{p},l,{k},n,{s},s\n" for i, (p, (_, k, s)) in enumerate(zip(paths, clips)))
    (tmp_path / "taxonomy.json").write_text(json.dumps({"k": 4, "scenes": [{"id": 0}, {"id": 1}]}))
    truth = Truth(tmp_path, tuple(paths), tuple(c for c, _, _ in clips), {c: c for c, _, _ in clips})
    row = scene_row(tmp_path, truth)
    assert (row["scenes"], row["k"], row["clips"]) == (2, 4, 13)
    assert row["purity_top"] == pytest.approx(11 / 12)  # harbour left out; one train clip in the human scene
    assert row["category_whole"] == pytest.approx((1 + 1 + 1 + 2 / 3 + 1) / 5)
    assert row["scene_categories"] == {"0": {"speech": 3, "crowd": 3, "train": 1}, "1": {"traffic": 3, "train": 2,
                                                                                          "harbour": 1}}
    assert 0 < row["nmi_top"] < 1 and row["nmi_top_fine"] < 1 and 0 <= row["nmi_top_random"] < row["nmi_top"]
