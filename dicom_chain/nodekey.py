"""Which key a command signs with when it opens a ledger it did not start: the ledger decides.

The key's default place follows the settings (beside a SQLite file, else ``--home``, which
defaults to ``./var``), so on PostgreSQL it follows the working directory. A command that reads
a ledger and signs something into it (an export's proof and event, a verify run's event) must use
the key one of the ledger's chains records, never make one: an event signed by a key of no chain
breaks whole-node verify for good (docs/design.md 4).
"""

from __future__ import annotations

from dicom_chain.config import Settings
from dicom_chain.errors import ConfigError, KeyFileError, KeyMismatchError
from dicom_chain.keys import NodeKey
from dicom_chain.ledger import Ledger

WHAT_TO_PASS = "pass --key-file with the node's key, or --home of the node that owns this ledger"


def existing_ledger(settings: Settings) -> Ledger:
    """The ledger at ``settings.db_url``; a SQLite file that is not there is an error, not made."""
    sqlite_file = settings.sqlite_file
    if sqlite_file is not None and not sqlite_file.is_file():
        raise ConfigError(f"no ledger at {sqlite_file}: give --db or --home of an existing node")
    return Ledger(settings.db_url)


def owned_key(settings: Settings, ledger: Ledger) -> NodeKey:
    """The node's own key: loaded from ``settings.key_path``, never made, and only if a chain of
    ``ledger`` is signed by it; otherwise an error naming both key ids and what to pass."""
    chains = ledger.chains()
    wanted = ", ".join(c.key_id for c in chains) or "none (no chain yet)"
    path = settings.key_path
    if not path.is_file():
        raise KeyFileError(
            f"no node key at {path}; this ledger's chains are signed by key {wanted}: {WHAT_TO_PASS}"
        )
    key = NodeKey.load(path)
    if key.public_key not in {c.public_key for c in chains}:
        raise KeyMismatchError(
            f"the key at {path} is key {key.key_id}, but this ledger's chains are signed by key "
            f"{wanted}: {WHAT_TO_PASS}"
        )
    return key


def exported_key(settings: Settings) -> NodeKey:
    """The key ``keys export`` shows: made on first use only for a ledger with no chain yet (a new
    node's home), else the ledger's own (``owned_key``)."""
    sqlite_file = settings.sqlite_file
    if sqlite_file is not None and not sqlite_file.exists():  # opening the ledger would create it
        return NodeKey.load_or_create(settings.key_path)
    ledger = Ledger(settings.db_url)
    try:
        if not ledger.chains():
            return NodeKey.load_or_create(settings.key_path)
        return owned_key(settings, ledger)
    finally:
        ledger.close()
