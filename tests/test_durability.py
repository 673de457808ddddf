"""Bad days for the whole gateway, counted: kill -9, a full disk, PostgreSQL stopped mid-study.

Each scenario runs ``dicom-chain serve`` as a real process forwarding to a real Orthanc, on
SQLite and on PostgreSQL, and ends with the same books: every instance sent was in the end
acknowledged (a modality re-sends what got no Success, as DCMTK and PACS do), and
acknowledged == stored (ledger blocks, files) == forwarded (in Orthanc), with ``verify_node``
green. ``test_forwarder.py`` keeps the longer 200-instance kill -9 on SQLite; ``test_handlers.py``
the in-process full disk with the ledger on the same disk.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from dicom_chain.ledger import Ledger
from dicom_chain.storage import Storage
from dicom_chain.synthetic import StudySpec, ct_study
from dicom_chain.verify import verify_node
from scp.statuses import OUT_OF_RESOURCES

from .peers import GatewayProcess, OrthancServer, PostgresServer, free_port, wait_until
from .test_handlers import _fill, small_disk  # noqa: F401 - small_disk is a fixture

FORWARD_DEADLINE_S = 120  # Orthanc on a loaded 2-core box, after back-off from an outage


@dataclass
class Books:
    """What a modality knows: what it sent and what got Success."""

    sent: set[str] = field(default_factory=set)
    acknowledged: set[str] = field(default_factory=set)
    refused: dict[int, int] = field(default_factory=dict)  # status -> count

    def send(self, assoc, ds: Dataset) -> int | None:
        self.sent.add(ds.SOPInstanceUID)
        response = assoc.send_c_store(ds) if assoc.is_established else None
        status = getattr(response, "Status", None) if response is not None else None
        if status == 0x0000:
            self.acknowledged.add(ds.SOPInstanceUID)
        elif status is not None:
            self.refused[status] = self.refused.get(status, 0) + 1
        return status


def modality() -> AE:
    scu = AE(ae_title="CT_SCANNER")
    scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = 60
    scu.add_requested_context(CTImageStorage)
    scu.add_requested_context(Verification)
    return scu


def associate(port: int):
    assoc = modality().associate("127.0.0.1", port, ae_title="DICOMCHAIN")
    assert assoc.is_established
    return assoc


def balanced(gateway: GatewayProcess, db: str, storage: Path, orthanc: OrthancServer, books: Books) -> None:
    """acknowledged == sent == stored == forwarded, and the node verifies."""
    assert books.acknowledged == books.sent
    in_orthanc = orthanc.wait_for(len(books.sent), timeout=FORWARD_DEADLINE_S)
    ledger = Ledger(db)
    try:
        report = verify_node(ledger, Storage(storage))
        assert report.ok, report.errors
        files = list(Storage(storage).iter_files())
        stored = {
            pydicom.dcmread(Storage(storage).path(f), stop_before_pixels=True).SOPInstanceUID for f in files
        }
        counts = (len(books.sent), len(books.acknowledged), ledger.block_count(), len(files), in_orthanc)
    finally:
        ledger.close()
    assert counts == (len(books.sent),) * 5, "sent, acknowledged, blocks, files, forwarded: " + repr(counts)
    assert stored == books.acknowledged
    forwarded = {
        pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True).SOPInstanceUID
        for f in orthanc.instance_files()
    }
    assert forwarded == books.acknowledged  # each exactly once: Orthanc counts instances by SOP UID


def study(seed: int, instances: int) -> list[Dataset]:
    return list(ct_study(StudySpec(seed=seed, instances=instances, rows=16, columns=16)))


KILL_AT = 25  # blocks in the ledger when kill -9 lands: mid-study, with forwarding under way
KILL_STUDY = 60


def test_kill_9_mid_study_acknowledged_equals_stored_equals_forwarded(tmp_path, db_url, orthanc):
    home = tmp_path / "gw"
    home.mkdir()
    args = ("--db", db_url, "--forward", orthanc.destination, "--forward-workers", "2")
    gateway = GatewayProcess(home, free_port(), args).start()
    books = Books()
    instances = study(131, KILL_STUDY)
    killed = threading.Event()

    def killer() -> None:
        ledger = Ledger(db_url)
        try:
            while ledger.block_count() < KILL_AT:
                time.sleep(0.005)
        finally:
            ledger.close()
        gateway.kill9()
        killed.set()

    threading.Thread(target=killer, daemon=True).start()
    assoc = associate(gateway.port)
    for ds in instances:
        if books.send(assoc, ds) is None:
            break
    assert killed.wait(60)
    before = set(books.acknowledged)
    assert KILL_AT - 1 <= len(before) < KILL_STUDY  # the kill landed mid-study
    gateway = GatewayProcess(home, gateway.port, args).start()
    try:
        ledger = Ledger(db_url)
        try:  # nothing acknowledged was lost to the kill; at most the one in flight was kept unanswered
            assert len(before) <= ledger.block_count() <= len(before) + 1
        finally:
            ledger.close()
        assoc = associate(gateway.port)
        for ds in instances:  # the modality re-sends what it has no Success for
            if ds.SOPInstanceUID not in books.acknowledged:
                assert books.send(assoc, ds) == 0x0000
        assoc.release()
        balanced(gateway, db_url, home / "storage", orthanc, books)
    finally:
        gateway.stop()


def test_a_full_disk_is_a700_then_acknowledged_equals_stored_equals_forwarded(
    tmp_path,
    db_url,
    orthanc,
    small_disk,  # noqa: F811 - the fixture imported above
):
    """The store on a disk with 0 bytes free (ledger elsewhere: on SQLite beside home, or
    PostgreSQL): every C-STORE meanwhile is A700, echo still answered; room again, the re-sends
    are stored and everything is forwarded once."""
    home = tmp_path / "gw"
    home.mkdir()
    storage = small_disk / "store"
    args = ("--db", db_url, "--storage", str(storage), "--forward", orthanc.destination)
    gateway = GatewayProcess(home, free_port(), args).start()
    books = Books()
    instances = study(132, 12)
    try:
        assoc = associate(gateway.port)
        for ds in instances[:4]:
            assert books.send(assoc, ds) == 0x0000
        filler = _fill(small_disk)
        for ds in instances[4:8]:
            assert books.send(assoc, ds) == OUT_OF_RESOURCES
        assert assoc.send_c_echo().Status == 0x0000
        filler.unlink()
        for ds in instances[4:]:
            assert books.send(assoc, ds) == 0x0000
        assoc.release()
        assert books.refused == {OUT_OF_RESOURCES: 4}
        balanced(gateway, db_url, storage, orthanc, books)
    finally:
        gateway.stop()


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own, to stop and start without harming the others."""
    server = PostgresServer.start()
    yield server
    server.stop()


