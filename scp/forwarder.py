"""Forwarding to the upstream PACS: workers that drain the outbox over reused associations.

Each destination has its own workers and its own queue, so a PACS that is down holds back only
itself, and a modality's Success never waits for any PACS. A worker leases one study's batch,
sends it over an association it keeps open while there is work, and settles every instance.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.association import Association

from dicom_chain.config import Settings
from dicom_chain.errors import DicomChainError
from dicom_chain.node import Node
from dicom_chain.outbox import Destination, OutboxItem, Settled
from dicom_chain.vocab import ForwardVerdict

from .contexts import Sending, contexts_for, sending
from .handlers import no_delay
from .logs import configure_logging
from .statuses import forward_verdict

log = logging.getLogger("dicom_chain.forward")


BATCH_SIZE = 50  # instances leased at once: one study's worth for most series, small enough to share
WORKERS_PER_DESTINATION = 4  # parallel associations: a PACS with Nagle on answers ~45 ms late each
IDLE_RELEASE_S = 5.0  # keep an idle association this long, for the next batch of the same study
POLL_INTERVAL_S = 0.25  # how often an idle worker looks for due work: a cheap indexed query
# How soon the rows leased by a forwarder that died (kill -9) on this host are taken over by the
# living ones (several serve processes share one outbox): one query over the pending rows, run
# by an idle worker at most this often. Leases of other hosts still wait for outbox.LEASE_S.
LEASE_SWEEP_S = 5.0
OPEN_RETRY_S = 2.0  # a forward process that starts while the database is away asks again this often
PARENT_CHECK_S = 1.0  # a forwarder process started by `serve` exits within this after serve dies
FORWARD_ACSE_TIMEOUT_S = 30  # association set-up with the PACS
FORWARD_DIMSE_TIMEOUT_S = 120  # one C-STORE response: a large instance into a slow archive
# ... but a small one is answered in milliseconds, and a PACS whose parser chokes on an instance
# may answer nothing and wait for its own idle timeout (Orthanc 1.10: 30 s, then it closes) while
# the rest of the study waits behind. So the wait for a response is FORWARD_RESPONSE_S plus the
# time to store the file at FORWARD_STORE_RATE, capped at FORWARD_DIMSE_TIMEOUT_S.
FORWARD_RESPONSE_S = 10.0  # a loaded PACS answers a small C-STORE within a second or two
FORWARD_STORE_RATE = 2_000_000  # bytes/s a slow archive still writes and indexes
FORWARD_NETWORK_TIMEOUT_S = 60
CONTEXTS_REFUSED = "the PACS accepted none of the presentation contexts"


class DestinationWorker(threading.Thread):
    def __init__(self, forwarder: Forwarder, destination: Destination, number: int) -> None:
        super().__init__(name=f"forward-{destination.ae_title}-{number}", daemon=True)
        self.forwarder = forwarder
        self.destination = destination
        self.key = str(destination)
        self.assoc: Association | None = None
        self.assoc_contexts: set[tuple[str, str]] = set()
        self.last_used = 0.0

    def run(self) -> None:
        stop = self.forwarder.stop_event
        while not stop.is_set():
            try:
                worked = self.step()
            except Exception:  # a worker must survive anything and keep the queue moving
                log.exception("forward to %s: unexpected error", self.key)
                self.close()
                worked = False
            if not worked:
                self.forwarder.sweep()
                if self.assoc is not None and time.monotonic() - self.last_used > IDLE_RELEASE_S:
                    self.close()
                self.forwarder.wake.wait(POLL_INTERVAL_S)
        self.close()

    def step(self) -> bool:
        items = self.forwarder.node.outbox.claim(self.key, BATCH_SIZE)
        if not items:
            return False
        if self.forwarder.stop_event.is_set():
            self.forwarder.node.outbox.release(items)
            return False
        assoc = self.associate(items)
        if not isinstance(assoc, Association):
            # Refused contexts are the PACS saying no to these SOP classes (they count towards
            # the dead letter); anything else (unreachable, rejected) is passing trouble.
            verdict = ForwardVerdict.REFUSED if assoc == CONTEXTS_REFUSED else ForwardVerdict.RETRY
            reason = f"association with {self.key} failed: {assoc}"
            self.forwarder.node.outbox.settle([Settled(item, None, reason, verdict) for item in items])
            log.warning("forward to %s: %s; %d instance(s) wait", self.key, reason, len(items))
            return False
        results = []
        for number, item in enumerate(items):
            if self.forwarder.stop_event.is_set():
                self.forwarder.node.outbox.release(items[number:])
                break
            result = self.send(assoc, item)
            if not assoc.is_established:
                # The PACS dropped the association while receiving this instance (Orthanc aborts
                # on a data set its parser refuses): this one is a suspect and counts as a
                # refusal; the rest were never sent, so they go back untouched, due at once on a
                # new association, instead of backing off behind it.
                if result.verdict is ForwardVerdict.RETRY:
                    reason = f"association lost while sending this instance ({result.reason})"
                    result = Settled(item, None, reason, ForwardVerdict.REFUSED)
                results.append(result)
                self.forwarder.node.outbox.release(items[number + 1 :])
                self.close()
                break
            results.append(result)
        self.forwarder.node.outbox.settle(results)
        done = sum(1 for r in results if r.verdict is ForwardVerdict.DONE)
        log.info(
            "forward to %s: %d/%d of study %s stored",
            self.key,
            done,
            len(results),
            items[0].study_instance_uid,
        )
        self.last_used = time.monotonic()
        return True

    def associate(self, items: list[OutboxItem]) -> Association | str:
        """An association for ``items`` (the open one when it covers them), or why there is none:
        CONTEXTS_REFUSED when the PACS answered but accepted none of their presentation contexts."""
        needed = {(i.sop_class_uid, i.transfer_syntax) for i in items}
        if self.assoc is not None and self.assoc.is_established and needed <= self.assoc_contexts:
            return self.assoc
        self.close()
        ae = AE(ae_title=self.forwarder.ae_title)
        ae.acse_timeout = FORWARD_ACSE_TIMEOUT_S
        ae.dimse_timeout = FORWARD_DIMSE_TIMEOUT_S
        ae.network_timeout = FORWARD_NETWORK_TIMEOUT_S
        assoc = ae.associate(
            self.destination.host,
            self.destination.port,
            contexts=contexts_for(items),
            ae_title=self.destination.ae_title,
            max_pdu=self.forwarder.max_pdu,
        )
        if not assoc.is_established:
            if assoc.rejected_contexts and not assoc.accepted_contexts:
                return CONTEXTS_REFUSED
            return "rejected" if assoc.is_rejected else "no association"
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
            reason = f"{self.key} accepted no context for {item.sop_class_uid} in {item.transfer_syntax}"
            return Settled(item, None, reason, ForwardVerdict.REFUSED)
        try:
            size = os.path.getsize(path)
            assoc.dimse_timeout = min(FORWARD_DIMSE_TIMEOUT_S, FORWARD_RESPONSE_S + size / FORWARD_STORE_RATE)
            if how is Sending.AS_STORED:
                response = assoc.send_c_store(Path(path))  # the file as stored, no decode
            else:
                response = assoc.send_c_store(pydicom.dcmread(path))  # re-encoded by pynetdicom
        except FileNotFoundError:
            return Settled(item, None, f"stored file missing: {path}", ForwardVerdict.REFUSED)
        except (ValueError, RuntimeError) as exc:
            if assoc.is_established:  # pynetdicom could not encode it ("Failed to encode ..."): ever
                return Settled(item, None, f"cannot be sent: {exc}", ForwardVerdict.REFUSED)
            return Settled(item, None, str(exc), ForwardVerdict.RETRY)  # the association broke under it
        status = int(getattr(response, "Status", -1)) if response is not None and len(response) else None
        verdict, reason = forward_verdict(status)
        return Settled(item, status, reason, verdict)

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
        self.workers = [
            DestinationWorker(self, Destination.parse(d), n)
            for d in node.destinations
            for n in range(workers_per_destination)
        ]

    def start(self) -> None:
        self.sweep()
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
