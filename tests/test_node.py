"""Ingest: hash, sign, embed, write durably, record; idempotent per content; nothing half-written."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pydicom
import pytest

from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.carriers.dicom.embedding import read_block
from dicom_chain.config import Settings
from dicom_chain.errors import LedgerError, MalformedDatasetError, StorageError, VersionRefused
from dicom_chain.ledger import Appender
from dicom_chain.node import Node
from dicom_chain.versions import versions_of

from .conftest import fresh, read


def test_ingest_stores_a_chained_file_and_records_receipt(node: Node):
    result = node.ingest(item_from_dataset(read("CT_small.dcm")), actor="CT1")
    assert result.outcome == "stored" and result.version == 1
    on_disk = pydicom.dcmread(result.path)
    assert read_block(on_disk) == result.block
    assert on_disk.SOPInstanceUID in str(result.path)
    [event] = list(node.ledger.iter_events())
    assert (event.type, event.actor, event.sop_uid) == ("instance.received", "CT1", on_disk.SOPInstanceUID)
    assert event.details["block_hash"] == result.block.hash


def test_study_links_follow_arrival_order(node: Node, small_study):
    blocks = [node.ingest(item_from_dataset(fresh(ds))).block for ds in small_study]
    assert [b.header.height for b in blocks] == list(range(len(small_study)))
    assert [b.header.study_index for b in blocks] == list(range(len(small_study)))
    for prev, cur in itertools.pairwise(blocks):
        assert cur.header.prev_hash == prev.hash == cur.header.study_prev_hash


def test_same_content_again_is_acknowledged_without_a_new_block(node: Node):
    first = node.ingest(item_from_dataset(read("MR_small.dcm")))
    again = node.ingest(
        item_from_dataset(read("MR_small_bigendian.dcm"))
    )  # same instance, another transfer syntax
    assert again.outcome == "duplicate" and again.block == first.block
    assert node.ledger.block_count() == 1
    assert [e.reason for e in node.ledger.iter_events()] == ["stored", "duplicate"]


def test_changed_content_becomes_a_new_version_never_an_overwrite(node: Node):
    first = node.ingest(item_from_dataset(read("MR_small.dcm")))
    changed = read("MR_small.dcm")
    changed.PatientName = "CORRECTED^NAME"
    second = node.ingest(item_from_dataset(changed))
    assert second.outcome == "new-version" and second.version == 2
    assert second.path != first.path and first.path.exists()
    assert read_block(pydicom.dcmread(first.path)) == first.block
    assert second.block.header.prev_hash == first.block.hash


def test_only_the_original_sender_or_a_corrector_makes_a_new_version(node: Node):
    """Who may replace what every C-GET then serves: the AE that sent it, or one granted 'correct'."""
    first = node.ingest(item_from_dataset(read("MR_small.dcm")), actor="MR1", may_correct=False)
    forged = read("MR_small.dcm")
    forged.PatientName = "SOMEONE^ELSE"
    with pytest.raises(VersionRefused, match="original sent by MR1"):
        node.ingest(item_from_dataset(forged), actor="INTRUDER", may_correct=False)
    assert node.ledger.block_count() == 1 and sorted(p.name for p in first.path.parent.iterdir()) == [
        first.path.name
    ]
    refused = [e for e in node.ledger.iter_events() if e.type == "instance.refused"]
    assert [(e.actor, e.sop_uid) for e in refused] == [("INTRUDER", forged.SOPInstanceUID)]
    assert "MR1" in refused[0].reason
    # the same content from anyone is still a duplicate, not a version
    assert (
        node.ingest(item_from_dataset(read("MR_small.dcm")), actor="OTHER", may_correct=False).outcome
        == "duplicate"
    )
    corrected = read("MR_small.dcm")
    corrected.PatientName = "CORRECTED^BY^MR1"
    assert node.ingest(item_from_dataset(corrected), actor="MR1", may_correct=False).version == 2
    assert node.ingest(item_from_dataset(forged), actor="QA", may_correct=True).version == 3
    with node.db.reading() as session:
        versions = versions_of(session, node.chain_id, forged.SOPInstanceUID)
    assert [(v.version, v.sender) for v in versions] == [(1, "MR1"), (2, "MR1"), (3, "QA")]
    # the original's sender decides, not the newest version's: QA's version does not make QA the owner
    again = read("MR_small.dcm")
    again.PatientName = "FOURTH"
    with pytest.raises(VersionRefused):
        node.ingest(item_from_dataset(again), actor="QA", may_correct=False)


def test_lost_file_of_a_known_instance_is_restored_from_the_ledger(node: Node):
    first = node.ingest(item_from_dataset(read("CT_small.dcm")))
    first.path.unlink()
    again = node.ingest(item_from_dataset(read("CT_small.dcm")))
    assert again.outcome == "restored"
    assert read_block(pydicom.dcmread(first.path)) == first.block


def test_dataset_without_sop_instance_uid_is_refused(node: Node):
    ds = read("CT_small.dcm")
    del ds.SOPInstanceUID
    with pytest.raises(MalformedDatasetError, match="SOPInstanceUID"):
        node.ingest(item_from_dataset(ds))
    assert node.ledger.block_count() == 0


def test_ledger_failure_after_the_write_leaves_no_file(node: Node, monkeypatch):
    def refuse(*args, **kwargs):
        raise LedgerError("simulated constraint failure")

    monkeypatch.setattr(Appender, "add_block", refuse)
    with pytest.raises(LedgerError):
        node.ingest(item_from_dataset(read("CT_small.dcm")))
    assert list(node.storage.iter_files()) == []
    assert node.ledger.block_count() == 0 and node.ledger.event_count() == 0


def test_unwritable_store_is_a_storage_error_and_nothing_is_recorded(settings: Settings):
    """The store's folder is a plain file (a mount gone wrong): even root cannot write there."""
    node = Node.open(settings)
    settings.storage_dir.parent.mkdir(parents=True, exist_ok=True)
    settings.storage_dir.write_bytes(b"not a folder")
    try:
        with pytest.raises(StorageError):
            node.ingest(item_from_dataset(read("CT_small.dcm")))
        assert node.ledger.block_count() == 0 and node.ledger.event_count() == 0
    finally:
        node.close()


