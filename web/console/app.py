"""The console's pages, on the log API's server (``serve --http-port``): server-rendered (Jinja2),
plain forms, no JavaScript. Each page asks the library one thing and renders what it answers.

Access: a user logs in (argon2id hash, dicom_chain/users.py); the session is a signed cookie
(Starlette's SessionMiddleware: itsdangerous HMAC, its secret derived from the node key, so a
restart keeps sessions and no secret file lies around), ``Secure`` when the server is HTTPS,
``SameSite=Strict``, and every form carries a per-session CSRF token checked on POST. Roles
decide pages (users.CAN). A patient opens ``/p/<token>`` with the link they were given, and sees
their own page only. Logins, logouts, links and every change are events on the ledger.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import re
import secrets
import shutil
import tempfile
import time
import zipfile
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from dicom_chain.audit import AuditFilter, accesslog, export, proof_path, verify_export
from dicom_chain.block import utc_now
from dicom_chain.errors import AuthError, DicomChainError
from dicom_chain.ledger import EVENTS
from dicom_chain.node import Node
from dicom_chain.overview import overview
from dicom_chain.qr import browse
from dicom_chain.sharing import service
from dicom_chain.sharing.policyfile import PURPOSES
from dicom_chain.sharing.registry import Registry
from dicom_chain.users import PatientLinks, User, Users, token_hash
from dicom_chain.vocab import EventType

from .pictures import chain_svg, score_chart

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))  # autoescaped: .html
SESSION_COOKIE = "dicom_chain_console"
SESSION_MAX_AGE_S = 8 * 3600  # a working shift: a forgotten session ends by the next one
LOGIN_FAILURES = 5  # failed logins from one address within LOGIN_WINDOW_S before it must wait
LOGIN_WINDOW_S = 60.0  # long enough to stop guessing, short enough not to lock out a typo
MAX_THROTTLED = 10_000  # addresses and names remembered at once; older ones are forgotten first
FORM_BYTES = 64 * 1024  # a form of the console: a few fields
UID = re.compile(r"[0-9]+(\.[0-9]+)*")  # a DICOM UID (PS3.5 9.1): digits and dots, nothing to match on
OPENED_EVERY_S = 600.0  # a patient link's opening is recorded at most this often: views would flood the log
ZIP_MEMBERS = 4  # an export and its proof, with room to spare
MAX_UPLOAD_BYTES = 512 * 1024 * 1024  # an audit export to check: 100k events in JSON Lines are ~60 MB
EXPORT_FORMATS = (("json", "JSON Lines"), ("csv", "CSV"), ("fhir", "FHIR AuditEvent"), ("atna", "DICOM ATNA"))
EVENT_PAGE = 100  # audit rows a page
EXTENSIONS = {"json": "jsonl", "csv": "csv", "fhir": "json", "atna": "xml"}

Live = Callable[[], dict[str, Any]]


def session_secret(node: Node) -> str:
    """The cookie signing secret: derived from the node's private key (HMAC, a label of its own)."""
    from cryptography.hazmat.primitives import serialization

    raw = node.key.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return hmac.new(raw, b"dicom-chain console session v1", hashlib.sha256).hexdigest()


def middleware(node: Node, https: bool) -> list[Middleware]:
    return [
        Middleware(
            SessionMiddleware,
            secret_key=session_secret(node),
            session_cookie=SESSION_COOKIE,
            max_age=SESSION_MAX_AGE_S,
            same_site="strict",
            https_only=https,
        )
    ]


def _peer(request: Request) -> str:
    return request.client.host if request.client else "unknown"


