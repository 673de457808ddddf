"""``audit``: export the event log with a signed proof, and check an export offline."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from dicom_chain.cli.console import progress_bar
from dicom_chain.cli.exits import EXIT_BROKEN, EXIT_OK
from dicom_chain.cli.options import NODE, config_option, settings_from, settings_options

# --institution here filters events by the signing node's institution; it is not the setting.
EXPORT_SETTINGS = tuple(name for name in NODE if name != "institution")


@click.group()
def audit() -> None:
    """Audit trails for compliance: export the event log, check an export offline."""


@audit.command("export")
@config_option
@settings_options(*EXPORT_SETTINGS)
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
    from dicom_chain.actors import local_user
    from dicom_chain.audit import AuditFilter, export, proof_path
    from dicom_chain.nodekey import existing_ledger, owned_key

    filters = AuditFilter(
        since=since,
        until=until,
        patient=patient,
        study=study,
        institution=for_institution,
        event_types=event_types,
    )
    settings = settings_from(kwargs)
    ledger = existing_ledger(settings)  # not the whole node: an export needs no DICOM libraries
    try:
        key = owned_key(settings, ledger)  # the proof is signed with the node's own key, never a new one
        with progress_bar(ledger.event_count(), f"exporting {fmt}", progress) as advance:
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

    pinned = frozenset(load_public_key(p) for p in public_keys) if public_keys else None
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
