"""Our transport on top of pynetdicom's: intake that a peer with only a socket cannot starve.

pynetdicom 3.0's acceptor trusts the peer in four ways this module takes back (each class says
which behaviour it works around; docs/upstream-pynetdicom.md proposes the general fixes):

- ``AssociationServer.get_request`` does the TLS handshake on the accepting thread with no
  timeout: one idle TCP connection to a TLS port blocks every other client. ``GuardedServer``
  only accepts; ``GuardedRequestHandler`` shakes hands on the connection's own thread, within
  ``tls_handshake_deadline``.
- ``AssociationSocket.recv`` loops ``socket.recv`` until it has the bytes asked for, blocking
  for ever (an accepted socket has no timeout), and the ARTIM/idle timers live on the same
  thread, so they cannot fire meanwhile: a peer trickling one byte every 20 s holds its slot
  indefinitely. ``GuardedSocket`` gives each whole PDU ``pdu_deadline`` seconds.
- ``DULServiceProvider._read_pdu_data`` reads as many bytes as a PDU header declares (up to
  4 GiB) before looking at them, before any allow-list. ``GuardedSocket`` answers a header
  larger than we accept with an A-ABORT and reads no further: P-DATA-TF up to the maximum length
  we advertised (PS3.8 D.1), A-ASSOCIATE-RQ up to ``max_associate_request``.
- Only a total of associations exists, counted once the A-ASSOCIATE-RQ has been read.
  ``GuardedServer`` counts connections per host and in total at accept, and closes the excess
  unread.

Refused connections are noted in ``RejectionLog``: per host, the first in a minute becomes an
event (and a log line) at once; the rest are counted and written as one event per host per
minute, so a flood of refusals cannot flood the signed event log.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pynetdicom import AE
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer
from pynetdicom.utils import make_target

from dicom_chain.config import Settings
from dicom_chain.events import EventDraft
from dicom_chain.vocab import EventType, Outcome

log = logging.getLogger("dicom_chain.scp")

# A burst of connects (a flood, or every modality after a network outage) queues in the kernel
# instead of being dropped: a dropped SYN costs a legitimate sender 1 s, then 3 s (TCP's backoff).
LISTEN_BACKLOG = 128
# PS3.8 9.3.5-9.3.8: A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT have a 4-byte body; 64 tolerates
# a sloppy peer and buffers nothing worth having.
SMALL_PDU_MAX = 64
PDU_HEADER = struct.Struct(">BBL")  # type, reserved, length (PS3.8 9.3.1)
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, P_DATA_TF = 0x01, 0x02, 0x04
KNOWN_PDU_TYPES = range(0x01, 0x08)
# A-ABORT from the service provider, reason "invalid PDU parameter value" (PS3.8 9.3.8, Table 9-26)
ABORT_INVALID_PARAMETER = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x06])
# At most this much asked of the kernel per read outside a body (a header read asks only for what
# it lacks); one buffer of this size per connection, allocated once.
READ_CHUNK = 262_144
# Read ahead with the rest of a body, in the same system call: the next PDU's header, so the next
# body also goes from the kernel straight into its own buffer. More would be copied twice (into
# the read-ahead, then into that body's buffer).
READ_AHEAD = 6  # PS3.8 9.3.1: type, reserved, length
ABORT_SEND_TIMEOUT_S = 1.0  # the A-ABORT is a courtesy; a peer that does not read it is not waited for

REJECTION_WINDOW_S = 60.0  # per host, at most one rejection event a minute: the rest are counted
REJECTION_TICK_S = 1.0  # how soon a due rejection event is written by the background writer
# Distinct hosts with an open window; beyond it (a spoofed-source flood) counts go to one bucket,
# so the bookkeeping cannot grow without bound.
REJECTION_MAX_HOSTS = 4096
OTHER_HOSTS = "*"
REJECTION_MAX_AES = 16  # calling AE titles kept per summary: enough to see who, bounded in size


@dataclass(frozen=True)
class Limits:
    """What one connection may hold; every value is a setting (config.py says why each default)."""

    max_connections: int
    max_per_host: int
    pdu_deadline_s: float
    tls_handshake_deadline_s: float
    max_associate_request: int
    max_pdata: int  # the Maximum Length Received we advertise; 0 is pynetdicom's "unlimited"

    @classmethod
    def from_settings(cls, settings: Settings, max_pdata: int) -> Limits:
        return cls(
            max_connections=settings.max_associations,
            max_per_host=settings.max_associations_per_host,
            pdu_deadline_s=settings.pdu_deadline,
            tls_handshake_deadline_s=settings.tls_handshake_deadline,
            max_associate_request=settings.max_associate_request,
            max_pdata=max_pdata,
        )

    def pdu_cap(self, pdu_type: int) -> int | None:
        """The largest length field we read for a PDU of this type (None: no cap)."""
        if pdu_type in (A_ASSOCIATE_RQ, A_ASSOCIATE_AC):
            return self.max_associate_request
        if pdu_type == P_DATA_TF:
            return self.max_pdata or None
        return SMALL_PDU_MAX


@dataclass
class _Window:
    opened: float
    pending: int = 0
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    calling_aes: set[str] = field(default_factory=set)


class RejectionLog:
    """Refused connections, per host: the first in a window an event at once, the rest one count.

    ``note`` never touches the ledger (the accepting thread calls it); ``flush`` writes what is
    due, and a background thread calls it every ``REJECTION_TICK_S``. Bound: per host, one event
    per ``window_s`` while refusals last, plus one for the remainder at ``stop``.
    """

    def __init__(self, record: Callable[[EventDraft], None], window_s: float = REJECTION_WINDOW_S) -> None:
        self._record = record
        self.window_s = window_s
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one writer at a time, so events keep their order
        self._windows: dict[str, _Window] = {}
        self._due: list[EventDraft] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def note(
        self, host: str, reason: str, calling_ae: str = "", certificate: str = "", called_ae: str = ""
    ) -> None:
        """``certificate``: the subject a refused peer presented, ``called_ae`` the AE title it
        called when that was the reason; both kept in its window's first event."""
        now = time.monotonic()
        with self._lock:
            if host not in self._windows and len(self._windows) >= REJECTION_MAX_HOSTS:
                host = OTHER_HOSTS
            window = self._windows.get(host)
            if window is None or (window.pending == 0 and now >= window.opened + self.window_s):
                self._windows[host] = _Window(opened=now)
                self._due.append(self._first(host, reason, calling_ae, certificate, called_ae))
                first = True
            else:
                window.pending += 1
                window.reasons[reason] += 1
                if calling_ae and len(window.calling_aes) < REJECTION_MAX_AES:
                    window.calling_aes.add(calling_ae)
                first = False
        if first:
            log.warning("connection refused peer=%s reason=%s calling_ae=%s", host, reason, calling_ae or "-")
        self._wake.set()

    def _first(
        self, host: str, reason: str, calling_ae: str, certificate: str = "", called_ae: str = ""
    ) -> EventDraft:
        details: dict[str, object] = {"peer": host, "count": 1, "reasons": {reason: 1}}
        if certificate:
            details["certificate"] = certificate
        if called_ae:
            details["called_ae"] = called_ae
        return EventDraft(
            EventType.ASSOCIATION_REJECTED,
            outcome=Outcome.MINOR_FAILURE,
            actor=calling_ae,
            reason=REASONS.get(reason, reason),
            details=details,
        )

    def _summary(self, host: str, window: _Window) -> EventDraft:
        aes = sorted(window.calling_aes)
        log.warning(
            "connections refused peer=%s count=%d window_s=%g reasons=%s calling_aes=%s",
            host, window.pending, self.window_s,
            ",".join(f"{r}:{n}" for r, n in sorted(window.reasons.items())), ",".join(aes) or "-",
        )  # fmt: skip
        return EventDraft(
            EventType.ASSOCIATION_REJECTED,
            outcome=Outcome.MINOR_FAILURE,
            actor=aes[0] if len(aes) == 1 else "",
            reason=f"{window.pending} more connections refused within {self.window_s:g} s",
            details={
                "peer": host,
                "count": window.pending,
                "reasons": dict(sorted(window.reasons.items())),
                "calling_aes": aes,
                "window_s": self.window_s,
            },
        )

    def flush(self, final: bool = False) -> None:
        """Write the events now due; ``final``: every pending count too (at stop)."""
        with self._flush_lock:
            now = time.monotonic()
            with self._lock:
                drafts, self._due = self._due, []
                for host, window in list(self._windows.items()):
                    if window.pending and (final or now >= window.opened + self.window_s):
                        drafts.append(self._summary(host, window))
                        self._windows[host] = _Window(opened=now)  # the next minute starts counting
                    elif now >= window.opened + self.window_s:
                        del self._windows[host]
            for draft in drafts:
                try:
                    self._record(draft)
                except Exception:  # the ledger down must not stop the refusing; the log has the line
                    log.exception("could not record a rejection event peer=%s", draft.details.get("peer"))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rejection-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(REJECTION_TICK_S)
            self._wake.clear()
            self.flush()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush(final=True)


