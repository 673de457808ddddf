"""The node key: owner-only on disk, stable across restarts, one key even when processes race."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dicom_chain.errors import KeyFileError, SignatureError
from dicom_chain.keys import NodeKey, load_public_key, verify_signature


def test_made_on_first_use_with_owner_only_permissions(tmp_path: Path):
    path = tmp_path / "sub" / "node.key"
    key = NodeKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert NodeKey.load_or_create(path).public_key == key.public_key
    assert not [p for p in path.parent.iterdir() if p.name != "node.key"], "temp file left behind"


def test_widely_readable_key_is_refused(tmp_path: Path):
    path = tmp_path / "node.key"
    NodeKey.load_or_create(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        NodeKey.load(path)


def test_garbage_key_file_is_a_named_error(tmp_path: Path):
    path = tmp_path / "node.key"
    path.write_bytes(b"not a key")
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError):
        NodeKey.load(path)


def test_racing_creators_agree_on_one_key(tmp_path: Path):
    path = tmp_path / "node.key"
    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: NodeKey.load_or_create(path).public_key, range(16)))
    assert len(set(keys)) == 1


def test_exported_public_key_loads_as_pem_and_hex(tmp_path: Path):
    key = NodeKey.generate()
    pem, hexed = tmp_path / "k.pem", tmp_path / "k.hex"
    pem.write_text(key.public_pem())
    hexed.write_text(key.public_key.hex())
    assert load_public_key(pem) == key.public_key == load_public_key(hexed)
    (tmp_path / "bad").write_text("12")
    with pytest.raises(KeyFileError):
        load_public_key(tmp_path / "bad")


def test_signature_check():
    key = NodeKey.generate()
    sig = key.sign(b"message")
    verify_signature(key.public_key, sig, b"message")
    with pytest.raises(SignatureError):
        verify_signature(key.public_key, sig, b"messagE")
