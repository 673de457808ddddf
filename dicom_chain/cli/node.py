"""Commands on the local node: ``ingest`` files as if a modality sent them, ``status``."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dicom_chain.cli.console import progress_bar
from dicom_chain.cli.exits import EXIT_BROKEN, EXIT_OK
from dicom_chain.cli.options import NODE, config_option, settings_from, settings_options
from dicom_chain.errors import ConfigError, DicomChainError, Fault

if TYPE_CHECKING:
    from dicom_chain.events import Event


@click.command()
@config_option
@settings_options(*NODE)
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def ingest(paths: tuple[Path, ...], **kwargs: Any) -> None:
    """Chain and store local DICOM files, as if a modality had sent them.

    One line per file: on stdout what was chained (and any anomaly it was kept with), on stderr
    what was not, with the file and the reason; a bad file never stops the rest. A summary ends
    it on stderr; exit 1 when any file failed."""
    from dicom_chain.actors import local_user
    from dicom_chain.node import Node
    from dicom_chain.verify import expand_paths

    files = expand_paths(paths)
    outcomes: Counter[str] = Counter()
    failures = 0
    node = Node.open(settings_from(kwargs))
    actor = local_user()
    try:
        with progress_bar(len(files), "chaining", None) as advance:
            for path in files:
                try:
                    with warnings.catch_warnings():  # pydicom's notes on odd values: the outcome says enough
                        warnings.simplefilter("ignore")
                        result = node.ingest_file(path, actor=actor)
                except DicomChainError as exc:
                    failures += 1
                    word = "refused" if exc.fault is Fault.REMOTE else "failed"
                    click.echo(f"{word:<11} {path}: {_reason(exc, path)}", err=True)
                except Exception as exc:  # a parser bug on one file must not stop the folder
                    failures += 1
                    click.echo(f"{'failed':<11} {path}: unexpected {type(exc).__name__}: {exc}", err=True)
                else:
                    outcomes[str(result.outcome)] += 1
                    warned = f"  (warning: {'; '.join(result.anomalies)})" if result.anomalies else ""
                    click.echo(f"{result.outcome:<11} height {result.block.header.height:>6}  {path}{warned}")
                advance(1)
    finally:
        node.close()
    done = sum(outcomes.values())
    kinds = ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items()))
    click.echo(f"{done} ingested{f' ({kinds})' if kinds else ''}, {failures} failed", err=True)
    sys.exit(EXIT_BROKEN if failures else EXIT_OK)


def _outage_json(outage: Event | None) -> dict[str, Any]:
    """The recorded outage of a destination, for ``status --json``: since when, and why."""
    if outage is None:
        return {"down_since": None, "down_reason": ""}
    return {"down_since": outage.time, "down_reason": outage.reason}


def _reason(exc: DicomChainError, path: Path) -> str:
    """The error on one line, without the path it may already start with."""
    text = " ".join(str(exc).split())
    return text.removeprefix(f"{path}: ") or type(exc).__name__


# What status reads: the ledger (home or db), and the spool whose locks say a gateway is running.
STATUS = ("home", "db", "spool")


@click.command()
@config_option
@settings_options(*STATUS)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def status(as_json: bool, **kwargs: Any) -> None:
    """Chain height, event log head, whether a gateway is running, and each upstream PACS's queue:
    waiting, failed, last error. A missing SQLite ledger is a wrong --home or --db: exit 2."""
    from dicom_chain.ledger import Ledger
    from dicom_chain.outbox import BACKOFF_MAX_S, Outbox
    from scp.chunked import Spool

    settings = settings_from(kwargs)
    if settings.sqlite_file is not None and not settings.sqlite_file.exists():  # opening would create it
        raise ConfigError(
            f"no ledger at {settings.sqlite_file}: check --home or --db "
            "(a node's ledger is made when it first serves or ingests)"
        )
    ledger = Ledger(settings.db_url)
    try:
        chains = ledger.chains()
        seq, head = ledger.event_head()
        outbox = Outbox(ledger, None)
        queues = outbox.stats()
        # An outage the forward process recorded (forward.down) and has not seen end; when it
        # probes next lives in that process's memory only (dicom_chain/breaker.py).
        outages = {q.destination: outbox.last_outage(q.destination) for q in queues}
    finally:
        ledger.close()
    gateways = Spool.running(settings.spool_dir)
    now = time.time()
    if as_json:
        click.echo(json.dumps({
            "chains": [{"chain_id": c.chain_id, "height": c.head_height, "blocks": c.head_height + 1,
                        "head_hash": c.head_hash, "institution": c.institution, "key_id": c.key_id}
                       for c in chains],
            "events": {"count": seq, "head_hash": head},
            "gateways": [{"pid": g.pid, "host": g.host} for g in gateways],
            "forward": [dataclasses.asdict(q) | _outage_json(outages[q.destination]) for q in queues],
        }, indent=2))  # fmt: skip
        return
    if not chains:
        click.echo("no chain yet: nothing has been received")
    for c in chains:
        height = "empty" if c.head_height < 0 else f"height {c.head_height}"
        click.echo(f"chain {c.chain_id}  {height}  institution {c.institution}  key {c.key_id}")
    click.echo(f"events {seq}  head {head[:16]}")
    for g in gateways:
        click.echo(f"gateway running (pid {g.pid} on host {g.host})")
    if not gateways:
        click.echo(f"gateway not running as far as this host can tell (no live lock in {settings.spool_dir})")
    if not queues:
        click.echo("forward: no upstream PACS has been queued for")
    for q in queues:
        waiting = ""
        if q.oldest_waiting_since is not None:
            waiting = f"  oldest waiting {now - q.oldest_waiting_since:.0f} s (SOP {q.oldest_waiting_sop})"
        click.echo(f"forward {q.destination}  waiting {q.pending}  failed {q.failed}  done {q.done}{waiting}")
        if (outage := outages[q.destination]) is not None:
            every = f"probed with back-off up to every {BACKOFF_MAX_S:.0f} s"
            click.echo(f"  down since {outage.time}: {outage.reason} ({every})")
        if q.last_error:
            click.echo(f"  last error: {q.last_error}")
        if q.failed:
            replay = f"dicom-chain forward retry --destination {q.destination} --all"
            click.echo(f"  {q.failed} dead-lettered: {replay}")
