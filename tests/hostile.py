"""Hostile peers for tests and the soak benchmark: raw PDUs on a socket, and what must hold after.

Bytes are built here by hand (PS3.8 9.3) rather than by pynetdicom's SCU, which never sends a PDU
out of order, truncated or with a length that lies. ``Invariants`` are the properties every
hostile batch must leave true: the gateway process alive, C-ECHO answered, RSS under a bound, no
half-written file in the store.
"""

from __future__ import annotations

import contextlib
import io
import socket
import ssl
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from dicom_chain.storage import TEMP_PREFIX

from .peers import GatewayProcess

# PDU types, PS3.8 9.3.1
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = 1, 2, 3, 4, 5, 6, 7
APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1
ECHO_CONTEXT_ID, CT_CONTEXT_ID = 1, 3  # odd, as PS3.8 9.3.2.2 requires
# What the gateway may use while fuzzed, read from /proc/PID/status VmRSS: measured 111 MB idle,
# 164-179 MB through an 8-minute soak (benchmarks/README.md: pydicom, pynetdicom, SQLAlchemy
# loaded, a lying 8 MiB PDU buffered); a leak per case or a buffer of a declared gigabyte does not fit.
RSS_BOUND_BYTES = 300 * 1024 * 1024
ECHO_DEADLINE_S = 15.0  # a loaded 2-core CI box; an answered echo normally takes milliseconds
ECHO_ATTEMPTS = 5  # a modality retries a refused association a few times before it gives up
# pynetdicom's acceptor thread waits ACSE timeout (scp/server.py ACSE_TIMEOUT_S, 30 s) for an
# A-ASSOCIATE-RQ even after the DUL has dropped the connection (association.py run_reactor:
# receive_pdu(wait=True, timeout=acse_timeout)), so every dead connection holds one of the
# gateway's association slots that long. Until the transport frees it at once (issue 13, item 4),
# fuzzing before an association waits this long for the slots between batches.
SLOT_RELEASE_S = 30 + 20


def pdu(kind: int, body: bytes, declared: int | None = None) -> bytes:
    """A PDU: type, reserved byte, 4-byte big-endian length (``declared`` may lie), body."""
    return struct.pack(">BBI", kind, 0, len(body) if declared is None else declared) + body


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def associate_rq(
    calling: str = "FUZZSCU", called: str = "DICOMCHAIN", max_pdu: int = 16_384, *, store: bool = True
) -> bytes:
    """A well-formed A-ASSOCIATE-RQ (PS3.8 9.3.2): echo and, with ``store``, CT Image Storage."""
    contexts = [(ECHO_CONTEXT_ID, Verification, ImplicitVRLittleEndian)]
    if store:
        contexts.append((CT_CONTEXT_ID, CTImageStorage, ExplicitVRLittleEndian))
    items = _item(0x10, APPLICATION_CONTEXT)
    for context_id, abstract, syntax in contexts:
        sub = _item(0x30, str(abstract).encode()) + _item(0x40, str(syntax).encode())
        items += _item(0x20, bytes([context_id, 0, 0, 0]) + sub)
    items += _item(0x50, _item(0x51, struct.pack(">I", max_pdu)))
    header = struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16) + bytes(32)
    return pdu(ASSOCIATE_RQ, header + items)


def p_data(context_id: int, control: int, data: bytes) -> bytes:
    """One P-DATA-TF with one PDV (control: bit 0 command, bit 1 last fragment; PS3.8 E.2)."""
    return pdu(P_DATA, struct.pack(">IB", len(data) + 2, context_id) + bytes([control]) + data)


def _message_pdus(message: object, context_id: int) -> bytes:
    out = b""
    for primitive in message.encode_msg(context_id, 16_384):  # type: ignore[attr-defined]
        tf = P_DATA_TF()
        tf.from_primitive(primitive)
        out += tf.encode()
    return out


def echo_rq(message_id: int = 1) -> bytes:
    primitive = C_ECHO()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = Verification
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    return _message_pdus(message, ECHO_CONTEXT_ID)


def store_rq(sop_uid: str, body: bytes, message_id: int = 1) -> bytes:
    """A C-STORE-RQ of CT Image Storage carrying ``body`` (explicit VR little endian) as it is."""
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = CTImageStorage
    primitive.AffectedSOPInstanceUID = sop_uid
    primitive.Priority = 2
    primitive.DataSet = io.BytesIO(body)
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return _message_pdus(message, CT_CONTEXT_ID)


