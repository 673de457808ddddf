"""Who may associate: a calling-AE allow-list, each entry optionally bound to a host."""

from __future__ import annotations

from dataclasses import dataclass

from dicom_chain.errors import ConfigError


@dataclass(frozen=True)
class AccessList:
    """Entries ``AET`` (from anywhere) or ``AET@HOST`` (from that address only); empty allows all."""

    entries: frozenset[tuple[str, str | None]]

    @classmethod
    def parse(cls, entries: tuple[str, ...] | list[str]) -> AccessList:
        parsed = set()
        for entry in entries:
            ae, _, host = entry.strip().partition("@")
            if not ae or len(ae) > 16:  # PS3.5: an AE title has 1 to 16 characters
                raise ConfigError(f"allow-list entry {entry!r}: AE title must have 1-16 characters")
            parsed.add((ae.strip(), host.strip() or None))
        return cls(frozenset(parsed))

    @property
    def open(self) -> bool:
        return not self.entries

    def permits(self, calling_ae: str, host: str) -> bool:
        if self.open:
            return True
        calling_ae = calling_ae.strip()
        return (calling_ae, None) in self.entries or (calling_ae, host) in self.entries
