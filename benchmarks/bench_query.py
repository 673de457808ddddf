"""C-FIND latency over a real association, on an index of 10,000 and then 100,000 instances.

The index is filled directly (metadata only: no files, no blocks) with a realistic shape: studies
of 100 instances in 2 series, patients with one to a few studies, names from a few hundred
surnames, study dates over five years. `dicom-chain serve` runs in its own process on SQLite
(every query also commits a ledger event, synchronous=FULL, as in production); a pynetdicom SCU
sends STUDY-level Study Root C-FINDs over one association (TCP_NODELAY on, as for every peer in
our benchmarks; with Nagle on, a client's request waits ~40 ms for a delayed ACK) and times each
from request to final response:

  - by PatientID (an existing one),
  - by PatientName wildcard (three-letter surname prefix, e.g. ``SMI*``),
  - by StudyDate range (one week).

    .venv/bin/python benchmarks/bench_query.py [--queries 200] [--sizes 10000,100000]

Target: p95 under 50 ms for each; the report says how it grows from 10k to 100k. The baseline in
the same run is a C-ECHO round trip on the same association (what any DIMSE exchange costs).
"""

from __future__ import annotations

import argparse
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification  # type: ignore
from sqlalchemy import insert

from dicom_chain.config import Settings
from dicom_chain.node import Node
from dicom_chain.qr.index import INSTANCES, PATIENTS, SERIES, STUDIES
from dicom_chain.qr.matching import key_form
from scp.handlers import no_delay

