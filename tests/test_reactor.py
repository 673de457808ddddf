"""Event-driven reactors (scp/reactor.py): same DICOM as pynetdicom's polling loops, no idle CPU.

Every test here runs with the reactor's safety-net wake-up (``BACKSTOP_S``) at 60 s, so a wake-up
the reactor misses shows as a test timing out, not as 0.5 s of latency nobody notices.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pynetdicom
import pytest
from pydicom import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    Verification,
)

from dicom_chain.synthetic import StudySpec, ct_study
from scp import reactor

from .peers import free_port, self_signed, wait_until

DEADLINE_S = 20.0  # generous for a loaded 2-core CI box; a missed wake-up waits 60 s
SMALL_PDU = 16_384  # storescu's default: a 2 MB instance arrives as ~130 P-DATA-TF PDUs
FIND_ANSWERS = 300
IDLE_MEASURE_S = 3.0


@pytest.fixture(autouse=True)
def no_backstop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reactor, "BACKSTOP_S", 60.0)


class Scp:
    """A plain pynetdicom SCP (echo, store, find) on loopback, with our reactor or stock."""

    def __init__(self, ours: bool, **timeouts: float) -> None:
        self.ae = AE(ae_title="SCP")
        if ours:
            assert reactor.install(self.ae)
        self.ae.maximum_pdu_size = SMALL_PDU
        for name, value in timeouts.items():
            setattr(self.ae, name, value)
        self.ae.add_supported_context(Verification)
        self.ae.add_supported_context(CTImageStorage, ALL_TRANSFER_SYNTAXES)
        self.ae.add_supported_context(PatientRootQueryRetrieveInformationModelFind)
        self.stored: list[tuple[str, str]] = []
        self.active: list[bool] = []
        self.aborted = threading.Event()
        self.port = free_port()
        self.ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[
                (evt.EVT_C_ECHO, self.echo),
                (evt.EVT_C_STORE, self.store),
                (evt.EVT_C_FIND, self.find),
                (evt.EVT_ABORTED, lambda _: self.aborted.set()),
            ],
        )

    def echo(self, event: evt.Event) -> int:
        self.active.append(reactor.active(event.assoc))
        return 0x0000

    def store(self, event: evt.Event) -> int:
        ds = event.dataset
        self.stored.append((ds.SOPInstanceUID, hashlib.sha256(ds.PixelData).hexdigest()))
        return 0x0000

    def find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        for n in range(FIND_ANSWERS):
            answer = Dataset()
            answer.QueryRetrieveLevel = "PATIENT"
            answer.PatientID = f"P{n:04d}"
            yield 0xFF00, answer

    def stop(self) -> None:
        self.ae.shutdown()


def scu(ours: bool, **timeouts: float) -> AE:
    ae = AE(ae_title="SCU")
    if ours:
        assert reactor.install(ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = DEADLINE_S
    for name, value in timeouts.items():
        setattr(ae, name, value)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    return ae


@pytest.fixture(scope="module")
def big_instance() -> Dataset:
    return next(ct_study(StudySpec(seed=7, instances=1, rows=1024, columns=1024)))


@pytest.mark.parametrize(("scp_ours", "scu_ours"), [(False, False), (True, False), (True, True)])
def test_echo_store_and_find_give_the_same_results_on_either_reactor(
    scp_ours: bool, scu_ours: bool, big_instance: Dataset
) -> None:
    """Echoes, a 2 MB instance in ~130 PDUs and a C-FIND of 300 answers, both directions of the
    hand-off (DUL thread -> association thread) on each side; stock is the reference."""
    scp = Scp(scp_ours)
    try:
        assoc = scu(scu_ours).associate("127.0.0.1", scp.port, ae_title="SCP", max_pdu=SMALL_PDU)
        assert assoc.is_established
        assert reactor.active(assoc) is scu_ours
        start = time.monotonic()
        statuses = [assoc.send_c_echo().Status for _ in range(20)]
        stored = assoc.send_c_store(big_instance)
        query = Dataset()
        query.QueryRetrieveLevel = "PATIENT"
        query.PatientID = ""
        answers = [
            (int(status.Status), ident.PatientID if ident is not None else None)
            for status, ident in assoc.send_c_find(query, PatientRootQueryRetrieveInformationModelFind)
        ]
        assoc.release()
        elapsed = time.monotonic() - start
        assert assoc.is_released
    finally:
        scp.stop()
    assert statuses == [0x0000] * 20
    assert scp.active == [scp_ours] * 20
    assert stored.Status == 0x0000
    assert scp.stored == [(big_instance.SOPInstanceUID, hashlib.sha256(big_instance.PixelData).hexdigest())]
    assert answers == [(0xFF00, f"P{n:04d}") for n in range(FIND_ANSWERS)] + [(0x0000, None)]
    assert elapsed < DEADLINE_S


def thread_cpu_s(native_id: int) -> float:
    """CPU seconds (user + system) one thread of this process has used, from /proc."""
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime, stime: fields 14 and 15, in ticks


def test_an_idle_association_costs_next_to_no_cpu() -> None:
    """Two idle associations each way, stock and ours side by side over the same 3 s: the
    threads of ours (both ends) use well under a third of stock's (pynetdicom wakes each of its
    four threads per association every millisecond)."""
    scps = {ours: Scp(ours) for ours in (False, True)}
    assocs: dict[bool, list] = {False: [], True: []}
    try:
        for ours, scp in scps.items():
            for _ in range(2):
                assoc = scu(ours).associate("127.0.0.1", scp.port, ae_title="SCP")
                assert assoc.is_established
                assocs[ours].append(assoc)
        for scp in scps.values():
            assert wait_until(lambda scp=scp: len(scp.ae.active_associations) == 2, DEADLINE_S)

        def threads(ours: bool) -> list[int]:
            pairs = [*assocs[ours], *scps[ours].ae.active_associations]
            return [t.native_id for a in pairs for t in (a, a.dul)]  # type: ignore[misc]

        before = {ours: sum(map(thread_cpu_s, threads(ours))) for ours in scps}
        time.sleep(IDLE_MEASURE_S)
        used = {ours: sum(map(thread_cpu_s, threads(ours))) - before[ours] for ours in scps}
        for ours in scps:
            for assoc in assocs[ours]:
                assoc.release()
    finally:
        for scp in scps.values():
            scp.stop()
    print(
        f"idle CPU over {IDLE_MEASURE_S:g} s, 2 associations each: "
        f"stock {used[False]:.3f} s, ours {used[True]:.3f} s"
    )
    assert used[False] > 0.02, "stock's polling did not show: the measurement is broken"
    assert used[True] < 0.3 * used[False]


@pytest.mark.parametrize("ours_side", ["scp", "scu"])
def test_the_network_timeout_still_fires(ours_side: str) -> None:
    """The idle (network) timer is the association thread's wait timeout now: it must end an idle
    association at about ``network_timeout``, on whichever side runs ours."""
    scp = Scp(ours_side == "scp", network_timeout=1.0 if ours_side == "scp" else DEADLINE_S)
    try:
        ae = scu(ours_side == "scu", network_timeout=1.0 if ours_side == "scu" else DEADLINE_S)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="SCP")
        assert assoc.is_established
        start = time.monotonic()
        assert wait_until(lambda: not assoc.is_established, DEADLINE_S, interval=0.02)
        assert time.monotonic() - start >= 0.8
        assert assoc.is_aborted  # pynetdicom's response to a network timeout: A-ABORT
        assoc.join(DEADLINE_S)
        assert not assoc.is_alive() and not assoc.dul.is_alive()
    finally:
        scp.stop()


def test_a_peer_abort_ends_the_association_at_once() -> None:
    scp = Scp(True)
    try:
        assoc = scu(False).associate("127.0.0.1", scp.port, ae_title="SCP")
        assert assoc.is_established
        assert wait_until(lambda: len(scp.ae.active_associations) == 1, DEADLINE_S)
        served = scp.ae.active_associations[0]
        start = time.monotonic()
        assoc.abort()
        assert scp.aborted.wait(DEADLINE_S)
        served.join(DEADLINE_S)
        assert not served.is_alive() and not served.dul.is_alive()
        assert time.monotonic() - start < DEADLINE_S
    finally:
        scp.stop()


def test_the_dimse_timeout_still_fires_for_a_requestor() -> None:
    """A send_c_echo on ours waits for its response on a queue with pynetdicom's DIMSE timeout."""
    release = threading.Event()
    scp = Scp(False)
    scp.echo = lambda event: (release.wait(DEADLINE_S), 0x0000)[1]  # type: ignore[method-assign]
    scp.ae.shutdown()
    scp.ae.start_server(("127.0.0.1", scp.port), block=False, evt_handlers=[(evt.EVT_C_ECHO, scp.echo)])
    try:
        assoc = scu(True, dimse_timeout=1.0).associate("127.0.0.1", scp.port, ae_title="SCP")
        assert assoc.is_established
        start = time.monotonic()
        response = assoc.send_c_echo()
        assert len(response) == 0  # no response: pynetdicom aborts on a DIMSE timeout
        assert 0.8 <= time.monotonic() - start < DEADLINE_S
        assert wait_until(lambda: assoc.is_aborted, DEADLINE_S)
    finally:
        release.set()
        scp.stop()


