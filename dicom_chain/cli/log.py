"""``log``: the event log as a transparency log: signed checkpoints, inclusion and consistency
proofs (RFC 9162), and their offline check. No domain logic: ``tlog/``.

Proof files are JSON: ``{"type": "inclusion", "checkpoint": <signed note>, "index", "size",
"event": base64 of the event's canonical bytes, "proof": [base64 hashes]}`` or ``{"type":
"consistency", "old": <signed note>, "new": <signed note>, "proof": [...]}``.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import click

from dicom_chain.cli.exits import EXIT_BROKEN, EXIT_OK
from dicom_chain.cli.options import NODE, config_option, settings_from, settings_options


@click.group("log")
def log_group() -> None:
    """The event log's Merkle tree: signed checkpoints and proofs anyone can check offline."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


@log_group.command("checkpoint")
@config_option
@settings_options(*NODE)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write it here.")
def checkpoint(output: Path | None, **kwargs: Any) -> None:
    """Grow the Merkle tree to the log's end and print its signed checkpoint (c2sp.org/tlog-checkpoint)."""
    from dicom_chain.node import Node
    from dicom_chain.tlog.store import EventTree

    settings = settings_from(kwargs)
    node = Node.open(settings)
    try:
        _, signed = EventTree(node.ledger).checkpoint(node.key, settings.institution)
    finally:
        node.close()
    _emit(signed, output)


@log_group.command("prove-inclusion")
@config_option
@settings_options(*NODE)
@click.argument("event_seq", type=int, required=False)
@click.option("--block", "block_hash", help="The event that recorded this block's receipt.")
@click.option(
    "--checkpoint",
    "checkpoint_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Prove against this checkpoint of ours (default: a new one).",
)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the proof here.")
def prove_inclusion(
    event_seq: int | None,
    block_hash: str | None,
    checkpoint_file: Path | None,
    output: Path | None,
    **kwargs: Any,
) -> None:
    """Prove that an event (by sequence number, or the receipt of --block) is in the log."""
    from dicom_chain.node import Node
    from dicom_chain.tlog.store import EventTree

    if (event_seq is None) == (block_hash is None):
        raise click.UsageError("give an event's sequence number or --block HASH")
    settings = settings_from(kwargs)
    node = Node.open(settings)
    try:
        tree = EventTree(node.ledger)
        cp, signed = _ours_or_new(tree, node, settings.institution, checkpoint_file)
        seq = event_seq if event_seq is not None else _receipt_seq(node, str(block_hash))
        proof = tree.inclusion(seq, cp.size)
    finally:
        node.close()
    document = {
        "type": "inclusion",
        "checkpoint": signed,
        "index": proof.index,
        "size": proof.size,
        "event": _b64(proof.leaf),
        "proof": [_b64(p) for p in proof.proof],
    }
    _emit(json.dumps(document, indent=2) + "\n", output)


def _ours_or_new(tree: Any, node: Any, institution: str, given: Path | None) -> tuple[Any, str]:
    """The checkpoint in ``given`` (signed by this node's key, else NoteError), the tree grown to
    hold it; with none given, a new one of the whole log."""
    from dicom_chain.tlog.checkpoint import open_signed

    if given is None:
        return tree.checkpoint(node.key, institution)  # type: ignore[no-any-return]
    signed = given.read_text(encoding="utf-8")
    checkpoint = open_signed(signed, node.key.public_key)
    tree.grow()
    return checkpoint, signed


def _receipt_seq(node: Any, block_hash: str) -> int:
    from dicom_chain.errors import LedgerError
    from dicom_chain.vocab import EventType

    for event, _ in node.ledger.iter_events_with_hash():
        if event.type == EventType.INSTANCE_RECEIVED and event.details.get("block_hash") == block_hash:
            return int(event.seq)
    raise LedgerError(f"no receipt of block {block_hash} in the log")


