"""Store-and-forward against Orthanc as the PACS: arrival, outages, refusals, kill -9."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from dicom_chain import outbox as outbox_module
from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.cli import main
from dicom_chain.config import Settings
from dicom_chain.db.models import OutboxRow
from dicom_chain.ledger import Ledger
from dicom_chain.node import Node
from dicom_chain.synthetic import StudySpec, ct_study
from dicom_chain.verify import verify_files, verify_node
from scp import forwarder as forwarder_module
from scp.contexts import contexts_for
from scp.forwarder import DestinationWorker

from .conftest import SAMPLE_STUDY
from .gateways import InProcessGateway
from .peers import GatewayProcess, OrthancServer, free_port, require_tool

pytestmark = pytest.mark.dcmtk


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(outbox_module, "BACKOFF_FIRST_S", 0.2)
    monkeypatch.setattr(outbox_module, "BACKOFF_MAX_S", 1.0)


def gateway_for(tmp_path: Path, *destinations: str, workers: int = 2) -> InProcessGateway:
    settings = Settings(
        home=tmp_path / "gw",
        forward=destinations,
        host="127.0.0.1",
        port=free_port(),
        forward_workers=workers,
    )
    gateway = InProcessGateway(Node.open(settings))
    gateway.start()
    return gateway


def stop(gateway: InProcessGateway) -> None:
    gateway.stop()
    gateway.node.close()


def storescu(port: int, files: list[Path], aet: str = "CT_SCANNER") -> None:
    binary = require_tool("storescu", "dcmtk")
    command = [binary, "-aet", aet, "-aec", "DICOMCHAIN", "127.0.0.1", str(port), *map(str, files)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def wait_until(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_study_from_storescu_arrives_in_orthanc_chained(tmp_path, orthanc: OrthancServer):
    gateway = gateway_for(tmp_path, orthanc.destination)
    try:
        files = sorted(SAMPLE_STUDY.glob("*.dcm"))
        storescu(gateway.settings.port, files)
        assert orthanc.wait_for(len(files)) == len(files)
        assert wait_until(lambda: gateway.node.outbox.pending_count() == 0)
        downloaded = tmp_path / "from-orthanc"
        downloaded.mkdir()
        for i, data in enumerate(orthanc.instance_files()):
            (downloaded / f"{i}.dcm").write_bytes(data)
        report = verify_files([downloaded])
        assert report.ok and report.blocks_checked == len(files), report.findings
        forwarded = [e for e in gateway.node.ledger.iter_events() if e.type == "instance.forwarded"]
        assert len(forwarded) == len(files) and {e.outcome for e in forwarded} == {"success"}
        assert {e.actor for e in forwarded} == {orthanc.destination}
    finally:
        stop(gateway)


def test_orthanc_stopped_while_the_study_arrives_then_restarted(tmp_path, fast_retries):
    pacs = OrthancServer.create().start()
    gateway = gateway_for(tmp_path, pacs.destination)
    try:
        files = sorted(SAMPLE_STUDY.glob("*.dcm"))
        storescu(gateway.settings.port, files[:3])
        assert pacs.wait_for(3) == 3
        pacs.stop()  # the PACS goes down in the middle of the study
        storescu(gateway.settings.port, files[3:])  # the modality still gets Success for every image
        assert gateway.node.ledger.block_count() == len(files)
        assert wait_until(lambda: gateway.node.outbox.stats()[0].last_error != "", 20)
        assert gateway.node.outbox.pending_count() == len(files) - 3
        pacs.start()
        assert pacs.wait_for(len(files)) == len(files)
        assert wait_until(lambda: gateway.node.outbox.pending_count() == 0)
    finally:
        stop(gateway)
        pacs.destroy()


def test_a_pacs_that_is_down_holds_back_only_itself(tmp_path, orthanc: OrthancServer, fast_retries):
    down = f"NOBODY@127.0.0.1:{free_port()}"
    gateway = gateway_for(tmp_path, down, orthanc.destination)
    try:
        files = sorted(SAMPLE_STUDY.glob("*.dcm"))
        storescu(gateway.settings.port, files)
        assert orthanc.wait_for(len(files), timeout=30) == len(files)

        def stats() -> dict:
            return {s.destination: s for s in gateway.node.outbox.stats()}

        assert wait_until(lambda: stats()[orthanc.destination].done == len(files), 30)
        assert wait_until(lambda: stats()[down].last_error.startswith("refused: "), 30)
        assert stats()[down].pending == len(files)
    finally:
        stop(gateway)


class ScriptedPacs:
    """An in-process pynetdicom PACS answering C-STOREs from a script of statuses."""

    def __init__(self, statuses: list[int], port: int | None = None) -> None:
        self.statuses = statuses
        self.received: list[str] = []
        self.port = port or free_port()
        self.ae = AE(ae_title="SCRIPTED")
        for cx in AllStoragePresentationContexts:
            self.ae.add_supported_context(cx.abstract_syntax)
        self.ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.store)]
        )

    def store(self, event) -> int:
        status = self.statuses.pop(0) if self.statuses else 0x0000
        if status == 0x0000:
            self.received.append(event.request.AffectedSOPInstanceUID)
        return status

    @property
    def destination(self) -> str:
        return f"SCRIPTED@127.0.0.1:{self.port}"


def store_one_through(gateway: InProcessGateway, pacs: ScriptedPacs, seed: int):
    """One small CT instance stored at the gateway by a modality, once the PACS has it."""
    ds = next(ct_study(StudySpec(seed=seed, instances=1, rows=8, columns=8)))
    scu = AE(ae_title="MOD")
    scu.add_requested_context(CTImageStorage)
    assoc = scu.associate("127.0.0.1", gateway.settings.port, ae_title="DICOMCHAIN")
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    assert wait_until(lambda: pacs.received == [ds.SOPInstanceUID], 30)
    return ds


def test_busy_pacs_is_retried_until_it_stores(tmp_path, fast_retries):
    pacs = ScriptedPacs([0xA700, 0xA701, 0xA702])
    gateway = gateway_for(tmp_path, pacs.destination, workers=1)
    try:
        store_one_through(gateway, pacs, seed=5)

        def forwarded() -> list:
            return [e for e in gateway.node.ledger.iter_events() if e.type == "instance.forwarded"]

        assert wait_until(lambda: forwarded(), 10)  # settled just after the PACS answered
        [event] = forwarded()
        assert event.outcome == "success" and event.details["attempts"] == 4
    finally:
        stop(gateway)
        pacs.ae.shutdown()


def test_refusing_pacs_fails_for_good_with_its_status(tmp_path, fast_retries):
    pacs = ScriptedPacs([0xC123] * 50)
    gateway = gateway_for(tmp_path, pacs.destination, workers=1)
    try:
        ds = next(ct_study(StudySpec(seed=6, instances=1, rows=8, columns=8)))
        gateway.node.ingest(item_from_dataset(ds))
        gateway.forwarder.notify()
        assert wait_until(lambda: gateway.node.outbox.stats()[0].failed == 1, 30)
        [event] = [e for e in gateway.node.ledger.iter_events() if e.type == "instance.forwarded"]
        assert event.outcome == "major-failure" and event.details["status"] == "0xC123"
        command = [sys.executable, "-m", "dicom_chain.cli", "status", "--home", str(tmp_path / "gw")]
        status = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert "failed 1" in status.stdout and "0xC123" in status.stdout
    finally:
        stop(gateway)
        pacs.ae.shutdown()


def test_contexts_cover_stored_syntax_and_a_re_encoding_fallback():
    from dicom_chain.outbox import OutboxItem

    def item(sop_class: str, syntax: str) -> OutboxItem:
        return OutboxItem(1, "D", "h", "p", "1.2", sop_class, syntax, "1.3", "P", 0)

    contexts = contexts_for(
        [item(CTImageStorage, "1.2.840.10008.1.2.2"), item(CTImageStorage, "1.2.840.10008.1.2.4.50")]
    )
    pairs = [(str(cx.abstract_syntax), [str(t) for t in cx.transfer_syntax]) for cx in contexts]
    assert (CTImageStorage, ["1.2.840.10008.1.2.2"]) in pairs
    assert (CTImageStorage, ["1.2.840.10008.1.2.4.50"]) in pairs
    assert (CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]) in pairs


def test_kill_9_mid_study_loses_nothing(tmp_path, orthanc: OrthancServer):
    """kill -9 in the middle of a 200-instance study; restart; the modality re-sends what it got no
    Success for; every acknowledged instance is stored, chained and forwarded."""
    study = list(ct_study(StudySpec(seed=77, instances=200, rows=32, columns=32)))
    home = tmp_path / "gw"
    home.mkdir()
    args = ("--forward", orthanc.destination, "--forward-workers", "2")
    gateway = GatewayProcess(home, free_port(), args).start()
    acknowledged: list[str] = []
    killed = threading.Event()

    def killer() -> None:
        ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
        while ledger.block_count() < 80:
            time.sleep(0.01)
        ledger.close()
        gateway.kill9()
        killed.set()

    threading.Thread(target=killer, daemon=True).start()
    scu = AE(ae_title="CT_SCANNER")
    scu.add_requested_context(CTImageStorage)
    assoc = scu.associate("127.0.0.1", gateway.port, ae_title="DICOMCHAIN")
    for ds in study:
        if not assoc.is_established:
            break
        response = assoc.send_c_store(ds)
        if response is not None and getattr(response, "Status", None) == 0x0000:
            acknowledged.append(ds.SOPInstanceUID)
    # One instance at a time: the 80th block may have committed with its Success still in flight.
    assert killed.wait(60) and 79 <= len(acknowledged) < 200
    gateway = GatewayProcess(home, gateway.port, args).start()  # restart on the same home
    try:
        assoc = scu.associate("127.0.0.1", gateway.port, ae_title="DICOMCHAIN")
        for ds in study:  # the modality re-sends everything it has no Success for
            if ds.SOPInstanceUID not in acknowledged:
                assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
        assert orthanc.wait_for(200, timeout=180) == 200
        in_orthanc = {
            pydicom.dcmread(__import__("io").BytesIO(f)).SOPInstanceUID for f in orthanc.instance_files()
        }
        assert set(acknowledged) <= in_orthanc and len(in_orthanc) == 200
        ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
        try:
            from dicom_chain.storage import Storage

            report = verify_node(ledger, Storage(home / "storage"))
            assert report.ok, [f for f in report.errors]
            assert ledger.block_count() == 200
        finally:
            ledger.close()
        status = json.loads(subprocess.run(
            [sys.executable, "-m", "dicom_chain.cli", "status", "--json", "--home", str(home)],
            capture_output=True, text=True, timeout=60).stdout)  # fmt: skip
        assert status["chains"][0]["height"] == 199
    finally:
        gateway.stop()


def poisoned(ds, path: Path) -> Path:
    """``ds`` written with a private sequence (7FE1,0010) of 8 bytes that are no item: pydicom
    and the gateway take it (a private element they never look into), Orthanc's parser does not
    and aborts the association while receiving it (measured with Orthanc 1.10.1)."""
    import io
    import struct

    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    garbage = struct.pack("<HH", 0x7FE1, 0x0010) + b"SQ\0\0" + struct.pack("<I", 8) + bytes(range(1, 9))
    path.write_bytes(buffer.getvalue() + garbage)
    return path


def test_a_poison_instance_does_not_hold_up_its_study(tmp_path, orthanc: OrthancServer, fast_retries):
    """Orthanc aborts on the study's first instance; the 10 behind it arrive within seconds
    (before: each abort put the whole batch back with doubling back-off, poison first again,
    for minutes), and the poison is dead-lettered after forward_max_refusals, with its event."""
    study = list(ct_study(StudySpec(seed=91, instances=11, rows=8, columns=8)))
    settings = Settings(
        home=tmp_path / "gw",
        forward=(orthanc.destination,),
        host="127.0.0.1",
        port=free_port(),
        forward_workers=1,  # one worker: the poison is first in every batch it is due in
        forward_max_refusals=2,
    )
    gateway = InProcessGateway(Node.open(settings))
    try:
        poison = study[0]
        gateway.node.ingest_file(poisoned(poison, tmp_path / "poison.dcm"))
        for ds in study[1:]:
            gateway.node.ingest(item_from_dataset(ds))
        started = time.monotonic()
        gateway.start()
        assert orthanc.wait_for(10, timeout=40) == 10  # measured: ~11 s; before the fix, minutes
        waited = time.monotonic() - started
        print(f"the 10 good instances arrived {waited:.1f} s after forwarding started")
        assert wait_until(lambda: gateway.node.outbox.stats()[0].failed == 1, 30)
        stats = gateway.node.outbox.stats()[0]
        assert (stats.done, stats.pending, orthanc.count()) == (10, 0, 10), waited
        [dead] = gateway.node.outbox.dead_letters()
        assert dead.sop_instance_uid == poison.SOPInstanceUID
        failures = [
            e for e in gateway.node.ledger.iter_events()
            if e.type == "instance.forwarded" and e.outcome == "major-failure"
        ]  # fmt: skip
        assert [e.sop_uid for e in failures] == [poison.SOPInstanceUID]
        assert "association lost while sending" in failures[0].reason
    finally:
        stop(gateway)


def test_a_sop_class_the_pacs_refuses_is_dead_lettered_not_retried_forever(
    tmp_path, orthanc: OrthancServer, fast_retries
):
    """Alone in its batch, an instance of a SOP class Orthanc does not accept gets no association
    at all; before, that counted as "unreachable" and was retried for ever."""
    ds = next(ct_study(StudySpec(seed=92, instances=1, rows=8, columns=8)))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.826.0.1.3680043.9.9999.1"
    gateway = gateway_for(tmp_path, orthanc.destination, workers=1)
    try:
        gateway.node.ingest(item_from_dataset(ds))
        gateway.forwarder.notify()
        assert wait_until(lambda: gateway.node.outbox.stats()[0].failed == 1, 30)
        assert gateway.node.outbox.stats()[0].last_error.startswith("contexts: the PACS accepted none")
    finally:
        stop(gateway)


def test_forward_retry_replays_dead_letters_with_an_event(tmp_path, fast_retries):
    """``status`` shows the dead letter and the command to replay it; ``forward retry --sop``
    queues it again (an event naming who asked), and a PACS that now takes it stores it."""
    pacs = ScriptedPacs([0xC123] * 5)
    gateway = gateway_for(tmp_path, pacs.destination, workers=1)
    home = str(tmp_path / "gw")
    try:
        ds = next(ct_study(StudySpec(seed=93, instances=1, rows=8, columns=8)))
        gateway.node.ingest(item_from_dataset(ds))
        gateway.forwarder.notify()
        assert wait_until(lambda: gateway.node.outbox.stats()[0].failed == 1, 30)
        cli = [sys.executable, "-m", "dicom_chain.cli"]
        status = subprocess.run([*cli, "status", "--home", home], capture_output=True, text=True, timeout=60)
        assert "1 dead-lettered: dicom-chain forward retry" in status.stdout
        retry = [*cli, "forward", "retry", "--home", home, "--sop", ds.SOPInstanceUID]
        result = subprocess.run(retry, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "queued again: 1" in result.stdout, result.stderr
        gateway.forwarder.notify()
        assert wait_until(lambda: pacs.received == [ds.SOPInstanceUID], 30)
        assert wait_until(lambda: gateway.node.outbox.stats()[0].done == 1, 10)
        [replayed] = [e for e in gateway.node.ledger.iter_events() if e.type == "forward.replayed"]
        assert replayed.sop_uid == ds.SOPInstanceUID and "0xC123" in replayed.reason
        again = subprocess.run(retry, capture_output=True, text=True, timeout=60)
        assert again.returncode != 0 and "queued again: 0" in again.stdout  # nothing left to replay
    finally:
        stop(gateway)
        pacs.ae.shutdown()


def test_an_instance_pynetdicom_cannot_encode_is_dead_lettered(tmp_path, fast_retries, monkeypatch):
    """pynetdicom raises ValueError ("Failed to encode the supplied dataset") and the association
    stays up: the instance, not the network, is at fault; it used to be retried for ever."""
    from pynetdicom.association import Association

    pacs = ScriptedPacs([])
    gateway = gateway_for(tmp_path, pacs.destination, workers=1)
    original = Association.send_c_store
    study = list(ct_study(StudySpec(seed=94, instances=3, rows=8, columns=8)))
    unsendable = study[0].SOPInstanceUID

    def send_c_store(assoc, dataset, *args, **kwargs):
        if unsendable in str(dataset):  # the stored file's path names its SOP Instance UID
            raise ValueError("Failed to encode the supplied dataset")
        return original(assoc, dataset, *args, **kwargs)

    monkeypatch.setattr(Association, "send_c_store", send_c_store)
    try:
        for ds in study:
            gateway.node.ingest(item_from_dataset(ds))
        gateway.forwarder.notify()
        assert wait_until(lambda: gateway.node.outbox.stats()[0].failed == 1, 30)
        assert sorted(pacs.received) == sorted(ds.SOPInstanceUID for ds in study[1:])
        [dead] = gateway.node.outbox.dead_letters()
        assert dead.sop_instance_uid == unsendable
    finally:
        stop(gateway)
        pacs.ae.shutdown()


def test_a_forward_process_started_while_the_database_is_away_waits_for_it(tmp_path):
    """PostgreSQL restarting while serve starts its forward process: the process waits (and can
    still be stopped) instead of exiting and leaving the queue without a forwarder."""
    import threading

    from dicom_chain.config import Settings
    from scp.forwarder import _open_when_reachable

    away = Settings(home=tmp_path / "away", db="postgresql+psycopg://nobody@127.0.0.1:1/none")
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    assert _open_when_reachable(away, stop, None) is None  # waited, then told to stop: no exception
    here = _open_when_reachable(Settings(home=tmp_path / "here"), threading.Event(), None)
    assert here is not None
    here.close()


# -- Why a forward fails: one line with its cause, the batch back in the queue at once --


def closed_port() -> int:
    """A port nothing listens on: bound, then closed (the kernel answers RST to a connect)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def queued_one(tmp_path: Path, destination: str, seed: int) -> InProcessGateway:
    gateway = gateway_for(tmp_path, destination, workers=1)
    ds = next(ct_study(StudySpec(seed=seed, instances=1, rows=8, columns=8)))
    gateway.node.ingest(item_from_dataset(ds))
    gateway.forwarder.notify()
    return gateway


