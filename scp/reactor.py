"""Event-driven reactors for pynetdicom: threads that wait for work instead of polling for it.

pynetdicom 3.0 runs two loops per association that poll: the DUL thread
(``DULServiceProvider.run_reactor``) sleeps ``_run_loop_delay`` (1 ms) whenever it finds nothing
to do, and the association thread (``Association._run_reactor``) sleeps 1 ms before every look
at its queues (its TODO: "try and make this event based"). Measured on the gateway, those two
waits are about 1.9 ms of the 2.8 ms pynetdicom spends per received instance, and an idle
association costs two threads waking a thousand times a second each (the forwarder keeps its
associations open between batches).

Here both loops wait on what can wake them:

- the DUL thread waits in ``poll``/``select`` on its socket and on a self-pipe (a
  ``socket.socketpair``) that a put into ``to_provider_queue`` or ``event_queue`` from another
  thread writes to, with a timeout at the ARTIM timer's expiry. A TLS socket can hold decrypted
  bytes the kernel no longer reports, so ``SSLSocket.pending()`` is checked before waiting, and
  so are bytes our own transport buffered (``GuardedSocket.buffered``).
- the association thread waits on a ``threading.Event`` set by a put into the DIMSE message
  queue or ``to_user_queue``, by the DUL thread ending and by ``kill()``, with a timeout at the
  network (idle) timer's expiry.

Both also wake every ``BACKSTOP_S`` whatever happens, so a path that changes state without a
put (none is known) costs that much latency, never a hang. Everything else is pynetdicom's code
unchanged: the loop bodies are copies of 3.0.4's, so timeouts, aborts, release collisions and the
pause (``_reactor_checkpoint``) a requestor's ``send_c_*`` uses behave as before, except that the
DUL loop reads a PDU when its last wait saw the socket readable instead of asking ``select`` every
turn (``_transport_event``), reads PDUs and decodes P-DATA without pynetdicom's copies, ACKing
each PDU's header at once (scp/receive.py), packs a plain C-STORE response without pydicom
(scp/respond.py), and writes a C-STORE request from the sending thread (scp/request.py).
pynetdicom's describing handlers (INFO and DEBUG lines per PDU and message) are unbound while
its logger drops those lines.

How it is installed: ``install(ae)`` patches the methods on pynetdicom's classes once, and
the patched methods take the new path only for associations of an AE that was given to
``install`` (every other AE in the process, a test's SCU for one, keeps pynetdicom's loops). It
must run before the AE makes an association (the DUL binds its thread target when built).
Written against pynetdicom 3.0.4; on any other version ``install`` logs once and leaves
pynetdicom stock. docs/upstream-pynetdicom.md section 5 is the same change proposed upstream.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pynetdicom
from pynetdicom import _handlers, evt
from pynetdicom import association as _association
from pynetdicom import dul as _dul
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ

from . import receive, request, respond

log = logging.getLogger("dicom_chain.scp")

# The versions whose loops the copies below were taken from (dul.py run_reactor, stop_dul,
# kill_dul; association.py _run_reactor, kill); another version may have changed them.
KNOWN_VERSIONS = frozenset({"3.0.4"})
# A waiting thread wakes at least this often even if nothing woke it: a safety net for a state
# change made without a queue put (none is known). 0.5 s costs 2 wake-ups a second per thread,
# against pynetdicom's 1000; a missed wake-up would show as this much latency, not a hang.
BACKSTOP_S = 0.5
# A timer is due when its remaining time is below zero (pynetdicom's Timer.expired); waking this
# much after the computed expiry makes sure it has passed.
TIMER_SLACK_S = 0.001
_ATTR = "_event_reactor"  # set on an AE given to install()
# False: install() leaves every AE stock (benchmarks/bench_reactor.py runs the gateway both ways).
ENABLED = True

_stock: dict[str, Callable[..., Any]] = {}
_install_lock = threading.Lock()
_refused = False


def install(ae: pynetdicom.AE) -> bool:
    """Give ``ae``'s future associations the event-driven reactors; False: pynetdicom stays stock.

    Call before ``ae`` associates or serves; safe to call for many AEs and many times.
    """
    global _refused
    if not ENABLED:
        return False
    with _install_lock:
        if pynetdicom.__version__ not in KNOWN_VERSIONS:
            if not _refused:
                _refused = True
                log.warning(
                    "event reactor not installed: written for pynetdicom %s, found %s; "
                    "pynetdicom's polling loops stay",
                    ",".join(sorted(KNOWN_VERSIONS)),
                    pynetdicom.__version__,
                )
            return False
        if not _stock:
            _patch()
    setattr(ae, _ATTR, True)
    return True


def installed(ae: pynetdicom.AE) -> bool:
    """Whether ``install(ae)`` gave ``ae`` the reactors (False: pynetdicom runs it stock)."""
    return getattr(ae, _ATTR, False) is True


def active(assoc: Association) -> bool:
    """Whether ``assoc`` runs the event-driven reactors (decided once, when its DUL starts)."""
    return getattr(assoc, "_wake", None) is not None


def _patch() -> None:
    for cls, name, ours in (
        (DULServiceProvider, "run_reactor", _dul_run_reactor),
        (DULServiceProvider, "kill_dul", _dul_kill),
        (DULServiceProvider, "stop_dul", _dul_stop),
        (DULServiceProvider, "_read_pdu_data", _dul_read_pdu_data),
        (DIMSEMessage, "decode_msg", _decode_msg),
        (DIMSEServiceProvider, "send_msg", _send_msg),
        (Association, "_run_reactor", _assoc_run_reactor),
        (Association, "kill", _assoc_kill),
    ):
        _stock[f"{cls.__name__}.{name}"] = getattr(cls, name)
        ours.__doc__ = getattr(cls, name).__doc__
        setattr(cls, name, ours)


class _Waker:
    """A self-pipe: ``set()`` from any thread makes the owner's ``poll`` return.

    A set from the owner's own thread is skipped (it is awake, and looks at its queues before it
    waits); a set while one is already pending writes nothing, so a burst of puts costs one byte.
    """

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)
        self.owner = threading.get_ident()
        self._pending = False

    def set(self) -> None:
        if self._pending or threading.get_ident() == self.owner:
            return
        self._pending = True
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed (ended)
            self._writer.send(b"\0")

    def clear(self) -> None:
        """Forget wake-ups so far; call before looking at the queues, then wait. No system call:
        a byte already written stays, the next wait returns at once and ``drain`` reads it."""
        self._pending = False

    def drain(self) -> None:
        """Read what ``set`` wrote: once a wait saw ``reader`` readable (a byte per pending set,
        so one read takes them all)."""
        with contextlib.suppress(OSError):
            self.reader.recv(4096)

    def close(self) -> None:
        self.reader.close()
        self._writer.close()


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A ``queue.Queue`` whose puts call ``_on_put``; an existing queue becomes one in place
    (``__class__``), so what is already in it and every reference to it stay."""

    _on_put: Callable[[], None]

    def _put(self, item: Any) -> None:
        super()._put(item)
        self._on_put()


