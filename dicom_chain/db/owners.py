"""Which process holds a row (a write intent, an outbox lease, the audit feed's lease), and
whether it still runs.

A process is named by its host, its boot, its pid and its start time. Only a process on the
same host and boot can tell whether another one still runs: a pid means nothing elsewhere, and
only the start time tells a reused pid (or PID 1 of a restarted container) from the process that
wrote the row. Elsewhere the answer is "cannot tell", and the caller waits for a lease to run out
or an expiry to pass instead.

The identity is computed per process (after ``fork`` the child has its own), never at import.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")  # Linux: a new random UUID at every boot
PID_NAMESPACE_LINK = Path("/proc/self/ns/pid")  # pids are comparable only inside one namespace
PROC = Path("/proc")
HOST_MAX = 64  # Linux HOST_NAME_MAX; keeps the owner text within outbox.lease_owner's 128 characters
BOOT_TOKEN_CHARS = 16  # 64 bits of SHA-256 over boot id and pid namespace: no two boots collide
STAT_STARTTIME = 22  # proc(5): field 22 of /proc/<pid>/stat, clock ticks after boot
UNKNOWN_START = 0  # no /proc: the start time cannot be read, the pid alone decides (the old rule)


@dataclass(frozen=True)
class Owner:
    host: str
    boot: str  # boot id and pid namespace, hashed: the space in which ``pid`` means something
    pid: int
    started: int  # clock ticks after boot; UNKNOWN_START where there is no /proc

    def __str__(self) -> str:
        return f"{self.host}:{self.boot}:{self.pid}:{self.started}"

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        """An owner written by ``str``; None for anything else (an empty lease, an old "host:pid")."""
        parts = text.rsplit(":", 3)
        if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]), int(parts[3]))


_current: Owner | None = None


def current() -> Owner:
    """This process. Cached per pid, so a forked child names itself, not its parent."""
    global _current
    pid = os.getpid()
    if _current is None or _current.pid != pid:
        _current = Owner(_host(), _boot_token(), pid, start_time(pid) or UNKNOWN_START)
    return _current


def alive(owner: Owner) -> bool | None:
    """Whether ``owner`` still runs: True, False, or None when this process cannot tell (another
    host, another boot or pid namespace). False only for a pid that runs no more, or that now
    belongs to a process started at another time."""
    me = current()
    if (owner.host, owner.boot) != (me.host, me.boot):
        return None
    if owner.pid == me.pid:
        return owner.started == me.started
    started = start_time(owner.pid)
    if started is None:
        return _pid_exists(owner.pid)  # /proc may hide other users' processes: ask the kernel
    return owner.started in (UNKNOWN_START, started)


def dead(owner: Owner) -> bool:
    """Judged dead from here (see ``alive``); a process we cannot judge is not dead."""
    return alive(owner) is False


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks after boot, None when it cannot be read (no such
    process, no /proc)."""
    try:
        stat = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # Field 2 (the command) is in parentheses and may hold spaces or ")": fields 3.. follow the last ")".
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[STAT_STARTTIME - 3])
    except (IndexError, ValueError):
        return None


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    return True


def _host() -> str:
    return socket.gethostname()[:HOST_MAX]


def _boot_token() -> str:
    try:
        boot_id = BOOT_ID_FILE.read_text(encoding="ascii").strip()
    except OSError:
        boot_id = "no-boot-id"  # not Linux: every boot looks alike; start times are unknown too
    try:
        namespace = os.readlink(PID_NAMESPACE_LINK)
    except OSError:
        namespace = ""
    return hashlib.sha256(f"{boot_id}/{namespace}".encode()).hexdigest()[:BOOT_TOKEN_CHARS]
