"""``prove``: a bundle proving an image's state at a time, and its offline check (tlog/bundle.py).

``prove UID --output FILE`` builds one (UID: a SOP Instance or a Study Instance UID);
``prove verify FILE`` checks one, with exit codes as ``verify``'s: 0 holds, 1 broken, 3 holds but
the log's key was read from the bundle rather than given with ``--public-key``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from dicom_chain.cli.exits import EXIT_BROKEN, EXIT_OK, EXIT_UNCHECKED
from dicom_chain.cli.options import NODE, config_option, settings_from, settings_options


class DefaultCommandGroup(click.Group):
    """A group whose first argument, when it names no subcommand, goes to ``default``: ``prove
    UID`` makes a bundle and ``prove verify FILE`` checks one."""

    default = "make"

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[Any, Any, list[str]]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = [self.default, *args]
        return super().resolve_command(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "UID [--at ISO8601] --output FILE | verify FILE ...")


@click.group("prove", cls=DefaultCommandGroup)
def prove_group() -> None:
    """Prove what an image was at receipt and at every later event, to anyone, offline."""


@prove_group.command("make", hidden=True)
@config_option
@settings_options(*NODE)
@click.argument("uid")
@click.option("--at", "at", metavar="ISO8601", help="The state as the log stood then (default: now).")
@click.option(
    "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Write the bundle here."
)
def prove_make(uid: str, at: str | None, output: Path, **kwargs: Any) -> None:
    """A bundle for a SOP Instance or Study Instance UID."""
    from dicom_chain.node import Node
    from dicom_chain.tlog import note
    from dicom_chain.tlog.bundle import build

    settings = settings_from(kwargs)
    node = Node.open(settings)
    try:
        document = build(node, settings.institution, uid, at)
    finally:
        node.close()
    output.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    _, signatures = note.parse(document["checkpoint"])
    witnessed = (
        f"checkpoint cosigned by {len(signatures) - 1}"
        if len(signatures) > 1
        else "checkpoint not yet witnessed"
    )
    click.echo(
        f"wrote {output}: {len(document['events'])} events, {len(document['blocks'])} block(s), {witnessed}"
    )


@prove_group.command("verify")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The log's key (from its 'keys export'); without it the bundle's own is used, and the exit is 3.",
)
@click.option(
    "--image",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The image file: it must be the content the log recorded.",
)
@click.option(
    "--tsa-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The time-stamping authority's certificate (PEM), to check the checkpoint's RFC 3161 timestamp.",
)
@click.option(
    "--witness",
    "witness_keys",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A witness's public key you trust (repeatable): only these cosignatures count.",
)
@click.option(
    "--quorum", type=click.IntRange(0, 64), default=0, show_default=True, help="Pinned cosignatures required."
)
def prove_verify(
    bundle: Path,
    public_key: Path | None,
    image: Path | None,
    tsa_cert: Path | None,
    witness_keys: tuple[Path, ...],
    quorum: int,
) -> None:
    """Check a bundle offline. Exit 0 if it holds, 1 if not, 3 if it holds with an unpinned key."""
    from dicom_chain.carriers.registry import open_file
    from dicom_chain.keys import load_public_key
    from dicom_chain.tlog.bundle import check

    try:
        document = json.loads(bundle.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        click.echo(f"BROKEN: {bundle} is not a bundle: {exc}")
        sys.exit(EXIT_BROKEN)
    key = load_public_key(public_key) if public_key else None
    carried = open_file(image) if image else None
    checked = check(
        document if isinstance(document, dict) else {},
        key,
        carried,
        tsa_cert.read_bytes() if tsa_cert else None,
        [load_public_key(k) for k in witness_keys],
        quorum,
    )
    for line in checked.lines:
        click.echo(f"  {line}")
    for problem in checked.problems:
        click.echo(f"  BROKEN: {problem}")
    if not checked.ok:
        click.echo(f"BROKEN: {len(checked.problems)} problem(s)")
        sys.exit(EXIT_BROKEN)
    if not checked.pinned:
        click.echo("OK, but unpinned: the log's key was read from the bundle (give --public-key)")
        sys.exit(EXIT_UNCHECKED)
    click.echo("OK: the image's state is as the log recorded it, and the log is as its checkpoint says")
    sys.exit(EXIT_OK)
