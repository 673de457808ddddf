"""Every setting of a node and its gateway, declared once: name, type, default, help.

The command line generates its options from these fields (``--field-name``, env
``DICOM_CHAIN_FIELD_NAME``, the TOML keys of ``--config`` are the field names), and ``serve``
hands them to its forward process as JSON, so a new setting is one field here. By default
everything lives under one home folder (./var).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.engine import make_url

from dicom_chain.errors import ConfigError
from dicom_chain.permissions import Peers, table_entries
from dicom_chain.vocab import ServeAltered

DEFAULT_HOME = Path("var")
DEFAULT_INSTITUTION = "Unnamed institution"
KEY_FILE_NAME = "node.key"
DB_FILE_NAME = "ledger.db"
STORAGE_DIR_NAME = "storage"
SPOOL_DIR_NAME = "spool"
# The largest C-STORE instance taken. Modalities' largest (breast tomosynthesis, enhanced
# multi-frame CT, whole-slide levels) stay below it; much beyond, a PACS or viewer reading 32-bit
# signed offsets fails anyway. Received to disk as it streams, so it bounds disk, not memory.
DEFAULT_MAX_INSTANCE_BYTES = 2 << 30
MAX_INSTANCE_BYTES_CEILING = 1 << 40  # what the setting may be raised to: a TiB, beyond any instance
# A CT or MR slice is 0.5 MB: received in memory, it costs no spool file to create, write, read back
# and unlink (about 1 ms an instance measured here); CR/DX (10-30 MB) and multi-frame instances
# spill to the spool as they arrive. At most one instance per association is held this way, so the
# worst case is max_associations x this (32 x 4 MiB = 128 MiB).
DEFAULT_SPOOL_MEMORY_BYTES = 4 << 20
ENV_PREFIX = "DICOM_CHAIN_"
DEFAULT_AE_TITLE = "DICOMCHAIN"
DEFAULT_PORT = 11112  # the IANA-registered DICOM port that needs no root (104 does)
# Parallel associations per upstream PACS: a PACS with Nagle on answers each C-STORE ~45 ms late,
# so a few associations in flight keep it busy; more only queue inside the PACS.
DEFAULT_FORWARD_WORKERS = 4
MAX_FORWARD_WORKERS = 32  # one association each; a PACS refuses beyond a few dozen from one AE
# Refusals of one instance by a PACS before it goes to the dead-letter state (outbox.py says why 5).
DEFAULT_FORWARD_MAX_REFUSALS = 5
MAX_FORWARD_MAX_REFUSALS = 100  # with back-off capped at 5 minutes: some 8 hours of refusals
MAX_PORT = 65535  # TCP
# Intake limits (scp/transport.py; design.md section 5 has the table). Each bounds what a peer
# that has only opened a socket can hold before the allow-list is consulted.
DEFAULT_MAX_ASSOCIATIONS = 32  # a department's modalities at once; beyond it connections are closed
DEFAULT_MAX_ASSOCIATIONS_PER_HOST = 8  # a PACS forwarding with 4 workers plus C-GET/C-MOVE fits; one
#   host (or one address behind NAT) can then hold at most a quarter of the total
DEFAULT_PDU_DEADLINE_S = 30  # a whole PDU (128 KiB) at 64 kbit/s takes 16 s; a trickling peer is cut
DEFAULT_TLS_HANDSHAKE_DEADLINE_S = 10  # 1-2 round trips and a certificate check: < 1 s on a LAN
# The largest legitimate A-ASSOCIATE-RQ: 128 presentation contexts (PS3.8 9.3.2.2, odd ids 1-255)
# each proposing 25 transfer syntaxes (~34 bytes per item) is ~115 KB, plus a user identity token
# (a JWT or SAML assertion, a few KB); 256 KiB is twice that, and 32 x 256 KiB bounds what is
# buffered before the allow-list at 8 MiB.
DEFAULT_MAX_ASSOCIATE_REQUEST = 262_144
MAX_DEADLINE_S = 3600  # beyond an hour a deadline protects nothing
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")  # json: one object per line, for log shippers (scp/logs.py)


@dataclass(frozen=True)
class Setting:
    """How a field is shown to people: help text and the form of its option."""

    help: str
    metavar: str | None = None
    show_default: bool = False
    option: str | None = None  # the option's name when it differs from the field's (--move-destination)
    bounds: tuple[int, int] | None = None  # inclusive, for integers
    path: Literal["file", "dir"] | None = None  # for paths: what it must be
    exists: bool = False  # a path that must exist when given (certificates)
    table: str | None = None  # TOML may give a table of entries (permissions.table_entries: "peers")
    choices: tuple[str, ...] | None = None  # for text: the only values taken


SETTING = "dicom_chain.setting"  # the field metadata key


def about(help_text: str, **form: Any) -> dict[str, Setting]:
    """A Settings field's metadata: its help and the form of its option (see ``Setting``)."""
    return {SETTING: Setting(help_text, **form)}


