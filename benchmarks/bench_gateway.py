"""Gateway throughput against real peers, as ratios measured round by round in one run.

The same CT study (--instances x --size^2, 16 bit) goes with DCMTK storescu (TCP_NODELAY=1) over
one association to, in alternated rounds (a b1 c d b2 e, a b1 c d b2 e, ...), each into fresh
folders (this machine's ext4 has no journal: file creation slows as a folder fills):
  (a)  a bare pynetdicom SCP, stock but for the gateway's 128 KB PDU: writes the bytes, no fsync;
  (b1) dicom-chain serve with a forward destination configured but down: pure ingest, queue fills;
       its per-stage timings recorded (DICOM_CHAIN_TIMING, dicom_chain/timing.py);
  (c)  Orthanc as Debian ships it, given TCP_NODELAY=1 as storescu is (its best case);
  (d)  DCMTK storescp;
  (b2) dicom-chain serve forwarding live into a stock Orthanc (Nagle on, as shipped) on this
       machine: ingest rate, then the drain: first C-STORE at the gateway to the last instance
       in Orthanc (polled on its REST /statistics);
  (e)  the same study sent straight to such an Orthanc: the end-to-end baseline.
With --parallel N, (a), (b1) and (c) also take the study split over N simultaneous associations.
Then the gateway's peak RSS receiving a study of --rss-gb gigabytes (0 skips it).

CPU seconds per instance are read for every process involved (/proc/PID/stat utime+stime of the
server and all its descendants, storescu through wait4's rusage), with the load average.

    .venv/bin/python benchmarks/bench_gateway.py [--instances 400] [--rounds 3] [--rss-gb 2]
        [--parallel 4] [--json out.json]
    .venv/bin/python benchmarks/bench_gateway.py --instances 50 --rounds 1 --rss-gb 0   # quick

Targets: b1/a >= 0.8, b1/c >= 0.8, b2/a >= 0.55, drain >= 0.8 x b2 ingest, end to end <= 2 x
straight to Orthanc, peak RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dicom_chain import timing
from dicom_chain.synthetic import StudySpec, ct_study

BARE_SCP = textwrap.dedent(
    """
    import sys, os
    from pynetdicom import AE, evt, AllStoragePresentationContexts, ALL_TRANSFER_SYNTAXES
    out, port = sys.argv[1], int(sys.argv[2])
    ours = sys.argv[3:] == ["ours"]  # bench_reactor.py: with the gateway's event-driven reactor
    def store(event):
        path = os.path.join(out, event.request.AffectedSOPInstanceUID)
        with open(path, "wb") as fp:
            fp.write(event.request.DataSet.getvalue())
        return 0
    ae = AE(ae_title="BARE")
    if ours:
        from scp.reactor import install
        assert install(ae)
    ae.maximum_pdu_size = 131072
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.start_server(("127.0.0.1", port), evt_handlers=[(evt.EVT_C_STORE, store)])
    """
)
NODELAY = {"TCP_NODELAY": "1"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
POLL_S = 0.1  # Orthanc's count while draining: 10 REST calls a second cost it little
DRAIN_TIMEOUT_S = 1800
TARGETS = {  # name: (operator, value)
    "b1/a": (">=", 0.8),
    "b1/c": (">=", 0.8),
    "b2/a": (">=", 0.55),
    "drain/b2": (">=", 0.8),
    "e2e/direct": ("<=", 2.0),
    "rss_mb": ("<", 300.0),
}


# -- processes -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start(cmd: list[str], env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its waited-for children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # after "pid (comm)": state ppid ... utime(14) stime(15) cutime(16) cstime(17), 1-based
    return int(fields[1]), sum(int(f) for f in fields[11:15]) / CLOCK_TICKS


def tree_cpu(root: int) -> tuple[float, float]:
    """CPU seconds of ``root``, and of all its living descendants (the gateway's forward process)."""
    stats = {int(p.name): _stat(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    children: dict[int, list[int]] = {}
    for pid, st in stats.items():
        if st is not None:
            children.setdefault(st[0], []).append(pid)
    own = stats.get(root)
    below, todo = 0.0, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        st = stats.get(pid)
        if st is not None:
            below += st[1]
        todo += children.get(pid, [])
    return (own[1] if own else 0.0), below


def storescu(port: int, folders: list[Path], aec: str) -> tuple[float, float]:
    """Send each folder over its own association, all at once: (wall seconds, storescu CPU s)."""
    procs = []
    start_at = time.perf_counter()
    for folder in folders:
        cmd = ["storescu", "-aec", aec, "+sd", "127.0.0.1", str(port), str(folder)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      env={**os.environ, **NODELAY}))  # fmt: skip
    cpu = 0.0
    for proc in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        cpu += usage.ru_utime + usage.ru_stime
        if proc.returncode != 0:
            raise RuntimeError(
                f"storescu failed: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}"
            )
    return time.perf_counter() - start_at, cpu


# -- peers -----------------------------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    aec: str
    http: int = 0
    children: list[subprocess.Popen] = field(default_factory=list)

    def cpu(self) -> float:
        return sum(tree_cpu(self.proc.pid))

    def stop(self) -> None:
        stop(self.proc)


def bare(root: Path) -> Server:
    script, out, port = root / "bare_scp.py", root / "bare", free_port()
    out.mkdir(parents=True)
    script.write_text(BARE_SCP)
    proc = start([sys.executable, str(script), str(out), str(port)])
    wait_port(port, proc)
    return Server(proc, port, "BARE")


def orthanc(root: Path, nodelay: bool) -> Server:
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
    wait_port(dicom, proc)
    wait_port(http, proc)
    return Server(proc, dicom, "ORTHANC", http)


def orthanc_count(http: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/statistics", timeout=10) as r:
        return int(json.load(r)["CountInstances"])


def storescp(root: Path) -> Server:
    port = free_port()
    (root / "storescp").mkdir(parents=True)
    proc = start(["storescp", "-od", str(root / "storescp"), str(port)], NODELAY)
    wait_port(port, proc)
    return Server(proc, port, "STORESCP")


def gateway(root: Path, *args: str, timing_file: Path | None = None) -> Server:
    home, port = root / "gw", free_port()
    home.mkdir(parents=True)
    cmd = [sys.executable, "-m", "dicom_chain.cli", "serve", "--home", str(home), "--host", "127.0.0.1",
           "--port", str(port), *args]  # fmt: skip
    env = {timing.ENV: str(timing_file)} if timing_file else {timing.ENV: ""}
    proc = start(cmd, env, root / "gateway.log")
    wait_port(port, proc)
    if "--forward" in args:  # its forward process imports for ~1 s of CPU: not the study's cost
        wait_for_line(root / "gateway.log", "forwarding to", proc)
    return Server(proc, port, "DICOMCHAIN")


def wait_for_line(log: Path, text: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        if text in log.read_text(errors="replace"):
            time.sleep(0.5)  # its first look at the queue
            return
        time.sleep(0.05)
    raise RuntimeError(f"{text!r} never logged in {log}")


# -- one measurement ---------------------------------------------------------------------------------


def discard_stored(where: Path) -> None:
    """Remove what a measured run stored (its folders), keeping its logs and timing file.

    A long-running server writes into page-cache memory that earlier files freed. Keeping every
    run's 210 MB made each run the first to touch that much of the VM's memory, and a write into
    memory the VM has never touched costs several times one into memory just freed (measured: the
    gateway's 0.5 MB file.write 0.23 ms median after a run whose files were removed, 1.39 ms in a
    bench that kept them all). Every server's run pays for it, by its order in the round."""
    for child in where.iterdir():
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)


def load() -> float:
    return os.getloadavg()[0]


def send(server: Server, folders: list[Path], instances: int, extra: Server | None = None) -> dict:
    """Send and measure; ``extra`` is another process involved (b2's Orthanc)."""
    before = tree_cpu(server.proc.pid), extra.cpu() if extra else 0.0
    wall, client_cpu = storescu(server.port, folders, server.aec)
    after = tree_cpu(server.proc.pid), extra.cpu() if extra else 0.0
    out = {
        "rate": instances / wall,
        "seconds": wall,
        "load1": load(),
        "cpu_per_instance": {
            "server": (after[0][0] - before[0][0]) / instances,
            "server children": (after[0][1] - before[0][1]) / instances,  # the gateway's forwarder
            "storescu": client_cpu / instances,
        },
    }
    if extra:
        out["cpu_per_instance"]["orthanc"] = (after[1] - before[1]) / instances
    return out


def run_bare(root: Path, folders: list[Path], n: int) -> dict:
    server = bare(root)
    try:
        return send(server, folders, n)
    finally:
        server.stop()


def run_orthanc(root: Path, folders: list[Path], n: int) -> dict:
    server = orthanc(root, nodelay=True)
    try:
        result = send(server, folders, n)
        result["stored"] = orthanc_count(server.http)
        return result
    finally:
        server.stop()


def run_storescp(root: Path, folders: list[Path], n: int) -> dict:
    server = storescp(root)
    try:
        return send(server, folders, n)
    finally:
        server.stop()


def run_b1(root: Path, folders: list[Path], n: int) -> dict:
    """Ingest only: the forward destination is a port nothing listens on."""
    timing_file = root / "timing.jsonl"
    server = gateway(root, "--forward", f"DOWN@127.0.0.1:{free_port()}", timing_file=timing_file)
    try:
        result = send(server, folders, n)
    finally:
        server.stop()  # SIGTERM: the gateway stops cleanly, and the timer writes what it holds
    result["timing_file"] = str(timing_file)
    return result


def trouble(log: Path, most: int = 20) -> list[str]:
    """What the gateway and its forwarder warned about (a breaker that opened, an association the
    PACS dropped): kept with the results, for the run's folder goes when the bench ends."""
    lines = log.read_text(errors="replace").splitlines()
    return [x for x in lines if ("WARNING" in x or "ERROR" in x) and "no --allow" not in x][:most]


def run_b2(root: Path, folders: list[Path], n: int) -> dict:
    """Ingest with the forward live into a stock Orthanc, then the drain to the last instance."""
    pacs = orthanc(root / "pacs", nodelay=False)
    server = gateway(root, "--forward", f"ORTHANC@127.0.0.1:{pacs.port}")
    try:
        cpu0 = tree_cpu(server.proc.pid), pacs.cpu()
        t0 = time.perf_counter()
        result = send(server, folders, n, extra=pacs)
        while orthanc_count(pacs.http) < n and time.perf_counter() - t0 < DRAIN_TIMEOUT_S:
            time.sleep(POLL_S)
        e2e = time.perf_counter() - t0
        cpu1 = tree_cpu(server.proc.pid), pacs.cpu()
        result.update(
            e2e_seconds=e2e,
            drain_rate=n / e2e,
            forwarded=orthanc_count(pacs.http),
            trouble=trouble(root / "gateway.log"),
            load1_drained=load(),
            cpu_per_instance_to_drained={
                "gateway": (cpu1[0][0] - cpu0[0][0]) / n,
                "forwarder": (cpu1[0][1] - cpu0[0][1]) / n,
                "orthanc": (cpu1[1] - cpu0[1]) / n,
            },
        )
        return result
    finally:
        server.stop()
        pacs.stop()


def run_direct(root: Path, folders: list[Path], n: int) -> dict:
    """The end-to-end baseline: the study straight into an Orthanc configured as b2's."""
    server = orthanc(root, nodelay=False)
    try:
        result = send(server, folders, n)
        while orthanc_count(server.http) < n:
            time.sleep(POLL_S)
        return result
    finally:
        server.stop()


# -- study and report --------------------------------------------------------------------------------


def make_study(folder: Path, instances: int, size: int, seed: int = 4242) -> list[Path]:
    folder.mkdir(parents=True)
    files = []
    for i, ds in enumerate(
        ct_study(StudySpec(seed=seed + size, instances=instances, rows=size, columns=size))
    ):
        files.append(folder / f"{i:05d}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    return files


def split(files: list[Path], folder: Path, parts: int) -> list[Path]:
    """The study over ``parts`` folders (hard links, round robin), one association each."""
    folders = [folder / f"part{i}" for i in range(parts)]
    for f in folders:
        f.mkdir(parents=True)
    for i, path in enumerate(files):
        os.link(path, folders[i % parts] / path.name)
    return folders


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_rss(root: Path, gigabytes: float) -> dict:
    instances = max(1, int(gigabytes * 1e9 / (1024 * 1024 * 2)))
    big = make_study(root / "big", instances, 1024, seed=99)
    size_gb = sum(p.stat().st_size for p in big) / 1e9
    server = gateway(root / "gw-rss")
    try:
        storescu(server.port, [big[0].parent], server.aec)
        rss = peak_rss_mb(server.proc.pid)
    finally:
        server.stop()
        shutil.rmtree(root / "big", ignore_errors=True)
    return {"instances": instances, "gb": size_gb, "peak_rss_mb": rss}


def cpu_medians(results: list[dict], key: str) -> dict[str, float]:
    """Per process, the median over rounds of its CPU milliseconds per instance."""
    return {proc: statistics.median(x[key][proc] for x in results) * 1e3 for proc in results[0][key]}


def met(name: str, value: float) -> bool:
    op, target = TARGETS[name]
    return value >= target if op == ">=" else value <= target if op == "<=" else value < target


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--instances", type=int, default=400)
    parser.add_argument("--size", type=int, default=512, help="rows = columns of each CT slice")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=4, help="associations at once; 0 skips")
    parser.add_argument("--rss-gb", type=float, default=2.0, help="0 skips the RSS measurement")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, timings)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    n = args.instances
    try:
        study = make_study(root / "study", n, args.size)
        megabytes = sum(p.stat().st_size for p in study) / 1e6
        one = [study[0].parent]
        many = split(study, root / "split", args.parallel) if args.parallel > 1 else []
        configs: list[tuple[str, Callable[[Path, list[Path], int], dict], list[Path]]] = [
            ("a", run_bare, one), ("b1", run_b1, one), ("c", run_orthanc, one), ("d", run_storescp, one),
            ("b2", run_b2, one), ("e", run_direct, one),
        ]  # fmt: skip
        if many:
            configs += [(f"a x{args.parallel}", run_bare, many), (f"b1 x{args.parallel}", run_b1, many),
                        (f"c x{args.parallel}", run_orthanc, many)]  # fmt: skip
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
        for r in range(args.rounds):
            for name, run, folders in configs:
                where = root / f"round{r}" / name.replace(" ", "")
                runs[name].append(run(where, folders, n))
                discard_stored(where)
                print(
                    f"round {r + 1} {name:6s} {runs[name][-1]['rate']:7.1f} inst/s  load {load():.2f}",
                    flush=True,
                )
                for line in runs[name][-1].get("trouble", []):
                    print(f"    {line}", flush=True)
        records = [rec for res in runs["b1"] for rec in timing.read(Path(res["timing_file"]))]
        rounds = range(args.rounds)
        ratios = {
            "b1/a": [runs["b1"][i]["rate"] / runs["a"][i]["rate"] for i in rounds],
            "b1/c": [runs["b1"][i]["rate"] / runs["c"][i]["rate"] for i in rounds],
            "b2/a": [runs["b2"][i]["rate"] / runs["a"][i]["rate"] for i in rounds],
            "drain/b2": [runs["b2"][i]["drain_rate"] / runs["b2"][i]["rate"] for i in rounds],
            "e2e/direct": [runs["b2"][i]["e2e_seconds"] / runs["e"][i]["seconds"] for i in rounds],
        }
        if many:
            p = args.parallel
            ratios[f"b1/a x{p}"] = [runs[f"b1 x{p}"][i]["rate"] / runs[f"a x{p}"][i]["rate"] for i in rounds]
            ratios[f"b1/c x{p}"] = [runs[f"b1 x{p}"][i]["rate"] / runs[f"c x{p}"][i]["rate"] for i in rounds]
        result: dict = {
            "machine": {
                "arch": platform.machine(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            },
            "study": {"instances": n, "size": args.size, "megabytes": megabytes, "rounds": args.rounds},
            "rates": {name: spread([x["rate"] for x in res]) for name, res in runs.items()},
            "cpu_per_instance_ms": {name: cpu_medians(res, "cpu_per_instance") for name, res in runs.items()},
            "b2_to_drained_cpu_per_instance_ms": cpu_medians(runs["b2"], "cpu_per_instance_to_drained"),
            "drain_rate": spread([x["drain_rate"] for x in runs["b2"]]),
            "forwarded": [x["forwarded"] for x in runs["b2"]],
            "e2e_seconds": spread([x["e2e_seconds"] for x in runs["b2"]]),
            "direct_seconds": spread([x["seconds"] for x in runs["e"]]),
            "load1": spread([x["load1"] for res in runs.values() for x in res]),
            "ratios": {name: spread(values) for name, values in ratios.items()},
            "b1_stages_ms": timing.summary(records),
            "runs": runs,
        }
        if args.rss_gb > 0:
            result["rss"] = measure_rss(root / "rss", args.rss_gb)
        result["targets"] = {
            name: {"target": f"{op} {value}", "median": result["ratios"][name]["median"],
                   "met": met(name, result["ratios"][name]["median"])}
            for name, (op, value) in TARGETS.items() if name in result["ratios"]
        }  # fmt: skip
        if "rss" in result:
            rss = result["rss"]["peak_rss_mb"]
            result["targets"]["rss_mb"] = {"target": "< 300", "median": rss, "met": met("rss_mb", rss)}
        report(result)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return result
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def report(result: dict) -> None:
    s, m = result["study"], result["machine"]
    load1 = result["load1"]
    print(f"\nmachine: {m['arch']}, {m['cpus']} CPUs, Python {m['python']}")
    print(f"load average (1 min) {load1['median']:.2f} [{load1['min']:.2f}-{load1['max']:.2f}]")
    print(
        f"study: {s['instances']} x {s['size']}x{s['size']} CT, {s['megabytes']:.0f} MB; {s['rounds']} rounds"
    )
    print("| run | inst/s median [range] | CPU ms/instance (median) |")
    print("| --- | --- | --- |")
    for name, rate in result["rates"].items():
        cpu = ", ".join(f"{p} {v:.2f}" for p, v in result["cpu_per_instance_ms"][name].items())
        print(f"| {name} | {rate['median']:.1f} [{rate['min']:.1f}-{rate['max']:.1f}] | {cpu} |")
    drained = ", ".join(f"{p} {v:.2f}" for p, v in result["b2_to_drained_cpu_per_instance_ms"].items())
    print(f"| b2 drain (to last in Orthanc) | {result['drain_rate']['median']:.1f} | {drained} |")
    print(f"\nend to end {result['e2e_seconds']['median']:.2f} s vs straight to Orthanc "
          f"{result['direct_seconds']['median']:.2f} s; forwarded {result['forwarded']}")  # fmt: skip
    print("\n| ratio | median [range] | target | met |")
    print("| --- | --- | --- | --- |")
    for name, r in result["ratios"].items():
        t = result["targets"].get(name)
        print(f"| {name} | {r['median']:.2f} [{r['min']:.2f}-{r['max']:.2f}] | "
              f"{t['target'] if t else ''} | {('yes' if t['met'] else 'NO') if t else ''} |")  # fmt: skip
    if "rss" in result:
        rss = result["rss"]
        print(f"| peak RSS, {rss['gb']:.2f} GB study | {rss['peak_rss_mb']:.0f} MB | < 300 | "
              f"{'yes' if result['targets']['rss_mb']['met'] else 'NO'} |")  # fmt: skip
    print("\n(b1) per stage, ms per instance: median [p10-p90] (n)")
    print("| stage | median | p10-p90 | mean |")
    print("| --- | --- | --- | --- |")
    for name, st in result["b1_stages_ms"].items():
        print(f"| {name} | {st['median']:.3f} | {st['p10']:.3f}-{st['p90']:.3f} | {st['mean']:.3f} |")


if __name__ == "__main__":
    main()
