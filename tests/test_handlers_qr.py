"""The Query/Retrieve half of scp/handlers.py with in-process pynetdicom peers: C-FIND (with
C-CANCEL and broken identifiers), C-MOVE to a configured destination, C-GET on one association."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicom_chain.config import Settings
from dicom_chain.errors import LedgerUnavailable
from dicom_chain.node import Node
from dicom_chain.qr import index
from dicom_chain.qr import runs as qr
from dicom_chain.qr.index import INSTANCES
from dicom_chain.verify import verify_files
from scp.statuses import (
    CANCELLED,
    FIND_OUT_OF_RESOURCES,
    IDENTIFIER_DOES_NOT_MATCH,
    MOVE_DESTINATION_UNKNOWN,
    PENDING,
    PENDING_UNSUPPORTED_KEYS,
    RETRIEVE_OUT_OF_RESOURCES,
    UNABLE_TO_PROCESS,
    UNEXPECTED_FAILURE,
)

from .conftest import SAMPLE_STUDY, read
from .gateways import start_server
from .peers import exchange, free_port

STUDY_UID = pydicom.dcmread(next(SAMPLE_STUDY.glob("*.dcm"))).StudyInstanceUID


class StoreSCP:
    """A workstation that takes C-STOREs: the C-MOVE destination."""

    def __init__(self) -> None:
        self.received: list[Dataset] = []
        self.port = free_port()
        self.ae = AE(ae_title="WORKSTATION")
        for sop_class in (CTImageStorage, MRImageStorage):  # implicit only: forces re-encoding
            self.ae.add_supported_context(sop_class, ["1.2.840.10008.1.2"])
        self.ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.on_store)]
        )

    def on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(ds)
        return 0x0000


@pytest.fixture
def workstation() -> Iterator[StoreSCP]:
    scp = StoreSCP()
    yield scp
    scp.ae.shutdown()


@pytest.fixture
def gateway(tmp_path: Path, workstation: StoreSCP) -> Iterator[tuple[Node, int]]:
    settings = Settings(
        home=tmp_path / "gw", move_destinations=(f"WORKSTATION@127.0.0.1:{workstation.port}",)
    )
    node = Node.open(settings)
    for path in sorted(SAMPLE_STUDY.glob("*.dcm")):
        node.ingest_file(path)
    port = free_port()
    ae = start_server(node, ae_title="DICOMCHAIN", host="127.0.0.1", port=port)
    yield node, port
    ae.shutdown()
    node.close()


def associate(port: int, *, get: bool = False):
    scu = AE(ae_title="RADIOLOGIST")
    for context in (
        Verification,
        PatientRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelMove,
        StudyRootQueryRetrieveInformationModelGet,
    ):
        scu.add_requested_context(context)
    roles = []
    handlers = []
    received: list[Dataset] = []
    if get:
        scu.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2"])
        roles = [build_role(CTImageStorage, scp_role=True)]

        def on_store(event: evt.Event) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            received.append(ds)
            return 0x0000

        handlers = [(evt.EVT_C_STORE, on_store)]
    assoc = scu.associate("127.0.0.1", port, ae_title="DICOMCHAIN", ext_neg=roles, evt_handlers=handlers)
    assert assoc.is_established
    return assoc, received


def query(**keys: str) -> Dataset:
    ds = Dataset()
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def statuses(responses) -> list[tuple[int, Dataset | None]]:
    return [(int(status.Status), identifier) for status, identifier in responses]


def test_find_answers_every_match_then_success(gateway):
    node, port = gateway
    assoc, _ = associate(port)
    try:
        image = statuses(
            assoc.send_c_find(
                query(
                    QueryRetrieveLevel="IMAGE",
                    StudyInstanceUID=STUDY_UID,
                    SeriesInstanceUID=pydicom.dcmread(
                        sorted(SAMPLE_STUDY.glob("*.dcm"))[0]
                    ).SeriesInstanceUID,
                    SOPInstanceUID="",
                    InstanceNumber="",
                ),
                StudyRootQueryRetrieveInformationModelFind,
            )
        )
        study = statuses(
            assoc.send_c_find(
                query(
                    QueryRetrieveLevel="STUDY",
                    PatientName="chain*",
                    StudyInstanceUID="",
                    ModalitiesInStudy="",
                    NumberOfStudyRelatedInstances="",
                    PatientComments="ask",
                ),
                StudyRootQueryRetrieveInformationModelFind,
            )
        )
    finally:
        assoc.release()
    assert [s for s, _ in image] == [PENDING] * 4 + [0x0000]  # the first series holds 4 of the 8
    assert (
        image[0][1][0x0071, 0x0010].value == "DICOM_CHAIN" and image[0][1][0x0071, 0x1020].value == "VERIFIED"
    )
    assert [s for s, _ in study] == [PENDING_UNSUPPORTED_KEYS, 0x0000]  # PatientComments was not matched on
    answer = study[0][1]
    assert answer.StudyInstanceUID == STUDY_UID and answer.NumberOfStudyRelatedInstances == 8
    assert answer.ModalitiesInStudy == "CT"
    events = [e for e in node.ledger.iter_events() if e.type == "query.find"]
    assert [(e.actor, e.details["level"], e.details["matches"]) for e in events] == [
        ("RADIOLOGIST", "IMAGE", 4),
        ("RADIOLOGIST", "STUDY", 1),
    ]


def test_identifiers_the_model_refuses_get_a900_and_the_association_keeps_working(gateway):
    node, port = gateway
    assoc, _ = associate(port)
    try:
        (only,) = statuses(
            assoc.send_c_find(
                query(QueryRetrieveLevel="STUDY", PatientName="*"),
                PatientRootQueryRetrieveInformationModelFind,
            )
        )
        assert only[0] == IDENTIFIER_DOES_NOT_MATCH
        (only,) = statuses(
            assoc.send_c_find(query(QueryRetrieveLevel="WARD"), StudyRootQueryRetrieveInformationModelFind)
        )
        assert only[0] == IDENTIFIER_DOES_NOT_MATCH
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    refused = [e for e in node.ledger.iter_events() if e.type == "query.find"]
    assert len(refused) == 2 and all(e.details["status"] == "refused" for e in refused)
    assert all(e.details["peer"] == "127.0.0.1" for e in refused)  # the audit's network access point


def test_an_identifier_that_does_not_decode_gets_c000(gateway):
    _, port = gateway
    assoc, _ = associate(port)
    context = next(
        cx
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == StudyRootQueryRetrieveInformationModelFind
    )
    request = C_FIND()
    request.MessageID = 7
    request.AffectedSOPClassUID = StudyRootQueryRetrieveInformationModelFind
    request.Priority = 2
    request.Identifier = BytesIO(b"\x08\x00\x52\x00\xff\xff\xff\x7fSTUDY")  # a length far past the end
    response = exchange(assoc, request, context.context_id)
    try:
        assert int(response.Status) == UNABLE_TO_PROCESS
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_c_cancel_stops_a_running_query(gateway, monkeypatch):
    node, port = gateway
    slow = qr.response

    def slow_response(*args, **kwargs):
        time.sleep(0.05)
        return slow(*args, **kwargs)

    monkeypatch.setattr(qr, "response", slow_response)
    assoc, _ = associate(port)
    try:
        responses = assoc.send_c_find(
            query(
                QueryRetrieveLevel="IMAGE",
                StudyInstanceUID=STUDY_UID,
                SeriesInstanceUID=pydicom.dcmread(sorted(SAMPLE_STUDY.glob("*.dcm"))[-1]).SeriesInstanceUID,
                SOPInstanceUID="",
            ),
            StudyRootQueryRetrieveInformationModelFind,
            msg_id=9,
        )
        first = next(responses)
        assert first[0].Status == PENDING
        context = next(
            cx
            for cx in assoc.accepted_contexts
            if cx.abstract_syntax == StudyRootQueryRetrieveInformationModelFind
        )
        assoc.send_c_cancel(9, context.context_id)
        rest = [int(s.Status) for s, _ in responses]
    finally:
        assoc.release()
    assert rest[-1] == CANCELLED and len(rest) < 4
    event = [e for e in node.ledger.iter_events() if e.type == "query.find"][-1]
    assert event.details["status"] == "cancelled"


def test_a_failing_index_gives_a700_not_a_dropped_association(gateway, monkeypatch):
    _, port = gateway

    def broken(*_args, **_kwargs):
        raise LedgerUnavailable("database is locked")
        yield  # a generator, as the real one

    monkeypatch.setattr(qr.index, "find", broken)
    assoc, _ = associate(port)
    try:
        (only,) = statuses(
            assoc.send_c_find(
                query(QueryRetrieveLevel="STUDY", PatientName="*"), StudyRootQueryRetrieveInformationModelFind
            )
        )
        assert only[0] == FIND_OUT_OF_RESOURCES
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_move_sends_the_study_chained_to_the_configured_destination(gateway, workstation):
    node, port = gateway
    assoc, _ = associate(port)
    try:
        results = statuses(
            assoc.send_c_move(
                query(QueryRetrieveLevel="STUDY", StudyInstanceUID=STUDY_UID),
                "WORKSTATION",
                StudyRootQueryRetrieveInformationModelMove,
            )
        )
        unknown = statuses(
            assoc.send_c_move(
                query(QueryRetrieveLevel="STUDY", StudyInstanceUID=STUDY_UID),
                "STRANGER",
                StudyRootQueryRetrieveInformationModelMove,
            )
        )
    finally:
        assoc.release()
    assert results[-1][0] == 0x0000 and len(workstation.received) == 8
    assert unknown[-1][0] == MOVE_DESTINATION_UNKNOWN
    assert {str(ds.file_meta.TransferSyntaxUID) for ds in workstation.received} == {"1.2.840.10008.1.2"}
    out = node.settings.home / "moved"
    out.mkdir()
    for i, ds in enumerate(workstation.received):
        ds.save_as(out / f"{i}.dcm", enforce_file_format=True)
    assert verify_files(sorted(out.glob("*.dcm"))).ok  # re-encoded on the way, still chained
    moves = [e for e in node.ledger.iter_events() if e.type == "retrieve.move"]
    assert [(e.details["status"], e.details.get("completed"), e.details["destination"]) for e in moves] == [
        ("completed", 8, f"WORKSTATION@127.0.0.1:{workstation.port}"),
        ("refused", None, "STRANGER"),
    ]
    assert moves[0].details["peer"] == "127.0.0.1"  # who asked, by address (ATNA NetworkAccessPointID)


def test_get_sends_the_study_back_on_the_same_association(gateway):
    node, port = gateway
    assoc, received = associate(port, get=True)
    try:
        results = statuses(
            assoc.send_c_get(
                query(QueryRetrieveLevel="STUDY", StudyInstanceUID=STUDY_UID),
                StudyRootQueryRetrieveInformationModelGet,
            )
        )
        refused = statuses(
            assoc.send_c_get(
                query(QueryRetrieveLevel="STUDY", StudyInstanceUID="*"),
                StudyRootQueryRetrieveInformationModelGet,
            )
        )
    finally:
        assoc.release()
    assert results[-1][0] == 0x0000 and len(received) == 8
    assert refused[-1][0] == IDENTIFIER_DOES_NOT_MATCH
    gets = [e for e in node.ledger.iter_events() if e.type == "retrieve.get"]
    assert gets[0].details["completed"] == 8 and gets[0].actor == "RADIOLOGIST"
    assert gets[0].details["peer"] == "127.0.0.1"
    assert gets[1].details["status"] == "refused" and gets[1].details["peer"] == "127.0.0.1"


def test_many_finds_at_once_each_get_their_answers(gateway):
    node, port = gateway
    counts: list[int] = []

    def one() -> None:
        assoc, _ = associate(port)
        try:
            answers = statuses(
                assoc.send_c_find(
                    query(QueryRetrieveLevel="STUDY", PatientID="DC-0001"),
                    StudyRootQueryRetrieveInformationModelFind,
                )
            )
            counts.append(sum(1 for s, _ in answers if s == PENDING))
        finally:
            assoc.release()

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts == [1] * 6
    assert sum(1 for e in node.ledger.iter_events() if e.type == "query.find") == 6


def test_a_retrieve_that_matches_nothing_succeeds_and_is_on_the_record(gateway):
    node, port = gateway
    assoc, _ = associate(port, get=True)
    nothing = query(QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2.3.4.5.6.7")
    try:
        moved = statuses(
            assoc.send_c_move(nothing, "WORKSTATION", StudyRootQueryRetrieveInformationModelMove)
        )
        got = statuses(assoc.send_c_get(nothing, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    assert moved[-1][0] == 0x0000 and got[-1][0] == 0x0000
    events = [e for e in node.ledger.iter_events() if e.type.startswith("retrieve.")]
    assert [(e.type, e.details["status"], e.details["matched"]) for e in events] == [
        ("retrieve.move", "completed", 0),
        ("retrieve.get", "completed", 0),
    ]


def test_a_move_turned_away_or_failing_answers_its_status_and_keeps_the_association(gateway, monkeypatch):
    node, port = gateway
    assoc, _ = associate(port)
    everything = query(QueryRetrieveLevel="STUDY", StudyInstanceUID="*")
    study = query(QueryRetrieveLevel="STUDY", StudyInstanceUID=STUDY_UID)
    try:
        refused = statuses(
            assoc.send_c_move(everything, "WORKSTATION", StudyRootQueryRetrieveInformationModelMove)
        )

        def locked(*_args, **_kwargs):
            raise LedgerUnavailable("database is locked")
            yield  # a generator, as the real one

        monkeypatch.setattr(qr.index, "find", locked)
        busy = statuses(assoc.send_c_move(study, "WORKSTATION", StudyRootQueryRetrieveInformationModelMove))
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    assert refused[-1][0] == IDENTIFIER_DOES_NOT_MATCH and busy[-1][0] == RETRIEVE_OUT_OF_RESOURCES
    moves = [e for e in node.ledger.iter_events() if e.type == "retrieve.move"]
    assert [(e.details["status"], e.reason) for e in moves] == [
        ("refused", "a STUDY retrieve needs StudyInstanceUID: one value or a list (PS3.4 C.4.2.2.1)"),
        ("refused", "database is locked"),
    ]
    assert all(e.details["peer"] == "127.0.0.1" for e in moves)


def test_an_unforeseen_error_during_a_get_ends_it_with_c001_on_the_record(gateway, monkeypatch):
    """A bug half-way through the sub-operations: the peer gets a final failure, the ledger a
    failed retrieval in the error's words, and the association stays up."""
    from scp import handlers

    node, port = gateway
    read_so_far: list[Path] = []

    def buggy(path: Path) -> Dataset:
        read_so_far.append(path)
        if len(read_so_far) == 3:
            raise RuntimeError("a bug while reading")
        return pydicom.dcmread(path)

    monkeypatch.setattr(handlers, "read_dataset", buggy)
    assoc, received = associate(port, get=True)
    try:
        results = statuses(
            assoc.send_c_get(
                query(QueryRetrieveLevel="STUDY", StudyInstanceUID=STUDY_UID),
                StudyRootQueryRetrieveInformationModelGet,
            )
        )
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    assert results[-1][0] == UNEXPECTED_FAILURE and len(received) == 2
    [get] = [e for e in node.ledger.iter_events() if e.type == "retrieve.get"]
    assert (get.details["status"], get.reason, get.details["completed"]) == (
        "failed",
        "a bug while reading",
        2,
    )


