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
import threading
import time

from dicom_chain.config import Settings
from dicom_chain.errors import DicomChainError

from .forwarder import run_forwarder

log = logging.getLogger("dicom_chain.forward")

MODULE = "scp.forward_process"
# A forward process that died (killed, out of memory, a crash) is back this soon: the queue is in
# the database, so nothing is lost meanwhile, only delayed; its leases are taken back on start.
RESPAWN_FIRST_S = 1.0
# One that keeps dying (a setting it refuses, a database it cannot open) is tried again at most
# this often, its error in the log each time, rather than in a tight loop.
RESPAWN_MAX_S = 60.0
# Up this long, it counts as healthy again: its next death starts from RESPAWN_FIRST_S.
RESPAWN_STEADY_S = 60.0
# The forward process's CPU priority below serve's (nice(2); 10 of 19 weighs about a tenth of a
# normal process with Linux's scheduler): a modality waits on each of its C-STOREs, a PACS waits on
# nothing, so on a machine short of CPU receiving goes first and forwarding takes what is left,
# catching up once the modality is done. With CPU to spare it changes nothing.
FORWARD_NICENESS = 10


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


class ForwardSupervisor:
    """serve's forward process, started again whenever it exits on its own (the queue must keep
    draining without an operator noticing a dead child); stopped only by ``stop``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.child: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # between a respawn and stop: never a child left behind
        self._watch: threading.Thread | None = None

    def start(self) -> None:
        self.child = spawn_forward_process(self.settings)
        self._watch = threading.Thread(target=self._watch_child, name="forward-watch", daemon=True)
        self._watch.start()

    def _watch_child(self) -> None:
        delay = RESPAWN_FIRST_S
        while True:
            child, started = self.child, time.monotonic()
            if child is None:
                return
            code = child.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - started >= RESPAWN_STEADY_S:
                delay = RESPAWN_FIRST_S
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            log.error("forward process %d ended (%s); starting another in %.0f s", child.pid, how, delay)
            if self._stopping.wait(delay):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self.child = spawn_forward_process(self.settings)
            log.info("forward process %d started in place of %d", self.child.pid, child.pid)
            delay = min(delay * 2, RESPAWN_MAX_S)

    def stop(self, timeout: float) -> None:
        """SIGTERM the child and wait ``timeout`` for it to finish its batch, then kill it."""
        with self._lock:
            self._stopping.set()
            child, self.child = self.child, None
        if child is None:
            return
        child.terminate()
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if self._watch is not None:
            self._watch.join(timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--parent-pid", type=int, required=True, help="Exit when this process is gone.")
    args = parser.parse_args(argv)
    if hasattr(os, "nice"):
        os.nice(FORWARD_NICENESS)
    try:
        run_forwarder(Settings.from_json(sys.stdin.read()), parent_pid=args.parent_pid)
    except DicomChainError as exc:  # one line in serve's log, not a traceback
        print(f"forward process: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
