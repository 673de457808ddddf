"""The live audit feed over TCP and TLS (octet-counted RFC 5424), and what it does while the
repository is down: it keeps its place and sends what was missed once the repository is back."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lxml import etree

from dicom_chain.audit import atna
from dicom_chain.audit import syslog as framing
from dicom_chain.errors import ConfigError
from dicom_chain.events import EventDraft
from dicom_chain.node import Node
from scp.auditfeed import AuditFeed, SyslogTarget

from .peers import free_port


class TcpRepository(threading.Thread):
    """Accepts connections and splits the octet-counted stream into messages."""

    def __init__(self, port: int, context: ssl.SSLContext | None = None) -> None:
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", port))
        self.server.settimeout(0.2)
        self.context = context
        self.messages: list[bytes] = []
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by close()
                return
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while chunk := conn.recv(65536):
                buffer += chunk
                while b" " in buffer:
                    length, _, rest = buffer.partition(b" ")
                    if len(rest) < int(length):
                        break
                    self.messages.append(rest[: int(length)])
                    buffer = rest[int(length) :]

    def close(self) -> None:
        self.running = False
        self.server.close()


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert predicate()


def types_of(messages: list[bytes]) -> list[str]:
    return [atna.record_of(etree.fromstring(framing.parse(m)[1]))["type"] for m in messages]


def test_tcp_feed_sends_each_event_once_and_catches_up_after_an_outage(node: Node, tmp_path: Path):
    port = free_port()
    cursor = tmp_path / "cursor"
    node.record(EventDraft("service.start", actor="GW"))
    feed = AuditFeed(node.ledger, SyslogTarget(f"tcp://127.0.0.1:{port}"), cursor, "GW")
    feed.start()  # first start: from the head on, the event above is history
    try:
        node.record(EventDraft("query.find", actor="WS1"))  # the repository is not there yet
        time.sleep(1.0)
        assert not cursor.exists() or int(cursor.read_text()) == 1
        repository = TcpRepository(port)
        repository.start()
        node.record(EventDraft("retrieve.move", actor="WS1"))
        wait_for(lambda: len(repository.messages) == 2, timeout=90)
        assert types_of(repository.messages) == ["query.find", "retrieve.move"]
    finally:
        feed.stop()
    assert int(cursor.read_text()) == 3
    repository.close()


def test_a_restarted_feed_resumes_at_its_cursor(node: Node, tmp_path: Path):
    port = free_port()
    repository = TcpRepository(port)
    repository.start()
    cursor = tmp_path / "cursor"
    cursor.write_text("0")
    node.record(EventDraft("service.start", actor="GW"))
    node.record(EventDraft("service.stop", actor="GW"))
    feed = AuditFeed(node.ledger, SyslogTarget(f"tcp://127.0.0.1:{port}"), cursor, "GW")
    feed.start()
    feed.stop()
    wait_for(lambda: len(repository.messages) == 2)
    assert types_of(repository.messages) == ["service.start", "service.stop"]
    repository.close()


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "repo.pem", tmp_path / "repo.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_tls_feed_verifies_the_repository_certificate(node: Node, tmp_path: Path):
    cert, key = _certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    port = free_port()
    repository = TcpRepository(port, context)
    repository.start()
    cursor = tmp_path / "cursor"
    cursor.write_text("0")
    node.record(EventDraft("association.rejected", actor="STRANGER", outcome="minor-failure"))
    feed = AuditFeed(node.ledger, SyslogTarget(f"tls://localhost:{port}", ca=cert), cursor, "GW")
    feed.send_pending()
    feed.stop()
    wait_for(lambda: len(repository.messages) == 1)
    header, _ = framing.parse(repository.messages[0])
    assert header["pri"] == str(10 * 8 + 4)  # a failure goes out as a warning
    repository.close()


@pytest.mark.parametrize("url", ["http://x:1", "udp://host", "tcp://:514", "syslog"])
def test_bad_targets_are_config_errors(url):
    with pytest.raises(ConfigError):
        SyslogTarget(url)


def test_framing_round_trip():
    msg = framing.message(
        b"<AuditMessage/>", timestamp="2026-11-24T10:00:00.000000Z", hostname="gw 1", procid="42"
    )
    header, payload = framing.parse(msg)
    assert payload == b"<AuditMessage/>" and header["hostname"] == "gw1" and header["pri"] == "85"
    assert framing.octet_counted(msg).startswith(str(len(msg)).encode() + b" <85>1 ")
