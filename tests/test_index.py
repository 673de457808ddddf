"""The Query/Retrieve index: filled with the chain, searched by SQL that agrees with a brute-force
filter over the stored files (the property test), on SQLite and on PostgreSQL."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.carriers.dicom.indexvalues import index_values
from dicom_chain.config import Settings
from dicom_chain.node import Node
from dicom_chain.qr import index
from dicom_chain.qr.query import ATTRIBUTES, LEVELS, UNIQUE_KEYS, level_of, parse_query
from dicom_chain.synthetic import StudySpec, ct_study
from dicom_chain.vocab import EventType

from .conftest import SAMPLE_STUDY, pydicom_file

PYDICOM_FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm"]
# (seed, patient id, patient name, study date, study time, second series modality)
SYNTHETIC = [
    (11, "P-1", "DOE^JOHN", "20250101", "0815", "MR"),
    (12, "P-1", "DOE^JOHN", "20250615", "143000.5", "CT"),
    (13, "P-2", "Doe^Jane", "20260101", "0900", "PT"),
    (14, "P-3", "SMITH^ANNA^^", "20260301", "1200", "MR"),
    (15, "P-4", "MÜLLER^JÜRGEN", "20261231", "235959", "CT"),
    (16, "P_5%", "O'BRIEN^PAT", "", "", "MR"),  # LIKE specials in the id, no date at all
]


def synthetic_study(seed: int, pid: str, name: str, date: str, time: str, modality2: str) -> list[Dataset]:
    out = []
    for ds in ct_study(
        StudySpec(seed=seed, instances=4, rows=8, columns=8, series=2, patient_id=pid, patient_name=name)
    ):
        ds.StudyDate, ds.StudyTime = date, time
        if ds.SeriesNumber == 2:
            ds.Modality = modality2
        out.append(ds)
    return out


def fill(node: Node) -> None:
    for path in sorted(SAMPLE_STUDY.glob("*.dcm")):
        node.ingest_file(path)
    for name in PYDICOM_FILES:
        node.ingest_file(pydicom_file(name))
    for row in SYNTHETIC:
        for ds in synthetic_study(*row):
            node.ingest(item_from_dataset(ds))
    changed = synthetic_study(*SYNTHETIC[0])[0]  # a new version of one instance: indexed once, newest
    changed.SeriesDescription = "Axial 1 (corrected)"
    node.ingest(item_from_dataset(changed))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    home = tmp_path_factory.mktemp("index")
    node = Node.open(Settings(home=home))
    fill(node)
    yield node
    node.close()


# -- the brute-force oracle: every stored file read back, grouped per level --------------------------


def _value(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def stored_entities(node: Node) -> dict[str, dict[str, dict[str, Any]]]:
    """level -> unique key -> {keyword: value, "_modalities": set} from the newest stored files."""
    newest: dict[str, tuple[int, Path]] = {}
    for rel in node.storage.iter_files():
        ds = pydicom.dcmread(node.storage.path(rel), stop_before_pixels=True)
        version = int(rel.rsplit(".v", 1)[1].split(".")[0]) if ".v" in rel else 1
        if ds.SOPInstanceUID not in newest or newest[ds.SOPInstanceUID][0] < version:
            newest[ds.SOPInstanceUID] = (version, node.storage.path(rel))
    entities: dict[str, dict[str, dict[str, Any]]] = {level: {} for level in LEVELS}
    for _, path in newest.values():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        values = {kw: _value(ds, kw) for kw in ATTRIBUTES if not ATTRIBUTES[kw].computed}
        for level in LEVELS:
            key = values[UNIQUE_KEYS[level]]
            entity = entities[level].setdefault(key, {**values, "_modalities": set()})
            entity["_modalities"].add(values["Modality"])
    for study in entities["STUDY"].values():  # each level also sees its study's modalities
        for level in ("SERIES", "IMAGE"):
            for e in entities[level].values():
                if e["StudyInstanceUID"] == study["StudyInstanceUID"]:
                    e["_modalities"] = study["_modalities"]
    return entities


def brute_force(entities, ds: Dataset, model: str) -> set[str]:
    query = parse_query(ds, model)  # type: ignore[arg-type]
    found = set()
    for key, values in entities[query.level].items():
        ok = True
        for keyword, match in query.keys.items():
            if keyword == "ModalitiesInStudy":
                ok = any(match.matches(m) for m in values["_modalities"] if m)
            else:
                ok = match.matches(values[keyword])
            if not ok:
                break
        if ok:
            found.add(key)
    return found


def index_search(node: Node, ds: Dataset, model: str) -> set[str]:
    query = parse_query(ds, model)  # type: ignore[arg-type]
    unique = UNIQUE_KEYS[query.level]
    results = [r[unique] for r in index.find(node.db, query)]
    assert len(results) == len(set(results)), "an entity was answered twice"
    return set(results)


# -- fixed examples ---------------------------------------------------------------------------------


def ident(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


EXAMPLES = [
    ("STUDY", ident("STUDY", PatientName="doe*")),
    ("STUDY", ident("STUDY", PatientName="DOE^JOHN")),
    ("STUDY", ident("STUDY", PatientName="smith^anna")),
    ("STUDY", ident("STUDY", PatientID="P_5%")),
    ("STUDY", ident("STUDY", PatientID="P?1")),
    ("STUDY", ident("STUDY", StudyDate="20250101-20251231")),
    ("STUDY", ident("STUDY", StudyDate="-20050101")),
    ("STUDY", ident("STUDY", StudyTime="0800-1230")),
    ("STUDY", ident("STUDY", StudyTime="14")),  # the hour: 143000.5 is in it
    ("STUDY", ident("STUDY", StudyTime="-12")),  # until 12:59:59.999999: 1200 is in it
    ("STUDY", ident("STUDY", ModalitiesInStudy="MR")),
    ("STUDY", ident("STUDY", ModalitiesInStudy="PT\\RTPLAN")),
    ("STUDY", ident("STUDY", PatientName="*ller*")),
    ("STUDY", ident("STUDY", PatientName="müller^jürgen")),
    ("PATIENT", ident("PATIENT", PatientName="D*")),
    ("STUDY", ident("STUDY", AccessionNumber="ACC00001?")),
    ("STUDY", ident("STUDY", StudyDescription="Synthetic*", PatientSex="O")),
]


def test_examples_agree_with_the_stored_files(corpus: Node):
    entities = stored_entities(corpus)
    sizes = []
    for model, ds in EXAMPLES:
        expected = brute_force(entities, ds, model)
        assert index_search(corpus, ds, model) == expected, ds
        sizes.append(len(expected))
    assert max(sizes) > 1 and min(sizes[:5]) >= 1  # the examples do select something


def test_index_agrees_with_the_chain(corpus: Node):
    sops = {b.block.header.sop_instance_uid for _, b in corpus.ledger.iter_blocks(corpus.chain_id)}
    assert index.count(corpus.db) == len(sops)
    q = parse_query(
        ident(
            "IMAGE",
            StudyInstanceUID=synthetic_study(*SYNTHETIC[0])[0].StudyInstanceUID,
            SeriesInstanceUID=synthetic_study(*SYNTHETIC[0])[0].SeriesInstanceUID,
            SOPInstanceUID=synthetic_study(*SYNTHETIC[0])[0].SOPInstanceUID,
        ),
        "STUDY",
    )
    (row,) = list(index.find(corpus.db, q))
    assert row["ChainHeight"] == corpus.ledger.chains()[0].head_height  # the newest version's block
    assert row["SeriesDescription"] == "Axial 1 (corrected)" and row["_path"].endswith(".v2.dcm")
    assert row["ChainVerificationState"] == "verified"


def test_computed_attributes(corpus: Node):
    q = parse_query(
        ident(
            "STUDY",
            PatientID="P-1",
            NumberOfStudyRelatedSeries="",
            ModalitiesInStudy="",
            NumberOfStudyRelatedInstances="",
        ),
        "STUDY",
    )
    rows = list(index.find(corpus.db, q))
    assert len(rows) == 2
    assert {tuple(r["ModalitiesInStudy"]) for r in rows} == {("CT", "MR"), ("CT",)}
    assert all(r["NumberOfStudyRelatedSeries"] == 2 and r["NumberOfStudyRelatedInstances"] == 4 for r in rows)
    p = parse_query(
        ident(
            "PATIENT",
            PatientID="P-1",
            NumberOfPatientRelatedStudies="",
            NumberOfPatientRelatedSeries="",
            NumberOfPatientRelatedInstances="",
        ),
        "PATIENT",
    )
    (patient,) = list(index.find(corpus.db, p))
    assert (
        patient["NumberOfPatientRelatedStudies"],
        patient["NumberOfPatientRelatedSeries"],
        patient["NumberOfPatientRelatedInstances"],
    ) == (2, 4, 8)


def test_paging_returns_every_match_once(corpus: Node, monkeypatch):
    monkeypatch.setattr(index, "PAGE_ROWS", 3)
    ds = ident("STUDY", PatientName="*")
    expected = brute_force(stored_entities(corpus), ds, "STUDY")
    assert len(expected) > 3 and index_search(corpus, ds, "STUDY") == expected


# -- the property: any query the generator can build agrees with the brute force -------------------


@st.composite
def queries(draw, entities) -> tuple[str, Dataset]:
    model = draw(st.sampled_from(["STUDY", "PATIENT"]))
    level = draw(st.sampled_from(LEVELS if model == "PATIENT" else LEVELS[1:]))
    instance = draw(st.sampled_from(sorted(entities["IMAGE"].values(), key=lambda e: e["SOPInstanceUID"])))
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    levels = LEVELS if model == "PATIENT" else LEVELS[1:]
    for above in levels[: levels.index(level)]:
        setattr(ds, UNIQUE_KEYS[above], instance[UNIQUE_KEYS[above]])
    candidates = [
        kw
        for kw, a in ATTRIBUTES.items()
        if a.matchable and LEVELS.index(level_of(kw, model)) <= LEVELS.index(level)  # type: ignore[arg-type]
    ]
    for keyword in draw(st.lists(st.sampled_from(candidates), max_size=3, unique=True)):
        if keyword in ds:
            continue
        other = draw(st.sampled_from(sorted(entities["IMAGE"].values(), key=lambda e: e["SOPInstanceUID"])))
        value = other["Modality"] if keyword == "ModalitiesInStudy" else other[keyword]
        setattr(ds, keyword, draw(_variant(keyword, value)))
    return model, ds


@st.composite
def _variant(draw, keyword: str, value: str) -> str:
    vr = {"ModalitiesInStudy": "CS"}.get(keyword) or pydicom.datadict.dictionary_VR(keyword)
    kinds = ["exact", "empty"]
    if vr in ("PN", "LO", "SH", "CS") and value:
        kinds += ["prefix", "single", "lower"]
    if vr in ("DA", "TM"):
        kinds += ["range", "from", "until"]
    if vr == "TM" and value:
        kinds.append("truncated")
    if vr == "UI":
        kinds.append("list")
    kind = draw(st.sampled_from(kinds))
    if kind == "empty":
        return ""
    if kind == "prefix":
        return value[: draw(st.integers(0, len(value)))] + "*"
    if kind == "single":
        i = draw(st.integers(0, len(value) - 1))
        return value[:i] + "?" + value[i + 1 :]
    if kind == "lower":
        return value.lower()
    if kind == "truncated":  # fewer components: the span they name
        return value[: draw(st.sampled_from([2, 4, 6]))]
    if kind in ("range", "from", "until"):
        other = draw(
            st.sampled_from(
                ["20250101", "20250615", "20260301", "19990101"]
                if vr == "DA"
                else ["08", "0900", "1200", "143000"]
            )
        )
        low, high = sorted([value or other, other])
        return {"range": f"{low}-{high}", "from": f"{low}-", "until": f"-{high}"}[kind]
    if kind == "list":
        return f"{value}\\1.2.3.4"
    return value


@pytest.fixture(scope="module")
def entities(corpus: Node):
    return stored_entities(corpus)


def test_property_index_equals_brute_force(corpus: Node, entities):
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data):
        model, ds = data.draw(queries(entities))
        expected = brute_force(entities, ds, model)
        assert index_search(corpus, ds, model) == expected
        sizes.append(len(expected))

    sizes: list[int] = []
    check()
    assert sum(1 for n in sizes if n) > len(sizes) // 4  # most generated queries select something


# -- both databases --------------------------------------------------------------------------------


def test_examples_on_each_database(db_url: str, tmp_path: Path):
    node = Node.open(Settings(home=tmp_path / "n", db=db_url))
    try:
        fill(node)
        entities = stored_entities(node)
        for model, ds in EXAMPLES:
            assert index_search(node, ds, model) == brute_force(entities, ds, model), ds
    finally:
        node.close()


def test_index_row_for_an_unreadable_attribute_is_empty_not_an_error(node: Node):
    ds = next(iter(ct_study(StudySpec(seed=3, instances=1, rows=8, columns=8))))
    ds = copy.deepcopy(ds)
    ds.StudyDate = "not a date but long enough to overflow"
    record = index.IndexRecord.from_values(index_values(ds), "1.2.840.10008.1.2.1")
    assert len(record.study["study_date"]) <= 8
    node.ingest(item_from_dataset(ds))
    assert index.count(node.db) == 1


def test_every_declared_attribute_is_stored_or_computed_by_the_index():
    from dicom_chain.db.indexschema import ATTRIBUTES as DECLARED
    from dicom_chain.qr.index import _COUNTS, COLUMNS

    computed = {a.keyword for a in DECLARED if a.computed}
    assert computed == {*_COUNTS, "ModalitiesInStudy"}
    assert {a.keyword for a in DECLARED if not a.computed} == set(COLUMNS)
    for a in DECLARED:
        if a.column is not None:  # the column exists in the table the declaration generated
            assert COLUMNS[a.keyword][0].name == a.column
            assert (COLUMNS[a.keyword][1] is not None) == (a.key_column is not None)


def test_stored_syntaxes_are_those_of_the_indexed_instances_by_class(db_url: str, tmp_path: Path):
    """What a C-GET peer's storage contexts are chosen by (scp/handlers.py handle_get_contexts)."""
    node = Node.open(Settings(home=tmp_path / "n", db=db_url))
    try:
        for path in sorted(SAMPLE_STUDY.glob("*.dcm"))[:2]:
            node.ingest_file(path)
        node.ingest_file(pydicom_file("MR_small_jpeg_ls_lossless.dcm"))
        ct, mr, us = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.6.1"
        assert index.stored_syntaxes(node.db, [ct, mr, us]) == {
            ct: {str(pydicom.dcmread(next(SAMPLE_STUDY.glob("*.dcm"))).file_meta.TransferSyntaxUID)},
            mr: {"1.2.840.10008.1.2.4.80"},
        }
        assert index.stored_syntaxes(node.db, []) == {}
    finally:
        node.close()


