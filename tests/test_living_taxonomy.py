"""A living taxonomy: versions, lineage, clips assigned as they arrive (with a novel flag) and the rebuild policy,
on the YAMNet labels of real recordings (lincity-ng, simutrans)."""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy import func, select

from auditoryhum import topics
from auditoryhum.config import Settings
from auditoryhum.outputs import taxonomy_dict
from auditoryhum.pipeline import audio_loader
from auditoryhum.service import grpc_server
from auditoryhum.service.grpc_api import ClustererServicer
from auditoryhum.stages.clusterer import ClustererStage, LivingPolicy
from auditoryhum.stages.labeler import LabelerStage
from auditoryhum.store import Store, taxonomy_versions
from auditoryhum.taxonomy.builder import TaxonomyBuilder
from auditoryhum.taxonomy.index import label_vectors
from auditoryhum.taxonomy.lineage import first_version, link
from auditoryhum.v1 import pipeline_pb2 as pb
from auditoryhum.v1 import services_pb2 as api
from auditoryhum.v1 import services_pb2_grpc as api_grpc
from tests.conftest import LINCITY, SIMUTRANS

# A: machines and vehicles (lincity's traffic and industry, simutrans' vehicles); B: a town's other sounds (farms,
# parks, crowds, markets) and two emergency vehicles, plus traffic again.
A_FILES = [*sorted(LINCITY.glob("Trafic*.wav")), *sorted(LINCITY.glob("Industry*.wav")),
           *sorted(LINCITY.glob("Recycle*.wav")), *sorted(LINCITY.glob("Raze*.wav")),
           *sorted(LINCITY.glob("RailTrain*.wav")), *sorted(LINCITY.glob("MonumentConstruction*.wav")),
           *[SIMUTRANS / f"{n}.wav" for n in ("bus", "truck", "diesel", "planelow", "explosion", "jackhammer",
                                                 "tree-cutting", "buzzsaw")]]
B_FILES = [*sorted(LINCITY.glob("Farm*.wav")), *sorted(LINCITY.glob("Green*.wav")),
           *sorted(LINCITY.glob("OrganicFarm*.wav")), *sorted(LINCITY.glob("Parkland*.wav")),
           *sorted(LINCITY.glob("SportsCroud*.wav")), *sorted(LINCITY.glob("Market*.wav")),
           LINCITY / "Health4.wav", LINCITY / "University3.wav", *sorted(LINCITY.glob("TraficLow*.wav"))]
MACHINES = {"vehicle", "engine", "rail transport", "explosion", "chainsaw", "aircraft"}
TAXONOMY = "town"
NO_REBUILD = LivingPolicy(novel_share=None, after_clips=None)


@pytest.fixture(scope="module")
def labels(models) -> dict[str, str]:
    """Each recording's YAMNet label (its best), by file stem."""
    stage = LabelerStage(models.labeler, audio_loader(Settings()))
    paths = sorted(set(A_FILES + B_FILES))
    found = {}
    for outs in stage.handle_batch([pb.Clip(clip_id=p.stem, uri=str(p), dataset="x") for p in paths]):
        for out in outs:
            assert out.topic == topics.LABELS, out.message
            found[out.message.clip.clip_id] = out.message.labels[0]
    return found


def final(stem: str, label: str, dataset: str) -> pb.FinalLabel:
    return pb.FinalLabel(clip=pb.Clip(clip_id=stem, dataset=dataset, taxonomy=TAXONOMY), label=label)


def dataset_a(labels: dict[str, str]) -> list[pb.FinalLabel]:
    # Only A's clips whose label is a machine's: a taxonomy of one kind of sound.
    return [final(p.stem, labels[p.stem], "A") for p in A_FILES if labels[p.stem] in MACHINES]


def stage_with_v1(models, labels, store: Store,
                  policy: LivingPolicy = NO_REBUILD) -> tuple[ClustererStage, pb.Taxonomy]:
    stage = ClustererStage(TaxonomyBuilder(models.embedder, k_max=8), store, policy)
    a = dataset_a(labels)
    assert not [o for m in a for o in stage.handle(m)]  # collected, not assigned: no version yet
    [out] = stage.handle(pb.DatasetSealed(dataset="A", taxonomy=TAXONOMY, final_labels=len(a)))
    assert (out.topic, out.key) == (topics.TAXONOMY, TAXONOMY)
    return stage, out.message


