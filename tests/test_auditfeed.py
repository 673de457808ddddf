"""The live audit feed over TCP and TLS (octet-counted RFC 5424), and what it does while the
repository is down: it keeps its place and sends what was missed once the repository is back."""

from __future__ import annotations

import datetime
import hashlib
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
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from dicom_chain.audit import atna
from dicom_chain.audit import syslog as framing
from dicom_chain.audit.transfers import AGGREGATE_IDLE_S, AGGREGATE_MAX_AGE_S, Transfers
from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.errors import ConfigError
from dicom_chain.events import EventDraft
from dicom_chain.node import Node
from dicom_chain.synthetic import StudySpec, ct_study
from scp import auditfeed as auditfeed_module
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


def seqs_of(messages: list[bytes]) -> list[int]:
    return [atna.record_of(etree.fromstring(framing.parse(m)[1]))["seq"] for m in messages]


def test_tcp_feed_sends_each_event_once_and_catches_up_after_an_outage(node: Node):
    port = free_port()
    node.record(EventDraft("service.start", actor="GW"))
    feed = AuditFeed(node.ledger, SyslogTarget(f"tcp://127.0.0.1:{port}"), "GW")
    feed.start()  # first start: from the head on, the event above is history
    try:
        node.record(EventDraft("query.find", actor="WS1"))  # the repository is not there yet
        wait_for(lambda: feed.failures >= 1)
        assert feed.cursor.position() == 1  # nothing went out, so the place is kept
        repository = TcpRepository(port)
        repository.start()
        node.record(EventDraft("retrieve.move", actor="WS1"))
        wait_for(lambda: len(repository.messages) == 2, timeout=90)
        assert types_of(repository.messages) == ["query.find", "retrieve.move"]
    finally:
        feed.stop()
    assert feed.cursor.position() == 3
    repository.close()


def test_a_restarted_feed_resumes_at_its_cursor(node: Node):
    port = free_port()
    repository = TcpRepository(port)
    repository.start()
    first = AuditFeed(node.ledger, SyslogTarget(f"tcp://127.0.0.1:{port}"), "GW")
    first.send_pending()  # first start on an empty log: its place is 0
    first.stop()
    node.record(EventDraft("service.start", actor="GW"))  # while no feed runs
    node.record(EventDraft("service.stop", actor="GW"))
    feed = AuditFeed(node.ledger, SyslogTarget(f"tcp://127.0.0.1:{port}"), "GW")
    feed.start()
    feed.stop()
    wait_for(lambda: len(repository.messages) == 2)
    assert types_of(repository.messages) == ["service.start", "service.stop"]
    repository.close()


def test_feeds_of_several_processes_send_each_event_once(db_url: str, tmp_path: Path, monkeypatch):
    """Two feeds on one database (two gateway processes): one holds the target's lease and sends;
    the other takes over when the holder stops, or at once when the holder is judged dead."""
    from dataclasses import replace

    from sqlalchemy import update

    from dicom_chain.config import Settings
    from dicom_chain.db import owners
    from dicom_chain.db.models import FeedCursorRow
    from scp import auditfeed

    monkeypatch.setattr(auditfeed, "POLL_S", 0.05)
    node = Node.open(Settings(home=tmp_path / "n", db=db_url))
    port = free_port()
    repository = TcpRepository(port)
    repository.start()
    feeds = [AuditFeed(node.ledger, SyslogTarget(f"tcp://127.0.0.1:{port}"), "GW") for _ in range(2)]
    try:
        for feed in feeds:
            feed.start()
        for i in range(6):
            node.record(EventDraft("query.find", actor=f"WS{i}"))
        wait_for(lambda: len(repository.messages) == 6)
        [holder] = [f for f in feeds if f.cursor.holder == _lease_owner(node, str(f.target))]
        [other] = [f for f in feeds if f is not holder]
        holder.stop()  # gives the lease back
        for i in range(3):
            node.record(EventDraft("retrieve.move", actor=f"WS{i}"))
        wait_for(lambda: len(repository.messages) == 9)
        assert _lease_owner(node, str(other.target)) == other.cursor.holder
        other.stopping.set()  # "killed": its thread ends, its lease stays in the database
        other.join()
        dead = f"{replace(owners.current(), pid=999_999_999)}/{other.cursor.instance}"
        with node.db.writing() as session:
            session.execute(update(FeedCursorRow).values(lease_owner=dead))
        successor = AuditFeed(node.ledger, SyslogTarget(f"tcp://127.0.0.1:{port}"), "GW")
        node.record(EventDraft("retrieve.get", actor="WS9"))
        assert successor.send_pending() == 1  # a dead holder's lease is taken at once, not after it runs out
        wait_for(lambda: len(repository.messages) == 10)
        assert seqs_of(repository.messages) == list(range(1, 11))  # each event once, in order
    finally:
        for feed in feeds:
            feed.stop()
        node.close()
        repository.close()


