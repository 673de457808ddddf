"""The node's HTTP application: the transparency log's API (web/api.py) and the web console
(web/console/), one server, one certificate."""

from __future__ import annotations

from starlette.applications import Starlette

from dicom_chain.node import Node

from .api import log_routes
from .console.app import Console, Live, middleware


def not_serving() -> dict[str, object]:
    """What the dashboard says of the DICOM side when the console runs without a gateway."""
    return {"running": False, "associations": 0}


def create_app(node: Node, *, live: Live = not_serving, https: bool = False) -> Starlette:
    return Starlette(
        routes=[*log_routes(node), *Console(node, live).routes()], middleware=middleware(node, https)
    )