def outbox_row(gateway: InProcessGateway) -> OutboxRow:
    with gateway.node.ledger.db.reading() as session:
        [row] = session.scalars(select(OutboxRow)).all()
        session.expunge(row)
        return row


def status_output(gateway: InProcessGateway) -> str:
    result = CliRunner().invoke(main, ["status", "--home", str(gateway.settings.home)])
    assert result.exit_code == 0, result.output
    return result.output


def assert_failure_told(gateway: InProcessGateway, caplog, cause: str, detail: str) -> None:
    """The cause is stored and shown by status, the item was given back at once and tried again
    after its back-off, and the log says it in one line per attempt without a traceback."""
    assert wait_until(lambda: outbox_row(gateway).attempts >= 2, 30), outbox_row(gateway)
    row = outbox_row(gateway)
    assert row.state == "pending" and row.last_error.startswith(f"{cause}: "), row.last_error
    assert detail in row.last_error
    shown = status_output(gateway)
    assert f"last error: {cause}: " in shown and detail in shown, shown
    gateway.forwarder.stop()  # no attempt in flight: the row as the last one left it
    row = outbox_row(gateway)
    assert row.lease_owner == "" and row.lease_until == 0.0  # released at once, not after LEASE_S
    assert row.next_attempt_at > time.time() - 5  # due again after a back-off, not never
    ours = [r for r in caplog.records if r.name == "dicom_chain.forward"]
    assert not [r for r in ours if r.exc_info], "a traceback for an expected failure"
    told = [r.getMessage() for r in ours if r.levelname == "WARNING"]
    assert told and all(f"{cause}: " in line and "\n" not in line for line in told), told