# -- one Patient ID, two identities (PS3.4 C.6.1.1.2: a study's answers are the study's own) ------


def identity_study(seed: int, name: str, sex: str = "M", birth: str = "19700101", pid: str = "P-9") -> list:
    out = []
    for ds in ct_study(
        StudySpec(seed=seed, instances=2, rows=8, columns=8, series=1, patient_id=pid, patient_name=name)
    ):
        ds.PatientSex, ds.PatientBirthDate = sex, birth
        out.append(ds)
    return out


def conflicts(node: Node) -> list:
    index.before_read(node.db)  # recorded with the index rows, written after each response
    return [e for e in node.ledger.iter_events() if e.type == EventType.PATIENT_IDENTITY_CONFLICT]


def test_each_study_is_answered_with_its_own_patient_attributes(db_url: str, tmp_path: Path):
    node = Node.open(Settings(home=tmp_path / "n", db=db_url))
    try:
        real, anonymised = identity_study(41, "Test^S R"), identity_study(42, "Anonymized", sex="O")
        for ds in real + anonymised:  # the anonymised study arrives last: it used to win everywhere
            node.ingest(item_from_dataset(ds))
        by_study = {
            r["StudyInstanceUID"]: (r["PatientName"], r["PatientSex"])
            for r in index.find(node.db, parse_query(ident("STUDY", PatientID="P-9"), "STUDY"))
        }
        assert by_study == {
            real[0].StudyInstanceUID: ("Test^S R", "M"),
            anonymised[0].StudyInstanceUID: ("Anonymized", "O"),
        }
        # matching uses the study's own values too, at every level below PATIENT
        study, series = real[0].StudyInstanceUID, real[0].SeriesInstanceUID
        for ds in (
            ident("STUDY", PatientName="test^s*"),
            ident("SERIES", StudyInstanceUID=study, PatientName="test^s*"),
            ident("IMAGE", StudyInstanceUID=study, SeriesInstanceUID=series, PatientName="test^s*"),
        ):
            rows = list(index.find(node.db, parse_query(ds, "STUDY")))
            assert rows and {r["PatientName"] for r in rows} == {"Test^S R"}, ds.QueryRetrieveLevel
        anon = parse_query(ident("STUDY", PatientName="Anonymized", PatientSex="O"), "STUDY")
        assert {r["StudyInstanceUID"] for r in index.find(node.db, anon)} == {anonymised[0].StudyInstanceUID}
        # the PATIENT level has one entity per Patient ID (its unique key): the newest values
        patient = parse_query(ident("PATIENT", PatientID="P-9", PatientName=""), "PATIENT")
        assert [r["PatientName"] for r in index.find(node.db, patient)] == ["Anonymized"]
    finally:
        node.close()


