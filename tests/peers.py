"""Real peers for tests: find them, start them on loopback in temp dirs, stop them by PID.

Missing peer: under CI=true the test fails (CI must have it); elsewhere it skips and says how
to install it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_START_TIMEOUT_S = 60  # initdb + first start on a slow CI disk


def missing_peer(what: str, install: str) -> None:
    message = f"{what} not found; install it with: {install}"
    if IN_CI:
        pytest.fail(message + " (CI must have it: .ci/run installs it)")
    pytest.skip(message)


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing_peer(name, f"apt-get install {package}")
    return path  # type: ignore[return-value]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bindir() -> Path | None:
    for candidate in sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True
    ):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


@dataclass
class PostgresServer:
    bindir: Path
    datadir: Path
    port: int
    run_as: str | None

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=PG_START_TIMEOUT_S)

    @classmethod
    def start(cls) -> PostgresServer:
        bindir = _pg_bindir()
        if bindir is None:
            missing_peer("PostgreSQL server (initdb, pg_ctl)", "apt-get install postgresql")
        run_as = None
        root = Path(tempfile.mkdtemp(prefix="dicomchain-pg-"))
        if os.geteuid() == 0:  # initdb refuses to run as root
            run_as = "postgres"
            pw = pwd.getpwnam(run_as)
            os.chown(root, pw.pw_uid, pw.pw_gid)
        server = cls(bindir, root / "data", free_port(), run_as)  # type: ignore[arg-type]
        result = server._run(
            "initdb", "-D", str(server.datadir), "-U", "postgres", "-A", "trust", "-E", "UTF8"
        )
        if result.returncode:
            raise RuntimeError(f"initdb failed: {result.stderr}")
        opts = f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        result = server._run(
            "pg_ctl", "-D", str(server.datadir), "-o", opts, "-l", str(root / "log"), "-w", "start"
        )
        if result.returncode:
            raise RuntimeError(f"PostgreSQL did not start: {result.stderr}\n{(root / 'log').read_text()}")
        return server

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.datadir.parent, ignore_errors=True)

    def create_database(self) -> str:
        import psycopg

        name = f"t{int(time.time() * 1e6)}_{os.getpid()}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)
