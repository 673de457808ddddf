"""The store's paths: readable for real UIDs, harmless for hostile ones."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicom_chain import storage
from dicom_chain.storage import Storage, path_part, relative_path


def test_real_uids_are_kept_as_they_are():
    assert relative_path("1.2.3", "1.2.3.4", "1.2.3.4.5", 1, suffix=".dcm") == "1.2.3/1.2.3.4/1.2.3.4.5.dcm"
    assert (
        relative_path("1.2.3", "1.2.3.4", "1.2.3.4.5", 2, suffix=".dcm") == "1.2.3/1.2.3.4/1.2.3.4.5.v2.dcm"
    )


@given(st.text(max_size=80))
def test_any_uid_stays_one_path_part_inside_the_store(uid):
    part = path_part(uid)
    assert part and "/" not in part and part not in (".", "..")
    root = Path("/store")
    assert (root / relative_path(uid, uid, uid, 1, suffix=".dcm")).resolve().is_relative_to(root)


def test_distinct_hostile_uids_do_not_collide():
    assert path_part("../x") != path_part("__x") != path_part("..x")


def test_iter_files_skips_temp_files(tmp_path: Path):
    store = Storage(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.dcm").write_bytes(b"x")
    (tmp_path / "a" / ".incoming-123").write_bytes(b"x")
    assert list(store.iter_files()) == ["a/f.dcm"]


def test_a_write_is_whole_or_absent(tmp_path: Path):
    """Bytes in, one file out; pieces encoded as they are written may fail half-way: nothing stays."""
    import pytest

    from dicom_chain.errors import MalformedDatasetError

    store = Storage(tmp_path / "store")
    assert store.write("g/s/one.x", [b"he", b"llo"]).read_bytes() == b"hello"

    def refused_half_way():
        yield b"half"
        raise ValueError("encoder refused")

    with pytest.raises(MalformedDatasetError, match=r"cannot encode g/s/two\.x"):  # C000: the item's fault
        store.write("g/s/two.x", refused_half_way())
    assert list(store.iter_files()) == ["g/s/one.x"] and not list((tmp_path / "store" / "g" / "s").glob(".*"))


def test_an_intent_covers_every_version_of_its_instance_and_nothing_else(tmp_path: Path):
    store = Storage(tmp_path)
    folder, stem = store.covering("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert (folder, stem) == ("1.2.3/1.2.3.4", "1.2.3.4.5")
    (tmp_path / folder).mkdir(parents=True)
    for name in ("1.2.3.4.5.dcm", "1.2.3.4.5.v2.dcm", "1.2.3.4.5.6.dcm", "1.2.3.4.55.dcm", ".incoming-x"):
        (tmp_path / folder / name).write_bytes(b"x")
    assert store.versions(folder, stem) == [f"{folder}/1.2.3.4.5.dcm", f"{folder}/1.2.3.4.5.v2.dcm"]
    assert store.versions("no/such", stem) == []


@given(st.text(max_size=80))
def test_the_first_version_of_any_uid_is_covered(uid):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        store = Storage(Path(tmp))
        relative = relative_path(uid, uid, uid, 1, suffix=".dcm")
        store.path(relative).parent.mkdir(parents=True, exist_ok=True)
        store.path(relative).write_bytes(b"x")
        assert store.versions(*store.covering(uid, uid, uid)) == [relative]


def test_names_that_collided_before_are_distinct():
    """A space sanitised to "_" plus the hash once named ``A B`` as a UID literally so spelled;
    a SOP literally named ``X.v2`` took version 2 of ``X``'s file."""
    assert path_part("1.2.840.99999.1 7") != path_part("1.2.840.99999.1_7_c62e6b8eb456")
    version_2 = relative_path("1.2", "1.2.3", "1.2.3.4", 2, suffix=".dcm")
    assert version_2 != relative_path("1.2", "1.2.3", "1.2.3.4.v2", 1, suffix=".dcm")


names = st.text(max_size=70) | st.from_regex(r"[0-9._v a-fA-F-]{1,70}", fullmatch=True)


