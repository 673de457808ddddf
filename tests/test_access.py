"""Permissions at the edge: each service refused (0124, an event) to a caller not granted it, the
certificate a TLS peer presents read and matched by subject, DCMTK seeing the refusals."""

from __future__ import annotations

import copy
import datetime
import re
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicom_chain.node import Node
from dicom_chain.synthetic import StudySpec, ct_study
from dicom_chain.verify import verify_node
from scp.server import Gateway
from scp.statuses import NOT_AUTHORIZED

from .peers import free_port, require_tool


@pytest.fixture
def workstation() -> Iterator[int]:
    """A storage SCP to C-MOVE to: pynetdicom associates with it before any C-MOVE final status."""
    ae = AE(ae_title="WS")
    ae.supported_contexts = StoragePresentationContexts
    port = free_port()
    ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda e: 0)])
    yield port
    ae.shutdown()


def _associate(ae_title: str, port: int, tls: tuple[ssl.SSLContext, str] | None = None):
    scu = AE(ae_title=ae_title)
    scu.acse_timeout = scu.dimse_timeout = scu.network_timeout = 20
    for context in (
        Verification,
        CTImageStorage,
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelMove,
        StudyRootQueryRetrieveInformationModelGet,
    ):
        scu.add_requested_context(context)
    role = build_role(CTImageStorage, scu_role=True, scp_role=True)  # C-GET sends back on this association
    received = [(evt.EVT_C_STORE, lambda _: 0)]  # C-GET's sub-operations
    return scu.associate(
        "127.0.0.1", port, ae_title="DICOMCHAIN", ext_neg=[role], tls_args=tls, evt_handlers=received
    )


def _study_query(study_uid: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", study_uid
    return query


def _final(responses) -> int:
    statuses = [int(status.Status) for status, _ in responses if status]
    return statuses[-1]


def _refusals(node: Node) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for e in node.ledger.iter_events():
        if e.outcome != "success" and e.type != "service.stop":
            found.setdefault(e.type, []).append(f"{e.actor}: {e.reason}")
    return found


def test_a_modality_on_the_allow_list_stores_and_may_not_query_or_retrieve(settings, workstation):
    node = Node.open(replace(settings, move_destinations=(f"WS@127.0.0.1:{workstation}",)))
    gateway = Gateway(node, replace(node.settings, host="127.0.0.1", port=free_port(), allow=("CT1",)))
    gateway.start()
    try:
        _modality_only(node, gateway)
    finally:
        gateway.stop()
        node.close()


def _modality_only(node: Node, gateway: Gateway) -> None:
    study = list(ct_study(StudySpec(seed=41, instances=2, rows=8, columns=8)))
    assoc = _associate("CT1", gateway.settings.port)
    assert [assoc.send_c_store(ds).Status for ds in study] == [0, 0]
    query = _study_query(study[0].StudyInstanceUID)
    assert _final(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)) == NOT_AUTHORIZED
    assert _final(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)) == NOT_AUTHORIZED
    moved = assoc.send_c_move(query, "WS", StudyRootQueryRetrieveInformationModelMove)
    assert _final(moved) == NOT_AUTHORIZED
    assert assoc.send_c_echo().Status == 0  # refusals leave the association up
    assoc.release()
    refused = _refusals(node)
    for kind, permission in (("query.find", "find"), ("retrieve.get", "get"), ("retrieve.move", "move")):
        assert refused[kind] == [f"CT1: CT1 lacks permission '{permission}'"]


def test_a_workstation_queries_and_retrieves_and_may_not_store(make_gateway, node):
    gateway = make_gateway(allow=("CT1",), peers=("WS1@127.0.0.1=find,get",))
    study = list(ct_study(StudySpec(seed=42, instances=2, rows=8, columns=8)))
    modality = _associate("CT1", gateway.settings.port)
    assert [modality.send_c_store(ds).Status for ds in study] == [0, 0]
    modality.release()
    assoc = _associate("WS1", gateway.settings.port)
    query = _study_query(study[0].StudyInstanceUID)
    answers = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
    assert [int(s.Status) for s, _ in answers] == [0xFF00, 0]
    assert _final(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)) == 0
    other = next(iter(ct_study(StudySpec(seed=43, instances=1, rows=8, columns=8))))
    response = assoc.send_c_store(other)
    assert response.Status == NOT_AUTHORIZED and "lacks permission 'store'" in response.ErrorComment
    assoc.release()
    assert node.ledger.block_count() == 2  # nothing kept of the refused one
    [refused] = [e for e in node.ledger.iter_events() if e.type == "instance.refused"]
    assert (refused.actor, refused.sop_uid) == ("WS1", other.SOPInstanceUID)


