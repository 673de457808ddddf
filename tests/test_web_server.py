"""``serve --http-port`` (web/server.py) as two real processes: each serves its log over HTTPS,
the other cosigns its checkpoints at every round, and SIGTERM stops the API with the gateway."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from dicom_chain.tlog import cosignature
from dicom_chain.tlog.checkpoint import open_signed
from dicom_chain.tlog.witnessing import witness_name

from .peers import GatewayProcess, free_port, self_signed, wait_until

CLI = [sys.executable, "-m", "dicom_chain.cli"]


def _cli(*args: str) -> str:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_two_served_nodes_cosign_each_others_checkpoints_over_https(tmp_path: Path):
    names = {"a": "Hospital A", "b": "Hospital B"}
    homes = {n: tmp_path / n for n in names}
    ports = {n: free_port() for n in names}
    http = {n: free_port() for n in names}
    certs = {}
    for n, home in homes.items():
        home.mkdir()
        certs[n] = self_signed(home, "log")
        _cli("keys", "export", "--home", str(home), "--output", str(tmp_path / f"{n}.pem"))
    for n, other in (("a", "b"), ("b", "a")):
        _cli(
            "institution", "add", names[other], "--home", str(homes[n]), "--ae", f"GW_{other.upper()}",
            "--host", "127.0.0.1", "--port", str(ports[other]),
            "--public-key", str(tmp_path / f"{other}.pem"),
            "--tls-cert", str(certs[other][0]), "--log-url", f"https://localhost:{http[other]}",
        )  # fmt: skip
    gateways = {
        n: GatewayProcess(homes[n], ports[n], (
            "--institution", names[n], "--http-port", str(http[n]), "--http-host", "127.0.0.1",
            "--http-tls-cert", str(certs[n][0]), "--http-tls-key", str(certs[n][1]),
            "--witness-quorum", "1", "--checkpoint-interval", "1",
        ))
        for n in names
    }  # fmt: skip
    try:
        for g in gateways.values():
            g.start()
        keys = {n: _public_key(tmp_path / f"{n}.pem") for n in names}
        for n, other in (("a", "b"), ("b", "a")):
            with httpx.Client(verify=_trust(certs[n][0]), timeout=5) as client:
                url = f"https://localhost:{http[n]}/log/checkpoint"
                assert wait_until(lambda url=url, client=client: client.get(url).status_code == 200, 30), (
                    gateways[n].log()[-2000:]
                )
                served = client.get(url).text
            assert open_signed(served, keys[n]).size > 0  # signed by the node's own key
            assert cosignature.verify(served, witness_name(_key_id(keys[other])), keys[other]) > 0
        for g in gateways.values():
            assert g.terminate() == 0
        assert "log API listening" in gateways["a"].log()
    finally:
        for g in gateways.values():
            if g.proc is not None and g.proc.poll() is None:
                g.kill9()


def _public_key(path: Path) -> bytes:
    from dicom_chain.keys import load_public_key

    return load_public_key(path)


def _key_id(public: bytes) -> str:
    from dicom_chain.keys import key_id_for

    return key_id_for(public)


def _trust(cert: Path):
    import ssl

    return ssl.create_default_context(cafile=str(cert))
