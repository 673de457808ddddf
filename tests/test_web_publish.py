"""Three nodes on loopback (web/publish.py, web/api.py over HTTPS): each publishes checkpoints its
two peers cosign through the c2sp.org/tlog-witness endpoint, and a node whose history is rewritten
behind its back is caught by both at its next round, with evidence ``log verify-proof`` confirms
offline and a score that falls."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner

from dicom_chain.block import utc_now
from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.cli import main
from dicom_chain.config import Settings
from dicom_chain.node import Node
from dicom_chain.sharing.registry import Registry
from dicom_chain.sharing.service import score
from dicom_chain.tlog import cosignature
from dicom_chain.tlog.checkpoint import open_signed
from dicom_chain.tlog.publishing import Publisher, latest_published
from dicom_chain.tlog.witnessing import witness_name
from dicom_chain.verify import verify_node
from dicom_chain.vocab import EventType
from web.publish import publish_round
from web.server import LogServer

from .conftest import SAMPLE_STUDY
from .history import rewrite_history
from .peers import self_signed

FILES = sorted(SAMPLE_STUDY.glob("*.dcm"))


@dataclass
class Site:
    name: str
    node: Node
    server: LogServer
    cert: Path
    publisher: Publisher

    @property
    def institution(self) -> str:
        return f"Hospital {self.name}"

    def ingest(self, index: int) -> None:
        self.node.ingest(item_from_dataset(pydicom.dcmread(FILES[index])))


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[dict[str, Site]]:
    made: dict[str, Site] = {}
    try:
        for name in "ABC":
            home = tmp_path / name
            home.mkdir()
            node = Node.open(Settings(home=home, institution=f"Hospital {name}"))
            cert, key = self_signed(home, "log")
            server = LogServer(node, "127.0.0.1", 0, certfile=str(cert), keyfile=str(key))
            server.start()
            made[name] = Site(name, node, server, cert, Publisher(node, f"Hospital {name}", quorum=2))
            for i in range(3):
                made[name].ingest(i)
        for site in made.values():
            registry = Registry(site.node.ledger, site.node.key)
            for other in made.values():
                if other is site:
                    continue
                public = site.node.settings.home / f"{other.name}.pub"
                public.write_text(other.node.key.public_key.hex())
                registry.add(
                    other.institution, ae_title=f"HOSP_{other.name}", host="127.0.0.1", port=11112,
                    public_key_file=public, tls_cert=other.cert,
                    log_url=f"https://localhost:{other.server.port}", actor="test", now=utc_now(),
                )  # fmt: skip
        yield made
    finally:
        for site in made.values():
            site.server.stop()
            site.node.close()


def test_three_nodes_cosign_each_other_and_catch_a_history_rewritten_behind_ones_back(
    sites: dict[str, Site], tmp_path: Path
):
    for site in sites.values():
        done = publish_round(site.publisher)
        assert sorted(done.cosigned_by) == sorted(o.institution for o in sites.values() if o is not site)
        assert done.published is not None and done.published.cosigners == 2
        for other in sites.values():
            if other is not site:  # each cosignature verifies under the witness's own key
                name = witness_name(other.node.key.key_id)
                assert cosignature.verify(done.published.signed, name, other.node.key.public_key) > 0
    for site in sites.values():  # the logs grow: the witnesses need (and check) consistency proofs
        site.ingest(4)
    for site in sites.values():
        assert publish_round(site.publisher).published is not None

    a = sites["A"]
    before = latest_published(a.node)
    assert before is not None
    rewrite_history(a.node, 2, "nothing happened")  # an insider rewrites and re-signs A's history
    assert verify_node(a.node.ledger, a.node.storage).ok  # A's ledger holds together: only witnesses can tell
    a.ingest(5)
    caught = publish_round(a.publisher)
    assert caught.cosigned_by == [] and caught.published is None
    assert all("422" in why for why in caught.failed.values())
    assert latest_published(a.node) == before  # nothing new published for A

    for name in "BC":
        witness = sites[name].node
        [event] = [e for e in witness.ledger.iter_events() if e.type == EventType.LOG_SPLIT_VIEW]
        assert event.details["institution"] == "Hospital A"
        evidence = event.details["evidence"]
        old, new = (open_signed(x, a.node.key.public_key) for x in (evidence["old"], evidence["new"]))
        assert old.size == new.size and old.root != new.root  # A signed both: B asked A for the second
        proof = tmp_path / f"evidence-{name}.json"
        proof.write_text(json.dumps(evidence))
        key = tmp_path / "a.pub"
        key.write_text(a.node.key.public_key.hex())
        checked = CliRunner().invoke(main, ["log", "verify-proof", str(proof), "--public-key", str(key)])
        assert checked.exit_code == 0, checked.output
        assert "two histories" in checked.output
        a_score = score(witness, "institution", "Hospital A", utc_now()).value
        c_or_b = "Hospital C" if name == "B" else "Hospital B"
        assert a_score < score(witness, "institution", c_or_b, utc_now()).value - 30
    again = publish_round(a.publisher)  # A keeps trying: the fault is on the record once
    assert again.published is None
    for name in "BC":
        assert sum(e.type == EventType.LOG_SPLIT_VIEW for e in sites[name].node.ledger.iter_events()) == 1
    for name in "BC":  # the honest nodes go on publishing; A still witnesses them faithfully
        sites[name].ingest(6)
        done = publish_round(sites[name].publisher)
        assert done.published is not None and len(done.cosigned_by) == 2
