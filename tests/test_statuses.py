"""Our errors as DICOM statuses, read from their fault and retryability (PS3.4 B.2.3, C.4), and a
peer's statuses as outbox verdicts and sub-operation results (pynetdicom's categories)."""

from __future__ import annotations

import pytest

from dicom_chain import errors
from dicom_chain.errors import (
    DicomChainError,
    Fault,
    IdentifierError,
    LedgerConflict,
    LedgerError,
    LedgerUnavailable,
    MalformedDatasetError,
    NotDicomError,
    StorageError,
)
from dicom_chain.vocab import ForwardVerdict, SubOperation
from scp.statuses import (
    CANNOT_UNDERSTAND,
    FIND_OUT_OF_RESOURCES,
    IDENTIFIER_DOES_NOT_MATCH,
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    RETRIEVE_OUT_OF_RESOURCES,
    UNABLE_TO_PROCESS,
    UNEXPECTED_FAILURE,
    find_status,
    forward_verdict,
    retrieve_status,
    store_status,
    sub_operation,
)

EVERY_ERROR = [
    cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, DicomChainError)
]


def test_store_statuses_follow_ps34():
    assert store_status(StorageError("disk full")) == OUT_OF_RESOURCES == 0xA700
    assert store_status(LedgerUnavailable("db down")) == OUT_OF_RESOURCES
    assert store_status(LedgerConflict("lost a race for the head")) == OUT_OF_RESOURCES
    assert store_status(MemoryError()) == OUT_OF_RESOURCES
    assert store_status(MalformedDatasetError("no uid")) == CANNOT_UNDERSTAND == 0xC000
    assert store_status(NotDicomError("garbage")) == CANNOT_UNDERSTAND
    assert store_status(LedgerError("schema from the future")) == PROCESSING_FAILURE  # ours, lasting
    assert store_status(RuntimeError("bug")) == PROCESSING_FAILURE == 0x0110


@pytest.mark.parametrize("cls", EVERY_ERROR, ids=lambda c: c.__name__)
def test_every_error_gets_the_status_its_attributes_say(cls):
    """No isinstance chain: a new error class is answered right by declaring fault and retryable."""
    exc = cls("x")
    if issubclass(cls, errors.NotAuthorized):  # a refusal, whatever its fault: 0124 (below)
        return
    expected = (
        OUT_OF_RESOURCES
        if cls.retryable
        else CANNOT_UNDERSTAND
        if cls.fault is Fault.REMOTE
        else PROCESSING_FAILURE
    )
    assert store_status(exc) == expected
    if not issubclass(cls, IdentifierError):
        remote = cls.fault is Fault.REMOTE
        assert find_status(exc) == (
            UNABLE_TO_PROCESS if remote else FIND_OUT_OF_RESOURCES if cls.retryable else UNEXPECTED_FAILURE
        )


def test_query_statuses_follow_ps34():
    assert find_status(IdentifierError("no level")) == IDENTIFIER_DOES_NOT_MATCH == 0xA900
    assert retrieve_status(IdentifierError("no level")) == IDENTIFIER_DOES_NOT_MATCH
    assert find_status(MalformedDatasetError("cut short")) == UNABLE_TO_PROCESS == 0xC000
    assert find_status(LedgerUnavailable("locked")) == FIND_OUT_OF_RESOURCES == 0xA700
    assert retrieve_status(LedgerUnavailable("locked")) == RETRIEVE_OUT_OF_RESOURCES == 0xA701
    assert retrieve_status(ValueError("bug")) == UNEXPECTED_FAILURE == 0xC001
    assert retrieve_status(errors.ReleaseDenied("no consent")) == NOT_AUTHORIZED == 0x0124  # PS3.7 C.5


@pytest.mark.parametrize("cls", [errors.NotAuthorized, errors.VersionRefused])
def test_a_caller_without_the_permission_gets_0124_from_every_service(cls):
    """PS3.7 C.5 0124 Refused: Not authorized, for C-STORE, C-FIND, C-MOVE and C-GET alike: not
    C000 (the data is fine) nor A7xx (retrying will not help until someone grants it)."""
    exc = cls("lacks permission")
    assert store_status(exc) == find_status(exc) == retrieve_status(exc) == NOT_AUTHORIZED


@pytest.mark.parametrize(
    "status, verdict",
    [
        (0x0000, ForwardVerdict.DONE),
        (0xB000, ForwardVerdict.DONE),
        (0xB007, ForwardVerdict.DONE),
        (0x0107, ForwardVerdict.DONE),  # warning: attribute list error, stored
        (0xA700, ForwardVerdict.RETRY),
        (0xA7FF, ForwardVerdict.RETRY),
        (None, ForwardVerdict.RETRY),
        (0xA900, ForwardVerdict.REFUSED),
        (0xC000, ForwardVerdict.REFUSED),
        (0x0110, ForwardVerdict.REFUSED),
        (0x1234, ForwardVerdict.REFUSED),  # unknown
        (-1, ForwardVerdict.REFUSED),  # a response without a usable status
    ],
)
def test_pacs_answers_become_verdicts(status, verdict):
    assert forward_verdict(status)[0] == verdict


@pytest.mark.parametrize(
    "status, result",
    [
        (0x0000, SubOperation.SUCCESS),
        (0xB000, SubOperation.WARNING),
        (0xB007, SubOperation.WARNING),
        (0xA700, SubOperation.FAILURE),
        (0xC000, SubOperation.FAILURE),
        (0x0110, SubOperation.FAILURE),
    ],
)
def test_sub_operation_answers_are_read_by_category(status, result):
    assert sub_operation(status) == result


def test_the_status_of_an_instance_kept_with_an_anomaly_is_a_storage_warning():
    """B007 as pynetdicom's table of PS3.4 B.2.3 reads it: a warning, the instance stored; and our
    own forwarder, meeting it from a PACS, takes it as done."""
    from pynetdicom.status import STATUS_WARNING, STORAGE_SERVICE_CLASS_STATUS

    from scp.statuses import STORED_NOT_CONFORMING

    category, meaning = STORAGE_SERVICE_CLASS_STATUS[STORED_NOT_CONFORMING]
    assert category == STATUS_WARNING and meaning == "Data Set Does Not Match SOP Class"
    assert forward_verdict(STORED_NOT_CONFORMING)[0] is ForwardVerdict.DONE