def test_full_disk_is_a_storage_error_and_nothing_is_recorded(node: Node, monkeypatch):
    """ENOSPC from the kernel, injected at the one call that writes bytes."""
    import errno

    real_fsync = os.fsync

    def no_space(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".incoming-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StorageError, match="No space"):
        node.ingest(item_from_dataset(read("CT_small.dcm")))
    monkeypatch.undo()
    assert list(node.storage.iter_files()) == []
    assert not [p for p in Path(node.storage.root).rglob("*") if p.is_file()]
    assert node.ledger.block_count() == 0


def test_key_and_database_live_beside_each_other(settings: Settings, node: Node):
    assert settings.key_path.parent == settings.home
    assert (settings.home / "ledger.db").exists()
    assert oct(settings.key_path.stat().st_mode & 0o777) == "0o600"


_DIE_AFTER_RENAME = """
import os, sys
from pathlib import Path
import pydicom
from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.config import Settings
from dicom_chain.node import Node
from dicom_chain.storage import PendingWrite

durable = PendingWrite.wait

def die(self):
    durable(self)
    os._exit(9)  # killed once the file is durable under its name, before the ledger commit

PendingWrite.wait = die
node = Node.open(Settings(home=Path(sys.argv[1])))
node.ingest(item_from_dataset(pydicom.dcmread(sys.argv[2])))
"""


def test_a_write_cut_off_by_a_dying_process_is_undone_on_restart(tmp_path):
    import subprocess
    import sys

    from dicom_chain.verify import verify_node

    from .conftest import pydicom_file

    home = tmp_path / "node"
    result = subprocess.run(
        [sys.executable, "-c", _DIE_AFTER_RENAME, str(home), str(pydicom_file("CT_small.dcm"))]
    )
    assert result.returncode == 9
    node = Node(Settings(home=home), *_open_parts(home))  # no recovery yet: the orphan is visible
    orphans = list(node.storage.iter_files())
    assert len(orphans) == 1 and [f.kind for f in verify_node(node.ledger, node.storage).errors] == [
        "foreign-file"
    ]
    node.close()
    node = Node.open(Settings(home=home))  # recovery runs on open
    try:
        assert list(node.storage.iter_files()) == []
        assert verify_node(node.ledger, node.storage).ok
        assert [e.type for e in node.ledger.iter_events()] == ["storage.recovered"]
        assert (
            node.ingest(item_from_dataset(read("CT_small.dcm"))).outcome == "stored"
        )  # the re-send is stored normally
    finally:
        node.close()


def _open_parts(home):
    from dicom_chain.keys import NodeKey
    from dicom_chain.ledger import Ledger
    from dicom_chain.storage import Storage

    settings = Settings(home=home)
    return NodeKey.load_or_create(settings.key_path), Ledger(settings.db_url), Storage(settings.storage_dir)


def _leave_intent(node: Node, owner, relative: str, age_s: float = 0.0) -> None:
    """A file written for an instance and an intent for it in ``owner``'s journal, as a process
    that was cut off between its file and its commit leaves them."""
    from .test_intents import leave_journal

    node.storage.path(relative).parent.mkdir(parents=True, exist_ok=True)
    node.storage.path(relative).write_bytes(b"written, never committed")
    folder, name = relative.rsplit("/", 1)
    assert node.intents.folder is not None
    leave_journal(node.intents.folder, owner, [(folder, name.split(".v")[0].removesuffix(".dcm"))], age_s)


def _intent_count(node: Node) -> int:
    from dicom_chain import journal

    assert node.intents.folder is not None and node.intents.journal is not None
    own = node.intents.journal.path  # this process's: lines of committed receipts stay till cut back
    return sum(len(f.entries) for f in journal.read_all(node.intents.folder) if f.path != own)


def test_only_intents_judged_dead_here_are_undone(node: Node):
    """A dead process of this host and boot, and a reused pid (this very pid, another start time):
    undone. This living process, and another host (its pids mean nothing here): left alone."""
    from dataclasses import replace

    from dicom_chain.db import owners

    me = owners.current()
    _leave_intent(node, replace(me, pid=999_999_999), "1.2/1.2.3/1.2.3.4.dcm")
    _leave_intent(node, replace(me, started=me.started + 1), "1.2/1.2.3/1.2.3.5.v2.dcm")
    _leave_intent(node, me, "1.2/1.2.3/1.2.3.6.dcm")
    _leave_intent(node, replace(me, host="other-host", pid=1), "1.2/1.2.3/1.2.3.7.dcm")
    dead = next(node.intents.folder.glob("999999999-*.log"))  # type: ignore[union-attr]
    dead.with_suffix(".tmp").write_text("a rewrite cut off by the kill")
    assert sorted(node.recover()) == ["1.2/1.2.3/1.2.3.4.dcm", "1.2/1.2.3/1.2.3.5.v2.dcm"]
    assert sorted(node.storage.iter_files()) == ["1.2/1.2.3/1.2.3.6.dcm", "1.2/1.2.3/1.2.3.7.dcm"]
    assert sorted(p.suffix for p in node.intents.folder.iterdir()) == [".log", ".log"]  # type: ignore[union-attr]
    assert _intent_count(node) == 2
    recovered = [e.details["path"] for e in node.ledger.iter_events() if e.type == "storage.recovered"]
    assert sorted(recovered) == ["1.2/1.2.3/1.2.3.4.dcm", "1.2/1.2.3/1.2.3.5.v2.dcm"]


def test_another_host_s_intent_is_taken_over_only_past_its_expiry(node: Node):
    from dataclasses import replace

    from dicom_chain.db import owners
    from dicom_chain.intents import INTENT_EXPIRY_S

    other = replace(owners.current(), host="other-host", pid=1)
    _leave_intent(node, other, "9/9.1/9.1.1.dcm", age_s=INTENT_EXPIRY_S - 60)
    assert node.recover() == [] and _intent_count(node) == 1
    _leave_intent(node, other, "9/9.1/9.1.2.dcm", age_s=INTENT_EXPIRY_S + 60)
    assert node.recover() == ["9/9.1/9.1.2.dcm"] and _intent_count(node) == 1


def test_a_dead_process_s_committed_file_stays(node: Node):
    from dataclasses import replace

    from dicom_chain.db import owners

    # committed, then (say) killed before the intent went
    result = node.ingest(item_from_dataset(read("CT_small.dcm")))
    relative = result.path.relative_to(node.storage.root).as_posix()
    second = relative.removesuffix(".dcm") + ".v2.dcm"
    _leave_intent(node, replace(owners.current(), pid=999_999_999), second)
    assert node.recover() == [second]  # its uncommitted second version goes, the first stays
    assert list(node.storage.iter_files()) == [relative] and _intent_count(node) == 0


def _named(sop_uid: str, name: str = "") -> pydicom.Dataset:
    ds = read("CT_small.dcm")
    ds.SOPInstanceUID = sop_uid
    if name:
        ds.PatientName = name
    return ds


@pytest.mark.parametrize(
    "sent",
    [
        [_named("1.2.840.99999.1 7"), _named("1.2.840.99999.1_7_c62e6b8eb456")],  # sanitised alike
        [_named("1.2.840.99999.1"), _named("1.2.840.99999.1", "NEW^VERSION"), _named("1.2.840.99999.1.v2")],
    ],
    ids=["sanitised-name", "version-name"],
)
def test_items_whose_names_once_collided_each_keep_their_file(node: Node, sent):
    """Each stored instance keeps its own file, and the node verifies afterwards (before, the
    later write replaced the earlier file and ``verify --db`` called the earlier block re-ordered)."""
    from dicom_chain.verify import verify_node

    results = [node.ingest(item_from_dataset(ds)) for ds in sent]
    assert [r.outcome for r in results][-1] == "stored" and len({r.path for r in results}) == len(sent)
    for result in results:
        assert read_block(pydicom.dcmread(result.path)) == result.block
    report = verify_node(node.ledger, node.storage)
    assert report.ok, report.findings


def test_a_file_no_block_names_is_cleared_and_one_a_block_names_is_never_replaced(node: Node, monkeypatch):
    """A leftover of a receipt that never committed gives way; a file the ledger names, where a
    new version now goes (a SOP named ``X.v2`` stored verbatim by the naming rule before), is
    refused and stays as it was."""
    from dicom_chain import node as node_module
    from dicom_chain.errors import PathTakenError
    from dicom_chain.storage import relative_path

    ds = _named("1.2.840.99999.2")
    rel = relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, 1, suffix=".dcm")
    node.storage.write(rel, [b"leftover of a killed writer"])
    first = node.ingest(item_from_dataset(ds))
    assert first.outcome == "stored" and read_block(pydicom.dcmread(first.path)) == first.block

    def old_rule(group: str, series: str, item: str, version: int, *, suffix: str) -> str:
        return f"{group}/{series}/{item}" + (suffix if version == 1 else f".v{version}{suffix}")

    with monkeypatch.context() as patch:
        patch.setattr(node_module, "relative_path", old_rule)
        legacy = node.ingest(item_from_dataset(_named("1.2.840.99999.2.v2")))
    changed = _named("1.2.840.99999.2", "CHANGED")
    with pytest.raises(PathTakenError):
        node.ingest(item_from_dataset(changed))
    assert read_block(pydicom.dcmread(legacy.path)) == legacy.block
    assert read_block(pydicom.dcmread(first.path)) == first.block and node.ledger.block_count() == 2


