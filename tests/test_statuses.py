"""Our errors as DICOM statuses, and a PACS's statuses as outbox verdicts (PS3.4 Annex B.2.3)."""

from __future__ import annotations

import pytest

from dicom_chain.errors import LedgerError, MalformedDatasetError, NotDicomError, StorageError
from scp.statuses import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    forward_verdict,
    store_status,
)


def test_error_statuses_follow_ps34():
    assert store_status(StorageError("disk full")) == OUT_OF_RESOURCES == 0xA700
    assert store_status(LedgerError("db down")) == OUT_OF_RESOURCES
    assert store_status(MalformedDatasetError("no uid")) == CANNOT_UNDERSTAND == 0xC000
    assert store_status(NotDicomError("garbage")) == CANNOT_UNDERSTAND
    assert store_status(RuntimeError("bug")) == PROCESSING_FAILURE == 0x0110


@pytest.mark.parametrize(
    "status, verdict",
    [
        (0x0000, "done"),
        (0xB000, "done"),
        (0xB007, "done"),
        (0xA700, "retry"),
        (0xA7FF, "retry"),
        (None, "retry"),
        (0xA900, "refused"),
        (0xC000, "refused"),
        (0x0110, "refused"),
    ],
)
def test_pacs_answers_become_verdicts(status, verdict):
    assert forward_verdict(status)[0] == verdict
