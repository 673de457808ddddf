"""How a stored instance can go over a peer's accepted contexts: decided before sending, by
pynetdicom's own rule, never by reading an exception's text afterwards."""

from __future__ import annotations

import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
)
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]

from scp.contexts import Sending, sending

CT, MR = str(CTImageStorage), str(MRImageStorage)


@pytest.mark.parametrize(
    "accepted, stored, expected",
    [
        ({(CT, JPEGBaseline8Bit)}, JPEGBaseline8Bit, Sending.AS_STORED),
        ({(CT, ExplicitVRLittleEndian)}, ExplicitVRLittleEndian, Sending.AS_STORED),
        ({(CT, ImplicitVRLittleEndian)}, ExplicitVRLittleEndian, Sending.RE_ENCODED),
        ({(CT, ExplicitVRLittleEndian)}, DeflatedExplicitVRLittleEndian, Sending.RE_ENCODED),
        ({(CT, ExplicitVRLittleEndian)}, JPEGBaseline8Bit, None),  # compressed pixels never convert
        ({(CT, JPEG2000Lossless)}, JPEGBaseline8Bit, None),
        ({(CT, JPEGBaseline8Bit)}, ExplicitVRLittleEndian, None),
        ({(CT, ImplicitVRLittleEndian)}, ExplicitVRBigEndian, None),  # pynetdicom never swaps byte order
        ({(MR, ExplicitVRLittleEndian)}, ExplicitVRLittleEndian, None),  # another SOP class
        (set(), ExplicitVRLittleEndian, None),
        ({(CT, "1.2.3.4.5")}, ExplicitVRLittleEndian, None),  # a private syntax: nothing known of it
    ],
)
def test_sending_follows_pynetdicoms_rule(accepted, stored, expected):
    assert sending({(c, str(s)) for c, s in accepted}, CT, str(stored)) is expected
