"""Health and Prometheus metrics over HTTP (``--metrics-port``): what a hospital's monitoring scrapes.

``/healthz`` is a liveness check: 200 while the DICOM listener serves and the ledger's database
answers, 503 with the reason otherwise. ``/metrics`` is the Prometheus text format. Counts of what
this process answered (C-STORE, C-FIND, C-MOVE, C-GET) are counters kept here, incremented by
wrapping the handlers where they are registered (the handlers stay as they are). Everything the
forward process knows is read from the database at scrape time (``NodeCollector``): the forward
process is a child with registries of its own, and the outbox is where its work is recorded anyway,
so a queue stuck with the forwarder dead still shows.
"""

from __future__ import annotations

import errno
import functools
import logging
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pynetdicom import evt
from pynetdicom.status import (
    STATUS_FAILURE,
    STATUS_PENDING,
    STATUS_SUCCESS,
    STATUS_WARNING,
    code_to_category,
)

from dicom_chain.errors import StartupError
from dicom_chain.node import Node
from dicom_chain.vocab import OutboxState

from .statuses import CANCELLED

log = logging.getLogger("dicom_chain.metrics")

# Distinct calling AE titles given a label of their own; later ones count as "other". An open
# gateway (no allow-list) hears whatever a scanner on the network calls itself, and every label
# value is a time series kept for ever: a department has tens of modalities, not hundreds.
MAX_AE_LABELS = 200
OTHER_AE = "other"
# C-FIND answers in milliseconds to a second; a C-MOVE of a large study takes minutes.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
HTTP_TIMEOUT_S = 10  # a scraper that connects and says nothing must not hold a thread for ever


class AeLabels:
    """Calling AE title -> label value, bounded by MAX_AE_LABELS."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, event: evt.Event) -> str:
        ae = event.assoc.requestor.ae_title.strip()
        with self.lock:
            if ae in self.seen:
                return ae
            if len(self.seen) < MAX_AE_LABELS:
                self.seen.add(ae)
                return ae
        return OTHER_AE


def _status(value: Any) -> int | None:
    """A handler's status: an int, or a Dataset with Status (answers_failures' failures)."""
    if isinstance(value, int):
        return value
    status = getattr(value, "Status", None)
    return None if status is None else int(status)


class GatewayMetrics:
    """The gateway's registry: counters of its own answers, and the node's state read at scrape time."""

    def __init__(self, node: Node, serving: Callable[[], bool]) -> None:
        self.node = node
        self.serving = serving
        self.registry = CollectorRegistry()
        self.ae = AeLabels()
        r = self.registry
        self.received = Counter(
            "dicom_chain_instances_received", "C-STORE requests, by calling AE.", ["calling_ae"], registry=r
        )
        self.stored = Counter(
            "dicom_chain_instances_stored",
            "C-STORE requests answered Success or a warning (stored and chained; duplicates too).",
            ["calling_ae"],
            registry=r,
        )
        self.refused = Counter(
            "dicom_chain_instances_refused",
            "C-STORE requests answered with a failure status, by calling AE and status.",
            ["calling_ae", "status"],
            registry=r,
        )
        self.requests = Counter(
            "dicom_chain_qr_requests",
            "C-FIND, C-MOVE and C-GET requests, by operation and outcome (success, failure, cancelled).",
            ["operation", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "dicom_chain_qr_duration_seconds",
            "Time from a C-FIND, C-MOVE or C-GET request to its last answer (sub-operations included).",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        r.register(NodeCollector(node))

    def counting(self, handlers: list) -> list:
        """The gateway's ``(event, handler[, args])`` list with C-STORE, C-FIND, C-MOVE and C-GET
        counted: wrapped where they are registered, so the handlers themselves stay as they are."""
        wrap = {
            evt.EVT_C_STORE: self.store,
            evt.EVT_C_FIND: functools.partial(self.query, "find"),
            evt.EVT_C_MOVE: functools.partial(self.query, "move"),
            evt.EVT_C_GET: functools.partial(self.query, "get"),
        }
        return [(h[0], wrap[h[0]](h[1]), *h[2:]) if h[0] in wrap else h for h in handlers]

    def store(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """``handler`` (C-STORE) counting what it answered."""

        @functools.wraps(handler)
        def counted(event: evt.Event, *args: Any) -> Any:
            ae = self.ae(event)
            self.received.labels(ae).inc()
            result = handler(event, *args)
            status = _status(result)
            if status is not None and code_to_category(status) in (STATUS_SUCCESS, STATUS_WARNING):
                self.stored.labels(ae).inc()
            else:
                self.refused.labels(ae, "none" if status is None else f"0x{status:04X}").inc()
            return result

        return counted

    def query(self, operation: str, handler: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        """``handler`` (a C-FIND, C-MOVE or C-GET generator) counted and timed to its last answer."""

        @functools.wraps(handler)
        def timed(event: evt.Event, *args: Any) -> Iterator[Any]:
            started = time.monotonic()
            outcome: str | None = "success"

            def record() -> None:  # once: at the final status, or when pynetdicom lets go of us
                nonlocal outcome
                if outcome is not None:
                    self.requests.labels(operation, outcome).inc()
                    self.latency.labels(operation).observe(time.monotonic() - started)
                    outcome = None

            try:
                for value in handler(event, *args):
                    status = _status(value[0]) if isinstance(value, tuple) and value else None
                    final = status is not None and code_to_category(status) != STATUS_PENDING
                    if final and outcome is not None:
                        # A final status: pynetdicom sends it and may never resume this generator.
                        if status == CANCELLED:
                            outcome = "cancelled"
                        elif code_to_category(status) == STATUS_FAILURE:
                            outcome = "failure"
                        record()
                    yield value
            finally:
                record()

        return timed

    def health(self) -> tuple[bool, str]:
        """Alive: the DICOM listener serves and the ledger's database answers."""
        if not self.serving():
            return False, "the DICOM listener is not serving"
        try:
            self.node.ledger.event_head()
        except Exception as exc:  # whatever the driver raises, the answer is "not healthy, because"
            return False, f"the ledger's database does not answer: {exc}"
        return True, "ok"


