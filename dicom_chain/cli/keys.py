"""``keys``: the node's signing key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from dicom_chain.cli.options import config_option, settings_from, settings_options


@click.group()
def keys() -> None:
    """The node's signing key."""


@keys.command("export")
@config_option
@settings_options("home", "key_file")  # where the key file is; the ledger and storage play no part
@click.option("--format", "fmt", type=click.Choice(["pem", "hex"]), default="pem", show_default=True)
@click.option(
    "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout."
)
def keys_export(fmt: str, output: Path | None, **kwargs: Any) -> None:
    """Print the node's public key, for 'verify --public-key' elsewhere (made on first use of a new
    node; for a ledger with chains, only the key one of them records)."""
    from dicom_chain.nodekey import exported_key

    key = exported_key(settings_from(kwargs))
    text = key.public_pem() if fmt == "pem" else key.public_key.hex() + "\n"
    if output:
        output.write_text(text, encoding="ascii")
        click.echo(f"public key {key.key_id} written to {output}", err=True)
    else:
        click.echo(text, nl=False)
