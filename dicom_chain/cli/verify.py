"""``verify``: files on their own (blocks and the links between them), or the whole node.

Exit status: 0 all intact, 1 something is broken, 2 usage error, 3 intact but no signer key was
pinned (who signed was not checked).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from dicom_chain.cli.console import progress_bar
from dicom_chain.cli.exits import EXIT_BROKEN, EXIT_OK, EXIT_UNCHECKED
from dicom_chain.cli.options import config_option, settings_options
from dicom_chain.findings import Report
from dicom_chain.vocab import Severity


@click.command()
@config_option
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@settings_options(
    "home",
    "db",
    "storage",
    help_for={
        "home": "Node home whose key (and registered institutions) pin the signers of files.",
        "db": (
            "Check the whole node in this ledger (needs --storage); with files, check against it "
            "each link whose predecessor is not among them."
        ),
        "storage": "The node's store of instances, with --db and no files.",
    },
)
@click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=(
        "Trust only blocks signed by this key (repeatable; from 'keys export'). Default: the node's "
        "own key and its registered institutions' keys."
    ),
)
@click.option(
    "--complete",
    is_flag=True,
    help="Files: the studies given are whole; a missing instance is an error (default: a subset is fine).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar on stderr (default: when a terminal)."
)
@click.option(
    "--update-index",
    is_flag=True,
    help=(
        "With --db and no files: also store each instance's result as its verification state "
        "(returned by C-FIND)."
    ),
)
@settings_options(
    "key_file",
    help_for={
        "key_file": (
            "With --db: the node key that signs this run's event (default: beside the SQLite "
            "database); one the ledger's chains do not record signs nothing."
        )
    },
)
def verify(
    paths: tuple[Path, ...],
    home: Path,
    db: str | None,
    storage: Path | None,
    public_keys: tuple[Path, ...],
    complete: bool,
    as_json: bool,
    progress: bool | None,
    update_index: bool,
    key_file: Path | None,
) -> None:
    """Check files (their blocks and the links between them) or, with --db alone, the whole node.

    Files given with --db: each link whose predecessor is not among them (part of a study) is
    checked against the block that ledger records there, instead of being left unchecked.

    Signers are pinned: the keys given with --public-key, else the node's own key (from --home, or
    beside the SQLite database given) and its registered institutions' keys; a block signed by any
    other key is broken. With no key to pin, the signer is not checked and the exit status says so.

    \b
    Exit status: 0 all intact, 1 something is broken, 2 usage error,
    3 intact, but signers not checked (no key pinned).
    """
    from dicom_chain.config import Settings
    from dicom_chain.keys import load_public_key
    from dicom_chain.verify import expand_paths, verify_files
    from dicom_chain.verifyrun import pinned_keys, verify_whole_node

    if not paths and not db:
        raise click.UsageError("give files/folders to check, or --db URL --storage DIR for the whole node")
    whole_node = not paths
    if whole_node and storage is None:
        raise click.UsageError("--db needs --storage (or files to check against the ledger)")
    if update_index and not whole_node:
        raise click.UsageError("--update-index needs --db and no files")
    given = frozenset(load_public_key(p) for p in public_keys) if public_keys else None
    settings = Settings(home=home, db=db, storage=storage, key_file=key_file)
    # A whole node holds several chains (research exports have their own key), each key on the
    # record: only the keys given are pinned there. Files alone carry their key: pin by default.
    trusted = given if whole_node else pinned_keys(settings, given)
    if whole_node:
        run = verify_whole_node(
            settings,
            trusted,
            update_index=update_index,
            track=lambda total: progress_bar(total, "verifying node", progress),
        )
        if run.not_recorded:
            click.echo(run.not_recorded, err=True)
        report = run.report
    else:
        files = expand_paths(paths)
        ledger = None
        if db:
            from dicom_chain.ledger import Ledger

            ledger = Ledger(settings.db_url)
        try:
            with progress_bar(len(files), "verifying files", progress) as advance:
                report = verify_files(files, trusted, advance, complete=complete, ledger=ledger)
        finally:
            if ledger is not None:
                ledger.close()
    show_report(report, as_json)
    sys.exit(EXIT_BROKEN if not report.ok else EXIT_OK if report.signers_checked else EXIT_UNCHECKED)


def show_report(report: Report, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    for f in report.findings:
        where = " ".join(
            part
            for part in (
                f.path,
                f"SOP {f.sop_instance_uid}" if f.sop_instance_uid else "",
                f"height {f.height}" if f.height is not None else "",
            )
            if part
        )
        label = "BROKEN" if f.severity == Severity.ERROR else "note"
        click.echo(f"{label:<6} {f.kind:<17} {f.message}" + (f"  [{where}]" if where else ""))
    summary = (
        f"{report.files_checked} file(s), {report.blocks_checked} block(s), "
        f"{report.events_checked} event(s) checked"
    )
    if report.ok and report.signers_checked:
        click.echo(f"OK: {summary}; every block, signature and link holds.")
    elif report.ok:
        click.echo(
            f"INTACT, SIGNER NOT CHECKED: {summary}; every block, signature and link holds, but no key "
            "was pinned (--public-key, or a node home with its key), so who signed was not checked."
        )
    else:
        click.echo(f"BROKEN: {len(report.errors)} problem(s); {summary}.")
