"""Append-only intent journals: one file per writing process, beside the store.

A process appends ``<folder>\\t<stem>`` before it writes a file of that item and forgets it once
the receipt's commit made the file the ledger's: one ``write`` to a file it keeps open, instead of
a database commit of its own per instance. Like the page cache of the file it guards, a line
written survives a killed process (the kernel has it), not a power cut, so it is never fsynced.

The file's first line names its owner (db/owners.py); the lines after are intents, in order. Lines
of committed receipts are not removed one by one: the file is cut back to its first line whenever
no receipt is in flight and it has grown past ``JOURNAL_TRUNCATE_BYTES``, and rewritten with only
the receipts in flight past ``JOURNAL_MAX_BYTES``. A line left over from a committed receipt is
harmless: recovery only removes files the ledger does not name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dicom_chain.db import owners

HEADER = "dicom-chain intents v1 "  # then the owner text: a file without it is none of ours
SUFFIX = ".log"
# Cutting the file back costs a metadata change; done once it holds ~400 lines (a line is ~150
# bytes), so that costs nothing per instance, and a journal recovery reads stays small.
JOURNAL_TRUNCATE_BYTES = 64 * 1024
# Under a load that never leaves the process idle (32 associations at once) the file is rewritten
# with what is in flight at this size: bounded on disk, rare (one rewrite per ~25,000 instances).
JOURNAL_MAX_BYTES = 4 * 1024 * 1024


def journal_folder(storage_root: Path) -> Path:
    """Beside the store (shared by every process of the node, on the same file system, so a
    journal is where its files are), not inside it: verify reports foreign files there."""
    return storage_root.parent / f"{storage_root.name}-intents"


@dataclass(frozen=True)
class Entry:
    folder: str
    stem: str


@dataclass(frozen=True)
class Found:
    """Another process's journal as read from disk."""

    path: Path
    owner: owners.Owner
    modified: float  # when its last line was written: a dead owner's stops changing
    entries: tuple[Entry, ...]


class Journal:
    """This process's journal, opened on first use (and again in a forked child: one per pid)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid = 0
        self._path: Path | None = None
        self._header = b""
        self._size = 0
        self._next = 0
        self._open: dict[int, bytes] = {}  # token -> its line, for receipts in flight

    @property
    def path(self) -> Path | None:
        return self._path

    def note(self, folder: str, stem: str) -> int:
        """Append the intent (in the kernel when this returns); a token for ``done``."""
        line = f"{folder}\t{stem}\n".encode("utf-8", "surrogateescape")
        with self._lock:
            fd = self._ensure_open()
            if os.write(fd, line) != len(line):  # O_APPEND, one write: whole or absent after a kill
                raise OSError(errno.ENOSPC, "intent journal: short write")
            self._size += len(line)
            self._next += 1
            self._open[self._next] = line
            return self._next

    def done(self, *tokens: int) -> None:
        """The receipts of ``tokens`` ended (committed, or failed with their files removed)."""
        with self._lock:
            for token in tokens:
                self._open.pop(token, None)
            if self._fd is None or self._pid != os.getpid():
                return
            if not self._open and self._size > JOURNAL_TRUNCATE_BYTES:
                os.ftruncate(self._fd, len(self._header))
                self._size = len(self._header)
            elif self._size > JOURNAL_MAX_BYTES:
                self._rewrite()

    def close(self) -> None:
        """Closing the node: its journal goes when nothing is in flight, else stays for recovery."""
        with self._lock:
            if self._fd is None or self._pid != os.getpid():
                return
            os.close(self._fd)
            self._fd = None
            if not self._open and self._path is not None:
                self._path.unlink(missing_ok=True)

    def _ensure_open(self) -> int:
        if self._fd is not None and self._pid == os.getpid():
            return self._fd
        me = owners.current()
        self.folder.mkdir(parents=True, exist_ok=True)
        # the owner names the process; the token tells apart two nodes of one process
        path = self.folder / f"{me.pid}-{secrets.token_hex(4)}{SUFFIX}"
        header = f"{HEADER}{me}\n".encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)
        os.write(fd, header)
        self._fd, self._pid, self._path, self._header, self._size = fd, me.pid, path, header, len(header)
        self._open = {}  # a forked child has none of its parent's receipts
        return fd

    def _rewrite(self) -> None:
        """Only the lines in flight, in a new file renamed over this one (atomic for a reader)."""
        assert self._path is not None and self._fd is not None
        tmp = self._path.with_suffix(".tmp")
        data = self._header + b"".join(self._open.values())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
            os.replace(tmp, self._path)
        except BaseException:
            os.close(fd)
            raise
        os.close(self._fd)
        self._fd, self._size = fd, len(data)


def read_all(folder: Path) -> Iterator[Found]:
    """Every journal in ``folder`` with an owner header; files of anything else are skipped."""
    try:
        paths = sorted(folder.glob(f"*{SUFFIX}"))
    except OSError:
        return
    for path in paths:
        found = read(path)
        if found is not None:
            yield found


def read(path: Path) -> Found | None:
    try:
        with path.open("rb") as fp:
            modified = os.fstat(fp.fileno()).st_mtime
            data = fp.read()
    except OSError:
        return None
    head, _, rest = data.partition(b"\n")
    text = head.decode("utf-8", "replace")
    owner = owners.Owner.parse(text.removeprefix(HEADER)) if text.startswith(HEADER) else None
    if owner is None:
        return None
    entries = []
    for line in rest.split(b"\n")[:-1]:  # a last line without its newline was cut short: skipped
        folder, tab, stem = line.decode("utf-8", "surrogateescape").partition("\t")
        if tab and folder and stem:
            entries.append(Entry(folder, stem))
    return Found(path, owner, modified, tuple(dict.fromkeys(entries)))


def remove(path: Path) -> None:
    """A recovered journal, and the rewrite its owner may have been killed in the middle of."""
    for each in (path, path.with_suffix(".tmp")):
        with contextlib.suppress(OSError):
            each.unlink()


def age(found: Found, now: float | None = None) -> float:
    return (time.time() if now is None else now) - found.modified
