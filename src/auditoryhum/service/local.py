"""The distributed mode on one machine: a real Kafka broker (scripts/kafka.sh), a Triton server with the models
(scripts/triton.sh) and the four services as processes calling it.

``make up`` / ``make down`` use it, and so do the end-to-end tests and ``make bench-pipeline``, each on its own
ports and folder. Processes get their own session and pid files, so ``down`` can stop what an earlier ``up``
started.

    python -m auditoryhum.service.local up|down|status [--home .run] [--kafka-port 19092] [--port-base 50051]
                                                       [--triton-port 18000 | --no-triton]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auditoryhum.service.settings import DEFAULT_PORTS

ROOT = Path(__file__).resolve().parents[3]
SERVICES = tuple(DEFAULT_PORTS)


class LocalStack:
    def __init__(self, home: Path, *, kafka_port: int = 19092, port_base: int = 50051, metrics_base: int = 9101,
                 triton_port: int | None = 18000, ui_port: int = 8080, env: dict[str, str] | None = None):
        """``triton_port``: Triton's HTTP port (gRPC and metrics on the next two); None runs the models inside
        each service instead. ``ui_port``: the review service's web UI. ``env``: settings every service gets
        (``AUDITORYHUM_*``), e.g. a state URL or review policy."""
        self.home = home.resolve()
        self.ui_port = ui_port
        self.kafka_port, self.port_base, self.metrics_base = kafka_port, port_base, metrics_base
        self.triton_port = triton_port
        # The services' models: on this stack's Triton, or in each service.
        self.env = {"AUDITORYHUM_BACKEND": "triton", "AUDITORYHUM_TRITON_URL": self.triton_url} if triton_port else {}
        self.env.update(env or {})
        self.home.mkdir(parents=True, exist_ok=True)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def triton_url(self) -> str:
        return f"127.0.0.1:{self.triton_port + 1}"

    def grpc_address(self, name: str) -> str:
        return f"127.0.0.1:{self.port_base + SERVICES.index(name)}"

    def metrics_address(self, name: str) -> str:
        return f"127.0.0.1:{self.metrics_base + SERVICES.index(name)}"

    # -- Kafka --------------------------------------------------------------------------------------------------

    def _kafka(self, command: str) -> None:
        env = {**os.environ, "KAFKA_PORT": str(self.kafka_port), "KAFKA_CONTROLLER_PORT": str(self.kafka_port + 1),
               "KAFKA_HOME_DIR": str(self.home / "kafka"), "KAFKA_PYTHON": sys.executable}
        subprocess.run([str(ROOT / "scripts" / "kafka.sh"), command], env=env, check=True)

    def start_kafka(self) -> None:
        self._kafka("start")

    def stop_kafka(self) -> None:
        self._kafka("stop")

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

    def _pidfile(self, name: str) -> Path:
        return self.home / f"{name}.pid"

    def start(self, name: str, wait_s: float = 120.0, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start service ``name`` (``env``: settings of this start only) and wait until its gRPC health check says
        SERVING."""
        process = self.spawn(name, env)
        self.wait_serving(name, wait_s, process)
        return process

    def spawn(self, name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        i = SERVICES.index(name)
        env = {**os.environ, **self.env, **(env or {}),
               "AUDITORYHUM_BOOTSTRAP": self.bootstrap, "AUDITORYHUM_GRPC_PORT": str(self.port_base + i),
               "AUDITORYHUM_METRICS_PORT": str(self.metrics_base + i), "AUDITORYHUM_INSTANCE_ID": name,
               "AUDITORYHUM_STATE_DIR": str(self.home / "state"), "AUDITORYHUM_UI_PORT": str(self.ui_port)}
        log = (self.home / f"{name}.log").open("ab")
        process = subprocess.Popen([sys.executable, "-m", "auditoryhum", "serve", name], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True, cwd=self.home)
        self._pidfile(name).write_text(str(process.pid))
        return process

    def wait_serving(self, name: str, wait_s: float, process: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + wait_s
        with grpc.insecure_channel(self.grpc_address(name)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}; see {self.home / (name + '.log')}")
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} not SERVING after {wait_s:g} s; see {self.home / (name + '.log')}")
                time.sleep(0.3)

    def signal(self, name: str, sig: int = signal.SIGTERM, wait_s: float = 30.0) -> None:
        """Send ``sig`` to a service and wait for it to exit (SIGKILL is the crash test)."""
        self._stop((name,), sig, wait_s)

    def _stop(self, names: tuple[str, ...], sig: int, wait_s: float) -> None:
        """Signal every named service at once, then wait for each (SIGKILL after ``wait_s``)."""
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
        processes = {name: self.spawn(name) for name in services}
        for name, process in processes.items():
            self.wait_serving(name, wait_s, process)

    def stop_services(self) -> None:
        self._stop(SERVICES, signal.SIGTERM, 30.0)
        self.stop_triton()

    def down(self) -> None:
        self.stop_services()
        self.stop_kafka()

    def status(self) -> dict[str, bool]:
        return {name: self._pidfile(name).exists() and _alive(int(self._pidfile(name).read_text()))
                for name in SERVICES}


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)  # reap our own child, or it lingers as a zombie
        if finished:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
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
    args = parser.parse_args(argv)
    stack = LocalStack(args.home, kafka_port=args.kafka_port, port_base=args.port_base,
                       metrics_base=args.metrics_base, triton_port=None if args.no_triton else args.triton_port,
                       ui_port=args.ui_port)
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