@given(names, st.integers(1, 12), names, st.integers(1, 12))
def test_distinct_items_or_versions_never_share_a_file_name(a, version_a, b, version_b):
    if (a, version_a) != (b, version_b):
        name_a = relative_path("g", "s", a, version_a, suffix=".dcm")
        assert name_a != relative_path("g", "s", b, version_b, suffix=".dcm")


def test_a_write_never_replaces_a_file(tmp_path: Path):
    import pytest

    from dicom_chain.errors import PathTakenError

    store = Storage(tmp_path)
    store.write("g/s/one.x", [b"first"])
    with pytest.raises(PathTakenError):
        store.write("g/s/one.x", [b"second"])
    assert store.path("g/s/one.x").read_bytes() == b"first"
    assert list(store.iter_files()) == ["g/s/one.x"] and not list((tmp_path / "g" / "s").glob(".*"))


def test_plain_ids_stay_readable_and_case_cannot_merge_two_names():
    assert path_part("photo-0") == "photo-0" and path_part("1.2.840.10008.1") == "1.2.840.10008.1"
    assert path_part("Photo-0").lower() != path_part("photo-0").lower()


def test_ranges_of_another_file_are_copied_by_the_kernel_or_else_through_memory(tmp_path, monkeypatch):
    import errno
    import os

    from dicom_chain.storage import FileRange, Ranged

    source = tmp_path / "received.bin"
    source.write_bytes(bytes(range(256)) * 40)
    pieces = Ranged([b"head", FileRange(source, 10, 5000), b"mid", FileRange(source, 5010, 5230)])
    expected = b"head" + source.read_bytes()[10:5010] + b"mid" + source.read_bytes()[5010:]
    storage = Storage(tmp_path / "store")
    assert storage.write("a/kernel.bin", pieces).read_bytes() == expected
    assert b"".join(pieces) == expected  # a reader that iterates gets the same bytes

    def refused(*args, **kwargs):
        raise OSError(errno.EXDEV, "another file system")

    monkeypatch.setattr(os, "copy_file_range", refused)
    assert storage.write("a/memory.bin", pieces).read_bytes() == expected


def test_a_range_past_the_end_of_its_file_stores_nothing(tmp_path):
    from dicom_chain.errors import MalformedDatasetError
    from dicom_chain.storage import FileRange, Ranged

    source = tmp_path / "received.bin"
    source.write_bytes(b"x" * 100)
    storage = Storage(tmp_path / "store")
    with pytest.raises(MalformedDatasetError, match="ends 50 bytes early"):
        storage.write("a/b.bin", Ranged([b"head", FileRange(source, 0, 150)]))
    assert list(storage.iter_files()) == [] and list((tmp_path / "store" / "a").iterdir()) == []


def test_a_temp_file_is_new_private_and_never_one_left_behind(tmp_path: Path, monkeypatch):
    """The folder of a new series is made by the create that finds none; a temp name a dead process
    with our pid left is skipped, never opened (its bytes stay as they were until recovery)."""
    import itertools

    from dicom_chain import storage

    monkeypatch.setattr(storage, "_temp_names", itertools.count())
    folder = tmp_path / "study" / "series"
    at, made = storage._open_folder(folder)  # no folder yet
    assert made
    fd, name = storage._create_temp(at)
    os.close(fd)
    leftover = folder / f"{storage.TEMP_PREFIX}{os.getpid():x}.1"
    leftover.write_bytes(b"theirs")
    fd, second = storage._create_temp(at)
    os.close(fd)
    os.close(at)
    assert (folder / name).is_file() and name.startswith(storage.TEMP_PREFIX)
    assert second == f"{storage.TEMP_PREFIX}{os.getpid():x}.2"
    assert leftover.read_bytes() == b"theirs"
    second = folder / second
    assert stat.S_IMODE(os.stat(second).st_mode) == 0o600