# What each refusal reason means, as the first event of a window says it.
REASONS = {
    "not-on-allow-list": "calling AE title or host not on the allow-list",
    "no-permission": "no permission for this calling AE title, host or certificate",
    "called-ae": "called AE title is not this gateway's",
    "host-limit": "too many connections from this host",
    "total-limit": "too many connections",
    "tls-handshake": "TLS handshake failed or not completed in time",
    "pdu-too-large": "PDU larger than accepted",
    "pdu-deadline": "PDU not completed in time",
}


class ConnectionSlots:
    """Connections held, per host and in total; counted from accept until the association ends."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._per_host: collections.Counter[str] = collections.Counter()
        self._total = 0

    def admit(self, host: str) -> str | None:
        """Take a slot for ``host``, or say why not (a refusal reason)."""
        with self._lock:
            if self._total >= self.limits.max_connections:
                return "total-limit"
            if self._per_host[host] >= self.limits.max_per_host:
                return "host-limit"
            self._total += 1
            self._per_host[host] += 1
            return None

    def release(self, host: str) -> None:
        with self._lock:
            self._total -= 1
            self._per_host[host] -= 1
            if self._per_host[host] <= 0:
                del self._per_host[host]

    def held(self, host: str | None = None) -> int:
        with self._lock:
            return self._total if host is None else self._per_host[host]


_cut_on_this_thread = threading.local()


class _AlreadyLogged(logging.Filter):
    """Drops pynetdicom's "PDU is shorter than expected" ERROR that follows our own cut.

    A PDU cut at its deadline reaches the DUL as a short read, which it logs once per connection;
    the rejection log already counts it per host, and a slowloris run must not write one ERROR
    line per connection it opens.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_cut_on_this_thread, "pending", False) and str(record.msg).startswith(
            "The received PDU is shorter"
        ):
            _cut_on_this_thread.pending = False
            return False
        return True


