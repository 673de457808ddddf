"""The policy file: the shipped default parses, every key it documents is used, mistakes are refused."""

from __future__ import annotations

import tomllib

import pytest

from dicom_chain.errors import ConfigError
from dicom_chain.sharing import policyfile


def test_the_default_parses_and_its_hash_is_its_identity():
    text = policyfile.default_text()
    policy = policyfile.parse(text)
    assert policy == policyfile.load(None)
    assert policy.hash == policyfile.policy_hash(text) and len(policy.hash) == 64
    assert policyfile.parse(text + "\n# a comment\n").hash != policy.hash


def test_every_key_of_the_default_reaches_the_policy():
    data = tomllib.loads(policyfile.default_text())
    policy = policyfile.load(None)
    assert {name for name, _ in policy.purposes} == set(data["purposes"]) == set(policyfile.PURPOSES)
    for name, rule in data["purposes"].items():
        assert policy.purpose(name).consent == rule["consent"]
        assert policy.purpose(name).research_opt_in == rule.get("research_opt_in", False)
    assert policy.default_class == data["sensitivity"]["default"]
    assert policy.class_order == tuple(data["sensitivity"]["order"])
    assert dict(policy.modality_classes) == data["sensitivity"]["modalities"]
    for name, req in data["requirements"].items():
        got = dict(policy.requirements)[name]
        assert (got.min_institution_score, got.min_patient_score, got.guarded_institution_score) == (
            req["min_institution_score"], req["min_patient_score"], req["guarded_institution_score"],
        )  # fmt: skip
    for party, rule in data["scores"].items():
        got = policy.score_rule(party)
        assert (got.initial, got.low, got.high, got.recovery_per_day) == (
            rule["initial"], rule["min"], rule["max"], rule["recovery_per_day"],
        )  # fmt: skip
        assert dict(got.effects) == rule["effects"]


def test_a_study_takes_its_most_demanding_requirement():
    policy = policyfile.load(None)
    assert policy.requirement_for(("CT",))[0] == "standard"
    assert policy.requirement_for(("CT", "MR"))[0] == "MR"
    assert policy.requirement_for(("MR", "MG"))[0] == "sensitive"
    assert policy.requirement_for(("XA",))[0] == "standard"  # unlisted: the default class
    assert policy.requirement_for(())[0] == "standard"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("version = 1", "version = 2"), "version must be 1"),
        (("[purposes.treatment]", "[purposes.shopping]"), "unknown purpose 'shopping'"),
        (("min_institution_score = 40", "min_institution_scor = 40"), "unknown key"),
        (('MG = "sensitive"', 'MG = "secret"'), "class 'secret' is not in sensitivity.order"),
        (("initial = 50", "initial = 500"), "initial must lie within min and max"),
        (("recovery_per_day = 1.0", 'recovery_per_day = "fast"'), "recovery_per_day must be a number"),
        (("[scores.institution]", "[scores.institution"), "not valid TOML"),
    ],
)
def test_mistakes_are_refused_with_what_is_wrong(change, message):
    text = policyfile.default_text().replace(*change, 1)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        policyfile.parse(text)


def test_a_policy_file_is_read_from_disk(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(
        policyfile.default_text().replace("min_institution_score = 40", "min_institution_score = 45")
    )
    assert dict(policyfile.load(path).requirements)["standard"].min_institution_score == 45
    with pytest.raises(ConfigError, match="cannot read policy"):
        policyfile.load(tmp_path / "absent.toml")