OUTAGE_STORES = 5  # C-STOREs sent while PostgreSQL is down


@pytest.mark.postgres
def test_postgresql_stopped_mid_study_is_a700_then_the_gateway_recovers(tmp_path, own_postgres, orthanc):
    db_url = own_postgres.create_database()
    home = tmp_path / "gw"
    home.mkdir()
    args = ("--db", db_url, "--forward", orthanc.destination)
    gateway = GatewayProcess(home, free_port(), args).start()
    books = Books()
    instances = study(133, 20)
    try:
        assoc = associate(gateway.port)
        for ds in instances[:8]:
            assert books.send(assoc, ds) == 0x0000
        own_postgres.pause()
        outage = instances[8 : 8 + OUTAGE_STORES]
        for ds in outage:
            assert books.send(assoc, ds) == OUT_OF_RESOURCES, gateway.log()[-3000:]
        assert assoc.send_c_echo().Status == 0x0000  # the DICOM side stays up meanwhile
        own_postgres.resume()
        # The first store after the outage may meet a pooled connection the restart cut; it must
        # still be an A700 at worst (retry), and the modality's retry then gets through.
        for ds in instances[8:]:
            status = books.send(assoc, ds)
            if status == OUT_OF_RESOURCES:
                status = books.send(assoc, ds)
            assert status == 0x0000, gateway.log()[-3000:]
        assoc.release()
        assert gateway.proc is not None and gateway.proc.poll() is None
        assert wait_until(gateway.forward_children, 10), "the forward process did not survive the outage"
        balanced(gateway, db_url, home / "storage", orthanc, books)
        assert books.refused.get(OUT_OF_RESOURCES, 0) >= OUTAGE_STORES
    finally:
        gateway.stop()
