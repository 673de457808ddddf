"""Gateway throughput against real peers, as ratios measured in one run on this machine.

The same 400-instance 512x512 CT study goes with DCMTK storescu over one association to:
  (a) a bare pynetdicom SCP that only writes the received bytes to disk,
  (b) dicom-chain serve, forwarding to an Orthanc started as Debian ships it (Nagle on),
  (c) Orthanc itself, (d) DCMTK storescp.
Then: how fast (b)'s forward queue drains into that Orthanc, and the gateway's peak RSS while it
receives a study of --rss-gb gigabytes (no forwarding).

    .venv/bin/python benchmarks/bench_gateway.py [--instances 400] [--rss-gb 2]

Targets: b/a >= 0.8, b/c >= 1.0, drain >= 0.8 x ingest, peak RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

from dicom_chain.synthetic import StudySpec, ct_study

BARE_SCP = textwrap.dedent(
    """
    import sys, os
    from pynetdicom import AE, evt, AllStoragePresentationContexts, ALL_TRANSFER_SYNTAXES
    out, port = sys.argv[1], int(sys.argv[2])
    def store(event):
        path = os.path.join(out, event.request.AffectedSOPInstanceUID)
        with open(path, "wb") as fp:
            fp.write(event.request.DataSet.getvalue())
        return 0
    ae = AE(ae_title="BARE")
    ae.maximum_pdu_size = 131072
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.start_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_STORE, store)])
    """
)
NODELAY = {"TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def make_study(folder: Path, instances: int, size: int) -> list[Path]:
    folder.mkdir(parents=True)
    files = []
    for i, ds in enumerate(
        ct_study(StudySpec(seed=4242 + size, instances=instances, rows=size, columns=size))
    ):
        files.append(folder / f"{i:05d}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    return files


def storescu(port: int, folder: Path, aec: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["storescu", "-aec", aec, "+sd", "127.0.0.1", str(port), str(folder)],
        check=True, capture_output=True, env={**os.environ, **NODELAY},
    )  # fmt: skip
    return time.perf_counter() - start


def start(cmd: list[str], env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def orthanc(root: Path, nodelay: bool) -> tuple[subprocess.Popen, int, int]:
    dicom, http = free_port(), free_port()
    root.mkdir(parents=True)
    config = {
        "Name": "bench", "DicomAet": "ORTHANC", "DicomPort": dicom, "HttpPort": http,
        "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
        "Plugins": [], "DicomModalities": {},
    }  # fmt: skip
    (root / "orthanc.json").write_text(json.dumps(config))
    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    proc = start([binary, str(root / "orthanc.json")], NODELAY if nodelay else None, root / "log")
    wait_port(dicom)
    return proc, dicom, http


def orthanc_count(http: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/statistics", timeout=10) as r:
        return int(json.load(r)["CountInstances"])


def gateway(home: Path, port: int, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dicom_chain.cli", "serve", "--home", str(home), "--host", "127.0.0.1",
           "--port", str(port), *args]  # fmt: skip
    proc = start(cmd, log=home.parent / f"{home.name}.log")
    wait_port(port)
    return proc


def pending(home: Path) -> int:
    from dicom_chain.ledger import Ledger
    from dicom_chain.outbox import Outbox

    ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
    try:
        return Outbox(ledger, None).pending_count()
    finally:
        ledger.close()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=400)
    parser.add_argument("--rss-gb", type=float, default=2.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    try:
        study = make_study(root / "study", args.instances, 512)
        megabytes = sum(p.stat().st_size for p in study) / 1e6
        rates: dict[str, float] = {}

        bare_port, bare_out = free_port(), root / "bare"
        bare_out.mkdir()
        (root / "bare_scp.py").write_text(BARE_SCP)
        proc = start([sys.executable, str(root / "bare_scp.py"), str(bare_out), str(bare_port)])
        wait_port(bare_port)
        rates["a bare pynetdicom SCP"] = args.instances / storescu(bare_port, study[0].parent, "BARE")
        stop(proc)

        pacs, pacs_port, pacs_http = orthanc(root / "pacs-stock", nodelay=False)  # as Debian ships it
        home, port = root / "gw", free_port()
        proc = gateway(home, port, "--forward", f"ORTHANC@127.0.0.1:{pacs_port}")
        t0 = time.perf_counter()
        ingest = storescu(port, study[0].parent, "DICOMCHAIN")
        rates["b dicom-chain serve (+forward)"] = args.instances / ingest
        while pending(home) and time.perf_counter() - t0 < 1800:
            time.sleep(0.2)
        drain = time.perf_counter() - t0
        forwarded = orthanc_count(pacs_http)
        stop(proc)
        stop(pacs)

        pacs, pacs_port, _ = orthanc(root / "pacs-nodelay", nodelay=True)
        rates["c Orthanc"] = args.instances / storescu(pacs_port, study[0].parent, "ORTHANC")
        stop(pacs)

        scp_port = free_port()
        (root / "storescp").mkdir()
        proc = start(["storescp", "-od", str(root / "storescp"), str(scp_port)], NODELAY)
        wait_port(scp_port)
        rates["d DCMTK storescp"] = args.instances / storescu(scp_port, study[0].parent, "STORESCP")
        stop(proc)
        shutil.rmtree(root / "study")

        rss_instances = int(args.rss_gb * 1e9 / (1024 * 1024 * 2))
        big = make_study(root / "big", rss_instances, 1024)
        big_gb = sum(p.stat().st_size for p in big) / 1e9
        home, port = root / "gw-rss", free_port()
        proc = gateway(home, port)
        storescu(port, big[0].parent, "DICOMCHAIN")
        rss = peak_rss_mb(proc.pid)
        stop(proc)

        b = rates["b dicom-chain serve (+forward)"]
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
        print(f"study: {args.instances} x 512x512 CT, {megabytes:.0f} MB, storescu over one association")
        for name, rate in rates.items():
            print(f"  {name:32s} {rate:7.1f} inst/s  {rate * megabytes / args.instances:6.1f} MB/s")
        print(f"ratio b/a {b / rates['a bare pynetdicom SCP']:.2f} (target >= 0.8)")
        print(f"ratio b/c {b / rates['c Orthanc']:.2f} (target >= 1.0)")
        drained = args.instances / drain
        print(f"forward drain into stock Orthanc: {forwarded}/{args.instances} in {drain:.1f} s")
        print(f"  {drained:.1f} inst/s = {drained / b:.2f} x ingest (target >= 0.8)")
        print(
            f"peak RSS receiving {big_gb:.2f} GB ({rss_instances} x 1024x1024): {rss:.0f} MB (target < 300)"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
