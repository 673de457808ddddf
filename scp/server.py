"""Builds the Application Entity and runs the gateway; every limit is a named constant."""

from __future__ import annotations

import errno
import gc
import logging
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_chain.config import DEFAULT_MAX_ASSOCIATIONS, Settings
from dicom_chain.errors import ConfigError, DicomChainError, StartupError
from dicom_chain.events import EventDraft
from dicom_chain.node import Node
from dicom_chain.storage import Spares
from dicom_chain.vocab import EventType

from .access import Access
from .auditfeed import AuditFeed, SyslogTarget
from .chunked import Spool, receive_to_disk
from .forward_process import ForwardSupervisor
from .handlers import (
    FIND_MODELS,
    GET_MODELS,
    MOVE_MODELS,
    handle_aborted,
    handle_accepted,
    handle_conn_open,
    handle_echo,
    handle_find,
    handle_get,
    handle_get_contexts,
    handle_move,
    handle_released,
    handle_requested,
    handle_store,
    quick_ack,
)
from .logs import configure_logging
from .metrics import GatewayMetrics, MetricsServer, listening, serve_metrics
from .reactor import Idle, on_idle
from .reactor import install as install_reactor
from .reactor import installed as reactor_installed
from .transport import GuardedServer, Limits, RejectionLog, start_server

MAX_PDU_BYTES = 131_072  # 128 KB: ~3x faster than 16 KB for 0.5 MB instances; peers may ask less
MAX_ASSOCIATIONS = DEFAULT_MAX_ASSOCIATIONS  # the --max-associations default (config.py says why)
ACSE_TIMEOUT_S = 30  # association set-up/release; a silent peer must not hold a slot
DIMSE_TIMEOUT_S = 120  # one DIMSE message; a large multi-frame object over a slow link fits
NETWORK_TIMEOUT_S = 300  # idle association; workstations keep associations open between sends
DRAIN_TIMEOUT_S = 120  # on SIGTERM, how long in-flight associations may take to finish
# C-FIND answers carry our private DICOM_CHAIN elements: in Implicit VR their VRs are not on the
# wire, so a peer without our dictionary shows "??" and hex. pynetdicom accepts the first of the
# ACCEPTOR's syntaxes the peer proposes (presentation.negotiate_as_acceptor), so Explicit VR
# Little Endian goes first; a peer offering only Implicit VR (findscu -xi) still gets it.
FIND_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]
# Python runs a signal's handler in the main thread, and only once that thread wakes: a SIGTERM
# the kernel hands to another thread went unheard by an untimed wait (seen: 2 starts in 5 ignored
# a SIGTERM sent just after listening). Waking each second bounds that delay.
SIGNAL_POLL_S = 1.0

log = logging.getLogger("dicom_chain.scp")


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """Server-side TLS; with a CA, peers must present a certificate it signed (mutual TLS)."""
    if settings.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # BCP 195 (RFC 9325 3.1.1): TLS 1.0 and 1.1 must not be negotiated. Python 3.10+ defaults to
    # this already; said here so that neither an older default nor a system policy can lower it.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key) if settings.tls_key else None)
    except (ssl.SSLError, OSError) as exc:  # ssl's own text ("PEM lib") names neither file nor cure
        raise ConfigError(
            f"--tls-cert {settings.tls_cert} / --tls-key {settings.tls_key or '(in the certificate)'}: "
            f"cannot load them ({exc.strerror or exc}); give a PEM certificate and its matching private key"
        ) from exc
    if settings.tls_ca is not None:
        try:
            context.load_verify_locations(str(settings.tls_ca))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"--tls-ca {settings.tls_ca}: cannot load it ({exc.strerror or exc}); "
                "give PEM CA certificate(s)"
            ) from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def listen_failure(exc: OSError, host: str, port: int) -> DicomChainError:
    """Why binding ``host:port`` failed, and what to do, as one line (not bind's traceback)."""
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return StartupError(
            f"port {port} is already in use ({where}): stop what listens there (another gateway or PACS) "
            "or choose another --port"
        )
    if exc.errno == errno.EACCES:
        return StartupError(
            f"not allowed to listen on {where}: ports below 1024 need root or CAP_NET_BIND_SERVICE; "
            "choose --port 1024 or above"
        )
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return ConfigError(
            f"--host {host} is not an address of this machine: give one of its addresses or 0.0.0.0"
        )
    return StartupError(f"cannot listen on {where}: {exc.strerror or exc}")


