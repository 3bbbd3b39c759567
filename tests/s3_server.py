"""A real S3-compatible server on loopback for the tests: SeaweedFS's `weed`, built by `make seaweedfs` (part of
`make setup`) and run by scripts/seaweedfs.sh, with one identity: requests signed with other keys are refused."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACCESS_KEY, SECRET_KEY = "auditoryhum-test", "auditoryhum-test-secret-0123456789"


def binary() -> Path:
    """The cached weed of the version deploy/seaweedfs/go.mod requires (the Makefile's path)."""
    version = re.search(r"^\s*github\.com/seaweedfs/seaweedfs (v\S+)",
                        (ROOT / "deploy/seaweedfs/go.mod").read_text(), re.M)
    return Path.home() / ".cache" / "auditoryhum" / f"weed-{version.group(1)}"


class S3Server:
    """``port``: S3; the server's other ports are the next seven (scripts/seaweedfs.sh)."""

    def __init__(self, home: Path, port: int = 29181):
        self.home, self.port = home, port

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The client settings a process needs (what the chart's objectStore Secret gives a pod)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1"}

    def _script(self, command: str) -> None:
        env = {**os.environ, "SEAWEEDFS_PORT": str(self.port), "SEAWEEDFS_HOME_DIR": str(self.home),
               "SEAWEEDFS_ACCESS_KEY": ACCESS_KEY, "SEAWEEDFS_SECRET_KEY": SECRET_KEY, "WEED": str(binary())}
        done = subprocess.run([str(ROOT / "scripts" / "seaweedfs.sh"), command], env=env, capture_output=True,
                              text=True, timeout=90)
        if done.returncode:
            raise RuntimeError(f"scripts/seaweedfs.sh {command} failed: {done.stderr.strip()}")

    def start(self) -> None:
        if not binary().is_file():
            raise RuntimeError(f"{binary()} is missing: run `make setup` (it builds SeaweedFS's weed, "
                               "`make seaweedfs`)")
        self._script("start")

    def stop(self) -> None:
        self._script("stop")

    def fs(self):
        """An s3fs client of its own (not fsspec's cached one, which the tests' environments change under)."""
        import s3fs

        return s3fs.S3FileSystem(key=ACCESS_KEY, secret=SECRET_KEY, endpoint_url=self.endpoint,
                                 skip_instance_cache=True)

    def bucket(self, name: str) -> str:
        """``s3://name``, the bucket created if missing."""
        fs = self.fs()
        if not fs.exists(name):
            fs.mkdir(name)
        return f"s3://{name}"
