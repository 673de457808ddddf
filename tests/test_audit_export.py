"""Audit exports of a ledger built by really running the gateway: receive, forward, query, move,
an association rejected; every format parsed back and checked against the event log, verified
offline, and found out when tampered with. The live syslog feed of the same run is checked too."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicom_chain.audit import FORMATS, AuditFilter, atna, export, fhir, proof_path, verify_export
from dicom_chain.audit import syslog as framing
from dicom_chain.config import Settings
from dicom_chain.node import Node
from dicom_chain.synthetic import StudySpec, ct_study

from .gateways import InProcessGateway
from .peers import free_port

SCHEMA = etree.RelaxNG(etree.parse(str(Path(__file__).parent / "schemas" / "dicom-audit-message.rng")))
ODD_PATIENT = '=HYPERLINK("x"),Müller;\n2'  # a formula, a comma, a quote, non-ASCII and a newline


class StoreSCP:
    def __init__(self, ae_title: str) -> None:
        self.count = 0
        self.port = free_port()
        self.ae = AE(ae_title=ae_title)
        self.ae.add_supported_context(CTImageStorage)
        self.ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.on_store)]
        )

    def on_store(self, _event: evt.Event) -> int:
        self.count += 1
        return 0x0000


class UdpRepository(threading.Thread):
    """An audit record repository on loopback: keeps every datagram."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.messages: list[bytes] = []
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                self.messages.append(self.sock.recv(70_000))
            except TimeoutError:
                continue


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert predicate()


def _scu(ae_title: str, port: int):
    scu = AE(ae_title=ae_title)
    for context in (
        Verification,
        CTImageStorage,
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelMove,
    ):
        scu.add_requested_context(context)
    return scu.associate("127.0.0.1", port, ae_title="DICOMCHAIN")


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, UdpRepository]]:
    """A gateway that lived: it received, forwarded, answered a query, moved a study, turned one away."""
    pacs, workstation, repository = StoreSCP("PACS"), StoreSCP("WS"), UdpRepository()
    repository.start()
    home = tmp_path_factory.mktemp("audit")
    port = free_port()
    settings = Settings(
        home=home,
        institution="St. Audit",
        forward=(f"PACS@127.0.0.1:{pacs.port}",),
        move_destinations=(f"WS@127.0.0.1:{workstation.port}",),
        host="127.0.0.1",
        port=port,
        allow=("MODALITY",),  # store only
        peers=("RADIOLOGIST=find,move,get",),
        audit_syslog=f"udp://127.0.0.1:{repository.port}",
    )
    node = Node.open(settings)
    gateway = InProcessGateway(node)
    gateway.start()
    try:
        study = list(ct_study(StudySpec(seed=31, instances=4, rows=8, columns=8, patient_id=ODD_PATIENT)))
        assoc = _scu("MODALITY", port)
        assert all(assoc.send_c_store(ds).Status == 0 for ds in study)
        assoc.release()
        query = Dataset()
        query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", study[0].StudyInstanceUID
        assoc = _scu("RADIOLOGIST", port)
        assert len(list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))) == 2
        moved = list(assoc.send_c_move(query, "WS", StudyRootQueryRetrieveInformationModelMove))
        assert moved[-1][0].Status == 0
        assoc.release()
        assert not _scu("STRANGER", port).is_established
        wait_for(lambda: node.outbox.pending_count() == 0, timeout=60)  # forwarded and settled
        assert pacs.count == 4 and workstation.count == 4
        # the study's receipts went out once its association ended, not only when the gateway stopped
        wait_for(lambda: any(_is_transfer(m) for m in repository.messages), timeout=20)
    finally:
        gateway.stop()
        pacs.ae.shutdown()
        workstation.ae.shutdown()
    assert gateway.audit_feed is not None
    fed = node.ledger.event_head()[0] - gateway.audit_feed.head_at_start  # service.start to service.stop
    wait_for(lambda: events_fed(repository.messages) == fed)  # sent by stop(); received soon after
    repository.running = False
    yield node, repository
    node.close()


def _is_transfer(datagram: bytes) -> bool:
    return atna.transfer_of(etree.fromstring(framing.parse(datagram)[1])) is not None


def events_fed(messages: list[bytes]) -> int:
    """Events the feed's messages stand for: one each, or a study's receipts in one transfer."""
    total = 0
    for datagram in messages:
        summary = atna.transfer_of(etree.fromstring(framing.parse(datagram)[1]))
        total += 1 if summary is None else summary["count"]
    return total


def event_log(node: Node) -> list[tuple]:
    return [
        (e.seq, h, e.type, e.outcome, e.actor, e.patient_id, e.study_uid)
        for e, h in node.ledger.iter_events_with_hash()
    ]


