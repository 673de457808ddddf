"""The web console's users and patients' links: who may look, and how each proves it.

A user has a role (``ROLES``) and a password kept as an argon2id hash (argon2-cffi: the winner of
the Password Hashing Competition, memory-hard, its parameters in the hash). A patient has no
account: a link with a random token, time limited, kept here only as the token's SHA-256, so the
table gives no link away. Every addition, login (failed ones too, with the name tried and never
the password), logout and link is an event on the ledger, so the audit trail shows who looked.
No HTTP here: the console (web/console/) calls these.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select

from dicom_chain.block import utc_now
from dicom_chain.db.models import PatientLinkRow, UserRow
from dicom_chain.errors import AuthError, UserError
from dicom_chain.events import EventDraft
from dicom_chain.keys import NodeKey
from dicom_chain.ledger import Ledger, append_event
from dicom_chain.vocab import EventType, Outcome

ADMINISTRATOR, COMPLIANCE, RADIOLOGIST = "administrator", "compliance", "radiologist"
ROLES = (ADMINISTRATOR, COMPLIANCE, RADIOLOGIST)
# What each role may do in the console, by the names the pages check.
CAN: dict[str, frozenset[str]] = {
    ADMINISTRATOR: frozenset({"dashboard", "studies", "audit", "sharing", "manage", "patient-links"}),
    COMPLIANCE: frozenset({"dashboard", "studies", "audit", "sharing", "patient-links"}),
    RADIOLOGIST: frozenset({"dashboard", "studies"}),
}
NAME_CHARS = 64  # the column's width
# NIST SP 800-63B 5.1.1.2: at least 8 characters for a chosen secret; 12 here, as the console
# reaches patient data and is exposed to a hospital's network.
MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 1024  # argon2 hashes any length; a bound keeps a login request cheap
LINK_DAYS = 30  # a patient's link lasts this long unless told otherwise: long enough to look, not forever
MAX_LINK_DAYS = 365
TOKEN_BYTES = 32  # 256 bits from secrets: unguessable, and short enough for a URL (43 characters)

_hasher = PasswordHasher()  # argon2id, the library's RFC 9106 "low memory" profile
# Checked against when a name is unknown, so a wrong name takes as long as a wrong password.
_DUMMY = _hasher.hash("not a password of anyone's")


@dataclass(frozen=True)
class User:
    name: str
    role: str
    created_at: str
    disabled_at: str | None = None

    def can(self, what: str) -> bool:
        return self.disabled_at is None and what in CAN.get(self.role, frozenset())


@dataclass(frozen=True)
class PatientLink:
    token: str  # shown once, when issued; only its hash is kept
    patient_id: str
    expires_at: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Users:
    def __init__(self, ledger: Ledger, key: NodeKey) -> None:
        self.ledger = ledger
        self.key = key

    def add(self, name: str, role: str, password: str, *, actor: str) -> User:
        if not name or len(name) > NAME_CHARS or name != name.strip() or any(c.isspace() for c in name):
            raise UserError(f"user name {name!r}: 1 to {NAME_CHARS} characters, no spaces")
        if role not in ROLES:
            raise UserError(f"role {role!r}: one of {', '.join(ROLES)}")
        _check_password(password, name)
        now = utc_now()
        with self.ledger.db.writing() as session:
            self.ledger.lock_event_head(session)
            if session.get(UserRow, name) is not None:
                raise UserError(f"user {name} exists (names are never reused: events name users)")
            session.add(UserRow(name=name, role=role, password_hash=_hasher.hash(password), created_at=now))
            append_event(session, self.key, EventDraft(
                type=EventType.USER_ADDED, actor=actor, reason=f"{name} added as {role}",
                details={"user": name, "role": role},
            ))  # fmt: skip
        return User(name, role, now)

    def disable(self, name: str, *, actor: str) -> User:
        with self.ledger.db.writing() as session:
            self.ledger.lock_event_head(session)
            row = session.get(UserRow, name)
            if row is None or row.disabled_at is not None:
                raise UserError(f"no active user {name}")
            row.disabled_at = utc_now()
            append_event(session, self.key, EventDraft(
                type=EventType.USER_DISABLED, actor=actor, reason=f"{name} disabled",
                details={"user": name, "role": row.role},
            ))  # fmt: skip
            return _user(row)

    def get(self, name: str) -> User | None:
        with self.ledger.db.reading() as session:
            row = session.get(UserRow, name)
            return _user(row) if row is not None else None

    def all(self) -> list[User]:
        with self.ledger.db.reading() as session:
            return [_user(r) for r in session.scalars(select(UserRow).order_by(UserRow.name))]

    def authenticate(self, name: str, password: str, *, peer: str) -> User:
        """The user, once the password holds; AuthError (the same words whatever was wrong)
        otherwise. Either way a ``user.login`` event, with the address it came from."""
        with self.ledger.db.reading() as session:
            row = session.get(UserRow, name[:NAME_CHARS])
            found = _user(row) if row is not None else None
            stored = row.password_hash if row is not None else _DUMMY
        ok = (
            _verify(stored, password[:MAX_PASSWORD_CHARS]) and found is not None and found.disabled_at is None
        )
        tried = name[:NAME_CHARS]
        details = {"user": tried, "peer": peer, **({"role": found.role} if ok and found else {})}
        self.ledger.record(self.key, EventDraft(
            type=EventType.USER_LOGIN, outcome=Outcome.SUCCESS if ok else Outcome.MINOR_FAILURE,
            actor=tried, reason="" if ok else "wrong name or password", details=details,
        ))  # fmt: skip
        if not ok or found is None:
            raise AuthError("wrong name or password")
        return found

    def logout(self, user: User, *, peer: str) -> None:
        self.ledger.record(self.key, EventDraft(
            type=EventType.USER_LOGOUT, actor=user.name, details={"user": user.name, "peer": peer},
        ))  # fmt: skip


def _check_password(password: str, name: str) -> None:
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise UserError(f"a password has {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters")
    if name.lower() in password.lower():
        raise UserError("a password does not contain the user's name")


def _verify(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _user(row: UserRow) -> User:
    return User(row.name, row.role, row.created_at, row.disabled_at)


class PatientLinks:
    def __init__(self, ledger: Ledger, key: NodeKey) -> None:
        self.ledger = ledger
        self.key = key

    def issue(self, patient_id: str, *, days: int = LINK_DAYS, actor: str) -> PatientLink:
        if not patient_id or len(patient_id) > 64:
            raise UserError(f"patient ID {patient_id!r}: 1 to 64 characters")
        if not 1 <= days <= MAX_LINK_DAYS:
            raise UserError(f"a link lasts 1 to {MAX_LINK_DAYS} days")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = datetime.now(UTC)
        expires = (now + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        digest = token_hash(token)
        with self.ledger.db.writing() as session:
            self.ledger.lock_event_head(session)
            session.add(PatientLinkRow(
                token_hash=digest, patient_id=patient_id, issued_by=actor[:64], issued_at=utc_now(),
                expires_at=expires,
            ))  # fmt: skip
            append_event(session, self.key, EventDraft(
                type=EventType.PATIENT_LINK_ISSUED, actor=actor, patient_id=patient_id,
                reason=f"a link for the patient, valid until {expires}",
                details={"link": digest[:16], "expires_at": expires},
            ))  # fmt: skip
        return PatientLink(token, patient_id, expires)

    def open(self, token: str, *, peer: str, record: bool = True) -> str:
        """The patient ID a link is for, recorded as opened (unless ``record`` is False: the
        caller recorded this link's opening a moment ago); AuthError for a link unknown, expired
        or revoked (an unknown one is not recorded: it names no patient)."""
        digest = token_hash(token[:128])
        with self.ledger.db.reading() as session:
            row = session.get(PatientLinkRow, digest)
            found = (row.patient_id, row.expires_at, row.revoked_at) if row is not None else None
        if found is None:
            raise AuthError("this link is not valid")
        patient_id, expires_at, revoked_at = found
        valid = revoked_at is None and utc_now() < expires_at
        if record or not valid:
            self._opened(digest, patient_id, valid, revoked_at, peer)
        if not valid:
            raise AuthError("this link has expired or was withdrawn")
        return patient_id

    def _opened(self, digest: str, patient_id: str, valid: bool, revoked_at: str | None, peer: str) -> None:
        self.ledger.record(self.key, EventDraft(
            type=EventType.PATIENT_LINK_OPENED, outcome=Outcome.SUCCESS if valid else Outcome.MINOR_FAILURE,
            actor="patient link", patient_id=patient_id,
            reason="" if valid else ("revoked" if revoked_at else "expired"),
            details={"link": digest[:16], "peer": peer},
        ))  # fmt: skip
