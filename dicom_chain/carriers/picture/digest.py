"""The content hash of a picture format that keeps the file's bytes: SHA-256 over a domain
label and the file's pieces, our block left out (which pieces is the format module's to say)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def digest(domain: bytes, pieces: Iterable[bytes | memoryview]) -> str:
    h = hashlib.sha256(domain)
    for piece in pieces:
        h.update(piece)
    return h.hexdigest()
