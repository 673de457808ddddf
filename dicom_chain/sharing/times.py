"""Times of the sharing rules: ISO 8601 in UTC, read leniently, written as ``block.utc_now`` does. Pure."""

from __future__ import annotations

from datetime import UTC, datetime

from dicom_chain.errors import SharingError

SECONDS_PER_DAY = 86_400


def parse(text: str) -> datetime:
    """``2026-12-01``, ``2026-12-01T10:00``, ``...Z`` or ``...+01:00`` as an aware UTC datetime
    (a time without a zone is taken as UTC: the ledger writes nothing else)."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise SharingError(f"not an ISO 8601 time: {text!r}") from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def iso(value: datetime) -> str:
    """As the ledger writes times (``block.utc_now``): sortable as text."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def normalise(text: str) -> str:
    return iso(parse(text))


def day(text: str) -> str:
    """The date of a time, for reasons people read (``consent for B ended 2026-10-01``)."""
    return parse(text).strftime("%Y-%m-%d")


def days_between(earlier: str, later: str) -> float:
    return (parse(later) - parse(earlier)).total_seconds() / SECONDS_PER_DAY
