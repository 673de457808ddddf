"""Builds the Application Entity and runs the gateway; every limit is a named setting."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicom_chain.config import Settings
from dicom_chain.events import EventDraft
from dicom_chain.node import Node
from dicom_chain.vocab import EventType

from .access import AccessList
from .auditfeed import AuditFeed, SyslogTarget
from .forwarder import WORKERS_PER_DESTINATION, Forwarder
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
    handle_move,
    handle_released,
    handle_requested,
    handle_store,
    quick_ack,
)
from .logs import configure_logging

MAX_PDU_BYTES = 131_072  # 128 KB: ~3x faster than 16 KB for 0.5 MB instances; peers may ask less
MAX_ASSOCIATIONS = 32  # a department's modalities at once; beyond it peers get A-ASSOCIATE-RJ
ACSE_TIMEOUT_S = 30  # association set-up/release; a silent peer must not hold a slot
DIMSE_TIMEOUT_S = 120  # one DIMSE message; a large multi-frame object over a slow link fits
NETWORK_TIMEOUT_S = 300  # idle association; workstations keep associations open between sends
AUDIT_CURSOR_FILE = "audit-feed.cursor"  # in the node's home: the last event sent to the repository
DRAIN_TIMEOUT_S = 120  # on SIGTERM, how long in-flight associations may take to finish

log = logging.getLogger("dicom_chain.scp")


@dataclass(frozen=True)
class ServiceOptions:
    ae_title: str = "DICOMCHAIN"
    host: str = "0.0.0.0"
    port: int = 11112
    allow: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    forward_workers: int = WORKERS_PER_DESTINATION
    # Forward from a child process (``dicom-chain forward``): sending then runs on another core,
    # outside this process's GIL. In-process forwarding is for tests that watch the workers.
    forward_process: bool = False
    # Live audit feed: every ledger event as a DICOM audit message over syslog (udp|tcp|tls://HOST:PORT).
    audit_syslog: str | None = None
    audit_syslog_ca: Path | None = None


def tls_context(options: ServiceOptions) -> ssl.SSLContext | None:
    """Server-side TLS; with a CA, peers must present a certificate it signed (mutual TLS)."""
    if options.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(options.tls_cert), str(options.tls_key) if options.tls_key else None)
    if options.tls_ca is not None:
        context.load_verify_locations(str(options.tls_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def build_ae(ae_title: str) -> AE:
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = MAX_PDU_BYTES
    ae.maximum_associations = MAX_ASSOCIATIONS
    ae.acse_timeout = ACSE_TIMEOUT_S
    ae.dimse_timeout = DIMSE_TIMEOUT_S
    ae.network_timeout = NETWORK_TIMEOUT_S
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    for sop_class in (*FIND_MODELS, *MOVE_MODELS, *GET_MODELS):
        ae.add_supported_context(sop_class)
    for cx in AllStoragePresentationContexts:
        # both roles: modalities store to us (we are SCP), C-GET has us store back (SCU role, PS3.7 D.3.3.4)
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    return ae


FORWARD_STOP_TIMEOUT_S = 60  # the forward process finishes its current batch, then gives leases back


class Gateway:
    """The running service: listener, forwarder, node; start() and stop() are all a caller needs."""

    def __init__(self, node: Node, options: ServiceOptions) -> None:
        self.node = node
        self.options = options
        self.access = AccessList.parse(options.allow)
        self.forwarder = Forwarder(
            node, ae_title=options.ae_title, workers_per_destination=options.forward_workers
        )
        self.ae = build_ae(options.ae_title)
        self.server: ThreadedAssociationServer | None = None
        self.forward_child: subprocess.Popen | None = None
        self.audit_feed: AuditFeed | None = None
        if options.audit_syslog:
            self.audit_feed = AuditFeed(
                node.ledger,
                SyslogTarget(options.audit_syslog, options.audit_syslog_ca),
                source_id=f"dicom-chain@{node.key.key_id}",
            )

    def _spawn_forwarder(self) -> subprocess.Popen:
        return subprocess.Popen(_forward_command(self.node.settings, self.options))

    def handlers(self) -> list:
        return [
            (evt.EVT_CONN_OPEN, handle_conn_open),
            (evt.EVT_PDU_RECV, quick_ack),
            (evt.EVT_REQUESTED, handle_requested, [self.node, self.access]),
            (evt.EVT_ACCEPTED, handle_accepted),
            (evt.EVT_RELEASED, handle_released),
            (evt.EVT_ABORTED, handle_aborted),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [self.node, self.forwarder.notify]),
            (evt.EVT_C_FIND, handle_find, [self.node, self.options.ae_title]),
            (evt.EVT_C_MOVE, handle_move, [self.node, self.options.ae_title]),
            (evt.EVT_C_GET, handle_get, [self.node]),
        ]

    def start(self) -> None:
        if self.audit_feed is not None:
            self.node.settings.home.mkdir(parents=True, exist_ok=True)
            self.audit_feed.start()
        if self.options.forward_process and self.node.destinations:
            self.forward_child = self._spawn_forwarder()
        else:
            self.forwarder.start()
        self.server = self.ae.start_server(
            (self.options.host, self.options.port),
            block=False,
            evt_handlers=self.handlers(),
            ssl_context=tls_context(self.options),
        )
        self.node.record(
            EventDraft(
                EventType.SERVICE_START,
                actor=self.options.ae_title,
                chain_id=self.node.chain_id,
                details={"port": self.options.port, "forward": self.node.destinations},
            )
        )
        if self.access.open:
            log.warning("no allow-list: accepting any calling AE title")
        log.info(
            "listening ae_title=%s port=%d chain=%s storage=%s forward=%s",
            self.options.ae_title, self.options.port, self.node.chain_id,
            self.node.storage.root, ",".join(self.node.destinations) or "-",
        )  # fmt: skip

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
        self.forwarder.stop()
        if self.forward_child is not None:
            self.forward_child.terminate()
            try:
                self.forward_child.wait(FORWARD_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.forward_child.kill()
        self.ae.shutdown()
        self.node.record(
            EventDraft(EventType.SERVICE_STOP, actor=self.options.ae_title, chain_id=self.node.chain_id)
        )
        if self.audit_feed is not None:
            self.audit_feed.stop()  # after service.stop, so the repository hears of it too
        log.info("stopped ae_title=%s", self.options.ae_title)


def _forward_command(settings: Settings, options: ServiceOptions) -> list[str]:
    cmd = [
        sys.executable, "-m", "dicom_chain.cli", "forward",
        "--home", str(settings.home), "--db", settings.db_url, "--storage", str(settings.storage_dir),
        "--key-file", str(settings.key_path), "--institution", settings.institution,
        "--ae-title", options.ae_title, "--forward-workers", str(options.forward_workers),
        "--parent-pid", str(os.getpid()),
    ]  # fmt: skip
    for destination in settings.forward:
        cmd += ["--forward", destination]
    return cmd


def start_server(node: Node, *, ae_title: str, host: str, port: int) -> AE:
    """Listen in background threads without forwarding (tests); the caller owns ``ae.shutdown()``."""
    gateway = Gateway(node, ServiceOptions(ae_title=ae_title, host=host, port=port))
    gateway.server = gateway.ae.start_server((host, port), block=False, evt_handlers=gateway.handlers())
    return gateway.ae


def run_server(settings: Settings, options: ServiceOptions) -> None:
    """``dicom-chain serve``: run until SIGTERM or SIGINT, then stop cleanly and return."""
    configure_logging()
    node = Node.open(settings)
    gateway = Gateway(node, dataclasses.replace(options, forward_process=True))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        gateway.start()
        stop.wait()
    finally:
        gateway.stop()
        node.close()
