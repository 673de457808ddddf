"""Link rules over blocks: forks, gaps, and removals from a study, without files or a database."""

from __future__ import annotations

from dicom_chain.block import FORMAT_VERSION, GENESIS_HASH, Block, BlockHeader
from dicom_chain.chain import Located, check_links
from dicom_chain.findings import Report
from dicom_chain.keys import NodeKey

KEY = NodeKey.generate()
CHAIN = "11111111-2222-4333-8444-555555555555"


def build(studies: list[str], salt: int = 0) -> list[Block]:
    """A chain whose n-th block belongs to studies[n]."""
    blocks: list[Block] = []
    heads: dict[str, tuple[int, str]] = {}
    for height, study in enumerate(studies):
        index, prev = heads.get(study, (-1, GENESIS_HASH))
        prev_block = blocks[-1].hash if blocks else GENESIS_HASH
        header = BlockHeader(
            FORMAT_VERSION, CHAIN, height, prev_block, f"{height + salt * 1000:064x}",
            "2026-01-01T00:00:00.000000Z", "H", KEY.key_id, f"1.2.{height}", study, index + 1, prev,
        )  # fmt: skip
        block = Block.sign(header, KEY)
        heads[study] = (index + 1, block.hash)
        blocks.append(block)
    return blocks


def run(blocks, gaps_are_errors=False, complete=True) -> Report:
    report = Report()
    located = [Located(b, f"f{b.header.height}") for b in blocks]
    check_links(located, report, gaps_are_errors=gaps_are_errors, complete=complete)
    return report


def kinds(report: Report, severity="error") -> list[str]:
    return sorted(f.kind for f in report.findings if f.severity == severity)


def test_intact_chain_has_no_findings():
    assert run(build(["A", "A", "B", "A", "B"])).findings == []


def test_gap_between_studies_is_information_for_files_and_error_for_the_node():
    blocks = build(["A", "A", "B", "B"])
    study_a = blocks[:2]
    assert kinds(run(study_a)) == []
    slice_ = [blocks[0], blocks[1], blocks[3]]  # block 2 (study B, index 0) absent
    assert "gap" in kinds(run(slice_), "info")
    assert "gap" in kinds(run(slice_, gaps_are_errors=True))


def test_instance_removed_from_the_middle_of_a_study_is_an_error_even_for_files():
    blocks = build(["A", "B", "A", "B", "A"])
    study_a = [b for b in blocks if b.header.study_instance_uid == "A"]
    assert kinds(run(study_a)) == []
    without_middle = [study_a[0], study_a[2]]
    assert kinds(run(without_middle)) == ["missing-instance"]


def test_first_instance_of_a_study_removed_is_an_error():
    blocks = build(["A", "A", "A"])
    assert kinds(run(blocks[1:])) == ["missing-instance"]


def test_replaced_block_breaks_the_link():
    blocks = build(["A", "A", "A"])
    forged = build(["A", "A", "A"], salt=1)[1]  # a validly signed block 1 of another history
    assert "broken-link" in kinds(run([blocks[0], forged, blocks[2]]))


def test_two_different_blocks_at_one_height_are_a_fork():
    a, b = build(["A", "A"]), build(["A", "B"])
    report = run([*a, b[1]])
    assert "fork" in kinds(report)


def test_the_same_block_twice_is_only_a_copy():
    blocks = build(["A", "A"])
    report = run([*blocks, blocks[1]])
    assert kinds(report) == []
    assert "copy" in kinds(report, "info")


def test_a_fork_names_both_files():
    a, b = build(["A", "A"]), build(["A", "B"])
    report = run([*a, b[1]])
    forks = [f for f in report.findings if f.kind == "fork"]
    assert {f.path for f in forks} == {"f1"} and len(forks) == 2  # both blocks claim height 1
    assert {f.sop_instance_uid for f in forks} == {"1.2.1"}
    located = [Located(a[0], "first"), Located(a[1], "one"), Located(b[1], "other")]
    report = Report()
    check_links(located, report, gaps_are_errors=False)
    assert {f.path for f in report.findings if f.kind == "fork"} == {"one", "other"}


def test_missing_instance_names_the_next_instance_that_reveals_it():
    blocks = build(["A", "A", "A"])
    [finding] = run([blocks[0], blocks[2]]).errors
    assert finding.kind == "missing-instance" and finding.sop_instance_uid == "1.2.2"
    assert "next instance" in finding.message and finding.path == "f2"


def test_a_gap_that_an_unplaced_file_may_fill_is_not_missing():
    blocks = build(["A", "A", "A"])
    report = Report()
    located = [Located(blocks[0], "f0"), Located(blocks[2], "f2")]
    check_links(located, report, gaps_are_errors=False, unplaced=1)
    assert report.errors == [] and "missing-instance" in kinds(report, "info")
    report = Report()
    check_links([Located(blocks[2], "f2")], report, gaps_are_errors=False, unplaced=1)
    assert kinds(report) == ["missing-instance"]  # two missing, one unplaced file: still a removal


def test_a_subset_of_a_study_is_unchecked_not_missing_unless_complete():
    blocks = build(["A", "A", "A"])
    newest = run([blocks[2]], complete=False)  # one instance downloaded from a PACS
    assert newest.errors == [] and kinds(newest, "info") == ["unchecked-link"]
    [note] = newest.findings
    assert note.sop_instance_uid == "1.2.2" and "0..1" in note.message
    middle = run([blocks[0], blocks[2]], complete=False)
    assert middle.errors == [] and "unchecked-link" in kinds(middle, "info")
    assert kinds(run([blocks[0], blocks[2]], complete=True)) == ["missing-instance"]
