"""Kubernetes, through the official Python client: the Indexed Job that ingests a dataset in shards, and the
state of a release that `auditoryhum status` reports.

Objects are plain dicts in the API's own shape; the API server checks them with strict field validation, so a
misspelt field is an error, never silently dropped. Every client or API failure becomes :class:`KubeError`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

PART_OF = "app.kubernetes.io/part-of=auditoryhum"  # the chart's objects and the ingest Jobs
INGEST_SELECTOR = f"{PART_OF},app.kubernetes.io/component=ingest"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
RUN_AS = 10001  # the images' non-root user
NOT_INSTALLED = "not installed"


class KubeError(RuntimeError):
    """The cluster could not be reached or refused a request; the message says which and why."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status of a refusal


def connect(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """A client from the pod's service account when running in a cluster (and no kubeconfig is named), else from
    ``kubeconfig`` (default: $KUBECONFIG or ~/.kube/config) and its ``context`` (default: the current one)."""
    try:
        if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        return config.new_client_from_config(config_file=kubeconfig, context=context, persist_config=False)
    except (config.ConfigException, OSError) as exc:
        raise KubeError(f"no usable Kubernetes configuration: {exc}") from exc


def _call(what: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
    try:
        return fn(*args, **kwargs)
    except ApiException as exc:
        raise KubeError(f"{what}: {exc.status} {exc.reason}: {_message(exc)}", exc.status) from exc
    except urllib3.exceptions.HTTPError as exc:
        raise KubeError(f"{what}: cannot reach the API server: {exc}") from exc


def _message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body)["message"]
    except (TypeError, ValueError, KeyError):
        return str(exc.body or "").strip()[:300]


# -- the ingest Job -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestJob:
    """What the Job runs: shard ``$(JOB_COMPLETION_INDEX)`` of ``shards`` of ``source`` per pod."""

    source: str
    dataset: str
    expected_clips: int  # the whole manifest, as announced: a pod that lists another count fails instead
    shards: int
    parallelism: int
    image: str
    bootstrap: str
    partitions: int = 4
    class_from_folder: bool = False
    cpu: str = "500m"
    memory: str = "512Mi"
    backoff_limit_per_index: int = 3
    ttl_seconds_after_finished: int = 86_400
    service_account: str | None = None
    env_from_secret: str | None = None  # object-store credentials, e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    volume_claim: str | None = None  # a PersistentVolumeClaim holding a folder or CSV source, mounted read-only
    mount_path: str = "/data"
    layout: str = "files"  # or one of the paper's datasets (auditoryhum.datasets.LAYOUTS)
    taxonomy: str = ""  # the living taxonomy the dataset joins ("": its own)
    probe: bool | None = None  # --probe/--no-probe; None: ingest's default (local files only)
    commit_every: int = 2000

    def args(self) -> list[str]:
        args = ["ingest", self.source, "--shard-index", "$(JOB_COMPLETION_INDEX)", "--shard-count", str(self.shards),
                "--no-announce", "--expect-clips", str(self.expected_clips), "--dataset", self.dataset,
                "--bootstrap", self.bootstrap, "--partitions", str(self.partitions)]
        # A restarted pod runs the same arguments: it resumes its shard from the progress recorded in Kafka.
        return (args + (["--class-from-folder"] if self.class_from_folder else [])
                + (["--layout", self.layout] if self.layout != "files" else [])
                + (["--taxonomy", self.taxonomy] if self.taxonomy else [])
                + ([] if self.probe is None else ["--probe" if self.probe else "--no-probe"])
                + (["--commit-every", str(self.commit_every)] if self.commit_every != 2000 else []))


def slug(text: str, limit: int = 30) -> str:
    """``text`` as a DNS label fragment (lower-case alphanumerics and '-')."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "dataset"


def ingest_job(spec: IngestJob) -> dict:
    """The batch/v1 Indexed Job: one completion per shard, each index retried on its own."""
    if not 1 <= spec.parallelism <= spec.shards:
        raise ValueError(f"parallelism must be 1..{spec.shards} (the shard count), not {spec.parallelism}")
    labels = {"app.kubernetes.io/name": "auditoryhum", "app.kubernetes.io/component": "ingest",
              "app.kubernetes.io/part-of": "auditoryhum", "app.kubernetes.io/managed-by": "auditoryhum-cli",
              "auditoryhum.dev/dataset": slug(spec.dataset, 63)}
    container = {
        "name": "ingest", "image": spec.image, "imagePullPolicy": "IfNotPresent",
        "command": ["auditoryhum"], "args": spec.args(),
        # Declared, not left to the Job controller, so that $(JOB_COMPLETION_INDEX) in args always expands.
        "env": [{"name": "JOB_COMPLETION_INDEX",
                 "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_ANNOTATION}']"}}},
                {"name": "HOME", "value": "/tmp"}],  # the root filesystem is read-only
        "resources": {"requests": {"cpu": spec.cpu, "memory": spec.memory}, "limits": {"memory": spec.memory}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    volumes: list[dict] = [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
    if spec.env_from_secret:
        container["envFrom"] = [{"secretRef": {"name": spec.env_from_secret}}]
    if spec.volume_claim:
        container["volumeMounts"].append({"name": "data", "mountPath": spec.mount_path, "readOnly": True})
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": spec.volume_claim, "readOnly": True}})
    pod = {
        "restartPolicy": "Never",  # required by backoffLimitPerIndex: a failed shard gets a fresh pod
        "automountServiceAccountToken": False,  # the pods talk to Kafka and the store, never to the API
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
    }
    if spec.service_account:
        pod["serviceAccountName"] = spec.service_account
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"generateName": f"auditoryhum-ingest-{slug(spec.dataset)}-", "labels": labels,
                     "annotations": {"auditoryhum.dev/dataset": spec.dataset, "auditoryhum.dev/source": spec.source,
                                     "auditoryhum.dev/expected-clips": str(spec.expected_clips)}},
        "spec": {"completionMode": "Indexed", "completions": spec.shards, "parallelism": spec.parallelism,
                 "backoffLimitPerIndex": spec.backoff_limit_per_index,
                 "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished,
                 "template": {"metadata": {"labels": labels}, "spec": pod}},
    }


def submit_job(api: client.ApiClient, namespace: str, job: dict, *, dry_run: bool = False) -> dict:
    """Create ``job``; returns the object as the server stored it (with its generated name). ``dry_run``: the
    server validates and admits it completely, but stores nothing."""
    extra = {"dry_run": "All"} if dry_run else {}
    created = _call(f"creating a Job in {namespace}", client.BatchV1Api(api).create_namespaced_job, namespace, job,
                    field_validation="Strict", **extra)
    return api.sanitize_for_serialization(created)


def job_status(job: dict) -> dict:
    """The progress of an ingest Job (as the API returns it): shards done, running and failed, by index."""
    status, spec, annotations = job.get("status") or {}, job["spec"], job["metadata"].get("annotations") or {}
    return {"name": job["metadata"]["name"], "dataset": annotations.get("auditoryhum.dev/dataset", ""),
            "completions": spec.get("completions"), "succeeded": status.get("succeeded", 0),
            "active": status.get("active", 0), "failed": status.get("failed", 0),
            "completed_indexes": status.get("completedIndexes", ""), "failed_indexes": status.get("failedIndexes", ""),
            "conditions": [c["type"] for c in status.get("conditions") or () if c.get("status") == "True"]}


# -- status of a release ------------------------------------------------------------------------------------------


def release_status(api: client.ApiClient, namespace: str) -> dict:
    """The Deployments labelled part-of=auditoryhum, the KEDA ScaledObjects and HPAs that scale them, and the
    ingest Jobs. KEDA absent from the cluster reads ``"not installed"``."""

    def items(what: str, fn: Callable[..., Any], *args, **kwargs) -> list[dict]:
        return api.sanitize_for_serialization(_call(f"listing {what} in {namespace}", fn, *args, **kwargs))["items"]

    custom = client.CustomObjectsApi(api)
    try:
        scaled = [_scaled_object(so) for so in items("ScaledObjects", custom.list_namespaced_custom_object,
                                                     "keda.sh", "v1alpha1", namespace, "scaledobjects")]
    except KubeError as exc:
        if exc.status != 404:
            raise
        scaled = NOT_INSTALLED  # no scaledobjects.keda.sh CRD: no KEDA in this cluster
    return {
        "namespace": namespace,
        "deployments": [_deployment(d) for d in items("Deployments", client.AppsV1Api(api).list_namespaced_deployment,
                                                      namespace, label_selector=PART_OF)],
        "scaledobjects": scaled,
        "hpas": [_hpa(h) for h in items("HPAs", client.AutoscalingV2Api(api).list_namespaced_horizontal_pod_autoscaler,
                                        namespace)],
        "jobs": [job_status(j) for j in items("Jobs", client.BatchV1Api(api).list_namespaced_job, namespace,
                                              label_selector=INGEST_SELECTOR)],
    }


def _deployment(d: dict) -> dict:
    labels, status = d["metadata"].get("labels") or {}, d.get("status") or {}
    return {"name": d["metadata"]["name"], "component": labels.get("app.kubernetes.io/component", ""),
            "desired": d["spec"].get("replicas", 1), "ready": status.get("readyReplicas", 0),
            "available": status.get("availableReplicas", 0)}


def _scaled_object(so: dict) -> dict:
    spec = so.get("spec") or {}
    conditions = {c.get("type"): c.get("status") for c in (so.get("status") or {}).get("conditions") or ()}
    triggers = [{"type": t.get("type"), **{k: (t.get("metadata") or {}).get(k)
                                           for k in ("consumerGroup", "topic", "lagThreshold")}}
                for t in spec.get("triggers") or ()]
    return {"name": so["metadata"]["name"], "target": (spec.get("scaleTargetRef") or {}).get("name", ""),
            "min": spec.get("minReplicaCount"), "max": spec.get("maxReplicaCount"),
            "ready": conditions.get("Ready"), "active": conditions.get("Active"), "triggers": triggers}


def _hpa(h: dict) -> dict:
    spec, status = h["spec"], h.get("status") or {}
    return {"name": h["metadata"]["name"], "target": spec["scaleTargetRef"]["name"],
            "min": spec.get("minReplicas", 1), "max": spec["maxReplicas"],
            "current": status.get("currentReplicas"), "desired": status.get("desiredReplicas"),
            "metrics": [_metric(m) for m in spec.get("metrics") or ()]}


def _metric(metric: dict) -> str:
    """``Resource/cpu``, ``External/s0-kafka-…``: the source's kind and what it measures."""
    kind = metric["type"]
    source = metric.get(kind[0].lower() + kind[1:]) or {}  # Resource → resource, External → external, …
    return f"{kind}/{source.get('name') or (source.get('metric') or {}).get('name', '')}"
