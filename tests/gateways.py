"""Gateways shaped for tests: forwarding in this process, and a listener without forwarding.

Production always forwards from a child process (``scp.forward_process``); tests that watch the
workers (wake them, read their queue) use ``InProcessGateway`` through the Gateway's seam.
"""

from __future__ import annotations

import dataclasses

from pynetdicom import AE

from dicom_chain.config import Settings
from dicom_chain.node import Node
from scp.forwarder import Forwarder
from scp.server import Gateway


class InProcessGateway(Gateway):
    """A Gateway whose forward workers are threads of this process (``gateway.forwarder``)."""

    def __init__(self, node: Node, settings: Settings | None = None) -> None:
        super().__init__(node, settings)
        self.forwarder = Forwarder(
            node, ae_title=self.settings.ae_title, workers_per_destination=self.settings.forward_workers
        )

    def start_forwarding(self) -> None:
        self.forwarder.start()

    def notify_forwarding(self) -> None:
        self.forwarder.notify()

    def stop_forwarding(self) -> None:
        self.forwarder.stop()


def start_server(node: Node, *, ae_title: str, host: str, port: int) -> AE:
    """Listen in background threads without forwarding or events; the caller owns ``ae.shutdown()``."""
    settings = dataclasses.replace(node.settings, ae_title=ae_title, host=host, port=port)
    gateway = Gateway(node, settings)
    gateway.server = gateway.ae.start_server((host, port), block=False, evt_handlers=gateway.handlers())
    return gateway.ae
