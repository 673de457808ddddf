"""The gateway as a service: allow-list, TLS, many associations at once, clean SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from dicom_chain.ledger import Ledger
from dicom_chain.node import Node
from dicom_chain.synthetic import StudySpec, ct_study
from dicom_chain.verify import verify_node

from .peers import GatewayProcess, free_port, process_running, require_tool, self_signed, wait_until


@pytest.mark.dcmtk
def test_unknown_calling_ae_is_rejected_at_association(make_gateway, node: Node):
    echoscu = require_tool("echoscu", "dcmtk")
    gateway = make_gateway(allow=("CT_SCANNER", "WS1@127.0.0.1", "MR1@10.9.9.9"))
    port = str(gateway.settings.port)

    def echo(aet: str) -> subprocess.CompletedProcess:
        return subprocess.run([echoscu, "-aet", aet, "-aec", "DICOMCHAIN", "127.0.0.1", port],
                              capture_output=True, text=True, timeout=30)  # fmt: skip

    assert echo("CT_SCANNER").returncode == 0
    assert echo("WS1").returncode == 0
    for stranger in ("INTRUDER", "MR1"):  # MR1 is allowed from another host only
        result = echo(stranger)
        assert result.returncode != 0
        assert "Association Rejected" in result.stdout + result.stderr
    # per host, the first refusal of a minute is an event at once, the rest one count (transport.py)
    rejected = [e for e in node.ledger.iter_events() if e.type == "association.rejected"]
    assert [e.actor for e in rejected] == ["INTRUDER"]
    gateway.rejections.flush(final=True)
    rejected = [e for e in node.ledger.iter_events() if e.type == "association.rejected"]
    assert [(e.actor, e.details["count"]) for e in rejected] == [("INTRUDER", 1), ("MR1", 1)]
    assert echo("CT_SCANNER").returncode == 0  # still serving


@pytest.mark.dcmtk
def test_a_call_to_another_ae_title_is_rejected(make_gateway, node: Node):
    """DCMTK echoscu calling WRONGAE gets A-ASSOCIATE-RJ (permanent, service user, called AE title
    not recognised), recorded with what it called; the gateway's own title is still answered."""
    echoscu = require_tool("echoscu", "dcmtk")
    gateway = make_gateway()
    port = str(gateway.settings.port)

    def echo(aec: str) -> subprocess.CompletedProcess:
        return subprocess.run([echoscu, "-aet", "CT_SCANNER", "-aec", aec, "127.0.0.1", port],
                              capture_output=True, text=True, timeout=30)  # fmt: skip

    wrong = echo("WRONGAE")
    assert wrong.returncode != 0
    assert "Called AE Title Not Recognized" in wrong.stdout + wrong.stderr
    assert echo("DICOMCHAIN").returncode == 0
    rejected = [e for e in node.ledger.iter_events() if e.type == "association.rejected"]
    assert [(e.actor, e.details["called_ae"], e.details["reasons"]) for e in rejected] == [
        ("CT_SCANNER", "WRONGAE", {"called-ae": 1})
    ]


def _echo_as(port: int, called: str) -> tuple[bool, tuple[int, int, int] | None]:
    scu = AE(ae_title="WS1")
    scu.add_requested_context(Verification)
    scu.acse_timeout = scu.network_timeout = 30
    assoc = scu.associate("127.0.0.1", port, ae_title=called)
    if assoc.is_established:
        ok = assoc.send_c_echo().Status == 0x0000
        assoc.release()
        return ok, None
    rj = assoc.acceptor.primitive
    return False, (rj.result, rj.result_source, rj.diagnostic) if rj is not None else None


def test_called_ae_titles_answered_are_a_setting(make_gateway):
    """pynetdicom: the default answers only --ae-title (PS3.8 9.3.4: result 1, source 1, reason 7
    otherwise); --accept-called-ae adds an alias, and * answers to any called AE title."""
    strict = make_gateway().settings.port
    assert _echo_as(strict, "DICOMCHAIN") == (True, None)
    assert _echo_as(strict, "ANY-SCP") == (False, (1, 1, 7))
    alias = make_gateway(accept_called_ae=("OLD_PACS_GW",)).settings.port
    assert _echo_as(alias, "OLD_PACS_GW") == (True, None)
    assert _echo_as(alias, "DICOMCHAIN") == (True, None)
    assert _echo_as(alias, "WRONGAE") == (False, (1, 1, 7))
    anyone = make_gateway(accept_called_ae=("*",)).settings.port
    assert _echo_as(anyone, "WRONGAE") == (True, None)