def test_the_run_left_every_kind_of_event(ran):
    node, _ = ran
    types = {row[2] for row in event_log(node)}
    assert {
        "service.start",
        "instance.received",
        "instance.forwarded",
        "query.find",
        "retrieve.move",
        "association.rejected",
        "service.stop",
    } <= types


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_format_reads_back_as_the_event_log_and_verifies(ran, tmp_path, fmt):
    node, _ = ran
    before = event_log(node)
    out = tmp_path / f"trail.{fmt}"
    signed = export(node.ledger, node.key, fmt, out, AuditFilter(), actor="officer@host", source_id="GW")
    records = list(FORMATS[fmt].read(out))
    got = [
        (r["seq"], r["hash"], r["type"], r["outcome"], r["actor"], r["patient_id"], r["study_uid"])
        for r in records
    ]
    assert got == before  # the whole log, exactly, odd patient id included
    assert (
        signed["statement"]["count"] == len(before)
        and signed["statement"]["ledger_head"]["seq"] == before[-1][0]
    )
    report, _ = verify_export(out, frozenset({node.key.public_key}))
    assert report.ok, report.findings
    exports = [e for e, _ in node.ledger.iter_events_with_hash() if e.type == "audit.export"]
    assert exports[-1].details["count"] == len(before) and exports[-1].actor == "officer@host"


def test_atna_messages_follow_the_dicom_audit_schema(ran, tmp_path):
    node, _ = ran
    out = tmp_path / "trail.xml"
    export(node.ledger, node.key, "atna", out, AuditFilter(), actor="officer", source_id="GW")
    ids = set()
    for msg in atna.messages(out):
        assert SCHEMA.validate(msg), SCHEMA.error_log
        ids.add(msg.find("EventIdentification/EventID").get("csd-code"))
    assert {"110100", "110104", "110112", "110113"} <= ids


def test_fhir_bundle_is_valid_r4_auditevents(ran, tmp_path):
    from fhir.resources.R4B.bundle import Bundle

    node, _ = ran
    out = tmp_path / "trail.json"
    export(node.ledger, node.key, "fhir", out, AuditFilter(), actor="officer", source_id="GW")
    bundle = Bundle.model_validate(json.loads(out.read_text(encoding="utf-8")))
    resources = [entry.resource for entry in bundle.entry]
    assert all(r.get_resource_type() == "AuditEvent" for r in resources)
    received = [r for r in resources if r.type.code == "110104" and r.action == "C"]
    assert received and all(any(e.what.identifier.value == ODD_PATIENT for e in r.entity) for r in received)


def test_receipts_and_queries_name_the_peers_address_in_every_format(ran, tmp_path):
    """The AE title is only what a peer calls itself: its address is on the record too, and in
    ATNA's NetworkAccessPointID (type 2, an IP address) and FHIR's agent.network."""
    node, _ = ran
    events = [e for e, _ in node.ledger.iter_events_with_hash()]
    receipts = [e for e in events if e.type == "instance.received"]
    finds = [e for e in events if e.type == "query.find"]
    assert receipts and all(e.details["peer"] == "127.0.0.1" for e in receipts)
    assert finds and all(e.details["peer"] == "127.0.0.1" for e in finds)
    out = tmp_path / "trail.xml"
    export(node.ledger, node.key, "atna", out, AuditFilter(), actor="officer", source_id="GW")
    peers = {}
    for msg in atna.messages(out):
        for who in msg.iter("ActiveParticipant"):
            if who.get("UserID") in ("MODALITY", "RADIOLOGIST"):
                peers[who.get("UserID")] = (
                    who.get("NetworkAccessPointID"),
                    who.get("NetworkAccessPointTypeCode"),
                )
    assert peers == {"MODALITY": ("127.0.0.1", "2"), "RADIOLOGIST": ("127.0.0.1", "2")}
    out = tmp_path / "trail.json"
    export(node.ledger, node.key, "fhir", out, AuditFilter(), actor="officer", source_id="GW")
    agents = [
        a
        for entry in json.loads(out.read_text(encoding="utf-8"))["entry"]
        for a in entry["resource"]["agent"]
        if a["who"]["display"] == "MODALITY"
    ]
    assert agents and all(a["network"] == {"address": "127.0.0.1", "type": "2"} for a in agents)


