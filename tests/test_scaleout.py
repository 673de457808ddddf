"""Scale-out as a deployment of scp/server.py and scp/forwarder.py: several ``dicom-chain serve``
processes on one PostgreSQL and one storage root keep one chain and share one forward queue.

CI runs 3 processes x 10 parallel associations x 5 instances; the full size (50 per association,
1,500 in all) is ``SCALEOUT_INSTANCES=50 pytest tests/test_scaleout.py``, and the throughput
figures are benchmarks/bench_scaleout.py's.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import func, select

from dicom_chain.db.models import BlockRow, OutboxRow
from dicom_chain.keys import NodeKey
from dicom_chain.ledger import Ledger
from dicom_chain.outbox import LEASE_S
from dicom_chain.storage import Storage
from dicom_chain.synthetic import StudySpec, ct_study
from dicom_chain.verify import verify_node
from dicom_chain.vocab import OutboxState

from .peers import GatewayProcess, OrthancServer, PostgresServer, free_port, wait_until

pytestmark = [pytest.mark.dcmtk, pytest.mark.postgres]

PROCESSES = 3
ASSOCIATIONS = 10  # per process, all at once
# per association: 150 in all in CI, ~1 min on a loaded 2-core box
SCALEOUT_INSTANCES = int(os.environ.get("SCALEOUT_INSTANCES", "5"))


def send_study(port: int, study: list, acknowledged: list[str], errors: list[str]) -> None:
    scu = AE(ae_title="CT_SCANNER")
    scu.add_requested_context(CTImageStorage)
    scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = 120
    assoc = scu.associate("127.0.0.1", port, ae_title="DICOMCHAIN")
    if not assoc.is_established:
        errors.append(f"no association with {port}")
        return
    for ds in study:
        response = assoc.send_c_store(ds)
        if response is not None and getattr(response, "Status", None) == 0x0000:
            acknowledged.append(ds.SOPInstanceUID)
        else:
            errors.append(f"{ds.SOPInstanceUID}: {response}")
    assoc.release()


def test_three_serve_processes_keep_one_chain_and_forward_each_instance_once(
    tmp_path: Path, postgres: PostgresServer, orthanc: OrthancServer
):
    url = postgres.create_database()
    shared = tmp_path / "shared"
    shared.mkdir()
    key = shared / "node.key"
    NodeKey.load_or_create(key)  # one key, made before the processes race to make it: one chain
    common = ("--db", url, "--storage", str(shared / "storage"), "--key-file", str(key),
              "--forward", orthanc.destination, "--forward-workers", "2",
              # every sender is on loopback: one host, more associations than one host may hold
              "--max-associations-per-host", str(ASSOCIATIONS))  # fmt: skip
    gateways = []
    for number in range(PROCESSES):
        home = tmp_path / f"gw{number}"
        home.mkdir()
        gateways.append(GatewayProcess(home, free_port(), common).start(timeout=90))
    studies = [
        list(ct_study(StudySpec(seed=5000 + n, instances=SCALEOUT_INSTANCES, rows=16, columns=16)))
        for n in range(PROCESSES * ASSOCIATIONS)
    ]
    total = len(studies) * SCALEOUT_INSTANCES
    ledger = Ledger(url)
    try:
        [victim] = gateways[0].forward_children()
        holding = f"%:{victim}:%"

        def victim_holds_leases() -> bool:
            with ledger.db.reading() as session:
                query = (
                    select(func.count())
                    .select_from(OutboxRow)
                    .where(OutboxRow.lease_owner.like(holding), OutboxRow.state == OutboxState.PENDING)
                )
                return bool(session.scalar(query))

        acknowledged: list[str] = []
        errors: list[str] = []
        senders = [
            threading.Thread(target=send_study, args=(gateways[n % PROCESSES].port, s, acknowledged, errors))
            for n, s in enumerate(studies)
        ]
        for sender in senders:
            sender.start()

        # kill -9 one process's forwarder while it holds leases: the others must take them over.
        # Frozen first (SIGSTOP), so that it cannot settle its batch between the look and the kill.
        def frozen_holding() -> bool:
            if not victim_holds_leases():
                return False
            os.kill(victim, signal.SIGSTOP)
            if victim_holds_leases():
                return True
            os.kill(victim, signal.SIGCONT)
            return False

        assert wait_until(frozen_holding, 120, interval=0.02), "the forwarder never leased"
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        # Taken over, not waited out: the dead forwarder's leases would last LEASE_S (120 s).
        assert wait_until(lambda: not victim_holds_leases(), LEASE_S)
        taken_over = time.monotonic() - killed_at
        assert taken_over < LEASE_S / 4, taken_over  # measured ~5 s: one LEASE_SWEEP_S
        print(f"the killed forwarder's leases were taken over after {taken_over:.1f} s")
        for sender in senders:
            sender.join(300)
        assert errors == [] and len(acknowledged) == total

        assert orthanc.wait_for(total, timeout=300) == total
        assert wait_until(lambda: _states(ledger) == {OutboxState.DONE: total}, 60), _states(ledger)
        # by another process's forwarder, or by the one serve started in the victim's place
        assert any("leased by a process that died" in g.log() for g in gateways)

        in_orthanc = set(orthanc.rest("/instances"))  # type: ignore[arg-type]
        assert len(in_orthanc) == total == orthanc.count()
        forwarded = [
            e.sop_uid
            for e in ledger.iter_events()
            if e.type == "instance.forwarded" and e.outcome == "success"
        ]
        assert sorted(forwarded) == sorted(acknowledged)  # each once: one success per instance

        [chain] = ledger.chains()
        with ledger.db.reading() as session:
            heights = list(session.scalars(select(BlockRow.height).order_by(BlockRow.height)))
            sops = list(session.scalars(select(BlockRow.sop_instance_uid)))
        assert heights == list(range(total)) and chain.head_height == total - 1
        assert sorted(sops) == sorted(acknowledged)  # every instance stored once
        storage = Storage(shared / "storage")
        assert len(list(storage.iter_files())) == total
        report = verify_node(ledger, storage)
        assert report.ok, report.errors
    finally:
        ledger.close()
        for gateway in gateways:
            gateway.stop()


def _states(ledger: Ledger) -> dict[str, int]:
    with ledger.db.reading() as session:
        return dict(session.execute(select(OutboxRow.state, func.count()).group_by(OutboxRow.state)).all())
