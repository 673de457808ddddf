"""The transparency log's HTTP API: c2sp.org/tlog-witness add-checkpoint, and what others need
to check our log (the published checkpoint, consistency and inclusion proofs).

Each endpoint translates HTTP to one library call and back (tlog/witnessing.py, publishing.py,
store.py); the statuses are the witness protocol's (tlog/witness.HTTP_STATUS). Endpoints are plain
functions, so Starlette runs them in its thread pool: the database calls block a worker thread,
never the event loop.

    POST /witness/add-checkpoint    old <size>, proof lines, blank line, signed checkpoint
    GET  /log/checkpoint            our newest published (cosigned) checkpoint
    GET  /log/checkpoint?size=N     our checkpoint at size N, signed now (a witness whose proof failed asks)
    GET  /log/consistency?old=&new= the RFC 9162 proof between two sizes, base64 one a line
    GET  /log/inclusion?seq=&size=  event seq's leaf hash and its proof (JSON)

Nothing here names a patient: checkpoints and proofs are hashes. The inclusion endpoint gives an
event's leaf hash, not the event (which holds patient IDs): whoever holds the event, from a
``prove`` bundle or an audit export, checks it against the proof; nobody learns it from us.
"""

from __future__ import annotations

import base64
import logging

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from dicom_chain.errors import DicomChainError, NoteError
from dicom_chain.node import Node
from dicom_chain.tlog import merkle
from dicom_chain.tlog.checkpoint import DECIMAL, Checkpoint, origin_for
from dicom_chain.tlog.publishing import latest_published
from dicom_chain.tlog.store import EventTree
from dicom_chain.tlog.witness import MAX_REQUEST_BYTES, parse_request
from dicom_chain.tlog.witnessing import WitnessDesk

from .publish import fetch_checkpoint

log = logging.getLogger("dicom_chain.web")
SIZE_TYPE = "text/x.tlog.size"  # c2sp.org/tlog-witness: the 409 body's content type


def _text(body: str, status: int = 200) -> PlainTextResponse:
    return PlainTextResponse(body if body.endswith("\n") else body + "\n", status_code=status)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _actor(request: Request) -> str:
    return f"https:{request.client.host}" if request.client else "https:unknown"


def log_routes(node: Node) -> list[Route]:
    desk = WitnessDesk(node)
    tree = EventTree(node.ledger)

    async def add_checkpoint(request: Request) -> Response:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_REQUEST_BYTES:
            return _text(f"request larger than {MAX_REQUEST_BYTES} bytes", 413)
        body = b""
        async for chunk in request.stream():  # stop reading at the bound, whatever the header said
            body += chunk
            if len(body) > MAX_REQUEST_BYTES:
                return _text(f"request larger than {MAX_REQUEST_BYTES} bytes", 413)
        try:
            old_size, proof, signed = parse_request(body)
        except NoteError as exc:
            return _text(str(exc), 400)
        judged = await run_in_threadpool(
            desk.add_checkpoint, old_size, proof, signed, actor=_actor(request), at_old=fetch_checkpoint
        )
        outcome = judged.outcome
        status = outcome.http_status
        if outcome.kind == "cosigned" and outcome.cosignature is not None:
            return Response(outcome.cosignature.line(), media_type="text/plain; charset=utf-8")
        if outcome.kind == "conflict" and outcome.seen is not None:
            # exactly this type, no charset: clients compare it whole (Go's sumdb witness client does)
            return Response(f"{outcome.seen.size}\n", status_code=status, headers={"content-type": SIZE_TYPE})
        if outcome.kind == "split-view":
            log.warning("split view of %s: %s", judged.institution or "?", outcome.reason)
        return _text(outcome.reason, status)

    def checkpoint(request: Request) -> Response:
        if "size" in request.query_params:  # our signed checkpoint at an earlier size (witnesses ask)
            sizes = _sizes(request, "size")
            if isinstance(sizes, Response):
                return sizes
            [size] = sizes
            if not 0 < size <= tree.size():
                return _text(f"no checkpoint at {size}: the tree holds {tree.size()} events", 404)
            cp = Checkpoint(origin_for(node.key, node.settings.institution), size, tree.root(size))
            return PlainTextResponse(cp.sign(node.key))
        published = latest_published(node)
        if published is None:
            return _text("no checkpoint published yet (it needs a quorum of cosignatures)", 404)
        return PlainTextResponse(published.signed)

    def _sizes(request: Request, *names: str) -> list[int] | Response:
        values = []
        for name in names:
            raw = request.query_params.get(name, "")
            if not DECIMAL.fullmatch(raw):
                return _text(f"{name}: a decimal size", 400)
            values.append(int(raw))
        return values

    def consistency(request: Request) -> Response:
        sizes = _sizes(request, "old", "new")
        if isinstance(sizes, Response):
            return sizes
        old, new = sizes
        if not old <= new <= tree.size():  # what the rounds grew: a GET takes no write lock
            return _text(f"no proof from {old} to {new}: the log has {tree.size()} events", 400)
        return _text("".join(_b64(p) + "\n" for p in tree.consistency(old, new)) or "\n")

    def inclusion(request: Request) -> Response:
        sizes = _sizes(request, "seq", "size")
        if isinstance(sizes, Response):
            return sizes
        seq, size = sizes
        if size > tree.size():
            return _text(f"the log has {tree.size()} events, not {size}", 400)
        try:
            found = tree.inclusion(seq, size)
        except DicomChainError as exc:
            return _text(str(exc), 404)
        return JSONResponse({
            "index": found.index, "size": found.size, "leaf_hash": _b64(merkle.leaf_hash(found.leaf)),
            "proof": [_b64(p) for p in found.proof],
        })  # fmt: skip

    return [
        Route("/witness/add-checkpoint", add_checkpoint, methods=["POST"]),
        Route("/log/checkpoint", checkpoint),
        Route("/log/consistency", consistency),
        Route("/log/inclusion", inclusion),
    ]
