"""``institution``, ``consent``, ``policy``: sharing studies with other institutions.

Each command is one library call (``dicom_chain.sharing``) and its printing; the time a command
decides at is now, taken here at the edge, or ``--at`` to ask about another moment.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dicom_chain.cli.options import NODE, config_option, settings_from, settings_options

if TYPE_CHECKING:
    from dicom_chain.node import Node
    from dicom_chain.sharing.consent import Consent

PURPOSE = click.Choice(["treatment", "research", "second-opinion"])


@contextmanager
def _node(kwargs: dict[str, Any]) -> Iterator[Node]:
    from dicom_chain.node import Node

    node = Node.open(settings_from(kwargs))
    try:
        yield node
    finally:
        node.close()


def _now(at: str | None) -> str:
    from dicom_chain.block import utc_now
    from dicom_chain.sharing import times

    return times.normalise(at) if at else utc_now()


def _actor() -> str:
    from dicom_chain.actors import local_user

    return local_user()


# -- institutions ---------------------------------------------------------------------------------


@click.group()
def institution() -> None:
    """The institutions this node shares studies with."""


@institution.command("add")
@config_option
@settings_options(*NODE)
@click.argument("name")
@click.option("--ae", "ae_title", required=True, help="The AE title of its gateway.")
@click.option("--host", "peer_host", required=True, help="Its gateway's host name or address.")
@click.option("--port", "peer_port", required=True, type=click.IntRange(1, 65535), help="Its gateway's port.")
@click.option(
    "--public-key",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Its node's public key, as its 'dicom-chain keys export' wrote it (PEM or hex).",
)
@click.option(
    "--tls-cert",
    "peer_tls_cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Its gateway's TLS certificate (PEM); its log's HTTPS server is trusted by the same one.",
)
@click.option(
    "--log-url",
    default="",
    metavar="https://HOST:PORT",
    help="Where its node's transparency log answers ('serve --http-port'): we witness it, it witnesses us.",
)
def institution_add(
    name: str,
    ae_title: str,
    peer_host: str,
    peer_port: int,
    public_key: Path,
    peer_tls_cert: Path | None,
    log_url: str,
    **kwargs: Any,
) -> None:
    """Register an institution (an event on the ledger)."""
    from dicom_chain.sharing.registry import Registry

    with _node(kwargs) as node:
        inst = Registry(node.ledger, node.key).add(
            name,
            ae_title=ae_title,
            host=peer_host,
            port=peer_port,
            public_key_file=public_key,
            tls_cert=peer_tls_cert,
            log_url=log_url,
            actor=_actor(),
            now=_now(None),
        )
    click.echo(f"registered {inst.name}: {inst.ae_title}@{inst.host}:{inst.port}, key {inst.key_id}")


@institution.command("update")
@config_option
@settings_options(*NODE)
@click.argument("name")
@click.option(
    "--log-url", default=None, metavar="https://HOST:PORT", help="Where its transparency log answers."
)
@click.option(
    "--tls-cert",
    "peer_tls_cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Its new TLS certificate (PEM).",
)
def institution_update(name: str, log_url: str | None, peer_tls_cert: Path | None, **kwargs: Any) -> None:
    """Give a registered institution its log's address or a new certificate (an event)."""
    from dicom_chain.sharing.registry import Registry

    if log_url is None and peer_tls_cert is None:
        raise click.UsageError("say what changes: --log-url, --tls-cert")
    with _node(kwargs) as node:
        inst = Registry(node.ledger, node.key).update(
            name, log_url=log_url, tls_cert=peer_tls_cert, actor=_actor()
        )
    click.echo(
        f"updated {inst.name}: log {inst.log_url or '-'}, certificate {'yes' if inst.tls_cert else 'none'}"
    )


