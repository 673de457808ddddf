"""The ``dicom-chain`` command line (Click).

Every option can also come from a ``DICOM_CHAIN_*`` environment variable or a TOML file given
with ``--config``; the command line wins over the environment, which wins over the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy.engine import make_url

from dicom_chain.config import DEFAULT_HOME, DEFAULT_INSTITUTION, Settings
from dicom_chain.errors import DicomChainError
from dicom_chain.findings import Report

F = TypeVar("F", bound=Callable[..., Any])
PROGRESS_MIN_ITEMS = 20  # below this a bar only flickers
EXIT_OK, EXIT_BROKEN, EXIT_USAGE = 0, 1, 2

stderr = Console(stderr=True)


def _load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Make the TOML file the defaults of this command (top-level keys and its own [table])."""
    if not value:
        return value
    try:
        data = tomllib.loads(Path(value).read_text(encoding="utf-8"))
    except OSError as exc:
        raise click.BadParameter(f"cannot read {value}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise click.BadParameter(f"{value} is not valid TOML: {exc}") from exc
    names = [c.info_name for c in _lineage(ctx) if c.info_name and c.parent is not None]
    defaults = {k: v for k, v in data.items() if not isinstance(v, dict)}
    table: Any = data
    for name in names:
        table = table.get(name, {}) if isinstance(table, dict) else {}
        if isinstance(table, dict):
            defaults.update({k: v for k, v in table.items() if not isinstance(v, dict)})
    ctx.default_map = {k.replace("-", "_"): v for k, v in defaults.items()}
    return value


def _lineage(ctx: click.Context) -> list[click.Context]:
    chain = []
    node: click.Context | None = ctx
    while node is not None:
        chain.append(node)
        node = node.parent
    return list(reversed(chain))


def config_option(f: F) -> F:
    return click.option(
        "--config",
        type=click.Path(dir_okay=False),
        envvar="DICOM_CHAIN_CONFIG",
        is_eager=True,
        expose_value=False,
        callback=_load_config,
        help="TOML file with defaults for these options (env: DICOM_CHAIN_CONFIG).",
    )(f)


def node_options(f: F, *, institution: bool = True) -> F:
    """Where the node lives: shared by every command that opens the node."""
    options = [
        click.option(
            "--home",
            type=click.Path(file_okay=False, path_type=Path),
            default=DEFAULT_HOME,
            envvar="DICOM_CHAIN_HOME",
            show_default=True,
            help="Folder for the default database, store and key.",
        ),
        click.option(
            "--db",
            envvar="DICOM_CHAIN_DB",
            help="SQLAlchemy URL of the ledger (default: SQLite in HOME; postgresql+psycopg://...).",
        ),
        click.option(
            "--storage",
            type=click.Path(file_okay=False, path_type=Path),
            envvar="DICOM_CHAIN_STORAGE",
            help="Folder of stored instances (default: HOME/storage).",
        ),
        click.option(
            "--key-file",
            type=click.Path(dir_okay=False, path_type=Path),
            envvar="DICOM_CHAIN_KEY_FILE",
            help="Ed25519 node key, made on first use (default: beside the database).",
        ),
    ]
    if institution:
        options.append(
            click.option(
                "--institution",
                default=DEFAULT_INSTITUTION,
                envvar="DICOM_CHAIN_INSTITUTION",
                show_default=True,
                help="Institution named in every block.",
            ),
        )
    for option in reversed(options):
        f = option(f)
    return f


def node_options_without_institution(f: F) -> F:
    return node_options(f, institution=False)


def forward_options(f: F) -> F:
    """Options of the forwarding side, shared by serve and forward."""
    options = [
        click.option("--ae-title", default="DICOMCHAIN", envvar="DICOM_CHAIN_AE_TITLE", show_default=True,
                     help="Our AE title (as modalities call us, and as the PACS sees us)."),
        click.option("--forward", multiple=True, envvar="DICOM_CHAIN_FORWARD", metavar="AET@HOST:PORT",
                     help="Upstream PACS to forward every stored instance to (repeatable)."),
        click.option("--forward-workers", type=click.IntRange(1, 32), default=4,
                     envvar="DICOM_CHAIN_FORWARD_WORKERS", show_default=True,
                     help="Parallel associations per upstream PACS."),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


def settings_from(kwargs: dict[str, Any]) -> Settings:
    return Settings(
        home=Path(kwargs.pop("home")),
        db=kwargs.pop("db"),
        storage=kwargs.pop("storage"),
        key_file=kwargs.pop("key_file"),
        institution=kwargs.pop("institution", DEFAULT_INSTITUTION),
    )


@contextmanager
def progress_bar(total: int, label: str, enabled: bool | None) -> Iterator[Callable[[int], None]]:
    """A bar on stderr for long runs: by default only on a terminal, ``enabled=True`` forces it."""
    if enabled is False or (enabled is None and not stderr.is_terminal) or total < PROGRESS_MIN_ITEMS:
        yield lambda _n: None
        return
    console = stderr if stderr.is_terminal else Console(stderr=True, force_terminal=True)
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@config_option
@click.version_option(package_name="dicom-chain")
def main() -> None:
    """dicom-chain: a DICOM gateway that chains every image it stores and records every act on it."""


@main.command()
@config_option
@node_options
@forward_options
@click.option(
    "--host", default="0.0.0.0", envvar="DICOM_CHAIN_HOST", show_default=True, help="Address to listen on."
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=11112,
    envvar="DICOM_CHAIN_PORT",
    show_default=True,
    help="DICOM port to listen on.",
)
@click.option(
    "--allow",
    multiple=True,
    envvar="DICOM_CHAIN_ALLOW",
    metavar="AET[@HOST]",
    help="Calling AE titles allowed to associate, optionally from one host (repeatable; none given: any).",
)
@click.option(
    "--move-destination",
    multiple=True,
    envvar="DICOM_CHAIN_MOVE_DESTINATION",
    metavar="AET@HOST:PORT",
    help="An AE that C-MOVE may send to (repeatable); moves to any other AE are refused.",
)
@click.option(
    "--audit-syslog",
    envvar="DICOM_CHAIN_AUDIT_SYSLOG",
    metavar="udp|tcp|tls://HOST:PORT",
    help="Send every event, as it happens, to this audit record repository (RFC 5424, ATNA messages).",
)
@click.option(
    "--audit-syslog-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="DICOM_CHAIN_AUDIT_SYSLOG_CA",
    help="CA certificate (PEM) the tls:// repository's certificate must chain to.",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="DICOM_CHAIN_TLS_CERT",
    help="Serve DICOM over TLS with this certificate (PEM).",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="DICOM_CHAIN_TLS_KEY",
    help="Private key of --tls-cert (PEM).",
)
@click.option(
    "--tls-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="DICOM_CHAIN_TLS_CA",
    help="Require peer certificates signed by this CA (PEM).",
)
def serve(
    ae_title: str,
    host: str,
    port: int,
    forward: tuple[str, ...],
    forward_workers: int,
    allow: tuple[str, ...],
    move_destination: tuple[str, ...],
    audit_syslog: str | None,
    audit_syslog_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
    **kwargs: Any,
) -> None:
    """Run the gateway: receive, chain, store durably, forward; SIGTERM stops it cleanly."""
    from scp.server import ServiceOptions, run_server  # the core stays importable without the network

    settings = dataclasses.replace(settings_from(kwargs), forward=forward, move_destinations=move_destination)
    options = ServiceOptions(
        ae_title=ae_title,
        host=host,
        port=port,
        allow=allow,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_ca=tls_ca,
        forward_workers=forward_workers,
        audit_syslog=audit_syslog,
        audit_syslog_ca=audit_syslog_ca,
    )
    try:
        run_server(settings, options)
    except DicomChainError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@config_option
@node_options
@forward_options
@click.option("--parent-pid", type=int, hidden=True, help="Exit when this process is gone (set by serve).")
def forward(
    ae_title: str, forward: tuple[str, ...], forward_workers: int, parent_pid: int | None, **kwargs: Any
) -> None:
    """Only drain the forward queues (serve starts this itself; run it alone beside a shared database)."""
    from scp.forwarder import run_forwarder

    settings = dataclasses.replace(settings_from(kwargs), forward=forward)
    try:
        run_forwarder(settings, ae_title=ae_title, workers=forward_workers, parent_pid=parent_pid)
    except DicomChainError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@config_option
@node_options
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def ingest(paths: tuple[Path, ...], **kwargs: Any) -> None:
    """Chain and store local DICOM files, as if a modality had sent them."""
    from dicom_chain.node import Node
    from dicom_chain.verify import expand_paths

    files = expand_paths(paths)
    failures = 0
    try:
        node = Node.open(settings_from(kwargs))
    except DicomChainError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        with progress_bar(len(files), "chaining", None) as advance:
            for path in files:
                try:
                    result = node.ingest_file(path, actor=local_user())
                    click.echo(f"{result.outcome:<11} height {result.block.header.height:>6}  {path}")
                except DicomChainError as exc:
                    failures += 1
                    click.echo(f"{'refused':<11} {exc}", err=True)
                advance(1)
    finally:
        node.close()
    sys.exit(EXIT_BROKEN if failures else EXIT_OK)


@main.command()
@config_option
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--db", envvar="DICOM_CHAIN_DB", help="Check the whole node in this ledger (needs --storage).")
@click.option(
    "--storage",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="DICOM_CHAIN_STORAGE",
    help="The node's store of instances, with --db.",
)
@click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Trust only blocks signed by this key (repeatable; from 'keys export').",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar on stderr (default: when a terminal)."
)
@click.option(
    "--update-index",
    is_flag=True,
    help="With --db: also store each instance's result as its verification state (returned by C-FIND).",
)
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="DICOM_CHAIN_KEY_FILE",
    help="With --db: the node key that signs this run's event (default: beside the SQLite database).",
)
def verify(
    paths: tuple[Path, ...],
    db: str | None,
    storage: Path | None,
    public_keys: tuple[Path, ...],
    as_json: bool,
    progress: bool | None,
    update_index: bool,
    key_file: Path | None,
) -> None:
    """Check files (their blocks and the links between them) or, with --db, the whole node.

    Exit status: 0 all intact, 1 something is broken, 2 usage error.
    """
    from dicom_chain.keys import load_public_key
    from dicom_chain.verify import expand_paths, verify_files, verify_node

    if bool(paths) == bool(db):
        raise click.UsageError("give either files/folders to check, or --db URL --storage DIR")
    if db and storage is None:
        raise click.UsageError("--db needs --storage")
    if update_index and not db:
        raise click.UsageError("--update-index needs --db")
    try:
        trusted = frozenset(load_public_key(p) for p in public_keys) if public_keys else None
        if db:
            from dicom_chain.ledger import Ledger
            from dicom_chain.storage import Storage

            ledger = Ledger(db)
            try:
                total = ledger.block_count() + ledger.event_count()
                store = Storage(storage or Path())
                with progress_bar(total, "verifying node", progress) as advance:
                    report = verify_node(ledger, store, trusted, advance)
                if update_index:
                    from dicom_chain.block import utc_now
                    from dicom_chain.qr import index
                    from dicom_chain.verify import index_states

                    with ledger.db.writing() as session:
                        index.record_verification(session, index_states(report, store), utc_now())
                _record_verify(ledger, report, Settings(db=db, key_file=key_file).key_path)
            finally:
                ledger.close()
        else:
            files = expand_paths(paths)
            with progress_bar(len(files), "verifying files", progress) as advance:
                report = verify_files(files, trusted, advance)
    except DicomChainError as exc:
        raise click.ClickException(str(exc)) from exc
    _print_report(report, as_json)
    sys.exit(EXIT_OK if report.ok else EXIT_BROKEN)