def cluster_of(taxonomy: pb.Taxonomy, label: str) -> pb.TaxonomyCluster:
    return next(c for c in taxonomy.clusters if label in {lc.label for lc in c.labels})


def test_a_second_dataset_is_assigned_at_once_new_kinds_novel_then_rebuilt_with_lineage(models, labels, tmp_path):
    url = f"sqlite:///{tmp_path / 'clusterer.db'}"
    stage, v1 = stage_with_v1(models, labels, Store(url), LivingPolicy(novel_share=0.3, min_clips=20,
                                                                       after_clips=None))
    assert (v1.version, v1.trigger, list(v1.datasets)) == (1, "sealed A", ["A"])
    assert {c.born_version for c in v1.clusters} == {1} and v1.next_cluster_id == len(v1.clusters)
    assert 0.3 < v1.novelty_threshold < 0.7  # learnt from v1's own clusters (leave-one-out cosine)

    b = [final(p.stem, labels[p.stem], "B") for p in B_FILES]
    assignments, rebuilt = [], None
    for outs in stage.handle_batch(b):
        for out in outs:
            if out.topic == topics.ASSIGNMENTS:
                assert out.key == TAXONOMY
                assignments.append(out.message)
            else:
                assert out.topic == topics.TAXONOMY and rebuilt is None
                rebuilt = out.message
    assert len(assignments) == len(b)  # every clip of B at once, none held for a build
    by_clip = {a.clip.clip_id: a for a in assignments}
    for a in assignments:
        assert a.taxonomy == TAXONOMY and a.label == labels[a.clip.clip_id]
        if a.version == 1:
            cluster = next(c for c in v1.clusters if c.cluster_id == a.cluster_id)
            assert a.composite_label == cluster.composite_label
    # Traffic again (a label v1 holds) and the police car (a vehicle v1 has not heard) are not novel; the farm
    # animals, crowds and markets are.
    assert not any(by_clip[p.stem].novel for p in LINCITY.glob("TraficLow*.wav"))
    assert labels["Health4"] == "police car" and not by_clip["Health4"].novel
    assert by_clip["Health4"].cluster_id == cluster_of(v1, "vehicle").cluster_id
    other = [by_clip[p.stem] for p in B_FILES if labels[p.stem] in ("animal", "speech", "frog", "cattle", "duck")]
    assert len(other) >= 15 and all(a.novel for a in other if a.version == 1)

    # The novel share passed 0.3 after 20 clips: version 2, with every label so far and its lineage.
    assert rebuilt is not None and rebuilt.version == 2 and rebuilt.trigger.startswith("novel share ")
    assert list(rebuilt.datasets) == ["A", "B"] and rebuilt.lineage.previous_version == 1
    assert {a.version for a in assignments} == {1, 2}  # the clips after the rebuild went to version 2
    vehicles, vehicles2 = cluster_of(v1, "vehicle"), cluster_of(rebuilt, "vehicle")
    assert (vehicles2.cluster_id, vehicles2.composite_label, vehicles2.born_version) == \
        (vehicles.cluster_id, vehicles.composite_label, 1)  # the vehicles persist: same id, same name
    assert vehicles.cluster_id in {p.cluster_id for p in rebuilt.lineage.persisted}
    animals = cluster_of(rebuilt, "animal")
    assert animals.cluster_id in rebuilt.lineage.born and animals.cluster_id >= v1.next_cluster_id
    assert animals.born_version == 2
    ids_v2 = {c.cluster_id for c in rebuilt.clusters}
    assert set(rebuilt.lineage.born) == ids_v2 - {c.cluster_id for c in v1.clusters}
    assert set(rebuilt.lineage.retired) == {c.cluster_id for c in v1.clusters} - ids_v2
    document = taxonomy_dict(rebuilt)
    assert document["version"] == 2 and document["lineage"]["born"] == list(rebuilt.lineage.born)
    assert taxonomy_dict(v1)["lineage"] is None

    # Version 1 still answers; the versions survive a restart (a new stage on the same file).
    assert stage.taxonomy(TAXONOMY, 1) == v1 and stage.taxonomy(TAXONOMY) == rebuilt
    assert stage.taxonomy(TAXONOMY, 99) is None and stage.taxonomy("nowhere") is None
    stage.store.close()
    restarted = ClustererStage(TaxonomyBuilder(models.embedder, k_max=8), Store(url), NO_REBUILD)
    assert [v.version for v in restarted.versions(TAXONOMY)] == [1, 2]
    assert restarted.taxonomy(TAXONOMY, 1) == v1 and restarted.taxonomy(TAXONOMY) == rebuilt
    [late] = restarted.handle(final("late", "vehicle", "C"))
    assert (late.message.version, late.message.cluster_id, late.message.novel) == (2, vehicles.cluster_id, False)
    with restarted.store.transaction() as db:
        assert db.execute(select(func.count()).select_from(taxonomy_versions)).scalar() == 2
    restarted.store.close()


