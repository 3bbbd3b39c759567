"""A service's settings: the pipeline's (:class:`~auditoryhum.config.Settings`) plus where it listens and what it
talks to. Read from ``AUDITORYHUM_*`` environment variables, or a dotenv file named by ``AUDITORYHUM_ENV_FILE``."""

from __future__ import annotations

import os

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from auditoryhum.config import Settings

# name → (gRPC port, metrics port) when not configured: one machine can run all four side by side.
DEFAULT_PORTS = {"labeler": (50051, 9101), "aligner": (50052, 9102), "review": (50053, 9103),
                 "clusterer": (50054, 9104)}


STATEFUL = ("review", "clusterer")  # services whose state lives in a database (state_url)

# Requests of these services carry no audio: a smaller limit (MB) keeps a hostile body small.
SMALL_REQUESTS_MB = {"review": 1.0, "clusterer": 1.0}


class ServiceSettings(Settings):
    model_config = SettingsConfigDict(env_prefix="AUDITORYHUM_", extra="ignore",
                                      env_file=os.environ.get("AUDITORYHUM_ENV_FILE"))

    bootstrap: str = Field("127.0.0.1:19092", description="Kafka bootstrap servers, comma-separated")
    partitions: int = Field(4, ge=1, description="partitions of each topic created at start-up")
    replication_factor: int | None = Field(None, ge=1, description="replicas of each topic created at start-up "
                                                                   "(default: the brokers' default.replication."
                                                                   "factor)")
    instance_id: str | None = Field(None, description="stable member id (e.g. the pod name): a restarted "
                                                      "instance takes its partitions back at once")
    session_timeout_ms: int = Field(10_000, ge=6_000, description="Kafka consumer-group session timeout")
    poll_timeout_s: float = Field(0.2, gt=0, le=10, description="longest a poll waits for records when there are none "
                                                              "(shorter: less latency; longer: fewer wake-ups)")
    stall_timeout_s: float | None = Field(None, gt=0, description="a consumer whose polls deliver nothing for this "
                                                                  "long while records wait is rebuilt and rejoins "
                                                                  "(default: the session timeout)")
    grpc_host: str = Field("127.0.0.1", description="address the gRPC and metrics servers bind "
                                                      "(0.0.0.0 in a container)")
    grpc_port: int | None = Field(None, ge=0, le=65535, description="default: 50051-50054 by service")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Prometheus /metrics; default 9101-9104")
    max_message_mb: float = Field(16.0, gt=0, le=1024, description="largest gRPC message accepted or sent")
    allowed_uris: str = Field("file:///data/", description="comma-separated folders and URL prefixes the services "
                                                           "read clips from (auditoryhum.uris); default: the data "
                                                           "volume the chart and the ingest Job mount")
    max_request_mb: float | None = Field(None, gt=0, le=1024, description="largest gRPC request accepted (default: "
                                                                          "max_message_mb for the labeler and "
                                                                          "aligner, whose requests carry audio; "
                                                                          "1 MB for review and clusterer)")
    grpc_workers: int = Field(8, ge=1, le=256, description="threads serving gRPC calls, one call each")
    max_concurrent_rpcs: int = Field(32, ge=1, le=4096, description="gRPC calls admitted at once, running or waiting "
                                                                    "for a thread; beyond: RESOURCE_EXHAUSTED at "
                                                                    "once (health checks are not counted)")
    rpc_timeout_s: float = Field(60.0, gt=0, description="the server's deadline for a gRPC call (a client's earlier "
                                                          "one wins): then DEADLINE_EXCEEDED, and its work stops")
    state_url: str | None = Field(None, description="SQLAlchemy URL of review/clusterer state; default "
                                                    "sqlite:///<state_dir>/<service>.db")
    state_dir: str = Field("state", description="folder of the default SQLite state files")
    replicas: int = Field(1, ge=1, description="how many replicas of this service run at most (the chart's replicas or "
                                               "maxReplicas): review and clusterer replicas must share a PostgreSQL "
                                               "state_url, since a dataset moves between them on a rebalance")
    auth_token: SecretStr | None = Field(None, description="bearer token every gRPC call (health checks aside) and the "
                                                           "review web UI must present; required to bind beyond "
                                                           "loopback")
    session_secret: SecretStr | None = Field(None, description="random secret that signs the review UI's session "
                                                               "cookies; shared by replicas and restarts (unset: "
                                                               "random per process, a restart signs reviewers "
                                                               "out)")
    ui_port: int = Field(8080, ge=0, le=65535, description="the review service's web UI (0: no UI)")
    review_auto_accept: bool = Field(True, description="selected clips keep the model's label unless a "
                                                       "reviewer decides (false: wait for decisions)")
    review_deadline_s: float | None = Field(None, gt=0, description="a dataset's review closes this long after its "
                                                                    "tasks were issued: undecided tasks keep the "
                                                                    "model's label (default: wait for every decision, "
                                                                    "or CloseReview)")
    crash_after_relayed: int | None = Field(None, ge=1, description="fault point for delivery tests, never in "
                                                                    "production: the process kills itself once this "
                                                                    "many outbox records are out, before their rows "
                                                                    "are deleted")

    def ports(self, service: str) -> tuple[int, int]:
        grpc_port, metrics_port = DEFAULT_PORTS[service]
        return (grpc_port if self.grpc_port is None else self.grpc_port,
                metrics_port if self.metrics_port is None else self.metrics_port)

    def request_mb(self, service: str) -> float:
        return self.max_request_mb or SMALL_REQUESTS_MB.get(service, self.max_message_mb)

    def store_url(self, service: str) -> str:
        if problem := self.replication_problem(service):
            raise ValueError(problem)
        if self.state_url:
            return self.state_url
        os.makedirs(self.state_dir, exist_ok=True)
        return f"sqlite:///{os.path.join(self.state_dir, service)}.db"

    def replication_problem(self, service: str) -> str | None:
        """Why ``service`` cannot run ``replicas`` replicas on this state, or None. A SQLite file is one replica's:
        the replica that takes over a dataset after a rebalance would not find its state there."""
        if service not in STATEFUL or self.replicas == 1 or not (self.state_url or "sqlite").startswith("sqlite"):
            return None
        return (f"{service}: {self.replicas} replicas (AUDITORYHUM_REPLICAS) need a shared state database, not SQLite "
                f"files: set AUDITORYHUM_STATE_URL to a PostgreSQL URL (postgresql+psycopg://...), or run one replica")


