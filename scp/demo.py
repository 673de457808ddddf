"""``dicom-chain demo``: a gateway on the embedded defaults, a study sent to it, verify.

It returns what happened (files sent, their statuses, the verify report, the newest blocks);
the command line shows it.
"""

from __future__ import annotations

import dataclasses
import socket
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, StoragePresentationContexts

from dicom_chain.config import Settings
from dicom_chain.findings import Report
from dicom_chain.ledger import StoredBlock
from dicom_chain.node import Node
from dicom_chain.synthetic import StudySpec, ct_study
from dicom_chain.verify import verify_node

from .server import Gateway

SAMPLE_STUDY = Path(__file__).resolve().parent.parent / "sample_data" / "ct-demo"
DEMO_AE = "DEMO_MODALITY"
DEMO_HOST = "127.0.0.1"  # the demo talks to itself; nothing outside needs to reach it
NEWEST_BLOCKS = 12  # enough rows to see heights and study links follow each other, fits a screen
SUCCESS = 0x0000
DEMO_HOME_PREFIX = "dicom-chain-demo-"  # in the system temp folder: never a real node's ./var


@dataclass(frozen=True)
class DemoRun:
    host: str
    port: int
    chain_id: str
    storage_dir: Path
    files: list[Path]  # what was sent, in order
    statuses: list[int]  # the gateway's C-STORE status for each file
    report: Report  # verify of the whole node afterwards
    newest: list[StoredBlock]  # the newest blocks, oldest first
    total_blocks: int
    home: Path  # its key pins the signer when the files are verified alone

    @property
    def acknowledged(self) -> int:
        return self.statuses.count(SUCCESS)

    @property
    def shown_blocks(self) -> str:
        """What the table of ``newest`` holds, from the real counts (never a fixed "12")."""
        shown = len(self.newest)
        if shown == self.total_blocks:
            return f"all {shown} block{'s' if shown != 1 else ''}"
        return f"the newest {shown} of {self.total_blocks} blocks"


def fresh_home() -> Path:
    """A new folder for a demo node, kept after the demo so that its files can be verified."""
    return Path(tempfile.mkdtemp(prefix=DEMO_HOME_PREFIX))


def study_files(workdir: Path) -> list[Path]:
    """The sample study of the repository; installed without it, a study made in ``workdir``."""
    files = sorted(SAMPLE_STUDY.glob("*.dcm"))
    if files:
        return files
    workdir.mkdir(parents=True, exist_ok=True)
    for ds in ct_study(StudySpec(seed=2026, instances=8, rows=64, columns=64, series=2)):
        files.append(workdir / f"IMG{int(ds.InstanceNumber):04d}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    return files


def free_port() -> int:
    with socket.socket() as s:
        s.bind((DEMO_HOST, 0))
        return int(s.getsockname()[1])


def run_demo(
    settings: Settings, files: list[Path], *, port: int = 0, advance: Callable[[int], None] = lambda _n: None
) -> DemoRun:
    """Serve on ``port`` (0: any free one), send ``files`` as DEMO_AE, stop, verify the node."""
    settings = dataclasses.replace(settings, host=DEMO_HOST, port=port or free_port())
    node = Node.open(settings)
    try:
        gateway = Gateway(node)
        try:
            gateway.start()
            scu = AE(ae_title=DEMO_AE)
            scu.requested_contexts = StoragePresentationContexts
            assoc = scu.associate(settings.host, settings.port, ae_title=settings.ae_title)
            statuses = []
            for path in files:
                statuses.append(int(assoc.send_c_store(dcmread(path)).Status))
                advance(1)
            assoc.release()
        finally:
            gateway.stop()
        report = verify_node(node.ledger, node.storage)
        newest: deque[StoredBlock] = deque(maxlen=NEWEST_BLOCKS)
        total = 0
        for _, stored in node.ledger.iter_blocks(node.chain_id):
            total += 1
            if not isinstance(stored, str):  # a row that does not decode is verify's to report
                newest.append(stored)
        return DemoRun(
            settings.host, settings.port, node.chain_id, settings.storage_dir, files, statuses, report,
            list(newest), total, settings.home,
        )  # fmt: skip
    finally:
        node.close()