# -- compressed instances, and instances whose index state is not VERIFIED -----------------------

JLS = "1.2.840.10008.1.2.4.80"
IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"


@pytest.fixture
def jpeg_ls(gateway) -> Dataset:
    """An MR instance stored JPEG-LS lossless on the gateway (its own study)."""
    node, _ = gateway
    ds = read("MR_small_jpeg_ls_lossless.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = node.settings.home / "jls.dcm"
    ds.save_as(path, enforce_file_format=True)
    node.ingest_file(path)
    return ds


def get_as(port: int, identifier: Dataset, syntaxes: list[str]) -> tuple[list[Dataset], list[Dataset]]:
    """C-GET with MR storage contexts proposing ``syntaxes`` in one context, as DCMTK's getscu
    does; the final status data sets and what arrived."""
    scu = AE(ae_title="RADIOLOGIST")
    scu.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    scu.add_requested_context(MRImageStorage, syntaxes)
    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    assoc = scu.associate(
        "127.0.0.1",
        port,
        ae_title="DICOMCHAIN",
        ext_neg=[build_role(MRImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        results = [
            status for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
        ]
    finally:
        assoc.release()
    return results, received


def image(ds: Dataset) -> Dataset:
    return query(
        QueryRetrieveLevel="IMAGE",
        StudyInstanceUID=ds.StudyInstanceUID,
        SeriesInstanceUID=ds.SeriesInstanceUID,
        SOPInstanceUID=ds.SOPInstanceUID,
    )


def test_get_of_a_jpeg_ls_instance_goes_as_stored_when_the_peer_offers_it(gateway, jpeg_ls):
    """pynetdicom alone accepts Implicit VR, the first of ours the peer proposed: the instance
    then had no context and the sub-operation failed."""
    node, port = gateway
    results, received = get_as(port, image(jpeg_ls), [JLS, EXPLICIT, IMPLICIT])
    assert results[-1].Status == 0x0000
    [ds] = received
    assert ds.file_meta.TransferSyntaxUID == JLS and ds.PixelData == jpeg_ls.PixelData  # its bytes
    [get] = [e for e in node.ledger.iter_events() if e.type == "retrieve.get"]
    assert (get.details["completed"], get.details["failed"]) == (1, 0)


@pytest.mark.parametrize("syntaxes", [[EXPLICIT, IMPLICIT], [IMPLICIT]])
def test_get_of_a_jpeg_ls_instance_by_a_peer_taking_only_uncompressed_decompresses_it(
    gateway, jpeg_ls, syntaxes
):
    node, port = gateway
    results, received = get_as(port, image(jpeg_ls), syntaxes)
    assert results[-1].Status == 0x0000
    [ds] = received
    assert ds.file_meta.TransferSyntaxUID == syntaxes[0]
    assert (ds.pixel_array == jpeg_ls.pixel_array).all()
    out = node.settings.home / "got.dcm"
    ds.save_as(out, enforce_file_format=True)
    assert verify_files([out], frozenset({node.key.public_key})).ok  # lossless: still chained


def test_move_of_a_jpeg_ls_instance_to_an_uncompressed_only_destination_decompresses_it(
    gateway, jpeg_ls, workstation
):
    _, port = gateway
    assoc, _ = associate(port)
    try:
        results = list(
            assoc.send_c_move(image(jpeg_ls), "WORKSTATION", StudyRootQueryRetrieveInformationModelMove)
        )
    finally:
        assoc.release()
    assert results[-1][0].Status == 0x0000
    [ds] = workstation.received
    assert ds.file_meta.TransferSyntaxUID == IMPLICIT and (ds.pixel_array == jpeg_ls.pixel_array).all()


def mark(node: Node, sop_instance_uid: str, state: str) -> None:
    index.before_read(node.db)  # the row to mark is written after the response
    with node.db.writing() as session:
        session.execute(
            INSTANCES.update()
            .where(INSTANCES.c.sop_instance_uid == sop_instance_uid)
            .values(verification=state)
        )


def study_uids(node: Node) -> list[str]:
    return sorted(pydicom.dcmread(p).SOPInstanceUID for p in SAMPLE_STUDY.glob("*.dcm"))


def altered_and_missing(node: Node) -> tuple[str, str]:
    """One instance of the sample study marked ALTERED, another MISSING with its file gone."""
    altered, missing = study_uids(node)[:2]
    mark(node, altered, "altered")
    mark(node, missing, "missing")
    for path in node.storage.root.rglob(f"{missing}*.dcm"):
        path.unlink()
    return altered, missing


def retrieve(port: int, kind: str) -> tuple[list[Dataset], int]:
    """A C-GET or a C-MOVE (to WORKSTATION) of the sample study: its responses, and how many
    sub-operations a C-GET received itself."""
    assoc, received = associate(port, get=kind == "get")
    study = query(QueryRetrieveLevel="STUDY", StudyInstanceUID=STUDY_UID)
    try:
        if kind == "get":
            responses = list(assoc.send_c_get(study, StudyRootQueryRetrieveInformationModelGet))
        else:
            responses = list(
                assoc.send_c_move(study, "WORKSTATION", StudyRootQueryRetrieveInformationModelMove)
            )
    finally:
        assoc.release()
    return [status for status, _ in responses], len(received)


@pytest.mark.parametrize("kind", ["get", "move"])
def test_altered_and_missing_instances_are_refused_with_the_reason_on_the_record(gateway, workstation, kind):
    node, port = gateway
    altered, missing = altered_and_missing(node)
    responses, got = retrieve(port, kind)
    final = responses[-1]
    # PS3.4 C.4.2.1.5 / C.4.3.1.4: B000, sub-operations complete, one or more failures
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (6, 2)
    assert (got if kind == "get" else len(workstation.received)) == 6
    [event] = [e for e in node.ledger.iter_events() if e.type == f"retrieve.{kind}"]
    reasons = {f["sop_instance_uid"]: f["reason"] for f in event.details["failures"]}
    assert reasons.keys() == {altered, missing} and event.details["status"] == "partial"
    assert reasons[altered].startswith("altered since receipt: content hash mismatch; refused")
    assert reasons[missing].startswith("missing")


@pytest.mark.parametrize("kind", ["get", "move"])
def test_with_serve_altered_warn_an_altered_instance_is_sent_with_a_warning(gateway, workstation, kind):
    node, port = gateway
    node.settings = replace(node.settings, serve_altered="warn")
    altered, missing = altered_and_missing(node)
    responses, got = retrieve(port, kind)
    final = responses[-1]
    assert final.Status == 0xB000
    assert (
        final.NumberOfCompletedSuboperations,
        final.NumberOfWarningSuboperations,
        final.NumberOfFailedSuboperations,
    ) == (6, 1, 1)
    assert (got if kind == "get" else len(workstation.received)) == 7
    [event] = [e for e in node.ledger.iter_events() if e.type == f"retrieve.{kind}"]
    assert (event.details["completed"], event.details["warnings"], event.details["failed"]) == (6, 1, 1)
    assert [w["sop_instance_uid"] for w in event.details["warned"]] == [altered]
    assert event.details["warned"][0]["reason"].startswith(
        "altered since receipt: content hash mismatch; sent"
    )
    assert [f["sop_instance_uid"] for f in event.details["failures"]] == [missing]


def test_a_file_gone_since_the_last_verification_is_a_failure_not_a_silent_success(gateway):
    """The index still says VERIFIED; the file is gone. pynetdicom counted the empty data set
    yielded for it as nothing at all: Success, one sub-operation short."""
    node, port = gateway
    gone = study_uids(node)[0]
    for path in node.storage.root.rglob(f"{gone}*.dcm"):
        path.unlink()
    responses, got = retrieve(port, "get")
    assert (responses[-1].Status, responses[-1].NumberOfFailedSuboperations, got) == (0xB000, 1, 7)
    [event] = [e for e in node.ledger.iter_events() if e.type == "retrieve.get"]
    assert [f["sop_instance_uid"] for f in event.details["failures"]] == [gone]
    assert event.details["failures"][0]["reason"].startswith("missing: the stored file was not found")