def test_a_host_that_does_not_resolve_is_a_dns_failure(tmp_path, fast_retries, caplog):
    caplog.set_level(logging.INFO, logger="dicom_chain.forward")
    gateway = queued_one(tmp_path, "PACS@pacs.invalid:104", seed=21)  # RFC 2606: never resolves
    try:
        assert_failure_told(gateway, caplog, "dns", "pacs.invalid does not resolve")
    finally:
        stop(gateway)


def test_a_closed_port_is_a_refused_connection(tmp_path, fast_retries, caplog):
    caplog.set_level(logging.INFO, logger="dicom_chain.forward")
    port = closed_port()
    gateway = queued_one(tmp_path, f"PACS@127.0.0.1:{port}", seed=22)
    try:
        assert_failure_told(gateway, caplog, "refused", f"nothing listens on 127.0.0.1:{port}")
    finally:
        stop(gateway)


def test_a_pacs_that_rejects_the_association_says_why(tmp_path, fast_retries, caplog):
    caplog.set_level(logging.INFO, logger="dicom_chain.forward")
    pacs = ScriptedPacs([])
    pacs.ae.require_called_aet = True  # it answers to SCRIPTED only
    gateway = queued_one(tmp_path, f"WRONGAE@127.0.0.1:{pacs.port}", seed=23)
    try:
        reason = "A-ASSOCIATE-RJ rejected permanent, by the Service User: Called AE title not recognised"
        assert_failure_told(gateway, caplog, "rejected", reason)
        assert pacs.received == []
    finally:
        stop(gateway)
        pacs.ae.shutdown()