def build_ae(ae_title: str, max_associations: int = MAX_ASSOCIATIONS) -> AE:
    ae = AE(ae_title=ae_title)
    install_reactor(ae)  # wait on sockets and queues, not pynetdicom's 1 ms polling (reactor.py)
    ae.maximum_pdu_size = MAX_PDU_BYTES
    ae.maximum_associations = max_associations  # pynetdicom's own check; transport.py refuses earlier
    ae.acse_timeout = ACSE_TIMEOUT_S
    ae.dimse_timeout = DIMSE_TIMEOUT_S
    ae.network_timeout = NETWORK_TIMEOUT_S
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    for sop_class in FIND_MODELS:
        ae.add_supported_context(sop_class, FIND_TRANSFER_SYNTAXES)
    for sop_class in (*MOVE_MODELS, *GET_MODELS):
        ae.add_supported_context(sop_class)
    for cx in AllStoragePresentationContexts:
        # both roles: modalities store to us (we are SCP), C-GET has us store back (SCU role, PS3.7 D.3.3.4)
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    return ae


FORWARD_STOP_TIMEOUT_S = 60  # the forward process finishes its current batch, then gives leases back


class Gateway:
    """The running service: listener, forwarding, node; start() and stop() are all a caller needs.

    ``settings`` are the node's unless given (tests pick a port); forwarding runs in a child
    process (``scp.forward_process``), so sending uses another core than receiving, outside this
    process's GIL. ``start_forwarding``, ``notify_forwarding`` and ``stop_forwarding`` are the
    seam a test overrides to forward in-process and watch the workers.
    """

    def __init__(self, node: Node, settings: Settings | None = None) -> None:
        self.node = node
        self.settings = settings or node.settings
        self.access = Access.of(self.settings)
        self.ae = build_ae(self.settings.ae_title, self.settings.max_associations)
        self.spool = Spool(
            self.settings.spool_dir,
            self.settings.max_instance_bytes,
            self.settings.spool_memory_bytes,
            salvage=node.restore_names,
        )
        receive_to_disk(self.ae, self.spool)
        # The next instance's temp file made while the association waits for it (storage.Spares)
        self.spares = Spares(self.spool.folder, node.storage.root)
        node.storage.spares = self.spares
        on_idle(self.ae, Idle(served=self._stored, ended=self.spares.drop))
        self.limits = Limits.from_settings(self.settings, MAX_PDU_BYTES)
        self.rejections = RejectionLog(node.record)
        self.server: GuardedServer | None = None
        self.metrics = GatewayMetrics(node, lambda: listening(self.server))
        self.metrics_server: MetricsServer | None = None
        self.forwarding: ForwardSupervisor | None = None
        self.audit_feed: AuditFeed | None = None
        if self.settings.audit_syslog:
            self.audit_feed = AuditFeed(
                node.ledger,
                SyslogTarget(self.settings.audit_syslog, self.settings.audit_syslog_ca),
                source_id=f"dicom-chain@{node.key.key_id}",
            )

    def _stored(self, request: object) -> None:
        """After a C-STORE: its association will likely send another (a query's will not)."""
        if isinstance(request, C_STORE):
            self.spares.prepare()

    def handlers(self) -> list:
        ae_title = self.settings.ae_title
        handlers = [
            (evt.EVT_CONN_OPEN, handle_conn_open),
            *([] if reactor_installed(self.ae) else [(evt.EVT_PDU_RECV, quick_ack)]),  # or the reactor's
            (evt.EVT_REQUESTED, handle_requested, [self.access, self.rejections, self.settings.called_aes]),
            (evt.EVT_REQUESTED, handle_get_contexts, [self.node]),  # after it: a rejected peer is left
            (evt.EVT_ACCEPTED, handle_accepted),
            (evt.EVT_RELEASED, handle_released),
            (evt.EVT_ABORTED, handle_aborted),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [self.node, self.notify_forwarding, self.access, self.spool]),
            (evt.EVT_CONN_CLOSE, self.spool.connection_closed),
            (evt.EVT_C_FIND, handle_find, [self.node, ae_title, self.access]),
            (evt.EVT_C_MOVE, handle_move, [self.node, ae_title, self.access]),
            (evt.EVT_C_GET, handle_get, [self.node, self.access]),
            *([(evt.EVT_CONN_CLOSE, self.audit_feed.connection_closed)] if self.audit_feed else []),
        ]
        return self.metrics.counting(handlers)  # C-STORE, C-FIND, C-MOVE, C-GET counted for /metrics

    def start_forwarding(self) -> None:
        if self.node.destinations:
            self.forwarding = ForwardSupervisor(self.settings)
            self.forwarding.start()

    def notify_forwarding(self) -> None:
        """New work is queued; the forward process polls the queue, so nothing needs waking here."""

    def stop_forwarding(self) -> None:
        if self.forwarding is not None:
            forwarding, self.forwarding = self.forwarding, None
            forwarding.stop(FORWARD_STOP_TIMEOUT_S)

    def start(self) -> None:
        ssl_context = tls_context(self.settings)  # bad certificate files stop the start before anything runs
        if self.audit_feed is not None:
            self.node.settings.home.mkdir(parents=True, exist_ok=True)
            self.audit_feed.start()
        self.start_forwarding()
        self.rejections.start()
        try:
            self.server = start_server(
                self.ae,
                (self.settings.host, self.settings.port),
                limits=self.limits,
                rejections=self.rejections,
                evt_handlers=self.handlers(),
                ssl_context=ssl_context,
            )
        except OSError as exc:
            raise listen_failure(exc, self.settings.host, self.settings.port) from exc
        if self.settings.metrics_port:
            port = self.settings.metrics_port
            self.metrics_server = serve_metrics(self.metrics, self.settings.metrics_host, port)
        self.node.record(
            EventDraft(
                EventType.SERVICE_START,
                actor=self.settings.ae_title,
                chain_id=self.node.chain_id,
                details={"port": self.settings.port, "forward": self.node.destinations},
            )
        )
        if self.access.open:
            log.warning("no --allow, --peer or --peer-cert: any calling AE may store, query and retrieve")
        log.info(
            "listening ae_title=%s host=%s port=%d chain=%s storage=%s forward=%s",
            self.settings.ae_title, self.settings.host, self.settings.port, self.node.chain_id,
            self.node.storage.root, ",".join(self.node.destinations) or "-",
        )  # fmt: skip

    def live(self) -> dict[str, object]:
        """What the console's dashboard shows of the DICOM side: listening, and associations now."""
        server = self.server
        return {
            "running": server is not None,
            "associations": sum(1 for a in server.active_associations if a.is_established) if server else 0,
        }

    def stop(self) -> None:
        """Stop accepting, let in-flight associations finish, stop forwarding, record it."""
        if self.server is not None:
            server, self.server = self.server, None
            server.shutdown()
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            # Only established associations are in flight; a connection that has not asked for one
            # yet (a port probe, a half-open peer) would otherwise hold shutdown for the ACSE timeout.
            while any(a.is_established for a in server.active_associations) and time.monotonic() < deadline:
                time.sleep(0.05)
            for assoc in server.active_associations:
                assoc.abort()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
            self.metrics_server = None
        self.stop_forwarding()
        self.ae.shutdown()
        self.node.storage.spares = None
        self.spares.close()
        self.spool.close()
        self.rejections.stop()  # the counts still pending, before service.stop
        self.node.record(
            EventDraft(EventType.SERVICE_STOP, actor=self.settings.ae_title, chain_id=self.node.chain_id)
        )
        if self.audit_feed is not None:
            self.audit_feed.stop()  # after service.stop, so the repository hears of it too
        log.info("stopped ae_title=%s", self.settings.ae_title)


