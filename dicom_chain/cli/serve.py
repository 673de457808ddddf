"""The gateway's commands: ``serve``, ``forward`` (only the forwarders) and ``demo``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource
from rich.console import Console
from rich.table import Table

from dicom_chain.cli.console import progress_bar
from dicom_chain.cli.exits import EXIT_BROKEN, EXIT_OK
from dicom_chain.cli.options import (
    FORWARDING,
    LOGGING,
    NODE,
    SERVICE,
    config_option,
    settings_from,
    settings_options,
)

if TYPE_CHECKING:
    from scp.demo import DemoRun


@click.command()
@config_option
@settings_options(*NODE, *SERVICE)
def serve(**kwargs: Any) -> None:
    """Run the gateway: receive, chain, store durably, forward; SIGTERM stops it cleanly."""
    from scp.server import run_server  # the core stays importable without the network

    settings = settings_from(kwargs)
    companions = []
    if settings.http_port:
        from web.server import LogService

        companions.append(lambda node, gateway: LogService(node, settings, live=gateway.live))
    run_server(settings, companions)


@click.group(invoke_without_command=True)
@config_option
@settings_options(*NODE, *FORWARDING, *LOGGING)
@click.pass_context
def forward(ctx: click.Context, **kwargs: Any) -> None:
    """Only drain the forward queues (serve starts this itself; run it alone beside a shared database)."""
    if ctx.invoked_subcommand is not None:
        return
    from scp.forwarder import run_forwarder

    run_forwarder(settings_from(kwargs))


@forward.command("retry")
@config_option
@settings_options(*NODE)
@click.option("--destination", metavar="AET@HOST:PORT", help="Only this PACS's dead letters.")
@click.option("--sop", "sop_uid", metavar="UID", help="Only this SOP Instance UID.")
@click.option("--all", "everything", is_flag=True, help="Every dead letter (of --destination if given).")
def forward_retry(destination: str | None, sop_uid: str | None, everything: bool, **kwargs: Any) -> None:
    """Queue dead-lettered instances (refused too often by a PACS) again, each an event."""
    from dicom_chain.actors import local_user
    from dicom_chain.node import Node
    from dicom_chain.outbox import Destination

    if not (sop_uid or everything):
        raise click.UsageError("say which: --sop UID, or --all")
    where = str(Destination.parse(destination)) if destination else None
    node = Node.open(settings_from(kwargs))
    try:
        queued = node.outbox.replay(str(local_user()), where, sop_uid)
    finally:
        node.close()
    click.echo(f"queued again: {queued} instance(s)")
    sys.exit(EXIT_OK if queued else EXIT_BROKEN)


@click.command()
@config_option
@settings_options(*NODE)
# Not the Settings field: 0 picks any free port, and DICOM_CHAIN_PORT (meant for serve) does not apply.
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="DICOM port (default: any free one).")
@click.pass_context
def demo(ctx: click.Context, port: int, **kwargs: Any) -> None:
    """Start a gateway on the embedded defaults, send it the sample study, verify, show the chain.

    It runs in a new temporary home (printed, and kept to look at) unless --home, --db or --storage
    is given: a demo study must not land in a real node's ledger for good."""
    import dataclasses

    from scp.demo import DEMO_AE, fresh_home, run_demo, study_files

    settings = settings_from(kwargs)
    chosen = [
        name
        for name in ("home", "db", "storage")
        if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT
    ]
    if not chosen:
        settings = dataclasses.replace(settings, home=fresh_home())
        click.echo(f"demo node in {settings.home} (temporary; remove it when done, or give --home)")
    files = study_files(settings.home / "demo-study")
    with progress_bar(len(files), f"sending {len(files)} images as {DEMO_AE}", None) as advance:
        run = run_demo(settings, files, port=port, advance=advance)
    show_demo(run, Console())
    sys.exit(EXIT_OK if run.report.ok else EXIT_BROKEN)


def show_demo(run: DemoRun, console: Console) -> None:
    console.print(
        f"[bold]gateway[/] listened on {run.host}:{run.port}, chain {run.chain_id[:8]}, "
        f"store {run.storage_dir}"
    )
    console.print(
        f"[bold]sent[/] {len(run.files)} images from {run.files[0].parent}: "
        f"{run.acknowledged} acknowledged with Success"
    )
    table = Table(title=f"chain {run.chain_id[:8]}: {run.shown_blocks}", show_lines=False)
    for column in ("height", "study", "index", "SOP", "block", "prev", "study prev"):
        table.add_column(column, no_wrap=True)
    for stored in run.newest:
        h = stored.block.header
        table.add_row(
            str(h.height), "…" + h.study_instance_uid[-6:], str(h.study_index), "…" + h.sop_instance_uid[-8:],
            stored.block_hash[:8], h.prev_hash[:8], h.study_prev_hash[:8],
        )  # fmt: skip
    console.print(table)
    report = run.report
    if report.ok:
        counts = f"{report.blocks_checked} blocks, {report.events_checked} events"
        console.print(f"[green]verify: intact[/] - {counts}, every signature and link holds")
    else:
        console.print(f"[red]verify: {len(report.errors)} problem(s)[/]")
        for finding in report.errors:
            console.print(f"  {finding.kind}: {finding.message} {finding.path}")
    console.print(
        f"next: [cyan]dicom-chain verify --home {run.home} {run.storage_dir}[/] checks the files alone "
        "against the node's key; change a byte in one and run it again."
    )
