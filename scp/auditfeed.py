"""The live audit feed: every ledger event, as it lands, to an audit record repository by syslog.

It tails the event log by sequence number (so events of every process sharing the database go
out, the forwarder's included), sends each as a DICOM audit message, and keeps its place in the
database per target (audit/feedcursor.py): a repository that was down gets what it missed once it
is back (at least once; its records carry the event hash, so duplicates are recognisable), and of
several processes on one database only the one holding the target's lease sends.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
from pathlib import Path
from urllib.parse import urlsplit

from dicom_chain.audit import atna, record
from dicom_chain.audit import syslog as framing
from dicom_chain.audit.context import ExportContext
from dicom_chain.audit.feedcursor import FeedCursor
from dicom_chain.errors import ConfigError, DicomChainError
from dicom_chain.ledger import Ledger
from dicom_chain.vocab import Outcome

log = logging.getLogger("dicom_chain.audit")

POLL_S = 0.5  # how soon an event goes out: a cheap indexed query twice a second
BATCH = 200  # events read per poll
CONNECT_TIMEOUT_S = 10
RETRY_MAX_S = 60.0  # back-off ceiling while the repository is unreachable
UDP_MAX_BYTES = 65_000  # one datagram; a larger message is sent truncated rather than not at all
SCHEMES = ("udp", "tcp", "tls")


class SyslogTarget:
    """Where the feed goes: udp://, tcp:// or tls://host:port (TLS verified against ``ca``)."""

    def __init__(self, url: str, ca: Path | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES or not parts.hostname or not parts.port:
            raise ConfigError(f"audit syslog target {url!r}: expected udp|tcp|tls://HOST:PORT")
        self.scheme, self.host, self.port, self.ca = parts.scheme, parts.hostname, parts.port, ca
        self.sock: socket.socket | None = None

    def __str__(self) -> str:
        """The target's name, under which the database keeps the feed's place."""
        return f"{self.scheme}://{self.host}:{self.port}"

    def send(self, msg: bytes) -> None:
        if self.scheme == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(msg[:UDP_MAX_BYTES], (self.host, self.port))
            return
        if self.sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT_S)
            if self.scheme == "tls":
                context = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
                sock = context.wrap_socket(sock, server_hostname=self.host)
            self.sock = sock
        try:
            self.sock.sendall(framing.octet_counted(msg))
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None


class AuditFeed(threading.Thread):
    def __init__(self, ledger: Ledger, target: SyslogTarget, source_id: str) -> None:
        super().__init__(name="audit-feed", daemon=True)
        self.ledger = ledger
        self.target = target
        self.source_id = source_id
        self.stopping = threading.Event()
        self.hostname = socket.gethostname()
        self.cursor = FeedCursor(ledger.db, str(target))
        self.head_at_start = ledger.event_head()[0]  # a first start sends what follows, not the history
        self.failures = 0  # rounds that ended in an error (the repository or the database was down)
        self.last_error = ""

    def send_pending(self) -> int:
        """Send what the log holds past the cursor, if this process holds the target's lease;
        returns how many went out."""
        position = self.cursor.acquire(lambda: self.head_at_start)
        if position is None:
            return 0  # another process sends
        sent = 0
        context = ExportContext(
            exported_at="", source_id=self.source_id, institutions=self.ledger.institutions()
        )
        while rows := self.ledger.events_after(position, BATCH):
            start = position
            try:
                for row in rows:
                    rec = record.from_row(row)
                    payload = atna.to_bytes(rec, context)
                    msg = framing.message(
                        payload,
                        timestamp=rec["time"],
                        hostname=self.hostname,
                        procid=str(os.getpid()),
                        warning=rec["outcome"] != Outcome.SUCCESS,
                    )
                    self.target.send(msg)
                    position = rec["seq"]
                    sent += 1
            finally:
                held = position == start or self.cursor.advance(position)
            if not held:
                return sent  # the lease went to another process meanwhile: it goes on from here
        return sent

    def run(self) -> None:
        delay = POLL_S
        while not self.stopping.is_set():
            try:
                self.send_pending()
                delay = POLL_S
            except (OSError, DicomChainError) as exc:
                self._failed(str(exc))
                log.warning("audit feed to %s failed: %s", self.target, exc)
                delay = min(delay * 2, RETRY_MAX_S)
            except Exception as exc:
                self._failed(repr(exc))
                log.exception("audit feed: unexpected error")
                delay = min(delay * 2, RETRY_MAX_S)
            self.stopping.wait(delay)

    def _failed(self, error: str) -> None:
        self.failures += 1
        self.last_error = error

    def stop(self) -> None:
        """Send what is left (service.stop included), give the lease back, then end."""
        self.stopping.set()
        if self.is_alive():
            self.join(timeout=CONNECT_TIMEOUT_S)
        try:
            self.send_pending()
        except (OSError, DicomChainError) as exc:
            log.warning("audit feed: %s; the rest goes out at the next start", exc)
        try:
            self.cursor.release()
        except DicomChainError as exc:
            log.warning("audit feed: lease not given back (%s); it runs out in time", exc)
        self.target.close()
