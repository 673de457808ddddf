"""The institutions this node shares with: name, DICOM address, signing key, TLS certificate.

A row per institution (db ``institutions``) written in the transaction of its
``institution.added`` / ``institution.removed`` event, so the table and the ledger never disagree.
Removing marks the row; the event and the row stay, so history can still name who a key was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_chain.db.models import InstitutionRow
from dicom_chain.errors import SharingError
from dicom_chain.events import EventDraft
from dicom_chain.keys import NodeKey, key_id_for, load_public_key
from dicom_chain.ledger import Ledger, append_event
from dicom_chain.vocab import EventType

NAME_CHARS = 64  # the column's width: an institution's name as people type it
AE_TITLE_CHARS = 16  # PS3.5 6.2: an AE title has at most 16 characters
MAX_PORT = 65535  # TCP
URL_CHARS = 255  # the column's width: a scheme, a host name (at most 253) and a port


@dataclass(frozen=True)
class Institution:
    name: str
    ae_title: str
    host: str
    port: int
    key_id: str
    public_key: bytes
    tls_cert: str  # PEM, or ""
    added_at: str
    removed_at: str | None = None
    log_url: str = ""  # its transparency log's HTTPS address (web/), or "": its log is not watched

    @property
    def active(self) -> bool:
        return self.removed_at is None

    def details(self) -> dict[str, object]:
        """As the institution.* events carry it."""
        return {
            "name": self.name,
            "ae_title": self.ae_title,
            "host": self.host,
            "port": self.port,
            "key_id": self.key_id,
            "public_key": self.public_key.hex(),
            "tls_cert": self.tls_cert,
            **({"log_url": self.log_url} if self.log_url else {}),
        }

    @classmethod
    def from_row(cls, row: InstitutionRow) -> Institution:
        return cls(
            row.name,
            row.ae_title,
            row.host,
            row.port,
            row.key_id,
            bytes.fromhex(row.public_key),
            row.tls_cert,
            row.added_at,
            row.removed_at,
            row.log_url or "",
        )


def read_tls_cert(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise SharingError(f"cannot read TLS certificate {path}: {exc}") from exc
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise SharingError(f"{path} is not a PEM certificate")
    return text


class Registry:
    def __init__(self, ledger: Ledger, key: NodeKey | None) -> None:
        self.ledger = ledger
        self.key = key  # signs the events; None for a registry only read

    def add(
        self,
        name: str,
        *,
        ae_title: str,
        host: str,
        port: int,
        public_key_file: Path,
        tls_cert: Path | None = None,
        log_url: str = "",
        actor: str,
        now: str,
    ) -> Institution:
        """Register an institution (and record it); a name in use, even removed, is refused:
        events name institutions, and a name must keep meaning one party."""
        if not name or len(name) > NAME_CHARS or name != name.strip():
            raise SharingError(f"institution name {name!r}: 1 to {NAME_CHARS} characters, no outer spaces")
        if not ae_title or len(ae_title) > AE_TITLE_CHARS:
            raise SharingError(f"AE title {ae_title!r}: 1 to {AE_TITLE_CHARS} characters")
        if not 1 <= port <= MAX_PORT:
            raise SharingError(f"port {port}: must be 1 to {MAX_PORT}")
        if log_url and (not log_url.startswith(("https://", "http://")) or len(log_url) > URL_CHARS):
            raise SharingError(f"log URL {log_url!r}: https://HOST:PORT, at most {URL_CHARS} characters")
        public = load_public_key(public_key_file)
        inst = Institution(
            name, ae_title, host, port, key_id_for(public), public, read_tls_cert(tls_cert), now,
            log_url=log_url.rstrip("/"),
        )  # fmt: skip
        with self.ledger.db.writing() as session:
            self.ledger.lock_event_head(session)
            if session.get(InstitutionRow, name) is not None:
                raise SharingError(f"institution {name} is already registered (names are never reused)")
            for row in session.scalars(select(InstitutionRow).where(InstitutionRow.removed_at.is_(None))):
                if row.ae_title == ae_title:
                    raise SharingError(f"AE title {ae_title} is already {row.name}'s")
                if row.key_id == inst.key_id:
                    raise SharingError(f"key {inst.key_id} is already {row.name}'s")
            session.add(
                InstitutionRow(
                    name=name,
                    ae_title=ae_title,
                    host=host,
                    port=port,
                    key_id=inst.key_id,
                    public_key=public.hex(),
                    tls_cert=inst.tls_cert,
                    added_at=now,
                    log_url=inst.log_url,
                )
            )
            self._record(session, EventType.INSTITUTION_ADDED, inst, actor)
        return inst

    def remove(self, name: str, *, actor: str, now: str) -> Institution:
        with self.ledger.db.writing() as session:
            self.ledger.lock_event_head(session)
            row = session.get(InstitutionRow, name)
            if row is None or row.removed_at is not None:
                raise SharingError(f"no registered institution {name}")
            row.removed_at = now
            inst = Institution.from_row(row)
            self._record(session, EventType.INSTITUTION_REMOVED, inst, actor)
        return inst

    def update(
        self, name: str, *, log_url: str | None = None, tls_cert: Path | None = None, actor: str
    ) -> Institution:
        """Give a registered institution its log's address or a new certificate (an event). Its
        name, AE title and key stay: events name it by them, and a new key is a new institution."""
        if (
            log_url is not None
            and log_url
            and (not log_url.startswith(("https://", "http://")) or len(log_url) > URL_CHARS)
        ):
            raise SharingError(f"log URL {log_url!r}: https://HOST:PORT, at most {URL_CHARS} characters")
        cert = read_tls_cert(tls_cert) if tls_cert is not None else None
        with self.ledger.db.writing() as session:
            self.ledger.lock_event_head(session)
            row = session.get(InstitutionRow, name)
            if row is None or row.removed_at is not None:
                raise SharingError(f"no registered institution {name}")
            if log_url is not None:
                row.log_url = log_url.rstrip("/")
            if cert is not None:
                row.tls_cert = cert
            inst = Institution.from_row(row)
            self._record(session, EventType.INSTITUTION_UPDATED, inst, actor)
        return inst

    def _record(self, session: Session, type_: EventType, inst: Institution, actor: str) -> None:
        if self.key is None:
            raise SharingError("this registry was opened without the node's key: it cannot record")
        append_event(session, self.key, EventDraft(type=type_, actor=actor, details=inst.details()))

    # -- lookups --------------------------------------------------------------------------------

    def all(self, include_removed: bool = False) -> list[Institution]:
        with self.ledger.db.reading() as session:
            rows = session.scalars(select(InstitutionRow).order_by(InstitutionRow.name))
            found = [Institution.from_row(r) for r in rows]
        return [i for i in found if include_removed or i.active]

    def by_name(self, name: str, include_removed: bool = False) -> Institution | None:
        with self.ledger.db.reading() as session:
            row = session.get(InstitutionRow, name)
            inst = Institution.from_row(row) if row is not None else None
        return inst if inst is not None and (include_removed or inst.active) else None

    def get(self, name: str) -> Institution:
        """By name, registered now; SharingError naming it otherwise."""
        inst = self.by_name(name)
        if inst is None:
            raise SharingError(f"no registered institution {name}")
        return inst

    def by_ae_title(self, ae_title: str) -> Institution | None:
        """The registered institution calling, or called, as ``ae_title`` (None: not one of ours)."""
        return self._one(InstitutionRow.ae_title == ae_title)

    def by_key_id(self, key_id: str) -> Institution | None:
        """Whose key signed a block: the registered institution with that key id."""
        return self._one(InstitutionRow.key_id == key_id)

    def _one(self, condition: object) -> Institution | None:
        with self.ledger.db.reading() as session:
            row = session.scalars(
                select(InstitutionRow).where(condition, InstitutionRow.removed_at.is_(None))  # type: ignore[arg-type]
            ).first()
            return Institution.from_row(row) if row is not None else None