class Console:
    def __init__(self, node: Node, live: Live) -> None:
        self.node = node
        self.live = live
        self.users = Users(node.ledger, node.key)
        self.links = PatientLinks(node.ledger, node.key)
        self.failures: dict[str, deque[float]] = defaultdict(deque)  # by address, and by name tried
        self.sessions: dict[str, tuple[str, float]] = {}  # session ID -> (user, ends at), in memory
        self.opened: dict[str, float] = {}  # patient link -> when its opening was last recorded

    # -- plumbing ----------------------------------------------------------------------------

    def user(self, request: Request) -> User | None:
        """The session's user: its ID must be one this server issued and has not ended (logout,
        expiry, restart), and the user still active. The cookie alone is never enough."""
        sid = request.session.get("sid")
        held = self.sessions.get(sid) if isinstance(sid, str) else None
        if held is None or held[1] < time.monotonic():
            return None
        found = self.users.get(held[0])
        return found if found is not None and found.disabled_at is None else None

    @staticmethod
    def csrf(request: Request) -> str:
        token = request.session.get("csrf")
        if not isinstance(token, str):
            token = request.session["csrf"] = secrets.token_urlsafe(32)
        return token

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        context.setdefault("title", template.removesuffix(".html").capitalize())
        context.setdefault("notice", request.session.pop("notice", ""))  # said once, after a redirect
        context |= {"user": self.user(request), "csrf": self.csrf(request)}
        return TEMPLATES.TemplateResponse(request, template, context, status_code=status)

    @staticmethod
    def redirect(request: Request, to: str, notice: str) -> Response:
        """After a change: to ``to`` (always one of ours), the notice kept in the session for the
        page that follows, never in the URL, where anyone could write one."""
        request.session["notice"] = notice[:300]
        return RedirectResponse(to, status_code=303)

    def guard(self, request: Request, what: str) -> User | Response:
        user = self.user(request)
        if user is None:
            return RedirectResponse("/console/login", status_code=303)
        if not user.can(what):
            return self.render(
                request, "base.html", 403, error=f"Your role ({user.role}) may not see this page."
            )
        return user

    async def posted(
        self, request: Request, what: str, limit: int = FORM_BYTES
    ) -> tuple[User, dict[str, Any]] | Response:
        """A POST to a page ``what`` allows: its user, and the form once its CSRF token holds."""
        user = self.guard(request, what)
        if isinstance(user, Response):
            return user
        form = await self.form(request, limit)
        if isinstance(form, Response):
            return form
        return user, form

    async def form(self, request: Request, limit: int = FORM_BYTES) -> dict[str, Any] | Response:
        """The form, once its CSRF token matches the session's; a 403 page otherwise. A body over
        ``limit`` (or of no stated length) is refused before it is read."""
        length = request.headers.get("content-length", "")
        if not length.isdigit() or int(length) > limit:
            return self.render(request, "base.html", 413, error=f"A form here is at most {limit} bytes.")
        form = await request.form(max_part_size=limit)
        sent = form.get("csrf")
        if not isinstance(sent, str) or not hmac.compare_digest(sent, self.csrf(request)):
            return self.render(request, "base.html", 403, error="This form has expired: open the page again.")
        return dict(form)

    # -- login -------------------------------------------------------------------------------

    def login_page(self, request: Request) -> Response:
        return self.render(request, "login.html", title="Log in")

    async def login(self, request: Request) -> Response:
        form = await self.form(request)
        if isinstance(form, Response):
            return form
        peer = _peer(request)
        name, password = str(form.get("name", ""))[:64], str(form.get("password", ""))
        now = time.monotonic()
        counters = [self.failures[f"address:{peer}"], self.failures[f"name:{name}"]]
        for recent in counters:
            while recent and recent[0] < now - LOGIN_WINDOW_S:
                recent.popleft()
        if any(len(recent) >= LOGIN_FAILURES for recent in counters):
            return self.render(request, "login.html", 429, error="Too many attempts: wait a minute.")
        for recent in counters:  # counted before the check: attempts at once cannot all slip through
            recent.append(now)
        if len(self.failures) > MAX_THROTTLED:
            live = {k: v for k, v in self.failures.items() if v and v[-1] > now - LOGIN_WINDOW_S}
            self.failures = defaultdict(deque, live)
        try:
            user = await run_in_threadpool(self.users.authenticate, name, password, peer=peer)
        except AuthError as exc:
            return self.render(request, "login.html", 401, error=str(exc).capitalize() + ".")
        for recent in counters:
            if recent:
                recent.pop()  # a success does not count against the address or the name
        request.session.clear()  # a new session at login: none fixed beforehand survives it
        sid = secrets.token_urlsafe(32)
        now = time.monotonic()
        self.sessions = {k: v for k, v in self.sessions.items() if v[1] > now}
        self.sessions[sid] = (user.name, now + SESSION_MAX_AGE_S)
        request.session["sid"] = sid
        return RedirectResponse("/console/", status_code=303)

    async def logout(self, request: Request) -> Response:
        form = await self.form(request)
        if isinstance(form, Response):
            return form
        user = self.user(request)
        if user is not None:
            await run_in_threadpool(self.users.logout, user, peer=_peer(request))
        self.sessions.pop(str(request.session.get("sid")), None)  # the cookie, if kept, opens nothing
        request.session.clear()
        return RedirectResponse("/console/login", status_code=303)

    # -- dashboard ---------------------------------------------------------------------------

    def dashboard(self, request: Request) -> Response:
        user = self.guard(request, "dashboard")
        if isinstance(user, Response):
            return user
        o = overview(self.node, self.node.ledger, self.node.storage)
        queues = [
            {
                "destination": q.destination, "pending": q.pending, "failed": q.failed, "done": q.done,
                "oldest": time.strftime("%Y-%m-%d %H:%M", time.gmtime(q.oldest_waiting_since))
                if q.oldest_waiting_since else "", "last_error": q.last_error,
            }
            for q in o.queues
        ]  # fmt: skip
        shown = {
            "events": o.events, "head": o.head, "instances_today": o.instances_today,
            "checkpoint": o.checkpoint, "cosigners": o.cosigners, "queues": queues, "security": o.security,
            "storage_used": _bytes(o.storage_used), "storage_total": _bytes(o.storage_total),
        }  # fmt: skip
        return self.render(request, "dashboard.html", title="Dashboard", o=shown, live=self.live())

    async def replay(self, request: Request) -> Response:
        got = await self.posted(request, "manage")
        if isinstance(got, Response):
            return got
        user, form = got
        destination = str(form.get("destination", ""))
        queued = await run_in_threadpool(self.node.outbox.replay, f"console:{user.name}", destination or None)
        return self.redirect(request, "/console/", f"{queued} instance(s) queued again")

    # -- studies -----------------------------------------------------------------------------

    def studies(self, request: Request) -> Response:
        user = self.guard(request, "studies")
        if isinstance(user, Response):
            return user
        p = request.query_params
        q = {
            "patient": p.get("patient", ""), "date_from": p.get("from", ""), "date_to": p.get("to", ""),
            "modality": p.get("modality", ""),
        }  # fmt: skip
        try:
            page = browse.studies(self.node.db, **q, after=_int(p.get("after")))
        except DicomChainError as exc:
            return self.render(
                request, "studies.html", 400, title="Studies", q=q, page=browse.Page([], None), error=str(exc)
            )
        kept = {k: v for k, v in {"patient": q["patient"], "from": q["date_from"], "to": q["date_to"],
                                  "modality": q["modality"]}.items() if v}  # fmt: skip
        next_url = (
            f"/console/studies?{urlencode({**kept, 'after': page.next_after})}" if page.next_after else ""
        )
        return self.render(request, "studies.html", title="Studies", q=q, page=page, next_url=next_url)

    def study(self, request: Request) -> Response:
        user = self.guard(request, "studies")
        if isinstance(user, Response):
            return user
        uid = request.path_params["uid"]
        if not UID.fullmatch(uid) or len(uid) > 64:
            return self.render(request, "base.html", 404, error="No such study.")
        page = browse.instances(self.node.db, uid, after=_int(request.query_params.get("after")))
        chain = browse.chain(self.node.ledger, uid, after=_int(request.query_params.get("chain_after"), -1))
        chain = browse.with_states(self.node.db, chain)  # the states of this page's blocks only
        series: dict[str, dict[str, Any]] = {}
        for row in page.rows:
            series.setdefault(str(row.get("SeriesInstanceUID")), {
                "sop": row.get("SOPInstanceUID"), "number": row.get("SeriesNumber", ""),
                "description": row.get("SeriesDescription", ""), "modality": row.get("Modality", ""),
            })  # fmt: skip
        versions = browse.version_counts(self.node.ledger, self.node.chain_id, page.rows)
        return self.render(
            request, "study.html", versions=versions, title=f"Study {uid}", uid=uid, page=page, chain=chain,
            chain_svg=chain_svg(chain.links, chain.released_to), series=list(series.values()),
        )  # fmt: skip

    async def verify_study(self, request: Request) -> Response:
        got = await self.posted(request, "studies")
        if isinstance(got, Response):
            return got
        user, _ = got
        uid = request.path_params["uid"]
        if not UID.fullmatch(uid) or len(uid) > 64:
            return self.render(request, "base.html", 404, error="No such study.")
        n = self.node
        states = await run_in_threadpool(
            browse.verify_study, n.db, n.ledger, n.storage, n.key, uid, f"console:{user.name}"
        )
        bad = sum(1 for s in states.values() if s != "verified")
        said = f"{len(states)} instance(s) checked: " + (
            f"{bad} ALTERED or MISSING" if bad else "all VERIFIED"
        )
        return self.redirect(request, f"/console/studies/{quote(uid)}", said)

    def thumbnail(self, request: Request) -> Response:
        user = self.guard(request, "studies")
        if isinstance(user, Response):
            return user
        sop = request.path_params["sop"]
        row = browse.instance(self.node.db, sop) if UID.fullmatch(sop) and len(sop) <= 64 else None
        if row is None:
            return Response(status_code=404)
        try:
            png = _thumbnail(self.node.storage.path(row["_path"]))
        except Exception:  # a file that does not render (a structured report, a broken file) has no picture
            return Response(status_code=404)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})

    # -- audit -------------------------------------------------------------------------------

    def _filter(self, request: Request) -> tuple[AuditFilter, str, str]:
        p = request.query_params
        event = p.get("event", "")
        f = AuditFilter(
            since=p.get("since") or None, until=p.get("until") or None, patient=p.get("patient") or None,
            study=p.get("study") or None, event_types=(event,) if event else (),
            institution=p.get("institution") or None,
        )  # fmt: skip
        kept = {k: p[k] for k in ("since", "until", "patient", "study", "event", "institution") if p.get(k)}
        return f, event, urlencode(kept)

    def audit(self, request: Request, verified: dict[str, Any] | None = None) -> Response:
        user = self.guard(request, "audit")
        if isinstance(user, Response):
            return user
        f, event, query = self._filter(request)
        stmt = select(EVENTS).order_by(EVENTS.c.seq.desc()).limit(EVENT_PAGE + 1)
        before = _int(request.query_params.get("before"))
        if before:
            stmt = stmt.where(EVENTS.c.seq < before)
        if f.patient:
            stmt = stmt.where(EVENTS.c.patient_id == f.patient)
        if f.study:
            stmt = stmt.where(EVENTS.c.study_uid == f.study)
        if event:
            stmt = stmt.where(EVENTS.c.type == event)
        if f.institution:  # signed by that institution's node: its key, as the export filters it
            keys = [k for k, name in self.node.ledger.institutions().items() if name == f.institution]
            stmt = stmt.where(EVENTS.c.key_id.in_(keys))
        if f.since:
            stmt = stmt.where(EVENTS.c.time >= f.since)
        if f.until:
            stmt = stmt.where(EVENTS.c.time < f.until + ("T23:59:59.999999Z" if len(f.until) == 10 else ""))
        with self.node.db.reading() as session:
            rows = [dict(r._mapping) for r in session.execute(stmt)]
        more = len(rows) > EVENT_PAGE
        rows = rows[:EVENT_PAGE]
        return self.render(
            request, "audit.html", title="Audit", f=f, event=event, query=query, events=rows,
            next_before=rows[-1]["seq"] if more else None, formats=EXPORT_FORMATS, verified=verified,
        )  # fmt: skip

    def audit_export(self, request: Request) -> Response:
        user = self.guard(request, "audit")
        if isinstance(user, Response):
            return user
        fmt = request.query_params.get("format", "json")
        if fmt not in dict(EXPORT_FORMATS):
            return self.render(request, "base.html", 400, error=f"no export format {fmt!r}")
        f, _, _ = self._filter(request)
        # Streamed as the CLI streams it: events written to a file a batch at a time, zipped on
        # disk, sent from the file, removed once sent. Nothing holds the trail in memory.
        tmp = Path(tempfile.mkdtemp(prefix="console-export-"))
        try:
            out = tmp / f"audit.{EXTENSIONS[fmt]}"
            export(
                self.node.ledger, self.node.key, fmt, out, f, actor=f"console:{user.name}",
                source_id=f"dicom-chain@{self.node.key.key_id}",
            )  # fmt: skip
            archive = _zip([out, proof_path(out)], tmp / f"audit-{fmt}.zip")
        except DicomChainError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            return self.render(request, "base.html", 400, error=f"Not exported: {exc}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return StreamingResponse(
            _sent_then_removed(archive, tmp), media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{archive.name}"'},
        )  # fmt: skip

    async def audit_verify(self, request: Request) -> Response:
        got = await self.posted(request, "audit", MAX_UPLOAD_BYTES)
        if isinstance(got, Response):
            return got
        _, form = got
        upload, proof = form.get("export"), form.get("proof")
        if upload is None or not hasattr(upload, "read"):
            return self.audit(request, {"ok": False, "summary": "no file given", "findings": []})
        data = await upload.read()
        proof_data = await proof.read() if proof is not None and hasattr(proof, "read") else b""
        keys = {self.node.key.public_key, *(i.public_key for i in Registry(self.node.ledger, None).all())}
        filename = str(upload.filename or "export")
        result = await run_in_threadpool(_check_upload, filename, data, proof_data, frozenset(keys))
        return self.audit(request, result)

    # -- sharing -----------------------------------------------------------------------------

    def sharing(self, request: Request, link: str = "") -> Response:
        user = self.guard(request, "sharing")
        if isinstance(user, Response):
            return user
        now = utc_now()
        institutions = []
        policy = self.node.policy
        for inst in Registry(self.node.ledger, None).all():
            s = service.score(self.node, "institution", inst.name, now)
            rule = policy.score_rule("institution")
            institutions.append({
                "name": inst.name, "ae_title": inst.ae_title, "host": inst.host, "port": inst.port,
                "score": f"{round(s.value, 1):g}", "chart": score_chart(s.steps, rule.low, rule.high),
            })  # fmt: skip
        patient = request.query_params.get("patient", "")
        consents = service.all_consents(self.node, patient or None)
        p = request.query_params
        check: dict[str, Any] = {"study": p.get("check_study", ""), "to": p.get("check_to", "")}
        if check["study"] and check["to"]:
            try:
                check["result"] = service.check_release(
                    self.node, study_uid=check["study"], to=check["to"],
                    purpose=p.get("check_purpose", "treatment"), now=now,
                )  # fmt: skip
            except DicomChainError as exc:
                check["result"] = {"allowed": False, "reasons": [str(exc)]}
        history = list(reversed(self.node.ledger.events_of_types([EventType.POLICY_CHANGED])))
        return self.render(
            request, "sharing.html", title="Sharing", institutions=institutions, consents=consents,
            patient=patient, purposes=PURPOSES, policy_hash=policy.hash, policy_text=policy.text,
            policy_history=history, check=check, link=link,
        )  # fmt: skip

    async def consent_grant(self, request: Request) -> Response:
        got = await self.posted(request, "manage")
        if isinstance(got, Response):
            return got
        user, form = got
        try:
            await run_in_threadpool(lambda: service.grant_consent(
                self.node, patient_id=str(form.get("patient_id", "")), to=str(form.get("to", "")),
                until=str(form.get("until", "")), purpose=str(form.get("purpose", "treatment")),
                actor=f"console:{user.name}", now=utc_now(), source="console",
            ))  # fmt: skip
        except DicomChainError as exc:
            return self.redirect(request, "/console/sharing", f"not granted: {exc}")
        return self.redirect(request, "/console/sharing", "consent granted")

    async def consent_revoke(self, request: Request) -> Response:
        got = await self.posted(request, "manage")
        if isinstance(got, Response):
            return got
        user, form = got
        try:
            await run_in_threadpool(lambda: service.revoke_consent(
                self.node, str(form.get("consent_id", "")), actor=f"console:{user.name}",
                reason="revoked in the console",
            ))  # fmt: skip
        except DicomChainError as exc:
            return self.redirect(request, "/console/sharing", f"not revoked: {exc}")
        return self.redirect(request, "/console/sharing", "consent revoked")

    async def patient_link(self, request: Request) -> Response:
        got = await self.posted(request, "patient-links")
        if isinstance(got, Response):
            return got
        user, form = got
        try:
            link = await run_in_threadpool(lambda: self.links.issue(
                str(form.get("patient_id", "")), days=_int(str(form.get("days", "30")), 30),
                actor=f"console:{user.name}",
            ))  # fmt: skip
        except DicomChainError as exc:
            return self.redirect(request, "/console/sharing", f"no link: {exc}")
        base = self.node.settings.console_url.rstrip("/")  # never the Host header: a client writes that
        return self.sharing(request, link=f"{base}/p/{link.token}")

    # -- the patient's page ------------------------------------------------------------------

    def _patient(self, request: Request) -> str | Response:
        token = str(request.path_params["token"])[:128]
        seen, now = token_hash(token), time.monotonic()  # the hash only, even in memory
        record = self.opened.get(seen, -OPENED_EVERY_S) < now - OPENED_EVERY_S
        try:
            patient = self.links.open(token, peer=_peer(request), record=record)
            if record:
                if len(self.opened) > MAX_THROTTLED:
                    self.opened.clear()
                self.opened[seen] = now
            return patient
        except AuthError as exc:
            return self.render(request, "base.html", 403, title="Link", error=str(exc).capitalize() + ".")

    def patient_page(self, request: Request) -> Response:
        patient = self._patient(request)
        if isinstance(patient, Response):
            return patient
        with tempfile.TemporaryDirectory(prefix="console-patient-") as tmp:
            out = Path(tmp) / "access.json"
            signed = accesslog.write(
                self.node.ledger, self.node.key, patient, out, "json", actor="patient link",
                source_id=f"dicom-chain@{self.node.key.key_id}", now=utc_now(),
            )  # fmt: skip
            doc = json.loads(out.read_text(encoding="utf-8"))
        statement = signed["statement"]
        consents = service.all_consents(self.node, patient)
        research = _opted_in(self.node, patient)
        words = (
            f"The record holds {statement['count']} events about you, cut from the log at event "
            f"{statement['ledger_head']['seq']} and signed by this hospital's key {statement['key_id']}."
        )
        return self.render(
            request, "patient.html", title="Your record", entries=doc.get("entries", []), consents=consents,
            research=research, proof_words=words, token=request.path_params["token"],
            institution=self.node.settings.institution,
        )  # fmt: skip

    def patient_proof(self, request: Request) -> Response:
        patient = self._patient(request)
        if isinstance(patient, Response):
            return patient
        with tempfile.TemporaryDirectory(prefix="console-patient-") as tmp:
            out = Path(tmp) / "access.html"
            accesslog.write(
                self.node.ledger, self.node.key, patient, out, "html", actor="patient link",
                source_id=f"dicom-chain@{self.node.key.key_id}", now=utc_now(),
            )  # fmt: skip
            events = accesslog.events_path(out)
            data = _zip([out, events, proof_path(events)], Path(tmp) / "record.zip").read_bytes()
        return Response(
            data,
            media_type="application/zip",
            headers={"Content-Disposition": 'attachment; filename="your-record.zip"'},
        )

    # -- routes ------------------------------------------------------------------------------

    def routes(self) -> list[Route | Mount]:
        return [
            Route("/", lambda r: RedirectResponse("/console/", 303)),
            Route("/console/login", self.login_page, methods=["GET"]),
            Route("/console/login", self.login, methods=["POST"]),
            Route("/console/logout", self.logout, methods=["POST"]),
            Route("/console/", self.dashboard),
            Route("/console/forward/replay", self.replay, methods=["POST"]),
            Route("/console/studies", self.studies),
            Route("/console/studies/{uid}", self.study),
            Route("/console/studies/{uid}/verify", self.verify_study, methods=["POST"]),
            Route("/console/thumbnail/{sop}", self.thumbnail),
            Route("/console/audit", self.audit),
            Route("/console/audit/export", self.audit_export),
            Route("/console/audit/verify", self.audit_verify, methods=["POST"]),
            Route("/console/sharing", self.sharing),
            Route("/console/sharing/consent/grant", self.consent_grant, methods=["POST"]),
            Route("/console/sharing/consent/revoke", self.consent_revoke, methods=["POST"]),
            Route("/console/patients/link", self.patient_link, methods=["POST"]),
            Route("/p/{token}", self.patient_page),
            Route("/p/{token}/proof.zip", self.patient_proof),
            Mount("/console/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ]


def _int(text: str | None, default: int = 0) -> int:
    return int(text) if text and text.isascii() and text.isdigit() and len(text) < 19 else default


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _sent_then_removed(archive: Path, folder: Path) -> Iterator[bytes]:
    """The file a chunk at a time; its folder removed when the last is sent or the client left
    (the generator is closed either way: ``finally`` runs)."""
    try:
        with archive.open("rb") as fp:
            while chunk := fp.read(1024 * 1024):
                yield chunk
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _zip(paths: list[Path], archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for path in paths:
            z.write(path, path.name)
    return archive


def _safe_name(name: str) -> str:
    safe = Path(name).name
    return safe if safe not in ("", ".", "..") else "export"


def _check_upload(name: str, data: bytes, proof_data: bytes, trusted: frozenset[bytes]) -> dict[str, Any]:
    """``audit verify`` on an uploaded export, its proof signed by this node's key or a registered
    institution's (``trusted``; any other key is BROKEN): a ZIP as the console exports it (a few
    members, unpacked to at most MAX_UPLOAD_BYTES), or the export and its proof as two files."""
    with tempfile.TemporaryDirectory(prefix="console-verify-") as tmp:
        folder = Path(tmp)
        target: Path | None = None
        if data[:4] == b"PK\x03\x04":
            try:
                with zipfile.ZipFile(io.BytesIO(data)) as z:
                    members = z.infolist()
                    if len(members) > ZIP_MEMBERS or sum(m.file_size for m in members) > MAX_UPLOAD_BYTES:
                        return {
                            "ok": False,
                            "summary": "not a ZIP the console made (too large)",
                            "findings": [],
                        }
                    names = {_safe_name(m.filename) for m in members}
                    for member in members:
                        safe = _safe_name(member.filename)
                        with z.open(member) as source, (folder / safe).open("wb") as sink:
                            shutil.copyfileobj(source, sink)
                        if not safe.endswith(".proof") and safe + ".proof" in names:
                            target = folder / safe
            except (zipfile.BadZipFile, OSError, ValueError):
                return {"ok": False, "summary": "not a ZIP the console made", "findings": []}
        else:
            target = folder / _safe_name(name)
            target.write_bytes(data)
            proof_path(target).write_bytes(proof_data)
        if target is None:
            return {"ok": False, "summary": "no export with its proof in the ZIP", "findings": []}
        report, statement = verify_export(target, trusted)
    findings = [f"{f.severity.upper()} {f.kind}: {f.message}" for f in report.findings]
    if report.ok:
        summary = (
            f"INTACT: {statement['count']} events ({statement['first_seq']}..{statement['last_seq']}), "
            f"signed by key {statement['key_id']}"
        )
    else:
        summary = f"BROKEN: {len(report.errors)} problem(s)"
    return {"ok": report.ok, "summary": summary, "findings": findings}


def _opted_in(node: Node, patient: str) -> bool:
    state = False
    for e in node.ledger.events_of_types(
        [EventType.PATIENT_RESEARCH_OPT_IN, EventType.PATIENT_RESEARCH_OPT_OUT]
    ):
        if e.patient_id == patient:
            state = e.type == EventType.PATIENT_RESEARCH_OPT_IN
    return state


def _thumbnail(path: Path) -> bytes:
    import pydicom

    from dicom_chain.carriers.picture.render import frames

    image = frames(pydicom.dcmread(path))[0]
    image.thumbnail((128, 128))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
