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
import time
from collections import deque
from pathlib import Path
from urllib.parse import urlsplit

from pynetdicom import evt

from dicom_chain.audit import atna, record
from dicom_chain.audit import syslog as framing
from dicom_chain.audit.context import ExportContext
from dicom_chain.audit.feedcursor import FeedCursor
from dicom_chain.audit.transfers import Transfers, aggregated
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
            if len(msg) > UDP_MAX_BYTES:  # a query naming thousands of patients: say so, once each
                log.warning(
                    "audit message of %d bytes cut to %d for UDP; use tcp:// or tls:// to send it whole",
                    len(msg), UDP_MAX_BYTES,
                )  # fmt: skip
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
    """Tails the event log to one target. Receipts go out per study and association
    (audit/transfers.py), everything else one message per event. The cursor kept in the database
    stays below the first receipt of a transfer not yet sent, so a feed that stops or dies
    mid-study sends that transfer whole from the next start (at least once, as before)."""

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
        self.transfers = Transfers()
        self._read: int | None = None  # the last event read while this feed held the lease
        self._lock = threading.Lock()  # stop() may run a round while the thread ends its own
        # association ends (actor, peer, log head), noted by the gateway's association threads and
        # taken in by the feed's round: a deque, so a closing association never waits on a send
        self._ends: deque[tuple[str, str, int]] = deque()

    def association_ended(self, actor: str, peer: str) -> None:
        """An association closed: its transfers are complete once the log is read up to its head now
        (every receipt it made was committed before its C-STORE was answered)."""
        self._ends.append((actor, peer, self.ledger.event_head()[0]))

    def connection_closed(self, event: evt.Event) -> None:
        """pynetdicom's EVT_CONN_CLOSE (released, aborted or dropped): the association ended."""
        requestor = event.assoc.requestor
        self.association_ended(requestor.ae_title.strip(), requestor.address)

    def _send(self, payload: bytes, stamp: str, warning: bool) -> None:
        msg = framing.message(
            payload, timestamp=stamp, hostname=self.hostname, procid=str(os.getpid()), warning=warning
        )
        self.target.send(msg)

    def _flush(self, context: ExportContext) -> int:
        """Send the finished transfers, oldest first; one that fails stays for the next round."""
        sent = 0
        while self.transfers.finished:
            transfer = self.transfers.finished[0]
            self._send(atna.transfer_bytes(transfer, context), transfer.last_time, warning=False)
            self.transfers.finished.pop(0)
            sent += 1
        return sent

    def _take_ends(self) -> None:
        while self._ends:
            self.transfers.ended(*self._ends.popleft())

    def _committed(self, position: int) -> int:
        """Where the cursor may stand: the last event read, or just below an unsent transfer."""
        oldest = self.transfers.oldest_seq()
        return position if oldest is None else min(position, oldest - 1)

    def send_pending(self, *, final: bool = False) -> int:
        """Send what the log holds past the cursor, if this process holds the target's lease;
        returns how many messages went out. ``final`` (stopping) sends every open transfer."""
        position = self.cursor.acquire(lambda: self.head_at_start)
        with self._lock:
            if position is None:
                self._forget()  # another process sends; it gathers them again from the cursor
                return 0
            if self._read is not None and self._read > position:
                position = self._read  # the receipts between the cursor and here are gathered
            return self._pump(position, final)

    def _pump(self, position: int, final: bool) -> int:
        context = ExportContext(
            exported_at="", source_id=self.source_id, institutions=self.ledger.institutions()
        )
        sent = 0
        held = True
        try:
            sent += self._flush(context)
            while rows := self.ledger.events_after(position, BATCH):
                self._take_ends()  # before the receipts: an end among them splits their transfers
                for row in rows:
                    rec = record.from_row(row)
                    if aggregated(rec):
                        self.transfers.add(rec)
                    else:
                        warning = rec["outcome"] != Outcome.SUCCESS
                        self._send(atna.to_bytes(rec, context), rec["time"], warning)
                        sent += 1
                    position = self._read = rec["seq"]
                self._take_ends()
                self.transfers.close_due(position, None)
                sent += self._flush(context)
                held = self.cursor.advance(self._committed(position))
                if not held:
                    return sent  # the lease went to another process meanwhile: it goes on from here
            self._take_ends()
            self.transfers.close_due(position, time.time(), everything=final)
            sent += self._flush(context)
        finally:
            if not held:
                self._forget()
            else:
                self.cursor.advance(self._committed(position))
        return sent

    def _forget(self) -> None:
        self.transfers.clear()
        self._ends.clear()
        self._read = None

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
            self.send_pending(final=True)  # the associations are drained: every transfer is complete
        except (OSError, DicomChainError) as exc:
            log.warning("audit feed: %s; the rest goes out at the next start", exc)
        try:
            self.cursor.release()
        except DicomChainError as exc:
            log.warning("audit feed: lease not given back (%s); it runs out in time", exc)
        self.target.close()