def _waking(q: queue.Queue, on_put: Callable[[], None]) -> None:  # type: ignore[type-arg]
    q._on_put = on_put  # type: ignore[attr-defined]
    q.__class__ = _WakingQueue


def _due_in(timer: Any) -> float:
    """Seconds until a pynetdicom ``Timer`` expires; BACKSTOP_S if it is not running."""
    if timer.timeout is None or timer._start_time is None or timer._end_time is not None:
        return BACKSTOP_S
    return min(BACKSTOP_S, max(0.0, timer.remaining) + TIMER_SLACK_S)


def _wait_for_work(dul: DULServiceProvider, waker: _Waker) -> None:
    """Block the DUL thread until its socket is readable, a queue gets a put, or a timer is due."""
    waker.clear()
    if dul._kill_thread or dul.to_provider_queue.qsize() or dul.event_queue.qsize():
        return
    transport = dul.socket
    raw = transport.socket if transport is not None and transport._is_connected else None
    fd = raw.fileno() if raw is not None else -1  # -1 once closed by another thread (an abort)
    if fd >= 0 and isinstance(raw, ssl.SSLSocket) and raw.pending():
        return  # TLS has decrypted bytes the kernel no longer reports (pynetdicom #528)
    if getattr(transport, "buffered", 0):
        return  # read ahead by our transport (GuardedSocket)
    timeout = _due_in(dul.artim_timer)
    try:
        if hasattr(select, "poll"):  # no FD_SETSIZE limit; a poll object costs no syscall
            poller = select.poll()
            poller.register(waker.reader, select.POLLIN)
            if fd >= 0:
                poller.register(fd, select.POLLIN)
            ready = [found for found, _ in poller.poll(timeout * 1000)]
            woken, dul._readable = waker.reader.fileno() in ready, fd in ready  # type: ignore[attr-defined]
        else:
            ready = select.select([waker.reader] + ([raw] if fd >= 0 else []), [], [], timeout)[0]
            woken, dul._readable = waker.reader in ready, raw in ready  # type: ignore[attr-defined]
        if woken:
            waker.drain()
    except (OSError, ValueError):  # the socket closed under us: the loop finds out what happened
        pass


