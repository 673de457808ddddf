"""The web console (web/console/app.py) over real HTTP: login and its record, CSRF, roles, each
page's content, a study going from VERIFIED to ALTERED with the break drawn, an audit export
checked back, and a patient's link. The browser-level tests are tests/test_console_browser.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest

from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.config import Settings
from dicom_chain.node import Node
from dicom_chain.users import PatientLinks, Users
from dicom_chain.vocab import EventType
from web.server import LogServer

from .conftest import SAMPLE_STUDY

PASSWORD = "correct horse battery"


@dataclass
class Site:
    node: Node
    base: str
    study_uid: str
    stored: list[Path]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    node = Node.open(Settings(home=tmp_path / "n", institution="Hospital A"))
    stored = [
        node.ingest(item_from_dataset(pydicom.dcmread(p))).path
        for p in sorted(SAMPLE_STUDY.glob("*.dcm"))[:6]
    ]
    users = Users(node.ledger, node.key)
    for name, role in (("alice", "administrator"), ("rita", "radiologist"), ("carl", "compliance")):
        users.add(name, role, PASSWORD, actor="test")
    server = LogServer(node, "127.0.0.1", 0)
    server.start()
    try:
        uid = str(pydicom.dcmread(stored[0]).StudyInstanceUID)
        yield Site(node, f"http://127.0.0.1:{server.port}", uid, stored)
    finally:
        server.stop()
        node.close()


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page[:500]
    return found[1]


def login(site: Site, name: str, password: str = PASSWORD) -> httpx.Client:
    client = httpx.Client(base_url=site.base, follow_redirects=True, timeout=30)
    page = client.get("/console/login").text
    answer = client.post("/console/login", data={"csrf": _csrf(page), "name": name, "password": password})
    assert answer.status_code == 200 and answer.url.path == "/console/", answer.text[:400]
    return client


def test_login_is_recorded_and_pages_need_it(site: Site):
    anonymous = httpx.Client(base_url=site.base, follow_redirects=False, timeout=30)
    for path in ("/console/", "/console/studies", "/console/audit", "/console/sharing"):
        assert anonymous.get(path).headers["location"] == "/console/login"
    page = anonymous.get("/console/login").text
    wrong = anonymous.post(
        "/console/login", data={"csrf": _csrf(page), "name": "alice", "password": "nope nope nope"}
    )
    assert wrong.status_code == 401 and "wrong name or password" in wrong.text.lower()
    forged = anonymous.post("/console/login", data={"csrf": "guess", "name": "alice", "password": PASSWORD})
    assert (
        forged.status_code == 403
    )  # no CSRF token of this session: refused before the password is looked at
    client = login(site, "alice")
    logins = [e for e in site.node.ledger.iter_events() if e.type == EventType.USER_LOGIN]
    assert [(e.outcome, e.details["user"]) for e in logins] == [
        ("minor-failure", "alice"),
        ("success", "alice"),
    ]
    assert "password" not in str(logins[0].details).lower() or PASSWORD not in str(logins[0].details)
    dashboard = client.get("/console/").text
    assert "Dashboard" in dashboard and "not running" in dashboard  # no gateway in this test
    client.post("/console/logout", data={"csrf": _csrf(dashboard)})
    assert client.get("/console/", follow_redirects=False).status_code == 303
    assert any(e.type == EventType.USER_LOGOUT for e in site.node.ledger.iter_events())


def test_roles_decide_pages(site: Site):
    rita = login(site, "rita")
    assert rita.get("/console/studies").status_code == 200
    assert rita.get("/console/audit").status_code == 403
    assert rita.get("/console/sharing").status_code == 403
    carl = login(site, "carl")
    assert carl.get("/console/audit").status_code == 200
    sharing = carl.get("/console/sharing").text
    assert "Grant a consent" not in sharing and "A patient's link" in sharing  # compliance: links, no changes


def test_a_study_verified_then_altered_with_the_break_drawn(site: Site):
    client = login(site, "alice")
    found = client.get("/console/studies", params={"patient": "DC-0001"}).text
    assert site.study_uid in found
    assert site.study_uid not in client.get("/console/studies", params={"patient": "NOBODY"}).text
    page = client.get(f"/console/studies/{site.study_uid}").text
    verified = client.post(f"/console/studies/{site.study_uid}/verify", data={"csrf": _csrf(page)}).text
    assert "all VERIFIED" in verified and verified.count(">VERIFIED<") == 6 and "BREAK" not in verified
    data = bytearray(site.stored[3].read_bytes())
    data[-20] ^= 0xFF  # a pixel changed behind the gateway's back
    site.stored[3].write_bytes(bytes(data))
    altered = client.post(f"/console/studies/{site.study_uid}/verify", data={"csrf": _csrf(page)}).text
    assert "1 ALTERED or MISSING" in altered and ">ALTERED<" in altered
    assert "BREAK" in altered and 'stroke-dasharray="4 3"' in altered  # the link into it drawn broken
    thumb = client.get(f"/console/thumbnail/{pydicom.dcmread(site.stored[0]).SOPInstanceUID}")
    assert thumb.status_code == 200 and thumb.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_audit_export_downloads_with_its_proof_and_checks_back(site: Site):
    client = login(site, "carl")
    exported = client.get("/console/audit/export", params={"format": "json"})
    assert exported.status_code == 200 and exported.headers["content-type"] == "application/zip"
    page = client.get("/console/audit").text
    intact = client.post(
        "/console/audit/verify", data={"csrf": _csrf(page)}, files={"export": ("a.zip", exported.content)}
    )
    assert "INTACT" in intact.text
    import io
    import zipfile

    members = zipfile.ZipFile(io.BytesIO(exported.content))
    names = members.namelist()
    export_name = next(n for n in names if not n.endswith(".proof"))
    text = members.read(export_name).decode()
    assert "success" in text
    text = text.replace("success", "failure", 1)  # one event's outcome rewritten in the export
    broken = client.post(
        "/console/audit/verify",
        data={"csrf": _csrf(page)},
        files={
            "export": (export_name, text.encode()),
            "proof": (export_name + ".proof", members.read(export_name + ".proof")),
        },
    )
    assert "BROKEN" in broken.text
    assert "user.login" in client.get("/console/audit", params={"event": "user.login"}).text
    assert "instance.received" in client.get("/console/audit", params={"institution": "Hospital A"}).text
    assert "No event matches" in client.get("/console/audit", params={"institution": "Nowhere"}).text


def test_a_patients_link_shows_their_access_and_expires_with_its_token(site: Site):
    link = PatientLinks(site.node.ledger, site.node.key).issue("DC-0001", actor="test")
    page = httpx.get(f"{site.base}/p/{link.token}", timeout=30)
    assert page.status_code == 200 and "received" in page.text and "Who looked at your images" in page.text
    assert httpx.get(f"{site.base}/p/{link.token}x", timeout=30).status_code == 403
    proof = httpx.get(f"{site.base}/p/{link.token}/proof.zip", timeout=30)
    assert proof.status_code == 200 and proof.content[:2] == b"PK"
    opened = [e for e in site.node.ledger.iter_events() if e.type == EventType.PATIENT_LINK_OPENED]
    assert opened and all(e.patient_id == "DC-0001" for e in opened)


def test_admins_grant_and_revoke_consents_and_make_links_each_an_event(site: Site, tmp_path: Path):
    from dicom_chain.sharing.registry import Registry

    other = tmp_path / "b.pem"
    from dicom_chain.keys import NodeKey

    other.write_text(NodeKey.generate().public_key.hex())
    Registry(site.node.ledger, site.node.key).add(
        "Hospital B",
        ae_title="HB",
        host="127.0.0.1",
        port=104,
        public_key_file=other,
        actor="t",
        now="2026-01-01",
    )
    client = login(site, "alice")
    page = client.get("/console/sharing").text
    form = {"csrf": _csrf(page), "patient_id": "DC-0001", "to": "Hospital B", "purpose": "treatment"}
    granted = client.post("/console/sharing/consent/grant", data={**form, "until": "2099-01-01"}).text
    assert "consent granted" in granted and "in force" in granted
    consent_id = re.search(r'name="consent_id" value="([^"]+)"', granted)[1]
    revoked = client.post(
        "/console/sharing/consent/revoke", data={"csrf": _csrf(granted), "consent_id": consent_id}
    ).text
    assert "consent revoked" in revoked
    made = client.post(
        "/console/patients/link", data={"csrf": _csrf(revoked), "patient_id": "DC-0001", "days": "7"}
    ).text
    # no --console-url: the path only (the Host header is the client's to write, never used)
    path = re.search(r'href="(/p/[^"]+)"', made)[1]
    assert httpx.get(site.base + path, timeout=30).status_code == 200
    kinds = [e.type for e in site.node.ledger.iter_events()]
    assert {EventType.CONSENT_GRANTED, EventType.CONSENT_REVOKED, EventType.PATIENT_LINK_ISSUED} <= set(kinds)
    assert all(
        e.actor == "console:alice"
        for e in site.node.ledger.iter_events()
        if e.type == EventType.CONSENT_GRANTED
    )


def test_the_review_s_holes_stay_shut(site: Site):
    """Each found by a review of the first cut: a kept cookie after logout, UIDs taken as
    wildcards, forms of any size read before anything is checked, logins at once past the
    throttle, exports signed by another key called intact, and pages without security headers."""
    client = login(site, "alice")
    kept = dict(client.cookies)
    page = client.get("/console/").text
    for header in ("content-security-policy", "x-content-type-options", "referrer-policy"):
        assert header in client.get("/console/").headers
    client.post("/console/logout", data={"csrf": _csrf(page)})
    replay = httpx.Client(base_url=site.base, cookies=kept, follow_redirects=False, timeout=30)
    assert replay.get("/console/audit").status_code == 303  # the copied cookie opens nothing now

    admin = login(site, "alice")
    for uid in ("*", "1.2.*", "1.2\\3.4", "<b>"):
        assert admin.get(f"/console/studies/{uid}").status_code == 404
    assert admin.get("/console/thumbnail/*").status_code == 404
    big = admin.post("/console/sharing/consent/grant", data={"csrf": "x", "patient_id": "p" * 100_000})
    assert big.status_code == 413
    assert admin.get("/console/audit/export", params={"format": "csv", "since": "garbage"}).status_code == 400

    from concurrent.futures import ThreadPoolExecutor

    fresh = httpx.Client(base_url=site.base, timeout=30)
    token = _csrf(fresh.get("/console/login").text)

    def attempt(_: int) -> int:
        return fresh.post(
            "/console/login", data={"csrf": token, "name": "rita", "password": "not it at all"}
        ).status_code

    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(attempt, range(20)))
    assert codes.count(401) <= 5 and codes.count(429) >= 15  # counted before the check, not after
    failed = [
        e
        for e in site.node.ledger.iter_events()
        if e.type == EventType.USER_LOGIN and e.details["user"] == "rita"
    ]
    assert len(failed) <= 5  # a flood of guesses does not flood the ledger

    from dicom_chain.audit import AuditFilter, export
    from dicom_chain.keys import NodeKey

    stranger = NodeKey.generate()
    out = Path(site.stored[0]).parent.parent / "forged.jsonl"
    export(site.node.ledger, stranger, "json", out, AuditFilter(), actor="someone", source_id="elsewhere")
    audit = admin.get("/console/audit").text
    forged = admin.post(
        "/console/audit/verify",
        data={"csrf": _csrf(audit)},
        files={
            "export": (out.name, out.read_bytes()),
            "proof": (out.name + ".proof", Path(str(out) + ".proof").read_bytes()),
        },
    )
    assert "BROKEN" in forged.text and "INTACT" not in forged.text  # signed, but not by this node
