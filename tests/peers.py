"""Real peers for tests: find them, start them on loopback in temp dirs, stop them by PID.

Missing peer: under CI=true the test fails (CI must have it); elsewhere it skips and says how
to install it.
"""

from __future__ import annotations

import datetime
import glob
import ipaddress
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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


def require_imagemagick() -> str:
    """ImageMagick's ``convert``: the real one (its ``-version`` says so), not a stand-in that comes
    earlier on PATH (``magick`` first: ImageMagick 7's name)."""
    for candidate in (shutil.which("magick"), "/usr/bin/convert", shutil.which("convert")):
        if not candidate or not Path(candidate).exists():
            continue
        try:
            out = subprocess.run([candidate, "-version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if out.startswith("Version: ImageMagick"):
            return candidate
    missing_peer("ImageMagick (convert)", "apt-get install imagemagick")
    raise AssertionError("unreachable")


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def process_running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (exited, waiting for its parent to reap it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "zombie" not in status


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    """Until something accepts connections on ``port`` (a peer that just started), or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


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
    options: str = ""  # pg_ctl -o: port, socket folder, listen address (resume() starts it so again)

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
        server.options = f"-p {server.port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        server.resume()
        return server

    def resume(self) -> None:
        """Start the server (again, after ``pause``) on the same data, port and options."""
        log = self.datadir.parent / "log"
        result = self._run(
            "pg_ctl", "-D", str(self.datadir), "-o", self.options, "-l", str(log), "-w", "start"
        )
        if result.returncode:
            raise RuntimeError(f"PostgreSQL did not start: {result.stderr}\n{log.read_text()}")

    def pause(self) -> None:
        """Stop the server as an outage would (fast shutdown: sessions cut), keeping its data."""
        result = self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop")
        if result.returncode:
            raise RuntimeError(f"PostgreSQL did not stop: {result.stderr}")

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


ORTHANC_START_TIMEOUT_S = 60  # first start creates its index database
ORTHANC_DEBIAN_PATH = "/usr/sbin/Orthanc"  # not on a normal user's PATH


@dataclass
class OrthancServer:
    """Orthanc as the existing PACS: own config, own folders, loopback ports, stopped by PID."""

    root: Path
    dicom_port: int
    http_port: int
    nodelay: bool
    ae_title: str = "ORTHANC"
    proc: subprocess.Popen | None = None
    # Settings merged over the defaults below (e.g. IngestTranscoding: a PACS that re-encodes).
    config: dict[str, object] = field(default_factory=dict)

    @property
    def destination(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.dicom_port}"

    @classmethod
    def create(cls, nodelay: bool = True, config: dict[str, object] | None = None) -> OrthancServer:
        if not (shutil.which("Orthanc") or Path(ORTHANC_DEBIAN_PATH).exists()):
            missing_peer("Orthanc", "apt-get install orthanc")
        root = Path(tempfile.mkdtemp(prefix="dicomchain-orthanc-"))
        return cls(root, free_port(), free_port(), nodelay, config=dict(config or {}))

    def write_config(self) -> Path:
        import json

        config = {
            "Name": "dicom-chain test PACS",
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "Plugins": [],
            "DicomModalities": {},
            **self.config,
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config))
        return path

    def start(self) -> OrthancServer:
        import os as _os

        binary = shutil.which("Orthanc") or ORTHANC_DEBIAN_PATH
        env = dict(_os.environ)
        if self.nodelay:
            env["TCP_NODELAY"] = "1"  # Debian's DCMTK keeps Nagle on without it
        log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen([binary, str(self.write_config())], stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + ORTHANC_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.root / 'orthanc.log').read_text()[-2000:]}")
            try:
                self.rest("/system")
                with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not start in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def rest(self, path: str) -> object:
        import json
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as response:
            body = response.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def count(self) -> int:
        return int(self.rest("/statistics")["CountInstances"])  # type: ignore[index]

    def instance_files(self) -> list[bytes]:
        return [self.rest(f"/instances/{i}/file") for i in self.rest("/instances")]  # type: ignore[union-attr,misc]

    def wait_for(self, count: int, timeout: float = 120.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.count()
            if found >= count:
                return found
            time.sleep(0.25)
        return self.count()


@dataclass
class GatewayProcess:
    """``dicom-chain serve`` as a real process: for signals, kill -9 and restarts."""

    home: Path
    port: int
    args: tuple[str, ...] = ()
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        import sys

        cmd = [sys.executable, "-m", "dicom_chain.cli", "serve", "--home", str(self.home),
               "--host", "127.0.0.1", "--port", str(self.port), *self.args]  # fmt: skip
        log = open(self.home.parent / f"{self.home.name}-gateway.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}: {self.log()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("gateway did not start listening")

    def forward_children(self) -> list[int]:
        """Pids of the forward processes serve started (its children running scp.forward_process)."""
        from scp.forward_process import MODULE

        assert self.proc is not None
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])  # after "pid (comm) state"
            if parent == self.proc.pid and MODULE.encode() in cmdline:
                found.append(int(entry.name))
        return found

    def wait_for_log(self, text: str, timeout: float = 30.0) -> bool:
        return wait_until(lambda: text in self.log(), timeout)

    def log(self) -> str:
        path = self.home.parent / f"{self.home.name}-gateway.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def exchange(assoc: object, request: object, context_id: int) -> object:
    """Send one DIMSE request exactly as built (bytes a broken peer would send) and return the
    response.

    Only for requests no ``send_c_*`` call can make: ``send_c_find`` and friends always encode a
    pydicom Dataset, which cannot hold an element whose length runs past the end. (Raw C-STORE
    bytes need none of this: ``send_c_store(path)`` sends a file's dataset undecoded, see
    test_handlers.py.) Why pynetdicom's private reactor pause and not public API: the request can
    go out through the public ``assoc.dimse.send_msg``, and EVT_DIMSE_RECV even shows the
    response, but the association's reactor thread polls the same queue (``_run_reactor``:
    ``dimse.get_msg(block=False)``), so whether it swallows the response ("Received unexpected
    ... service message") or leaves it for the next ``send_c_echo`` to misread is a race (tried:
    the echo got the C-FIND's C000). Every public ``send_c_*`` in pynetdicom 3.0 pauses the reactor
    exactly like this (association.py: ``_reactor_checkpoint.clear()``, wait for ``_is_paused``,
    send, ``get_msg``, ``set()``); no public call does it alone.
    """
    assoc._reactor_checkpoint.clear()  # type: ignore[attr-defined]
    while not assoc._is_paused:  # type: ignore[attr-defined]
        time.sleep(0.001)
    try:
        assoc.dimse.send_msg(request, context_id)  # type: ignore[attr-defined]
        _, response = assoc.dimse.get_msg(block=True)  # type: ignore[attr-defined]
    finally:
        assoc._reactor_checkpoint.set()  # type: ignore[attr-defined]
    return response


def self_signed(folder: Path, name: str = "gw") -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1 and its key (PEM files in ``folder``): what a
    test server presents and its client trusts as the one certificate it knows."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path
