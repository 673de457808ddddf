"""verify: files on their own and the whole node; every kind of breakage is named, none is missed."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from dicom_chain.block import Block
from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.carriers.dicom.embedding import embed_block, read_block
from dicom_chain.config import Settings
from dicom_chain.node import Node
from dicom_chain.synthetic import StudySpec, ct_study
from dicom_chain.verify import verify_files, verify_node

from .conftest import fresh, pydicom_file, read
from .peers import require_tool


def chained_node(settings: Settings, studies: int = 2, per_study: int = 5) -> tuple[Node, list[Path]]:
    """A node that received ``studies`` synthetic studies interleaved, plus two pydicom files."""
    node = Node.open(settings)
    streams = [
        list(ct_study(StudySpec(seed=s, instances=per_study, rows=16, columns=16))) for s in range(studies)
    ]
    paths = []
    for i in range(per_study):
        for stream in streams:
            paths.append(node.ingest(item_from_dataset(stream[i])).path)
    paths.append(node.ingest(item_from_dataset(read("CT_small.dcm"))).path)
    paths.append(node.ingest(item_from_dataset(read("MR_small_bigendian.dcm"))).path)
    return node, paths


def kinds(report, severity="error"):
    return sorted({f.kind for f in report.findings if f.severity == severity})


def tamper(node: Node, sql: str, **params) -> set[str]:
    """Change the ledger behind the node's back, then return what verify finds."""
    with node.db.engine.begin() as conn:
        conn.execute(text(sql), params)
    return set(kinds(verify_node(node.ledger, node.storage)))


@pytest.fixture
def chained(settings):
    node, paths = chained_node(settings)
    yield node, paths
    node.close()


def test_intact_store_verifies_as_files_and_as_node(chained):
    node, paths = chained
    files = verify_files([node.storage.root])
    assert files.ok, files.findings
    assert files.files_checked == files.blocks_checked == len(paths) == 12
    whole = verify_node(node.ledger, node.storage)
    assert whole.ok, whole.findings
    assert whole.events_checked == 12


def test_one_study_alone_verifies(chained):
    _node, paths = chained
    study_dir = paths[0].parent.parent
    report = verify_files([study_dir])
    assert report.ok and report.files_checked == 5
    assert "gap" in kinds(report, "info")  # the other study's heights are not among these files


def test_altered_pixel_is_found_by_name_and_uid(chained):
    node, paths = chained
    ds = pydicom.dcmread(paths[3])
    data = bytearray(ds.PixelData)
    data[100] ^= 0x01
    ds.PixelData = bytes(data)
    ds.save_as(paths[3])
    for report in (verify_files([node.storage.root]), verify_node(node.ledger, node.storage)):
        [finding] = report.errors
        assert finding.kind == "altered" and finding.path == str(paths[3])
        assert finding.sop_instance_uid == ds.SOPInstanceUID


def test_altered_attribute_is_found(chained):
    _node, paths = chained
    ds = pydicom.dcmread(paths[0])
    ds.PatientName = "SOMEONE^ELSE"
    ds.save_as(paths[0])
    assert kinds(verify_files([paths[0]])) == ["altered"]


def test_removed_middle_instance_is_found_without_the_ledger(chained):
    node, paths = chained
    study = sorted(paths[0].parent.glob("*.dcm"))
    study_dir = paths[0].parent.parent
    victim = paths[4]  # third instance of the first study
    assert victim in study
    victim.unlink()
    report = verify_files([study_dir], complete=True)
    assert kinds(report) == ["missing-instance"]
    assert verify_files([study_dir]).ok  # a subset of a study is not a removal unless --complete
    node_report = verify_node(node.ledger, node.storage)
    assert kinds(node_report) == ["missing-file"]
    assert node_report.errors[0].path == str(victim)