def _dul_run_reactor(self: DULServiceProvider) -> None:
    if getattr(self.assoc.ae, _ATTR, False) is not True:
        return _stock["DULServiceProvider.run_reactor"](self)  # type: ignore[no-any-return]
    # Set up before _dul_ready: the association thread waits for it before using either.
    waker = _Waker()
    self._waker = waker  # type: ignore[attr-defined]
    assoc = self.assoc
    wake = threading.Event()
    assoc._wake = wake  # type: ignore[attr-defined]
    _waking(self.to_provider_queue, waker.set)
    _waking(self.event_queue, waker.set)
    _waking(self.to_user_queue, wake.set)
    _waking(assoc.dimse.msg_queue, wake.set)
    _unbind_silent_loggers(assoc)
    try:
        _dul_loop(self, waker)
    finally:
        wake.set()  # the association thread checks dul.is_alive(); it may be waiting
        waker.close()


def _transport_event(dul: DULServiceProvider) -> bool:
    """pynetdicom's ``_is_transport_event`` without its ``select`` per loop turn (several per
    PDU): a PDU is read when the last wait saw the socket readable, or bytes are already in hand
    (our transport's read-ahead, TLS's decrypted bytes). Sta13 (closing) keeps pynetdicom's own."""
    if dul.state_machine.current_state == "Sta13":
        dul._readable = False  # type: ignore[attr-defined]
        return dul._is_transport_event()
    transport = dul.socket
    raw = transport.socket if transport is not None and transport._is_connected else None
    if raw is None:
        return False
    if (
        getattr(dul, "_readable", False)
        or getattr(transport, "buffered", 0)
        or (isinstance(raw, ssl.SSLSocket) and raw.pending())
    ):
        dul._readable = False  # type: ignore[attr-defined]
        dul._read_pdu_data()
        return True
    return False


# pynetdicom's default notification handlers (Association._bind_defaults): they describe every
# PDU and DIMSE message in lines logged at INFO and DEBUG only, built whatever the level.
STANDARD_LOGGERS = (
    (evt.EVT_DIMSE_RECV, _handlers.standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, _handlers.standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, _handlers.standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, _handlers.standard_pdu_sent_handler),
)


def _unbind_silent_loggers(assoc: Association) -> None:
    """Unbind the standard handlers when their logger would drop all they write (the gateway
    keeps pynetdicom at WARNING, scp/logs.py): per C-STORE they cost the DUL thread a C-STORE-RQ's
    and each PDU's description, the association thread the response's. Decided once per
    association, at its start; at INFO or DEBUG they stay and log as before."""
    if _handlers.LOGGER.isEnabledFor(logging.INFO):
        return
    for event, handler in STANDARD_LOGGERS:
        assoc.unbind(event, handler)


def _dul_loop(self: DULServiceProvider, waker: _Waker) -> None:
    """pynetdicom 3.0.4's ``run_reactor`` with ``_wait_for_work`` where it sleeps, and
    ``_transport_event`` for its ``_is_transport_event``."""
    self._idle_timer.start()
    while True:
        if not self.assoc._dul_ready.is_set():
            self.assoc._dul_ready.set()
        if self._kill_thread:
            break
        if self.artim_timer.expired:
            self.event_queue.put("Evt18")
        try:
            if self._process_recv_primitive():
                pass
            elif _transport_event(self):
                self._idle_timer.restart()
        except Exception as exc:
            _dul.LOGGER.error("Exception in DUL.run(), aborting association")
            _dul.LOGGER.exception(exc)
            abort_pdu = A_ABORT_RQ()
            abort_pdu.source = 0x02
            abort_pdu.reason_diagnostic = 0x00
            assert self.socket is not None
            self.socket.send(abort_pdu.encode())
            self.assoc.is_aborted = True
            self.assoc.is_established = False
            self.assoc._kill = True
            self._kill_thread = True
            return
        try:
            event = self.event_queue.get(block=False)
        except queue.Empty:
            _wait_for_work(self, waker)
            continue
        self.state_machine.do_action(event)


def _dul_read_pdu_data(self: DULServiceProvider) -> None:
    if getattr(self.assoc.ae, _ATTR, False) is not True:
        return _stock["DULServiceProvider._read_pdu_data"](self)  # type: ignore[no-any-return]
    receive.read_pdu_data(self)


def _decode_msg(self: DIMSEMessage, primitive: Any, assoc: Association | None = None) -> bool:
    if assoc is None or getattr(assoc.ae, _ATTR, False) is not True:
        return _stock["DIMSEMessage.decode_msg"](self, primitive, assoc)  # type: ignore[no-any-return]
    return receive.decode_msg(self, primitive, assoc)