@pytest.mark.parametrize(
    ("keyword", "value", "kept"),
    [
        ("PatientID", "P" * 65, False),  # LO holds 64: refused on every database alike
        ("PatientID", "A\x00B", False),
        ("PatientName", "DOE\x00^JOHN", True),  # the index drops the NUL; the file keeps it
        ("StudyDescription", "HE\x00AD", True),
    ],
)
def test_values_postgresql_cannot_hold_are_refused_or_kept_safely(
    db_url: str, tmp_path, keyword, value, kept
):
    """A NUL in a value, or a PatientID over 64 characters: C000 or stored, never 0110 (PostgreSQL
    refused them at the commit as a plain ledger error)."""
    from dicom_chain.verify import verify_node
    from scp.statuses import CANNOT_UNDERSTAND, store_status

    node = Node.open(Settings(home=tmp_path / "n", db=db_url))
    try:
        ds = read("CT_small.dcm")
        setattr(ds, keyword, value)
        if kept:
            result = node.ingest(item_from_dataset(ds))
            assert pydicom.dcmread(result.path)[keyword].value == value
            assert verify_node(node.ledger, node.storage).ok
        else:
            with pytest.raises(MalformedDatasetError) as refused:
                node.ingest(item_from_dataset(ds))
            assert store_status(refused.value) == CANNOT_UNDERSTAND
            assert node.ledger.block_count() == 0 and list(node.storage.iter_files()) == []
    finally:
        node.close()


