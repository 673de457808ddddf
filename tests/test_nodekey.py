"""Commands that read a ledger never make a key, and sign into it only with a key its chains record.

The key's default place follows the working directory when the ledger is PostgreSQL (``./var``):
these run the CLI from another folder with ``--db`` and no ``--home``, as an operator would.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from dicom_chain.cli import main
from dicom_chain.config import Settings
from dicom_chain.errors import KeyFileError, KeyMismatchError
from dicom_chain.keys import NodeKey
from dicom_chain.ledger import Ledger
from dicom_chain.node import Node
from dicom_chain.nodekey import exported_key, owned_key

from .conftest import pydicom_file


@pytest.fixture
def chained(db_url: str, tmp_path: Path) -> Settings:
    """A node whose home is tmp_path/node, its ledger at ``db_url``, two instances chained."""
    settings = Settings(home=tmp_path / "node", db=db_url, institution="Test Hospital")
    node = Node.open(settings)
    try:
        for name in ("CT_small.dcm", "MR_small.dcm"):
            node.ingest_file(pydicom_file(name))
    finally:
        node.close()
    return settings


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def event_count(settings: Settings) -> int:
    ledger = Ledger(settings.db_url)
    try:
        return ledger.event_count()
    finally:
        ledger.close()


def whole_node_ok(settings: Settings) -> None:
    """Whole-node verify with the node's own key, pinned: every event is some chain's."""
    result = cli(
        "verify", "--db", settings.db_url, "--storage", str(settings.storage_dir),
        "--key-file", str(settings.key_path),
    )  # fmt: skip
    assert result.exit_code in (0, 3), result.output
    assert "event-bad-signature" not in result.output and "BROKEN" not in result.output


def test_reading_from_another_folder_makes_no_key(chained: Settings, elsewhere: Path):
    node_key = NodeKey.load(chained.key_path)
    db = ["--db", chained.db_url]
    verified = cli("verify", *db, "--storage", str(chained.storage_dir))
    assert verified.exit_code in (0, 3), verified.output
    exported = cli("audit", "export", *db, "--format", "json", "--output", "all.jsonl")
    shown = cli("keys", "export", *db, "--format", "hex")  # keys export reads no ledger: a usage error
    assert shown.exit_code == 2 and "No such option" in shown.output
    if chained.sqlite_file is None:  # PostgreSQL: ./var/node.key is not the node's, and is not made
        assert "not recorded" in verified.output and node_key.key_id in verified.output
        assert exported.exit_code == 1 and node_key.key_id in exported.output
        assert "--key-file" in exported.output and "--home" in exported.output
    else:  # SQLite: the key beside the database file is the node's
        assert exported.exit_code == 0, exported.output
    assert not (elsewhere / "var").exists()
    whole_node_ok(chained)


@pytest.mark.postgres
def test_a_stray_key_in_the_working_directory_signs_nothing(postgres, tmp_path: Path, elsewhere: Path):
    """A ``./var/node.key`` of some other node where the command runs: verify does not record its
    run with it and audit export refuses, naming both keys; the node stays verifiable."""
    settings = Settings(home=tmp_path / "node", db=postgres.create_database())
    node = Node.open(settings)
    node.ingest_file(pydicom_file("CT_small.dcm"))
    node.close()
    node_id = NodeKey.load(settings.key_path).key_id
    stray_id = NodeKey.load_or_create(elsewhere / "var" / "node.key").key_id
    before = event_count(settings)
    db = ["--db", settings.db_url]
    verified = cli("verify", *db, "--storage", str(settings.storage_dir))
    assert verified.exit_code in (0, 3), verified.output
    assert "not recorded" in verified.output and stray_id in verified.output and node_id in verified.output
    exported = cli("audit", "export", *db, "--format", "json", "--output", "all.jsonl")
    assert exported.exit_code == 2, exported.output  # a configuration error: the wrong key was found
    assert stray_id in exported.output and node_id in exported.output and "--key-file" in exported.output
    assert not (elsewhere / "all.jsonl").exists()
    assert event_count(settings) == before  # nothing signed into the ledger with the stray key
    whole_node_ok(settings)


def test_with_the_node_key_given_reading_commands_sign(chained: Settings, elsewhere: Path):
    """--key-file names the node's key: the export is proved with it and recorded, the verify run
    recorded, and the node still verifies whole."""
    before = event_count(chained)
    mine = ["--db", chained.db_url, "--key-file", str(chained.key_path)]
    verified = cli("verify", *mine, "--storage", str(chained.storage_dir))
    assert verified.exit_code == 0 and "not recorded" not in verified.output, verified.output
    exported = cli("audit", "export", *mine, "--format", "json", "--output", "all.jsonl")
    assert exported.exit_code == 0, exported.output
    assert event_count(chained) == before + 2  # verify.node and audit.export
    (elsewhere / "node.pub").write_text(NodeKey.load(chained.key_path).public_pem())
    checked = cli("audit", "verify", "all.jsonl", "--public-key", "node.pub")
    assert checked.exit_code == 0, checked.output
    whole_node_ok(chained)


def test_owned_key_names_both_keys(chained: Settings, tmp_path: Path):
    ledger = Ledger(chained.db_url)
    try:
        assert owned_key(chained, ledger).public_key == NodeKey.load(chained.key_path).public_key
        other = NodeKey.load_or_create(tmp_path / "other.key")
        mine = NodeKey.load(chained.key_path)
        with pytest.raises(KeyMismatchError, match=f"{other.key_id}.*{mine.key_id}"):
            owned_key(Settings(db=chained.db_url, key_file=tmp_path / "other.key"), ledger)
        with pytest.raises(KeyFileError, match="no node key at"):
            owned_key(Settings(db=chained.db_url, key_file=tmp_path / "absent.key"), ledger)
        assert not (tmp_path / "absent.key").exists()
    finally:
        ledger.close()


def test_keys_export_makes_a_key_only_for_a_new_node(tmp_path: Path):
    fresh = Settings(home=tmp_path / "new")
    made = exported_key(fresh)  # a new home: made on first use, as the node would make it
    assert fresh.key_path.is_file() and exported_key(fresh).public_key == made.public_key
