"""Who is calling, and what it may do: the edge's side of ``dicom_chain.permissions``.

The policy is the library's; here is only what pynetdicom tells us about a peer: the calling AE
title, the address, and on a TLS association the certificate the peer presented (verified against
``--tls-ca``), read from the association's socket with ``getpeercert()``.
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass
from typing import Any

from dicom_chain.config import Settings
from dicom_chain.permissions import Peers, Permission, Subject, show_subject, subject_of


@dataclass(frozen=True)
class Caller:
    ae_title: str
    host: str
    subject: Subject | None
    permissions: frozenset[Permission]

    def may(self, permission: Permission) -> bool:
        return permission in self.permissions

    def describe(self) -> str:
        """For refusal reasons and events: who, from where, with which certificate."""
        cert = f" certificate {show_subject(self.subject)}" if self.subject else ""
        return f"{self.ae_title}@{self.host}{cert}"


def peer_certificate(assoc: Any) -> dict[str, Any] | None:
    """The verified certificate the peer presented on this association's TLS socket, if any."""
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return None
    with contextlib.suppress(OSError, ValueError):
        return sock.getpeercert() or None
    return None


@dataclass(frozen=True)
class Access:
    peers: Peers

    @classmethod
    def of(cls, settings: Settings) -> Access:
        return cls(Peers.parse(settings.allow, settings.peers, settings.certs))

    @property
    def open(self) -> bool:
        return self.peers.open

    def caller(self, assoc: Any) -> Caller:
        requestor = assoc.requestor
        ae = (requestor.primitive.calling_ae_title if requestor.primitive else requestor.ae_title).strip()
        subject = subject_of(peer_certificate(assoc))
        return Caller(ae, requestor.address, subject, self.peers.permissions(ae, requestor.address, subject))
