"""Our errors as DICOM statuses: the one place that decides what a peer is told."""

from __future__ import annotations

from dicom_chain.errors import (
    ContentHashError,
    IdentifierError,
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


# C-STORE responses from an upstream PACS, PS3.4 Annex B.2.3
STORE_WARNINGS = (0xB000, 0xB006, 0xB007)  # coercion / elements discarded / dataset mismatch: stored


def forward_verdict(status: int | None) -> tuple[str, str]:
    """What a PACS's answer means for the outbox: ("done" | "retry" | "refused", reason).

    No answer and A7xx (out of resources) are passing trouble: retry for as long as it takes.
    Any other failure is the PACS refusing this instance: retried a few times, then final.
    """
    if status is None:
        return "retry", "no response: association aborted or timed out"
    if status == SUCCESS:
        return "done", ""
    if status in STORE_WARNINGS:
        return "done", f"stored with warning 0x{status:04X}"
    if 0xA700 <= status <= 0xA7FF:
        return "retry", f"PACS out of resources (0x{status:04X})"
    return "refused", f"PACS refused the instance with 0x{status:04X}"


# Query/Retrieve, PS3.4 C.4.1.1.4 (C-FIND, Table C.4-1), C.4.2.1.5 (C-MOVE, C.4-2), C.4.3.1.4 (C-GET, C.4-3)
PENDING = 0xFF00  # a match, every key supported
PENDING_UNSUPPORTED_KEYS = 0xFF01  # a match, but an optional key sent with a value was not matched on
CANCELLED = 0xFE00  # matching or sub-operations terminated by C-CANCEL
FIND_OUT_OF_RESOURCES = 0xA700
RETRIEVE_OUT_OF_RESOURCES = 0xA701  # unable to calculate the number of matches
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH = 0xA900  # identifier does not match SOP class (level, unique keys)
UNABLE_TO_PROCESS = 0xC000  # the identifier does not decode
UNEXPECTED_FAILURE = 0xC001  # anything we did not foresee: still an answer, never a dropped association
ERROR_COMMENT_MAX = 64  # PS3.7 C.4: Error Comment is LO


def query_status(exc: BaseException, *, retrieve: bool = False) -> int:
    if isinstance(exc, IdentifierError):
        return IDENTIFIER_DOES_NOT_MATCH
    if isinstance(exc, MalformedDatasetError | NotDicomError):
        return UNABLE_TO_PROCESS
    if isinstance(exc, LedgerError | MemoryError):
        return RETRIEVE_OUT_OF_RESOURCES if retrieve else FIND_OUT_OF_RESOURCES
    return UNEXPECTED_FAILURE
