"""C-FIND attribute matching (PS3.4 C.2.2.2), pure: each kind of key against stored values."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicom_chain.qr.matching import key_form, parse_key, sql_like


@pytest.mark.parametrize("raw", ["", "*", "  ", "CT\\*", "**"])
def test_empty_and_star_are_universal_and_match_empty_values(raw):
    match = parse_key("CS", raw)
    assert match.universal
    assert match.matches("") and match.matches("MR")


def test_single_value_matching_is_exact_and_case_sensitive_outside_person_names():
    match = parse_key("LO", "Chest")
    assert match.matches("Chest") and match.matches("Chest ")  # padding is not part of the value
    assert not match.matches("chest") and not match.matches("Chest CT") and not match.matches("")


def test_person_names_match_case_insensitively_and_ignore_trailing_separators():
    match = parse_key("PN", "doe^john")
    assert match.matches("DOE^JOHN") and match.matches("Doe^John^^^") and match.matches("DOE^JOHN=")
    assert not match.matches("DOE^JOHNNY") and not match.matches("DOE")


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("DOE*", ["DOE", "DOE^JOHN", "doe^jane"], ["JOHN^DOE", "DO"]),
        ("*SMITH*", ["SMITH", "A^SMITHERS"], ["SMIT"]),
        ("D?E", ["DOE", "DUE"], ["DE", "DOOE"]),
        ("?*", ["X", "XY"], [""]),
    ],
)
def test_wildcards_in_person_names(pattern, yes, no):
    match = parse_key("PN", pattern)
    assert all(match.matches(v) for v in yes), yes
    assert not any(match.matches(v) for v in no), no


def test_wildcards_apply_only_to_the_vrs_the_standard_lists():
    assert parse_key("UI", "1.2.*").terms[0].kind == "equal"  # '*' is an ordinary character in a UID
    assert not parse_key("UI", "1.2.*").matches("1.2.3")
    assert parse_key("SH", "ACC*").matches("ACC123")
    assert not parse_key("SH", "acc*").matches("ACC123")  # not a PN: case counts


def test_uid_lists_match_any_member():
    match = parse_key("UI", "1.2.3\\1.2.4")
    assert match.matches("1.2.3") and match.matches("1.2.4")
    assert not match.matches("1.2.5") and not match.matches("1.2.3.4")


@pytest.mark.parametrize(
    ("raw", "yes", "no"),
    [
        ("20260101-20261231", ["20260101", "20260615", "20261231"], ["20251231", "20270101", ""]),
        ("20260101-", ["20260101", "29991231"], ["20251231", ""]),
        ("-20260101", ["19000101", "20260101"], ["20260102", ""]),
        ("2026.01.01-2026.01.31", ["20260115"], ["20260201"]),
    ],
)
def test_date_ranges(raw, yes, no):
    match = parse_key("DA", raw)
    assert all(match.matches(v) for v in yes), yes
    assert not any(match.matches(v) for v in no), no


def test_time_ranges_compare_partial_times_as_the_instants_they_name():
    match = parse_key("TM", "0800-1030")
    assert match.matches("0800") and match.matches("103059.999") and match.matches("09")
    assert not match.matches("1031") and not match.matches("075959")
    assert parse_key("TM", "1030").matches("103000.000")  # single value: same instant


def test_datetime_ranges_ignore_utc_offsets_and_pad_partial_values():
    match = parse_key("DT", "2026-202602")
    assert match.matches("20260101000000") and match.matches("20260228235959+0100")
    assert not match.matches("20260301") and not match.matches("20251231235959")
    assert parse_key("DT", "20260101120000-0500").terms[0].kind == "equal"  # an offset, not a range


def test_sql_like_escapes_like_specials_and_translates_wildcards():
    assert sql_like("A_B%C\\D*E?") == "A\\_B\\%C\\\\D%E_"


_text = st.text(alphabet=st.characters(codec="ascii", exclude_characters="\\*?-\x00"), max_size=12)


@given(value=_text)
def test_any_value_matches_itself(value):
    for vr in ("LO", "SH", "PN", "CS", "UI"):
        if value.strip():
            assert parse_key(vr, value).matches(value)


@given(prefix=_text, value=_text)
def test_prefix_wildcard_agrees_with_startswith(prefix, value):
    match = parse_key("LO", prefix + "*")
    assert match.matches(value) == (match.universal or value.strip(" ").startswith(prefix.lstrip(" ")))


@given(pattern=st.text(alphabet="ab*?%_\\", max_size=6), value=st.text(alphabet="ab%_\\", max_size=6))
def test_sql_like_translation_agrees_with_the_python_matcher(pattern, value):
    """LIKE semantics emulated by a regex over the translated pattern: the SQL the index runs."""
    like = sql_like(pattern)
    regex, i = "", 0
    while i < len(like):
        c = like[i]
        if c == "\\":
            regex += re.escape(like[i + 1])
            i += 2
            continue
        regex += ".*" if c == "%" else "." if c == "_" else re.escape(c)
        i += 1
    python = re.fullmatch(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), value, re.S
    )
    assert (re.fullmatch(regex, value, re.S) is not None) == (python is not None)


def test_key_form_of_stored_values():
    assert key_form("PN", "Doe^John^^ ") == "doe^john"
    assert key_form("TM", "10:30") == "103000.000000"
    assert key_form("TM", "10", upper=True) == "105959.999999"
    assert key_form("DA", "2026.01.02") == "20260102"
