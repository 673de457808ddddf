"""The node's Ed25519 identity: made on first use, kept owner-only beside the database."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dicom_chain.errors import KeyFileError, SignatureError

KEY_FILE_MODE = 0o600  # owner read/write only: whoever reads the key can forge blocks
KEY_ID_HEX_CHARS = 16  # 64 bits of the public key's SHA-256: names a key, is not trusted as one


def key_id_for(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:KEY_ID_HEX_CHARS]


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Raise SignatureError unless ``signature`` is ``public_key``'s over ``message``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError("signature does not verify") from exc


@dataclass(frozen=True)
class NodeKey:
    private_key: Ed25519PrivateKey
    public_key: bytes

    @property
    def key_id(self) -> str:
        return key_id_for(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    @classmethod
    def generate(cls) -> NodeKey:
        return cls._from_private(Ed25519PrivateKey.generate())

    @classmethod
    def _from_private(cls, private_key: Ed25519PrivateKey) -> NodeKey:
        public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return cls(private_key, public)

    @classmethod
    def load(cls, path: Path) -> NodeKey:
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"key file {path} is readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it"
            )
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except ValueError as exc:
            raise KeyFileError(f"key file {path} is not a PEM private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"key file {path} holds a {type(key).__name__}, not Ed25519")
        return cls._from_private(key)

    @classmethod
    def load_or_create(cls, path: Path) -> NodeKey:
        """Load the key, or make one; two processes racing here end up with the same key."""
        if path.exists():
            return cls.load(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        key = cls.generate()
        pem = key.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".key-")
        try:
            os.fchmod(fd, KEY_FILE_MODE)
            os.write(fd, pem)
            os.fsync(fd)
            os.close(fd)
            with contextlib.suppress(FileExistsError):  # another process won the race: use its key
                os.link(tmp, path)  # atomic, unlike open(O_EXCL) + write
        finally:
            os.unlink(tmp)
        return cls.load(path)

    def public_pem(self) -> str:
        return (
            self.private_key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode("ascii")
        )


def load_public_key(path: Path) -> bytes:
    """A trusted public key as exported by ``dicom-chain keys export`` (PEM or 64 hex chars)."""
    try:
        data = path.read_bytes().strip()
    except OSError as exc:
        raise KeyFileError(f"cannot read public key {path}: {exc.strerror}") from exc
    if data.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise KeyFileError(f"{path} is not a PEM public key") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{path} is not an Ed25519 public key")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        raw = bytes.fromhex(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise KeyFileError(f"{path} is neither PEM nor hex") from exc
    if len(raw) != 32:
        raise KeyFileError(f"{path}: an Ed25519 public key has 32 bytes, not {len(raw)}")
    return raw
