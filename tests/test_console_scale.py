"""The console at size (qr/browse.py, web/console/app.py): a 2,000-instance study and 100,000
audit events are shown a page at a time, every row reachable by following the pages and none
twice, and the whole trail exported through the page, streamed as the CLI streams it, checks."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.config import Settings
from dicom_chain.events import EventDraft
from dicom_chain.ledger import append_events
from dicom_chain.node import Node
from dicom_chain.qr import browse
from dicom_chain.synthetic import StudySpec, ct_study
from dicom_chain.users import Users
from dicom_chain.vocab import EventType
from web.server import LogServer

from .peers import wait_until

INSTANCES = 2000
EVENTS = 100_000
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, str, str]]:
    node = Node.open(Settings(home=tmp_path_factory.mktemp("big"), institution="Hospital Big"))
    study_uid = ""
    for ds in ct_study(StudySpec(seed=7, instances=INSTANCES, rows=8, columns=8)):
        study_uid = str(node.ingest(item_from_dataset(ds)).block.header.study_instance_uid)
    done = node.ledger.event_count()
    while done < EVENTS:  # queries recorded in bulk, as a busy reading room would
        k = min(5000, EVENTS - done)
        drafts = [
            EventDraft(type=EventType.QUERY_FIND, actor="RADIOLOGY", details={"matches": i % 7})
            for i in range(k)
        ]
        with node.ledger.db.writing() as session:
            append_events(session, node.key, drafts)
        done += k
    Users(node.ledger, node.key).add("carl", "compliance", PASSWORD, actor="test")
    server = LogServer(node, "127.0.0.1", 0)
    server.start()
    try:
        yield node, study_uid, f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()
        node.close()


def _client(base: str) -> httpx.Client:
    client = httpx.Client(base_url=base, follow_redirects=True, timeout=120)
    page = client.get("/console/login").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)[1]
    assert (
        client.post("/console/login", data={"csrf": csrf, "name": "carl", "password": PASSWORD}).status_code
        == 200
    )
    return client


def test_a_2000_instance_study_is_paged_instances_and_chain(big):
    node, uid, base = big
    seen, after, pages = set(), 0, 0
    while True:
        page = browse.instances(node.db, uid, after=after)
        assert len(page.rows) <= browse.PAGE
        seen |= {r["SOPInstanceUID"] for r in page.rows}
        pages += 1
        if page.next_after is None:
            break
        after = page.next_after
    assert len(seen) == INSTANCES and pages == INSTANCES // browse.PAGE
    indexes, after = [], -1
    while True:
        chain = browse.chain(node.ledger, uid, after=after)
        assert len(chain.links) <= browse.CHAIN_PAGE
        indexes += [link.study_index for link in chain.links]
        if chain.next_after is None:
            break
        after = chain.next_after
    assert indexes == list(range(INSTANCES))  # every block once, in study order
    client = _client(base)
    shown = client.get(f"/console/studies/{uid}").text
    assert shown.count('<td class="hash">') == browse.PAGE and "Next instances" in shown
    assert shown.count("<rect ") == browse.CHAIN_PAGE and "Next blocks" in shown
    listed = client.get("/console/studies").text
    assert f"{INSTANCES}</td>" in listed  # the study's instance count, from the index


def test_100k_audit_events_are_paged_and_exported_whole(big):
    _, _, base = big
    client = _client(base)
    first = client.get("/console/audit").text
    rows = re.findall(r"<tr><td>(\d+)</td>", first)
    assert len(rows) == 100 and "Older events" in first
    older = re.search(r'href="(/console/audit\?[^"]*before=\d+)"', first)[1].replace("&amp;", "&")
    second = re.findall(r"<tr><td>(\d+)</td>", client.get(older).text)
    assert len(second) == 100 and int(second[0]) == int(rows[-1]) - 1  # the next page starts where this ended
    exported = client.get("/console/audit/export", params={"format": "json"})
    assert exported.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(exported.content))
    [name] = [n for n in archive.namelist() if not n.endswith(".proof")]
    assert sum(1 for _ in io.TextIOWrapper(archive.open(name))) >= EVENTS
    csrf = re.search(r'name="csrf" value="([^"]+)"', first)[1]
    checked = client.post(
        "/console/audit/verify", data={"csrf": csrf}, files={"export": ("a.zip", exported.content)}
    )
    assert "INTACT" in checked.text


def test_a_tmp_export_folder_is_removed_once_sent(big, tmp_path: Path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _, _, base = big
    client = _client(base)
    assert (
        client.get("/console/audit/export", params={"format": "csv", "event": "user.login"}).status_code
        == 200
    )
    # removed by the response's background task, just after the last byte went out
    assert wait_until(lambda: not list(tmp_path.glob("console-export-*")), 10)
