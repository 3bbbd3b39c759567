"""Shared fixtures: the real offline models (loaded once) and real recordings from Debian packages."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import soundfile as sf

from auditoryhum.config import Settings
from auditoryhum.models import Models
from auditoryhum.service.local import KafkaCluster, LocalStack
from tests.kube_apiserver import ApiServer
from tests.s3_server import S3Server

LINCITY = Path("/usr/share/games/lincity-ng/sounds")
SIMUTRANS = Path("/usr/share/games/simutrans/pak/sound")
TRAFFIC = sorted(LINCITY.glob("Trafic*.wav"))
# Where the tests' services may read clips (AUDITORYHUM_ALLOWED_URIS): the temporary folders the tests write, and
# the Debian recordings those folders link to.
TEST_URIS = f"{Path(tempfile.gettempdir()).resolve()}/,{LINCITY}/,{SIMUTRANS}/"


@pytest.fixture(scope="session")
def models() -> Models:
    return Models(Settings())


@pytest.fixture(scope="session")
def kafka(tmp_path_factory) -> Iterator[LocalStack]:
    """A real Apache Kafka broker (scripts/kafka.sh) on its own ports, for the whole session."""
    stack = LocalStack(tmp_path_factory.mktemp("stack"), kafka_port=29092, port_base=29151, metrics_base=29161,
                       triton_port=29100, ui_port=29171, allowed_uris=TEST_URIS)
    stack.start_kafka()
    yield stack
    stack.down()


def own_stack(home: Path, base: int, env: dict[str, str] | None = None,
              kafka: KafkaCluster | None = None, replicas: dict[str, int] | None = None,
              triton: bool = True) -> LocalStack:
    """A stack of its own on ports base..base+99 (Kafka base and base+1, Triton base+20..22, gRPC base+51..54,
    metrics base+61..64, UI base+71, replicas 1 and 2 of a service base+80..99), for a test module whose faults or
    settings must not touch the session's. ``kafka``: brokers of its own instead of the single one on base (a
    cluster's ports must avoid the others). ``replicas``: service → how many replicas ``up`` starts (at most 3).
    ``triton``: False runs the models inside each service."""
    return LocalStack(home, kafka_port=base, port_base=base + 51, metrics_base=base + 61,
                      triton_port=base + 20 if triton else None,
                      ui_port=base + 71, env=env, kafka=kafka, allowed_uris=TEST_URIS, replicas=replicas,
                      replica_base=base + 80)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """A real S3-compatible server (SeaweedFS, scripts/seaweedfs.sh) on 127.0.0.1:29181-29188 for the session:
    ``endpoint``, ``env`` (the client settings), ``bucket(name)``, ``fs()``; ``stop``/``start`` keep its data."""
    server = S3Server(tmp_path_factory.mktemp("s3"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kube_apiserver(tmp_path_factory) -> Iterator[ApiServer]:
    """A real kube-apiserver (and etcd) on loopback for the whole session; its kubeconfig is ``.kubeconfig``."""
    server = ApiServer(tmp_path_factory.mktemp("kube"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def traffic_clips() -> list[Path]:
    assert len(TRAFFIC) >= 6, "lincity-ng-data is not installed (make setup)"
    return TRAFFIC


def write_bad_files(folder: Path) -> dict[str, str]:
    """One file of each kind of bad input; returns file name → the words its dead-letter reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "not_audio.wav").write_text("this is a text file pretending to be audio\n" * 20)
    good = (np.sin(np.linspace(0, 2000, 16000)) * 0.3).astype(np.float32)
    sf.write(folder / "truncated.wav", good, 16000)
    (folder / "truncated.wav").write_bytes((folder / "truncated.wav").read_bytes()[:30])
    nan = good.copy()
    nan[100:200] = np.nan
    sf.write(folder / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(folder / "silent.flac", np.zeros(16000, dtype=np.float32), 16000)
    sf.write(folder / "too_long.ogg", np.tile(good, 12), 16000)  # 12 s: over the 10 s cap the tests set
    return {"empty.wav": "empty", "not_audio.wav": "not readable", "truncated.wav": "not readable",
            "nan.wav": "NaN", "silent.flac": "silent", "too_long.ogg": "too long"}


# Tiny random-weight models of the paper's model classes (tests/tiny_models.py), each built once per session:
# the real transformers / sentence-transformers code paths, no model hub.
def _tiny_model(kind: str):
    """The session fixture ``tiny_<kind>``: the folder ``tests.tiny_models.build_<kind>`` writes."""

    @pytest.fixture(scope="session", name=f"tiny_{kind}")
    def build(tmp_path_factory) -> Path:
        from tests import tiny_models  # imported on first use: torch and transformers are slow to import

        return getattr(tiny_models, f"build_{kind}")(tmp_path_factory.mktemp(f"tiny-{kind}"))

    return build


tiny_clap = _tiny_model("clap")
tiny_clap_fused = _tiny_model("clap_fused")
tiny_laion_clap = _tiny_model("laion_clap")
tiny_qwen2_audio = _tiny_model("qwen2_audio")
tiny_qwen2_5_omni = _tiny_model("qwen2_5_omni")
tiny_qwen3_omni = _tiny_model("qwen3_omni")
tiny_gemma3n = _tiny_model("gemma3n")
tiny_sentence_model = _tiny_model("sentence_model")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server (tests/postgres.py) for the whole session: the URL of its `postgres` database."""
    from tests.postgres import PostgresServer

    with PostgresServer(port=25432) as server:
        yield server.url()


@pytest.fixture
def postgres_db(postgres_url) -> Iterator[str]:
    """A fresh empty database on the session's PostgreSQL server, dropped after the test: its URL."""
    from tests.postgres import create_database, drop_database

    url = create_database(postgres_url)
    yield url
    drop_database(url)