logging.getLogger("pynetdicom.dul").addFilter(_AlreadyLogged())


class GuardedSocket(AssociationSocket):
    """An AssociationSocket that gives each PDU a deadline, refuses oversized ones unread, and
    reads a body in as few system calls as the peer's pace allows, into a buffer of its own.

    Works around ``AssociationSocket.recv`` (blocks until every requested byte is in, with no
    timeout, 4 KiB per ``socket.recv``) and ``DULServiceProvider._read_pdu_data`` (asks for as
    many bytes as the header declares). The DUL reads a PDU as ``recv(6)`` then ``recv(length)``;
    the header read starts the PDU's deadline (the reactor only reads once ``select`` has seen its
    first byte, or bytes are buffered here) and is checked against the cap for its type. A
    refusal returns a short read, which the DUL treats as the transport closing (Evt17), so the
    association ends without reading more.

    A body's read asks the kernel for all of it that is missing plus the next header
    (``READ_AHEAD``) in one call, so a P-DATA-TF usually costs one system call and one copy; what
    is read beyond the PDU waits in ``_buffer``, which ``ready`` and ``buffered`` report
    (``select`` cannot see it).
    """

    limits: Limits
    peer: str
    rejections: RejectionLog | None = None
    _pdu_body: int | None = None  # the body length the next recv() reads, after a header
    _pdu_deadline_at = 0.0
    _buffer: bytearray | None = None  # read from the kernel, not yet given to the DUL
    _scratch: memoryview | None = None
    sending: threading.Lock  # held for each write: the DUL's and a response's (respond.py)

    def send(self, bytestream: bytes) -> None:
        with self.sending:
            super().send(bytestream)

    @property
    def buffered(self) -> int:
        """Bytes read from the kernel and not yet returned by ``recv``."""
        return len(self._buffer) if self._buffer else 0

    @property
    def ready(self) -> bool:
        return bool(self.buffered) or super().ready

    def recv(self, nr_bytes: int) -> bytearray:
        if self._pdu_body is not None and nr_bytes == self._pdu_body:
            self._pdu_body = None
            return self._short_ends(self._read_until_deadline(nr_bytes, "body"), nr_bytes)
        self._pdu_body = None
        self._pdu_deadline_at = time.monotonic() + self.limits.pdu_deadline_s
        header = self._short_ends(self._read_until_deadline(nr_bytes, "header"), nr_bytes)
        if nr_bytes != PDU_HEADER.size or len(header) != PDU_HEADER.size:
            return header
        pdu_type, _, length = PDU_HEADER.unpack(header)
        if pdu_type not in KNOWN_PDU_TYPES:
            return header  # the DUL aborts unknown types itself (Evt19), reading nothing more
        cap = self.limits.pdu_cap(pdu_type)
        if cap is not None and length > cap:
            self._refuse(pdu_type, length, cap)
            return self._short_ends(bytearray(), nr_bytes)  # the DUL sees a closed transport
        self._pdu_body = length
        return header

    def _short_ends(self, data: bytearray, nr_bytes: int) -> bytearray:
        """A short read is the transport closing (the DUL's Evt17): end a waiting acceptor too."""
        if len(data) < nr_bytes:
            self._wake_waiting_acceptor()
        return data

    def _wake_waiting_acceptor(self) -> None:
        """Before an A-ASSOCIATE-RQ has arrived a closed transport only stops the ARTIM timer
        (AA-5), and the acceptor keeps waiting for a request for ``acse_timeout`` (``Association.
        run_reactor``), holding its slot: a peer that connects and closes held one for 30 s. The
        ``None`` it gets instead is what it reads as that wait timing out, and it ends at once."""
        assoc = self.assoc
        if assoc.is_acceptor and assoc.requestor.primitive is None:
            assoc.dul.to_user_queue.put(None)  # type: ignore[arg-type]

    def _read_until_deadline(self, nr_bytes: int, part: str) -> bytearray:
        """``nr_bytes`` from the buffer and the socket, or fewer if the peer closes or the PDU's
        deadline passes first.

        A body goes into a buffer of its own, read from the kernel straight into it (one copy of
        the bytes, the kernel's), with the next header read ahead into ``_buffer`` by the same
        system call; the DUL keeps that buffer (scp/receive.py decodes views of it). A header
        comes from ``_buffer``, or the kernel when it is not there yet.
        """
        sock = self.socket
        assert sock is not None
        if self._buffer is None:
            self._buffer = bytearray()
            self._scratch = memoryview(bytearray(READ_CHUNK))
        buffer, scratch = self._buffer, self._scratch
        assert scratch is not None
        # A body's buffer is allocated whole at its header only up to READ_CHUNK (our P-DATA-TF
        # maximum and the default A-ASSOCIATE-RQ cap fit): a larger declared length (a cap set
        # higher, or none) grows as its bytes arrive, never on a header's word.
        body = part == "body" and 0 < nr_bytes <= READ_CHUNK
        if body:
            target = bytearray(nr_bytes)
            have = min(len(buffer), nr_bytes)
            with memoryview(buffer) as ahead:
                target[:have] = ahead[:have]
            del buffer[:have]  # from the front of a bytearray: no copy of the rest
            view, ahead = memoryview(target), scratch[:READ_AHEAD]
        else:
            have = len(buffer)
        previous = sock.gettimeout()
        plain = not isinstance(sock, ssl.SSLSocket)  # TLS cannot take MSG_DONTWAIT
        try:
            while have < nr_bytes:
                remaining = self._pdu_deadline_at - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                want = nr_bytes - have
                if plain:
                    try:  # the reactor saw the socket readable: usually no wait, one system call
                        if body:  # the rest of the body where it belongs, the next header ahead
                            n = sock.recvmsg_into([view[have:], ahead], 0, socket.MSG_DONTWAIT)[0]
                        else:
                            n = sock.recv_into(scratch, min(want, READ_CHUNK), socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        if not select.select([sock], [], [], remaining)[0]:
                            raise TimeoutError from None
                        continue
                else:
                    sock.settimeout(remaining)
                    n = (
                        sock.recv_into(view[have:], want)
                        if body
                        else sock.recv_into(scratch, min(want, READ_CHUNK))
                    )
                if not n:
                    break
                if body:
                    if n > want:
                        buffer += scratch[: n - want]
                    have += min(n, want)
                else:
                    buffer += scratch[:n]
                    have += n
        except TimeoutError:
            log.debug(  # the rejection log writes the warning, once per host per minute
                "pdu deadline exceeded peer=%s part=%s received=%d of=%d deadline_s=%g",
                self.peer, part, have, nr_bytes, self.limits.pdu_deadline_s,
            )  # fmt: skip
            if self.rejections is not None:
                self.rejections.note(self.peer, "pdu-deadline")
            self._close_transport()
            _cut_on_this_thread.pending = part == "body"  # the DUL logs a short body, not a header
        except (OSError, ValueError):  # reset, or closed under us (ValueError: select on fd -1)
            pass
        finally:
            if not plain:
                with contextlib.suppress(OSError):
                    sock.settimeout(previous)
        if body:
            view.release()
            if have < nr_bytes:  # short: the DUL sees a closed transport
                self._buffer = bytearray()
                del target[have:]
            return target
        if len(buffer) < nr_bytes:  # short: the DUL sees a closed transport
            data, self._buffer = buffer, bytearray()
            return data
        data = buffer[:nr_bytes]
        del buffer[:nr_bytes]  # from the front of a bytearray: no copy of the rest
        return data

    def _refuse(self, pdu_type: int, length: int, cap: int) -> None:
        log.debug(  # the rejection log writes the warning, once per host per minute
            "pdu refused peer=%s type=0x%02X length=%d max=%d action=a-abort",
            self.peer,
            pdu_type,
            length,
            cap,
        )
        if self.rejections is not None:
            self.rejections.note(self.peer, "pdu-too-large")
        sock = self.socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(ABORT_SEND_TIMEOUT_S)
                sock.sendall(ABORT_INVALID_PARAMETER)
        self._close_transport()

    def _close_transport(self) -> None:
        """Stop receiving: what the peer still sends is dropped by the kernel, never buffered here."""
        self._buffer = bytearray()  # nor is what was read ahead given to the DUL
        sock = self.socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class GuardedRequestHandler(RequestHandler):
    """One accepted connection: TLS handshake here (not on the accepting thread), then the
    association with a ``GuardedSocket``; its slot is given back when the association ends.

    Works around ``AssociationServer.get_request`` (handshake on the accepting thread, no
    timeout) and ``RequestHandler.handle`` (returns as soon as the association thread starts, so
    nothing knows when a connection ends): this thread waits for the association.
    """

    server: GuardedServer

    def handle(self) -> None:
        host = str(self.client_address[0])
        try:
            context = self.server.tls_context
            if context is not None:
                tls = handshake(self.request, context, self.server.limits.tls_handshake_deadline_s, host)
                if tls is None:
                    self.server.rejections.note(host, "tls-handshake")
                    return
                self.request = tls
            super().handle()
            self._assoc.join()
        finally:
            self.server.slots.release(host)

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        sock = assoc.dul.socket
        # Same object, our recv: constructing a second AssociationSocket would queue a second
        # "connection open" event (Evt5) into the state machine.
        sock.__class__ = GuardedSocket
        sock.limits = self.server.limits
        sock.peer = str(self.client_address[0])
        sock.rejections = self.server.rejections
        sock.sending = threading.Lock()
        self._assoc = assoc
        return assoc


def handshake(
    sock: socket.socket, context: ssl.SSLContext, deadline_s: float, peer: str
) -> ssl.SSLSocket | None:
    """Server-side TLS handshake within ``deadline_s`` for the whole of it (not per read)."""
    deadline = time.monotonic() + deadline_s
    try:
        tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    except (OSError, ValueError) as exc:
        log.debug("tls handshake failed peer=%s error=%s", peer, exc)
        with contextlib.suppress(OSError):
            sock.close()
        return None
    tls.setblocking(False)
    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                wait = ([tls], [])
            except ssl.SSLWantWriteError:
                wait = ([], [tls])
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"not completed within {deadline_s:g} s")
            select.select(*wait, [], remaining)
    except (OSError, ValueError) as exc:  # ssl.SSLError and TimeoutError are OSErrors
        log.debug("tls handshake failed peer=%s error=%s", peer, exc or type(exc).__name__)  # counted
        with contextlib.suppress(OSError):
            tls.close()
        return None
    tls.setblocking(True)
    return tls