def _lease_owner(node: Node, target: str) -> str:
    from sqlalchemy import select

    from dicom_chain.db.models import FeedCursorRow

    with node.db.reading() as session:
        return session.scalar(select(FeedCursorRow.lease_owner).where(FeedCursorRow.target == target))


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
    feed = AuditFeed(node.ledger, SyslogTarget(f"tls://localhost:{port}", ca=cert), "GW")
    feed.send_pending()  # its place: the head of the (empty) log
    node.record(EventDraft("association.rejected", actor="STRANGER", outcome="minor-failure"))
    assert feed.send_pending() == 1
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


# -- receipts per study and association (IHE ATNA "DICOM Instances Transferred") ----------------

SCHEMA = etree.RelaxNG(etree.parse(str(Path(__file__).parent / "schemas" / "dicom-audit-message.rng")))


def _receive(node: Node, seed: int, count: int, *, actor: str = "CT1", peer: str = "10.0.0.7") -> list[str]:
    """``count`` instances of one study received as over C-STORE; their SOP Instance UIDs."""
    study = list(ct_study(StudySpec(seed=seed, instances=count, rows=4, columns=4, patient_id="P-9")))
    for ds in study:
        node.ingest(item_from_dataset(ds), actor=actor, peer=peer)
    return [ds.SOPInstanceUID for ds in study]


def _transfers(messages: list[bytes]) -> list[tuple[etree._Element, dict]]:
    found = []
    for m in messages:
        msg = etree.fromstring(framing.parse(m)[1])
        assert SCHEMA.validate(msg), SCHEMA.error_log
        summary = atna.transfer_of(msg)
        if summary is not None:
            found.append((msg, summary))
    return found


def _receipts_digest(node: Node, first: int, last: int) -> str:
    lines = "".join(
        f"{e.seq} {h}\n"
        for e, h in node.ledger.iter_events_with_hash()
        if e.type == "instance.received" and first <= e.seq <= last
    )
    return hashlib.sha256(lines.encode("ascii")).hexdigest()


def test_a_study_goes_out_as_one_message_per_association(node: Node):
    """Five receipts of one study are one "DICOM Instances Transferred" message, sent when the
    association ends, naming its SOP class with NumberOfInstances and the events it stands for;
    a query between them goes out on its own at once. The cursor waits below the open study."""
    port = free_port()
    repository = TcpRepository(port)
    repository.start()
    feed = AuditFeed(node.ledger, SyslogTarget(f"tcp://127.0.0.1:{port}"), "GW")
    try:
        feed.send_pending()
        start = feed.cursor.position()
        _receive(node, 41, 3)
        node.record(EventDraft("query.find", actor="WS1"))
        _receive(node, 41, 5)  # the study's five: the first three again (duplicates), two new
        feed.send_pending()
        wait_for(lambda: len(repository.messages) == 1)
        assert types_of(repository.messages) == ["query.find"]
        assert feed.cursor.position() == start  # the first receipt is not sent yet
        feed.association_ended("CT1", "10.0.0.7")
        assert feed.send_pending() == 1
        wait_for(lambda: len(repository.messages) == 2)
        [(msg, summary)] = _transfers(repository.messages)
        head = node.ledger.event_head()[0]
        assert summary == {
            "first_seq": start + 1,
            "last_seq": head,
            "count": 8,
            "events_sha256": _receipts_digest(node, start + 1, head),
        }
        assert feed.cursor.position() == head
        ident = msg.find("EventIdentification")
        assert ident.find("EventID").get("csd-code") == "110104" and ident.get("EventActionCode") == "C"
        [source] = [p for p in msg.iter("ActiveParticipant") if p.get("UserID") == "CT1"]
        assert source.get("NetworkAccessPointID") == "10.0.0.7"
        [sop_class] = msg.iter("SOPClass")
        assert sop_class.get("UID") == CTImageStorage and sop_class.get("NumberOfInstances") == "8"
        # the same modality sends the study again, on another association: another message
        _receive(node, 42, 2)
        feed.association_ended("CT1", "10.0.0.7")
        feed.send_pending()
        wait_for(lambda: len(repository.messages) == 3)
        assert [s["count"] for _, s in _transfers(repository.messages)] == [8, 2]
    finally:
        feed.stop()
        repository.close()