def test_swapped_files_are_reported_as_re_ordered(chained):
    node, paths = chained
    a, b = paths[0], paths[2]
    tmp = a.with_suffix(".swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    assert "re-ordered" in kinds(verify_node(node.ledger, node.storage))


def test_foreign_and_non_dicom_files_are_named_not_tracebacks(chained, tmp_path):
    node, _ = chained
    (node.storage.root / "notes.txt").write_text("not an image")
    shutil.copy(pydicom_file("rtplan.dcm"), node.storage.root / "unchained.dcm")
    files = verify_files([node.storage.root])
    by_path = {Path(f.path).name: f.kind for f in files.errors}
    assert by_path == {"notes.txt": "not-dicom", "unchained.dcm": "no-block"}
    whole = verify_node(node.ledger, node.storage)
    assert sorted(Path(f.path).name for f in whole.errors if f.kind == "foreign-file") == [
        "notes.txt",
        "unchained.dcm",
    ]
    unchained = next(f for f in whole.errors if f.path.endswith("unchained.dcm"))
    assert unchained.sop_instance_uid == read("rtplan.dcm").SOPInstanceUID


def test_block_copied_into_another_file_is_found(chained):
    _node, paths = chained
    donor = pydicom.dcmread(paths[1])
    target = pydicom.dcmread(paths[0])
    for tag in [t for t in target.keys() if t.group == 0x0071]:
        del target[tag]
    for tag in [t for t in donor.keys() if t.group == 0x0071]:
        target[tag] = donor[tag]
    target.save_as(paths[0])
    assert "altered" in kinds(verify_files([paths[0]]))


def test_untrusted_key_is_refused(chained, tmp_path):
    from dicom_chain.keys import NodeKey

    node, _ = chained
    stranger = NodeKey.generate()
    report = verify_files([node.storage.root], trusted_keys=frozenset({stranger.public_key}))
    assert kinds(report) == ["untrusted-key"]
    assert verify_files([node.storage.root], trusted_keys=frozenset({node.key.public_key})).ok


def test_tampered_ledger_rows_are_found(chained):
    found = tamper(
        chained[0],
        "UPDATE blocks SET block = replace(block, :a, :b) WHERE height = 3",
        a='"institution":"Test Hospital"',
        b='"institution":"Evil Hospital"',
    )
    assert "ledger-altered" in found


def test_rewritten_event_is_found(chained):
    assert "event-altered" in tamper(chained[0], "UPDATE events SET actor = 'MALLORY' WHERE seq = 4")


def test_deleted_event_is_found(chained):
    assert {"event-gap", "event-broken-link"} <= tamper(chained[0], "DELETE FROM events WHERE seq = 5")


def test_deleted_last_event_is_found(chained):
    found = tamper(chained[0], "DELETE FROM events WHERE seq = (SELECT max(seq) FROM events)")
    assert "event-head-mismatch" in found


def test_an_event_past_the_head_is_found(chained):
    """The head moved back one: its last event is one the head does not name (as if added)."""
    found = tamper(
        chained[0],
        "UPDATE event_log_head SET seq = seq - 1, "
        "hash = (SELECT hash FROM events WHERE seq = (SELECT seq - 1 FROM event_log_head))",
    )
    assert found == {"event-head-mismatch"}


def test_an_event_appended_while_verify_reads_the_log_is_no_finding(chained, monkeypatch):
    """verify on a live node: the log is checked up to the head it read first."""
    from dicom_chain.events import EventDraft
    from dicom_chain.vocab import EventType

    node, _ = chained
    reading = node.ledger.iter_event_rows

    def appended_meanwhile(*args, **kwargs):
        for n, row in enumerate(reading(*args, **kwargs)):
            if n == 1:
                node.record(EventDraft(EventType.VERIFY_NODE, actor="someone", reason="meanwhile"))
            yield row

    monkeypatch.setattr(node.ledger, "iter_event_rows", appended_meanwhile)
    report = verify_node(node.ledger, node.storage)
    assert report.ok, report.findings
    assert report.events_checked == node.ledger.event_head()[0] - 1  # the new one is the next run's


def test_deleted_last_block_row_is_found(chained):
    assert {"head-mismatch", "foreign-file"} <= tamper(chained[0], "DELETE FROM blocks WHERE height = 11")


def test_deleted_middle_block_row_is_a_gap_for_the_node(chained):
    found = tamper(chained[0], "DELETE FROM blocks WHERE height = 5")
    assert {"gap", "foreign-file", "missing-instance"} <= found


@pytest.mark.dcmtk
def test_files_re_encoded_by_dcmtk_still_verify(chained, tmp_path):
    """What a PACS hop does: other transfer syntax, other file meta."""
    dcmconv = require_tool("dcmconv", "dcmtk")
    _node, paths = chained
    out = tmp_path / "hop"
    out.mkdir()
    for i, path in enumerate(paths):
        option = ["+ti", "+tb", "+te"][i % 3]
        subprocess.run([dcmconv, option, str(path), str(out / f"{i}.dcm")], check=True, capture_output=True)
    report = verify_files([out])
    assert report.ok, report.findings
    assert report.blocks_checked == len(paths)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(per_study=st.integers(3, 7), data=st.data())
def test_removing_any_middle_file_of_a_study_is_detected(tmp_path_factory, per_study, data):
    settings_ = Settings(home=tmp_path_factory.mktemp("node"))
    node = Node.open(settings_)
    try:
        paths = [
            node.ingest(item_from_dataset(fresh(ds))).path
            for ds in ct_study(StudySpec(seed=3, instances=per_study, rows=8, columns=8))
        ]
        victim = data.draw(st.integers(1, per_study - 2))
        paths[victim].unlink()
        report = verify_files([node.storage.root], complete=True)
        assert [f.kind for f in report.errors] == ["missing-instance"]
    finally:
        node.close()


def test_whole_node_verifies_on_each_database(db_url, tmp_path):
    node, paths = chained_node(Settings(home=tmp_path / "n", db=db_url), studies=2, per_study=3)
    try:
        report = verify_node(node.ledger, node.storage)
        assert report.ok, report.findings
        assert report.blocks_checked == len(paths)
        paths[1].unlink()
        assert kinds(verify_node(node.ledger, node.storage)) == ["missing-file"]
    finally:
        node.close()


PROPERTY_FILES = ["CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "rtplan.dcm", "rtdose.dcm"]


@pytest.fixture(scope="module")
def chained_real_files(tmp_path_factory) -> list[Path]:
    node = Node.open(Settings(home=tmp_path_factory.mktemp("props")))
    try:
        return [node.ingest_file(pydicom_file(name)).path for name in PROPERTY_FILES]
    finally:
        node.close()


@pytest.mark.dcmtk
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_chain_of_uncompressed_hops_keeps_verify_passing(chained_real_files, tmp_path_factory, data):
    dcmconv = require_tool("dcmconv", "dcmtk")
    source = data.draw(st.sampled_from(chained_real_files))
    hops = data.draw(st.lists(st.sampled_from(["+ti", "+te", "+tb", "+td"]), min_size=1, max_size=3))
    work = tmp_path_factory.mktemp("hops")
    current = source
    for i, option in enumerate(hops):
        out = work / f"{i}.dcm"
        subprocess.run([dcmconv, option, str(current), str(out)], check=True, capture_output=True)
        current = out
    report = verify_files([current])
    assert report.ok, (hops, report.findings)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_one_value_change_in_a_chained_file_fails_verify(chained_real_files, tmp_path_factory, data):
    source = data.draw(st.sampled_from(chained_real_files))
    ds = pydicom.dcmread(source)
    candidates = [
        t
        for t in ds.keys()
        if t.group not in (0x0002, 0x0071) and t.element and t != 0xFFFCFFFC and ds[t].VR not in ("SQ",)
        and isinstance(ds[t].value, bytes | str | int | float) and ds[t].value not in ("", b"")
    ]  # fmt: skip
    tag = data.draw(st.sampled_from(candidates))
    elem = ds[tag]
    if isinstance(elem.value, bytes):
        at = data.draw(st.integers(0, len(elem.value) - 1))
        elem.value = elem.value[:at] + bytes([elem.value[at] ^ 0x01]) + elem.value[at + 1 :]
    elif isinstance(elem.value, int):
        elem.value = elem.value + 1 if elem.value < 30000 else elem.value - 1
    elif isinstance(elem.value, float):
        elem.value = elem.value + 1.0
    else:
        elem.value = str(elem.value) + "9"
    out = tmp_path_factory.mktemp("changed") / "x.dcm"
    ds.save_as(out)
    report = verify_files([out])
    assert [f.kind for f in report.errors] == ["altered"], (tag, report.findings)


_FILES_ONLY = """
import sys
from pathlib import Path
from dicom_chain.verify import verify_files
report = verify_files([Path(p) for p in sys.argv[1:]])
loaded = sorted({m.split(".")[0] for m in sys.modules} & {"sqlalchemy", "alembic", "psycopg"})
print(report.ok, report.blocks_checked, ",".join(loaded) or "-")
"""


def test_verifying_files_loads_no_database_code(chained):
    """``verify FILES`` runs where no database driver is installed: nothing of SQLAlchemy loads."""
    _, paths = chained
    result = subprocess.run(
        [sys.executable, "-c", _FILES_ONLY, *map(str, paths)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", str(len(paths)), "-"]


def _resign_head(path: Path, key) -> None:
    """Re-sign a chained file's block with another key, the content left as it is (a forged head)."""
    from dataclasses import replace

    from dicom_chain.block import Block
    from dicom_chain.carriers.dicom.embedding import embed_block, read_block

    ds = pydicom.dcmread(path)
    block = read_block(ds)
    embed_block(ds, Block.sign(replace(block.header, key_id=key.key_id), key))
    ds.save_as(path)


def test_forged_head_is_caught_by_a_pinned_key_and_unchecked_without_one(chained):
    from dicom_chain.keys import NodeKey

    node, paths = chained
    study = paths[:10:2]  # the first study, in chain order
    head = study[-1]
    _resign_head(head, NodeKey.generate())
    pinned = verify_files(study, trusted_keys=frozenset({node.key.public_key}))
    assert kinds(pinned) == ["untrusted-key"]
    [finding] = pinned.errors
    assert finding.path == str(head) and "unknown key" in finding.message
    unpinned = verify_files(study)
    assert unpinned.ok and not unpinned.signers_checked  # exit 3 in the CLI: signer not checked
    assert "key-not-pinned" in kinds(unpinned, "info")
    assert pinned.signers_checked


def test_cli_pins_the_node_home_key_and_exits_3_without_one(chained, tmp_path):
    from dicom_chain.keys import NodeKey

    node, paths = chained
    study = [str(p) for p in paths[:10:2]]
    cli = [sys.executable, "-m", "dicom_chain.cli", "verify"]
    key_dir = node.settings.home
    nowhere = str(tmp_path / "none")
    unpinned = subprocess.run([*cli, "--home", nowhere, *study], capture_output=True, text=True)
    assert unpinned.returncode == 3, unpinned.stdout + unpinned.stderr
    assert "SIGNER NOT CHECKED" in unpinned.stdout
    on_home = subprocess.run([*cli, "--home", str(key_dir), *study], capture_output=True, text=True)
    assert on_home.returncode == 0, on_home.stdout + on_home.stderr
    _resign_head(Path(study[-1]), NodeKey.generate())
    forged = subprocess.run([*cli, "--home", str(key_dir), *study], capture_output=True, text=True)
    assert forged.returncode == 1 and "untrusted-key" in forged.stdout


def test_instance_after_a_malformed_block_is_not_reported_missing(chained):
    _node, paths = chained
    study = paths[:10:2]
    ds = pydicom.dcmread(study[2])
    for elem in ds.iterall():
        if elem.tag.group == 0x0071 and elem.VR in ("OB", "UN") and b'"header"' in bytes(elem.value):
            elem.value = b"{not json" + bytes(elem.value)[9:]
    ds.save_as(study[2])
    report = verify_files(study)
    assert kinds(report) == ["malformed-block"]  # the one real problem, and no "missing" beside it
    [note] = [f for f in report.findings if f.kind == "missing-instance"]
    assert note.severity == "info" and note.sop_instance_uid == pydicom.dcmread(study[3]).SOPInstanceUID


def test_pydicom_warnings_do_not_leak_to_stderr(tmp_path):
    malformed = Path(__file__).parent / "malformed" / "uid_too_long.dcm"
    cli = [sys.executable, "-W", "always", "-m", "dicom_chain.cli", "verify", "--home", str(tmp_path)]
    result = subprocess.run([*cli, str(malformed)], capture_output=True, text=True)
    assert result.returncode == 1, result.stdout
    assert "Warning" not in result.stderr and "pydicom" not in result.stderr, result.stderr
    assert "parser-warning" in result.stdout  # captured and shown as a note on the file instead


def test_one_instance_from_a_pacs_is_not_a_removal_but_complete_demands_the_study(chained, tmp_path):
    _node, paths = chained
    study = paths[:10:2]
    alone = verify_files([study[-1]])
    assert alone.ok and kinds(alone, "info").count("unchecked-link") == 1
    cli = [sys.executable, "-m", "dicom_chain.cli", "verify", "--home", str(_node.settings.home)]
    assert subprocess.run([*cli, str(study[-1])], capture_output=True, text=True).returncode == 0
    strict = subprocess.run([*cli, "--complete", str(study[-1])], capture_output=True, text=True)
    assert strict.returncode == 1 and "missing-instance" in strict.stdout


def test_lossy_reencoding_is_named_apart_from_tampering(settings, tmp_path):
    """A PACS that compresses lossily changes pixel values: that is `lossy-reencoded`, with every
    other attribute shown intact; the same hop after a changed attribute is `altered`."""
    dcmcjpeg, dcmdjpeg = require_tool("dcmcjpeg", "dcmtk"), require_tool("dcmdjpeg", "dcmtk")
    node = Node.open(settings)
    try:
        chained = node.ingest_file(pydicom_file("examples_rgb_color.dcm")).path
        lossy, back, tampered = tmp_path / "lossy.dcm", tmp_path / "back.dcm", tmp_path / "tampered.dcm"
        subprocess.run([dcmcjpeg, "+eb", str(chained), str(lossy)], check=True, capture_output=True)
        subprocess.run([dcmdjpeg, str(lossy), str(back)], check=True, capture_output=True)
        for hopped in (lossy, back):
            report = verify_files([hopped])
            [finding] = report.errors
            assert finding.kind == "lossy-reencoded" and finding.path == str(hopped), report.findings
            assert "every other attribute is intact" in finding.message
        ds = pydicom.dcmread(lossy)
        ds.PatientName = "SOMEONE^ELSE"
        ds.save_as(tampered)
        assert kinds(verify_files([tampered])) == ["altered"]
    finally:
        node.close()


def test_a_block_naming_another_instance_is_altered_even_when_the_content_matches(chained, tmp_path):
    """Only the signer can make such a block; verify still refuses it for this file."""
    node, paths = chained
    ds = pydicom.dcmread(paths[0])
    block = read_block(ds)
    other = dataclasses.replace(block.header, sop_instance_uid="1.2.3.999")
    embed_block(ds, Block.sign(other, node.key))
    out = tmp_path / "renamed.dcm"
    ds.save_as(out)
    [finding] = verify_files([out], trusted_keys=frozenset({node.key.public_key})).errors
    assert finding.kind == "altered" and "1.2.3.999" in finding.message


def _canonical_block_element(ds: pydicom.Dataset) -> pydicom.DataElement:
    return next(
        e for e in ds if e.tag.group == 0x0071 and e.VR in ("OB", "UN") and b'"header"' in bytes(e.value)
    )


def test_serialised_block_in_another_form_is_malformed(chained):
    """A hex digit of the signature in upper case decodes to the same bytes: only the canonical
    form is accepted, or the file would change with no check seeing it."""
    _node, paths = chained
    ds = pydicom.dcmread(paths[0])
    elem = _canonical_block_element(ds)
    value = bytes(elem.value)
    at = value.index(b'"signature":"') + len(b'"signature":"')
    at += next(i for i, c in enumerate(value[at:]) if c in b"abcdef")
    elem.value = value[:at] + value[at : at + 1].upper() + value[at + 1 :]
    ds.save_as(paths[0])
    report = verify_files([paths[0]])
    assert kinds(report) == ["malformed-block"] and "canonical" in report.errors[0].message


def test_element_hidden_in_our_private_block_is_found(chained):
    """Our block is outside the content hash: an element the format does not define there would
    be data no hash or signature covers."""
    node, paths = chained
    ds = pydicom.dcmread(paths[0])
    slot = _canonical_block_element(ds).tag.element >> 8
    ds.add_new(0x00710000 | slot << 8 | 0x01, "LO", "hidden")
    ds.save_as(paths[0])
    report = verify_files([paths[0]], trusted_keys=frozenset({node.key.public_key}))
    assert kinds(report) == ["malformed-block"] and f"(0071,{slot:02X}01)" in report.errors[0].message


def test_part_of_a_study_is_checked_against_the_ledger(chained, tmp_path):
    node, paths = chained
    study = paths[:10:2]  # the first study, in chain order
    part = study[2:]  # index 2 onwards: the predecessor of index 2 is not among the files
    assert kinds(verify_files(part), "info").count("unchecked-link") == 1
    checked = verify_files(part, ledger=node.ledger)
    assert checked.ok and "unchecked-link" not in kinds(checked, "info"), checked.findings
    found = tamper(node, "UPDATE blocks SET block_hash = :h WHERE height = 2", h="f" * 64)
    assert found >= {"ledger-altered"}  # what the ledger's own check says; files checked against it:
    report = verify_files(part, ledger=node.ledger)
    [error] = report.errors
    assert error.kind == "broken-study-link" and error.path == str(part[0]), report.findings
    with node.db.engine.begin() as conn:
        conn.execute(text("DELETE FROM blocks WHERE height = 2"))
    [error] = verify_files(part, ledger=node.ledger).errors
    assert error.path == str(part[0]) and "no such block" in error.message


def test_a_chain_the_ledger_does_not_hold_stays_unchecked(chained, tmp_path):
    node, _ = chained
    other = Node.open(Settings(home=tmp_path / "other"))
    try:
        last = [
            other.ingest(item_from_dataset(fresh(ds))).path
            for ds in ct_study(StudySpec(seed=9, instances=3, rows=8, columns=8))
        ][-1]
    finally:
        other.close()
    report = verify_files([last], ledger=node.ledger)
    assert report.ok and kinds(report, "info").count("unchecked-link") == 1


def test_cli_checks_links_of_files_against_the_ledger_given_with_db(chained, tmp_path):
    node, paths = chained
    last = str(paths[8])  # the first study's last instance
    cli = [sys.executable, "-m", "dicom_chain.cli", "verify", "--home", str(tmp_path / "none")]
    db = ["--db", node.settings.db_url]
    alone = subprocess.run([*cli, *db, last], capture_output=True, text=True)
    assert alone.returncode == 0, alone.stdout + alone.stderr  # signers pinned by the ledger's chains
    assert "unchecked-link" not in alone.stdout
    assert "unchecked-link" in subprocess.run([*cli, last], capture_output=True, text=True).stdout
    assert subprocess.run([*cli, *db, "--update-index", last], capture_output=True).returncode == 2
    tamper(node, "UPDATE blocks SET block_hash = :h WHERE height = 6", h="e" * 64)
    broken = subprocess.run([*cli, *db, last], capture_output=True, text=True)
    assert broken.returncode == 1 and "broken-study-link" in broken.stdout and last in broken.stdout
