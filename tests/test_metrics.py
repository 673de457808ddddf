"""/healthz and /metrics scraped from a running gateway, after DCMTK stored, was refused and queried."""

from __future__ import annotations

import socket
import socketserver
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from dicom_chain.config import Settings
from dicom_chain.node import Node
from scp.metrics import MAX_AE_LABELS, OTHER_AE, AeLabels
from scp.server import Gateway

from .conftest import SAMPLE_STUDY
from .peers import free_port, require_tool, wait_until

pytestmark = pytest.mark.dcmtk

DCMTK_TIMEOUT_S = 60


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as (name, sorted labels) -> value, parsed as Prometheus would."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def dcmtk(tool: str, *args: str) -> subprocess.CompletedProcess:
    binary = require_tool(tool, "dcmtk")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=DCMTK_TIMEOUT_S)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def forwarding_gateway(tmp_path) -> Iterator[Gateway]:
    """A gateway whose forward process (a child, as in production) forwards to a closed port."""
    settings = Settings(
        home=tmp_path / "gw",
        host="127.0.0.1",
        port=free_port(),
        metrics_port=free_port(),
        forward=(f"DOWN@127.0.0.1:{closed_port()}",),
        forward_workers=1,
        peers=("CT_SCANNER=store", "WS=find"),
    )
    node = Node.open(settings)
    gateway = Gateway(node)
    gateway.start()
    yield gateway
    gateway.stop()
    node.close()


def test_a_running_gateway_is_scraped(forwarding_gateway):
    gateway = forwarding_gateway
    [down] = gateway.settings.forward
    port, metrics_port = gateway.settings.port, gateway.settings.metrics_port
    files = sorted(SAMPLE_STUDY.glob("*.dcm"))

    assert scrape(metrics_port, "/healthz") == (200, "ok\n")
    stored = dcmtk(
        "storescu", "-aet", "CT_SCANNER", "-aec", "DICOMCHAIN", "127.0.0.1", str(port), *map(str, files)
    )
    assert stored.returncode == 0, stored.stderr
    dcmtk("storescu", "-aet", "WS", "-aec", "DICOMCHAIN", "127.0.0.1", str(port), str(files[0]))  # 0124
    found = dcmtk(
        "findscu", "-S", "-aet", "WS", "-aec", "DICOMCHAIN", "-k", "QueryRetrieveLevel=STUDY",
        "-k", "StudyInstanceUID", "127.0.0.1", str(port),
    )  # fmt: skip
    assert found.returncode == 0, found.stderr

    def failing() -> dict:
        return samples(scrape(metrics_port)[1])

    # The forward process (a child) fails on its own time; the queue is read from the database.
    cause = (
        "dicom_chain_forward_failures",
        (("cause", "refused"), ("destination", down), ("state", "waiting")),
    )
    assert wait_until(lambda: failing().get(cause) == len(files), 60), failing()
    status, text = scrape(metrics_port)
    assert status == 200
    got = samples(text)
    assert got[("dicom_chain_instances_received_total", (("calling_ae", "CT_SCANNER"),))] == len(files)
    assert got[("dicom_chain_instances_stored_total", (("calling_ae", "CT_SCANNER"),))] == len(files)
    assert got[("dicom_chain_instances_received_total", (("calling_ae", "WS"),))] == 1
    assert got[("dicom_chain_instances_refused_total", (("calling_ae", "WS"), ("status", "0x0124")))] == 1
    assert ("dicom_chain_instances_stored_total", (("calling_ae", "WS"),)) not in got
    assert got[("dicom_chain_qr_requests_total", (("operation", "find"), ("outcome", "success")))] == 1
    assert got[("dicom_chain_qr_duration_seconds_count", (("operation", "find"),))] == 1
    assert got[("dicom_chain_qr_duration_seconds_sum", (("operation", "find"),))] > 0
    assert got[("dicom_chain_forward_queue_depth", (("destination", down),))] == len(files)
    assert got[("dicom_chain_forward_oldest_age_seconds", (("destination", down),))] > 0
    assert got[("dicom_chain_forward_dead_letters", (("destination", down),))] == 0
    [blocks] = [v for k, v in got.items() if k[0] == "dicom_chain_ledger_blocks"]
    assert blocks == len(files) == gateway.node.ledger.block_count()
    assert got[("dicom_chain_database_up", ())] == 1
    assert scrape(metrics_port, "/nothing")[0] == 404


def test_a_refused_query_counts_as_a_failure(make_gateway):
    gateway = make_gateway(metrics_port=free_port(), peers=("CT_SCANNER=store",))
    scu = AE(ae_title="CT_SCANNER")
    scu.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = scu.associate("127.0.0.1", gateway.settings.port, ae_title="DICOMCHAIN")
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    statuses = [
        int(s.Status) for s, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
    ]
    assoc.release()
    assert statuses == [0x0124]
    got = samples(scrape(gateway.settings.metrics_port)[1])
    assert got[("dicom_chain_qr_requests_total", (("operation", "find"), ("outcome", "failure")))] == 1


def test_healthz_is_503_when_the_listener_is_down_or_the_database_does_not_answer(make_gateway):
    gateway = make_gateway(metrics_port=free_port())
    metrics_port = gateway.settings.metrics_port
    assert scrape(metrics_port, "/healthz") == (200, "ok\n")
    original = gateway.node.ledger.event_head

    def away() -> tuple[int, str]:
        raise ConnectionError("database planted away")

    gateway.node.ledger.event_head = away
    try:
        status, text = scrape(metrics_port, "/healthz")
        assert status == 503 and "database does not answer: database planted away" in text
        metrics = samples(scrape(metrics_port)[1])
        assert metrics[("dicom_chain_database_up", ())] == 0  # the scrape still answers
    finally:
        gateway.node.ledger.event_head = original
    socketserver.BaseServer.shutdown(gateway.server)  # its loop ends (a crash would end it too)
    assert scrape(metrics_port, "/healthz") == (503, "the DICOM listener is not serving\n")


def test_calling_ae_labels_are_bounded():
    labels = AeLabels()

    class Event:
        def __init__(self, ae: str) -> None:
            self.assoc = type("A", (), {"requestor": type("R", (), {"ae_title": ae})()})()

    names = [labels(Event(f"AE{i}")) for i in range(MAX_AE_LABELS + 5)]  # type: ignore[arg-type]
    assert names[:MAX_AE_LABELS] == [f"AE{i}" for i in range(MAX_AE_LABELS)]
    assert set(names[MAX_AE_LABELS:]) == {OTHER_AE}
    assert labels(Event("AE0")) == "AE0"  # type: ignore[arg-type]


def test_metrics_port_in_use_is_one_line_at_start(node):
    from dataclasses import replace

    from dicom_chain.errors import StartupError

    taken = socket.create_server(("127.0.0.1", 0))
    settings = replace(node.settings, host="127.0.0.1", port=free_port(), metrics_port=taken.getsockname()[1])
    gateway = Gateway(node, settings)
    try:
        with pytest.raises(
            StartupError, match=r"^--metrics-port \d+ is already in use on 127.0.0.1: choose another$"
        ):
            gateway.start()
    finally:
        gateway.stop()
        taken.close()
