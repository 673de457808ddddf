"""De-identification of a study per DICOM PS3.15 Annex E, Basic Application Level Confidentiality
Profile, with the Retain Longitudinal Temporal Information with Modified Dates Option.

The tables are dicognito's (a maintained implementation of the profile), not ours: one
``dicognito.Anonymizer`` per study replaces every instance UID (the same source UID gives the same
new UID across the study, so series, study and references between instances stay consistent),
names, IDs, addresses, institution and station, and shifts every date and time by one offset of
62 to 730 days for the whole study (so intervals between the study's dates survive; no source date
does). What the profile removes and dicognito keeps is removed here (``_REMOVED``: free-text
descriptions, comments and overlays that may carry a name), and every private element goes,
our own block included: the caller chains the copy anew, so nothing in the file leads back to the
source block or the patient.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

import pydicom
from dicognito.anonymizer import Anonymizer
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from dicom_chain.carriers.base import Item
from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.carriers.dicom.embedding import read_block
from dicom_chain.errors import MalformedDatasetError, NotDicomError

PROFILES = ("basic",)  # PS3.15 Annex E Basic Application Level Confidentiality Profile; the only one yet

# Annex E Table E.1-1 elements the Basic Profile removes (X) or empties (Z, D with no value to
# keep) that dicognito leaves as they are: free text where a person's name or a place is often
# typed, and overlays (burned-in notes). Descriptions go because the Clean Descriptors Option is
# not claimed.
_REMOVED = (
    "AdditionalPatientHistory",
    "AdmittingDiagnosesDescription",
    "Allergies",
    "DerivationDescription",
    "ImageComments",
    "InterpretationText",
    "PatientComments",
    "PerformedProcedureStepDescription",
    "ProtocolName",
    "RequestAttributesSequence",
    "RequestedProcedureDescription",
    "ScheduledProcedureStepDescription",
    "SeriesDescription",
    "StudyComments",
    "StudyDescription",
    "TextComments",
    "TextString",
    "AcquisitionComments",
    "ContrastBolusAgent",
    "DeviceSerialNumber",
    "PlateID",
    "CassetteID",
    "GantryID",
    "DetectorID",
    "IssuerOfPatientID",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientSize",
    "PatientWeight",
    "OtherPatientNames",
    "EthnicGroup",
    "PatientAge",
    "SourceApplicationEntityTitle",
)
_OVERLAY_GROUPS = range(0x6000, 0x6020, 2)  # PS3.5 repeating groups 60xx: overlay planes

# PS3.16 CID 7050 De-identification Methods: what a reader of the copy may rely on.
_METHODS = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
)
DEIDENTIFICATION_METHOD = "PS3.15 E.1 Basic Profile with Modified Dates (dicognito)"


@dataclass(frozen=True)
class Copy:
    """One de-identified instance, ready to chain, and the source block it came from (ledger only)."""

    item: Item
    source_block_hash: str
    source_sop_instance_uid: str


class StudyDeidentifier:
    """Every instance of one study through one anonymizer, so the study's UIDs stay consistent."""

    def __init__(self, profile: str = "basic", seed: str | None = None) -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown de-identification profile {profile!r} (known: {', '.join(PROFILES)})")
        self.profile = profile
        self._anonymizer = Anonymizer(seed=seed)  # seed None: a fresh random mapping per export

    def copy(self, part10: bytes) -> Copy:
        """A chained Part 10 file in, its de-identified copy out (no private elements left)."""
        try:
            ds = pydicom.dcmread(BytesIO(part10))
        except Exception as exc:  # pydicom raises many types on garbage
            raise NotDicomError(f"not a readable DICOM file ({exc})") from exc
        block = read_block(ds)
        source_uid = str(ds.SOPInstanceUID)
        try:
            ds.remove_private_tags()  # our block too: re-issued for the copy by whoever chains it
            _remove_profile_elements(ds)
            self._anonymizer.anonymize(ds)
        except Exception as exc:  # an element pydicom cannot decode while walking
            raise MalformedDatasetError(f"{source_uid}: cannot de-identify ({exc})") from exc
        _mark(ds)
        ds.file_meta = _fresh_meta(ds)
        return Copy(item_from_dataset(ds), block.hash, source_uid)


def _remove_profile_elements(ds: Dataset) -> None:
    for keyword in _REMOVED:
        if keyword in ds:
            delattr(ds, keyword)
    for tag in [t for t in ds.keys() if t.group in _OVERLAY_GROUPS]:
        del ds[tag]
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value:
                _remove_profile_elements(item)


def _mark(ds: Dataset) -> None:
    """PS3.15 E.1.1 step 4: say that and how the identity was removed."""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    methods = []
    for value, meaning in _METHODS:
        code = Dataset()
        code.CodeValue = value
        code.CodingSchemeDesignator = "DCM"
        code.CodeMeaning = meaning
        methods.append(code)
    ds.DeidentificationMethodCodeSequence = Sequence(methods)
    ds.LongitudinalTemporalInformationModified = "MODIFIED"


def _fresh_meta(ds: Dataset) -> FileMetaDataset:
    """New file meta: only what the copy needs, nothing of the source's sender or software."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta
