"""`auditoryhum ingest --on-kubernetes`, sharded ingestion and `auditoryhum status`, against a real kube-apiserver
(tests/kube_apiserver.py) and the real Kafka broker.

Only the API server runs, no controllers: the Job is stored and validated but starts no pods. The tests run each
pod's command themselves, exactly as the Job stored it, with its completion index filled in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from kubernetes import client, config

from auditoryhum import ingest, manifest, topics
from auditoryhum.bus.codec import CodecError
from auditoryhum.bus.kafka import KafkaBus, read_topics
from auditoryhum.v1 import pipeline_pb2 as pb
from tests.conftest import LINCITY

IMAGE = "registry.example/auditoryhum:0.1.0"


def auditoryhum(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("auditoryhum")
    env = {**os.environ, "COLUMNS": "400"}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def api(kube_apiserver) -> client.ApiClient:
    return config.new_client_from_config(str(kube_apiserver.kubeconfig), persist_config=False)


@pytest.fixture
def namespace(api) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    return name


@pytest.fixture
def dataset_folder(tmp_path) -> Path:
    folder = tmp_path / "city"
    for path in sorted(LINCITY.glob("*.wav"))[:10]:
        (folder / path.stem[:4].lower()).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.stem[:4].lower() / path.name)
    return folder


def on_topic(bootstrap: str, topic: str, dataset: str) -> list:
    """The dataset's messages; the session's broker is shared, and other tests put foreign records on it."""
    messages = []
    for record in read_topics(bootstrap, [topic]):
        try:
            messages.append(record.message())
        except CodecError:
            continue
    return [m for m in messages if m.dataset == dataset]


def test_the_indexed_job_is_stored_as_built_and_its_pods_publish_every_clip_once(kafka, kube_apiserver, api,
                                                                                    namespace, dataset_folder):
    source, dataset = dataset_folder.as_uri(), f"city-{uuid.uuid4().hex[:6]}"  # a file:// prefix
    submitted = auditoryhum("ingest", source, "--on-kubernetes", "--parallelism", "2", "--shard-count", "3",
                            "--image", IMAGE, "--namespace", namespace, "--kubeconfig", str(kube_apiserver.kubeconfig),
                            "--bootstrap", kafka.bootstrap, "--dataset", dataset, "--env-from-secret", "store-keys")
    assert submitted.returncode == 0, submitted.stderr
    result = json.loads(submitted.stdout)
    assert (result["clips"], result["shards"], result["namespace"]) == (10, 3, namespace)

    job = api.sanitize_for_serialization(client.BatchV1Api(api).read_namespaced_job(result["job"], namespace))
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 2)
    assert (spec["backoffLimitPerIndex"], spec["ttlSecondsAfterFinished"]) == (3, 86400)
    assert job["metadata"]["labels"]["app.kubernetes.io/part-of"] == "auditoryhum"
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "ingest"
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                      "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
    [container] = pod["containers"]
    assert container["image"] == IMAGE and container["command"] == ["auditoryhum"]
    assert container["args"] == ["ingest", source, "--shard-index", "$(JOB_COMPLETION_INDEX)", "--shard-count", "3",
                                 "--no-announce", "--expect-clips", "10", "--dataset", dataset,
                                 "--bootstrap", kafka.bootstrap, "--partitions", "4"]
    env = {e["name"]: e for e in container["env"]}
    assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert container["envFrom"] == [{"secretRef": {"name": "store-keys"}}]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "512Mi"}}
    assert not (job.get("status") or {}).get("active")  # no controllers: the Job never starts a pod
    [listed] = json.loads(status(kube_apiserver, namespace, "--json").stdout)["jobs"]
    assert (listed["name"], listed["dataset"], listed["completions"], listed["succeeded"]) == \
        (result["job"], dataset, 3, 0)

    # The submitter announced the whole dataset once and published no clip itself.
    [announcement] = on_topic(kafka.bootstrap, topics.DATASETS, dataset)
    assert announcement.expected_clips == 10
    assert on_topic(kafka.bootstrap, topics.CLIPS, dataset) == []

    # Each pod's command, as stored, with its completion index.
    published = []
    for index in range(spec["completions"]):
        pod_args = [a.replace("$(JOB_COMPLETION_INDEX)", str(index)) for a in container["args"]]
        done = auditoryhum(*pod_args)
        assert done.returncode == 0, done.stderr
        published.append(json.loads(done.stdout)["published"])
    assert published == [4, 3, 3]

    clips = on_topic(kafka.bootstrap, topics.CLIPS, dataset)
    entries = manifest.load(source).entries
    assert sorted(c.clip_id for c in clips) == sorted(ingest.clip_id(dataset, e.key) for e in entries)
    assert len({c.clip_id for c in clips}) == 10  # every clip exactly once
    assert {c.uri for c in clips} == {e.uri for e in entries} and all(c.uri.startswith("file://") for c in clips)
    assert all(c.duration_s > 0 for c in clips)  # headers read through fsspec
    assert len(on_topic(kafka.bootstrap, topics.DATASETS, dataset)) == 1


def test_a_shared_volume_account_and_resources_reach_the_stored_job(kafka, kube_apiserver, api, namespace,
                                                                      dataset_folder):
    submitted = auditoryhum("ingest", str(dataset_folder), "--on-kubernetes", "--parallelism", "4", "--image", IMAGE,
                            "--namespace", namespace, "--kubeconfig", str(kube_apiserver.kubeconfig),
                            "--bootstrap", kafka.bootstrap, "--kafka-bootstrap", "kafka.audio:9092",
                            "--dataset", "My City Sounds", "--class-from-folder", "--volume-claim", "datasets",
                            "--mount-path", str(dataset_folder.parent), "--service-account", "ingester",
                            "--cpu", "2", "--memory", "1Gi", "--backoff-limit-per-index", "1", "--ttl", "600")
    assert submitted.returncode == 0, submitted.stderr
    name = json.loads(submitted.stdout)["job"]
    job = api.sanitize_for_serialization(client.BatchV1Api(api).read_namespaced_job(name, namespace))
    assert name.startswith("auditoryhum-ingest-my-city-sounds-")
    assert job["metadata"]["labels"]["auditoryhum.dev/dataset"] == "my-city-sounds"
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert (spec["completions"], spec["parallelism"], spec["backoffLimitPerIndex"], spec["ttlSecondsAfterFinished"]) \
        == (4, 4, 1, 600)
    [container] = pod["containers"]
    assert container["args"][-5:] == ["--bootstrap", "kafka.audio:9092", "--partitions", "4", "--class-from-folder"]
    assert pod["serviceAccountName"] == "ingester"
    assert {"name": "data", "mountPath": str(dataset_folder.parent), "readOnly": True} in container["volumeMounts"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}} in pod["volumes"]
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}


def test_a_shard_that_lists_another_count_than_announced_publishes_nothing(kafka, dataset_folder):
    dataset = f"changed-{uuid.uuid4().hex[:6]}"
    done = auditoryhum("ingest", str(dataset_folder), "--shard-index", "0", "--shard-count", "2", "--no-announce",
                       "--expect-clips", "11", "--dataset", dataset, "--bootstrap", kafka.bootstrap)
    assert done.returncode == 1 and "lists 10 clips, but 11 were announced" in done.stderr
    assert on_topic(kafka.bootstrap, topics.CLIPS, dataset) == []


def test_bad_kubernetes_settings_are_clear_errors(kafka, kube_apiserver, tmp_path, dataset_folder):
    no_image = auditoryhum("ingest", str(dataset_folder), "--on-kubernetes")
    assert no_image.returncode == 2 and "--image" in no_image.stderr
    missing = auditoryhum("status", "--kubeconfig", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "no usable Kubernetes configuration" in missing.stderr
    closed = tmp_path / "closed"
    closed.write_text(kube_apiserver.kubeconfig.read_text().replace(kube_apiserver.url, "https://127.0.0.1:1"))
    unreachable = auditoryhum("status", "--kubeconfig", str(closed))
    assert unreachable.returncode == 1 and "cannot reach the API server" in unreachable.stderr
    dataset = f"refused-{uuid.uuid4().hex[:6]}"
    refused = auditoryhum("ingest", str(dataset_folder), "--on-kubernetes", "--image", IMAGE, "--namespace",
                          "no-such-namespace", "--kubeconfig", str(kube_apiserver.kubeconfig),
                          "--bootstrap", kafka.bootstrap, "--dataset", dataset)
    assert refused.returncode == 1 and "404" in refused.stderr and "no-such-namespace" in refused.stderr
    assert on_topic(kafka.bootstrap, topics.DATASETS, dataset) == []  # refused before anything was announced


# -- status -------------------------------------------------------------------------------------------------------

SCALED_OBJECT_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "scaledobjects.keda.sh"},
    "spec": {"group": "keda.sh", "scope": "Namespaced",
             "names": {"kind": "ScaledObject", "plural": "scaledobjects", "singular": "scaledobject",
                       "listKind": "ScaledObjectList", "shortNames": ["so"]},
             "versions": [{"name": "v1alpha1", "served": True, "storage": True, "subresources": {"status": {}},
                           "schema": {"openAPIV3Schema": {"type": "object",
                                                          "x-kubernetes-preserve-unknown-fields": True}}}]},
}


def deployment(name: str, component: str | None, replicas: int) -> dict:
    labels = {"app.kubernetes.io/name": "auditoryhum", "app.kubernetes.io/instance": "rel"}
    if component:  # the chart's labels; a Deployment without them is not part of the release
        labels |= {"app.kubernetes.io/component": component, "app.kubernetes.io/part-of": "auditoryhum"}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app.kubernetes.io/instance": name}},
                     "template": {"metadata": {"labels": {"app.kubernetes.io/instance": name}},
                                  "spec": {"containers": [{"name": "main", "image": IMAGE}]}}}}


def establish(api: client.ApiClient, crd: dict, timeout_s: float = 60.0) -> None:
    """Create the CRD and wait until the API server serves it."""
    extensions = client.ApiextensionsV1Api(api)
    extensions.create_custom_resource_definition(crd)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = extensions.read_custom_resource_definition(crd["metadata"]["name"]).status
        if any(c.type == "Established" and c.status == "True" for c in status.conditions or ()):
            return
        time.sleep(0.2)
    raise AssertionError(f"{crd['metadata']['name']} not established after {timeout_s:g} s")


def expected_lag(bootstrap: str, group: str, group_topics: tuple[str, ...]) -> int:
    """The group's lag through the consumer API (committed, beginning and end offsets), without joining it."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, p) for t in group_topics for p in consumer.partitions_for_topic(t) or ()]
        ends, starts = consumer.end_offsets(tps), consumer.beginning_offsets(tps)
        committed = {tp: consumer.committed(tp) for tp in tps}
        return sum(ends[tp] - (starts[tp] if committed[tp] is None else committed[tp]) for tp in tps)
    finally:
        consumer.close(autocommit=False)