@dataclass(frozen=True)
class Settings:
    # -- where the node lives (every command that opens it) --
    home: Path = field(
        default=DEFAULT_HOME,
        metadata=about("Folder for the default database, store and key.", path="dir", show_default=True),
    )
    db: str | None = field(
        default=None,
        metadata=about("SQLAlchemy URL of the ledger (default: SQLite in HOME; postgresql+psycopg://...)."),
    )
    storage: Path | None = field(
        default=None, metadata=about("Folder of stored instances (default: HOME/storage).", path="dir")
    )
    key_file: Path | None = field(
        default=None,
        metadata=about("Ed25519 node key, made on first use (default: beside the database).", path="file"),
    )
    institution: str = field(
        default=DEFAULT_INSTITUTION, metadata=about("Institution named in every block.", show_default=True)
    )
    policy: Path | None = field(
        default=None,
        metadata=about(
            "Sharing policy (TOML) releases to other institutions are decided by (default: the shipped one).",
            path="file",
            exists=True,
        ),
    )
    # The clock release decisions read (decide_release's ``now``): a test or an audit replaying a day
    # sets it, so that "after the consent ends" needs no waiting. Normal use leaves it unset.
    policy_now: str | None = field(
        default=None,
        metadata=about(
            "For tests and audits: decide releases as at this time (ISO 8601 UTC; default: the clock).",
            metavar="ISO8601",
        ),
    )
    # -- the gateway (serve; forward takes the first three) --
    ae_title: str = field(
        default=DEFAULT_AE_TITLE,
        metadata=about("Our AE title (as modalities call us, and as the PACS sees us).", show_default=True),
    )
    # A modality configured with another node's AE title (or a typo) must hear so at once, not
    # have its images land here; aliases are for a gateway that replaced another under its name.
    accept_called_ae: tuple[str, ...] = field(
        default=(),
        metadata=about(
            "A called AE title answered besides --ae-title (repeatable); * answers to any called AE "
            "title. Others are refused: A-ASSOCIATE-RJ, called AE title not recognised.",
            metavar="AET",
        ),
    )
    # upstream PACS as AET@HOST:PORT; each gets its own queue
    forward: tuple[str, ...] = field(
        default=(),
        metadata=about(
            "Upstream PACS to forward every stored instance to (repeatable).", metavar="AET@HOST:PORT"
        ),
    )
    forward_workers: int = field(
        default=DEFAULT_FORWARD_WORKERS,
        metadata=about(
            "Parallel associations per upstream PACS.", bounds=(1, MAX_FORWARD_WORKERS), show_default=True
        ),
    )
    forward_max_refusals: int = field(
        default=DEFAULT_FORWARD_MAX_REFUSALS,
        metadata=about(
            "Refusals of one instance by a PACS before it is dead-lettered (see `forward retry`).",
            bounds=(1, MAX_FORWARD_MAX_REFUSALS),
            show_default=True,
        ),
    )
    host: str = field(default="0.0.0.0", metadata=about("Address to listen on.", show_default=True))
    port: int = field(
        default=DEFAULT_PORT,
        metadata=about("DICOM port to listen on.", bounds=(1, MAX_PORT), show_default=True),
    )
    allow: tuple[str, ...] = field(
        default=(),
        metadata=about(
            "Calling AE title allowed to store (C-STORE only), optionally from one host only (repeatable). "
            "No --allow, --peer or --peer-cert at all: anyone may store, query and retrieve.",
            metavar="AET[@HOST]",
        ),
    )
    # Per-AE permissions (dicom_chain/permissions.py): store, find, move, get, correct. In TOML also
    # a table per AE: [peers.WS1] permissions = ["find", "move", "get"], host = "10.0.0.21".
    peers: tuple[str, ...] = field(
        default=(),
        metadata=about(
            "A calling AE title and what it may do: store, find, move, get, correct (repeatable).",
            metavar="AET[@HOST]=PERMISSION[,...]",
            option="peer",
            table="peers",
        ),
    )
    # Per TLS client certificate, matched by subject; decides alone for a peer that presents it.
    # In TOML also [certs."CN=reading-room-1,O=Hospital"] permissions = ["find", "get"].
    certs: tuple[str, ...] = field(
        default=(),
        metadata=about(
            "A TLS client certificate subject and what its holder may do (repeatable; needs --tls-ca).",
            metavar="SUBJECT=PERMISSION[,...]",
            option="peer-cert",
            table="certs",
        ),
    )
    max_associations: int = field(
        default=DEFAULT_MAX_ASSOCIATIONS,
        metadata=about(
            "Connections served at once; beyond it new ones are closed at accept.",
            bounds=(1, DEFAULT_MAX_ASSOCIATIONS),  # the ledger's pool is sized for 32 (db/database.py)
            show_default=True,
        ),
    )
    max_associations_per_host: int = field(
        default=DEFAULT_MAX_ASSOCIATIONS_PER_HOST,
        metadata=about(
            "Connections served at once from one address; beyond it new ones are closed at accept.",
            bounds=(1, DEFAULT_MAX_ASSOCIATIONS),
            show_default=True,
        ),
    )
    pdu_deadline: int = field(
        default=DEFAULT_PDU_DEADLINE_S,
        metadata=about(
            "Seconds a peer has to send a whole PDU once it has begun; slower peers are cut off.",
            metavar="SECONDS",
            bounds=(1, MAX_DEADLINE_S),
            show_default=True,
        ),
    )
    tls_handshake_deadline: int = field(
        default=DEFAULT_TLS_HANDSHAKE_DEADLINE_S,
        metadata=about(
            "Seconds a peer has to complete the TLS handshake.",
            metavar="SECONDS",
            bounds=(1, MAX_DEADLINE_S),
            show_default=True,
        ),
    )
    max_associate_request: int = field(
        default=DEFAULT_MAX_ASSOCIATE_REQUEST,
        metadata=about(
            "Largest A-ASSOCIATE-RQ PDU accepted (bytes); larger ones are aborted unread.",
            metavar="BYTES",
            bounds=(1024, 16_777_216),
            show_default=True,
        ),
    )
    # C-MOVE destinations as AET@HOST:PORT: the only AEs instances may be moved to (until the
    # release rules for other institutions exist, a destination must be listed here).
    move_destinations: tuple[str, ...] = field(
        default=(),
        metadata=about(
            "An AE that C-MOVE may send to (repeatable); moves to any other AE are refused.",
            metavar="AET@HOST:PORT",
            option="move-destination",
        ),
    )
    # /healthz and /metrics (scp/metrics.py) over plain HTTP, unauthenticated: they name AE titles
    # and destinations, so they listen on loopback unless told otherwise (a local Prometheus or
    # agent scrapes them; give an address of the monitoring network deliberately).
    metrics_port: int = field(
        default=0,
        metadata=about("HTTP port for /healthz and Prometheus /metrics (0: off).", bounds=(0, MAX_PORT)),
    )
    metrics_host: str = field(
        default="127.0.0.1", metadata=about("Address the metrics port listens on.", show_default=True)
    )
    # The transparency log's HTTP API (web/): the c2sp.org/tlog-witness add-checkpoint endpoint, our
    # published checkpoint and proofs. Other institutions' nodes call it, so unlike /metrics it is
    # meant to be reached: give it a certificate (--http-tls-cert) the others register with ours.
    http_port: int = field(
        default=0,
        metadata=about("HTTPS port of the transparency log and witness API (0: off).", bounds=(0, MAX_PORT)),
    )
    http_host: str = field(
        default="0.0.0.0", metadata=about("Address the log API listens on.", show_default=True)
    )
    http_tls_cert: Path | None = field(
        default=None,
        metadata=about(
            "Certificate (PEM) the log API serves; without it, plain HTTP (tests and loopback only).",
            path="file",
            exists=True,
        ),
    )
    http_tls_key: Path | None = field(
        default=None, metadata=about("Private key of --http-tls-cert (PEM).", path="file", exists=True)
    )
    # One witness is enough to stop a log from showing a second history to that witness unseen;
    # more (a majority of the institutions) make a published checkpoint hold against collusion.
    # A patient's link must name the console as the patient reaches it: the server cannot know
    # that address (a request's Host header is the client's to write), so it is a setting.
    console_url: str = field(
        default="",
        metadata=about(
            "The console's address as people reach it, for the patient links it makes (e.g. https://pacs.example:8443).",
            metavar="URL",
        ),
    )
    witness_quorum: int = field(
        default=1,
        metadata=about(
            "Cosignatures a checkpoint needs before it is published.", bounds=(0, 64), show_default=True
        ),
    )
    # Five minutes: a release or a proof cites a checkpoint at most that old, and a round costs a
    # few milliseconds and one request per witness (benchmarks/bench_tlog.py).
    checkpoint_interval: int = field(
        default=300,
        metadata=about(
            "Seconds between checkpoint rounds of serve (sign, gather cosignatures, publish).",
            bounds=(1, 86400),
            show_default=True,
        ),
    )
    tsa: str | None = field(
        default=None,
        metadata=about(
            "RFC 3161 time-stamping authority (URL) each published checkpoint is timestamped by.",
            metavar="URL",
        ),
    )
    # An altered instance is evidence, not an image to read from: refused by default, so that a
    # workstation never shows it as the one received; "warn" sends it and says so (B000).
    serve_altered: str = field(
        default=ServeAltered.REFUSE.value,
        metadata=about(
            "C-MOVE/C-GET of an instance altered since receipt: refuse (a failed sub-operation) "
            "or warn (sent, final status B000).",
            choices=tuple(s.value for s in ServeAltered),
            show_default=True,
        ),
    )
    audit_syslog: str | None = field(
        default=None,
        metadata=about(
            "Send every event, as it happens, to this audit record repository (RFC 5424, ATNA messages).",
            metavar="udp|tcp|tls://HOST:PORT",
        ),
    )
    audit_syslog_ca: Path | None = field(
        default=None,
        metadata=about(
            "CA certificate (PEM) the tls:// repository's certificate must chain to.",
            path="file",
            exists=True,
        ),
    )
    spool: Path | None = field(
        default=None,
        metadata=about(
            "Folder C-STORE data sets are received into before they are stored (default: HOME/spool); "
            "keep it on the store's filesystem, not a tmpfs.",
            path="dir",
        ),
    )
    max_instance_bytes: int = field(
        default=DEFAULT_MAX_INSTANCE_BYTES,
        metadata=about(
            "Largest instance a C-STORE may carry; a larger one is refused (C000) and nothing is kept.",
            bounds=(1, MAX_INSTANCE_BYTES_CEILING),
            show_default=True,
        ),
    )
    spool_memory_bytes: int = field(
        default=DEFAULT_SPOOL_MEMORY_BYTES,
        metadata=about(
            "Instances up to this size are received in memory; larger ones go to the spool folder as "
            "they arrive (0: every instance to the spool).",
            bounds=(0, MAX_INSTANCE_BYTES_CEILING),
            show_default=True,
        ),
    )
    tls_cert: Path | None = field(
        default=None,
        metadata=about("Serve DICOM over TLS with this certificate (PEM).", path="file", exists=True),
    )
    tls_key: Path | None = field(
        default=None, metadata=about("Private key of --tls-cert (PEM).", path="file", exists=True)
    )
    tls_ca: Path | None = field(
        default=None,
        metadata=about("Require peer certificates signed by this CA (PEM).", path="file", exists=True),
    )
    # -- logs (serve, forward, demo) --
    # info: one line per association and per instance, and one saying where it listens; what the
    # libraries say at info (Alembic's migrations, pynetdicom's PDUs) shows only at debug.
    log_level: str = field(
        default="info",
        metadata=about("Least severe log lines written.", choices=LOG_LEVELS, show_default=True),
    )
    log_file: Path | None = field(
        default=None,
        metadata=about(
            "Append log lines to this file instead of stderr; reopened when logrotate moves it.",
            path="file",
        ),
    )
    log_format: str = field(
        default="text",
        metadata=about(
            "text: one key=value line per record; json: one JSON object per line, for log shippers.",
            choices=LOG_FORMATS,
            show_default=True,
        ),
    )

    def __post_init__(self) -> None:
        for spec in setting_fields():
            value = getattr(self, spec.name)
            if spec.bounds and isinstance(value, int) and not spec.bounds[0] <= value <= spec.bounds[1]:
                low, high = spec.bounds
                raise ConfigError(f"{spec.option} {value}: must be {low} to {high}")
            if spec.meta.choices and value not in spec.meta.choices:
                raise ConfigError(f"{spec.option} {value!r}: must be one of {', '.join(spec.meta.choices)}")
        Peers.parse(self.allow, self.peers, self.certs)  # a bad entry stops the start, not a caller

    @property
    def called_aes(self) -> frozenset[str] | None:
        """The called AE titles the gateway answers to; None: any."""
        if "*" in self.accept_called_ae:
            return None
        return frozenset(t.strip() for t in (self.ae_title, *self.accept_called_ae))

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{self.home / DB_FILE_NAME}"

    @property
    def sqlite_file(self) -> Path | None:
        """The ledger's file when it is SQLite on disk (it may not exist yet), else None."""
        url = make_url(self.db_url)
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            return Path(url.database)
        return None

    @property
    def storage_dir(self) -> Path:
        return self.storage or self.home / STORAGE_DIR_NAME

    @property
    def spool_dir(self) -> Path:
        return self.spool or self.home / SPOOL_DIR_NAME

    @property
    def key_path(self) -> Path:
        """Beside the database: the SQLite file's folder, else the home folder."""
        if self.key_file:
            return self.key_file
        sqlite_file = self.sqlite_file
        return (sqlite_file.parent if sqlite_file else self.home) / KEY_FILE_NAME

    def to_json(self) -> str:
        """Every field as JSON (paths as text, lists for tuples): serve hands this to its forwarder."""
        return json.dumps({spec.name: spec.plain(getattr(self, spec.name)) for spec in setting_fields()})

    @classmethod
    def from_json(cls, text: str) -> Settings:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"settings are not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError("settings JSON must be an object")
        specs = {spec.name: spec for spec in setting_fields()}
        unknown = sorted(set(data) - set(specs))
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(unknown)}")
        return cls(**{name: specs[name].typed(value) for name, value in data.items()})


