"""The log's HTTP API (web/api.py) answers as c2sp.org/tlog-witness says, status by status, and
its proofs check against the RFC 9162 verifiers."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pydicom
import pytest

from dicom_chain.block import utc_now
from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.config import Settings
from dicom_chain.keys import NodeKey
from dicom_chain.node import Node
from dicom_chain.sharing.registry import Registry
from dicom_chain.tlog import cosignature, merkle
from dicom_chain.tlog.checkpoint import Checkpoint, open_signed, origin_for
from dicom_chain.tlog.publishing import Publisher
from dicom_chain.tlog.witness import MAX_REQUEST_BYTES, format_request
from dicom_chain.tlog.witnessing import WitnessDesk, witness_name
from web.server import LogServer

from .conftest import SAMPLE_STUDY

LOG = NodeKey.generate()
ORIGIN = origin_for(LOG, "Hospital B")


def leaves(n: int, fork: bool = False) -> merkle.Leaves:
    return merkle.Leaves([merkle.leaf_hash(b"e%d" % i + (b"!" * (fork and i == 1))) for i in range(n)])


def signed(src: merkle.Leaves, size: int, key: NodeKey = LOG) -> str:
    return Checkpoint(ORIGIN, size, merkle.root(src, size)).sign(key)


@pytest.fixture
def node(tmp_path: Path, db_url: str) -> Iterator[Node]:
    n = Node.open(Settings(home=tmp_path / "w", db=db_url, institution="Hospital W"))
    public = tmp_path / "b.pub"
    public.write_text(LOG.public_key.hex())
    Registry(n.ledger, n.key).add(
        "Hospital B", ae_title="HOSP_B", host="127.0.0.1", port=11112, public_key_file=public,
        actor="test", now=utc_now(),
    )  # fmt: skip
    for path in sorted(SAMPLE_STUDY.glob("*.dcm"))[:3]:
        n.ingest(item_from_dataset(pydicom.dcmread(path)))
    yield n
    n.close()


@pytest.fixture
def client(node: Node) -> Iterator[httpx.Client]:
    server = LogServer(node, "127.0.0.1", 0)  # plain HTTP on loopback: the HTTPS path is test_web_publish's
    server.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as c:
            yield c
    finally:
        server.stop()


def post(client: httpx.Client, old: int, proof: list[bytes], note: str):
    return client.post("/witness/add-checkpoint", content=format_request(old, proof, note))


def test_add_checkpoint_answers_each_case_with_the_protocols_status(node: Node, client: httpx.Client):
    src = leaves(20)
    first = post(client, 0, [], signed(src, 5))
    assert first.status_code == 200
    line = first.text
    cosigned = signed(src, 5) + line
    assert cosignature.verify(cosigned, witness_name(node.key.key_id), node.key.public_key) > 0

    stale = post(client, 0, [], signed(src, 9))  # the witness is at 5 now
    assert stale.status_code == 409 and stale.headers["content-type"] == "text/x.tlog.size"
    assert stale.text == "5\n"
    assert post(client, 5, merkle.consistency_proof(src, 5, 9), signed(src, 9)).status_code == 200
    assert post(client, 9, [], signed(src, 9)).status_code == 200  # the same checkpoint again

    assert post(client, 9, [], signed(leaves(20, fork=True), 9)).status_code == 409  # two roots at 9
    forked = leaves(20, fork=True)
    bad = post(client, 9, merkle.consistency_proof(forked, 9, 12), signed(forked, 12))
    assert bad.status_code == 422
    assert post(client, 10, [], signed(src, 9)).status_code == 400  # old beyond the checkpoint
    stranger = signed(src, 12, NodeKey.generate())
    assert post(client, 9, merkle.consistency_proof(src, 9, 12), stranger).status_code == 403
    other = Checkpoint("someone.example/log", 3, merkle.root(src, 3)).sign(LOG)
    assert post(client, 0, [], other).status_code == 404
    assert client.post("/witness/add-checkpoint", content=b"old x\n\nnonsense").status_code == 400
    for digits in ("\u00b2", "\u0661", "09"):  # str.isdigit says yes to the first two; not decimal sizes
        body = f"old {digits}\n\n".encode() + signed(src, 9).encode()
        assert client.post("/witness/add-checkpoint", content=body).status_code == 400
    big = client.post("/witness/add-checkpoint", content=b"x" * (MAX_REQUEST_BYTES + 1))
    assert big.status_code == 413
    # the split views are one fault on the record (both depart from what was cosigned at 9)
    faults = [e for e in node.ledger.iter_events() if e.type == "log.split-view"]
    assert len(faults) == 1 and faults[0].details["institution"] == "Hospital B"
    assert post(client, 9, merkle.consistency_proof(src, 9, 20), signed(src, 20)).status_code == 200


def test_the_published_checkpoint_and_proofs_check_offline(node: Node, client: httpx.Client):
    assert client.get("/log/checkpoint").status_code == 404  # nothing cosigned by a quorum yet
    publisher = Publisher(node, "Hospital W", quorum=0)
    cp, note_text = publisher.checkpoint()
    assert publisher.publish(cp, note_text, []) is not None
    served = client.get("/log/checkpoint")
    assert served.status_code == 200 and open_signed(served.text, node.key.public_key) == cp

    proof = [base64.b64decode(x) for x in client.get(f"/log/consistency?old=2&new={cp.size}").text.split()]
    assert merkle.verify_consistency(2, cp.size, proof, EventTreeRoot(node, 2), cp.root)
    found = client.get(f"/log/inclusion?seq=3&size={cp.size}").json()
    assert "event" not in found  # the event names a patient: only its hash leaves the node
    [third] = [e for e in node.ledger.iter_events() if e.seq == 3]
    leaf = merkle.leaf_hash(third.canonical_bytes())
    assert base64.b64decode(found["leaf_hash"]) == leaf
    assert merkle.verify_inclusion(2, cp.size, leaf, [base64.b64decode(p) for p in found["proof"]], cp.root)
    assert client.get(f"/log/consistency?old=1&new={cp.size + 1000}").status_code == 400
    assert client.get("/log/inclusion?seq=x&size=3").status_code == 400
    assert client.get("/log/consistency?old=\u00b2&new=3").status_code == 400
    at_two = client.get("/log/checkpoint?size=2")  # signed now, at an earlier size: a witness asks
    assert at_two.status_code == 200
    then = open_signed(at_two.text, node.key.public_key)
    assert then.size == 2 and then.root == EventTreeRoot(node, 2)
    assert client.get(f"/log/checkpoint?size={cp.size + 1}").status_code == 404
    assert client.get(f"/log/inclusion?seq={cp.size + 1}&size={cp.size}").status_code == 404


def EventTreeRoot(node: Node, size: int) -> bytes:
    from dicom_chain.tlog.store import EventTree

    return EventTree(node.ledger).root(size)


def test_requests_at_once_advance_the_witness_once(node: Node, client: httpx.Client):
    """c2sp.org/tlog-witness: the check of the old size and the update are one atomic step. Eight
    clients offer the same growth from the same old size at once: one is cosigned, the rest are
    told the witness's new size (409), and the stored state is the one checkpoint."""
    src = leaves(40)
    assert post(client, 0, [], signed(src, 4)).status_code == 200
    body = format_request(4, merkle.consistency_proof(src, 4, 30), signed(src, 30))
    url = str(client.base_url) + "/witness/add-checkpoint"

    def offer(_: int) -> httpx.Response:
        with httpx.Client(timeout=10) as own:
            return own.post(url, content=body)

    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(r.status_code for r in pool.map(offer, range(8)))
    assert statuses == [200] + [409] * 7
    seen = WitnessDesk(node).seen(ORIGIN)
    assert seen is not None and seen.size == 30 and seen.root == merkle.root(src, 30)