def test_a_dataset_pydicom_cannot_encode_is_refused_not_retried(node: Node):
    """Our group taken by another creator, so pydicom writes the file, and a command element
    (0000,0900) at the top of the dataset, which pydicom refuses to write: the item's fault, C000
    (it was a StorageError, A700: the modality retried it forever)."""
    from io import BytesIO

    from pydicom.dataset import FileMetaDataset
    from pydicom.filereader import read_dataset
    from pydicom.uid import ExplicitVRLittleEndian

    from dicom_chain.carriers.dicom.carrier import DICOM
    from scp.statuses import CANNOT_UNDERSTAND, store_status

    from .test_handlers import encode_body

    ds = read("CT_small.dcm")
    ds.add_new(0x00710010, "LO", "OTHER CREATOR")
    body = b"\x00\x00\x00\x09US\x02\x00\x00\x00" + encode_body(ds, ExplicitVRLittleEndian)
    received = read_dataset(BytesIO(body), is_implicit_VR=False, is_little_endian=True)
    received.file_meta = FileMetaDataset()
    received.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    received.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    received.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    with pytest.raises(MalformedDatasetError, match="cannot encode") as refused:
        node.ingest(DICOM.received(received, body).item())
    assert store_status(refused.value) == CANNOT_UNDERSTAND
    assert node.ledger.block_count() == 0 and list(node.storage.iter_files()) == []