def test_csv_survives_a_spreadsheet_round_trip_of_formulas(ran, tmp_path):
    node, _ = ran
    out = tmp_path / "trail.csv"
    export(
        node.ledger,
        node.key,
        "csv",
        out,
        AuditFilter(event_types=("instance.received",)),
        actor="o",
        source_id="GW",
    )
    text = out.read_text(encoding="utf-8")
    assert "'=HYPERLINK" in text and ",=HYPERLINK" not in text  # no cell starts a formula
    assert verify_export(out)[0].ok


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_filtered_exports_prove_their_place_in_the_log(ran, tmp_path, fmt):
    node, _ = ran
    out = tmp_path / f"patient.{fmt}"
    signed = export(
        node.ledger,
        node.key,
        fmt,
        out,
        AuditFilter(patient=ODD_PATIENT, event_types=("instance.received", "retrieve.move")),
        actor="o",
        source_id="GW",
    )
    statement = signed["statement"]
    records = list(FORMATS[fmt].read(out))
    assert records and all(r["patient_id"] == ODD_PATIENT for r in records)
    span = statement["last_seq"] - statement["first_seq"] + 1
    assert statement["skipped_count"] == span - len(records) > 0  # the others in between are accounted for
    assert verify_export(out, frozenset({node.key.public_key}))[0].ok


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_changed_line_or_a_removed_line_fails_verify(ran, tmp_path, fmt):
    node, _ = ran
    out = tmp_path / f"trail.{fmt}"
    export(node.ledger, node.key, fmt, out, AuditFilter(), actor="o", source_id="GW")
    original = _lines(out)
    # the fifth record's line, whichever format: header lines come first
    target = next(i for i, line in enumerate(original) if b"RADIOLOGIST" in line or b"UkFESU9MT0dJU1" in line)
    changed = list(original)
    changed[target] = changed[target].replace(b"RADIOLOGIST", b"RADIOLOGISX", 1)
    if changed[target] == original[target]:  # FHIR/ATNA carry the actor twice: readable and base64
        changed[target] = changed[target].replace(b"UkFESU9MT0dJU1", b"UkFESU9MT0dJU3", 1)
    out.write_bytes(b"".join(changed))
    report, _ = verify_export(out)
    assert not report.ok and {f.kind for f in report.errors} & {"altered", "unreadable", "file-altered"}
    if fmt == "csv":  # a record may span lines (a quoted newline): remove one record, not one line
        rows = list(csv.reader(io.StringIO(b"".join(original).decode("utf-8"), newline="")))
        buffer = io.StringIO(newline="")
        csv.writer(buffer, lineterminator="\r\n").writerows(r for r in rows if "RADIOLOGIST" not in r)
        out.write_bytes(buffer.getvalue().encode("utf-8"))
    else:
        out.write_bytes(b"".join(original[:target] + original[target + 1 :]))
    report, _ = verify_export(out)
    assert not report.ok and "missing-event" in {f.kind for f in report.errors}


