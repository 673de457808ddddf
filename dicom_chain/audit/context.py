"""What every export format needs to know besides the events: who exported, from which node."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ExportContext:
    exported_at: str  # ISO 8601 UTC, as event times
    source_id: str  # the exporting node, as audit source (AuditSourceID / AuditEvent.source)
    institutions: dict[str, str] = field(default_factory=dict)  # key id -> institution of its chain
    application: str = "dicom-chain"
