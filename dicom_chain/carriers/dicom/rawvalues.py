"""Values of the Image Pixel module read from their raw bytes, where pydicom's conversion would give
exactly the same and nothing else (no warning, no error); None where it might not.

Reading a fresh data set's pixel module through pydicom costs ~0.1 ms for a CT slice (each element
converted and validated on first use), twice what the rest of its canonical hash costs in Python.
A US value of one number and a CS value of valid characters are what they are, in any mode of
pydicom's validation; anything else is left to pydicom.
"""

from __future__ import annotations

import re

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

# The tests turn this off to check that both ways give the same, for every input they have.
ENABLED = True
_VALID_CS = re.compile(rb"[A-Z0-9_ ]{1,16}")  # PS3.5 table 6.2-1, as pydicom validates it


def _raw(ds: Dataset, tag: int) -> RawDataElement | None:
    raw = ds._dict.get(tag)  # type: ignore[call-overload]
    if not ENABLED or type(raw) is not RawDataElement or not raw.is_little_endian:
        return None
    return raw if type(raw.value) is bytes else None


def us(ds: Dataset, tag: int) -> int | None:
    """The one number of an explicit VR little endian US value, as pydicom converts it."""
    raw = _raw(ds, tag)
    if raw is None or raw.VR != "US" or len(raw.value) != 2:
        return None
    return int.from_bytes(raw.value, "little")


def cs(ds: Dataset, tag: int) -> str | None:
    """The one text of an explicit VR CS value of valid characters, trailing spaces stripped as
    pydicom strips them (its padding)."""
    raw = _raw(ds, tag)
    if raw is None or raw.VR != "CS" or not _VALID_CS.fullmatch(raw.value):
        return None
    return raw.value.decode("ascii").rstrip(" ")
