"""What verification found, as plain data: printed for people, dumped as JSON for machines."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from dicom_chain.vocab import FindingKind, Severity


@dataclass(frozen=True)
class Finding:
    severity: Severity
    kind: FindingKind
    message: str
    path: str = ""
    sop_instance_uid: str = ""
    height: int | None = None
    chain_id: str = ""


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    files_checked: int = 0
    blocks_checked: int = 0
    events_checked: int = 0
    # False when no signer key was pinned: signatures then prove only self-consistency, not who
    # signed, and an intact report must say so (exit 3, not 0).
    signers_checked: bool = True

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == Severity.ERROR]

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, severity: Severity, kind: FindingKind, message: str, **where: Any) -> None:
        self.findings.append(Finding(Severity(severity), FindingKind(kind), message, **where))

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "files_checked": self.files_checked,
            "blocks_checked": self.blocks_checked,
            "events_checked": self.events_checked,
            "signers_checked": self.signers_checked,
            "errors": len(self.errors),
            "findings": [asdict(f) for f in self.findings],
        }
