"""Who took part in an event, in the audit vocabulary: shared by the ATNA and FHIR renderings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dicom_chain.audit import codes, record
from dicom_chain.audit.codes import Code
from dicom_chain.vocab import EventType

# The other side is the source of what we received, the destination of what we sent.
_PEER_IS_SOURCE = {EventType.INSTANCE_RECEIVED, EventType.INSTANCE_REFUSED}
_PEER_IS_DESTINATION = {
    EventType.INSTANCE_FORWARDED,
    EventType.FORWARD_DOWN,
    EventType.FORWARD_UP,
    EventType.RETRIEVE_MOVE,
    EventType.RETRIEVE_GET,
    EventType.RELEASE_GRANTED,
}


@dataclass(frozen=True)
class Participant:
    user_id: str
    requestor: bool
    role: Code | None
    address: str = ""
    name: str = ""


def participants(rec: dict[str, Any], institution: str) -> list[Participant]:
    """The requesting party (calling AE, institution or local user), then this node."""
    node = Participant(f"dicom-chain@{rec['key_id']}", False, codes.ROLE_APPLICATION, name=institution)
    details = record.details_of(rec)
    if rec["type"] in _PEER_IS_DESTINATION:
        node = Participant(node.user_id, False, codes.ROLE_SOURCE, name=institution)
        target = str(details.get("destination") or rec["actor"])
        peer = Participant(rec["actor"] or target, True, codes.ROLE_DESTINATION, address=_host(target))
        if target and target != rec["actor"]:
            return [peer, node, Participant(target, False, codes.ROLE_DESTINATION, address=_host(target))]
        return [peer, node]
    role = codes.ROLE_SOURCE if rec["type"] in _PEER_IS_SOURCE else codes.ROLE_LAUNCHER
    if not rec["actor"]:
        return [Participant(node.user_id, True, codes.ROLE_APPLICATION, name=institution)]
    peer_address = str(details.get("peer", ""))
    if rec["type"] in _PEER_IS_SOURCE:
        node = Participant(node.user_id, False, codes.ROLE_DESTINATION, name=institution)
    return [Participant(rec["actor"], True, role, address=peer_address), node]


def _host(destination: str) -> str:
    """'AET@host:port' -> 'host'."""
    if "@" not in destination:
        return ""
    return destination.split("@", 1)[1].rsplit(":", 1)[0]
