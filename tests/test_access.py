"""The calling-AE allow-list."""

from __future__ import annotations

import pytest

from dicom_chain.errors import ConfigError
from scp.access import AccessList


def test_empty_list_allows_anyone():
    assert AccessList.parse([]).permits("ANYONE", "10.1.2.3")


def test_entries_with_and_without_host():
    access = AccessList.parse(["CT1", "MR1@10.0.0.7"])
    assert access.permits("CT1", "192.168.1.1")
    assert access.permits("MR1", "10.0.0.7")
    assert not access.permits("MR1", "10.0.0.8")
    assert not access.permits("US1", "10.0.0.7")
    assert access.permits("CT1  ", "1.1.1.1")  # AE titles are space padded on the wire


@pytest.mark.parametrize("entry", ["", "@10.0.0.1", "A" * 17])
def test_bad_entries_are_config_errors(entry):
    with pytest.raises(ConfigError):
        AccessList.parse([entry])
