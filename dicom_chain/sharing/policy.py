"""Sharing policy: whether something may leave the node, and why, in words. Pure.

No I/O and no clock of its own: a decision depends only on the policy (from settings) and the
request, so it can be tested exhaustively, asked twice, and recorded with its reasons. Today it
holds one rule, C-MOVE destinations (``--move-destination``); consent, release and scores
(the sharing issue) join here, each a method returning a Decision.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


class Peer(Protocol):
    """A DICOM peer as settings name it (outbox.Destination is one)."""

    @property
    def ae_title(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


@dataclass(frozen=True)
class Decision:
    """Allowed or denied, with the reasons a person reads (and the ledger records) in words."""

    allowed: bool
    reasons: tuple[str, ...]

    @property
    def denied(self) -> bool:
        return not self.allowed

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


@dataclass(frozen=True)
class MoveDecision(Decision):
    destination: Peer | None = None  # where to send, when allowed


@dataclass(frozen=True)
class SharingPolicy:
    move_destinations: tuple[Peer, ...] = ()  # the only AEs a C-MOVE may send to

    @classmethod
    def of(cls, move_destinations: Iterable[Peer]) -> SharingPolicy:
        return cls(tuple(move_destinations))

    def move(self, destination_ae: str) -> MoveDecision:
        """May a C-MOVE send to ``destination_ae``? Only to a configured destination: a C-MOVE
        names an AE title, and an AE title alone says nothing about where it is or who runs it."""
        for peer in self.move_destinations:
            if peer.ae_title == destination_ae:
                return MoveDecision(True, (f"{destination_ae} is a configured move destination",), peer)
        return MoveDecision(False, (f"move destination {destination_ae!r} is not configured",))