def _send_msg(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
    if getattr(self.assoc.ae, _ATTR, False) is not True or not (
        respond.send_store_response(self, primitive, context_id)
        or request.send_store_request(self, primitive, context_id)
    ):
        _stock["DIMSEServiceProvider.send_msg"](self, primitive, context_id)


@dataclass(frozen=True)
class Idle:
    """Work an AE's association threads do off the path a peer waits on (``on_idle``)."""

    served: Callable[[Any], None]  # after a request (given) was answered, before the next is read
    ended: Callable[[], None]  # when the association's thread is done


_IDLE_ATTR = "_reactor_idle"


def on_idle(ae: pynetdicom.AE, idle: Idle) -> None:
    """Have ``ae``'s association threads (those with the reactor) run ``idle.served`` with each
    request after answering it, and ``idle.ended`` at their end, on their own thread. What they
    raise is logged."""
    setattr(ae, _IDLE_ATTR, idle)


def _quietly(work: Callable[..., None], *args: Any) -> None:
    try:
        work(*args)
    except Exception:  # never the association's failure: the work is an optimisation
        log.exception("work between requests failed")


def _wake_dul(dul: DULServiceProvider) -> None:
    waker = getattr(dul, "_waker", None)
    if waker is not None:
        waker.set()


def _dul_kill(self: DULServiceProvider) -> None:
    self._kill_thread = True
    _wake_dul(self)


def _dul_stop(self: DULServiceProvider) -> bool:
    if getattr(self, "_waker", None) is None:
        return _stock["DULServiceProvider.stop_dul"](self)  # type: ignore[no-any-return]
    if self.state_machine.current_state == "Sta1":
        self._kill_thread = True
        _wake_dul(self)
        if self.is_alive() and threading.current_thread() is not self:
            self.join()
        return True
    return False


def _assoc_kill(self: Association) -> None:
    wake: threading.Event | None = getattr(self, "_wake", None)
    if wake is None:
        return _stock["Association.kill"](self)  # type: ignore[no-any-return]
    self._reactor_checkpoint.set()
    self._kill = True
    self.is_established = False
    self._is_paused = True
    wake.set()
    while self.dul.is_alive() and not self.dul.stop_dul():
        time.sleep(0.01)  # pynetdicom's: waits for the state machine to reach Sta1, once per association


def _assoc_run_reactor(self: Association) -> None:
    """pynetdicom 3.0.4's ``_run_reactor``, waiting on ``_wake`` where it sleeps 1 ms.

    The thread counts as paused while it waits (it touches nothing then), so a ``send_c_*``
    that pauses the reactor goes ahead at once instead of spinning until the next loop.
    """
    wake: threading.Event | None = getattr(self, "_wake", None)
    if wake is None:
        return _stock["Association._run_reactor"](self)  # type: ignore[no-any-return]
    idle: Idle | None = getattr(self.ae, _IDLE_ATTR, None)
    try:
        _assoc_loop(self, wake, idle)
    finally:
        if idle is not None:
            _quietly(idle.ended)


def _resume(assoc: Association) -> None:
    """Wait out a pause, and count as running only once the pause is still over after saying so.

    A requestor's ``send_c_*`` clears ``_reactor_checkpoint``, waits for ``_is_paused``, sends and
    takes the response from the DIMSE queue itself. pynetdicom's reactor sets ``_is_paused =
    False`` when its wait returns, but the wait returns for a ``set()`` that another pause may
    already have cleared again: the next ``send_c_*`` then saw the stale ``True``, sent, and the
    reactor, running at last, took that request's response off the queue as if it were a request.
    The sender waited out its DIMSE timeout (measured: 1 forward in ~20 runs of 400 into Orthanc
    stalled 10 s, once each C-STORE went out in one write, with the forward process at nice 10).
    Here the flag goes False first and the checkpoint is looked at after: a pause that began in
    between finds either the flag False (and waits for the loop's next True) or the reactor back
    in its wait."""
    while True:
        assoc._reactor_checkpoint.wait()
        assoc._is_paused = False
        if assoc._reactor_checkpoint.is_set():
            return
        assoc._is_paused = True


def _assoc_loop(self: Association, wake: threading.Event, idle: Idle | None) -> None:
    plog = _association.LOGGER
    self._is_paused = False
    while not self._kill:
        self._is_paused = True
        wake.wait(_due_in(self.dul._idle_timer))
        wake.clear()  # before looking: a put from now on wakes the next wait
        _resume(self)

        context_id, msg = self.dimse.get_msg(block=False)
        if msg:
            self._serve_request(msg, context_id)  # type: ignore[arg-type]
            if self.dimse.msg_queue.qsize():
                wake.set()  # more already queued: one is served per round, as pynetdicom does
            elif idle is not None:
                _quietly(idle.served, msg)  # the answer is on its way, the next request not

        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            plog.info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return

        if self.acse.is_aborted():
            log_msg = "Association Aborted"
            if self.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            plog.info(log_msg)
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return

        if not self.dul.is_alive():
            self.kill()
            return

        if self.dul.idle_timer_expired():
            plog.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return
