"""The gateway benchmark's quick mode still runs against the real peers and reports every figure.

Not a timed test: tiny instances, one round; it proves the script and its JSON, not the speeds.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

from .peers import require_tool

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_gateway.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gateway", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def positive(value: object) -> bool:
    return isinstance(value, float | int) and math.isfinite(value) and value > 0


def test_quick_mode_reports_every_rate_ratio_and_stage(tmp_path: Path):
    for tool in ("storescu", "storescp"):
        require_tool(tool, "dcmtk")
    require_tool("Orthanc", "orthanc")
    out = tmp_path / "bench.json"
    bench = _bench()
    result = bench.main(["--instances", "4", "--size", "32", "--rounds", "1", "--parallel", "2",
                         "--rss-gb", "0", "--json", str(out)])  # fmt: skip
    assert out.is_file()
    runs = ["a", "b1", "c", "d", "b2", "e", "a x2", "b1 x2", "c x2"]
    assert set(result["rates"]) == set(runs)
    assert all(positive(result["rates"][r]["median"]) for r in runs)
    for run in runs:  # the server's CPU, its children's (the forwarder) and the sender's
        assert {"server", "server children", "storescu"} <= set(result["cpu_per_instance_ms"][run])
    assert "orthanc" in result["cpu_per_instance_ms"]["b2"]
    assert set(result["b2_to_drained_cpu_per_instance_ms"]) == {"gateway", "forwarder", "orthanc"}
    assert result["forwarded"] == [4]  # the live forward delivered the whole study
    ratios = {"b1/a", "b1/c", "b2/a", "drain/b2", "e2e/direct", "b1/a x2", "b1/c x2"}
    assert set(result["ratios"]) == ratios
    assert all(positive(result["ratios"][r]["median"]) for r in ratios)
    assert set(result["targets"]) == {"b1/a", "b1/c", "b2/a", "drain/b2", "e2e/direct"}
    assert positive(result["load1"]["median"]) or result["load1"]["median"] == 0
    stages = result["b1_stages_ms"]
    for name in ("decode", "hash", "sign", "fsync.file", "fsync.folder", "db.commit", "total", "between"):
        assert positive(stages[name]["median"]), name
    assert stages["total"]["n"] == 4  # one record per instance the gateway answered