def test_tls_associations_work_and_plain_ones_do_not(make_gateway, tmp_path):
    cert, key = self_signed(tmp_path)
    gateway = make_gateway(tls_cert=cert, tls_key=key)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    scu = AE(ae_title="TLS_SCU")
    scu.add_requested_context(Verification)
    scu.acse_timeout = scu.network_timeout = 5
    assoc = scu.associate(
        "127.0.0.1", gateway.settings.port, ae_title="DICOMCHAIN", tls_args=(client, "localhost")
    )
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    plain = scu.associate("127.0.0.1", gateway.settings.port, ae_title="DICOMCHAIN")
    assert not plain.is_established


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> str | None:
    """A TLS handshake in memory; None when it completes, else which side refused ("server"/"client")."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    s_end = server.wrap_bio(to_server, to_client, server_side=True)
    c_end = client.wrap_bio(to_client, to_server, server_hostname="localhost")
    done = {"server": False, "client": False}
    for _ in range(10):
        for side, end in (("client", c_end), ("server", s_end)):
            if done[side]:
                continue
            try:
                end.do_handshake()
                done[side] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return side
        if all(done.values()):
            return None
    raise AssertionError("handshake neither completed nor failed")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")  # offered on purpose
def test_tls_below_1_2_is_refused_by_the_gateway(tmp_path):
    """BCP 195 / RFC 9325: the server end refuses a TLS 1.0 or 1.1 client; 1.2 and 1.3 work."""
    from dicom_chain.config import Settings
    from scp.server import tls_context

    cert, key = self_signed(tmp_path)
    server = tls_context(Settings(home=tmp_path, tls_cert=cert, tls_key=key))
    assert server is not None and server.minimum_version == ssl.TLSVersion.TLSv1_2

    def client(version: ssl.TLSVersion) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer the old versions at all
        context.minimum_version = context.maximum_version = version
        return context

    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        assert _handshake(server, client(old)) == "server", old
    for current in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        assert _handshake(server, client(current)) is None, current


def test_many_associations_at_once_keep_heights_contiguous(make_gateway, node: Node):
    gateway = make_gateway()
    senders, per_sender = 6, 10
    statuses: list[int] = []

    def send(seed: int) -> None:
        scu = AE(ae_title=f"MOD{seed}")
        scu.add_requested_context(CTImageStorage)
        assoc = scu.associate("127.0.0.1", gateway.settings.port, ae_title="DICOMCHAIN")
        for ds in ct_study(StudySpec(seed=100 + seed, instances=per_sender, rows=16, columns=16)):
            statuses.append(assoc.send_c_store(ds).Status)
        assoc.release()

    threads = [threading.Thread(target=send, args=(s,)) for s in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert statuses == [0] * senders * per_sender
    heights = [h for h, _ in node.ledger.iter_blocks(node.chain_id)]
    assert heights == list(range(senders * per_sender))
    report = verify_node(node.ledger, node.storage)
    assert report.ok, report.findings


@pytest.mark.dcmtk
def test_sigterm_finishes_the_association_in_flight_and_exits_0(tmp_path):
    storescu = require_tool("storescu", "dcmtk")
    files = []
    for i, ds in enumerate(ct_study(StudySpec(seed=9, instances=120, rows=64, columns=64))):
        files.append(tmp_path / f"{i}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    gateway = GatewayProcess(tmp_path / "gw", free_port()).start()
    sender = subprocess.Popen(
        [storescu, "-aec", "DICOMCHAIN", "127.0.0.1", str(gateway.port), *map(str, files)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    ledger = Ledger(f"sqlite:///{tmp_path / 'gw' / 'ledger.db'}")
    try:
        while ledger.block_count() < 10:
            assert sender.poll() is None, "storescu finished before SIGTERM could land"
        gateway.proc.send_signal(signal.SIGTERM)
        assert gateway.proc.wait(120) == 0, gateway.log()[-2000:]
        assert sender.wait(60) == 0, sender.stdout.read()
        assert ledger.block_count() == len(files)  # the open association was allowed to finish
        types = [e.type for e in ledger.iter_events()]
        assert types[0] == "service.start" and types[-1] == "service.stop"
    finally:
        ledger.close()
        gateway.stop()


@contextlib.contextmanager
def forwarding_nowhere(tmp_path: Path) -> Iterator[GatewayProcess]:
    """serve as a process, forwarding to a port nothing listens on: its forward process runs."""
    home = tmp_path / "gw"
    home.mkdir()
    gateway = GatewayProcess(home, free_port(), ("--forward", f"NOBODY@127.0.0.1:{free_port()}")).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def test_the_forward_process_follows_serve_even_into_kill_9(tmp_path):
    """serve forwards from a child process; if serve is killed the child must not linger."""
    with forwarding_nowhere(tmp_path) as gateway:
        assert wait_until(gateway.forward_children, 30), gateway.log()[-3000:]
        [child] = gateway.forward_children()
        assert gateway.wait_for_log("forwarding to NOBODY@"), gateway.log()[-3000:]  # it is watching serve
        gateway.kill9()
        assert wait_until(lambda: not process_running(child), 15), f"forward process {child} outlived serve"


def test_the_forward_process_yields_the_cpu_to_receiving(tmp_path):
    """A modality waits on its C-STOREs and a PACS waits on nothing: the forward process runs at a
    lower CPU priority than serve (FORWARD_NICENESS)."""
    from scp.forward_process import FORWARD_NICENESS

    with forwarding_nowhere(tmp_path) as gateway:
        assert gateway.wait_for_log("forwarding to NOBODY@"), gateway.log()[-3000:]
        [child] = gateway.forward_children()
        serve = os.getpriority(os.PRIO_PROCESS, gateway.proc.pid)
        assert os.getpriority(os.PRIO_PROCESS, child) == min(19, serve + FORWARD_NICENESS)


def test_a_forward_process_that_dies_is_started_again(tmp_path):
    """The queue must keep draining without an operator noticing a dead child: serve starts
    another (its leases are taken back), and still stops it cleanly on SIGTERM."""
    with forwarding_nowhere(tmp_path) as gateway:
        assert gateway.wait_for_log("forwarding to NOBODY@"), gateway.log()[-3000:]
        [first] = gateway.forward_children()
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: gateway.forward_children() not in ([], [first]), 30), gateway.log()[-3000:]
        [second] = gateway.forward_children()
        assert f"forward process {first} ended (killed by signal 9)" in gateway.log()
        gateway.proc.send_signal(signal.SIGTERM)
        assert gateway.proc.wait(60) == 0, gateway.log()[-3000:]
        assert not process_running(second)
        assert "Traceback" not in gateway.log()


def test_sigterm_with_forwarding_stops_the_forward_process_and_exits_0(tmp_path):
    with forwarding_nowhere(tmp_path) as gateway:
        assert gateway.wait_for_log("forwarding to NOBODY@"), gateway.log()[-3000:]  # the child is up
        [child] = gateway.forward_children()
        gateway.proc.send_signal(signal.SIGTERM)
        assert gateway.proc.wait(60) == 0, gateway.log()[-3000:]
        assert not process_running(child)  # serve stopped it and waited for it
        assert "Traceback" not in gateway.log()
        ledger = Ledger(f"sqlite:///{gateway.home / 'ledger.db'}")
        try:
            assert [e.type for e in ledger.iter_events()][-1] == "service.stop"
        finally:
            ledger.close()


def test_serving_freezes_start_up_objects_and_collects_the_young_less_often():
    import gc

    from scp.server import GC_THRESHOLDS, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS and GC_THRESHOLDS[0] > before[0]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_the_next_instances_temp_file_is_made_while_the_association_waits(tmp_path):
    """After a C-STORE response the association's thread makes spare temp files (storage.Spares) in
    the spool folder; the next instance is written into it; none is left once the association
    ends, and the spool lists no data set for it."""
    from dicom_chain.config import Settings
    from scp.server import Gateway

    settings = Settings(
        home=tmp_path / "node", institution="Test Hospital", host="127.0.0.1", port=free_port()
    )
    node = Node.open(settings)
    gateway = Gateway(node)
    gateway.start()
    spares = lambda: sorted(p for p in gateway.spool.folder.iterdir() if p.name.startswith(".incoming-"))  # noqa: E731
    try:
        scu = AE(ae_title="SPARES")
        scu.add_requested_context(CTImageStorage)
        scu.add_requested_context(Verification)
        assoc = scu.associate("127.0.0.1", settings.port, ae_title=settings.ae_title)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assert not wait_until(spares, 0.5)  # after a request that is not a C-STORE: none made
        used = []
        try:
            for ds in ct_study(StudySpec(seed=95, instances=3, rows=16, columns=16)):
                ready = [p.stat().st_ino for p in spares()]
                assert assoc.send_c_store(ds).Status == 0x0000
                used.append(ready)
                assert wait_until(lambda: len(spares()) >= 1, 10), "no spare after the response"
                assert gateway.spool.files() == []
        finally:
            assoc.release()
        assert used[0] == [] and all(used[1:])
        inodes = [p.stat().st_ino for p in map(node.storage.path, sorted(node.storage.iter_files()))]
        assert sum(1 for i in inodes if any(i in u for u in used[1:])) == 2  # the second and third
        assert wait_until(lambda: spares() == [], 10), spares()
    finally:
        gateway.stop()
        node.close()
