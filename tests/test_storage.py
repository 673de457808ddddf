"""The store's paths: readable for real UIDs, harmless for hostile ones."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

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

    from dicom_chain.errors import StorageError

    store = Storage(tmp_path / "store")
    assert store.write("g/s/one.x", [b"he", b"llo"]).read_bytes() == b"hello"

    def refused_half_way():
        yield b"half"
        raise ValueError("encoder refused")

    with pytest.raises(StorageError, match=r"cannot encode g/s/two\.x"):
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