def test_the_policy_rebuilds_after_n_new_clips(models, labels):
    stage, v1 = stage_with_v1(models, labels, Store(), LivingPolicy(novel_share=None, after_clips=5))
    outs = [o for i in range(5) for o in stage.handle(final(f"t{i}", "vehicle", "C"))]
    assert [o.topic for o in outs] == [topics.ASSIGNMENTS] * 5 + [topics.TAXONOMY]
    assert (outs[-1].message.version, outs[-1].message.trigger) == (2, "5 new clips")
    assert not stage.handle(final("t5", "vehicle", "C"))[1:]  # counting starts afresh after a build


def test_the_count_trigger_waits_for_a_share_of_a_large_taxonomy():
    policy = LivingPolicy(novel_share=None, after_clips=1000, growth_share=0.1)
    assert policy.trigger(1000, 0, built=2_000) == "1000 new clips"  # news to a small taxonomy
    assert policy.trigger(1000, 0, built=100_000) is None  # 1 % of a large one is not
    assert policy.trigger(10_000, 0, built=100_000) == "10000 new clips"
    assert LivingPolicy(novel_share=None, after_clips=1000, growth_share=None).trigger(1000, 0, 100_000)


def taxonomy_of(clusters: dict[str, dict[str, int]], version: int) -> pb.Taxonomy:
    """A constructed version: one cluster per entry, numbered in order, each with its labels' clip counts."""
    taxonomy = pb.Taxonomy(dataset="t", version=version)
    for i, (name, counts) in enumerate(clusters.items()):
        labels = [pb.LabelCount(label=label, count=count) for label, count in counts.items()]
        taxonomy.clusters.append(pb.TaxonomyCluster(cluster_id=i, composite_label=name, size=sum(counts.values()),
                                                    labels=labels))
    return taxonomy


def test_lineage_of_a_constructed_rebuild_lists_born_retired_split_and_merged(models):
    old = taxonomy_of({"road and rail": {"car": 10, "truck": 10, "train": 5, "railway": 5},
                       "rain": {"rain": 8}, "dog": {"dog barking": 6}, "cat": {"cat meowing": 4},
                       "thunder": {"thunder": 3}}, 1)
    first_version(old)
    new = taxonomy_of({"cars": {"car": 12, "truck": 10}, "trains": {"train": 5, "railway": 6},
                       "rainfall": {"rain": 8, "drizzle": 2}, "pets": {"dog barking": 6, "cat meowing": 4},
                       "birds": {"bird song": 2}}, 2)
    link(old, new, label_vectors(models.embedder, [lc.label for t in (old, new) for c in t.clusters
                                                   for lc in c.labels]))
    got = {c.composite_label if c.born_version == 2 else cluster_of(old, c.labels[0].label).composite_label:
           (c.cluster_id, c.composite_label, c.born_version) for c in new.clusters}
    # Persisting clusters keep their id and name; the others get ids never used before (5, 6).
    assert got == {"road and rail": (0, "road and rail", 1), "trains": (5, "trains", 2), "rain": (1, "rain", 1),
                   "dog": (2, "dog", 1), "birds": (6, "birds", 2)}
    lineage = new.lineage
    assert (list(lineage.born), list(lineage.retired)) == ([5, 6], [3, 4])
    assert [(s.cluster_id, list(s.into)) for s in lineage.splits] == [(0, [0, 5])]
    assert [(list(m.sources), m.cluster_id) for m in lineage.merges] == [([2, 3], 2)]
    assert [p.cluster_id for p in lineage.persisted] == [0, 1, 2] and new.next_cluster_id == 7
    assert all(p.similarity >= 0.5 for p in lineage.persisted)


