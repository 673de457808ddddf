"""Coverage-guided fuzzing (atheris) of the parsers the gateway runs on untrusted bytes; not in CI.

    .venv/bin/pip install atheris
    PYTHONPATH=. .venv/bin/python tests/fuzz/fuzz_parsers.py pdu -atheris_runs=200000
    PYTHONPATH=. .venv/bin/python tests/fuzz/fuzz_parsers.py dataset -max_total_time=600 corpus/

``pdu``: pynetdicom's decoding of each PDU type, which runs before any allow-list. Its DUL turns
any exception of the decoder into Evt19 (A-ABORT, dul.py ``_read_pdu_data``), so exceptions are
refusals here; what counts is a hang (libFuzzer's ``-timeout``), a crash or runaway memory
(``-rss_limit_mb``). Found at once: PDV item lengths are checked with ``assert`` (pdu.py
``P_DATA_TF._generate_items``), which ``python -O`` removes.
``dataset``: a C-STORE's data set bytes (explicit VR little endian) through the same steps as
``scp.handlers.handle_store`` before the ledger: pydicom's decoding, the DICOM carrier, identity,
content hash and checks. Only our named errors (``DicomChainError``: answered C000 or A700) may
escape; anything else would reach the peer as 0110, a bug. Without a corpus folder, it starts
from one valid instance.
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings

import atheris

with atheris.instrument_imports():
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom.dsutils import decode
    from pynetdicom.pdu import PDU_TYPES

    from dicom_chain.carriers.dicom.carrier import DICOM
    from dicom_chain.errors import DicomChainError
    from dicom_chain.synthetic import StudySpec, ct_study

PDUS = sorted(PDU_TYPES.items(), key=lambda kv: kv[1])  # (class, type byte)


def pdu_target(data: bytes) -> None:
    if len(data) < 7:
        return
    cls = PDUS[data[0] % len(PDUS)][0]
    with contextlib.suppress(Exception):  # as the DUL reads: any decoding error is Evt19, an A-ABORT
        cls().decode(data[1:])


def dataset_target(data: bytes) -> None:
    try:
        ds = decode(io.BytesIO(data), False, True)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        carried = DICOM.received(ds, data)
    except DicomChainError:
        return
    except Exception:  # decoding garbage fails in many ways; the handler wraps them all (C000)
        return
    try:
        carried.identity()
        carried.content_hash()
        carried.check()
    except DicomChainError:
        pass


def seed() -> bytes:
    ds = next(ct_study(StudySpec(seed=1, instances=1, rows=8, columns=8)))
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def main() -> None:
    warnings.simplefilter("ignore")
    target = sys.argv.pop(1) if len(sys.argv) > 1 else "dataset"
    if target == "dataset":
        if not any(not arg.startswith("-") for arg in sys.argv[1:]):  # no corpus given: the seed
            import tempfile
            from pathlib import Path

            corpus = Path(tempfile.mkdtemp(prefix="fuzz-dataset-"))
            (corpus / "seed").write_bytes(seed())
            sys.argv.append(str(corpus))
        atheris.Setup(sys.argv, dataset_target)
    else:
        atheris.Setup(sys.argv, pdu_target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