def test_a_pause_that_begins_as_the_last_one_ends_keeps_the_reactor_off_the_queue() -> None:
    """A requestor's send_c_* resumes the reactor (checkpoint set) and the next one pauses it again
    (cleared) before the reactor thread has run: the reactor must not wake up thinking it runs
    and take the next response off the DIMSE queue (reactor._resume). Made deterministic by
    holding the GIL across set, clear and put with a long switch interval."""
    import sys

    scp = Scp(False)
    try:
        assoc = scu(True).associate("127.0.0.1", scp.port, ae_title="SCP")
        assert assoc.is_established
        served: list[object] = []
        assoc._serve_request = lambda msg, context_id: served.append(msg)  # type: ignore[method-assign]
        checkpoint = assoc._reactor_checkpoint
        checkpoint.clear()  # a send_c_* pauses the reactor ...
        assert wait_until(lambda: assoc._is_paused, DEADLINE_S)
        assoc._wake.set()  # ... which wakes (a put, say) and waits at the checkpoint
        time.sleep(0.2)
        interval = sys.getswitchinterval()
        sys.setswitchinterval(5.0)
        try:
            checkpoint.set()  # that send_c_* is done; the reactor thread is notified, not yet run
            checkpoint.clear()  # the next one pauses it: pynetdicom's check finds it still paused
            assert assoc._is_paused
            assoc.dimse.msg_queue.put((1, "the next request's response"))
        finally:
            sys.setswitchinterval(interval)
        time.sleep(0.3)  # the reactor thread runs now
        assert served == []
        assert assoc.dimse.msg_queue.qsize() == 1  # still there for the sender's get_msg
        assert assoc.dimse.get_msg(block=False) == (1, "the next request's response")
        checkpoint.set()
        assoc.release()
    finally:
        scp.stop()


