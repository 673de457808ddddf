"""Forwarding to the upstream PACS: workers that drain the outbox over reused associations.

Each destination has its own workers and its own queue, so a PACS that is down holds back only
itself, and a modality's Success never waits for any PACS. A worker leases one study's batch,
sends it over an association it keeps open while there is work, and settles every instance.

Every failure is one log line and one stored reason that starts with its cause (outbox.ForwardCause:
dns, refused, timeout, rejected, ...), and the batch goes back to the queue at once, with back-off.
pynetdicom keeps the cause of a failed connection to itself (AssociationSocket.connect logs and
swallows the OSError; AddressInformation raises gaierror from ``associate``), so the worker resolves
the name first, and, only when no TCP connection was made, connects once more to learn why.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ABORT_RQ

from dicom_chain.breaker import DOWN_CAUSES, Breaker, Permit
from dicom_chain.config import Settings
from dicom_chain.errors import DicomChainError
from dicom_chain.node import Node
from dicom_chain.outbox import Destination, ForwardCause, OutboxItem, Settled, failure
from dicom_chain.vocab import ForwardVerdict

from .contexts import Sending, contexts_for, sending
from .handlers import no_delay, quick_ack
from .logs import configure_logging
from .reactor import install as install_reactor
from .statuses import forward_verdict, peer_status_meaning

log = logging.getLogger("dicom_chain.forward")


BATCH_SIZE = 50  # instances leased at once: one study's worth for most series, small enough to share
# What a probe of a destination that is down leases (dicom_chain/breaker.py): the association is
# what is being probed, one instance shows the PACS takes it, and only the instances tried get an
# attempt recorded. On success the worker goes on at once with full batches on that association.
PROBE_BATCH = 1
WORKERS_PER_DESTINATION = 4  # parallel associations: a PACS with Nagle on answers ~45 ms late each
# Keep an idle association this long for the next batch: a modality's next series, or the next
# study of a worklist, comes within seconds, and a new association costs a TCP and A-ASSOCIATE
# round trip plus pynetdicom's set-up on both sides. Shorter than the idle timeouts PACS apply
# (Orthanc: 30 s), so the peer rarely closes it first (and when it does, see DestinationWorker.forward).
IDLE_RELEASE_S = 5.0
POLL_INTERVAL_S = 0.25  # how often an idle worker looks for due work: a cheap indexed query
# While a modality is sending, only this many workers per destination forward: every worker's
# CPU (pynetdicom's encoding and polling, 2-3.6 ms per instance) and its settles (the write lock
# that every receipt needs) come out of the receiving side's share of the machine. Two keep a
# PACS with Nagle on busy; the rest join once the modality is done, to drain the backlog.
WORKERS_WHILE_RECEIVING = 2
# "A modality is sending": an instance was queued within this long. storescu's gap between two
# instances is milliseconds, a modality's between series well under a second.
RECEIVING_WINDOW_S = 2.0
RECEIVING_CHECK_S = 0.5  # how often the forwarder looks at the newest queued row (one index step)
# While a modality is sending, a worker whose last batch was not full waits this long before its
# next lease, so that a batch holds what came in meanwhile. Leases and settles are write
# transactions that each receipt's commit queues behind, and a lease costs the forwarder about
# what sending an instance does: a worker that kept up with a modality leased 1-6 instances at a
# time (measured: 117 batches for a 400-instance study). 0.1 s gathers ~15 at 150 instances/s
# and delays a PACS's copy by no more than that.
GATHER_S = 0.1
# How soon the rows leased by a forwarder that died (kill -9) on this host are taken over by the
# living ones (several serve processes share one outbox): one query over the pending rows, run
# by an idle worker at most this often. Leases of other hosts still wait for outbox.LEASE_S.
LEASE_SWEEP_S = 5.0
OPEN_RETRY_S = 2.0  # a forward process that starts while the database is away asks again this often
PARENT_CHECK_S = 1.0  # a forwarder process started by `serve` exits within this after serve dies
FORWARD_ACSE_TIMEOUT_S = 30  # association set-up with the PACS
# The TCP connect: a PACS on the LAN answers in milliseconds, and without a bound an unanswered SYN
# waits for the kernel's retries (Linux: ~2 min) while the batch stays leased.
FORWARD_CONNECT_TIMEOUT_S = 10
# pynetdicom's own lines about a failed association (2-4 ERROR lines: "unable to connect", "TCP
# Initialisation Error", "Association Rejected", ...) repeat what the worker's one line says with
# its cause; the forward process keeps only pynetdicom's critical ones.
FORWARD_PYNETDICOM_LEVEL = logging.CRITICAL
FORWARD_DIMSE_TIMEOUT_S = 120  # one C-STORE response: a large instance into a slow archive
# ... but a small one is answered in milliseconds, and a PACS whose parser chokes on an instance
# may answer nothing and wait for its own idle timeout (Orthanc 1.10: 30 s, then it closes) while
# the rest of the study waits behind. So the wait for a response is FORWARD_RESPONSE_S plus the
# time to store the file at FORWARD_STORE_RATE, capped at FORWARD_DIMSE_TIMEOUT_S.
FORWARD_RESPONSE_S = 10.0  # a loaded PACS answers a small C-STORE within a second or two
FORWARD_STORE_RATE = 2_000_000  # bytes/s a slow archive still writes and indexes
FORWARD_NETWORK_TIMEOUT_S = 60


@dataclass(frozen=True)
class NoAssociation:
    """Why there is no association with the PACS: its cause, and what it means for the batch."""

    cause: ForwardCause
    detail: str

    @property
    def reason(self) -> str:
        return failure(self.cause, self.detail)

    @property
    def verdict(self) -> ForwardVerdict:
        # Refused contexts are the PACS saying no to these SOP classes (they count towards the
        # dead letter); anything else (unreachable, rejected) is trouble that a person fixes.
        return ForwardVerdict.REFUSED if self.cause is ForwardCause.CONTEXTS else ForwardVerdict.RETRY


def connect_failure(host: str, port: int) -> NoAssociation:
    """Why a TCP connection to ``host:port`` fails, learnt by trying it (pynetdicom's attempt keeps it)."""
    where = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=FORWARD_CONNECT_TIMEOUT_S):
            pass
    except ConnectionRefusedError:
        return NoAssociation(ForwardCause.REFUSED, f"nothing listens on {where} (connection refused)")
    except TimeoutError:
        detail = f"{where} did not answer within {FORWARD_CONNECT_TIMEOUT_S} s"
        return NoAssociation(ForwardCause.TIMEOUT, detail)
    except socket.gaierror as exc:
        return NoAssociation(ForwardCause.DNS, f"{host} does not resolve ({exc.strerror})")
    except OSError as exc:
        return NoAssociation(ForwardCause.UNREACHABLE, f"{where}: {exc.strerror or exc}")
    detail = f"connecting to {where} failed, then worked when tried again"
    return NoAssociation(ForwardCause.UNREACHABLE, detail)