@dataclass(frozen=True)
class SettingField:
    """One Settings field, its type taken apart: what an option generator or a parser needs."""

    name: str
    kind: type  # str, int or Path: the type of one value
    optional: bool  # None allowed (no value given)
    repeatable: bool  # a tuple of values
    default: Any
    meta: Setting

    @property
    def option(self) -> str:
        return "--" + (self.meta.option or self.name.replace("_", "-"))

    @property
    def envvar(self) -> str:
        return ENV_PREFIX + self.option.removeprefix("--").replace("-", "_").upper()

    @property
    def bounds(self) -> tuple[int, int] | None:
        return self.meta.bounds

    def plain(self, value: Any) -> Any:
        """The value as JSON holds it."""
        if value is None:
            return None
        if self.repeatable:
            return [str(v) if self.kind is Path else v for v in value]
        return str(value) if self.kind is Path else value

    def typed(self, value: Any) -> Any:
        """A JSON or TOML value as this field holds it."""
        if value is None:
            if self.optional:
                return None
            raise ConfigError(f"setting {self.name} needs a value")
        if self.repeatable:
            if isinstance(value, dict) and self.meta.table:
                value = table_entries(value, what=self.meta.table)
            values = [value] if isinstance(value, str) else value
            if not isinstance(values, list | tuple):
                raise ConfigError(f"setting {self.name}: expected a list")
            return tuple(self._one(v) for v in values)
        return self._one(value)

    def _one(self, value: Any) -> Any:
        if self.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"setting {self.name}: expected an integer, got {value!r}")
        if self.kind is not int and not isinstance(value, str):
            raise ConfigError(f"setting {self.name}: expected text, got {value!r}")
        if self.meta.choices and value not in self.meta.choices:
            raise ConfigError(f"setting {self.name}: {value!r} is not one of {', '.join(self.meta.choices)}")
        return Path(value) if self.kind is Path else value


@cache
def setting_fields() -> tuple[SettingField, ...]:
    """The fields of Settings in declaration order (the order options are listed in)."""
    hints = typing.get_type_hints(Settings)
    specs = []
    for f in dataclasses.fields(Settings):
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = type(None) in typing.get_args(hint)
        repeatable = typing.get_origin(hint) is tuple
        kind = args[0] if (optional or repeatable) else hint
        specs.append(SettingField(f.name, kind, optional, repeatable, f.default, f.metadata[SETTING]))
    return tuple(specs)
