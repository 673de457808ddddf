"""Who may do what: permissions per calling AE title and per TLS client certificate.

Pure policy, no networking: the DICOM edge (``scp/access.py``) asks it with what the association
says about the peer (AE title, address, certificate subject). An AE title is only a claim (any
device can send any title); a host binding narrows it to one address, and a client certificate
verified against ``--tls-ca`` is an identity. Entries are text, ``AET[@HOST]=PERM,...`` and
``SUBJECT=PERM,...``, so that they pass through the command line, the environment, TOML and the
forward process's JSON alike; TOML may also give a table per peer (``table_entries``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from dicom_chain.errors import ConfigError

AE_TITLE_MAX = 16  # PS3.5 6.2: an AE title has 1 to 16 characters


class Permission(StrEnum):
    STORE = "store"  # C-STORE: send instances to be chained and stored
    FIND = "find"  # C-FIND: query the index (discloses patients)
    MOVE = "move"  # C-MOVE: have studies sent to a configured destination
    GET = "get"  # C-GET: have studies sent back on the same association
    CORRECT = "correct"  # make a new version of an instance another AE sent


# No list at all: anyone may do everything but correct others' instances (today's behaviour,
# warned about at start). An instance's new version is by default its original sender's only.
OPEN = frozenset(Permission) - {Permission.CORRECT}
# ``--allow AET[@HOST]`` grants what a modality needs and no more: store. Querying and retrieving
# disclose patients, so they are granted by name (``--peer``, ``[peers.AET]``), never by default.
ALLOW_ONLY = frozenset({Permission.STORE})
NONE: frozenset[Permission] = frozenset()


def _permissions(text: str, entry: str) -> frozenset[Permission]:
    names = [p.strip().lower() for p in text.split(",") if p.strip()]
    if not names:
        raise ConfigError(f"peer entry {entry!r}: no permissions after '='")
    unknown = [n for n in names if n not in {p.value for p in Permission}]
    if unknown:
        known = ", ".join(Permission)
        raise ConfigError(f"peer entry {entry!r}: unknown permission {unknown[0]!r} (known: {known})")
    return frozenset(Permission(n) for n in names)


def _ae_title(ae: str, entry: str) -> str:
    ae = ae.strip()
    if not ae or len(ae) > AE_TITLE_MAX:
        raise ConfigError(f"peer entry {entry!r}: AE title must have 1-{AE_TITLE_MAX} characters")
    return ae


Subject = frozenset[tuple[str, str]]

# The short names RFC 4514 uses, for the long ones ssl.getpeercert() gives.
_SHORT_NAMES = {
    "commonname": "CN",
    "organizationname": "O",
    "organizationalunitname": "OU",
    "countryname": "C",
    "stateorprovincename": "ST",
    "localityname": "L",
    "domaincomponent": "DC",
    "emailaddress": "EMAILADDRESS",
}


def _attribute(name: str) -> str:
    name = name.strip()
    return _SHORT_NAMES.get(name.lower(), name.upper())


def parse_subject(text: str) -> Subject:
    """``CN=reading-room-1,O=Hospital`` as a set of (attribute, value): order-free, so the order the
    certificate lists its names in (RFC 4514 reverses it) does not matter. ``\\,`` escapes a comma."""
    parts, current, escaped = [], "", False
    for char in text:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            escaped = True
        elif char in ",+":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    subject = set()
    for part in parts:
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(f"certificate subject {text!r}: {part!r} is not ATTRIBUTE=VALUE")
        subject.add((_attribute(name), value.strip()))
    return frozenset(subject)


def subject_of(peercert: Mapping[str, Any] | None) -> Subject | None:
    """The subject of a certificate as ``ssl.SSLSocket.getpeercert()`` gives it (None: no certificate)."""
    if not peercert or not peercert.get("subject"):
        return None
    return frozenset((_attribute(name), str(value)) for rdn in peercert["subject"] for name, value in rdn)


def show_subject(subject: Subject) -> str:
    return ",".join(f"{name}={value}" for name, value in sorted(subject))


@dataclass(frozen=True)
class Peers:
    """The permission table: per (AE title, host or None) and per certificate subject."""

    by_ae: Mapping[tuple[str, str | None], frozenset[Permission]] = field(default_factory=dict)
    by_subject: Mapping[Subject, frozenset[Permission]] = field(default_factory=dict)

    @classmethod
    def parse(cls, allow: Iterable[str] = (), peers: Iterable[str] = (), certs: Iterable[str] = ()) -> Peers:
        """``allow``: ``AET[@HOST]`` (store only); ``peers``: ``AET[@HOST]=PERM,...``;
        ``certs``: ``SUBJECT=PERM,...``. An AE or subject named twice gets the union."""
        by_ae: dict[tuple[str, str | None], frozenset[Permission]] = {}
        for entry, grant in [(e, None) for e in allow] + [(e, "=") for e in peers]:
            if grant:
                who, sep, perms = entry.rpartition("=")
                if not sep:
                    raise ConfigError(f"peer entry {entry!r}: expected AET[@HOST]=PERMISSION[,...]")
                granted = _permissions(perms, entry)
            else:
                who, granted = entry, ALLOW_ONLY
            ae, _, host = who.partition("@")
            key = (_ae_title(ae, entry), host.strip() or None)
            by_ae[key] = by_ae.get(key, NONE) | granted
        by_subject: dict[Subject, frozenset[Permission]] = {}
        for entry in certs:
            who, sep, perms = entry.rpartition("=")
            if not sep or not who.strip():
                raise ConfigError(f"certificate entry {entry!r}: expected SUBJECT=PERMISSION[,...]")
            subject = parse_subject(who)
            by_subject[subject] = by_subject.get(subject, NONE) | _permissions(perms, entry)
        return cls(by_ae, by_subject)

    @property
    def open(self) -> bool:
        return not self.by_ae and not self.by_subject

    def permissions(
        self, calling_ae: str, host: str, subject: Subject | None = None
    ) -> frozenset[Permission]:
        """What this caller may do; empty: it may not associate at all.

        A certificate whose subject is listed decides alone: it is an identity, the AE title only
        a claim, so a certified reading room keeps its rights whatever title it calls with.
        Otherwise the AE title's entries, unbound and bound to this host, together."""
        if self.open:
            return OPEN
        if subject is not None and subject in self.by_subject:
            return self.by_subject[subject]
        ae = calling_ae.strip()
        return self.by_ae.get((ae, None), NONE) | self.by_ae.get((ae, host), NONE)


