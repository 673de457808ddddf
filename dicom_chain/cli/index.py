"""``reindex``: rebuild the query/retrieve index from the stored files."""

from __future__ import annotations

import sys
from typing import Any

import click

from dicom_chain.cli.console import progress_bar
from dicom_chain.cli.exits import EXIT_BROKEN, EXIT_OK
from dicom_chain.cli.options import NODE, config_option, settings_from, settings_options


@click.command()
@config_option
@settings_options(*NODE)
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar on stderr (default: on a terminal)."
)
def reindex(progress: bool | None, **kwargs: Any) -> None:
    """Rebuild the query/retrieve index from the stored files, checking each against its block."""
    from dicom_chain.node import Node
    from dicom_chain.qr.reindex import latest_versions
    from dicom_chain.qr.reindex import reindex as rebuild

    node = Node.open(settings_from(kwargs))
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
    for conflict in report.conflicts:
        click.echo(
            f"patient identity conflict recorded: {conflict.patient_id} {conflict.keyword} {conflict.value!r}"
        )
    sys.exit(EXIT_OK if not report.altered and not report.missing else EXIT_BROKEN)
