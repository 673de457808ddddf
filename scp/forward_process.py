"""``serve``'s forwarders in a process of their own: ``python -m scp.forward_process``.

Sending is CPU-heavy in pynetdicom; in a child process it runs on another core than receiving,
outside the receiving process's GIL. The child gets the whole Settings as JSON on stdin (not on
its command line, where ``ps`` would show a database password), and the parent's pid: it stops
on SIGTERM/SIGINT, and by itself when serve is gone, even after ``kill -9``.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

from dicom_chain.config import Settings
from dicom_chain.errors import DicomChainError

from .forwarder import run_forwarder

log = logging.getLogger("dicom_chain.forward")

MODULE = "scp.forward_process"


def forward_process_command(parent_pid: int) -> list[str]:
    return [sys.executable, "-m", MODULE, "--parent-pid", str(parent_pid)]


def spawn_forward_process(settings: Settings) -> subprocess.Popen:
    """Start the forwarders of ``settings`` in a child that follows this process."""
    child = subprocess.Popen(forward_process_command(os.getpid()), stdin=subprocess.PIPE)
    assert child.stdin is not None
    try:
        with child.stdin:
            child.stdin.write(settings.to_json().encode("utf-8"))
    except BrokenPipeError:  # it died at start: its own stderr says why; the queue waits meanwhile
        log.error("forward process %d exited before it read its settings", child.pid)
    return child


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--parent-pid", type=int, required=True, help="Exit when this process is gone.")
    args = parser.parse_args(argv)
    try:
        run_forwarder(Settings.from_json(sys.stdin.read()), parent_pid=args.parent_pid)
    except DicomChainError as exc:  # one line in serve's log, not a traceback
        print(f"forward process: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