@pytest.fixture
def served(models, labels):
    stage, v1 = stage_with_v1(models, labels, Store())
    stage.build(TAXONOMY, trigger="on demand")  # version 2: the same labels, rebuilt

    def make_builder(k_min: int, k_max: int, lam: float, algorithm: str) -> TaxonomyBuilder:
        return TaxonomyBuilder(models.embedder, k_min=k_min, k_max=k_max, lam=lam, algorithm=algorithm)

    server, health, port = grpc_server.build_server([
        (api_grpc.add_ClustererServiceServicer_to_server, ClustererServicer(stage, models.embedder, make_builder)),
    ], port=0, max_message_mb=4, workers=2)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield api_grpc.ClustererServiceStub(channel), v1
    grpc_server.stop(server, health, grace_s=0).wait()


def error_of(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    return info.value


def test_the_api_answers_every_version_and_names_what_does_not_exist(served):
    client, v1 = served
    assert client.GetTaxonomy(api.GetTaxonomyRequest(dataset=TAXONOMY, version=1)).taxonomy == v1
    current = client.GetTaxonomy(api.GetTaxonomyRequest(dataset=TAXONOMY)).taxonomy
    assert (current.version, current.trigger, current.lineage.previous_version) == (2, "on demand", 1)
    assert {c.cluster_id for c in current.clusters} == {c.cluster_id for c in v1.clusters}  # same labels: all persist
    listed = client.ListTaxonomyVersions(api.ListTaxonomyVersionsRequest(dataset=TAXONOMY)).versions
    assert [(v.version, v.trigger, len(v.clusters)) for v in listed] == [(1, "sealed A", 0), (2, "on demand", 0)]

    answer = client.Classify(api.ClassifyRequest(dataset=TAXONOMY, version=1, labels=["vehicle", "police car",
                                                                                    "cattle"]))
    assert (answer.version, answer.novelty_threshold) == (1, pytest.approx(v1.novelty_threshold))
    assert [c.novel for c in answer.classifications] == [False, False, True]
    assert answer.classifications[1].cluster_id == cluster_of(v1, "vehicle").cluster_id

    built = client.BuildTaxonomy(api.BuildTaxonomyRequest(dataset=TAXONOMY, k_min=2, k_max=3)).taxonomy
    assert (built.version, built.trigger, built.k) == (3, "on demand", len(built.clusters))
    assert built.k <= 3

    missing = error_of(client.GetTaxonomy, api.GetTaxonomyRequest(dataset=TAXONOMY, version=99))
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert missing.details() == "taxonomy 'town' has no version 99; its versions: 1, 2, 3"
    missing = error_of(client.Classify, api.ClassifyRequest(dataset=TAXONOMY, version=99, labels=["car"]))
    assert missing.code() == grpc.StatusCode.NOT_FOUND and "no version 99" in missing.details()
    for call, request in ((client.GetTaxonomy, api.GetTaxonomyRequest(dataset="nowhere", version=1)),
                          (client.ListTaxonomyVersions, api.ListTaxonomyVersionsRequest(dataset="nowhere"))):
        unknown = error_of(call, request)
        assert unknown.code() == grpc.StatusCode.NOT_FOUND and "'nowhere' has no taxonomy" in unknown.details()
    negative = error_of(client.GetTaxonomy, api.GetTaxonomyRequest(dataset=TAXONOMY, version=-1))
    assert negative.code() == grpc.StatusCode.INVALID_ARGUMENT and "version is -1" in negative.details()