INSTANCES_PER_SERIES = 50
SERIES_PER_STUDY = 2
INSTANCES_PER_STUDY = INSTANCES_PER_SERIES * SERIES_PER_STUDY
# 300 distinct surnames built from syllables: three-letter prefixes then select a handful of studies
SURNAMES = [
    f"{a}{b}{c}{tail}" for a in "BDGKMPST" for b in "AEIOU" for c in "LNR" for tail in ("SON", "MAN", "INI")
][:300]
GIVEN = ["ANNA", "JOHN", "MARIA", "PETER", "LENA", "OMAR", "YUKI", "IGOR", "SARA", "TOM"]
MODALITIES = ["CT", "MR", "CR", "US", "PT"]
DAYS = 5 * 365
NODELAY = "--nagle" not in sys.argv
RETURN_KEYS = (
    "PatientName",
    "PatientID",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def date_of(day: int) -> str:
    return time.strftime("%Y%m%d", time.gmtime(1577836800 + day * 86400))  # from 2020-01-01


def fill(node: Node, first_study: int, studies: int, rng: random.Random) -> list[tuple[str, str, str]]:
    """Index ``studies`` more studies; returns (patient id, surname, study date) of each."""
    made = []
    patients, study_rows, series_rows, instance_rows = [], [], [], []
    for s in range(first_study, first_study + studies):
        pid = f"P{s // 2:07d}"  # two studies per patient on average
        surname = SURNAMES[(s * 7919) % len(SURNAMES)]
        name = f"{surname}^{GIVEN[s % len(GIVEN)]}"
        day = rng.randrange(DAYS)
        if s % 2 == 0:
            patients.append(
                {
                    "id": s // 2 + 1,
                    "patient_id": pid,
                    "issuer": "",
                    "patient_name": name,
                    "patient_name_key": key_form("PN", name),
                    "birth_date": "19600101",
                    "sex": "O",
                }
            )
        study_uid = f"1.2.826.0.1.3680043.10.1507.8.{s}"
        study_rows.append(
            {
                "id": s + 1,
                "patient_pk": s // 2 + 1,
                "study_uid": study_uid,
                "study_date": date_of(day),
                "study_time": "101500",
                "study_time_key": key_form("TM", "101500"),
                "accession_number": f"A{s:08d}",
                "study_id": str(s),
                "description": "Synthetic",
                "referring_physician": "",
                "referring_physician_key": "",
            }
        )
        for r in range(SERIES_PER_STUDY):
            series_pk = s * SERIES_PER_STUDY + r + 1
            series_rows.append(
                {
                    "id": series_pk,
                    "study_pk": s + 1,
                    "series_uid": f"{study_uid}.{r}",
                    "modality": MODALITIES[(s + r) % len(MODALITIES)],
                    "series_number": str(r + 1),
                    "description": "",
                    "series_date": date_of(day),
                    "series_time": "",
                    "series_time_key": "",
                    "body_part": "",
                }
            )
            for i in range(INSTANCES_PER_SERIES):
                instance_rows.append(
                    {
                        "series_pk": series_pk,
                        "sop_instance_uid": f"{study_uid}.{r}.{i}",
                        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                        "instance_number": str(i + 1),
                        "transfer_syntax": "1.2.840.10008.1.2.1",
                        "rows": 512,
                        "columns": 512,
                        "frames": None,
                        "chain_id": "bench",
                        "height": 0,
                        "block_hash": "0" * 64,
                        "version": 1,
                        "path": "-",
                        "received_at": "",
                        "verification": "verified",
                        "verified_at": "",
                    }
                )
        made.append((pid, surname, date_of(day)))
    with node.db.writing() as session:
        for table, rows in ((PATIENTS, patients), (STUDIES, study_rows), (SERIES, series_rows)):
            if rows:
                session.execute(insert(table), rows)
        for start in range(0, len(instance_rows), 10_000):
            session.execute(insert(INSTANCES), instance_rows[start : start + 10_000])
    return made


def identifier(**keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in RETURN_KEYS:
        setattr(ds, keyword, "")
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def run_queries(port: int, queries: list[Dataset]) -> tuple[list[float], list[int]]:
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMCHAIN")
    assert assoc.is_established
    if NODELAY:
        no_delay(assoc)
    times, matches = [], []
    try:
        for ds in queries:
            started = time.perf_counter()
            answers = [s for s, _ in assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind)]
            times.append((time.perf_counter() - started) * 1000)
            assert answers[-1].Status == 0, hex(answers[-1].Status)
            matches.append(len(answers) - 1)
    finally:
        assoc.release()
    return times, matches


def echo_times(port: int, n: int) -> list[float]:
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMCHAIN")
    if NODELAY:
        no_delay(assoc)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        assoc.send_c_echo()
        times.append((time.perf_counter() - started) * 1000)
    assoc.release()
    return times


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--nagle", action="store_true", help="Leave Nagle on in the client, as DCMTK does.")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = random.Random(7)
    print(
        f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, SQLite"
    )
    print(f"{'query':<22}{'instances':>10}{'median ms':>11}{'p95 ms':>9}{'matches':>9}  target p95 < 50 ms")
    results: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        node = Node.open(Settings(home=home))
        made: list[tuple[str, str, str]] = []
        for size in sizes:
            made += fill(node, len(made), size // INSTANCES_PER_STUDY - len(made), rng)
            port = free_port()
            serve = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dicom_chain.cli",
                    "serve",
                    "--home",
                    str(home),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.2)
                echo = echo_times(port, args.queries)
                print(
                    f"{'C-ECHO (baseline)':<22}{size:>10,}{statistics.median(echo):>11.1f}{p95(echo):>9.1f}"
                )
                pick = [rng.choice(made) for _ in range(args.queries)]
                kinds = {
                    "PatientID": [identifier(PatientID=pid) for pid, _, _ in pick],
                    "PatientName SMI*": [identifier(PatientName=surname[:3] + "*") for _, surname, _ in pick],
                    "StudyDate week": [identifier(StudyDate=f"{d}-{_plus_week(d)}") for _, _, d in pick],
                }
                for kind, queries in kinds.items():
                    times, matches = run_queries(port, queries)
                    results[(kind, size)] = p95(times)
                    ok = "met" if p95(times) < 50 else "MISSED"
                    print(
                        f"{kind:<22}{size:>10,}{statistics.median(times):>11.1f}{p95(times):>9.1f}"
                        f"{statistics.mean(matches):>9.1f}  {ok}"
                    )
            finally:
                serve.terminate()
                serve.wait(60)
        node.close()
    if len(sizes) > 1:
        for kind in ("PatientID", "PatientName SMI*", "StudyDate week"):
            growth = results[(kind, sizes[-1])] / results[(kind, sizes[0])]
            print(f"p95 growth {kind}: x{growth:.2f} from {sizes[0]:,} to {sizes[-1]:,} instances")


def _plus_week(day: str) -> str:
    t = time.strptime(day, "%Y%m%d")
    return time.strftime("%Y%m%d", time.gmtime(time.mktime(t) - time.timezone + 7 * 86400))


if __name__ == "__main__":
    main()