def test_an_ae_with_no_permission_is_rejected_at_association(make_gateway, node):
    gateway = make_gateway(peers=("WS1@10.9.9.9=find",))  # WS1, but from another host
    assoc = _associate("WS1", gateway.settings.port)
    assert assoc.is_rejected
    [event] = [e for e in node.ledger.iter_events() if e.type == "association.rejected"]
    assert event.actor == "WS1" and event.details["peer"] == "127.0.0.1"


# -- mutual TLS: the certificate is the identity --------------------------------------------------


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _issue(
    tmp_path: Path,
    stem: str,
    subject: x509.Name,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
) -> tuple[Path, Path, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    issuer, signer = (ca[0].subject, ca[1]) if ca else (subject, key)
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
    )  # fmt: skip
    if ca is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    cert = builder.sign(signer, hashes.SHA256())
    cert_path, key_path = tmp_path / f"{stem}.pem", tmp_path / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_key_pem(key))
    return cert_path, key_path, cert, key


def _name(**attributes: str) -> x509.Name:
    oids = {"CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME}
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in attributes.items()])


def test_a_client_certificate_listed_by_subject_decides_what_its_holder_may_do(make_gateway, tmp_path, node):
    ca_path, _, ca_cert, ca_key = _issue(tmp_path, "ca", _name(CN="Hospital CA"), None)
    server_cert, server_key, _, _ = _issue(tmp_path, "gw", _name(CN="localhost"), (ca_cert, ca_key))
    ca = (ca_cert, ca_key)
    reader_cert, reader_key, _, _ = _issue(tmp_path, "rr1", _name(CN="reading-room-1", O="Hospital"), ca)
    laptop_cert, laptop_key, _, _ = _issue(tmp_path, "laptop", _name(CN="laptop", O="Hospital"), ca)
    gateway = make_gateway(
        tls_cert=server_cert,
        tls_key=server_key,
        tls_ca=ca_path,
        allow=("CT1",),
        certs=("O=Hospital,CN=reading-room-1=find",),  # either order of the names
    )

    def client(cert: Path, key: Path) -> tuple[ssl.SSLContext, str]:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_path))
        context.load_cert_chain(str(cert), str(key))
        return context, "localhost"

    # the reading room calls itself CT1: its certificate, not the title, says what it may do
    assoc = _associate("CT1", gateway.settings.port, client(reader_cert, reader_key))
    assert assoc.is_established
    answers = list(assoc.send_c_find(_study_query("1.2.3"), StudyRootQueryRetrieveInformationModelFind))
    assert _final(answers) == 0
    study = next(iter(ct_study(StudySpec(seed=44, instances=1, rows=8, columns=8))))
    assert assoc.send_c_store(study).Status == NOT_AUTHORIZED
    assoc.release()
    # a certificate the CA signed but nobody listed: only what the AE title is granted
    assoc = _associate("CT1", gateway.settings.port, client(laptop_cert, laptop_key))
    assert assoc.send_c_store(study).Status == 0
    assert (
        _final(assoc.send_c_find(_study_query("1.2.3"), StudyRootQueryRetrieveInformationModelFind)) == 0x0124
    )
    assoc.release()
    assert not _associate("LAPTOP", gateway.settings.port, client(laptop_cert, laptop_key)).is_established
    [rejected] = [e for e in node.ledger.iter_events() if e.type == "association.rejected"]
    assert rejected.details["certificate"] == "CN=laptop,O=Hospital"


# -- what a DCMTK peer sees -------------------------------------------------------------------------


