"""``dicom-chain demo``: a gateway on the embedded defaults, a study sent to it, verify, a picture."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, StoragePresentationContexts
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from dicom_chain.config import Settings
from dicom_chain.node import Node
from dicom_chain.synthetic import StudySpec, ct_study
from dicom_chain.verify import verify_node

from .server import Gateway, ServiceOptions

SAMPLE_STUDY = Path(__file__).resolve().parent.parent / "sample_data" / "ct-demo"
DEMO_AE = "DEMO_MODALITY"


def _study_files(workdir: Path) -> list[Path]:
    files = sorted(SAMPLE_STUDY.glob("*.dcm"))
    if files:
        return files
    workdir.mkdir(parents=True, exist_ok=True)  # installed without the repository: make the study
    for ds in ct_study(StudySpec(seed=2026, instances=8, rows=64, columns=64, series=2)):
        files.append(workdir / f"IMG{int(ds.InstanceNumber):04d}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    return files


def run_demo(settings: Settings, port: int, console: Console) -> bool:
    """Returns whether the node verified intact."""
    node = Node.open(settings)
    gateway = Gateway(node, ServiceOptions(host="127.0.0.1", port=port))
    try:
        gateway.start()
        files = _study_files(settings.home / "demo-study")
        console.print(
            f"[bold]gateway[/] listening on 127.0.0.1:{port}, chain {node.chain_id[:8]}, "
            f"store {settings.storage_dir}"
        )
        scu = AE(ae_title=DEMO_AE)
        scu.requested_contexts = StoragePresentationContexts
        assoc = scu.associate("127.0.0.1", port, ae_title=gateway.options.ae_title)
        statuses = []
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"sending {len(files)} images as {DEMO_AE}", total=len(files))
            for path in files:
                statuses.append(assoc.send_c_store(dcmread(path)).Status)
                progress.advance(task)
        assoc.release()
        console.print(f"[bold]sent[/] {len(files)} images from {files[0].parent}: "
                      f"{statuses.count(0)} acknowledged with Success")  # fmt: skip
    finally:
        gateway.stop()
    report = verify_node(node.ledger, node.storage)
    _picture(node, console)
    node.close()
    if report.ok:
        counts = f"{report.blocks_checked} blocks, {report.events_checked} events"
        console.print(f"[green]verify: intact[/] - {counts}, every signature and link holds")
    else:
        console.print(f"[red]verify: {len(report.errors)} problem(s)[/]")
        for finding in report.errors:
            console.print(f"  {finding.kind}: {finding.message} {finding.path}")
    console.print(
        "next: [cyan]dicom-chain verify "
        f"{settings.storage_dir}[/] checks the files alone; change a byte in one and run it again."
    )
    return report.ok


def _picture(node: Node, console: Console, last: int = 12) -> None:
    table = Table(title=f"chain {node.chain_id[:8]}: the newest {last} blocks", show_lines=False)
    for column in ("height", "study", "index", "SOP", "block", "prev", "study prev"):
        table.add_column(column, no_wrap=True)
    rows = [stored for _, stored in node.ledger.iter_blocks(node.chain_id) if not isinstance(stored, str)]
    for stored in rows[-last:]:
        h = stored.block.header
        table.add_row(
            str(h.height), "…" + h.study_instance_uid[-6:], str(h.study_index), "…" + h.sop_instance_uid[-8:],
            stored.block_hash[:8], h.prev_hash[:8], h.study_prev_hash[:8],
        )  # fmt: skip
    console.print(table)
