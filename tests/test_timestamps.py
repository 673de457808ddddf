"""RFC 3161 timestamps on checkpoints, against a real TSA: ``openssl ts -reply`` behind a local
HTTP server, with its own CA and a TSA certificate (extendedKeyUsage critical timeStamping)."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from dicom_chain.errors import TimestampError
from dicom_chain.tlog.timestamps import Timestamp, check_token, request_for, token_from_response
from web.tsa import request_timestamp

from .peers import require_tool

# A checkpoint's signed note as the log writes it (body, blank line, signature line), in UTF-8.
NOTE = (
    "AAAA.dicom-chain/Test_Hospital\n42\nq7bQ2yFQ6WcVv7AHM2Cmd5kqPwI9TBTmeHzqrbNQ7ns=\n"
    "\n\u2014 AAAA.dicom-chain/Test_Hospital 3q2+7wBhYmNk\n"
).encode()
OTHER = NOTE.replace(b"\n42\n", b"\n43\n")

# Two TSAs from one key: "ok" grants SHA-256 requests; "strict" takes SHA-512 only, so it refuses ours.
TS_CONFIG = """\
[tsa]
default_tsa = ok

[ok]
dir = {dir}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.pem
certs = $dir/ca.pem
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.99999.1
other_policies = 1.3.6.1.4.1.99999.2
digests = sha256
accuracy = secs:1
ordering = no
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256

