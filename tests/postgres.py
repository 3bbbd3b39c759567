"""A real PostgreSQL server (Debian `postgresql`) for the test session: initdb into a temporary folder, pg_ctl.

initdb refuses to run as root, so as root the server runs as the `postgres` OS user, from a folder it owns. It
listens on 127.0.0.1 only, trusts loopback connections and skips fsync: a throwaway server for tests.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import make_url

USER = "postgres"


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: no /usr/lib/postgresql/*/bin/pg_ctl (make setup)")
    return Path(found[-1]).parent  # the newest major version


class PostgresServer:
    """``with PostgresServer(port) as server:`` a running server; ``server.url()`` is its SQLAlchemy URL."""

    def __init__(self, port: int):
        self.port = port
        self.bin = _bin_dir()
        self.as_owner = ["runuser", "-u", USER, "--"] if os.geteuid() == 0 else []

    def __enter__(self) -> PostgresServer:
        self.home = Path(tempfile.mkdtemp(prefix="auditoryhum-pg-"))
        if self.as_owner:
            shutil.chown(self.home, USER, USER)
        self.data, self.log = self.home / "data", self.home / "server.log"
        self._run("initdb", "-D", str(self.data), "-U", USER, "-A", "trust", "-E", "UTF8", "--locale=C",
                  "--no-sync")
        self.options = f"-h 127.0.0.1 -p {self.port} -k {self.home} -F -c full_page_writes=off"
        try:
            self.start()
        except RuntimeError as exc:
            log = self.log.read_text() if self.log.exists() else ""
            shutil.rmtree(self.home, ignore_errors=True)
            raise RuntimeError(f"{exc}\nserver log:\n{log[-2000:]}") from None
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.running():  # a fault test may have left it stopped
                self.stop()
        finally:
            shutil.rmtree(self.home, ignore_errors=True)

    def start(self) -> None:
        """Start the server; returns once it accepts connections."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self.options, "-w", "-t", "60", "start")

    def running(self) -> bool:
        done = subprocess.run([*self.as_owner, str(self.bin / "pg_ctl"), "-D", str(self.data), "status"],
                              capture_output=True, timeout=30)
        return done.returncode == 0

    def stop(self, mode: str = "immediate") -> None:
        """``immediate``: as a crash, every connection cut mid-statement; ``fast``: sessions terminated, in-flight
        transactions rolled back."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "immediate") -> None:
        """Stop the server (see :meth:`stop`) and start it again; returns once it accepts connections."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self.options, "-m", mode, "-w", "-t", "60",
                  "restart")

    def url(self) -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self.as_owner, str(self.bin / tool), *args], capture_output=True, text=True,
                              timeout=120)
        if done.returncode:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")


_names = itertools.count(1)


def create_database(server_url: str) -> str:
    """A new empty database, test_<n>, on the server of ``server_url``; returns its URL."""
    name = f"test_{next(_names)}"
    with _admin(server_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    with _admin(url) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(make_url(url).database)))


def _admin(url: str) -> psycopg.Connection:
    u = make_url(url)
    return psycopg.connect(host=u.host, port=u.port, user=u.username, dbname="postgres", autocommit=True)
