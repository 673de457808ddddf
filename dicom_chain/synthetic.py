"""Synthetic CT studies: the demo's sample data, the benchmarks' load and the tests' fodder.

Deterministic for a given seed, so a regenerated sample_data/ is byte-for-byte the same
(timestamps and UIDs come from the seed too).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

UID_ROOT = "1.2.826.0.1.3680043.10.1507."  # a sub-arc for test objects; never on a real patient
IMPLEMENTATION_CLASS_UID = UID_ROOT + "1"


def uid_for(*parts: object) -> str:
    """A stable UID from ``parts`` (at most 64 characters, as PS3.5 9.1 requires)."""
    digits = str(int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest(), 16))
    return (UID_ROOT + digits)[:64].rstrip(".")


@dataclass(frozen=True)
class StudySpec:
    seed: int = 1
    instances: int = 8
    rows: int = 64
    columns: int = 64
    patient_id: str = "DC-0001"
    patient_name: str = "CHAIN^DEMO"
    institution: str = "Synthetic General Hospital"
    series: int = 1


def ct_study(spec: StudySpec) -> Iterator[Dataset]:
    """Yield the study's instances in slice order, each a complete Part 10 dataset."""
    rng = np.random.default_rng(spec.seed)
    study_uid = uid_for(spec.seed, "study")
    y, x = np.mgrid[0 : spec.rows, 0 : spec.columns]
    centre_y, centre_x = spec.rows / 2, spec.columns / 2
    radius = min(spec.rows, spec.columns) * 0.4
    body = ((y - centre_y) ** 2 + (x - centre_x) ** 2) < radius**2
    per_series = max(1, spec.instances // spec.series)
    for index in range(spec.instances):
        series_no = min(index // per_series, spec.series - 1) + 1
        noise = rng.normal(0, 12, size=(spec.rows, spec.columns))
        slice_image = np.where(body, 1040 + 30 * np.sin(index / 3) + noise, 24 + noise / 4)
        pixels = np.clip(slice_image, 0, 4095).astype(np.uint16)
        yield _ct_instance(spec, study_uid, series_no, index, pixels)


def _ct_instance(spec: StudySpec, study_uid: str, series_no: int, index: int, pixels: np.ndarray) -> Dataset:
    sop_uid = uid_for(spec.seed, "instance", index)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = "DICOM_CHAIN_SYN"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = "20260101"
    ds.SeriesDate = "20260101"
    ds.StudyTime = f"{8 + spec.seed % 10:02d}0000"
    ds.AccessionNumber = f"ACC{spec.seed:06d}"
    ds.Modality = "CT"
    ds.Manufacturer = "dicom-chain synthetic"
    ds.InstitutionName = spec.institution
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic CT chest"
    ds.SeriesDescription = f"Axial {series_no}"
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.SliceThickness = "2.5"
    ds.KVP = "120"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = uid_for(spec.seed, "series", series_no)
    ds.StudyID = str(spec.seed)
    ds.SeriesNumber = series_no
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [-160.0, -160.0, -2.5 * index]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.FrameOfReferenceUID = uid_for(spec.seed, "frame")
    ds.SliceLocation = -2.5 * index
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.PixelSpacing = [0.625, 0.625]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    return ds