@pytest.mark.parametrize(
    ("fmt", "before", "after", "where"),
    [
        ("atna", b'EventOutcomeIndicator="4"', b'EventOutcomeIndicator="0"', "EventOutcomeIndicator"),
        ("fhir", b'"outcome":"4"', b'"outcome":"0"', "resource.outcome"),
    ],
)
def test_an_edited_value_in_a_rendered_export_is_altered_not_unreadable(
    ran, tmp_path, fmt, before, after, where
):
    """An auditor's edit that keeps the file well-formed (a failure turned into a success) is an
    alteration, named with the event and the field; the records after it are still checked."""
    node, _ = ran
    out = tmp_path / f"trail.{fmt}"
    signed = export(node.ledger, node.key, fmt, out, AuditFilter(), actor="o", source_id="GW")
    original = out.read_bytes()
    assert original.count(before) >= 1
    out.write_bytes(original.replace(before, after, 1))
    report, _ = verify_export(out, frozenset({node.key.public_key}))
    kinds = [f.kind for f in report.errors]
    assert "unreadable" not in kinds and "altered" in kinds and "file-altered" in kinds
    [edited] = [f for f in report.errors if f.kind == "altered"]
    assert where in edited.message and "the record says" in edited.message, edited.message
    assert report.events_checked == signed["statement"]["count"]  # it read on past the edit
    out.write_bytes(original[: len(original) // 2])  # cut short: not well-formed any more
    assert "unreadable" in {f.kind for f in verify_export(out)[0].errors}


def test_a_proof_signed_by_another_key_is_refused_when_the_key_is_pinned(node: Node, tmp_path):
    from dicom_chain.events import EventDraft
    from dicom_chain.keys import NodeKey

    node.record(EventDraft("service.start", actor="GW"))
    out = tmp_path / "trail.jsonl"
    export(node.ledger, NodeKey.generate(), "json", out, AuditFilter(), actor="o", source_id="GW")
    report, _ = verify_export(out, frozenset({node.key.public_key}))
    assert [f.kind for f in report.errors] == ["bad-proof"]
    unpinned, _ = verify_export(out)
    assert unpinned.ok and "key-not-pinned" in {f.kind for f in unpinned.findings}


def test_a_missing_proof_is_reported(ran, tmp_path):
    node, _ = ran
    out = tmp_path / "trail.jsonl"
    export(node.ledger, node.key, "json", out, AuditFilter(), actor="o", source_id="GW")
    proof_path(out).unlink()
    assert [f.kind for f in verify_export(out)[0].errors] == ["bad-proof"]


def test_the_live_feed_sent_every_event_of_the_run_as_a_valid_audit_message(ran):
    """Every event of the run went out: each on its own, but the study's four receipts in one
    "DICOM Instances Transferred" message for their association (IHE ATNA), which names them."""
    node, repository = ran
    log = {h: t for _, h, t, *_ in event_log(node)}
    sent = {}
    transfers = []
    for datagram in repository.messages:
        header, payload = framing.parse(datagram)
        assert header["msgid"] == "IHE+RFC-3881" and header["app"] == "dicom-chain"
        msg = etree.fromstring(payload)
        assert SCHEMA.validate(msg), SCHEMA.error_log
        assert int(header["pri"]) in (10 * 8 + 5, 10 * 8 + 4)
        summary = atna.transfer_of(msg)
        if summary is not None:
            transfers.append((msg, summary))
            continue
        rec = atna.record_of(msg)
        sent[rec["hash"]] = rec["type"]
    [(msg, summary)] = transfers
    receipts = [(e.seq, h) for e, h in node.ledger.iter_events_with_hash() if e.type == "instance.received"]
    assert summary["count"] == len(receipts) == 4
    assert (summary["first_seq"], summary["last_seq"]) == (receipts[0][0], receipts[-1][0])
    digest = hashlib.sha256("".join(f"{s} {h}\n" for s, h in receipts).encode("ascii")).hexdigest()
    assert summary["events_sha256"] == digest
    assert [c.get("NumberOfInstances") for c in msg.iter("SOPClass")] == ["4"]
    run = {h: t for h, t in log.items() if t not in ("audit.export", "instance.received")}
    # the feed starts at the log's head when it first starts: service.start is the first it sends
    assert {h: t for h, t in run.items() if h in sent} == run
    assert sent == {h: t for h, t in sent.items() if h in log}
    assert fhir  # the module is exercised above; keep the import honest


def test_atna_templates_build_what_the_direct_builder_does(ran):
    from dicom_chain.audit import record
    from dicom_chain.audit.context import ExportContext

    node, _ = ran
    context = ExportContext(exported_at="", source_id="GW", institutions=node.ledger.institutions())
    rows = list(node.ledger.iter_event_rows())
    assert len(rows) > 10
    for row in rows:
        rec = record.from_row(row, decode_details=False)
        templated, direct = atna.render(rec, context), atna.render_direct(rec, context)
        assert etree.tostring(templated, method="c14n") == etree.tostring(direct, method="c14n")


@pytest.mark.parametrize("fmt", ["fhir", "atna"])
def test_parallel_rendering_keeps_order_and_verifies(ran, tmp_path, fmt, monkeypatch):
    import importlib

    export_module = importlib.import_module("dicom_chain.audit.export")  # the module, not the function
    node, _ = ran
    monkeypatch.setattr(export_module, "RENDER_BATCH", 3)  # many batches through the worker processes
    monkeypatch.setattr(export_module.os, "cpu_count", lambda: 2)
    out = tmp_path / f"parallel.{fmt}"
    export(node.ledger, node.key, fmt, out, AuditFilter(), actor="o", source_id="GW")
    seqs = [r["seq"] for r in FORMATS[fmt].read(out)]
    assert seqs == sorted(seqs) and len(seqs) > 2 * 3 * 2
    assert verify_export(out, frozenset({node.key.public_key}))[0].ok


@pytest.mark.parametrize("fmt", ["json", "atna"])
def test_export_streams_from_each_database(db_url: str, tmp_path: Path, fmt: str):
    from dicom_chain.events import EventDraft

    node = Node.open(Settings(home=tmp_path / "n", db=db_url))
    try:
        for i in range(25):
            node.record(
                EventDraft(
                    "query.find",
                    actor=f"WS{i % 3}",
                    patient_id=f"P{i % 4}",
                    details={"model": "STUDY", "keys": {"PatientID": f"P{i % 4}"}},
                )
            )
        out = tmp_path / f"trail.{fmt}"
        signed = export(node.ledger, node.key, fmt, out, AuditFilter(patient="P1"), actor="o", source_id="GW")
        assert [r["patient_id"] for r in FORMATS[fmt].read(out)] == ["P1"] * 6
        assert signed["statement"]["skipped_count"] == 15
        assert verify_export(out, frozenset({node.key.public_key}))[0].ok
    finally:
        node.close()
