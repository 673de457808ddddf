"""One byte form for every signed record: JSON, sorted keys, no spaces, UTF-8.

Records hold only strings, integers and nested objects of those, so this is RFC 8785 (JCS)
for the subset we use; floats are never signed.
"""

from __future__ import annotations

import json
from typing import Any


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def loads(data: bytes | str) -> Any:
    return json.loads(data)