def why_not(assoc: Association, opened: bool, aborts: list[A_ABORT_RQ], waited: float) -> NoAssociation:
    """Why ``assoc`` (asked for, not established) is not: read from what pynetdicom kept of it."""
    host, port = assoc.acceptor.address, assoc.acceptor.port
    if assoc.is_rejected and assoc.acceptor.primitive is not None:
        rj = assoc.acceptor.primitive  # A-ASSOCIATE-RJ, PS3.8 9.3.4 (Table 9-21)
        return NoAssociation(
            ForwardCause.REJECTED,
            f"A-ASSOCIATE-RJ {rj.result_str.lower()}, by the {rj.source_str}: {rj.reason_str}",
        )
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        proposed = len(assoc.rejected_contexts)
        return NoAssociation(ForwardCause.CONTEXTS, f"the PACS accepted none of the {proposed} contexts")
    if not opened:
        return connect_failure(host, port)
    if aborts:
        pdu = aborts[0]  # A-ABORT, PS3.8 9.3.8 (Table 9-26)
        return NoAssociation(ForwardCause.ABORTED, f"A-ABORT by the {pdu.source_str}: {pdu.reason_str}")
    if waited >= FORWARD_ACSE_TIMEOUT_S:
        return NoAssociation(
            ForwardCause.TIMEOUT, f"no answer to the association request within {FORWARD_ACSE_TIMEOUT_S} s"
        )
    return NoAssociation(ForwardCause.ABORTED, "the PACS closed the connection before answering")