class Contexts(list):  # type: ignore[type-arg]
    """A server's presentation contexts, copied for each association without ``deepcopy``.

    pynetdicom gives each association ``deepcopy(server.contexts)``, so that its negotiation
    cannot change the server's: for the gateway's 177 contexts with every transfer syntax, 42 ms of
    CPU before each A-ASSOCIATE-AC (each query, each modality's study). A context holds immutable
    UIDs, one list of them and flags, so a copy of it with its own list is what the deep copy
    gives (tests/test_transport.py compares them), in about 0.4 ms."""

    def __deepcopy__(self, memo: dict) -> list:
        return [_context_copy(cx) for cx in self]


def _context_copy(cx: Any) -> Any:
    new = copy.copy(cx)
    new._transfer_syntax = list(cx._transfer_syntax)
    return new


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, accepting only on its thread and counting slots at accept.

    ``daemon_threads``: each connection's thread now lives as long as its association, and
    socketserver would otherwise join them all on ``shutdown`` (the Gateway drains and aborts).
    """

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self,
        ae: AE,
        address: tuple[str, int],
        ae_title: str,
        contexts: list,
        ssl_context: ssl.SSLContext | None = None,
        evt_handlers: list | None = None,
        *,
        limits: Limits,
        rejections: RejectionLog,
    ) -> None:
        self.limits = limits
        self.rejections = rejections
        self.slots = ConnectionSlots(limits)
        self.tls_context = ssl_context
        super().__init__(
            ae, address, ae_title, contexts, ssl_context, evt_handlers, request_handler=GuardedRequestHandler
        )
        self.contexts = Contexts(self.contexts)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept only: the TLS handshake happens on the connection's thread (see the handler)."""
        assert self.socket is not None
        return self.socket.accept()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = str(client_address[0])
        refused = self.slots.admit(host)
        if refused is not None:
            self.rejections.note(host, refused)  # socketserver closes the socket, unread
            return False
        return True


def start_server(
    ae: AE,
    address: tuple[str, int],
    *,
    limits: Limits,
    rejections: RejectionLog,
    evt_handlers: list,
    ssl_context: ssl.SSLContext | None = None,
) -> GuardedServer:
    """``AE.start_server(block=False)`` with our server class (its ``server_class`` is fixed)."""
    server = ae.make_server(
        address,
        ssl_context=ssl_context,
        evt_handlers=evt_handlers,
        server_class=GuardedServer,
        limits=limits,
        rejections=rejections,
    )
    timestamp = datetime.now().strftime("%Y%m%d%H%M%S")
    thread = threading.Thread(target=make_target(server.serve_forever), name=f"AcceptorServer@{timestamp}")
    thread.daemon = True
    thread.start()
    ae._servers.append(server)  # as AE.start_server does: AE.shutdown() stops it
    return server  # type: ignore[no-any-return]
