"""Our errors as DICOM statuses: the one place that decides what a peer is told."""

from __future__ import annotations

from dicom_chain.errors import (
    ContentHashError,
    LedgerError,
    MalformedDatasetError,
    NotDicomError,
    StorageError,
)

SUCCESS = 0x0000
# C-STORE, PS3.4 Annex B.2.3 (Table B.2-1)
OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources - the disk or ledger cannot take it now; retry later
CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand - the dataset itself is at fault; do not retry as is
# PS3.7 Annex C.4: general failure for anything we did not foresee
PROCESSING_FAILURE = 0x0110


def store_status(exc: BaseException) -> int:
    """Retryable trouble on our side is A700; a dataset we cannot chain is C000; the rest 0110."""
    if isinstance(exc, StorageError | LedgerError | MemoryError):
        return OUT_OF_RESOURCES
    if isinstance(exc, MalformedDatasetError | NotDicomError | ContentHashError):
        return CANNOT_UNDERSTAND
    return PROCESSING_FAILURE