def test_a_patient_identity_conflict_is_recorded_once_per_new_value(db_url: str, tmp_path: Path):
    node = Node.open(Settings(home=tmp_path / "n", db=db_url))
    try:
        for ds in identity_study(41, "Test^S R"):
            node.ingest(item_from_dataset(ds))
        assert conflicts(node) == []  # one identity, two instances: no conflict
        anonymised = identity_study(42, "Anonymized")
        for ds in anonymised:
            node.ingest(item_from_dataset(ds))
        (event,) = conflicts(node)  # two instances brought the new name: one event
        assert (event.patient_id, event.study_uid) == ("P-9", anonymised[0].StudyInstanceUID)
        assert event.sop_uid == anonymised[0].SOPInstanceUID and event.outcome == "minor-failure"
        assert event.details == {
            "attribute": "PatientName",
            "value": "Anonymized",
            "known": ["Test^S R"],
            "issuer": "",
        }
        for ds in identity_study(43, "TEST^S R^^"):  # a name seen before (case, trailing separators)
            node.ingest(item_from_dataset(ds))
        assert len(conflicts(node)) == 1
        for ds in identity_study(44, "Test^S R", sex="F", birth="19710101"):
            node.ingest(item_from_dataset(ds))
        new = conflicts(node)[1:]
        assert {(e.details["attribute"], e.details["value"], tuple(e.details["known"])) for e in new} == {
            ("PatientSex", "F", ("M",)),
            ("PatientBirthDate", "19710101", ("19700101",)),
        }
        for ds in identity_study(45, "Test^S R", pid="P-10"):  # another patient's first name is no conflict
            node.ingest(item_from_dataset(ds))
        assert len(conflicts(node)) == 3
    finally:
        node.close()
