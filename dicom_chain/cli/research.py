"""Research: ``patient research PATIENT_ID --opt-in|--opt-out``, and ``research-export`` of a
de-identified copy of an opted-in patient's study. No domain logic: ``sharing/research.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from dicom_chain.cli.options import NODE, config_option, settings_from, settings_options
from dicom_chain.cli.patient import patient


@patient.command("research")
@config_option
@settings_options(*NODE)
@click.argument("patient_id")
@click.option("--opt-in/--opt-out", "opt_in", required=True, help="The patient's decision.")
@click.option("--issuer", default="", help="Issuer of Patient ID, where the ID needs one.")
def research(patient_id: str, opt_in: bool, issuer: str, **kwargs: Any) -> None:
    """Record a patient's research opt-in or opt-out (the latest one counts)."""
    from dicom_chain.actors import local_user
    from dicom_chain.node import Node
    from dicom_chain.sharing.research import opt_in_draft

    node = Node.open(settings_from(kwargs))
    try:
        node.record(opt_in_draft(patient_id, issuer, opt_in=opt_in, actor=local_user()))
    finally:
        node.close()
    click.echo(f"patient {patient_id}: {'opted in to' if opt_in else 'opted out of'} research")


@click.command("research-export")
@config_option
@settings_options(*NODE)
@click.option("--study", "study_uid", required=True, help="Study Instance UID of the study to export.")
@click.option(
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the de-identified copies (new or empty).",
)
@click.option(
    "--profile",
    type=click.Choice(["basic"]),
    default="basic",
    show_default=True,
    help="PS3.15 Annex E confidentiality profile.",
)
def research_export(study_uid: str, output: Path, profile: str, **kwargs: Any) -> None:
    """Export a de-identified, re-chained copy of a study whose patient opted in to research."""
    from dicom_chain.actors import local_user
    from dicom_chain.block import utc_now
    from dicom_chain.carriers.dicom.deidentify import StudyDeidentifier
    from dicom_chain.node import Node
    from dicom_chain.sharing.research import export_study, research_settings

    settings = settings_from(kwargs)
    node = Node.open(settings)
    try:
        research = Node.open(research_settings(settings))
        try:
            deidentifier = StudyDeidentifier(profile)
            result = export_study(
                node, research, deidentifier, study_uid, output, now=utc_now(), actor=local_user()
            )
        finally:
            research.close()
    finally:
        node.close()
    click.echo(
        f"exported {len(result.files)} instance(s) of {study_uid} to {output} "
        f"as study {result.deidentified_study_uid}"
    )
