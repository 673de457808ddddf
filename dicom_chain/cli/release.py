"""``release STUDY_UID --to INSTITUTION``: send a study to another institution, if the rules allow.

One call (``scp.release.release_study``: decide and record, then C-STORE), then its printing.
Exit status: 0 every instance stored by the receiving gateway, 1 denied or any instance not stored.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from dicom_chain.cli.exits import EXIT_BROKEN, EXIT_OK
from dicom_chain.cli.options import NODE, config_option, settings_from, settings_options
from dicom_chain.vocab import SubOperation


@click.command("release")
@config_option
@settings_options(*NODE, "ae_title", "policy_now")
@click.argument("study_uid")
@click.option("--to", "to", required=True, help="The registered institution to send the study to.")
@click.option(
    "--purpose",
    type=click.Choice(["treatment", "research", "second-opinion"]),
    default="treatment",
    show_default=True,
    help="What the institution needs the study for (the policy and the consent name purposes).",
)
def release(study_uid: str, to: str, purpose: str, **kwargs: Any) -> None:
    """Send a study to another institution's gateway when the sharing rules allow it (recorded either way)."""
    from dicom_chain.actors import local_user
    from dicom_chain.node import Node
    from scp.release import release_study

    node = Node.open(settings_from(kwargs))
    try:
        done = release_study(node, study_uid, to, purpose=purpose, actor=local_user())
    finally:
        node.close()
    inst = done.institution
    if not done.decision.allowed:
        click.echo(f"release of {study_uid} to {to} denied:", err=True)
        for reason in done.decision.reasons:
            click.echo(f"  - {reason}", err=True)
        sys.exit(EXIT_BROKEN)
    click.echo(f"release of {study_uid} to {to} allowed: {done.decision.reason}")
    for sent in done.sent:
        status = "no answer" if sent.status is None else f"0x{sent.status:04X}"
        why = f"  {sent.reason}" if sent.reason else ""
        click.echo(f"  {sent.sop_instance_uid}  {sent.outcome}  {status}{why}")
    stored = sum(1 for s in done.sent if s.outcome is not SubOperation.FAILURE)
    where = f"{inst.ae_title}@{inst.host}:{inst.port}"
    click.echo(f"{stored}/{len(done.sent)} instance(s) stored by {inst.name} ({where})")
    sys.exit(EXIT_OK if done.complete else EXIT_BROKEN)