def test_a_failure_status_is_told_with_its_meaning(tmp_path, fast_retries, caplog):
    caplog.set_level(logging.INFO, logger="dicom_chain.forward")
    pacs = ScriptedPacs([0xC123] * 50)
    gateway = queued_one(tmp_path, pacs.destination, seed=24)
    try:
        assert_failure_told(gateway, caplog, "status", "0xC123 (Cannot Understand)")
    finally:
        stop(gateway)
        pacs.ae.shutdown()


def test_a_peer_that_closes_at_once_is_an_aborted_association(tmp_path, fast_retries, caplog):
    caplog.set_level(logging.INFO, logger="dicom_chain.forward")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def close_each() -> None:
        with contextlib.suppress(OSError):  # the listener is closed under it when the test ends
            for _ in range(10):
                listener.accept()[0].close()

    closing = threading.Thread(target=close_each, daemon=True)
    closing.start()
    gateway = queued_one(tmp_path, f"PACS@127.0.0.1:{port}", seed=25)
    try:
        assert_failure_told(gateway, caplog, "aborted", "closed the connection before answering")
    finally:
        stop(gateway)
        listener.close()


def test_a_bug_in_the_worker_gives_the_batch_back_at_once(tmp_path, fast_retries, caplog, monkeypatch):
    def broken(self, items):
        raise KeyError("planted")

    monkeypatch.setattr(DestinationWorker, "forward", broken)
    gateway = queued_one(tmp_path, "PACS@127.0.0.1:104", seed=26)
    try:
        assert wait_until(lambda: outbox_row(gateway).attempts >= 2, 30)
        gateway.forwarder.stop()
        row = outbox_row(gateway)
        assert row.last_error == "internal: KeyError: 'planted'" and row.lease_owner == ""
        assert [r for r in caplog.records if r.name == "dicom_chain.forward" and r.exc_info]  # a bug: traced
    finally:
        stop(gateway)