@log_group.command("prove-consistency")
@config_option
@settings_options(*NODE)
@click.argument("old", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("new", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=False)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the proof here.")
def prove_consistency(old: Path, new: Path | None, output: Path | None, **kwargs: Any) -> None:
    """Prove that the log at checkpoint OLD is a prefix of the log at NEW (default: now)."""
    from dicom_chain.node import Node
    from dicom_chain.tlog.store import EventTree

    settings = settings_from(kwargs)
    node = Node.open(settings)
    try:
        tree = EventTree(node.ledger)
        first, old_signed = _ours_or_new(tree, node, settings.institution, old)
        second, new_signed = _ours_or_new(tree, node, settings.institution, new)
        if first.size > second.size:
            raise click.UsageError("OLD is larger than NEW")
        proof = tree.consistency(first.size, second.size)
    finally:
        node.close()
    document = {
        "type": "consistency",
        "old": old_signed,
        "new": new_signed,
        "proof": [_b64(p) for p in proof],
    }
    _emit(json.dumps(document, indent=2) + "\n", output)


@log_group.command("verify-proof")
@click.argument("proof_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--public-key",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The log's key (from 'keys export'): the checkpoints must be signed by it.",
)
def verify_proof(proof_file: Path, public_key: Path) -> None:
    """Check a proof offline, with only the log's public key. Exit 0 if it holds, 1 if not."""
    from dicom_chain.errors import DicomChainError
    from dicom_chain.keys import load_public_key
    from dicom_chain.tlog.proofs import check_proof

    try:
        summary = check_proof(json.loads(proof_file.read_text(encoding="utf-8")), load_public_key(public_key))
    except (DicomChainError, ValueError, KeyError, TypeError) as exc:
        click.echo(f"BROKEN: {exc}")
        sys.exit(EXIT_BROKEN)
    click.echo(f"OK: {summary}")
    sys.exit(EXIT_OK)


@log_group.command("publish")
@config_option
@settings_options(*NODE, "witness_quorum", "tsa")
def publish(**kwargs: Any) -> None:
    """One checkpoint round now (serve runs one every --checkpoint-interval): sign, ask every
    institution with a log address to cosign, publish with a quorum. Exit 0 if published."""
    from dicom_chain.node import Node
    from dicom_chain.tlog.publishing import Publisher
    from web.publish import publish_round

    settings = settings_from(kwargs)
    node = Node.open(settings)
    try:
        done = publish_round(Publisher(node, settings.institution, settings.witness_quorum), settings.tsa)
    finally:
        node.close()
    for name in done.cosigned_by:
        click.echo(f"cosigned by {name}")
    for name, why in done.failed.items():
        click.echo(f"not cosigned by {name}: {why}")
    if done.published is None:
        click.echo(
            f"size {done.size}: {len(done.cosigned_by)} cosignature(s) of the "
            f"{settings.witness_quorum} needed: not published"
        )
        sys.exit(EXIT_BROKEN)
    stamped = ", timestamped" if done.published.timestamp else ""
    click.echo(f"published size {done.size} with {done.published.cosigners} cosignature(s){stamped}")
    sys.exit(EXIT_OK)


@log_group.command("timestamp")
@click.argument("checkpoint_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tsa", required=True, metavar="URL", help="The RFC 3161 time-stamping authority.")
@click.option(
    "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The token (DER)."
)
def timestamp(checkpoint_file: Path, tsa: str, output: Path) -> None:
    """Have a time-stamping authority date a checkpoint (RFC 3161): the token proves the
    checkpoint, and so the history it commits to, existed by then."""
    from web.tsa import request_timestamp

    output.write_bytes(request_timestamp(tsa, checkpoint_file.read_bytes()))
    click.echo(f"wrote {output}")


@log_group.command("verify-timestamp")
@click.argument("checkpoint_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("token_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--tsa-cert",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The authority's certificate (PEM).",
)
def verify_timestamp(checkpoint_file: Path, token_file: Path, tsa_cert: Path) -> None:
    """Check offline that a token dates exactly this checkpoint. Exit 0 if it does, 1 if not."""
    from dicom_chain.errors import DicomChainError
    from dicom_chain.tlog.timestamps import check_token

    try:
        stamp = check_token(token_file.read_bytes(), checkpoint_file.read_bytes(), tsa_cert.read_bytes())
    except DicomChainError as exc:
        click.echo(f"BROKEN: {exc}")
        sys.exit(EXIT_BROKEN)
    click.echo(f"OK: timestamped by {stamp.tsa} at {stamp.time.isoformat()} (serial {stamp.serial})")
    sys.exit(EXIT_OK)