RECOGNISER_PORTS = (50055, 9105)  # (gRPC, metrics) of the recogniser service, beside the four's


class RecogniserSettings(ServiceSettings):
    """The recogniser service's settings: where its MODEL_DIR is and how its model runs. It consumes no topic, so
    the Kafka settings it inherits are unused."""

    recogniser_dir: str | None = Field(None, description="the MODEL_DIR `auditoryhum train` wrote (recogniser.json "
                                                         "and its ONNX files); required")
    recogniser_model: str = Field("cnn", pattern="^(cnn|head)$", description="the model a request without one gets: "
                                                                             "cnn (log-mel CNN) or head (on the "
                                                                             "tagger's embeddings)")
    recogniser_precision: str = Field("int8", pattern="^(int8|float)$", description="which ONNX export runs")
    recogniser_threads: int = Field(1, ge=1, le=64, description="onnxruntime threads per model (in-process)")
    recogniser_triton_model: str = Field("scene_recogniser", description="the Triton model (backend=triton), "
                                                                         "loaded from the same MODEL_DIR")

    def ports(self, service: str = "recogniser") -> tuple[int, int]:
        return (RECOGNISER_PORTS[0] if self.grpc_port is None else self.grpc_port,
                RECOGNISER_PORTS[1] if self.metrics_port is None else self.metrics_port)

    def request_mb(self, service: str = "recogniser") -> float:
        return self.max_request_mb or self.max_message_mb  # requests carry audio
