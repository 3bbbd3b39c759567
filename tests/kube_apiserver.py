"""A real Kubernetes API server on loopback for the tests: Debian's etcd and the kube-apiserver that `make setup`
builds from the Go module proxy (`make kube-apiserver`), with certificates made here by openssl.

Clients authenticate with a certificate in ``system:masters`` (no anonymous access); authorisation is
AlwaysAllow. Only the API server runs, no controllers: Jobs and Deployments are stored and validated, but no pod
is ever created and no status is ever filled in.
"""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def binary() -> Path:
    """The cached kube-apiserver of the version deploy/kube-apiserver/go.mod requires (the Makefile's path)."""
    version = re.search(r"^\s*k8s\.io/kubernetes (v\S+)", (ROOT / "deploy/kube-apiserver/go.mod").read_text(), re.M)
    return Path.home() / ".cache" / "auditoryhum" / f"kube-apiserver-{version.group(1)}"


class ApiServer:
    def __init__(self, home: Path, *, port: int = 26443, etcd_port: int = 26379):
        self.home, self.port, self.etcd_port = home, port, etcd_port
        self.kubeconfig = home / "kubeconfig"
        self._procs: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    def start(self, timeout_s: float = 120.0) -> None:
        exe = binary()
        if not exe.is_file():
            raise RuntimeError(f"{exe} is missing: run `make kube-apiserver` (part of `make setup`)")
        if not shutil.which("etcd"):
            raise RuntimeError("etcd is missing: install Debian's etcd-server (part of `make setup`)")
        self._certificates()
        peer = f"http://127.0.0.1:{self.etcd_port + 1}"
        self._spawn("etcd", ["etcd", "--name", "test", "--data-dir", str(self.home / "etcd"),
                             "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
                             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                             "--initial-cluster", f"test={peer}"])
        certs = self.home / "pki"
        self._spawn("kube-apiserver", [
            str(exe), f"--etcd-servers={self.etcd_url}", "--bind-address=127.0.0.1", f"--secure-port={self.port}",
            # The API server refuses to publish a loopback address as the `kubernetes` Service's endpoint.
            "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
            f"--tls-cert-file={certs / 'server.crt'}", f"--tls-private-key-file={certs / 'server.key'}",
            f"--client-ca-file={certs / 'ca.crt'}", "--anonymous-auth=false", "--authorization-mode=AlwaysAllow",
            f"--service-account-key-file={certs / 'sa.pub'}", f"--service-account-signing-key-file={certs / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc", "--service-cluster-ip-range=10.96.0.0/16",
            f"--cert-dir={self.home / 'generated'}", "--profiling=false"])
        self._wait_ready(timeout_s)
        self._write_kubeconfig()

    def stop(self) -> None:
        for proc in reversed(self._procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.home / f"{name}.log").open("wb")
        self._procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def _certificates(self) -> None:
        """A CA, the server's certificate for 127.0.0.1, a client certificate in system:masters and the
        service-account signing key."""
        pki = self.home / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        (pki / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
        (pki / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
        steps = [
            "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=auditoryhum-test-ca -keyout ca.key -out ca.crt",
            "req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout server.key -out server.csr",
            "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext "
            "-out server.crt",
            "req -newkey rsa:2048 -nodes -subj /O=system:masters/CN=auditoryhum-test -keyout client.key "
            "-out client.csr",
            "x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile client.ext "
            "-out client.crt",
            "genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key",
            "pkey -in sa.key -pubout -out sa.pub",
        ]
        for step in steps:
            subprocess.run(["openssl", *step.split()], cwd=pki, check=True, capture_output=True)

    def _wait_ready(self, timeout_s: float) -> None:
        pki = self.home / "pki"
        context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        context.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
        deadline = time.monotonic() + timeout_s
        reason = "not started"
        while time.monotonic() < deadline:
            for proc, name in zip(self._procs, ("etcd", "kube-apiserver")):
                if proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{name} exited ({proc.returncode}): {self._log_tail(name)}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", context=context, timeout=5) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                reason = str(exc)
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"kube-apiserver not ready after {timeout_s:g} s ({reason}): "
                           f"{self._log_tail('kube-apiserver')}")

    def _log_tail(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")[-2000:]

    def _write_kubeconfig(self) -> None:
        pki = self.home / "pki"
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url,
                                                      "certificate-authority": str(pki / "ca.crt")}}],
            "users": [{"name": "test", "user": {"client-certificate": str(pki / "client.crt"),
                                                "client-key": str(pki / "client.key")}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        }))