_CONTAINER_PID_1 = """
import sys, time
from pathlib import Path
from dicom_chain.db import owners
me = owners.current()
# PID 1 of another pid namespace on this host: a gateway in a container, before a restart
owners.current = lambda: owners.Owner(me.host, "container-ns-a", 1, 4242)
owners.hold_lock(Path(sys.argv[1]))
print("holding", flush=True)
time.sleep(600)
"""


def test_a_restarted_container_s_pid_1_is_recovered_once_it_is_gone(node: Node):
    """The gateway ran as PID 1 in a container's pid namespace and was killed; the restarted one
    is PID 1 in another namespace, where neither pid nor start time says anything about the old
    one. Its liveness lock does: held while it runs (its write is left alone), free once it is
    killed with -9 (its leftover is undone). Without the lock this waited INTENT_EXPIRY_S (a day)."""
    import signal
    import subprocess
    import sys

    from dicom_chain.db import owners

    old = owners.Owner(owners.current().host, "container-ns-a", 1, 4242)
    child = subprocess.Popen(
        [sys.executable, "-c", _CONTAINER_PID_1, str(node.locks)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "holding"
        _leave_intent(node, old, "7/7.1/7.1.1.dcm")
        assert owners.alive(old, node.locks) is True and owners.alive(old) is None
        assert node.recover() == [] and _intent_count(node) == 1  # it may still commit
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert owners.alive(old, node.locks) is False
        assert node.recover() == ["7/7.1/7.1.1.dcm"] and _intent_count(node) == 0
        assert list(node.storage.iter_files()) == []
        assert owners.sweep_locks(node.locks, keep=node.intents.owners()) == 1  # its lock file goes
        assert not owners.lock_path(node.locks, old).exists()
    finally:
        child.kill()
        child.wait(10)


def test_a_pid_reused_by_another_living_process_does_not_keep_a_leftover(node: Node):
    """The owner's pid now belongs to a living process started at another time: undone. The same
    pid with that process's own start time is that process: left alone."""
    import subprocess
    from dataclasses import replace

    from dicom_chain.db import owners

    other = subprocess.Popen(["sleep", "600"])
    try:
        started = owners.start_time(other.pid)
        assert started is not None
        me = owners.current()
        _leave_intent(node, replace(me, pid=other.pid, started=started - 1), "8/8.1/8.1.1.dcm")
        _leave_intent(node, replace(me, pid=other.pid, started=started), "8/8.1/8.1.2.dcm")
        assert node.recover() == ["8/8.1/8.1.1.dcm"]
        assert list(node.storage.iter_files()) == ["8/8.1/8.1.2.dcm"] and _intent_count(node) == 1
    finally:
        other.kill()
        other.wait(10)


def test_liveness_locks_of_cleanly_ended_processes_are_swept(tmp_path):
    """A process killed with -9 leaves its lock file; the next one to start removes those whose
    owners are gone, so the folder does not grow with crashes (a clean close removes its own)."""
    import subprocess
    import sys

    home = tmp_path / "node"
    opener = "import os, sys; from pathlib import Path; from dicom_chain.config import Settings; "
    opener += "from dicom_chain.node import Node; Node.open(Settings(home=Path(sys.argv[1])))\n"
    opener += "os.kill(os.getpid(), 9)"
    for _ in range(3):
        assert subprocess.run([sys.executable, "-c", opener, str(home)], timeout=120).returncode == -9
        assert len(list((home / "storage-owners").iterdir())) == 1  # its own: the one before it went
    node = Node.open(Settings(home=home))
    try:
        from dicom_chain.db import owners

        assert [p.name for p in node.locks.iterdir()] == [owners.lock_path(node.locks, owners.current()).name]
    finally:
        node.close()
