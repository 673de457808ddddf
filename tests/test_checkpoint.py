"""Signed notes and checkpoints (dicom_chain/tlog/note.py, checkpoint.py): Go's reference note
byte for byte, strict parsing, and checkpoints only a pinned key opens."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dicom_chain.errors import NoteError
from dicom_chain.keys import NodeKey
from dicom_chain.tlog import note
from dicom_chain.tlog.checkpoint import Checkpoint, open_signed, origin_for

# golang.org/x/mod/sumdb/note's example: its signer key (type byte, then the Ed25519 seed), the
# verifier key it publishes, the text, and the signature its Sign writes (Ed25519 is deterministic)
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
)
GO_SIGNATURE = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="


def peter() -> NodeKey:
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])[1:]  # its base64 holds a "+" too
    return NodeKey._from_private(Ed25519PrivateKey.from_private_bytes(seed))


def test_the_go_reference_note_byte_for_byte():
    key = peter()
    assert note.vkey("PeterNeumann", key.public_key) == GO_VKEY
    signed = note.sign(GO_TEXT, "PeterNeumann", key)
    assert signed == GO_TEXT + "\n\u2014 PeterNeumann " + GO_SIGNATURE + "\n"
    assert note.verify(signed, "PeterNeumann", key.public_key) == GO_TEXT


def test_a_note_another_key_signed_or_with_its_text_changed_is_refused():
    key, other = peter(), NodeKey.generate()
    signed = note.sign(GO_TEXT, "PeterNeumann", key)
    with pytest.raises(NoteError, match="not signed"):
        note.verify(signed, "PeterNeumann", other.public_key)
    with pytest.raises(NoteError, match="does not verify"):
        note.verify(signed.replace("problem,", "problems,"), "PeterNeumann", key.public_key)
    cosigned = note.add_signature(signed, note.parse(note.sign(GO_TEXT, "witness.example", other))[1][0])
    assert note.verify(cosigned, "PeterNeumann", key.public_key) == GO_TEXT
    assert note.verify(cosigned, "witness.example", other.public_key) == GO_TEXT
    assert len(note.parse(cosigned)[1]) == 2


@pytest.mark.parametrize(
    "bad",
    [
        GO_TEXT + "\u2014 PeterNeumann " + GO_SIGNATURE + "\n",  # no blank line
        GO_TEXT + "\n- PeterNeumann " + GO_SIGNATURE + "\n",  # a hyphen, not an em dash
        GO_TEXT + "\n\u2014 PeterNeumann " + GO_SIGNATURE,  # no final newline
        GO_TEXT + "\n\u2014 PeterNeumann not*base64\n",
        GO_TEXT + "\n\u2014 Peter Neumann " + GO_SIGNATURE + "\n",
        "a\tb\n\n\u2014 PeterNeumann " + GO_SIGNATURE + "\n",  # a control character
        GO_TEXT + "\n\u2014 PeterNeumann AAAA\n",  # shorter than a key ID and a signature
        GO_TEXT + "\n\u2014 PeterNeumann " + GO_SIGNATURE + "\r\n",  # CRLF: newline only
    ],
)
def test_malformed_notes_are_refused(bad: str):
    with pytest.raises(NoteError):
        note.verify(bad, "PeterNeumann", peter().public_key)


def test_a_checkpoint_round_trips_and_opens_only_with_its_key():
    key = NodeKey.generate()
    origin = origin_for(key, "St. Example Hospital")
    assert " " not in origin and origin.startswith(key.key_id)
    cp = Checkpoint(origin, 1234, bytes(range(32)))
    assert cp.body() == f"{origin}\n1234\n{base64.b64encode(bytes(range(32))).decode()}\n"
    signed = cp.sign(key)
    assert open_signed(signed, key.public_key) == cp
    assert open_signed(signed, key.public_key, origin) == cp
    with pytest.raises(NoteError):
        open_signed(signed, NodeKey.generate().public_key)
    with pytest.raises(NoteError, match="not of"):
        open_signed(signed, key.public_key, "another.origin")
    forged = signed.replace("\n1234\n", "\n1235\n")
    with pytest.raises(NoteError):
        open_signed(forged, key.public_key)


@pytest.mark.parametrize(
    "body",
    [
        "origin\n12\n",  # no root
        "origin\n012\n" + base64.b64encode(b"\0" * 32).decode() + "\n",  # a leading zero
        "origin\n-1\n" + base64.b64encode(b"\0" * 32).decode() + "\n",
        "origin\n12\n" + base64.b64encode(b"\0" * 31).decode() + "\n",  # 31 bytes
        "\n12\n" + base64.b64encode(b"\0" * 32).decode() + "\n",  # no origin
        "origin\n12\n" + base64.b64encode(b"\0" * 32).decode() + "\n\nextra\n",  # an empty line
    ],
)
def test_malformed_checkpoints_are_refused(body: str):
    with pytest.raises(NoteError):
        Checkpoint.parse(body)