def status(kube_apiserver, namespace: str, *args: str) -> subprocess.CompletedProcess:
    done = auditoryhum("status", "--namespace", namespace, "--kubeconfig", str(kube_apiserver.kubeconfig), *args)
    assert done.returncode == 0, done.stderr
    return done


def test_status_reports_deployments_autoscalers_jobs_and_lag(kafka, kube_apiserver, api, namespace):
    apps = client.AppsV1Api(api)
    for component, replicas in (("labeler", 2), ("aligner", 1), ("review", 1), ("clusterer", 1)):
        apps.create_namespaced_deployment(namespace, deployment(f"rel-auditoryhum-{component}", component, replicas))
    apps.create_namespaced_deployment(namespace, deployment("unrelated", None, 1))
    client.AutoscalingV2Api(api).create_namespaced_horizontal_pod_autoscaler(namespace, {
        "metadata": {"name": "rel-auditoryhum-aligner"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "rel-auditoryhum-aligner"},
                 "minReplicas": 1, "maxReplicas": 3,
                 "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                     "type": "Utilization", "averageUtilization": 70}}}]}})

    before_keda = json.loads(status(kube_apiserver, namespace, "--json").stdout)
    assert before_keda["scaledobjects"] == "not installed"
    assert before_keda["lag"] is None  # no --bootstrap: Kafka is not asked

    establish(api, SCALED_OBJECT_CRD)
    client.CustomObjectsApi(api).create_namespaced_custom_object("keda.sh", "v1alpha1", namespace, "scaledobjects", {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "rel-auditoryhum-labeler"},
        "spec": {"scaleTargetRef": {"name": "rel-auditoryhum-labeler"}, "minReplicaCount": 1, "maxReplicaCount": 4,
                 "triggers": [{"type": "kafka", "metadata": {
                     "bootstrapServers": "kafka:9092", "consumerGroup": "auditoryhum-labeler",
                     "topic": topics.CLIPS, "lagThreshold": "50"}}]}})
    bus = KafkaBus(kafka.bootstrap, client_id="test-status")
    for n in range(5):  # lag the labeler must see on top of whatever the topic held
        bus.publish(topics.CLIPS, f"status-{n}", pb.Clip(clip_id=f"status-{n}", dataset="status"))
    bus.flush()
    bus.close()

    report = json.loads(status(kube_apiserver, namespace, "--json", "--bootstrap", kafka.bootstrap).stdout)
    assert {d["name"]: (d["component"], d["desired"], d["ready"]) for d in report["deployments"]} == {
        "rel-auditoryhum-labeler": ("labeler", 2, 0), "rel-auditoryhum-aligner": ("aligner", 1, 0),
        "rel-auditoryhum-review": ("review", 1, 0), "rel-auditoryhum-clusterer": ("clusterer", 1, 0)}
    assert report["scaledobjects"] == [{
        "name": "rel-auditoryhum-labeler", "target": "rel-auditoryhum-labeler", "min": 1, "max": 4, "ready": None,
        "active": None, "triggers": [{"type": "kafka", "consumerGroup": "auditoryhum-labeler", "topic": topics.CLIPS,
                                      "lagThreshold": "50"}]}]
    assert report["hpas"] == [{"name": "rel-auditoryhum-aligner", "target": "rel-auditoryhum-aligner", "min": 1,
                               "max": 3, "current": None, "desired": 0,  # no controller has filled these in
                               "metrics": ["Resource/cpu"]}]
    assert report["jobs"] == []
    groups = {f"auditoryhum-{s}": t for s, t in topics.CONSUMES.items()}
    assert report["lag"] == {g: expected_lag(kafka.bootstrap, g, t) for g, t in groups.items()}
    assert report["lag"]["auditoryhum-labeler"] >= 5 and report["lag_error"] is None

    table = status(kube_apiserver, namespace, "--bootstrap", kafka.bootstrap).stdout
    assert "KEDA 1–4, lag threshold 50" in table and "HPA 1–3 on Resource/cpu" in table
    assert "rel-auditoryhum-review" in table and "unrelated" not in table


def test_consumer_groups_in_status_read_what_the_stages_consume():
    from auditoryhum.stages.aligner import AlignerStage
    from auditoryhum.stages.clusterer import ClustererStage
    from auditoryhum.stages.labeler import LabelerStage
    from auditoryhum.stages.review import ReviewStage

    assert topics.CONSUMES == {s.name: s.consumes for s in (LabelerStage, AlignerStage, ReviewStage, ClustererStage)}
