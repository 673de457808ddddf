"""The node's HTTP application: the transparency log's API (web/api.py) and the web console
(web/console/), one server, one certificate."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicom_chain.node import Node

from .api import log_routes
from .console.app import Console, Live, middleware


def not_serving() -> dict[str, object]:
    """What the dashboard says of the DICOM side when the console runs without a gateway."""
    return {"running": False, "associations": 0}


# Sent with every answer: no page is framed, sniffed, cached or leaks its URL (a patient's link
# holds its token) to another site; only our own styles and images load, and no script at all.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'self'; img-src 'self' data:; "
        b"form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    """A plain ASGI wrapper (not BaseHTTPMiddleware: it would buffer streamed exports)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(node: Node, *, live: Live = not_serving, https: bool = False) -> Starlette:
    return Starlette(
        routes=[*log_routes(node), *Console(node, live).routes()],
        middleware=[*middleware(node, https), Middleware(SecurityHeaders)],
    )
