"""pynetdicom's polling loops against our event-driven reactor (scp/reactor.py), in one run.

The same study goes with DCMTK storescu over one association, rounds alternated, to:
  (a) a bare pynetdicom SCP that only writes the received bytes (bench_gateway.py's), stock,
  (a+) the same SCP with ``scp.reactor.install(ae)``,
  (b) ``dicom-chain serve`` (no forwarding) with the reactor switched off (``reactor.ENABLED``),
  (b+) the same gateway as it ships, reactor on.
Reported: instances/s (median and range over the rounds), and CPU seconds per instance of the
receiving process (utime + stime from /proc/PID/stat, read before and after each send).

Then the forwarder's case: a process holding 4 established, idle associations (requestor side)
to an SCP in another process, CPU seconds it uses over --idle-s seconds, stock vs ours, alternated.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_reactor.py [--instances 200] [--rounds 3]

Ratios are the result: on a shared machine absolute rates move with the load (printed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_gateway import BARE_SCP, NODELAY, free_port, make_study, start, stop, wait_port

GATEWAY = textwrap.dedent(
    """
    import sys
    import scp.reactor
    scp.reactor.ENABLED = sys.argv.pop(1) == "ours"
    from dicom_chain.cli import main
    sys.argv[0] = "dicom-chain"
    main()
    """
)
IDLE_HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification
    port, ours, seconds = int(sys.argv[1]), sys.argv[2] == "ours", float(sys.argv[3])
    ae = AE(ae_title="HOLDER")
    if ours:
        from scp.reactor import install
        assert install(ae)
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 600
    ae.add_requested_context(Verification)
    assocs = [ae.associate("127.0.0.1", port, ae_title="PEER") for _ in range(4)]
    assert all(a.is_established and a.send_c_echo().Status == 0 for a in assocs)
    time.sleep(0.5)
    before = os.times()
    time.sleep(seconds)
    after = os.times()
    print((after.user - before.user) + (after.system - before.system))
    for a in assocs:
        a.release()
    """
)
IDLE_PEER = textwrap.dedent(
    """
    import sys
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification
    from scp.reactor import install
    ae = AE(ae_title="PEER")
    install(ae)  # the peer quiet, so it does not load the cores the holder is measured on
    ae.network_timeout = 600
    ae.add_supported_context(Verification)
    ae.start_server(("127.0.0.1", int(sys.argv[1])))
    """
)
VARIANTS = ("a stock", "a+ ours", "b stock", "b+ ours")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def storescu(port: int, folder: Path, aec: str) -> float:
    start_ = time.perf_counter()
    subprocess.run(
        ["storescu", "-aec", aec, "+sd", "127.0.0.1", str(port), str(folder)],
        check=True, capture_output=True, env={**os.environ, **NODELAY},
    )  # fmt: skip
    return time.perf_counter() - start_


def receiver(variant: str, root: Path, n: int) -> tuple[subprocess.Popen, int, str]:
    port = free_port()
    mode = "ours" if "ours" in variant else "stock"
    if variant.startswith("a"):
        out = root / f"bare-{n}"
        out.mkdir()
        proc = start([sys.executable, str(root / "bare_scp.py"), str(out), str(port), mode])
        aec = "BARE"
    else:
        home = root / f"gw-{n}"
        cmd = [sys.executable, str(root / "gateway.py"), mode, "serve", "--home", str(home),
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
        proc = start(cmd, log=root / f"gw-{n}.log")
        aec = "DICOMCHAIN"
    wait_port(port, proc)
    return proc, port, aec


def idle_cpu(root: Path, mode: str, seconds: float) -> float:
    port = free_port()
    peer = start([sys.executable, str(root / "idle_peer.py"), str(port)])
    try:
        wait_port(port, peer)
        out = subprocess.run(
            [sys.executable, str(root / "idle_holder.py"), str(port), mode, str(seconds)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        return float(out.stdout.split()[-1])
    finally:
        stop(peer)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.2f} [{min(values):.2f}-{max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--idle-rounds", type=int, default=2)
    parser.add_argument("--only", choices=["bare", "gateway"], help="one receiver, both loops")
    args = parser.parse_args()
    prefix = {"bare": "a", "gateway": "b", None: ""}[args.only]
    variants = tuple(v for v in VARIANTS if v.startswith(prefix))
    root = Path(tempfile.mkdtemp(prefix="bench-reactor-"))
    try:
        (root / "bare_scp.py").write_text(BARE_SCP)
        (root / "gateway.py").write_text(GATEWAY)
        (root / "idle_holder.py").write_text(IDLE_HOLDER)
        (root / "idle_peer.py").write_text(IDLE_PEER)
        study = make_study(root / "study", args.instances, 512)
        megabytes = sum(p.stat().st_size for p in study) / 1e6
        rates: dict[str, list[float]] = {v: [] for v in variants}
        cpus: dict[str, list[float]] = {v: [] for v in variants}
        loads = [os.getloadavg()[0]]
        n = 0
        for round_ in range(args.rounds):
            order = variants if round_ % 2 == 0 else tuple(reversed(variants))
            for variant in order:
                n += 1
                proc, port, aec = receiver(variant, root, n)
                try:
                    time.sleep(1.0)  # start-up CPU settles before the count begins
                    before = cpu_s(proc.pid)
                    elapsed = storescu(port, study[0].parent, aec)
                    cpu = cpu_s(proc.pid) - before
                finally:
                    stop(proc)
                rates[variant].append(args.instances / elapsed)
                cpus[variant].append(cpu / args.instances * 1000)
                loads.append(os.getloadavg()[0])
                print(f"round {round_ + 1} {variant:8s} {args.instances / elapsed:7.1f} inst/s "
                      f"{cpu / args.instances * 1000:6.2f} ms CPU/inst", flush=True)  # fmt: skip
        idle: dict[str, list[float]] = {"stock": [], "ours": []}
        for round_ in range(args.idle_rounds):
            for mode in ("stock", "ours") if round_ % 2 == 0 else ("ours", "stock"):
                idle[mode].append(idle_cpu(root, mode, args.idle_s))
                loads.append(os.getloadavg()[0])

        print(
            f"\n{os.cpu_count()} CPUs, load average (1 min) during the run {min(loads):.2f}-{max(loads):.2f}"
        )
        print(f"study: {args.instances} x 512x512 CT, {megabytes:.0f} MB, storescu over one association, "
              f"{args.rounds} rounds alternated; median [range]")  # fmt: skip
        print(f"  {'receiver':10s} {'inst/s':>22s} {'CPU ms/inst (receiver)':>28s}")
        for v in variants:
            print(f"  {v:10s} {spread(rates[v]):>22s} {spread(cpus[v]):>28s}")
        med = {v: statistics.median(rates[v]) for v in variants}
        mcpu = {v: statistics.median(cpus[v]) for v in variants}
        for name, stock, ours in (("bare SCP", "a stock", "a+ ours"), ("gateway", "b stock", "b+ ours")):
            if stock in med:
                print(f"{name + ':':10s} ours/stock rate {med[ours] / med[stock]:.2f}, "
                      f"CPU {mcpu[ours] / mcpu[stock]:.2f}")  # fmt: skip
        if not args.only:
            print(f"gateway/bare: stock {med['b stock'] / med['a stock']:.2f}, "
                  f"ours {med['b+ ours'] / med['a stock']:.2f} (both against stock a)")  # fmt: skip
        if args.idle_rounds:
            print(f"4 idle associations (requestor), CPU s over {args.idle_s:g} s: "
                  f"stock {spread(idle['stock'])}, ours {spread(idle['ours'])}")  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