def _record_verify(ledger: Any, report: Report, key_path: Path) -> None:
    """A whole-node verify on the record: outcome, counts, the first problems (a failure is an alert)."""
    from dicom_chain.keys import NodeKey

    if not key_path.exists():
        stderr.print(f"no node key at {key_path}: this verify run is not recorded as an event")
        return
    try:
        key = NodeKey.load(key_path)
    except DicomChainError as exc:
        stderr.print(f"{exc}: this verify run is not recorded as an event")
        return
    problems = [f"{f.kind}: {f.path or f.sop_instance_uid or f.chain_id}" for f in report.errors]
    try:
        _append_verify_event(ledger, key, report, problems)
    except DicomChainError as exc:  # a read-only copy of a ledger can still be verified
        stderr.print(f"this verify run is not recorded as an event: {exc}")


def _append_verify_event(ledger: Any, key: Any, report: Report, problems: list[str]) -> None:
    from dicom_chain.events import EventDraft
    from dicom_chain.vocab import EventType, Outcome

    ledger.record(
        key,
        EventDraft(
            EventType.VERIFY_NODE,
            outcome=Outcome.SUCCESS if report.ok else Outcome.MAJOR_FAILURE,
            actor=local_user(),
            reason="intact" if report.ok else f"{len(problems)} problem(s) found",
            details={
                "blocks": report.blocks_checked,
                "files": report.files_checked,
                "events": report.events_checked,
                "errors": len(problems),
                "problems": problems[:50],
            },
        ),
    )


