"""What names a DICOM instance on the chain: its four UIDs, its patient, its transfer syntax."""

from __future__ import annotations

import re

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from dicom_chain.carriers.base import Identity
from dicom_chain.errors import MalformedDatasetError

UID_MAX_CHARS = 64  # PS3.5 9.1
# PS3.5 6.2: PatientID is LO, at most 64 characters. The ledger's patient columns are as wide
# (PostgreSQL enforces it, SQLite does not) and events sign the value whole, so a longer one is
# refused (C000) on every database alike rather than cut.
PATIENT_ID_MAX_CHARS = 64
NUL = "\x00"  # no DICOM character repertoire has it (PS3.5 6.1); PostgreSQL text cannot hold it
# keyword -> what it is to the node: the block names the first two, the store files by three
REQUIRED_UIDS = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")
REQUIRED_UID_TAGS = {
    "SOPInstanceUID": 0x00080018, "SOPClassUID": 0x00080016,
    "StudyInstanceUID": 0x0020000D, "SeriesInstanceUID": 0x0020000E,
}  # fmt: skip
_VALID_UID = re.compile(rb"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")  # pydicom's RE_VALID_UID, in bytes


def instance_identity(ds: Dataset) -> Identity:
    """The instance's Identity; MalformedDatasetError naming the UID that is missing or garbled."""
    values = {}
    for keyword in REQUIRED_UIDS:
        text = _plain_uid(ds, REQUIRED_UID_TAGS[keyword])
        if text is not None:
            values[keyword] = text
            continue
        try:
            value = ds.get(keyword)
        except Exception as exc:  # pydicom raises many types on garbled values
            raise MalformedDatasetError(f"{keyword} cannot be decoded: {exc}") from exc
        text = str(value).strip(" \x00") if value is not None else ""
        if not text:
            raise MalformedDatasetError(f"dataset has no {keyword}")
        if len(text) > UID_MAX_CHARS:
            raise MalformedDatasetError(f"{keyword} is longer than {UID_MAX_CHARS} characters")
        if NUL in text:
            raise MalformedDatasetError(f"{keyword} contains a NUL character")
        values[keyword] = text
    try:
        patient_id = str(ds.get("PatientID", "") or "").rstrip(NUL)  # NUL padding, as for UIDs
    except Exception:  # an undecodable patient ID does not stop chaining: the receipt names none
        patient_id = ""
    if len(patient_id) > PATIENT_ID_MAX_CHARS:
        raise MalformedDatasetError(f"PatientID is longer than {PATIENT_ID_MAX_CHARS} characters (LO)")
    if NUL in patient_id:
        raise MalformedDatasetError("PatientID contains a NUL character")
    return Identity(
        item_id=values["SOPInstanceUID"],
        group_id=values["StudyInstanceUID"],
        series_id=values["SeriesInstanceUID"],
        item_class=values["SOPClassUID"],
        patient_id=patient_id,
        encoding=transfer_syntax(ds),
    )


def _plain_uid(ds: Dataset, tag: int) -> str | None:
    """The text ``instance_identity`` makes of a UID held raw, as it is nearly always: explicit VR
    UI, a valid UID (PS3.5 9.1) with at most its padding NUL; None for anything else, which pydicom
    then converts. pydicom would decode it, strip the padding, find no second value and pass its
    validation (~20 us a UID, a tenth of a CT slice's checks), and give this very text."""
    raw = ds._dict.get(tag)  # type: ignore[call-overload]
    if type(raw) is not RawDataElement or raw.VR != "UI" or type(raw.value) is not bytes:
        return None
    value = raw.value[:-1] if raw.value.endswith(b"\x00") else raw.value
    if len(value) > UID_MAX_CHARS or not _VALID_UID.fullmatch(value):
        return None
    return value.decode("ascii")


def transfer_syntax(ds: Dataset) -> str:
    """The transfer syntax the file meta names, "" without one."""
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