@institution.command("list")
@config_option
@settings_options(*NODE)
@click.option("--all", "include_removed", is_flag=True, help="Also those removed.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def institution_list(include_removed: bool, as_json: bool, **kwargs: Any) -> None:
    """The registered institutions."""
    from dicom_chain.sharing.registry import Registry

    with _node(kwargs) as node:
        found = Registry(node.ledger, None).all(include_removed=include_removed)
    if as_json:
        click.echo(
            json.dumps(
                [{**i.details(), "added_at": i.added_at, "removed_at": i.removed_at} for i in found], indent=2
            )
        )
        return
    if not found:
        click.echo("no institution registered")
    for i in found:
        removed = f"  removed {i.removed_at}" if i.removed_at else ""
        click.echo(f"{i.name:<20} {i.ae_title}@{i.host}:{i.port}  key {i.key_id}{removed}")


@institution.command("show")
@config_option
@settings_options(*NODE)
@click.argument("name")
def institution_show(name: str, **kwargs: Any) -> None:
    """One institution: its address, key, certificate, and when it was added or removed."""
    from dicom_chain.errors import SharingError
    from dicom_chain.sharing.registry import Registry

    with _node(kwargs) as node:
        inst = Registry(node.ledger, None).by_name(name, include_removed=True)
    if inst is None:
        raise SharingError(f"no institution {name}")
    click.echo(f"name        {inst.name}")
    click.echo(f"address     {inst.ae_title}@{inst.host}:{inst.port}")
    click.echo(f"key id      {inst.key_id}")
    click.echo(f"public key  {inst.public_key.hex()}")
    click.echo(f"tls         {'certificate on file' if inst.tls_cert else 'none'}")
    click.echo(f"added       {inst.added_at}")
    if inst.removed_at:
        click.echo(f"removed     {inst.removed_at}")


@institution.command("remove")
@config_option
@settings_options(*NODE)
@click.argument("name")
def institution_remove(name: str, **kwargs: Any) -> None:
    """Remove an institution (an event; its history stays)."""
    from dicom_chain.sharing.registry import Registry

    with _node(kwargs) as node:
        Registry(node.ledger, node.key).remove(name, actor=_actor(), now=_now(None))
    click.echo(f"removed {name}")


@institution.command("score")
@config_option
@settings_options(*NODE)
@click.argument("name")
@click.option("--explain", is_flag=True, help="List the events that made the score.")
@click.option("--at", help="The score at this ISO 8601 time (default: now).")
def institution_score(name: str, explain: bool, at: str | None, **kwargs: Any) -> None:
    """An institution's score, recomputed from the ledger's events under the policy in force."""
    from dicom_chain.sharing import scores, service

    with _node(kwargs) as node:
        score = service.score(node, scores.INSTITUTION, name, _now(at))
    if explain:
        for line in score.explain():
            click.echo(line)
    else:
        click.echo(f"{name} {scores.shown(score.value)}")


# -- consent --------------------------------------------------------------------------------------


@click.group()
def consent() -> None:
    """Patients' consents: who may receive their studies, for what, until when."""


def _consent_line(c: Consent) -> str:
    from dicom_chain.sharing import times

    studies = ", ".join(c.studies) if c.studies else "all studies"
    state = f"revoked {times.day(c.revoked_at)}" if c.revoked_at else "in force"
    return (
        f"{c.consent_id}  patient {c.patient_id}  {c.institution}  {c.purpose}  "
        f"{times.day(c.start)} to {times.day(c.until)}  {studies}  {state}"
    )


@consent.command("grant")
@config_option
@settings_options(*NODE)
@click.argument("patient_id")
@click.option("--to", "to", required=True, help="The institution (registered) the consent is for.")
@click.option("--until", required=True, help="When the consent ends (ISO 8601, UTC unless it says).")
@click.option("--from", "start", help="When it begins (default: now).")
@click.option(
    "--study", "studies", multiple=True, help="Only this Study Instance UID (repeatable; none: all)."
)
@click.option("--purpose", type=PURPOSE, default="treatment", show_default=True)
@click.option("--issuer", default="", help="Issuer of Patient ID.")
def consent_grant(
    patient_id: str,
    to: str,
    until: str,
    start: str | None,
    studies: tuple[str, ...],
    purpose: str,
    issuer: str,
    **kwargs: Any,
) -> None:
    """Record a patient's consent (an event)."""
    from dicom_chain.sharing import service

    with _node(kwargs) as node:
        c = service.grant_consent(
            node,
            patient_id=patient_id,
            to=to,
            until=until,
            start=start,
            studies=studies,
            purpose=purpose,
            issuer=issuer,
            actor=_actor(),
            now=_now(None),
        )
    click.echo(f"consent {c.consent_id}")
    click.echo(_consent_line(c))


@consent.command("revoke")
@config_option
@settings_options(*NODE)
@click.argument("consent_id")
@click.option("--reason", default="", help="Why, in the patient's words.")
def consent_revoke(consent_id: str, reason: str, **kwargs: Any) -> None:
    """Revoke a consent from now on (an event; decisions made under it stay as recorded)."""
    from dicom_chain.sharing import service

    with _node(kwargs) as node:
        c = service.revoke_consent(node, consent_id, actor=_actor(), reason=reason)
    click.echo(_consent_line(c))


@consent.command("list")
@config_option
@settings_options(*NODE)
@click.argument("patient_id", required=False)
def consent_list(patient_id: str | None, **kwargs: Any) -> None:
    """Consents, all or one patient's, with their state."""
    from dicom_chain.sharing import service

    with _node(kwargs) as node:
        found = service.all_consents(node, patient_id)
    if not found:
        click.echo("no consent recorded")
    for c in found:
        click.echo(_consent_line(c))


@consent.command("import")
@config_option
@settings_options(*NODE)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def consent_import(file: Path, **kwargs: Any) -> None:
    """Record the consents of a FHIR R4 Consent resource or Bundle (JSON); known ones are skipped."""
    from dicom_chain.sharing import service

    with _node(kwargs) as node:
        done = service.import_consents(node, file.read_text(encoding="utf-8"), actor=_actor(), now=_now(None))
    click.echo(f"imported {len(done)} consent{'s' if len(done) != 1 else ''}")
    for c in done:
        click.echo(_consent_line(c))


@consent.command("export")
@config_option
@settings_options(*NODE)
@click.option("--patient", help="Only this patient's consents.")
@click.option(
    "--format", "fmt", type=click.Choice(["fhir"]), required=True, help="fhir: an R4 Bundle of Consent."
)
@click.option(
    "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout."
)
def consent_export(patient: str | None, fmt: str, output: Path | None, **kwargs: Any) -> None:
    """Consents as FHIR R4 Consent resources, for the hospital's record systems."""
    from dicom_chain.sharing import fhirconsent, service

    with _node(kwargs) as node:
        found = service.all_consents(node, patient)
    text = json.dumps(fhirconsent.bundle(found), indent=2) + "\n"
    if output:
        output.write_text(text, encoding="utf-8")
        click.echo(f"{len(found)} consents written to {output}", err=True)
    else:
        click.echo(text, nl=False)


# -- policy ---------------------------------------------------------------------------------------


@click.group("policy")
def policy_group() -> None:
    """The sharing policy: the rules releases are decided by."""


@policy_group.command("check")
@config_option
@settings_options(*NODE)
@click.option("--patient", required=True, help="The patient's ID.")
@click.option("--study", required=True, help="The Study Instance UID.")
@click.option("--to", "to", required=True, help="The institution it would go to.")
@click.option("--purpose", type=PURPOSE, default="treatment", show_default=True)
@click.option("--at", help="Decide as at this ISO 8601 time (default: now).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def policy_check(
    patient: str, study: str, to: str, purpose: str, at: str | None, as_json: bool, **kwargs: Any
) -> None:
    """The decision a release would get, and its reasons: nothing is sent or recorded."""
    from dicom_chain.sharing import service

    with _node(kwargs) as node:
        d = service.check_release(
            node, study_uid=study, to=to, purpose=purpose, now=_now(at), patient_id=patient
        )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "allowed": d.allowed,
                    "reasons": list(d.reasons),
                    "consent_id": d.consent_id,
                    "scores": dict(d.scores),
                    "policy_hash": d.policy_hash,
                },
                indent=2,
            )
        )
        return
    click.echo(f"{'allowed' if d.allowed else 'denied'}: {study} to {to} for {purpose}")
    for reason in d.reasons:
        click.echo(f"  {reason}")
    click.echo(f"policy {d.policy_hash[:16]}")


@policy_group.command("show")
@config_option
@settings_options(*NODE)
@click.option("--text", "with_text", is_flag=True, help="Also print the policy file in force.")
def policy_show(with_text: bool, **kwargs: Any) -> None:
    """The policy in force, its hash, and its history (the policy.changed events)."""
    from dicom_chain.sharing import facts

    with _node(kwargs) as node:
        in_force = node.policy
        history = facts.policy_history(node.ledger)
    click.echo(f"policy in force {in_force.hash}")
    if not history:
        click.echo("history: none recorded yet (the shipped default; recorded with the first decision)")
    for e in history:
        source = e.details.get("source") or "the shipped default"
        click.echo(f"{e.time}  event {e.seq}  {e.details['hash'][:16]}  from {source}  by {e.actor}")
    if with_text:
        click.echo("")
        click.echo(in_force.text, nl=False)