def _print_report(report: Report, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    for f in report.findings:
        where = " ".join(
            part
            for part in (
                f.path,
                f"SOP {f.sop_instance_uid}" if f.sop_instance_uid else "",
                f"height {f.height}" if f.height is not None else "",
            )
            if part
        )
        label = "BROKEN" if f.severity == "error" else "note"
        click.echo(f"{label:<6} {f.kind:<17} {f.message}" + (f"  [{where}]" if where else ""))
    summary = (
        f"{report.files_checked} file(s), {report.blocks_checked} block(s), "
        f"{report.events_checked} event(s) checked"
    )
    if report.ok:
        click.echo(f"OK: {summary}; every block, signature and link holds.")
    else:
        click.echo(f"BROKEN: {len(report.errors)} problem(s); {summary}.")


@main.command()
@config_option
@node_options
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def status(as_json: bool, **kwargs: Any) -> None:
    """Chain height, event log head and each upstream PACS's queue: waiting, failed, last error."""
    import time

    from dicom_chain.ledger import Ledger
    from dicom_chain.outbox import Outbox

    settings = settings_from(kwargs)
    url = make_url(settings.db_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        click.echo(f"no ledger at {url.database}: this node has received nothing yet")
        return
    try:
        ledger = Ledger(settings.db_url)
    except DicomChainError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        chains = ledger.chains()
        seq, head = ledger.event_head()
        queues = Outbox(ledger, None).stats()
    finally:
        ledger.close()
    now = time.time()
    if as_json:
        click.echo(json.dumps({
            "chains": [{"chain_id": c.chain_id, "height": c.head_height, "head_hash": c.head_hash,
                        "institution": c.institution, "key_id": c.key_id} for c in chains],
            "events": {"count": seq, "head_hash": head},
            "forward": [dataclasses.asdict(q) for q in queues],
        }, indent=2))  # fmt: skip
        return
    if not chains:
        click.echo("no chain yet: nothing has been received")
    for c in chains:
        click.echo(f"chain {c.chain_id}  height {c.head_height}  institution {c.institution}  key {c.key_id}")
    click.echo(f"events {seq}  head {head[:16]}")
    if not queues:
        click.echo("forward: no upstream PACS has been queued for")
    for q in queues:
        waiting = ""
        if q.oldest_waiting_since is not None:
            waiting = f"  oldest waiting {now - q.oldest_waiting_since:.0f} s (SOP {q.oldest_waiting_sop})"
        click.echo(f"forward {q.destination}  waiting {q.pending}  failed {q.failed}  done {q.done}{waiting}")
        if q.last_error:
            click.echo(f"  last error: {q.last_error}")


@main.command()
@config_option
@node_options
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="DICOM port (default: any free one).")
def demo(port: int, **kwargs: Any) -> None:
    """Start a gateway on the embedded defaults, send it the sample study, verify, show the chain."""
    import socket

    from scp.demo import run_demo

    if port == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    try:
        ok = run_demo(settings_from(kwargs), port, Console())
    except DicomChainError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(EXIT_OK if ok else EXIT_BROKEN)


@main.command()
@config_option
@node_options
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar on stderr (default: on a terminal)."
)
def reindex(progress: bool | None, **kwargs: Any) -> None:
    """Rebuild the query/retrieve index from the stored files, checking each against its block."""
    from dicom_chain.node import Node
    from dicom_chain.qr.reindex import latest_versions
    from dicom_chain.qr.reindex import reindex as rebuild

    settings = settings_from(kwargs)
    try:
        node = Node.open(settings)
    except DicomChainError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        with progress_bar(len(latest_versions(node)), "reindex", progress) as advance:
            report = rebuild(node, advance)
    finally:
        node.close()
    click.echo(f"indexed {report.indexed} instances")
    for path in report.altered:
        click.echo(f"altered (does not match its block): {path}")
    for path in report.missing:
        click.echo(f"missing from the store, not indexed: {path}")
    sys.exit(EXIT_OK if not report.altered and not report.missing else EXIT_BROKEN)