def tls_client_hello() -> bytes:
    """The first flight of a real TLS client, as a scanner probing the port sends it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="gateway")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


BANNERS = {
    "http": b"GET / HTTP/1.1\r\nHost: gateway\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
    "http-post": b"POST /dicom-web/studies HTTP/1.1\r\nContent-Length: 4\r\n\r\nAAAA",
    "ssh": b"SSH-2.0-OpenSSH_9.6p1 Debian-3\r\n",
    "smtp": b"EHLO scanner\r\n",
    "tls-clienthello": tls_client_hello(),
}


def poke(
    port: int, data: bytes, *, then: bytes = b"", linger_s: float = 0.2, answer_s: float = 10.0
) -> bytes:
    """Connect, send ``data`` (and ``then`` after the gateway's first answer, waited for at most
    ``answer_s``), half-close,
    read whatever comes back for at most ``linger_s``, close. What came back is returned; a
    gateway that resets the connection is fine (the properties checked afterwards are what count).
    """
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(linger_s)
        try:
            sock.sendall(data)
            if then:
                sock.settimeout(answer_s)
                with contextlib.suppress(TimeoutError):
                    received += sock.recv(65_536)
                sock.settimeout(linger_s)
                sock.sendall(then)
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + linger_s
            while time.monotonic() < deadline:
                chunk = sock.recv(65_536)
                if not chunk:
                    break
                received += chunk
        except (TimeoutError, ConnectionError, OSError):
            pass
    return received


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def threads(pid: int) -> int:
    """Threads of ``pid``: the gateway runs one per connection it has not let go of."""
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def wait_slots_free(gateway: GatewayProcess, idle_threads: int, timeout: float = SLOT_RELEASE_S) -> float:
    """Until the gateway is back to ``idle_threads`` (every hostile connection let go); seconds waited."""
    assert gateway.proc is not None
    started = time.monotonic()
    deadline = started + timeout
    while threads(gateway.proc.pid) > idle_threads and time.monotonic() < deadline:
        time.sleep(0.25)
    assert threads(gateway.proc.pid) <= idle_threads, "hostile connections still hold the gateway"
    return time.monotonic() - started


def echo_ok(port: int, calling: str = "FUZZSCU") -> bool:
    """A C-ECHO over a fresh pynetdicom association answered Success within ECHO_DEADLINE_S."""
    scu = AE(ae_title=calling)
    scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = ECHO_DEADLINE_S
    scu.add_requested_context(Verification)
    assoc = scu.associate("127.0.0.1", port, ae_title="DICOMCHAIN")
    try:
        if not assoc.is_established:
            return False
        status = assoc.send_c_echo()
        return status is not None and getattr(status, "Status", None) == 0x0000
    finally:
        if assoc.is_established:
            assoc.release()


def half_written(storage: Path) -> list[str]:
    """Temp files left behind, and stored files that do not parse: none may exist between batches."""
    problems = []
    for path in storage.rglob("*") if storage.exists() else []:
        if not path.is_file():
            continue
        if path.name.startswith(TEMP_PREFIX):
            problems.append(f"temp file {path}")
            continue
        try:
            pydicom.dcmread(path, force=False)
        except Exception as exc:  # any failure to parse is the finding
            problems.append(f"{path}: {exc}")
    return problems


@dataclass
class Invariants:
    """The properties after every hostile batch; ``peak_rss`` keeps the largest RSS seen."""

    gateway: GatewayProcess
    rss_bound: int = RSS_BOUND_BYTES
    peak_rss: int = 0
    checks: int = 0
    rss_samples: list[tuple[float, int]] = field(default_factory=list)

    def check(self, what: str = "") -> None:
        proc = self.gateway.proc
        assert proc is not None and proc.poll() is None, f"gateway died {what}: {self.gateway.log()[-3000:]}"
        rss = rss_bytes(proc.pid)
        self.peak_rss = max(self.peak_rss, rss)
        self.rss_samples.append((time.monotonic(), rss))
        assert rss < self.rss_bound, f"RSS {rss / 2**20:.0f} MB over {self.rss_bound / 2**20:.0f} MB {what}"
        # A modality retries a refused association: a slot a just-closed hostile connection still
        # holds (the per-host limit) may refuse the first echo on a loaded box, never all of them.
        assert any(echo_ok(self.gateway.port) or time.sleep(1.0) for _ in range(ECHO_ATTEMPTS)), (
            f"C-ECHO not answered in {ECHO_ATTEMPTS} attempts {what}: {self.gateway.log()[-3000:]}"
        )
        problems = half_written(self.gateway.home / "storage")
        assert not problems, problems
        self.checks += 1
