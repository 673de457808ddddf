"""C-STORE data sets received to disk as they stream, never whole in memory.

pynetdicom's ``_config.STORE_RECV_CHUNKED_DATASET`` (``DIMSEMessage.decode_msg`` in
dimse_messages.py) writes each C-STORE-RQ's data set, PDV by PDV, to a
``NamedTemporaryFile(delete=False)`` behind a Part 10 header it makes from the request and the
accepted context; the EVT_C_STORE handler finds it at ``event.dataset_path``, and
``StorageServiceClass.SCP`` (service_class.py) unlinks it once the handler returns. Without it the
data set grows in a BytesIO and is decoded from there: a 256 MB instance took 880 MB of RSS.
What it lacks, worked around here:

- The flag is process-global (a module attribute read per message): building a gateway sets it
  for its whole process. Another SCP in the same process (a test's PACS) then gets pynetdicom's
  documented chunked behaviour: ``event.dataset`` still works, ``event.request.DataSet`` is empty.
- The file goes to the system temp folder (often a tmpfs, which is memory again, or another disk
  than the store): ``NamedTemporaryFile`` in dimse_messages is replaced by a factory that puts it
  in the spool of the AE whose association is receiving, found from the DUL thread that decodes.
- There is no size limit: our file counts what it is given, and past ``max_bytes`` drops what it
  had and writes no more (the rest of the data set is read and discarded, a PDU at a time); the
  handler then refuses the instance.
- A data set whose association ends before its handler runs (an abort mid-instance, a message
  still queued when the peer went) is never unlinked: an association's files are removed at
  EVT_CONN_CLOSE, and those of a killed process at the next start (a folder per process, locked).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pynetdicom import _config, dimse_messages, evt

from dicom_chain.carriers.base import Item
from dicom_chain.carriers.dicom import fastread
from dicom_chain.carriers.dicom.carrier import DICOM
from dicom_chain.db import owners
from dicom_chain.errors import DicomChainError, InstanceTooLargeError, MalformedDatasetError, StorageError
from dicom_chain.storage import TEMP_PREFIX

log = logging.getLogger(__name__)

SPOOL_ATTRIBUTE = "dicom_chain_spool"  # on the AE whose associations receive into a Spool
LOCK_NAME = ".lock"  # in each process's folder, held (flock) for as long as the process lives
FOLDER_PREFIX = "p"  # process folders; the files in them are numbered (Spool.create)


class SpoolFile:
    """One data set being received: what pynetdicom's chunked receive uses of its temp file
    (``write``, ``file.flush``, ``name``, ``close``), counting, with a ceiling.

    Held in memory up to ``memory_bytes`` (a 0.5 MB CT slice costs no file to create, write, read
    back and unlink); past that, what it holds goes to ``path`` and the rest follows as it
    arrives. ``name`` is the path either way: pynetdicom unlinks it after the handler, ignoring
    OSError, so a data set that never reached the disk leaves nothing to remove."""

    def __init__(self, path: Path, max_bytes: int, owner: object, memory_bytes: int = 0) -> None:
        self.path = path
        self.name = str(path)
        self.max_bytes = max_bytes
        self.memory_bytes = memory_bytes
        self.owner = owner  # the association receiving it
        self._memory: bytearray | None = bytearray()
        self._fp: BinaryIO | None = None
        self.received = 0  # bytes given to us: the Part 10 file's size, had we kept them all
        self.taken = False  # a handler has it: that handler removes it
        self.failed: OSError | None = None  # the disk refused a write (full): the rest is dropped
        if memory_bytes <= 0:
            self._spill()

    @property
    def too_large(self) -> bool:
        return self.received > self.max_bytes

    @property
    def in_memory(self) -> bool:
        return self._memory is not None

    def getvalue(self) -> bytes:
        """The Part 10 file as received, when it is held in memory."""
        assert self._memory is not None, "on disk: read it from path"
        return bytes(self._memory)

    def _spill(self) -> None:
        """From memory to the file: created now, with what was held so far."""
        held, self._memory = self._memory, None
        try:
            self._fp = self.path.open("wb")
            if held:
                self._fp.write(held)
        except OSError as exc:
            self.failed = exc

    def write(self, data: bytes | memoryview) -> int:
        """Never raises: an exception here would kill the association inside pynetdicom's state
        machine, where the sender is owed a status (C000 too large, A700 disk full)."""
        was_too_large = self.too_large
        self.received += len(data)
        if self.failed is not None:
            return len(data)
        if self.too_large:
            if not was_too_large:  # nothing of an instance we refuse is kept, not even its start
                self._truncate()
            return len(data)
        if self._memory is not None:
            if len(self._memory) + len(data) <= self.memory_bytes:
                self._memory += data
                return len(data)
            self._spill()
            if self.failed is not None:
                self._truncate()
                return len(data)
        assert self._fp is not None
        try:
            return self._fp.write(data)
        except OSError as exc:  # ENOSPC: drop what we had, read the rest, answer A700
            self.failed = exc
            self._truncate()
            return len(data)

    def _truncate(self) -> None:
        if self._memory is not None:
            self._memory = bytearray()
            return
        if self._fp is not None:
            with contextlib.suppress(OSError):
                self._fp.seek(0)
                self._fp.truncate()

    @property
    def file(self) -> SpoolFile:
        """pynetdicom flushes ``file`` itself after each PDV (dimse_messages.decode_msg): we are
        that file too, so that a full disk is noted here instead of killing the association."""
        return self

    def flush(self) -> None:
        if self._fp is None:
            return
        try:
            self._fp.flush()
        except OSError as exc:
            self.failed = self.failed or exc

    def close(self) -> None:
        if self._fp is None:
            return
        try:
            self._fp.close()  # flushes: the disk may refuse the last bytes here
        except OSError as exc:
            self.failed = self.failed or exc

    def discard(self) -> None:
        self.close()
        if self._memory is not None:
            self._memory = bytearray()
            return
        self.path.unlink(missing_ok=True)


class Spool:
    """Where one gateway process receives C-STORE data sets: its own folder under ``root``,
    locked while it lives, so several processes may share one root and each start removes the
    folders of processes that died (kill -9 included: the kernel drops a dead process's lock).

    ``salvage`` is given each dead folder before it goes (``Node.restore_names``: a stored file's
    only durable name may be a spare there); if it raises, the folder stays for the next start."""

    def __init__(
        self,
        root: Path,
        max_bytes: int,
        memory_bytes: int = 0,
        salvage: Callable[[Path], object] | None = None,
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.memory_bytes = memory_bytes  # SpoolFile: received in memory up to this size
        self.salvage = salvage
        root.mkdir(parents=True, exist_ok=True)
        self._remove_dead_folders()
        self.folder = Path(tempfile.mkdtemp(dir=root, prefix=FOLDER_PREFIX))
        self._lock_fd: int | None = os.open(self.folder / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        os.write(self._lock_fd, str(owners.current()).encode())  # who holds it, for ``running``
        self._guard = threading.Lock()
        self._files: dict[str, SpoolFile] = {}
        self._names = itertools.count(1)  # file names: unique in this process's own folder

    @staticmethod
    def running(root: Path) -> list[owners.Owner]:
        """The gateway processes receiving into ``root`` now: those whose folder lock is held (the
        kernel drops it when a process dies, kill -9 included). Only as good as the file system's
        locking, so on one host's own disk; a folder locked by an older version names no owner."""
        found = []
        for folder in sorted(root.glob(f"{FOLDER_PREFIX}*")) if root.is_dir() else []:
            try:
                fd = os.open(folder / LOCK_NAME, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # held: alive
                owner = owners.Owner.parse(os.read(fd, 4096).decode(errors="replace"))
                found.append(owner or owners.Owner("?", "?", 0, owners.UNKNOWN_START))
            finally:
                os.close(fd)  # and with it a shared lock just taken: a dead folder stays for the next start
        return found

    def _remove_dead_folders(self) -> None:
        for folder in self.root.glob(f"{FOLDER_PREFIX}*"):
            try:
                fd = os.open(folder / LOCK_NAME, os.O_RDWR)
            except FileNotFoundError:  # mkdtemp'd, not locked yet: a process starting now
                continue
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # alive
            finally:
                os.close(fd)
            if self.salvage is not None:
                try:
                    self.salvage(folder)
                except Exception:
                    log.exception("spool folder %s kept: what it holds could not be checked", folder)
                    continue
            shutil.rmtree(folder, ignore_errors=True)

    def create(self, owner: object) -> SpoolFile:
        """Named, not created: the file exists only once the data set outgrows memory_bytes."""
        name = str(self.folder / f"{next(self._names)}.dcm")
        spooled = SpoolFile(Path(name), self.max_bytes, owner, self.memory_bytes)
        with self._guard:
            self._files[spooled.name] = spooled
        return spooled

    def take(self, path: Path | str) -> SpoolFile | None:
        """The file pynetdicom received a data set into, now the caller's to remove."""
        with self._guard:
            spooled = self._files.pop(str(path), None)
        if spooled is not None:
            spooled.taken = True
            spooled.close()
        return spooled

    def connection_closed(self, event: evt.Event) -> None:
        """EVT_CONN_CLOSE: what the association received that no handler took is removed."""
        with self._guard:
            left = [f for f in self._files.values() if f.owner is event.assoc]
            for spooled in left:
                del self._files[spooled.name]
        for spooled in left:
            spooled.discard()

    def files(self) -> list[Path]:
        """Every file in this process's folder (its lock aside): for tests and ``status``."""
        return sorted(
            p for p in self.folder.iterdir() if p.name != LOCK_NAME and not p.name.startswith(TEMP_PREFIX)
        )  # temp files made ahead for the store (storage.Spares) are no received data set

    def close(self) -> None:
        with self._guard:
            left, self._files = list(self._files.values()), {}
        for spooled in left:
            spooled.discard()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        shutil.rmtree(self.folder, ignore_errors=True)


def _spooled_temporary_file(*args: Any, **kwargs: Any) -> Any:
    """Stands in for ``NamedTemporaryFile`` in pynetdicom's dimse_messages (its only use there:
    the chunked receive): the receiving AE's spool when it has one, else pynetdicom's own call."""
    assoc = getattr(threading.current_thread(), "assoc", None)  # decode_msg runs on the DUL thread
    spool = getattr(getattr(assoc, "ae", None), SPOOL_ATTRIBUTE, None)
    if isinstance(spool, Spool):
        return spool.create(assoc)
    return tempfile.NamedTemporaryFile(*args, **kwargs)  # pynetdicom closes and unlinks it


def receive_to_disk(ae: object, spool: Spool) -> None:
    """Have ``ae``'s associations receive C-STORE data sets into ``spool`` (process-wide flag)."""
    setattr(ae, SPOOL_ATTRIBUTE, spool)
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = _spooled_temporary_file  # type: ignore[attr-defined]


@contextlib.contextmanager
def received(event: evt.Event, spool: Spool) -> Iterator[Item]:
    """The C-STORE's data set as an item to chain; its file (if on disk) is removed on the way
    out, whatever happened. Over the spool's maximum: InstanceTooLargeError, nothing kept."""
    path = getattr(event.request, "_dataset_path", None)
    spooled = spool.take(path) if path is not None else None
    try:
        if spooled is not None and spooled.failed is not None:
            raise StorageError(f"cannot receive the instance: {spooled.failed.strerror or spooled.failed}")
        if spooled is not None and spooled.too_large:
            raise InstanceTooLargeError(
                f"instance of {spooled.received} bytes or more; at most {spool.max_bytes} accepted"
            )
        try:
            if spooled is not None and spooled.in_memory:
                data = spooled.getvalue()
                # the meta pynetdicom wrote ahead of the data set, or (not as it writes it) its own
                head = fastread.file_meta(data)
                carried = (
                    DICOM.received_bytes(data, *head) if head else DICOM.received_bytes(data, event.file_meta)
                )
            elif path is not None:
                carried = DICOM.received_file(Path(path), event.file_meta)
            else:  # received in memory (an AE without a spool)
                ds = event.dataset
                ds.file_meta = event.file_meta
                carried = DICOM.received(ds, event.request.DataSet.getvalue())
        except DicomChainError:
            raise
        except Exception as exc:  # pydicom decodes lazily; garbage surfaces here
            raise MalformedDatasetError(f"dataset does not decode: {exc}") from exc
        item = carried.item()
        yield item
    finally:
        if spooled is not None:
            spooled.discard()
        elif path is not None:  # not ours to track (no spool), still never left behind
            Path(path).unlink(missing_ok=True)
