"""What ships to run the gateway as a service: the systemd unit, the example settings, the image.

No container engine runs in CI, so the Dockerfile is checked the way CI can: its instructions
read, each against what it names (files, the package's scripts, the command line), its build
context built into a wheel, its health check run against a port that listens and one that does not.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from dicom_chain.cli.exits import EXIT_USAGE
from dicom_chain.config import DEFAULT_PORT, setting_fields

from .peers import free_port, require_tool

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "dicom-chain.service"
EXAMPLE = ROOT / "deploy" / "gateway.toml.example"
DOCKERFILE = ROOT / "Dockerfile"
STATE = "/var/lib/dicom-chain"
CLI = [sys.executable, "-m", "dicom_chain.cli"]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_CHAIN_")}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=60)


# -- the systemd unit --


def unit_entries(text: str) -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            entries.setdefault(key, []).append(value)
    return entries


def analyze(unit: Path) -> str:
    """``systemd-analyze verify`` of the unit, with ExecStart on an installed dicom-chain (the
    unit's /opt/... path exists only on a server): what it had to say, empty when all is well."""
    tool = require_tool("systemd-analyze", "systemd")
    here = shutil.which("dicom-chain", path=str(Path(sys.executable).parent)) or shutil.which("dicom-chain")
    assert here, "dicom-chain is not installed beside this Python"
    copy = unit.parent / "copy" / unit.name
    copy.parent.mkdir(exist_ok=True)
    copy.write_text(unit.read_text().replace("/opt/dicom-chain/.venv/bin/dicom-chain", here))
    result = subprocess.run([tool, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    return (result.stdout + result.stderr).strip() + (
        "" if result.returncode == 0 else f" (exit {result.returncode})"
    )


def test_the_systemd_unit_verifies(tmp_path: Path):
    shutil.copy(UNIT, tmp_path / UNIT.name)
    assert analyze(tmp_path / UNIT.name) == ""


def test_systemd_analyze_would_tell_a_mistake(tmp_path: Path):
    """The check above can fail: a misspelt key is reported (systemd would ignore it, and with it
    the protection it names)."""
    broken = tmp_path / UNIT.name
    broken.write_text(UNIT.read_text().replace("ProtectHome=", "ProtectHomes="))
    assert "Unknown key 'ProtectHomes' in section [Service]" in analyze(broken)


def test_the_unit_runs_serve_as_its_own_user_in_its_state_directory_and_restarts():
    entries = unit_entries(UNIT.read_text())
    assert entries["User"] == ["dicom-chain"] and entries["StateDirectory"] == ["dicom-chain"]
    assert entries["Restart"] == ["on-failure"] and entries["RestartSec"]
    # A configuration error (exit 2) is not retried: restarting cannot fix it.
    assert entries["RestartPreventExitStatus"] == [str(EXIT_USAGE)]
    for hardening in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp"):
        assert entries[hardening][0] in ("yes", "strict"), hardening
    assert "AmbientCapabilities" not in entries  # only for port 104: commented out
    [exec_start] = entries["ExecStart"]
    program, *args = shlex.split(exec_start)
    assert program == "/opt/dicom-chain/.venv/bin/dicom-chain" and args[:3] == ["serve", "--home", STATE]
    assert args[args.index("--config") + 1] == "/etc/dicom-chain/gateway.toml"
    # Its arguments parse, with the example settings standing in for /etc/dicom-chain/gateway.toml.
    args[args.index("--config") + 1] = str(EXAMPLE)
    parsed = cli(*args, "--help")
    assert parsed.returncode == 0, parsed.stderr


# -- the example settings --


def example_lines() -> tuple[dict[str, object], dict[str, object]]:
    """The example's settings and its commented ``# key = value`` lines (each parsed as TOML)."""
    text = EXAMPLE.read_text()
    commented: dict[str, object] = {}
    for match in re.finditer(r"^#(?:   e\.g\.)? (\w+ = .+)$", text, re.MULTILINE):
        commented.update(tomllib.loads(match.group(1)))
    return tomllib.loads(text), commented


def test_the_example_names_every_setting_with_its_default():
    """Every setting is in the example, set to its default or, when its default is unset, shown
    commented; the commented forms are valid values too. A new setting fails this until it is added."""
    values, commented = example_lines()
    specs = {spec.name: spec for spec in setting_fields()}
    assert set(values) <= set(specs), set(values) - set(specs)
    assert set(commented) <= set(specs), set(commented) - set(specs)
    assert set(specs) <= set(values) | set(commented), set(specs) - set(values) - set(commented)
    for name, value in values.items():
        assert specs[name].typed(value) == specs[name].default, name
    for name, value in commented.items():
        specs[name].typed(value)  # raises on a value of the wrong form


def test_the_example_loads_and_a_mistake_in_it_stops_the_command(tmp_path: Path):
    loaded = cli("--config", str(EXAMPLE), "serve", "--help")
    assert loaded.returncode == 0, loaded.stderr
    typo = tmp_path / "gateway.toml"
    typo.write_text(EXAMPLE.read_text().replace("\nport = ", "\nprot = "))
    refused = cli("--config", str(typo), "serve", "--help")
    assert refused.returncode == EXIT_USAGE and "prot" in refused.stderr and str(typo) in refused.stderr


# -- the container image --


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions (continuations joined, comments dropped), in order."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in DOCKERFILE.read_text().splitlines() if not ln.startswith("#"))
    )
    found = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def one(keyword: str) -> str:
    [value] = [rest for kw, rest in instructions() if kw == keyword]
    return value


def copied() -> list[str]:
    sources = []
    for kw, rest in instructions():
        if kw == "COPY":
            *paths, _dest = rest.split()
            sources.extend(paths)
    return sources


def test_the_image_copies_what_exists_and_the_context_lets_it_through():
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert copied()
    for source in copied():
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") in allowed, f"{source} is not in .dockerignore's allowed list"


def test_the_image_runs_serve_as_a_user_of_its_own_on_its_volume():
    user = one("USER")
    assert user not in ("root", "0")
    # made by the image, a system account whose home is the state volume
    assert any(
        "useradd --system" in rest
        and f"--home-dir {STATE}" in rest
        and rest.split("useradd")[1].split("&&")[0].split()[-1] == user
        for kw, rest in instructions()
        if kw == "RUN"
    )
    assert one("FROM").startswith("python:3.11")  # requires-python >= 3.11
    assert one("VOLUME") == STATE and one("EXPOSE") == str(DEFAULT_PORT)
    entrypoint, command = json.loads(one("ENTRYPOINT")), json.loads(one("CMD"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["dicom-chain"] and "dicom-chain" in scripts
    assert command == ["serve", "--home", STATE]
    parsed = cli(*command, "--help")
    assert parsed.returncode == 0, parsed.stderr


def healthcheck() -> list[str]:
    rest = one("HEALTHCHECK")
    return json.loads(rest[rest.index("CMD ") + 4 :])


def test_the_health_check_tells_a_listening_port_from_a_closed_one():
    program, *args = healthcheck()
    assert program == "python"  # the venv's, first on the image's PATH
    env = {**os.environ}
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        env["DICOM_CHAIN_PORT"] = str(listening.getsockname()[1])
        alive = subprocess.run([sys.executable, *args], env=env, capture_output=True, timeout=30)
    assert alive.returncode == 0, alive.stderr
    env["DICOM_CHAIN_PORT"] = str(free_port())  # nothing listens there
    dead = subprocess.run([sys.executable, *args], env=env, capture_output=True, timeout=30)
    assert dead.returncode != 0


def test_the_build_context_builds_the_package(tmp_path: Path):
    """What the image copies is enough to build the package with its data (migrations, the
    default policy): the image's ``pip install`` step, without its dependencies."""
    context = tmp_path / "context"
    for source in copied():
        target = context / source
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / source, target)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
         "-w", str(tmp_path / "dist"), str(context)],
        capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "dist").glob("dicom_chain-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "scp/server.py" in names and "dicom_chain/sharing/default_policy.toml" in names
    assert any(n.startswith("dicom_chain/db/migrations/versions/") for n in names)
    assert (
        "License-Expression: Apache-2.0"
        in zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    )