[strict]
dir = {dir}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.pem
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.99999.1
other_policies = 1.3.6.1.4.1.99999.2
digests = sha512
"""
SECTIONS = {"/tsa": "ok", "/strict": "strict"}


@dataclass(frozen=True)
class LocalTsa:
    url: str
    strict_url: str  # answers every request with a rejection (badAlg)
    certificate_pem: bytes
    subject: str
    home: Path
    openssl: str


def _handler(openssl: str, home: Path) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            section = SECTIONS.get(self.path)
            if section is None:
                self.send_error(404)
                return
            query = home / f"query-{threading.get_ident()}.tsq"
            reply = query.with_suffix(".tsr")
            query.write_bytes(self.rfile.read(int(self.headers["Content-Length"])))
            subprocess.run(
                [openssl, "ts", "-reply", "-config", str(home / "ts.cnf"), "-section", section,
                 "-queryfile", str(query), "-out", str(reply)],
                check=True, capture_output=True,
            )  # fmt: skip
            body = reply.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def tsa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTsa]:
    openssl = require_tool("openssl", "openssl")
    home = tmp_path_factory.mktemp("tsa")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=home, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=dicom-chain test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "tsa.key", "-out", "tsa.csr",
        "-subj", "/O=dicom-chain tests/CN=Test TSA")  # fmt: skip
    (home / "tsa.ext").write_text("extendedKeyUsage = critical, timeStamping\n")
    run("x509", "-req", "-in", "tsa.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "2",
        "-days", "2", "-extfile", "tsa.ext", "-out", "tsa.pem")  # fmt: skip
    (home / "serial").write_text("01\n")
    (home / "ts.cnf").write_text(TS_CONFIG.format(dir=home))
    pem = (home / "tsa.pem").read_bytes()

    server = HTTPServer(("127.0.0.1", 0), _handler(openssl, home))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield LocalTsa(
        url=base + "/tsa",
        strict_url=base + "/strict",
        certificate_pem=pem,
        subject=x509.load_pem_x509_certificate(pem).subject.rfc4514_string(),
        home=home,
        openssl=openssl,
    )
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="module")
def token(tsa: LocalTsa) -> bytes:
    return request_timestamp(tsa.url, NOTE)


@pytest.fixture(scope="module")
def stamp(token: bytes, tsa: LocalTsa) -> Timestamp:
    return check_token(token, NOTE, tsa.certificate_pem)


def test_token_checks_against_the_same_bytes(stamp: Timestamp, tsa: LocalTsa) -> None:
    assert stamp.time.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - stamp.time) < timedelta(minutes=1)
    assert stamp.tsa == tsa.subject
    assert "CN=Test TSA" in stamp.tsa


def test_each_token_has_its_own_serial(stamp: Timestamp, tsa: LocalTsa) -> None:
    again = check_token(request_timestamp(tsa.url, NOTE), NOTE, tsa.certificate_pem)
    assert again.serial != stamp.serial


def test_token_fails_for_other_bytes(token: bytes, tsa: LocalTsa) -> None:
    with pytest.raises(TimestampError, match="other bytes"):
        check_token(token, OTHER, tsa.certificate_pem)
    with pytest.raises(TimestampError, match="other bytes"):
        check_token(token, NOTE + b"\n", tsa.certificate_pem)


def test_token_fails_against_another_certificate(token: bytes, tsa: LocalTsa) -> None:
    subprocess.run(
        [tsa.openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "impostor.key",
         "-out", "impostor.pem", "-days", "2", "-subj", "/CN=Test TSA",
         "-addext", "extendedKeyUsage = critical, timeStamping"],
        cwd=tsa.home, check=True, capture_output=True,
    )  # fmt: skip
    impostor = (tsa.home / "impostor.pem").read_bytes()
    with pytest.raises(TimestampError, match="does not verify with the certificate of CN=Test TSA"):
        check_token(token, NOTE, impostor)
    # The CA that issued the TSA's certificate is not the TSA either.
    with pytest.raises(TimestampError, match="does not verify"):
        check_token(token, NOTE, (tsa.home / "ca.pem").read_bytes())
    with pytest.raises(TimestampError, match="not a PEM certificate"):
        check_token(token, NOTE, b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + bytes([t[-1] ^ 1]),  # the signature's last byte
        lambda t: t[: len(t) // 2],
        lambda t: t + b"\0",
        lambda t: b"",
        lambda t: b"\x30\x03\x02\x01\x01",  # a DER SEQUENCE, of something else
    ],
    ids=["signature", "truncated", "trailing", "empty", "other-der"],
)
def test_mangled_token_gives_timestamp_error(token: bytes, tsa: LocalTsa, mangle) -> None:
    with pytest.raises(TimestampError):
        check_token(mangle(token), NOTE, tsa.certificate_pem)


def test_no_flipped_byte_raises_another_exception_or_changes_the_stamp(
    token: bytes, tsa: LocalTsa, stamp: Timestamp
) -> None:
    """Flips inside the certificates the token carries, or in fields nobody signs (the
    signer's identifier), may leave a valid token: never one that says something else."""
    refused = 0
    for at in range(0, len(token), 5):
        flipped = bytearray(token)
        flipped[at] ^= 0x41
        try:
            assert check_token(bytes(flipped), NOTE, tsa.certificate_pem) == stamp
        except TimestampError:
            refused += 1
    assert refused > len(token) // 5 // 5


def test_token_is_the_tsas_bytes_and_openssl_verifies_it(tsa: LocalTsa) -> None:
    """Re-encoding the token would reorder the certificates it carries; certReq puts the TSA's
    certificate there, so a standard tool checks it from the CA alone."""
    response = httpx.post(
        tsa.url, content=request_for(NOTE), headers={"Content-Type": "application/timestamp-query"}
    ).content
    token = token_from_response(response)
    assert response.endswith(token)
    (tsa.home / "note.txt").write_bytes(NOTE)
    (tsa.home / "token.tst").write_bytes(token)
    verified = subprocess.run(
        [tsa.openssl, "ts", "-verify", "-token_in", "-in", "token.tst", "-data", "note.txt",
         "-CAfile", "ca.pem"],
        cwd=tsa.home, capture_output=True, text=True,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    assert "Verification: OK" in verified.stdout


def test_request_is_sha256_with_nonce_and_cert_req(tsa: LocalTsa) -> None:
    (tsa.home / "request.tsq").write_bytes(request_for(NOTE, nonce=0x1234ABCD))
    text = subprocess.run(
        [tsa.openssl, "ts", "-query", "-in", "request.tsq", "-text"],
        cwd=tsa.home, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert "Hash Algorithm: sha256" in text
    assert "Nonce: 0x1234ABCD" in text
    assert "Certificate required: yes" in text


def test_rejection_gives_timestamp_error(tsa: LocalTsa) -> None:
    with pytest.raises(TimestampError, match=r"refused the request: rejection.*badAlg") as caught:
        request_timestamp(tsa.strict_url, NOTE)
    assert tsa.strict_url in str(caught.value)


def test_nonce_of_another_request_gives_timestamp_error(tsa: LocalTsa) -> None:
    response = httpx.post(tsa.url, content=request_for(NOTE, nonce=1)).content
    assert token_from_response(response, nonce=1)
    with pytest.raises(TimestampError, match="nonce"):
        token_from_response(response, nonce=2)


@pytest.mark.parametrize("response", [b"", b"<html>Service Unavailable</html>", b"\x30\x03\x02\x01\x00"])
def test_garbage_response_gives_timestamp_error(response: bytes) -> None:
    with pytest.raises(TimestampError):
        token_from_response(response)


def test_http_error_gives_timestamp_error(tsa: LocalTsa) -> None:
    url = tsa.url.replace("/tsa", "/nowhere")
    with pytest.raises(TimestampError, match="404") as caught:
        request_timestamp(url, NOTE)
    assert url in str(caught.value)


def test_nothing_listening_gives_timestamp_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/tsa"
    with pytest.raises(TimestampError) as caught:
        request_timestamp(url, NOTE, timeout_s=5.0)
    assert url in str(caught.value)


def test_the_log_commands_timestamp_a_checkpoint_and_check_it_offline(tsa: LocalTsa, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dicom_chain.cli import main

    home = ["--home", str(tmp_path / "node")]
    runner = CliRunner()
    checkpoint, token = tmp_path / "cp.txt", tmp_path / "cp.tsr"
    assert runner.invoke(main, ["log", "checkpoint", *home, "--output", str(checkpoint)]).exit_code == 0
    made = runner.invoke(
        main, ["log", "timestamp", str(checkpoint), "--tsa", tsa.url, "--output", str(token)]
    )
    assert made.exit_code == 0, made.output
    cert = tmp_path / "tsa.pem"
    cert.write_bytes(tsa.certificate_pem)
    checked = runner.invoke(
        main, ["log", "verify-timestamp", str(checkpoint), str(token), "--tsa-cert", str(cert)]
    )
    assert checked.exit_code == 0 and tsa.subject in checked.output, checked.output
    checkpoint.write_text(checkpoint.read_text().replace("\n", "\n\n", 1))  # another text than the one dated
    again = runner.invoke(
        main, ["log", "verify-timestamp", str(checkpoint), str(token), "--tsa-cert", str(cert)]
    )
    assert again.exit_code == 1 and "BROKEN" in again.output


def test_a_published_checkpoint_is_timestamped_and_its_bundle_carries_the_token(
    tsa: LocalTsa, tmp_path: Path
) -> None:
    import pydicom

    from dicom_chain.carriers.dicom.carrier import item_from_dataset
    from dicom_chain.config import Settings
    from dicom_chain.node import Node
    from dicom_chain.tlog import bundle
    from dicom_chain.tlog.publishing import Publisher, latest_published
    from web.publish import publish_round

    from .conftest import SAMPLE_STUDY

    node = Node.open(Settings(home=tmp_path / "n", institution="Hospital T"))
    try:
        ds = pydicom.dcmread(sorted(SAMPLE_STUDY.glob("*.dcm"))[0])
        node.ingest(item_from_dataset(ds))
        done = publish_round(Publisher(node, "Hospital T", quorum=0), tsa.url)
        assert done.published is not None and done.published.timestamp
        published = latest_published(node)
        assert published is not None and published.timestamp == done.published.timestamp
        doc = bundle.build(node, "Hospital T", str(ds.SOPInstanceUID))
        checked = bundle.check(doc, node.key.public_key, tsa_certificate=tsa.certificate_pem)
        assert checked.ok and any(line.startswith("timestamped by") for line in checked.lines), checked.lines
        ca = (tsa.home / "ca.pem").read_bytes()  # the CA that issued the TSA's certificate is not the TSA
        assert not bundle.check(doc, node.key.public_key, tsa_certificate=ca).ok
        down = publish_round(Publisher(node, "Hospital T", quorum=0), tsa.strict_url)  # a TSA refusing
        assert down.published is not None and not down.published.timestamp  # published all the same
    finally:
        node.close()