def test_a_feed_that_dies_mid_study_sends_the_whole_study_from_its_next_start(node: Node):
    """The feed read three receipts of an open study, then its process died: the cursor stayed
    below them, so the next feed gathers all five (the two that came later too) in one message."""
    port = free_port()
    repository = TcpRepository(port)
    repository.start()
    first = AuditFeed(node.ledger, SyslogTarget(f"tcp://127.0.0.1:{port}"), "GW")
    first.send_pending()
    start = first.cursor.position()
    _receive(node, 43, 3)
    node.record(EventDraft("query.find", actor="WS1"))
    first.send_pending()
    wait_for(lambda: len(repository.messages) == 1)
    first.cursor.release()  # killed: no final round (a dead holder's lease is taken over at once)
    _receive(node, 43, 5)
    second = AuditFeed(node.ledger, SyslogTarget(f"tcp://127.0.0.1:{port}"), "GW")
    try:
        second.association_ended("CT1", "10.0.0.7")
        second.send_pending()
        wait_for(lambda: len(_transfers(repository.messages)) == 1)
        [(_, summary)] = _transfers(repository.messages)
        assert summary["first_seq"] == start + 1 and summary["count"] == 8  # 3 + 5, none lost
        # at least once: the query after the first receipt went out again, recognisable by its hash
        assert types_of([m for m in repository.messages if atna.transfer_of(_msg(m)) is None]) == [
            "query.find",
            "query.find",
        ]
    finally:
        second.stop()
        repository.close()


def _msg(m: bytes) -> etree._Element:
    return etree.fromstring(framing.parse(m)[1])


def test_transfers_close_on_silence_on_age_and_on_a_new_association():
    """Without word of the association's end (another process received it) a transfer closes
    after AGGREGATE_IDLE_S of silence, or AGGREGATE_MAX_AGE_S open; 2,000 receipts are one."""
    t0 = 1_800_000_000.0

    def rec(seq: int, at: float, study: str = "1.2.3", actor: str = "CT1") -> dict:
        stamp = datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        details = {"peer": "10.0.0.7", "sop_class": CTImageStorage}
        return {
            "seq": seq, "type": "instance.received", "outcome": "success", "actor": actor, "patient_id": "P",
            "study_uid": study, "key_id": "k", "time": stamp, "hash": f"{seq:064x}", "details": details,
        }  # fmt: skip

    gathered = Transfers()
    for seq in range(1, 2001):
        gathered.add(rec(seq, t0 + seq * 0.01))
    last = t0 + 20.0
    gathered.close_due(2000, last + AGGREGATE_IDLE_S - 1)
    assert not gathered.finished and gathered.oldest_seq() == 1
    gathered.close_due(2000, last + AGGREGATE_IDLE_S)
    [study] = gathered.finished
    assert (study.count, study.sop_classes, gathered.oldest_seq()) == (2000, {CTImageStorage: 2000}, 1)
    gathered.finished.clear()
    # a study streamed for longer than the bound is reported in parts, none lost
    for seq in range(1, 5):
        gathered.add(rec(seq, t0 + seq * AGGREGATE_MAX_AGE_S / 3))
    gathered.close_due(4, t0 + 4 * AGGREGATE_MAX_AGE_S / 3 + 1)
    assert [t.count for t in gathered.finished] == [4]
    gathered.finished.clear()
    # the association ended at seq 2; seq 3 is the same sender's next association
    gathered.add(rec(1, t0))
    gathered.add(rec(2, t0))
    gathered.ended("CT1", "10.0.0.7", 2)
    gathered.add(rec(3, t0))
    assert [t.count for t in gathered.finished] == [2] and gathered.oldest_seq() == 1
    gathered.close_due(3, None)
    assert [t.count for t in gathered.open.values()] == [1]


def test_a_message_too_large_for_udp_is_cut_with_a_warning(caplog):
    """A query naming thousands of patients outgrows a datagram: it is not dropped silently."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(10)
    with receiver, caplog.at_level("WARNING", logger="dicom_chain.audit"):
        SyslogTarget(f"udp://127.0.0.1:{receiver.getsockname()[1]}").send(b"x" * 70_000)
        assert len(receiver.recv(100_000)) == auditfeed_module.UDP_MAX_BYTES
    assert "use tcp:// or tls://" in caplog.text


def test_a_lagging_feed_still_splits_two_associations_it_heard_end_before_reading_them():
    t0 = "2026-11-29T12:00:00.000000Z"

    def rec(seq: int) -> dict:
        details = {"peer": "10.0.0.7", "sop_class": CTImageStorage}
        return {
            "seq": seq, "type": "instance.received", "outcome": "success", "actor": "CT1", "patient_id": "P",
            "study_uid": "1.2.3", "key_id": "k", "time": t0, "hash": f"{seq:064x}", "details": details,
        }  # fmt: skip

    gathered = Transfers()
    gathered.ended("CT1", "10.0.0.7", 2)  # the first association ended at seq 2,
    gathered.ended("CT1", "10.0.0.7", 5)  # the second at 5, before the feed read either
    for seq in range(1, 6):
        gathered.add(rec(seq))
    gathered.close_due(5, None)
    assert [(t.first_seq, t.count) for t in gathered.finished] == [(1, 2), (3, 3)]
