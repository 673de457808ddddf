"""Hostile input against the real gateway process, through real sockets, in bounded time.

Raw PDUs before and inside an association (random bytes, truncated, lying lengths, out of order,
other protocols' banners), and C-STORE operation sequences with element-level mutations. After
every batch the same properties (``tests/hostile.py`` ``Invariants``): the process is alive,
C-ECHO is answered, RSS stays under ``RSS_BOUND_BYTES``, no temp or unparsable file is in the
store; once the gateway is stopped, every acknowledged instance is stored and ``verify_node``
holds. ``test_handlers.py`` fuzzes single C-STOREs in-process; this goes below pynetdicom's SCU
(bytes it would never send) and across operations. Longer runs: ``benchmarks/bench_hostile.py``.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from dicom_chain.ledger import Ledger
from dicom_chain.storage import Storage
from dicom_chain.verify import verify_node
from scp.server import MAX_PDU_BYTES
from scp.statuses import CANNOT_UNDERSTAND

from .conftest import read
from .hostile import (
    ABORT,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    ASSOCIATE_RQ,
    BANNERS,
    CT_CONTEXT_ID,
    ECHO_CONTEXT_ID,
    P_DATA,
    RELEASE_RP,
    RELEASE_RQ,
    Invariants,
    associate_rq,
    echo_ok,
    echo_rq,
    p_data,
    pdu,
    poke,
    store_rq,
)
from .peers import GatewayProcess, free_port, wait_until
from .test_handlers import _elements, _mutated, encode_body, mutations

CHECK_EVERY = 25  # hostile cases between two checks of the invariants (an echo and a store scan each)
FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
# Statuses a C-STORE of mutated bytes may get: Success, C000 (cannot understand), or a warning
# (B000 coercion, B006 elements discarded, B007 data set does not match SOP class): never A700
# (retry the same garbage forever) or 0110 (our bug).
STORE_ANSWERS = {0x0000, CANNOT_UNDERSTAND, 0xB000, 0xB006, 0xB007}


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    """``dicom-chain serve`` with an allow-list, so that rejected associations are fuzzed too."""
    home = tmp_path / "gw"
    home.mkdir()
    process = GatewayProcess(home, free_port(), ("--allow", "FUZZSCU")).start()
    yield process
    process.stop()


def stopped_and_verified(gateway: GatewayProcess, acknowledged: set[str]) -> int:
    """SIGTERM, then the node as ``verify --db`` sees it: whole, and holding every acknowledged
    instance; the number of blocks."""
    assert gateway.terminate() == 0, gateway.log()[-3000:]
    ledger = Ledger(f"sqlite:///{gateway.home / 'ledger.db'}")
    try:
        storage = Storage(gateway.home / "storage")
        report = verify_node(ledger, storage)
        assert report.ok, report.errors
        files = [storage.path(p) for p in storage.iter_files()]
        assert len(files) == ledger.block_count()
        stored = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
        assert acknowledged <= stored, acknowledged - stored
        return ledger.block_count()
    finally:
        ledger.close()


OUT_OF_ORDER = [
    p_data(ECHO_CONTEXT_ID, 0x03, b"\x00" * 12),  # P-DATA before any association
    echo_rq(),
    pdu(RELEASE_RQ, bytes(4)),
    pdu(RELEASE_RP, bytes(4)),
    pdu(ABORT, bytes(4)),
    pdu(ASSOCIATE_AC, associate_rq()[6:]),
    pdu(ASSOCIATE_RJ, bytes([0, 1, 1, 1])),
    pdu(8, bytes(4)),  # no such PDU type
]


@st.composite
def before_association(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """What a hostile peer sends on a fresh connection: (first bytes, bytes after any answer)."""
    rq = associate_rq()
    kind = draw(
        st.sampled_from(["random", "truncated", "flipped", "out-of-order", "banner", "lying", "type"])
    )
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=4096)), b""
    if kind == "truncated":
        return rq[: draw(st.integers(1, len(rq) - 1))], b""
    if kind == "flipped":
        data = bytearray(rq)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        return bytes(data), echo_rq()
    if kind == "out-of-order":
        first = draw(st.sampled_from(OUT_OF_ORDER))
        return first + (rq if draw(st.booleans()) else b""), b""
    if kind == "banner":
        return draw(st.sampled_from(sorted(BANNERS.values()))), b""
    if kind == "lying":  # a declared length that is not what follows, up to moderately large
        declared = draw(st.integers(0, 8 * 2**20))
        body = rq[6:] + draw(st.binary(max_size=2048))
        return pdu(ASSOCIATE_RQ, body[: draw(st.integers(0, len(body)))], declared=declared), b""
    return pdu(draw(st.integers(0, 255)), draw(st.binary(max_size=256))), b""


# Enough for CI's time budget; benchmarks/bench_hostile.py runs thousands.
PRE_ASSOCIATION_CASES = 30
PRE_ASSOCIATION_CHECK_EVERY = 15


def test_raw_pdus_before_an_association_leave_the_gateway_whole(gateway):
    invariants = Invariants(gateway)

    @settings(FUZZ, max_examples=PRE_ASSOCIATION_CASES)
    @given(before_association())
    def attack(case: tuple[bytes, bytes]) -> None:
        first, then = case
        poke(gateway.port, first, then=then, answer_s=1.0)  # a flipped RQ may get no answer
        attack.cases += 1  # type: ignore[attr-defined]
        if attack.cases % PRE_ASSOCIATION_CHECK_EVERY == 0:  # type: ignore[attr-defined]
            invariants.check(f"after {attack.cases} raw connections")  # type: ignore[attr-defined]

    attack.cases = 0  # type: ignore[attr-defined]
    attack()
    invariants.check("at the end")
    assert attack.cases == PRE_ASSOCIATION_CASES  # type: ignore[attr-defined]
    assert stopped_and_verified(gateway, set()) == 0


DEAD_CONNECTIONS = 40  # more than MAX_ASSOCIATIONS (32), from one host, in a second or two
LEGITIMATE_DEADLINE_S = 10.0  # far below the 30 s a held slot would take; room for a loaded CI box


def test_a_legitimate_echo_gets_through_right_after_a_burst_of_dead_connections(gateway):
    """The echo comes from the same host as the burst, and retries as a modality does: a slot a
    dead connection held for the ACSE timeout (30 s) would keep it out far past the deadline."""
    for i in range(DEAD_CONNECTIONS):
        poke(gateway.port, associate_rq()[: 10 + i], linger_s=0.05)
    started = time.monotonic()
    assert wait_until(lambda: echo_ok(gateway.port), LEGITIMATE_DEADLINE_S, interval=0.2)
    assert time.monotonic() - started < LEGITIMATE_DEADLINE_S + 2  # one echo's own time past it


@st.composite
def inside_association(draw: st.DrawFn) -> bytes:
    """PDUs an associated peer should never send: broken PDVs, unknown contexts, lying lengths,
    a second A-ASSOCIATE-RQ, messages cut short, data after A-RELEASE-RQ."""
    body = encode_body(read("CT_small.dcm"), ExplicitVRLittleEndian)
    kind = draw(
        st.sampled_from(
            ["pdv", "context", "lying", "second-rq", "cut", "after-release", "data-first", "random"]
        )
    )
    if kind == "pdv":  # PDV item lengths that disagree with the PDU's
        item = struct.pack(">IBB", draw(st.integers(0, 2**32 - 1)), CT_CONTEXT_ID, draw(st.integers(0, 255)))
        return pdu(P_DATA, item + draw(st.binary(max_size=512)))
    if kind == "context":  # a context that was never proposed
        return p_data(draw(st.sampled_from([0, 2, 5, 255])), 0x03, echo_rq()[12:])
    if kind == "lying":
        declared = draw(st.integers(0, 4 * 2**20))
        return pdu(P_DATA, draw(st.binary(max_size=4096)), declared=declared)
    if kind == "second-rq":
        return associate_rq()
    if kind == "cut":  # a C-STORE whose bytes stop anywhere, then the peer goes away
        whole = store_rq(f"1.2.826.0.1.3680043.10.511.9.{draw(st.integers(0, 10**9))}", body)
        return whole[: draw(st.integers(1, len(whole) - 1))]
    if kind == "after-release":
        return pdu(RELEASE_RQ, bytes(4)) + echo_rq()
    if kind == "data-first":  # the data set before its command
        return p_data(CT_CONTEXT_ID, 0x02, body[:1024]) + echo_rq()
    return draw(st.binary(min_size=1, max_size=2048))


def test_raw_pdus_inside_an_association_leave_the_gateway_whole(gateway):
    invariants = Invariants(gateway)
    accepted = 0

    @FUZZ
    @given(inside_association())
    def attack(hostile: bytes) -> None:
        nonlocal accepted
        answer = poke(gateway.port, associate_rq(), then=hostile)
        accepted += answer[:1] == bytes([ASSOCIATE_AC])
        attack.cases += 1  # type: ignore[attr-defined]
        if attack.cases % CHECK_EVERY == 0:  # type: ignore[attr-defined]
            invariants.check(f"after {attack.cases} associations")  # type: ignore[attr-defined]

    attack.cases = 0  # type: ignore[attr-defined]
    attack()
    invariants.check("at the end")
    assert accepted == attack.cases  # type: ignore[attr-defined]  # every attack ran inside an association
    assert stopped_and_verified(gateway, set()) == 0  # no cut or broken C-STORE was kept


def test_banners_get_no_association_and_an_unlisted_ae_gets_a_reject(gateway):
    for name, banner in BANNERS.items():
        answer = poke(gateway.port, banner)
        assert answer[:1] in (b"", bytes([ABORT])), (name, answer[:16])
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as sock:
        sock.sendall(associate_rq(calling="INTRUDER"))
        assert sock.recv(10)[:1] == bytes([ASSOCIATE_RJ])
    Invariants(gateway).check()


OPERATION = st.one_of(
    st.tuples(st.just("store"), st.none() | mutations(), st.booleans()),  # new SOP UID, or again
    st.tuples(st.just("echo")),
    st.tuples(st.just("abort-mid-store"), st.integers(1, 10**6)),
    st.tuples(st.just("reassociate")),
    st.tuples(st.just("abort")),
)


def _scu() -> AE:
    scu = AE(ae_title="FUZZSCU")
    scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = 30
    scu.add_requested_context(Verification)
    scu.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)  # the VRs are on the wire
    return scu


def test_c_store_operation_sequences_acknowledge_only_what_verifies(gateway, tmp_path):
    """Sequences of stores (valid or mutated, new SOP UIDs or re-sent ones), echoes, aborts in the
    middle of a data set and re-associations: every Success is an instance ``verify_node`` accepts."""
    from .test_handlers import send_raw

    invariants = Invariants(gateway)
    original = read("CT_small.dcm")
    acknowledged: set[str] = set()
    answered: dict[int, int] = {}
    serial = iter(range(10**9))
    scu = _scu()
    state = {"assoc": None}

    def assoc():
        if state["assoc"] is None or not state["assoc"].is_established:
            state["assoc"] = scu.associate("127.0.0.1", gateway.port, ae_title="DICOMCHAIN")
            assert state["assoc"].is_established
        return state["assoc"]

    @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(OPERATION, min_size=1, max_size=8))
    def run(operations) -> None:
        for operation in operations:
            if operation[0] == "store":
                _, change, again = operation
                fresh = f"1.2.826.0.1.3680043.10.511.3.{next(serial)}"
                uid = min(acknowledged) if again and acknowledged else fresh
                original.SOPInstanceUID = uid  # the stored instance is the data set's, not the command's
                body = encode_body(original, ExplicitVRLittleEndian)
                data = body if change is None else _mutated(body, _elements(body), change)
                status = send_raw(assoc(), CTImageStorage, uid, data, tmp_path)
                answered[status] = answered.get(status, 0) + 1
                assert status in STORE_ANSWERS, hex(status)
                if status == 0x0000:
                    acknowledged.add(uid)
            elif operation[0] == "echo":
                assert assoc().send_c_echo().Status == 0x0000
            elif operation[0] == "abort-mid-store":
                original.SOPInstanceUID = f"1.2.826.0.1.3680043.10.511.4.{operation[1]}"
                whole = store_rq(original.SOPInstanceUID, encode_body(original, ExplicitVRLittleEndian))
                poke(gateway.port, associate_rq(), then=whole[: operation[1] % (len(whole) - 1) + 1])
            elif operation[0] == "reassociate":
                assoc().release()
            else:
                assoc().abort()
        run.batches += 1  # type: ignore[attr-defined]
        if run.batches % 10 == 0:  # type: ignore[attr-defined]
            invariants.check(f"after {run.batches} sequences")  # type: ignore[attr-defined]

    run.batches = 0  # type: ignore[attr-defined]
    try:
        run()
        invariants.check("at the end")
    finally:
        if state["assoc"] is not None and state["assoc"].is_established:
            state["assoc"].release()
    assert answered.get(0x0000, 0) > 0 and answered.get(CANNOT_UNDERSTAND, 0) > 0, answered  # both paths ran
    assert stopped_and_verified(gateway, acknowledged) >= len(acknowledged)


OVERSIZED_DEADLINE_S = 10.0  # the gateway must refuse within this, not wait for the bytes or a timer
OVERSIZED_SENT = 256 * 1024  # more than the advertised maximum, far less than declared


@pytest.mark.parametrize("where", ["A-ASSOCIATE-RQ", "P-DATA-TF"])
def test_a_pdu_longer_than_we_advertised_is_aborted_at_once(gateway, where):
    """A declared length above our maximum (or a 64 MiB A-ASSOCIATE-RQ) is refused when its header
    arrives: the connection is aborted within seconds while the sender still has data to send."""
    assert OVERSIZED_SENT > MAX_PDU_BYTES  # what is sent already exceeds what we advertised
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as sock:
        if where == "P-DATA-TF":
            sock.sendall(associate_rq())
            assert sock.recv(65_536)[:1] == bytes([ASSOCIATE_AC])
            kind = P_DATA
        else:
            kind = ASSOCIATE_RQ
        sock.sendall(pdu(kind, b"", declared=64 * 2**20))
        sock.settimeout(0.5)
        started, sent, refused = time.monotonic(), 0, False
        while not refused and time.monotonic() - started < OVERSIZED_DEADLINE_S:
            try:
                sock.recv(65_536)  # an A-ABORT, or the end of the connection
                refused = True
            except TimeoutError:
                if sent < OVERSIZED_SENT:
                    try:
                        sock.sendall(bytes(16_384))
                        sent += 16_384
                    except OSError:  # the gateway closed while we were still sending
                        refused = True
            except OSError:  # reset by the gateway
                refused = True
        assert refused, f"still open after {OVERSIZED_DEADLINE_S} s and {sent} bytes"
    Invariants(gateway).check()