class DestinationWorker(threading.Thread):
    def __init__(self, forwarder: Forwarder, destination: Destination, number: int) -> None:
        super().__init__(name=f"forward-{destination.ae_title}-{number}", daemon=True)
        self.forwarder = forwarder
        self.destination = destination
        self.number = number  # per destination: those from WORKERS_WHILE_RECEIVING up wait while receiving
        self.key = str(destination)
        self.breaker = forwarder.breakers[self.key]
        self.assoc: Association | None = None
        self.assoc_contexts: set[tuple[str, str]] = set()
        self.last_used = 0.0
        self.gathering = False  # the last batch was not full and a modality is sending

    def run(self) -> None:
        stop = self.forwarder.stop_event
        while not stop.is_set():
            try:
                worked = self.step()
            except Exception:  # a worker must survive anything and keep the queue moving
                log.exception("forward to %s: unexpected error", self.key)
                self.close()
                worked = False
            if worked and self.gathering:
                stop.wait(GATHER_S)
            elif not worked:
                self.forwarder.sweep()
                if self.assoc is not None and time.monotonic() - self.last_used > IDLE_RELEASE_S:
                    self.close()
                self.forwarder.wake.wait(POLL_INTERVAL_S)
        self.close()

    def step(self) -> bool:
        permit = self.breaker.permit()
        if permit is Permit.NONE:  # the destination is down: nothing is leased until the next probe
            return False
        try:
            return self.lease_and_forward(permit)
        finally:
            if permit is Permit.PROBE:
                self.breaker.abandon()  # leased nothing, or stopped: the next worker may probe

    def lease_and_forward(self, permit: Permit) -> bool:
        if permit is Permit.ALL and self.number >= WORKERS_WHILE_RECEIVING and self.forwarder.receiving():
            return False
        limit = PROBE_BATCH if permit is Permit.PROBE else BATCH_SIZE
        items = self.forwarder.node.outbox.claim(self.key, limit)
        if not items:
            return False
        if self.forwarder.stop_event.is_set():
            self.forwarder.node.outbox.release(items)
            return False
        self.gathering = len(items) < limit and self.forwarder.receiving()
        try:
            return self.forward(items)
        except DicomChainError as exc:  # the ledger is away: nothing can be settled, the lease expires
            log.warning("forward to %s: cannot record the batch: %s", self.key, exc)
            self.close()
            return False
        except Exception as exc:  # a bug: its traceback, and the batch back in the queue at once
            log.exception("forward to %s: unexpected error", self.key)
            self.close()
            reason = failure(ForwardCause.INTERNAL, f"{type(exc).__name__}: {exc}")
            self.forwarder.node.outbox.settle([Settled(i, None, reason, ForwardVerdict.RETRY) for i in items])
            return False

    def forward(self, items: list[OutboxItem]) -> bool:
        """Send one leased batch and settle every item of it."""
        reusing = self.assoc is not None and self.assoc.is_established
        assoc = self.associate(items)
        reusing = reusing and assoc is self.assoc
        if not isinstance(assoc, Association):
            settled = [Settled(item, None, assoc.reason, assoc.verdict) for item in items]
            self.forwarder.node.outbox.settle(settled)
            if assoc.cause in DOWN_CAUSES:
                self.unreachable(assoc)
            else:  # the PACS answered (it refused the contexts): it is up
                self.reached()
                log.warning("forward to %s: %s; %d instance(s) wait", self.key, assoc.reason, len(items))
            return False
        self.reached()
        results = []
        for number, item in enumerate(items):
            if self.forwarder.stop_event.is_set():
                self.forwarder.node.outbox.release(items[number:])
                break
            result = self.send(assoc, item)
            if not assoc.is_established and number == 0 and reusing and result.status is None:
                # The PACS closed the idle association as this batch began (its own idle timeout
                # crossing ours): nothing is wrong with the instance, so the batch goes back, due
                # at once, and the next step opens a new association.
                log.info("forward to %s: the PACS closed the idle association; opening another", self.key)
                self.close()
                self.forwarder.node.outbox.release(items)
                return True
            if not assoc.is_established:
                # The PACS dropped the association while receiving this instance (Orthanc aborts
                # on a data set its parser refuses): this one is a suspect and counts as a
                # refusal; the rest were never sent, so they go back untouched, due at once on a
                # new association, instead of backing off behind it.
                if result.verdict is ForwardVerdict.RETRY:
                    detail = f"association lost while sending ({result.reason})"
                    reason = failure(ForwardCause.ABORTED, detail)
                    result = Settled(item, None, reason, ForwardVerdict.REFUSED)
                results.append(result)
                self.forwarder.node.outbox.release(items[number + 1 :])
                self.close()
                break
            results.append(result)
        self.forwarder.node.outbox.settle(results)
        failed: dict[str, int] = {}
        for r in results:
            if r.verdict is not ForwardVerdict.DONE:
                failed[r.reason] = failed.get(r.reason, 0) + 1
        for reason, count in failed.items():  # one line per cause, not one per instance
            log.warning("forward to %s: %d instance(s) not stored: %s", self.key, count, reason)
        done = len(results) - sum(failed.values())
        log.info(
            "forward to %s: %d/%d of study %s stored",
            self.key,
            done,
            len(results),
            items[0].study_instance_uid,
        )
        self.last_used = time.monotonic()
        return True

    def unreachable(self, why: NoAssociation) -> None:
        """The destination cannot be reached: the breaker opens (or stays open, for longer)."""
        went_down = self.breaker.failed()
        wait = self.breaker.next_probe_in() or 0.0
        if not went_down:
            log.warning("forward to %s: still down: %s; next probe in %.1f s", self.key, why.reason, wait)
            return
        log.warning("forward to %s: down: %s; its queue waits, probe in %.1f s", self.key, why.reason, wait)
        try:
            self.forwarder.node.outbox.destination_down(self.key, why.reason, wait)
        except DicomChainError as exc:  # the ledger is away: the log line above is what remains
            log.warning("forward to %s: cannot record that it is down: %s", self.key, exc)

    def reached(self) -> None:
        """The destination answered: the breaker closes, and the other workers wake to lease."""
        since = self.breaker.down_since
        if not self.breaker.succeeded():
            return
        down_s = None if since is None else time.monotonic() - since
        log.info("forward to %s: reachable again; forwarding what waits", self.key)
        self.forwarder.notify()
        try:
            self.forwarder.node.outbox.destination_up(self.key, down_s)
        except DicomChainError as exc:
            log.warning("forward to %s: cannot record that it is back: %s", self.key, exc)

    def associate(self, items: list[OutboxItem]) -> Association | NoAssociation:
        """An association for ``items`` (the open one when it covers them), or why there is none."""
        needed = {(i.sop_class_uid, i.transfer_syntax) for i in items}
        if self.assoc is not None and self.assoc.is_established and needed <= self.assoc_contexts:
            return self.assoc
        self.close()
        host, port = self.destination.host, self.destination.port
        try:  # pynetdicom would raise gaierror from associate(), after building the association
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            return NoAssociation(ForwardCause.DNS, f"{host} does not resolve ({exc.strerror})")
        ae = AE(ae_title=self.forwarder.ae_title)
        # An idle kept-open association then costs no CPU, and each C-STORE is one write (reactor.py)
        stock = not install_reactor(ae)
        ae.connection_timeout = FORWARD_CONNECT_TIMEOUT_S
        ae.acse_timeout = FORWARD_ACSE_TIMEOUT_S
        ae.dimse_timeout = FORWARD_DIMSE_TIMEOUT_S
        ae.network_timeout = FORWARD_NETWORK_TIMEOUT_S
        opened = threading.Event()
        aborts: list[A_ABORT_RQ] = []

        def on_pdu(event: evt.Event) -> None:
            if isinstance(event.pdu, A_ABORT_RQ):
                aborts.append(event.pdu)

        started = time.monotonic()
        try:
            assoc = ae.associate(
                host,
                port,
                contexts=contexts_for(items),
                ae_title=self.destination.ae_title,
                max_pdu=self.forwarder.max_pdu,
                evt_handlers=[
                    (evt.EVT_CONN_OPEN, lambda _: opened.set()),
                    (evt.EVT_PDU_RECV, on_pdu),
                    # A PACS on DCMTK (Orthanc, as Debian ships it) keeps Nagle on: the second
                    # small segment of its C-STORE-RSP waits for our ACK of the first, which the
                    # kernel delays ~40 ms unless told not to (receive.ack_at_once; the reactor
                    # does it as it reads each PDU).
                    *([(evt.EVT_PDU_SENT, quick_ack), (evt.EVT_PDU_RECV, quick_ack)] if stock else []),
                ],
            )
        except socket.gaierror as exc:  # the name stopped resolving since the look-up above
            return NoAssociation(ForwardCause.DNS, f"{host} does not resolve ({exc.strerror})")
        if not assoc.is_established:
            return why_not(assoc, opened.is_set(), aborts, time.monotonic() - started)
        no_delay(assoc)
        self.assoc = assoc
        self.assoc_contexts = {
            (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts
        }
        return assoc

    def send(self, assoc: Association, item: OutboxItem) -> Settled:
        path = self.forwarder.node.storage.path(item.path)
        accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
        how = sending(accepted, item.sop_class_uid, item.transfer_syntax)
        if how is None:  # decided before sending, as pynetdicom would: nothing here is worth a retry
            detail = f"{self.key} accepted no context for {item.sop_class_uid} in {item.transfer_syntax}"
            return Settled(item, None, failure(ForwardCause.CONTEXTS, detail), ForwardVerdict.REFUSED)
        started = time.monotonic()
        try:
            size = os.path.getsize(path)
            assoc.dimse_timeout = min(FORWARD_DIMSE_TIMEOUT_S, FORWARD_RESPONSE_S + size / FORWARD_STORE_RATE)
            if how is Sending.AS_STORED:
                response = assoc.send_c_store(Path(path))  # the file as stored, no decode
            else:
                response = assoc.send_c_store(pydicom.dcmread(path))  # re-encoded by pynetdicom
        except FileNotFoundError:
            reason = failure(ForwardCause.UNREADABLE, f"stored file missing: {path}")
            return Settled(item, None, reason, ForwardVerdict.REFUSED)
        except (ValueError, RuntimeError) as exc:
            if assoc.is_established:  # pynetdicom could not encode it ("Failed to encode ..."): ever
                reason = failure(ForwardCause.UNENCODABLE, f"cannot be sent: {exc}")
                return Settled(item, None, reason, ForwardVerdict.REFUSED)
            reason = failure(ForwardCause.ABORTED, str(exc))  # the association broke under it
            return Settled(item, None, reason, ForwardVerdict.RETRY)
        except OSError as exc:  # a read error of the store (a network filesystem away): may pass
            reason = failure(ForwardCause.UNREADABLE, f"cannot read {path}: {exc.strerror or exc}")
            return Settled(item, None, reason, ForwardVerdict.RETRY)
        status = int(getattr(response, "Status", -1)) if response is not None and len(response) else None
        verdict, reason = forward_verdict(status)
        if verdict is ForwardVerdict.DONE:
            return Settled(item, status, reason, verdict)
        if status is None:  # pynetdicom aborts the association itself when its DIMSE timeout passes
            limit = float(assoc.dimse_timeout or 0)
            if time.monotonic() - started >= limit:
                detail = f"no C-STORE response within {limit:.0f} s"
                return Settled(item, None, failure(ForwardCause.TIMEOUT, detail), verdict)
            detail = "the association was aborted while sending"
            return Settled(item, None, failure(ForwardCause.ABORTED, detail), verdict)
        detail = f"{reason} ({peer_status_meaning(status)})"
        return Settled(item, status, failure(ForwardCause.STATUS, detail), verdict)

    def close(self) -> None:
        if self.assoc is not None:
            try:
                if self.assoc.is_established:
                    self.assoc.release()
            except Exception:
                self.assoc.abort()
        self.assoc = None
        self.assoc_contexts = set()


class Forwarder:
    """All destination workers of one gateway process."""

    def __init__(
        self,
        node: Node,
        *,
        ae_title: str,
        workers_per_destination: int = WORKERS_PER_DESTINATION,
        max_pdu: int = 0,
    ) -> None:
        self.node = node
        self.ae_title = ae_title
        self.max_pdu = max_pdu  # 0: as large as the PACS accepts
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self._sweep_lock = threading.Lock()
        self._next_sweep = 0.0
        self._receiving_lock = threading.Lock()
        self._receiving = (0.0, False)  # (when looked, whether a modality was sending)
        # One breaker per destination, shared by its workers (dicom_chain/breaker.py).
        self.breakers = {str(Destination.parse(d)): Breaker() for d in node.destinations}
        self.workers = [
            DestinationWorker(self, Destination.parse(d), n)
            for d in node.destinations
            for n in range(workers_per_destination)
        ]

    def start(self) -> None:
        self.sweep()
        for destination, breaker in self.breakers.items():  # an outage recorded before a restart
            try:
                breaker.recorded = self.node.outbox.last_outage(destination) is not None
            except DicomChainError as exc:  # its end then goes unrecorded; forwarding does not wait
                log.warning("forward to %s: could not read its last outage: %s", destination, exc)
        for worker in self.workers:
            worker.start()

    def sweep(self) -> None:
        """Take back the rows leased by forwarders that died, at most every LEASE_SWEEP_S."""
        now = time.monotonic()
        with self._sweep_lock:
            if now < self._next_sweep:
                return
            self._next_sweep = now + LEASE_SWEEP_S
        try:
            freed = self.node.outbox.free_dead_leases()
        except DicomChainError as exc:  # the database is away: the next sweep tries again
            log.warning("forward: could not look for dead leases: %s", exc)
            return
        if freed:
            log.info("forward: took back %d instance(s) leased by a process that died", freed)

    def receiving(self) -> bool:
        """Whether a modality is sending now (an instance queued within RECEIVING_WINDOW_S),
        looked up at most every RECEIVING_CHECK_S for all workers of this process."""
        now = time.monotonic()
        with self._receiving_lock:
            looked, answer = self._receiving
            if now - looked < RECEIVING_CHECK_S:
                return answer
            try:
                last = self.node.outbox.last_queued_at()
            except DicomChainError:  # the database is away: no worker can do anything either
                last = None
            answer = last is not None and time.time() - last < RECEIVING_WINDOW_S
            self._receiving = (now, answer)
            return answer

    def notify(self) -> None:
        """New work: wake idle workers now instead of at their next poll."""
        self.wake.set()
        self.wake.clear()

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        self.wake.set()
        for worker in self.workers:
            if worker.ident is not None:  # started (serve forwards from a child process instead)
                worker.join(timeout)


def _open_when_reachable(settings: Settings, stop: threading.Event, parent_pid: int | None) -> Node | None:
    """The node, once its ledger answers: a database that is away when the forward process starts
    (PostgreSQL restarting while ``serve`` starts it) is waited for, as the workers wait for it
    later, instead of leaving the queue without a forwarder. None: told to stop meanwhile."""
    warned = False
    while not stop.is_set():
        if parent_pid is not None and os.getppid() != parent_pid:
            return None
        try:
            return Node.open(settings)
        except DicomChainError as exc:
            if not exc.retryable:
                raise
            if not warned:
                log.warning("forward: ledger unavailable (%s); waiting for it", exc)
                warned = True
            stop.wait(OPEN_RETRY_S)
    return None


def run_forwarder(settings: Settings, *, parent_pid: int | None = None) -> None:
    """``dicom-chain forward``, and the process ``serve`` starts: only the forwarders of
    ``settings`` (its forward list, AE title and workers per destination).

    It stops on SIGTERM/SIGINT, or within PARENT_CHECK_S once ``parent_pid`` is no longer its parent.
    """
    configure_logging(settings)
    if settings.log_level != "debug":  # its own lines repeat our one line per failure in 2-4 ERRORs
        logging.getLogger("pynetdicom").setLevel(FORWARD_PYNETDICOM_LEVEL)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    node = _open_when_reachable(settings, stop, parent_pid)
    if node is None:
        return
    forwarder = Forwarder(node, ae_title=settings.ae_title, workers_per_destination=settings.forward_workers)
    forwarder.start()
    workers = settings.forward_workers
    log.info("forwarding to %s with %d worker(s) each", ",".join(node.destinations) or "-", workers)
    try:
        while not stop.wait(PARENT_CHECK_S):
            if parent_pid is not None and os.getppid() != parent_pid:
                log.warning("forward: serve (pid %d) is gone; stopping", parent_pid)
                break
    finally:
        forwarder.stop()
        node.close()
