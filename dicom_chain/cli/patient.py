"""``patient``: what concerns one patient: their access log here; ``research`` (cli/research.py) adds
itself to this group."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from dicom_chain.cli.options import NODE, config_option, settings_from, settings_options

# The access log reads the ledger and the query index and signs its proof: no storage, no institution.
LOG_SETTINGS = ("home", "db", "key_file")
SUFFIXES = {"text": ".txt", "json": ".json", "fhir": ".fhir.json", "html": ".html"}


@click.group()
def patient() -> None:
    """Patients: their access log, their research choices."""


@patient.command("access-log")
@config_option
@settings_options(*LOG_SETTINGS)
@click.argument("patient_id")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(SUFFIXES)),
    default="text",
    show_default=True,
    help="text or html: for the patient; json: the same entries for programs; "
    "fhir: the patient's audit export as an R4 Bundle of AuditEvent.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write it (default: access-log-PATIENT_ID with the format's suffix). "
    "The proof goes beside it (see the log's last lines).",
)
def access_log(patient_id: str, fmt: str, output: Path | None, **kwargs: Any) -> None:
    """Everything that touched PATIENT_ID's studies, in plain words, with the proof it is complete.

    Queries whose answers disclosed the patient count as access. text, json and html are
    rendered from the JSON Lines audit export written beside them (OUTPUT.events.jsonl, with
    its .proof); fhir is that audit export itself (OUTPUT.proof). Check either with
    'dicom-chain audit verify'.
    """
    from dicom_chain.actors import local_user
    from dicom_chain.audit import accesslog, proof_path
    from dicom_chain.block import utc_now
    from dicom_chain.nodekey import existing_ledger, owned_key

    settings = settings_from(kwargs)
    if output is None:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in patient_id)
        output = Path(f"access-log-{safe}{SUFFIXES[fmt]}")
    ledger = existing_ledger(settings)
    try:
        key = owned_key(settings, ledger)  # the proof is signed with the node's own key, never a new one
        signed = accesslog.write(
            ledger,
            key,
            patient_id,
            output,
            fmt,
            actor=local_user(),
            source_id=f"dicom-chain@{key.key_id}",
            now=utc_now(),
        )
    finally:
        ledger.close()
    statement = signed["statement"]
    checked = output if fmt == "fhir" else accesslog.events_path(output)
    click.echo(f"{statement['count']} events about {patient_id} -> {output}")
    click.echo(
        f"export {checked}, proof {proof_path(checked)}: check with 'dicom-chain audit verify {checked}'"
    )


@patient.command("link")
@config_option
@settings_options(*NODE)
@click.argument("patient_id")
@click.option("--days", type=click.IntRange(1, 365), default=30, show_default=True, help="How long it works.")
@click.option(
    "--base-url",
    default="",
    metavar="https://HOST:PORT",
    help="The console's address as the patient reaches it (default: print the path only).",
)
def patient_link(patient_id: str, days: int, base_url: str, **kwargs: Any) -> None:
    """A link the patient opens to see who accessed their studies (the web console's patient page).
    Shown once: only its hash is kept."""
    from dicom_chain.actors import local_user
    from dicom_chain.node import Node
    from dicom_chain.users import PatientLinks

    node = Node.open(settings_from(kwargs))
    try:
        link = PatientLinks(node.ledger, node.key).issue(patient_id, days=days, actor=str(local_user()))
    finally:
        node.close()
    click.echo(f"{base_url.rstrip('/')}/p/{link.token}")
    click.echo(f"valid until {link.expires_at}", err=True)