# The cyclic garbage collector's young-generation threshold while serving (CPython's default: 700
# allocations). Each C-STORE allocates tens of thousands of objects (pydicom elements, SQLAlchemy
# rows), nearly all freed by reference counting, yet at 700 a collection ran every few hundred
# microseconds of work: 382 young and 35 middle collections for 400 instances, 178 ms in all
# (0.45 ms an instance) in the gateway; at 10000 (and 50, 100 for the older generations),
# 28 young collections, 53 ms. Cycles still go, a little later; memory stayed within a few MB.
GC_THRESHOLDS = (10_000, 50, 100)


def tune_gc() -> None:
    """After start-up: what start-up made (modules, dictionaries, the node) is moved out of the
    collector's sight (``gc.freeze``), and collections of the young become rarer (GC_THRESHOLDS)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class Companion(Protocol):
    """A service run beside the gateway on its node (the log API, web/server.py)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...


def run_server(settings: Settings, companions: Sequence[Callable[[Node, Gateway], Companion]] = ()) -> None:
    """``dicom-chain serve``: run until SIGTERM or SIGINT, then stop cleanly and return.
    ``companions`` make, from the node, services started after the gateway and stopped before it."""
    configure_logging(settings)
    try:
        node = Node.open(settings)
    except OSError as exc:  # a folder of the node (home, storage, spool, key) cannot be made or written
        raise StartupError(
            f"cannot create or write {exc.filename or settings.home}: {exc.strerror or exc}; "
            "give --home (or --storage, --spool, --key-file) a place this user can write"
        ) from exc
    try:
        gateway = Gateway(node)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        started: list[Companion] = []
        try:
            gateway.start()
            for make in companions:
                companion = make(node, gateway)
                companion.start()
                started.append(companion)
            tune_gc()
            while not stop.wait(SIGNAL_POLL_S):
                pass
        finally:
            for companion in reversed(started):
                companion.stop()
            gateway.stop()
    finally:
        node.close()