def local_user() -> str:
    """Who runs this command, as an audit actor: user@host."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@main.group()
def audit() -> None:
    """Audit trails for compliance: export the event log, check an export offline."""


@audit.command("export")
@config_option
@node_options_without_institution
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "csv", "fhir", "atna"]),
    required=True,
    help="json: JSON Lines; csv; fhir: R4 Bundle of AuditEvent; atna: DICOM PS3.15 audit messages.",
)
@click.option("--since", help="Events at or after this ISO date or date-time (UTC unless it says otherwise).")
@click.option("--until", help="Events before this date-time (a bare date: up to the end of that day).")
@click.option("--patient", help="Only events about this Patient ID.")
@click.option("--study", help="Only events about this Study Instance UID.")
@click.option("--institution", "for_institution", help="Only events signed by this institution's node.")
@click.option("--event", "event_types", multiple=True, help="Only events of this type (repeatable).")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The export; its proof is written beside it as OUTPUT.proof.",
)
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar on stderr (default: on a terminal)."
)
def audit_export(
    fmt: str,
    since: str | None,
    until: str | None,
    patient: str | None,
    study: str | None,
    for_institution: str | None,
    event_types: tuple[str, ...],
    output: Path,
    progress: bool | None,
    **kwargs: Any,
) -> None:
    """Export events with a signed proof that the export is complete and unaltered."""
    from dicom_chain.audit import AuditFilter, export, proof_path
    from dicom_chain.keys import NodeKey
    from dicom_chain.ledger import Ledger

    filters = AuditFilter(
        since=since,
        until=until,
        patient=patient,
        study=study,
        institution=for_institution,
        event_types=event_types,
    )
    settings = settings_from(kwargs)
    try:
        if not settings.key_path.exists():  # the proof is signed with the node's own key
            raise click.ClickException(f"no node key at {settings.key_path} (give --key-file)")
        key = NodeKey.load(settings.key_path)
        ledger = Ledger(settings.db_url)  # not the whole node: an export needs no DICOM libraries
        try:
            total = ledger.event_count()
            with progress_bar(total, f"exporting {fmt}", progress) as advance:
                signed = export(
                    ledger,
                    key,
                    fmt,
                    output,
                    filters,
                    actor=local_user(),
                    source_id=f"dicom-chain@{key.key_id}",
                    advance=advance,
                )
        finally:
            ledger.close()
    except DicomChainError as exc:
        raise click.ClickException(str(exc)) from exc
    statement = signed["statement"]
    click.echo(f"{statement['count']} events ({statement['first_seq']}..{statement['last_seq']}) -> {output}")
    click.echo(f"proof -> {proof_path(output)} (ledger head {statement['ledger_head']['seq']})")


@audit.command("verify")
@click.argument("export_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Trust only this node key (repeatable; from 'keys export').",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def audit_verify(export_file: Path, public_keys: tuple[Path, ...], as_json: bool) -> None:
    """Check an export and its proof offline. Exit status: 0 intact, 1 broken, 2 usage error."""
    from dicom_chain.audit import verify_export
    from dicom_chain.keys import load_public_key

    try:
        pinned = frozenset(load_public_key(p) for p in public_keys) if public_keys else None
    except DicomChainError as exc:
        raise click.ClickException(str(exc)) from exc
    report, statement = verify_export(export_file, pinned)
    if as_json:
        click.echo(json.dumps({**report.to_dict(), "statement": statement}, indent=2))
    else:
        for finding in report.findings:
            click.echo(f"{finding.severity.upper():5} {finding.kind}: {finding.message}")
        if report.ok:
            click.echo(
                f"OK: {statement['count']} events ({statement['first_seq']}..{statement['last_seq']}), "
                f"{statement['skipped_count']} filtered out and accounted for; cut from ledger head "
                f"{statement['ledger_head']['seq']}, signed by key {statement['key_id']}"
            )
        else:
            click.echo(f"BROKEN: {len(report.errors)} problem(s)")
    sys.exit(EXIT_OK if report.ok else EXIT_BROKEN)


@main.group()
def keys() -> None:
    """The node's signing key."""


@keys.command("export")
@config_option
@node_options
@click.option("--format", "fmt", type=click.Choice(["pem", "hex"]), default="pem", show_default=True)
@click.option(
    "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout."
)
def keys_export(fmt: str, output: Path | None, **kwargs: Any) -> None:
    """Print the node's public key, for 'verify --public-key' elsewhere (made on first use)."""
    from dicom_chain.keys import NodeKey

    settings = settings_from(kwargs)
    try:
        key = NodeKey.load_or_create(settings.key_path)
    except DicomChainError as exc:
        raise click.ClickException(str(exc)) from exc
    text = key.public_pem() if fmt == "pem" else key.public_key.hex() + "\n"
    if output:
        output.write_text(text, encoding="ascii")
        click.echo(f"public key {key.key_id} written to {output}", err=True)
    else:
        click.echo(text, nl=False)
