"""Which process holds a row (a write intent, an outbox lease, the audit feed's lease), and
whether it still runs.

A process is named by its host, its boot, its pid and its start time. Only a process on the
same host and boot can tell whether another one still runs: a pid means nothing elsewhere, and
only the start time tells a reused pid (or PID 1 of a restarted container) from the process that
wrote the row. Elsewhere the answer is "cannot tell", and the caller waits for a lease to run out
or an expiry to pass instead.

The identity is computed per process (after ``fork`` the child has its own), never at import.

A pid namespace hides the one case that matters most in a container: the gateway was PID 1 of a
container that was restarted, and now PID 1 of a new namespace (same host name, same kernel)
asks about it. For that, every process of a node holds a *liveness lock* for as long as it runs:
an exclusive ``flock`` on a file named by its owner text, beside the storage root (which every
process of the node shares). The kernel drops the lock when the process dies, ``kill -9``
included, in whatever namespace it ran; so a process on the same host that can take the lock
knows the owner is dead. Only on the same host name: a lock across hosts is only as good as the
network file system's locking (an NFS mount with ``nolock`` keeps locks local and would call
every living owner dead).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")  # Linux: a new random UUID at every boot
PID_NAMESPACE_LINK = Path("/proc/self/ns/pid")  # pids are comparable only inside one namespace
PROC = Path("/proc")
HOST_MAX = 64  # Linux HOST_NAME_MAX; keeps the owner text within outbox.lease_owner's 128 characters
BOOT_TOKEN_CHARS = 16  # 64 bits of SHA-256 over boot id and pid namespace: no two boots collide
STAT_STARTTIME = 22  # proc(5): field 22 of /proc/<pid>/stat, clock ticks after boot
STAT_STATE = 3  # proc(5): field 3, one letter; Z (zombie) and X (dead) have ended
ENDED_STATES = (b"Z", b"X")
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


def alive(owner: Owner, locks: Path | None = None) -> bool | None:
    """Whether ``owner`` still runs: True, False, or None when this process cannot tell. False
    only for a pid that runs no more, or that now belongs to a process started at another time,
    or (another boot or pid namespace on this host) for an owner whose liveness lock in
    ``locks`` can be taken. None for another host, or when there is no lock file to ask."""
    me = current()
    if (owner.host, owner.boot) != (me.host, me.boot):
        if locks is None or owner.host != me.host:
            return None
        return _lock_held(lock_path(locks, owner))
    if owner.pid == me.pid:
        return owner.started == me.started
    started = start_time(owner.pid)
    if started is None:
        if _ended(owner.pid):
            return False
        return _pid_exists(owner.pid)  # /proc may hide other users' processes: ask the kernel
    return owner.started in (UNKNOWN_START, started)


def dead(owner: Owner, locks: Path | None = None) -> bool:
    """Judged dead from here (see ``alive``); a process we cannot judge is not dead."""
    return alive(owner, locks) is False


LOCK_SUFFIX = ".lock"
LOCK_NAME_CHARS = 32  # hex of SHA-256 over the owner text: a file name for any host name
_held: dict[tuple[Path, int], int] = {}  # (folder, pid) -> fd of this process's liveness lock


def lock_folder(storage_root: Path) -> Path:
    """Where the liveness locks of the node storing under ``storage_root`` are: beside it, shared
    by every process of the node, and not inside it (verify reports foreign files there)."""
    return storage_root.parent / f"{storage_root.name}-owners"


def lock_path(folder: Path, owner: Owner) -> Path:
    return folder / (hashlib.sha256(str(owner).encode()).hexdigest()[:LOCK_NAME_CHARS] + LOCK_SUFFIX)


def hold_lock(folder: Path) -> None:
    """Take this process's liveness lock in ``folder`` (once per process and folder) and keep it
    until the process ends (or ``release_lock``)."""
    me = current()
    key = (folder.resolve(), me.pid)
    if key in _held:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # a read-only place (verify on an archive copy): this process writes nothing there
    path = lock_path(folder, me)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh name: nobody else holds it
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # another process's sweep unlinked it between open and flock: again
    _held[key] = fd


def release_lock(folder: Path) -> None:
    """Give up this process's liveness lock in ``folder`` (closing the node): its file goes. A
    second node of this process on the same folder is then judged "cannot tell", never dead."""
    fd = _held.pop((folder.resolve(), os.getpid()), None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        lock_path(folder, current()).unlink()
    os.close(fd)


def sweep_locks(folder: Path, keep: Iterable[Owner]) -> int:
    """Remove the lock files of owners that are gone, except those of ``keep`` (owners that still
    have rows to be judged by: their file is the only witness of their death); how many went."""
    kept = {lock_path(folder, owner).name for owner in keep}
    removed = 0
    for path in folder.glob(f"*{LOCK_SUFFIX}"):
        if path.name not in kept and _lock_held(path) is False:
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


def _lock_held(path: Path) -> bool | None:
    """Whether the owner of the lock file ``path`` still holds it (None: no such file). The file
    stays: every process that judges the owner must find it (``sweep_locks`` removes it)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return True
    os.close(fd)  # and with it the lock just taken
    return False


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks after boot, None when it cannot be read (no such
    process, no /proc) or when the process has ended: a zombie (killed, not yet reaped by its
    parent, as serve's forward process is until serve stops) runs no more."""
    try:
        stat = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # Field 2 (the command) is in parentheses and may hold spaces or ")": fields 3.. follow the last ")".
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        if fields[STAT_STATE - 3] in ENDED_STATES:
            return None
        return int(fields[STAT_STARTTIME - 3])
    except (IndexError, ValueError):
        return None


def _ended(pid: int) -> bool:
    """A zombie or dead task: its stat is still there, but it runs no more."""
    try:
        stat = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return False
    fields = stat[stat.rfind(b")") + 2 :].split()
    return bool(fields) and fields[0] in ENDED_STATES


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
