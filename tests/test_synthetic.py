"""Synthetic studies: deterministic, valid UIDs, and sample_data/ is what the script makes."""

from __future__ import annotations

import re
from pathlib import Path

import pydicom

from dicom_chain.carriers.dicom.canonical import content_hash
from dicom_chain.synthetic import StudySpec, ct_study, uid_for

SAMPLE = Path(__file__).parent.parent / "sample_data"


def test_same_seed_same_study():
    a = [content_hash(ds) for ds in ct_study(StudySpec(seed=5, instances=3, rows=8, columns=8))]
    b = [content_hash(ds) for ds in ct_study(StudySpec(seed=5, instances=3, rows=8, columns=8))]
    c = [content_hash(ds) for ds in ct_study(StudySpec(seed=6, instances=3, rows=8, columns=8))]
    assert a == b and set(a).isdisjoint(c) and len(set(a)) == 3


def test_uids_are_valid():
    for parts in [(1,), (123456789, "instance", 99999), ("x" * 500,)]:
        uid = uid_for(*parts)
        assert len(uid) <= 64 and re.fullmatch(r"[0-9]+(\.[0-9]+)*", uid)


def test_sample_data_is_what_the_script_makes():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_sample_study", SAMPLE / "make_sample_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = {int(ds.InstanceNumber): content_hash(ds) for ds in ct_study(module.SPEC)}
    found = {
        int(pydicom.dcmread(p).InstanceNumber): content_hash(pydicom.dcmread(p))
        for p in sorted((SAMPLE / "ct-demo").glob("*.dcm"))
    }
    assert found == expected and len(found) == 8