def test_pieces_are_written_whole_and_in_order_when_the_kernel_takes_less(tmp_path: Path, monkeypatch):
    from dicom_chain import storage

    real = os.writev
    monkeypatch.setattr(storage.os, "writev", lambda fd, views: real(fd, [bytes(views[0])[:3]]))
    pieces = [b"prefix", memoryview(b"0123456789")[2:], b"", b"ours", bytearray(b"tail")]
    written = Storage(tmp_path).write("a/b/c.dcm", pieces)
    assert written.read_bytes() == b"prefix23456789ourstail"
    assert [p.name for p in written.parent.iterdir()] == ["c.dcm"]  # the temp name is gone


def test_a_write_not_yet_named_is_read_back_through_its_own_descriptor(tmp_path: Path, monkeypatch):
    """The confirmation's read-back opens nothing while the write is pending; once named or given
    up, the descriptor is the store's no more (its number may be another file's) and a read opens
    the file by its path."""
    from dicom_chain import storage

    store = Storage(tmp_path)
    pending = store.start_write("a/b/c.dcm", [b"0123", b"456789"])
    real_open = os.open

    def no_open(path, *args, **kwargs):
        raise AssertionError(f"opened {path}")

    monkeypatch.setattr(storage.os, "open", no_open)
    assert storage.read_written(pending.written_at, 2, 5) == (b"23456", 10)
    assert storage.read_written(pending.written_at, 8, 100) == (b"89", 10)
    monkeypatch.setattr(storage.os, "open", real_open)
    target = pending.wait()
    assert storage.read_written(target, 0, 4) == (b"0123", 10)
    with pytest.raises(FileNotFoundError):  # the temp name is gone, and not read through a stale number
        storage.read_written(pending.written_at, 0, 4)
    given_up = store.start_write("a/b/d.dcm", [b"x"])
    given_up.abandon()
    assert storage._writing == {} and sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["c.dcm"]