class NodeCollector(Collector):
    """What the database knows, read at each scrape: forward queues, their failures, the ledger."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("dicom_chain_database_up", "1: the ledger's database answered this scrape.")
        try:
            families = self._families()
        except Exception as exc:  # a scrape shows the database down rather than failing whole
            log.warning("metrics: the ledger's database does not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> list[GaugeMetricFamily]:
        now = time.time()
        labels = ["destination"]
        depth = GaugeMetricFamily(
            "dicom_chain_forward_queue_depth", "Instances waiting to be forwarded.", labels=labels
        )
        oldest = GaugeMetricFamily(
            "dicom_chain_forward_oldest_age_seconds",
            "Age of the oldest instance waiting to be forwarded (0: none waits).",
            labels=labels,
        )
        dead = GaugeMetricFamily(
            "dicom_chain_forward_dead_letters",
            "Instances the PACS refused too often: they wait for `dicom-chain forward retry`.",
            labels=labels,
        )
        for q in self.node.outbox.stats():
            depth.add_metric([q.destination], q.pending)
            age = 0.0 if q.oldest_waiting_since is None else max(0.0, now - q.oldest_waiting_since)
            oldest.add_metric([q.destination], age)
            dead.add_metric([q.destination], q.failed)
        failing = GaugeMetricFamily(
            "dicom_chain_forward_failures",
            "Instances whose last forward attempt failed, by destination, cause (dns, refused, timeout, "
            "rejected, aborted, contexts, status, ...) and state (waiting: retried after back-off; "
            "dead-letter: given up).",
            labels=["destination", "cause", "state"],
        )
        for (destination, state, cause), count in sorted(self.node.outbox.failing().items()):
            waiting = "waiting" if state == OutboxState.PENDING else "dead-letter"
            failing.add_metric([destination, cause, waiting], count)
        blocks = GaugeMetricFamily(
            "dicom_chain_ledger_blocks",
            "Blocks in each chain of the ledger (its height + 1).",
            labels=["chain"],
        )
        for chain in self.node.ledger.chains():
            blocks.add_metric([chain.chain_id], chain.head_height + 1)
        events = GaugeMetricFamily("dicom_chain_ledger_events", "Events in the ledger's event log.")
        events.add_metric([], self.node.ledger.event_head()[0])
        return [depth, oldest, dead, failing, blocks, events]


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    timeout = HTTP_TIMEOUT_S

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path == "/metrics":
            self._answer(200, generate_latest(self.server.metrics.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok, why = self.server.metrics.health()
            self._answer(200 if ok else 503, f"{why}\n".encode(), "text/plain; charset=utf-8")
        else:
            self._answer(404, b"/metrics or /healthz\n", "text/plain; charset=utf-8")

    def _answer(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every 15 s are not news: nothing per request in the gateway's log."""


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], metrics: GatewayMetrics) -> None:
        self.metrics = metrics
        super().__init__(address, _Handler)


def listening(server: socketserver.BaseServer | None) -> bool:
    """``server`` is in its ``serve_forever`` loop: socketserver clears its private shut-down event
    on entering the loop and sets it on leaving it (shutdown, or an exception that ended it)."""
    if server is None:
        return False
    stopped = getattr(server, "_BaseServer__is_shut_down", None)
    return stopped is not None and not stopped.is_set() and server.socket.fileno() >= 0


def serve_metrics(metrics: GatewayMetrics, host: str, port: int) -> MetricsServer:
    """Serve /metrics and /healthz on ``host:port`` from a thread; the caller owns ``shutdown()``."""
    try:
        server = MetricsServer((host, port), metrics)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"--metrics-port {port} is already in use on {host}: choose another") from exc
        raise StartupError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics, liveness on /healthz", host, server.server_address[1])
    return server