@pytest.mark.dcmtk
def test_dcmtk_tools_see_0124_for_what_they_are_not_granted(make_gateway, node, tmp_path):
    findscu = require_tool("findscu", "dcmtk")
    storescu = require_tool("storescu", "dcmtk")
    gateway = make_gateway(allow=("CT1",), peers=("WS1=find",))
    port = str(gateway.settings.port)
    path = tmp_path / "ct.dcm"
    next(iter(ct_study(StudySpec(seed=45, instances=1, rows=8, columns=8)))).save_as(
        path, enforce_file_format=True
    )
    find = [findscu, "-v", "-S", "-aec", "DICOMCHAIN", "-k", "QueryRetrieveLevel=STUDY"]
    find += ["-k", "StudyInstanceUID"]
    by_modality = subprocess.run(
        [*find, "-aet", "CT1", "127.0.0.1", port], capture_output=True, text=True, timeout=60
    )
    # DCMTK has no name for 0124 in C-FIND ("Unknown Status: 0x124"), yet takes it as the final answer
    assert re.search(r"Final Find Response .*0x0?124", by_modality.stdout + by_modality.stderr)
    by_workstation = subprocess.run(
        [*find, "-aet", "WS1", "127.0.0.1", port], capture_output=True, text=True, timeout=60
    )
    assert by_workstation.returncode == 0 and "0124" not in by_workstation.stdout + by_workstation.stderr
    store = subprocess.run(
        [storescu, "-v", "-aet", "WS1", "-aec", "DICOMCHAIN", "127.0.0.1", port, str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert re.search(r"Received Store Response .*0x0?124", store.stdout + store.stderr), store.stderr
    assert node.ledger.block_count() == 0
    refused = {e.type for e in node.ledger.iter_events() if e.outcome != "success"}
    assert {"query.find", "instance.refused"} <= refused


def test_the_permission_table_is_read_once_from_the_settings(node):
    gateway = Gateway(node, replace(node.settings, allow=("CT1",), peers=("WS1=find",)))
    assert not gateway.access.open
    assert gateway.access.peers.permissions("WS1", "10.0.0.1") == {"find"}


def test_a_new_version_needs_the_original_sender_or_correct_and_answers_say_who(make_gateway, node):
    gateway = make_gateway(allow=("CT1", "CT2"), peers=("WS1=find", "QA=store,correct"))
    port = gateway.settings.port
    original = next(iter(ct_study(StudySpec(seed=46, instances=1, rows=8, columns=8))))
    changed = copy.deepcopy(original)
    changed.PatientName = "OTHER^PATIENT"
    first = _associate("CT1", port)
    assert first.send_c_store(original).Status == 0
    first.release()
    other = _associate("CT2", port)  # allowed to store, yet not CT1's instance to replace
    response = other.send_c_store(changed)
    assert response.Status == NOT_AUTHORIZED and "original sent by CT1" in response.ErrorComment
    other.release()
    assert node.ledger.block_count() == 1
    qa = _associate("QA", port)
    assert qa.send_c_store(changed).Status == 0  # granted 'correct'
    qa.release()
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID, query.SeriesInstanceUID = original.StudyInstanceUID, original.SeriesInstanceUID
    query.SOPInstanceUID = original.SOPInstanceUID
    ws = _associate("WS1", port)
    [(_, answer), _final_status] = list(ws.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
    ws.release()
    assert answer[0x0071, 0x0010].value == "DICOM_CHAIN"
    assert answer[0x0071, 0x1022].value == 2  # Number of Versions
    assert list(answer[0x0071, 0x1023].value) == ["CT1", "QA"]  # Version Senders, oldest first
    report = verify_node(node.ledger, node.storage)
    assert report.ok
    [note] = [f for f in report.findings if f.kind == "versions"]
    assert (
        note.message == "2 versions: v1 by CT1, v2 by QA" and note.sop_instance_uid == original.SOPInstanceUID
    )
    refused = [e for e in node.ledger.iter_events() if e.type == "instance.refused"]
    assert [e.actor for e in refused] == ["CT2"]