def test_a_connection_that_never_asks_is_closed_at_the_acse_timeout() -> None:
    """The ARTIM timer (started at connect, PS3.8 9.1.5) is the DUL's wait timeout now: a peer
    that connects and says nothing is dropped at about ``acse_timeout``."""
    scp = Scp(True, acse_timeout=1.0)
    try:
        with socket.create_connection(("127.0.0.1", scp.port), timeout=DEADLINE_S) as sock:
            start = time.monotonic()
            assert sock.recv(64) == b""  # closed by the SCP, nothing sent
            assert 0.8 <= time.monotonic() - start < DEADLINE_S
        assert wait_until(lambda: not scp.ae.active_associations, DEADLINE_S)
    finally:
        scp.stop()


# -- TLS: bytes decrypted but not yet read are invisible to poll() ----------------------------


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def associate_rq(called: str, calling: str) -> bytes:
    """A minimal A-ASSOCIATE-RQ (PS3.8 9.3.2): Verification in implicit VR little endian."""
    context = _item(
        0x20, bytes([1, 0, 0, 0]) + _item(0x30, b"1.2.840.10008.1.1") + _item(0x40, b"1.2.840.10008.1.2")
    )
    user = _item(0x50, _item(0x51, struct.pack(">L", SMALL_PDU)))
    body = (
        struct.pack(">HH", 1, 0)
        + called.ljust(16).encode()
        + calling.ljust(16).encode()
        + bytes(32)
        + _item(0x10, b"1.2.840.10008.3.1.1.1")
        + context
        + user
    )
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def echo_rq(message_id: int) -> bytes:
    """One P-DATA-TF carrying a whole C-ECHO-RQ command (PS3.7 9.3.5) on context 1."""
    uid = b"1.2.840.10008.1.1\0"

    def element(tag: int, value: bytes) -> bytes:
        return struct.pack("<HHL", 0, tag, len(value)) + value

    elements = (
        element(0x0002, uid)
        + element(0x0100, struct.pack("<H", 0x0030))
        + element(0x0110, struct.pack("<H", message_id))
        + element(0x0800, struct.pack("<H", 0x0101))
    )
    command = element(0x0000, struct.pack("<L", len(elements))) + elements
    pdv = struct.pack(">LB", len(command) + 2, 1) + bytes([0x03]) + command  # command, last fragment
    return struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv


