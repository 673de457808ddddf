"""The log API on uvicorn in a thread beside the DICOM gateway, and the checkpoint rounds.

``serve --http-port`` starts both (the command line composes them with scp/server.py): the API
answers other institutions' witnesses and auditors; every ``--checkpoint-interval`` seconds a
round signs a checkpoint and gathers cosignatures (web/publish.py). Uvicorn installs no signal
handlers off the main thread, so SIGTERM stays the gateway's, which stops these too.
"""

from __future__ import annotations

import logging
import threading
import time

import uvicorn

from dicom_chain.config import Settings
from dicom_chain.errors import StartupError
from dicom_chain.node import Node
from dicom_chain.tlog.publishing import Publisher

from .app import create_app, not_serving
from .console.app import Live
from .publish import publish_round

log = logging.getLogger("dicom_chain.web")
START_TIMEOUT_S = 10.0  # binding a port and loading a certificate: instant unless something is wrong
STOP_TIMEOUT_S = 10.0  # in-flight requests are one transaction each


class LogServer:
    def __init__(
        self,
        node: Node,
        host: str,
        port: int,
        *,
        certfile: str = "",
        keyfile: str = "",
        live: Live = not_serving,
    ) -> None:
        config = uvicorn.Config(
            create_app(node, live=live, https=bool(certfile)),
            host=host,
            port=port,
            ssl_certfile=certfile or None,
            ssl_keyfile=keyfile or None,
            log_level="warning",
            lifespan="off",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="log-api", daemon=True)
        self.scheme = "https" if certfile else "http"

    @property
    def port(self) -> int:
        """The port bound (the one asked for, or the one chosen for port 0)."""
        for server in self.server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return 0

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise StartupError(f"the log API did not start on port {self.server.config.port}")
            time.sleep(0.02)
        log.info("log API listening scheme=%s port=%d", self.scheme, self.port)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(STOP_TIMEOUT_S)


class Checkpointer:
    """A round now and every ``interval_s`` seconds, until stopped."""

    def __init__(self, publisher: Publisher, interval_s: float, tsa: str | None = None) -> None:
        self.publisher = publisher
        self.tsa = tsa
        self.interval_s = interval_s
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="checkpoints", daemon=True)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                done = publish_round(self.publisher, self.tsa)
                log.info(
                    "checkpoint size=%d cosigned_by=%s published=%s",
                    done.size, ",".join(done.cosigned_by) or "-", bool(done.published),
                )  # fmt: skip
            except Exception:  # a round's failure is logged; the next round tries again
                log.exception("checkpoint round failed")
            self.stopping.wait(self.interval_s)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(STOP_TIMEOUT_S)


class LogService:
    """What ``serve --http-port`` adds to the gateway: the API and the rounds."""

    def __init__(self, node: Node, settings: Settings, live: Live = not_serving) -> None:
        self.api = LogServer(
            node,
            settings.http_host,
            settings.http_port,
            certfile=str(settings.http_tls_cert or ""),
            keyfile=str(settings.http_tls_key or ""),
            live=live,
        )
        publisher = Publisher(node, settings.institution, settings.witness_quorum)
        self.rounds = Checkpointer(publisher, settings.checkpoint_interval, settings.tsa)

    def start(self) -> None:
        self.api.start()
        self.rounds.start()

    def stop(self) -> None:
        self.rounds.stop()
        self.api.stop()
