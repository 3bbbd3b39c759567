"""The distributed mode on one machine: a real Kafka broker (scripts/kafka.sh) or a KRaft cluster of several, a
Triton server with the models (scripts/triton.sh) and the four services as processes calling it.

``make up`` / ``make down`` use it, and so do the end-to-end tests and ``make bench-pipeline``, each on its own
ports and folder. Processes get their own session and pid files, so ``down`` can stop what an earlier ``up``
started.

    python -m auditoryhum.service.local up|down|status [--home .run] [--kafka-port 19092] [--port-base 50051]
                                                       [--triton-port 18000 | --no-triton]
                                                       [--allowed-uris PREFIXES] [--replicas review=2 ...]

A service may run as several replicas (``replicas``): replica 0 on the usual ports, replica r on ports of its own
from ``replica_base`` (see :meth:`LocalStack.ports`), each its own process, pid file, log and instance id.
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auditoryhum.service.settings import DEFAULT_PORTS

ROOT = Path(__file__).resolve().parents[3]
SERVICES = tuple(DEFAULT_PORTS)


class KafkaCluster:
    """Kafka nodes run by scripts/kafka.sh, each broker and controller, on ``ports`` (controller on port + 1).
    One port: the single-node broker of ``make up``, its data in ``home``. Several: a KRaft cluster whose nodes
    1..N all vote in the controller quorum and share one cluster id, each in ``home/node<id>``. ``replication``
    and ``min_isr`` become the brokers' defaults for new topics and for the internal ones (offsets, transactions);
    None keeps the script's (1)."""

    def __init__(self, home: Path, ports: Sequence[int], *, replication: int | None = None,
                 min_isr: int | None = None):
        self.home, self.ports = home, tuple(ports)
        self.replication, self.min_isr = replication, min_isr
        # 16 random bytes, URL-safe base64 without padding, as `kafka-storage random-uuid` prints them.
        self.cluster_id = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def node_home(self, node: int) -> Path:
        return self.home if len(self.ports) == 1 else self.home / f"node{node}"

    def _env(self, node: int) -> dict[str, str]:
        port = self.ports[node - 1]
        env = {**os.environ, "KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(port + 1),
               "KAFKA_HOME_DIR": str(self.node_home(node)), "KAFKA_PYTHON": sys.executable}
        if len(self.ports) > 1:
            env.update(KAFKA_NODE_ID=str(node), KAFKA_CLUSTER_ID=self.cluster_id,
                       KAFKA_VOTERS=",".join(f"{i}@127.0.0.1:{p + 1}" for i, p in enumerate(self.ports, 1)))
        if self.replication is not None:
            env["KAFKA_REPLICATION"] = str(self.replication)
        if self.min_isr is not None:
            env["KAFKA_MIN_ISR"] = str(self.min_isr)
        return env

    def _run(self, command: str) -> None:
        """``command`` on every node at once: a node of a quorum is ready only once a majority of it is up."""
        running = [(node, subprocess.Popen([str(ROOT / "scripts" / "kafka.sh"), command], env=self._env(node)))
                   for node in range(1, len(self.ports) + 1)]
        failed = [node for node, process in running if process.wait() != 0]
        if failed:
            raise RuntimeError(f"scripts/kafka.sh {command} failed on node(s) {failed}; see {self.home}")

    def start(self) -> None:
        """Every node that is not running (nodes already up are left as they are)."""
        self._run("start")

    def stop(self) -> None:
        self._run("stop")

    def kill(self, node: int = 1) -> None:
        """SIGKILL node ``node``'s JVM (the crash test) and wait until it is gone; ``start`` brings it back on the
        same data."""
        pid = int((self.node_home(node) / "kafka.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)


class LocalStack:
    def __init__(self, home: Path, *, kafka_port: int = 19092, port_base: int = 50051, metrics_base: int = 9101,
                 triton_port: int | None = 18000, ui_port: int = 8080, env: dict[str, str] | None = None,
                 kafka: KafkaCluster | None = None, allowed_uris: str | None = None,
                 replicas: dict[str, int] | None = None, replica_base: int | None = None):
        """``triton_port``: Triton's HTTP port (gRPC and metrics on the next two); None runs the models inside
        each service instead. ``ui_port``: the review service's web UI. ``env``: settings every service gets
        (``AUDITORYHUM_*``), e.g. a state URL or review policy. ``kafka``: the brokers, by default a single node
        on ``kafka_port`` with its data in ``home/kafka``. ``allowed_uris``: where the services may read clips
        (AUDITORYHUM_ALLOWED_URIS); by default the environment's, else this checkout's ``data/`` folder.
        ``replicas``: service → how many :meth:`up` starts (default 1); review and clusterer need a PostgreSQL
        state URL in ``env`` for more. ``replica_base``: the first port of replicas 1.. (default port_base + 1000)."""
        self.home = home.resolve()
        self.ui_port = ui_port
        self.port_base, self.metrics_base = port_base, metrics_base
        self.replicas = {name: 1 for name in SERVICES} | (replicas or {})
        self.replica_base = port_base + 1000 if replica_base is None else replica_base
        self.kafka = kafka or KafkaCluster(self.home / "kafka", [kafka_port])
        self.triton_port = triton_port
        # The services' models: on this stack's Triton, or in each service.
        self.env = {"AUDITORYHUM_BACKEND": "triton", "AUDITORYHUM_TRITON_URL": self.triton_url} if triton_port else {}
        self.env["AUDITORYHUM_ALLOWED_URIS"] = allowed_uris or os.environ.get("AUDITORYHUM_ALLOWED_URIS",
                                                                              f"{ROOT / 'data'}/")
        self.env.update(env or {})
        self.home.mkdir(parents=True, exist_ok=True)

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    @property
    def triton_url(self) -> str:
        return f"127.0.0.1:{self.triton_port + 1}"

    def ports(self, name: str, replica: int = 0) -> tuple[int, int, int]:
        """(gRPC, metrics, UI) ports of a replica. Replica r >= 1: ten ports from replica_base + 10 (r - 1), gRPC
        on the first four (by service), metrics on the next four, the review UI on the ninth."""
        i = SERVICES.index(name)
        if replica == 0:
            return self.port_base + i, self.metrics_base + i, self.ui_port
        base = self.replica_base + 10 * (replica - 1)
        return base + i, base + 4 + i, base + 8

    def grpc_address(self, name: str, replica: int = 0) -> str:
        return f"127.0.0.1:{self.ports(name, replica)[0]}"

    def metrics_address(self, name: str, replica: int = 0) -> str:
        return f"127.0.0.1:{self.ports(name, replica)[1]}"

    # -- Kafka --------------------------------------------------------------------------------------------------

    def start_kafka(self) -> None:
        self.kafka.start()

    def stop_kafka(self) -> None:
        self.kafka.stop()

    def kill_kafka(self, node: int = 1) -> None:
        """SIGKILL a broker's JVM and wait until it is gone; ``start_kafka`` restarts it on the same data."""
        self.kafka.kill(node)

    # -- Triton -------------------------------------------------------------------------------------------------

    def _triton(self, command: str) -> None:
        env = {**os.environ, "TRITON_HTTP_PORT": str(self.triton_port), "TRITON_GRPC_PORT": str(self.triton_port + 1),
               "TRITON_METRICS_PORT": str(self.triton_port + 2), "TRITON_HOME_DIR": str(self.home / "triton"),
               "TRITON_PYTHON": sys.executable}
        subprocess.run([str(ROOT / "scripts" / "triton.sh"), command], env=env, check=True)

    def start_triton(self) -> None:
        if self.triton_port is not None:
            self._triton("start")

    def stop_triton(self) -> None:
        if self.triton_port is not None:
            self._triton("stop")

    def kill_triton(self) -> None:
        """SIGKILL the Triton server and its backend stubs (the crash test); ``start_triton`` brings it back."""
        pid = int((self.home / "triton" / "tritonserver.pid").read_text())
        os.killpg(pid, signal.SIGKILL)  # scripts/triton.sh starts it as a session leader: the group is all of it
        while _alive(pid):
            time.sleep(0.1)

    # -- services -----------------------------------------------------------------------------------------------

    def _pidfile(self, member: str) -> Path:
        return self.home / f"{member}.pid"

    def start(self, name: str, wait_s: float = 120.0, env: dict[str, str] | None = None,
              replica: int = 0) -> subprocess.Popen:
        """Start service ``name`` (``env``: settings of this start only) and wait until its gRPC health check says
        SERVING."""
        process = self.spawn(name, env, replica)
        self.wait_serving(name, wait_s, process, replica)
        return process

    def spawn(self, name: str, env: dict[str, str] | None = None, replica: int = 0) -> subprocess.Popen:
        grpc_port, metrics_port, ui_port = self.ports(name, replica)
        who = member(name, replica)
        env = {**os.environ, **self.env, **(env or {}),
               "AUDITORYHUM_BOOTSTRAP": self.bootstrap, "AUDITORYHUM_GRPC_PORT": str(grpc_port),
               "AUDITORYHUM_METRICS_PORT": str(metrics_port), "AUDITORYHUM_INSTANCE_ID": who,
               "AUDITORYHUM_REPLICAS": str(max(self.replicas[name], replica + 1)),
               "AUDITORYHUM_STATE_DIR": str(self.home / "state"), "AUDITORYHUM_UI_PORT": str(ui_port)}
        log = (self.home / f"{who}.log").open("ab")
        process = subprocess.Popen([sys.executable, "-m", "auditoryhum", "serve", name], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True, cwd=self.home)
        self._pidfile(who).write_text(str(process.pid))
        return process

    def wait_serving(self, name: str, wait_s: float, process: subprocess.Popen | None = None,
                     replica: int = 0) -> None:
        who = member(name, replica)
        deadline = time.monotonic() + wait_s
        with grpc.insecure_channel(self.grpc_address(name, replica)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"{who} exited with {process.returncode}; see {self.home / (who + '.log')}")
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{who} not SERVING after {wait_s:g} s; see {self.home / (who + '.log')}")
                time.sleep(0.3)

    def signal(self, name: str, sig: int = signal.SIGTERM, wait_s: float = 30.0, replica: int = 0) -> None:
        """Send ``sig`` to a service's replica and wait for it to exit (SIGKILL is the crash test)."""
        self._stop((member(name, replica),), sig, wait_s)

    def members(self) -> tuple[str, ...]:
        """Every replica started and not stopped, by pid file: ``review``, ``review-1``..."""
        return tuple(sorted(p.stem for p in self.home.glob("*.pid") if p.stem.split("-")[0] in SERVICES))

    def _stop(self, names: tuple[str, ...], sig: int, wait_s: float) -> None:
        """Signal every named replica at once, then wait for each (SIGKILL after ``wait_s``)."""
        pids = {}
        for name in names:
            pidfile = self._pidfile(name)
            if not pidfile.exists():
                continue
            pid = int(pidfile.read_text())
            try:
                os.kill(pid, sig)
                pids[name] = pid
            except ProcessLookupError:
                pidfile.unlink(missing_ok=True)
        deadline = time.monotonic() + wait_s
        for name, pid in pids.items():
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            self._pidfile(name).unlink(missing_ok=True)

    def up(self, services: tuple[str, ...] = SERVICES, *, kafka: bool = True, wait_s: float = 180.0) -> None:
        """Kafka and Triton, then the services, started side by side and awaited."""
        if kafka:
            self.start_kafka()
        self.start_triton()
        processes = {(name, r): self.spawn(name, replica=r) for name in services for r in range(self.replicas[name])}
        for (name, replica), process in processes.items():
            self.wait_serving(name, wait_s, process, replica)

    def stop_services(self) -> None:
        self._stop(self.members(), signal.SIGTERM, 30.0)
        self.stop_triton()

    def down(self) -> None:
        self.stop_services()
        self.stop_kafka()

    def __enter__(self) -> "LocalStack":
        """``with stack:`` everything up for the block (see :meth:`up`), and down after it, even if up failed."""
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def status(self) -> dict[str, bool]:
        """Each service and replica: running or not."""
        return {who: self._pidfile(who).exists() and _alive(int(self._pidfile(who).read_text()))
                for who in sorted({*SERVICES, *self.members()})}


def member(name: str, replica: int = 0) -> str:
    """A replica's name: its pid file, log and instance id (replica 0 is the service's own name)."""
    return name if replica == 0 else f"{name}-{replica}"


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)  # reap our own child, or it lingers as a zombie
        if finished:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # someone else's dead child stays a zombie until its parent (or init) reaps it: dead all the same
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m auditoryhum.service.local", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--home", type=Path, default=Path(".run"), help="logs, pid files, state and Kafka data")
    parser.add_argument("--kafka-port", type=int, default=19092)
    parser.add_argument("--port-base", type=int, default=50051, help="gRPC ports: base..base+3")
    parser.add_argument("--metrics-base", type=int, default=9101)
    parser.add_argument("--triton-port", type=int, default=18000, help="HTTP; gRPC and metrics on the next two")
    parser.add_argument("--no-triton", action="store_true", help="run the models inside each service instead")
    parser.add_argument("--ui-port", type=int, default=8080, help="the review service's web UI")
    parser.add_argument("--allowed-uris", help="folders and URL prefixes the services read clips from (default: "
                                               "$AUDITORYHUM_ALLOWED_URIS, else ./data/)")
    parser.add_argument("--replicas", nargs="*", default=[], metavar="SERVICE=N",
                        help="replicas of a service (review and clusterer: with AUDITORYHUM_STATE_URL on PostgreSQL)")
    args = parser.parse_args(argv)
    replicas = {}
    for item in args.replicas:
        name, _, n = item.partition("=")
        if name not in SERVICES or not n.isdigit() or int(n) < 1:
            parser.error(f"--replicas {item!r}: SERVICE=N, SERVICE one of {', '.join(SERVICES)}, N >= 1")
        replicas[name] = int(n)
    stack = LocalStack(args.home, kafka_port=args.kafka_port, port_base=args.port_base,
                       metrics_base=args.metrics_base, triton_port=None if args.no_triton else args.triton_port,
                       ui_port=args.ui_port, allowed_uris=args.allowed_uris, replicas=replicas)
    if args.command == "up":
        stack.up()
        for name in SERVICES:
            print(f"{name:10s} gRPC {stack.grpc_address(name)}  metrics http://{stack.metrics_address(name)}/metrics")
        print(f"review UI  http://127.0.0.1:{stack.ui_port}/")
        print(f"kafka      {stack.bootstrap}   logs {stack.home}")
        if stack.triton_port is not None:
            print(f"triton     gRPC {stack.triton_url}")
    elif args.command == "down":
        stack.down()
    else:
        for name, alive in stack.status().items():
            print(f"{name:10s} {'running' if alive else 'stopped'}")


if __name__ == "__main__":
    main()
