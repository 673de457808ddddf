"""DICOM statuses both ways, in one place: what we answer for our errors, what a peer's answers mean.

Outgoing statuses read the error, not its class: every library error says whose fault it is
(``fault``: LOCAL or REMOTE) and whether the same request may succeed later (``retryable``).
Incoming statuses are read with pynetdicom's own classification (``code_to_category``), so a
peer's warnings and failures are told apart as PS3.7 Annex C defines them, not by bit masks here.
"""

from __future__ import annotations

from pynetdicom.status import (
    STATUS_SUCCESS,
    STATUS_UNKNOWN,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
    Status,
    code_to_category,
)

from dicom_chain.errors import Fault, IdentifierError, NotAuthorized, ReleaseDenied
from dicom_chain.vocab import ForwardVerdict, SubOperation

SUCCESS = int(Status.SUCCESS)
# C-STORE, PS3.4 Annex B.2.3 (Table B.2-1)
OUT_OF_RESOURCES = 0xA700  # Refused: Out of Resources - the disk or ledger cannot take it now; retry later
CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand - the dataset itself is at fault; do not retry as is
# (an instance over max_instance_bytes too: see InstanceTooLargeError for why not A700)
# Warning B007 "Data Set does not match SOP Class" (same table): stored, chained and forwarded as
# received, but not conforming (pixel data longer than its Image Pixel module says; the receipt event
# names it). Not B000 "Coercion of Data Elements" nor B006 "Elements Discarded": nothing was changed.
STORED_NOT_CONFORMING = 0xB007
# PS3.7 Annex C.4: general failure for anything we did not foresee
PROCESSING_FAILURE = 0x0110

# Query/Retrieve, PS3.4 C.4.1.1.4 (C-FIND, Table C.4-1), C.4.2.1.5 (C-MOVE, C.4-2), C.4.3.1.4 (C-GET, C.4-3)
PENDING = int(Status.PENDING)  # a match, every key supported
PENDING_UNSUPPORTED_KEYS = 0xFF01  # a match, but an optional key sent with a value was not matched on
CANCELLED = int(Status.CANCEL)  # matching or sub-operations terminated by C-CANCEL
FIND_OUT_OF_RESOURCES = 0xA700
RETRIEVE_OUT_OF_RESOURCES = 0xA701  # unable to calculate the number of matches
MOVE_DESTINATION_UNKNOWN = int(Status.MOVE_DESTINATION_UNKNOWN)  # 0xA801
IDENTIFIER_DOES_NOT_MATCH = 0xA900  # identifier does not match SOP class (level, unique keys)
UNABLE_TO_PROCESS = 0xC000  # the identifier does not decode
# A sub-operation we count as a warning (an altered instance sent with serve_altered = "warn"):
# a C-STORE warning code (PS3.4 B.2.3, Table B.2-1), so that pynetdicom counts it as one and the
# final C-MOVE/C-GET status is B000, "sub-operations complete, one or more failures or warnings"
SUB_OPERATION_WARNING = 0xB000
# PS3.7 Annex C (general status codes, C.5: 0124H "Refused: Not authorized"): the peer may not
# have what it asked for; a C-MOVE to another institution that the sharing rules deny (design 10.6),
# and any request (C-STORE, C-FIND, C-MOVE, C-GET) by a caller without that permission, or a new
# version of an instance by an AE neither its sender nor granted 'correct' (design 5)
NOT_AUTHORIZED = 0x0124
UNEXPECTED_FAILURE = 0xC001  # anything we did not foresee: still an answer, never a dropped association
ERROR_COMMENT_MAX = 64  # PS3.7 C.4: Error Comment is LO


def _fault(exc: BaseException) -> Fault:
    return getattr(exc, "fault", Fault.LOCAL)  # not ours on purpose: a bug here, so our fault


def _retryable(exc: BaseException) -> bool:
    # Not ours on purpose either: only running out of memory may pass by itself.
    return bool(getattr(exc, "retryable", isinstance(exc, MemoryError)))


def store_status(exc: BaseException) -> int:
    """C-STORE: trouble that may pass is A700 (the modality retries); a dataset we cannot chain
    is C000 (retrying it unchanged is useless); a caller without the permission 0124; anything else 0110."""
    if isinstance(exc, NotAuthorized):
        return NOT_AUTHORIZED
    if _retryable(exc):
        return OUT_OF_RESOURCES
    if _fault(exc) is Fault.REMOTE:
        return CANNOT_UNDERSTAND
    return PROCESSING_FAILURE


def find_status(exc: BaseException) -> int:
    if isinstance(exc, NotAuthorized):
        return NOT_AUTHORIZED
    return _query_status(exc, FIND_OUT_OF_RESOURCES)


def retrieve_status(exc: BaseException) -> int:
    """As for C-FIND, and a release the sharing rules deny (a C-MOVE to another institution) is 0124."""
    if isinstance(exc, ReleaseDenied | NotAuthorized):
        return NOT_AUTHORIZED
    return _query_status(exc, RETRIEVE_OUT_OF_RESOURCES)


def _query_status(exc: BaseException, out_of_resources: int) -> int:
    """An identifier the model refuses is A900; one that does not decode (the peer's fault) C000;
    trouble that may pass A700 (C-FIND) or A701 (C-MOVE, C-GET); anything else C001."""
    if isinstance(exc, IdentifierError):
        return IDENTIFIER_DOES_NOT_MATCH
    if _fault(exc) is Fault.REMOTE:
        return UNABLE_TO_PROCESS
    if _retryable(exc):
        return out_of_resources
    return UNEXPECTED_FAILURE


# C-STORE responses from a peer, PS3.4 Annex B.2.3: A7xx is out of resources, worth waiting for.
PEER_OUT_OF_RESOURCES = range(0xA700, 0xA800)


def _category(status: int) -> str:
    """pynetdicom's category (Success, Warning, Failure, ...); Unknown for a garbled status."""
    return code_to_category(status) if status >= 0 else STATUS_UNKNOWN


def sub_operation(status: int) -> SubOperation:
    """A C-STORE sub-operation of our C-MOVE/C-GET as the peer answered it (PS3.4 C.4.2.3.1)."""
    category = _category(status)
    if category == STATUS_SUCCESS:
        return SubOperation.SUCCESS
    if category == STATUS_WARNING:
        return SubOperation.WARNING
    return SubOperation.FAILURE


def peer_status_meaning(status: int) -> str:
    """A peer's C-STORE status in words, from pynetdicom's table (PS3.4 B.2.3 and PS3.7 Annex C)."""
    known = STORAGE_SERVICE_CLASS_STATUS.get(status)
    return known[1] if known else f"{_category(status).lower()}, not defined for C-STORE"


def forward_verdict(status: int | None) -> tuple[ForwardVerdict, str]:
    """What a PACS's answer to a forwarded instance means for the outbox, with the reason.

    Success and warnings (PS3.4 B.2.3: the instance is stored) are done. No answer and A7xx (out
    of resources) are passing trouble: retry for as long as it takes. Any other failure is the
    PACS refusing this instance: retried a few times, then final.
    """
    if status is None:
        return ForwardVerdict.RETRY, "no response: association aborted or timed out"
    category = _category(status)
    if category == STATUS_SUCCESS:
        return ForwardVerdict.DONE, ""
    if category == STATUS_WARNING:
        return ForwardVerdict.DONE, f"stored with warning 0x{status:04X}"
    if status in PEER_OUT_OF_RESOURCES:
        return ForwardVerdict.RETRY, f"PACS out of resources (0x{status:04X})"
    return ForwardVerdict.REFUSED, f"PACS refused the instance with 0x{status:04X}"