def table_entries(table: Mapping[str, Any], *, what: str) -> list[str]:
    """A TOML table of peers (``[peers.CT1] permissions = ["store"], host = "10.0.0.7"``) or of
    certificates (``[certs."CN=rr1,O=Hospital"] permissions = [...]``) as text entries."""
    entries = []
    for name, spec in table.items():
        if not isinstance(spec, Mapping):
            raise ConfigError(f"[{what}.{name}] must be a table with 'permissions'")
        unknown = set(spec) - ({"permissions", "host"} if what == "peers" else {"permissions"})
        if unknown:
            raise ConfigError(f"[{what}.{name}]: unknown key {sorted(unknown)[0]!r}")
        perms = spec.get("permissions")
        if isinstance(perms, str):
            perms = [perms]
        if not isinstance(perms, list) or not perms or not all(isinstance(p, str) for p in perms):
            raise ConfigError(f"[{what}.{name}] permissions must be a non-empty list of names")
        hosts = spec.get("host")
        hosts = [hosts] if isinstance(hosts, str) else hosts
        if hosts is not None and not (isinstance(hosts, list) and all(isinstance(h, str) for h in hosts)):
            raise ConfigError(f"[{what}.{name}] host must be an address or a list of them")
        for host in hosts or [None]:
            who = f"{name}@{host}" if host else name
            entries.append(f"{who}={','.join(perms)}")
    return entries