def test_a_name_taken_by_anything_is_refused_before_a_byte_is_written(tmp_path: Path):
    """A dangling symbolic link takes a name as a file does: the link in ``wait`` would fail on it."""
    from dicom_chain.errors import PathTakenError

    store = Storage(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.dcm").symlink_to(tmp_path / "nowhere")
    with pytest.raises(PathTakenError):
        store.start_write("a/x.dcm", [b"bytes"])
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.dcm"]


def _spared(tmp_path: Path) -> tuple[Storage, storage.Spares]:
    spool = tmp_path / "spool"
    spool.mkdir()
    store = Storage(tmp_path / "store")
    store.spares = storage.Spares(spool, store.root)
    return store, store.spares


def test_spares_made_ahead_become_the_stored_files_and_leave_nothing(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(storage, "SPARE_BATCH", 2)
    store, spares = _spared(tmp_path)
    assert spares.usable
    spares.prepare()
    spares.prepare()  # the thread has spares left: no more made
    made = sorted(p.stat().st_ino for p in spares.folder.iterdir())
    assert len(made) == 2
    path = store.write("a/b/c.dcm", [b"DICM", b"data"])
    assert path.read_bytes() == b"DICMdata" and path.stat().st_ino in made  # a spare, linked in
    # durable by the spare's name until its new folder is synced (settle): both name it
    assert len(list(spares.folder.iterdir())) == 2 and path.stat().st_nlink == 2
    spares.settle()
    assert len(list(spares.folder.iterdir())) == 1 and list(path.parent.iterdir()) == [path]
    assert path.stat().st_nlink == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = store.write("a/b/d.dcm", [b"x"])
    assert second.stat().st_ino in made and second.stat().st_ino != path.stat().st_ino
    third = store.write("a/b/e.dcm", [b"y"])  # none left: made in its folder, synced there, as before
    assert third.read_bytes() == b"y" and third.stat().st_ino not in made and third.stat().st_nlink == 1
    spares.drop()
    assert list(spares.folder.iterdir()) == [] and second.stat().st_nlink == 1


def test_spares_are_settled_before_more_are_made_and_when_dropped_or_closed(tmp_path: Path, monkeypatch):
    """A spare's name goes only after the folder of the file's new name was synced, once per
    folder a batch: before the thread's next batch is made (the association waiting), when its
    association ends (``drop``) or the server stops (``close``)."""
    monkeypatch.setattr(storage, "SPARE_BATCH", 2)
    store, spares = _spared(tmp_path)
    synced: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    spares.prepare()
    first = store.write("a/b/c.dcm", [b"one"])
    second = store.write("a/b/d.dcm", [b"two"])
    series, study, root, spool = (
        p.stat().st_ino for p in (first.parent, first.parent.parent, store.root, spares.folder)
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", spy)
        spares.prepare()  # none left: settles both (a new series: the folders above too), makes two
    assert synced == [series, study, root, spool]
    assert first.stat().st_nlink == 1 and second.stat().st_nlink == 1
    assert len(list(spares.folder.iterdir())) == 2  # the new ones only
    third = store.write("a/b/e.dcm", [b"three"])
    assert third.stat().st_nlink == 2
    spares.drop()
    assert third.stat().st_nlink == 1 and list(spares.folder.iterdir()) == []
    spares.prepare()
    fourth = store.write("a/b/f.dcm", [b"four"])
    spares.close()
    assert fourth.stat().st_nlink == 1 and [p for p in spares.folder.iterdir() if p.stat().st_size] == []


def test_a_spare_whose_folder_cannot_be_synced_keeps_its_name(tmp_path: Path, monkeypatch):
    """Its name in the spool is then the file's only durable one: it stays for recovery."""
    store, spares = _spared(tmp_path)
    spares.prepare()
    path = store.write("a/b/c.dcm", [b"data"])

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    spares.settle()
    monkeypatch.undo()
    assert path.stat().st_nlink == 2 and storage.Spares.leftovers(spares.folder) != []


def test_leftovers_are_the_spares_holding_data(tmp_path: Path):
    _store, spares = _spared(tmp_path)
    spares.prepare()  # empty: a receipt never started
    (spares.folder / f"{storage.TEMP_PREFIX}7.1").write_bytes(b"not a spare")
    written = spares.folder / f"{storage.TEMP_PREFIX}{storage.SPARE_INFIX}ff"
    written.write_bytes(b"data")
    assert storage.Spares.leftovers(spares.folder) == [written]


def test_link_in_gives_a_file_its_name_back_never_over_another(tmp_path: Path):
    store = Storage(tmp_path / "store")
    source = tmp_path / "spare"
    source.write_bytes(b"held")
    assert store.link_in(source, "s/e/i.dcm")
    assert store.path("s/e/i.dcm").read_bytes() == b"held"
    other = tmp_path / "other"
    other.write_bytes(b"other")
    assert not store.link_in(other, "s/e/i.dcm")
    assert store.path("s/e/i.dcm").read_bytes() == b"held"


def test_a_spare_given_up_or_dropped_leaves_no_file(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(storage, "SPARE_BATCH", 1)
    store, spares = _spared(tmp_path)
    spares.prepare()
    pending = store.start_write("a/b/c.dcm", [b"data"])
    assert pending.written_at.parent == spares.folder and pending.written_at.is_file()
    pending.abandon()
    assert list(spares.folder.iterdir()) == [] and not store.path("a/b/c.dcm").exists()
    named = store.start_write("a/b/c.dcm", [b"data"])  # no spare left: in its folder
    named.wait()
    spares.prepare()
    pending = store.start_write("a/b/d.dcm", [b"data"])
    pending.wait()
    pending.abandon()  # named, then the ledger failed: the name goes, the spare at the next settle
    assert not store.path("a/b/d.dcm").exists()
    spares.prepare()
    spares.drop()
    assert list(spares.folder.iterdir()) == []
    spares.drop()  # nothing to drop: no error


def test_without_a_link_into_the_store_there_are_no_spares(tmp_path: Path, monkeypatch):
    """A spool on another file system (EXDEV): every write makes its own temp file."""
    import errno

    def cross_device(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    store, spares = _spared(tmp_path)
    monkeypatch.undo()
    assert not spares.usable
    spares.prepare()
    assert list(spares.folder.iterdir()) == []
    assert store.write("a/b/c.dcm", [b"data"]).read_bytes() == b"data"
