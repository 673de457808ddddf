"""The live audit feed: every ledger event, as it lands, to an audit record repository by syslog.

It tails the event log by sequence number (so events of every process sharing the database go
out, the forwarder's included), sends each as a DICOM audit message, and keeps its place in a
small cursor file: a repository that was down gets what it missed once it is back (at least
once; its records carry the event hash, so duplicates are recognisable).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import select

from dicom_chain.audit import atna, record
from dicom_chain.audit import syslog as framing
from dicom_chain.audit.context import ExportContext
from dicom_chain.errors import ConfigError
from dicom_chain.ledger import EVENTS, Ledger
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
    def __init__(self, ledger: Ledger, target: SyslogTarget, cursor_file: Path, source_id: str) -> None:
        super().__init__(name="audit-feed", daemon=True)
        self.ledger = ledger
        self.target = target
        self.cursor_file = cursor_file
        self.source_id = source_id
        self.stopping = threading.Event()
        self.hostname = socket.gethostname()
        self.cursor = self._load_cursor()

    def _load_cursor(self) -> int:
        try:
            return int(self.cursor_file.read_text().strip())
        except (OSError, ValueError):
            return self.ledger.event_head()[0]  # first start: from now on, not the whole history

    def _save_cursor(self) -> None:
        tmp = self.cursor_file.with_name(self.cursor_file.name + ".tmp")
        tmp.write_text(str(self.cursor))
        os.replace(tmp, self.cursor_file)

    def send_pending(self) -> int:
        """Send what the log holds past the cursor; returns how many went out."""
        sent = 0
        context = ExportContext(
            exported_at="", source_id=self.source_id, institutions=self.ledger.institutions()
        )
        while True:
            with self.ledger.engine.connect() as conn:
                rows = list(
                    conn.execute(
                        select(EVENTS).where(EVENTS.c.seq > self.cursor).order_by(EVENTS.c.seq).limit(BATCH)
                    )
                )
            if not rows:
                return sent
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
                self.cursor = row.seq
                sent += 1
            self._save_cursor()

    def run(self) -> None:
        delay = POLL_S
        while not self.stopping.is_set():
            try:
                self.send_pending()
                delay = POLL_S
            except OSError as exc:
                self._save_cursor()
                log.warning("audit feed to %s:%d failed: %s", self.target.host, self.target.port, exc)
                delay = min(delay * 2, RETRY_MAX_S)
            except Exception:
                log.exception("audit feed: unexpected error")
                delay = min(delay * 2, RETRY_MAX_S)
            self.stopping.wait(delay)

    def stop(self) -> None:
        """Send what is left (service.stop included), then end."""
        self.stopping.set()
        if self.is_alive():
            self.join(timeout=CONNECT_TIMEOUT_S)
        try:
            self.send_pending()
        except OSError as exc:
            log.warning("audit feed: %s; the rest goes out at the next start", exc)
        self.target.close()