def read_pdu(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    header = exactly(6)
    return header + exactly(struct.unpack(">L", header[2:])[0])


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_two_pdus_in_one_write_are_both_served(tls: bool, make_gateway, tmp_path: Path) -> None:
    """Two C-ECHO-RQs in one write: reading the first also reads the second, into our transport's
    buffer (TCP) or the SSL object's (TLS), where poll() cannot see it. Both must be answered
    without the peer sending anything more (a missed wake-up here waits 60 s)."""
    settings = {}
    if tls:
        cert, key = self_signed(tmp_path)
        settings = {"tls_cert": cert, "tls_key": key}
    gateway = make_gateway(**settings)
    assert getattr(gateway.ae, "_event_reactor", False)
    raw = socket.create_connection(("127.0.0.1", gateway.settings.port), timeout=DEADLINE_S)
    if tls:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        raw = client.wrap_socket(raw, server_hostname="localhost")
    with raw as sock:
        sock.sendall(associate_rq("DICOMCHAIN", "ECHO_SCU"))
        assert read_pdu(sock)[0] == 0x02  # A-ASSOCIATE-AC
        for round_ in range(3):
            sock.sendall(echo_rq(2 * round_ + 1) + echo_rq(2 * round_ + 2))  # one write, one record
            answers = [read_pdu(sock) for _ in range(2)]
            assert [a[0] for a in answers] == [0x04, 0x04]  # two P-DATA-TF: the C-ECHO-RSPs
        sock.sendall(bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]))  # A-RELEASE-RQ
        assert read_pdu(sock)[0] == 0x06  # A-RELEASE-RP


# -- installing -----------------------------------------------------------------------------


def test_an_unknown_pynetdicom_version_keeps_stock_loops(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pynetdicom, "__version__", "9.9.9")
    monkeypatch.setattr(reactor, "_refused", False)
    ae = AE(ae_title="NEWER")
    with caplog.at_level(logging.WARNING, logger="dicom_chain.scp"):
        assert reactor.install(ae) is False
        assert reactor.install(AE(ae_title="NEWER2")) is False
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "9.9.9" in caplog.records[0].message
    scp = Scp(False)
    try:
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="SCP")
        assert assoc.is_established and not reactor.active(assoc)
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    finally:
        scp.stop()


@pytest.mark.parametrize(("level", "kept"), [(logging.WARNING, False), (logging.INFO, True)])
def test_pynetdicoms_describing_handlers_are_unbound_only_when_their_lines_would_be_dropped(
    level: int, kept: bool
):
    """At WARNING (the gateway's level for pynetdicom) nobody reads the lines they build per PDU
    and per message; at INFO or DEBUG they stay bound and log as before."""
    from pynetdicom.association import Association

    logger = logging.getLogger("pynetdicom")
    before = logger.level
    logger.setLevel(level)
    try:
        assoc = Association(AE(), "acceptor")
        reactor._unbind_silent_loggers(assoc)
        bound = {event: [h for h, _ in assoc.get_handlers(event)] for event, _ in reactor.STANDARD_LOGGERS}
    finally:
        logger.setLevel(before)
    for event, handler in reactor.STANDARD_LOGGERS:
        assert (handler in bound[event]) is kept