def test_a_ledger_that_is_away_is_one_line_not_a_traceback(tmp_path, fast_retries, caplog, monkeypatch):
    from dicom_chain.errors import LedgerUnavailable

    def away(self, items):
        raise LedgerUnavailable("database planted away")

    monkeypatch.setattr(DestinationWorker, "forward", away)
    gateway = queued_one(tmp_path, "PACS@127.0.0.1:104", seed=27)
    try:
        told = "forward to PACS@127.0.0.1:104: cannot record the batch: database planted away"
        assert wait_until(lambda: told in caplog.messages, 30)
        assert not [r for r in caplog.records if r.name == "dicom_chain.forward" and r.exc_info]
    finally:
        stop(gateway)


class CountingPacs(ScriptedPacs):
    """A PACS that counts the associations it received instances on, answers after ``delay_s``,
    and can close the open ones from its side (as a PACS's own idle timeout does)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.used: list = []  # the association objects themselves: an id() could be reused
        self.delay_s = delay_s
        super().__init__([])

    @property
    def associations(self) -> int:
        return len(self.used)

    def store(self, event) -> int:
        if not any(a is event.assoc for a in self.used):
            self.used.append(event.assoc)
        time.sleep(self.delay_s)
        return super().store(event)

    def close_all(self) -> None:
        for assoc in self.ae.active_associations:
            assoc.release()


def study_of(seed: int, instances: int = 1) -> list:
    return list(ct_study(StudySpec(seed=seed, instances=instances, rows=8, columns=8)))


def test_the_association_is_reused_across_batches_and_renewed_when_the_pacs_closes_it(tmp_path):
    pacs = CountingPacs()
    gateway = gateway_for(tmp_path, pacs.destination, workers=1)
    try:
        sent: list[str] = []
        for seed in (31, 32):  # two studies: two batches, one after the other
            [ds] = study_of(seed)
            gateway.node.ingest(item_from_dataset(ds))
            gateway.forwarder.notify()
            sent.append(ds.SOPInstanceUID)
            assert wait_until(lambda: pacs.received == sent, 30)
        assert pacs.associations == 1
        assert wait_until(lambda: gateway.forwarder.workers[0].assoc is not None, 10)
        pacs.close_all()  # the PACS's idle timeout, before ours
        [ds] = study_of(33)
        gateway.node.ingest(item_from_dataset(ds))
        gateway.forwarder.notify()
        sent.append(ds.SOPInstanceUID)
        assert wait_until(lambda: pacs.received == sent, 30)
        assert pacs.associations == 2
        with gateway.node.db.reading() as session:
            query = select(OutboxRow).where(OutboxRow.sop_instance_uid == ds.SOPInstanceUID)
            row = session.scalars(query).one()
        assert (row.state, row.refusals) == ("done", 0)  # a closed idle association is no refusal
    finally:
        stop(gateway)
        pacs.ae.shutdown()


def claimers(gateway: InProcessGateway, monkeypatch) -> set[str]:
    """The names of the worker threads whose claim leased something, as they claim."""
    names: set[str] = set()
    claim = gateway.node.outbox.claim

    def recording(*args, **kwargs):
        items = claim(*args, **kwargs)
        if items:
            names.add(threading.current_thread().name)
        return items

    monkeypatch.setattr(gateway.node.outbox, "claim", recording)
    return names


def test_while_a_modality_sends_only_two_workers_forward_then_all(tmp_path, monkeypatch):
    pacs = CountingPacs(delay_s=0.3)  # slow, so every worker allowed to would take a study
    settings = Settings(home=tmp_path / "gw", forward=(pacs.destination,), forward_workers=4)
    node = Node.open(settings)
    gateway = InProcessGateway(node)  # forwarding only: started below, the server never
    names = claimers(gateway, monkeypatch)
    try:
        for seed in range(40, 48):  # eight studies just received: a modality is sending
            node.ingest(item_from_dataset(study_of(seed)[0]))
        gateway.forwarder.start()
        assert wait_until(lambda: len(pacs.received) >= 4, 30)
        assert names == {"forward-SCRIPTED-0", "forward-SCRIPTED-1"}
        assert wait_until(lambda: len(pacs.received) == 8, 60)
        # The modality is done: a backlog queued longer ago than the window is drained by all four.
        monkeypatch.setattr(forwarder_module, "RECEIVING_WINDOW_S", 0.0)
        names.clear()
        for seed in range(50, 62):
            node.ingest(item_from_dataset(study_of(seed)[0]))
        gateway.forwarder.notify()
        assert wait_until(lambda: len(pacs.received) == 20, 60)
        assert names == {f"forward-SCRIPTED-{n}" for n in range(4)}
    finally:
        gateway.forwarder.stop()
        node.close()
        pacs.ae.shutdown()


# -- A destination that is down costs nothing per instance received (dicom_chain/breaker.py) --


def forward_events(gateway: InProcessGateway) -> list:
    return [e for e in gateway.node.ledger.iter_events() if e.type.startswith(("forward.", "instance.forw"))]


def test_a_destination_that_is_down_is_probed_not_tried_per_instance_then_drained(tmp_path, monkeypatch):
    """While nothing listens, the instances a modality sends are not leased one batch each but
    wait behind a probe with back-off: far fewer associations than instances, no attempt on an
    instance never tried, one forward.down event. Once a PACS listens, the next probe closes the
    breaker and everything queued is delivered within the probe delay, with one forward.up."""
    monkeypatch.setattr(outbox_module, "BACKOFF_FIRST_S", 0.3)  # the breaker's schedule too
    monkeypatch.setattr(outbox_module, "BACKOFF_MAX_S", 1.0)
    tries: list[float] = []
    associate = DestinationWorker.associate

    def counting(self, items):
        tries.append(time.monotonic())
        return associate(self, items)

    monkeypatch.setattr(DestinationWorker, "associate", counting)
    port = closed_port()
    gateway = gateway_for(tmp_path, f"SCRIPTED@127.0.0.1:{port}", workers=4)
    pacs = None
    try:
        [first] = study_of(70)
        gateway.node.ingest(item_from_dataset(first))
        gateway.forwarder.notify()
        assert wait_until(lambda: [e.type for e in forward_events(gateway)] == ["forward.down"], 10)
        [down] = forward_events(gateway)
        assert down.actor == f"SCRIPTED@127.0.0.1:{port}" and down.outcome == "minor-failure"
        assert down.reason.startswith("refused: nothing listens") and down.details["cause"] == "refused"
        shown = status_output(gateway)
        assert "down since " in shown and "refused: nothing listens" in shown, shown

        folder = tmp_path / "study"
        folder.mkdir()
        files = []
        for i, ds in enumerate(study_of(71, instances=40)):
            files.append(folder / f"{i}.dcm")
            ds.save_as(files[-1], enforce_file_format=True)
        before, started = len(tries), time.monotonic()
        storescu(gateway.settings.port, files)
        time.sleep(2.0)  # several probe delays: the probes go on, the instances wait
        during, elapsed = len(tries) - before, time.monotonic() - started
        print(f"{during} association attempts while 40 instances arrived and 2 s after ({elapsed:.1f} s)")
        # One per probe, the delays 0.3 s, 0.6 s, then 1 s (+-20%), however slow the box: not one
        # per batch leased (19 without the breaker, on an idle machine).
        assert during <= 3 + elapsed / 0.8 and during < 10, (during, elapsed)
        with gateway.node.db.reading() as session:
            rows = session.scalars(select(OutboxRow)).all()
            tried = [r for r in rows if r.attempts]
            assert len(rows) == 41 and {r.state for r in rows} == {"pending"}
        assert len(tried) <= len(tries)  # a probe leases one instance: only those got an attempt
        assert [e.type for e in forward_events(gateway)] == ["forward.down"]  # nothing per instance

        pacs = ScriptedPacs([], port=port)  # the PACS comes up
        up_at = time.monotonic()
        assert wait_until(lambda: len(pacs.received) == 41, 20), len(pacs.received)
        took = time.monotonic() - up_at
        print(f"all 41 queued instances delivered {took:.1f} s after the PACS came up")
        # The next probe is due within the capped delay (1 s +20%), then one batch after another.
        assert took < 1.2 + 8.0, took
        assert wait_until(lambda: gateway.node.outbox.pending_count() == 0, 10)
        events = forward_events(gateway)
        assert [e.type for e in events[:2]] == ["forward.down", "forward.up"]
        assert [e.type for e in events[2:]] == ["instance.forwarded"] * 41
        assert events[1].actor == down.actor and events[1].reason.startswith("reachable again after ")
        assert "down since" not in status_output(gateway)
        with gateway.node.db.reading() as session:
            never = [r for r in session.scalars(select(OutboxRow)) if r.id not in {t.id for t in tried}]
            assert never and all(r.attempts == 1 for r in never)  # sent once, when it could be
    finally:
        stop(gateway)
        if pacs is not None:
            pacs.ae.shutdown()


def test_a_restarted_forwarder_closes_the_outage_its_predecessor_recorded(tmp_path, fast_retries):
    """The breaker lives in the forward process's memory; the ledger's last word does not. A
    forwarder started while the ledger says "down" probes at once and, once it gets through,
    records the end of that outage (and no second forward.down while it stays down)."""
    port = closed_port()
    gateway = queued_one(tmp_path, f"SCRIPTED@127.0.0.1:{port}", seed=72)
    try:
        assert wait_until(lambda: [e.type for e in forward_events(gateway)] == ["forward.down"], 10)
    finally:
        stop(gateway)
    pacs = ScriptedPacs([], port=port)
    gateway = InProcessGateway(Node.open(gateway.settings))
    try:
        gateway.start()
        assert wait_until(lambda: len(pacs.received) == 1, 10)
        assert wait_until(lambda: len(forward_events(gateway)) == 3, 10)
        expected = ["forward.down", "forward.up", "instance.forwarded"]
        assert [e.type for e in forward_events(gateway)] == expected
    finally:
        stop(gateway)
        pacs.ae.shutdown()


def test_the_forwarder_acks_each_pdu_at_once(tmp_path, monkeypatch):
    """A PACS that keeps Nagle on (DCMTK's, Orthanc's) holds its response's second segment for our
    ACK: on the forwarder's association each PDU's header re-arms TCP_QUICKACK as it is read."""
    from scp import receive

    armed: list[int] = []  # the peer port of each socket re-armed

    def counting(raw) -> None:
        armed.append(raw.getpeername()[1])
        real(raw)

    real = receive.ack_at_once
    monkeypatch.setattr(receive, "ack_at_once", counting)
    pacs = ScriptedPacs([])
    gateway = gateway_for(tmp_path, pacs.destination, workers=1)
    try:
        store_one_through(gateway, pacs, seed=6)
        assert pacs.port in armed, armed  # A-ASSOCIATE-AC and the C-STORE-RSP, at least
    finally:
        stop(gateway)
        pacs.ae.shutdown()


def test_while_a_modality_sends_a_worker_gathers_its_next_batch(tmp_path, monkeypatch):
    """A batch that was not full is followed by a pause (GATHER_S) while instances keep coming:
    the next lease holds what arrived meanwhile instead of one instance each."""
    monkeypatch.setattr(forwarder_module, "GATHER_S", 1.5)
    monkeypatch.setattr(forwarder_module.Forwarder, "receiving", lambda self: True)
    pacs = ScriptedPacs([])
    gateway = gateway_for(tmp_path, pacs.destination, workers=1)
    batches: list[int] = []
    real = gateway.node.outbox.claim

    def claim(destination, limit, now=None):
        items = real(destination, limit, now)
        if items:
            batches.append(len(items))
        return items

    monkeypatch.setattr(gateway.node.outbox, "claim", claim)
    try:
        first = store_one_through(gateway, pacs, seed=11)  # leased alone: nothing else was there
        more = list(ct_study(StudySpec(seed=12, instances=3, rows=8, columns=8)))
        scu = AE(ae_title="MOD")
        scu.add_requested_context(CTImageStorage)
        assoc = scu.associate("127.0.0.1", gateway.settings.port, ae_title="DICOMCHAIN")
        assert [assoc.send_c_store(ds).Status for ds in more] == [0, 0, 0]
        assoc.release()
        assert wait_until(lambda: len(pacs.received) == 4, 30)
    finally:
        stop(gateway)
        pacs.ae.shutdown()
    assert pacs.received[0] == first.SOPInstanceUID
    assert batches == [1, 3]
