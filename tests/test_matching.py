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


# (key, stored values it matches, stored values it does not): a TM or DT key names every instant
# its missing components span (PS3.4 C.2.2.2.1, C.2.2.2.5.2; PS3.5 6.2).
PARTIAL = [
    ("TM", "12", ["12", "1200", "120000", "1234", "125959.999999", "12:30"], ["11", "115959.9", "13", ""]),
    ("TM", "1230", ["1230", "123000", "123059.5", "12:30:59"], ["12", "1231", "122959.999999"]),
    ("TM", "123000", ["123000", "123000.999999", "123000.5"], ["123001", "122959"]),
    ("TM", "123000.5", ["123000.5", "123000.54", "123000.599999"], ["123000.6", "123000.49"]),
    ("TM", "12:30", ["123000", "123045"], ["1231"]),
    ("TM", "-12", ["00", "0815", "125959.999999", "12"], ["13", "130000", ""]),
    ("TM", "12-", ["12", "120000", "2359"], ["115959.999999", "11", ""]),
    ("TM", "08-0930", ["08", "0930", "093059.9"], ["0931", "075959"]),
    ("TM", "12\\14", ["1259", "1400"], ["1300"]),
    ("DA", "20260101", ["20260101", "2026.01.01"], ["20260102", ""]),
    ("DT", "2024", ["2024", "20240101", "20241231235959.999999", "20240615120000+0200"], ["2023", "2025"]),
    ("DT", "202402", ["20240201", "20240229235959"], ["20240301", "20240131235959"]),
    ("DT", "2024+0100", ["20240615", "2024"], ["2025"]),
    ("DT", "2024-1000", ["20240615", "2024"], ["2025", "2023"]),  # a negative offset, not a range
    ("DT", "2024-2025", ["2024", "20250615", "20251231235959"], ["2023", "2026"]),  # years: a range
    ("DT", "20260101120000-0500", ["20260101120000", "20260101120000.5"], ["20260101120100"]),
    ("DT", "-2024", ["19990101", "20241231235959.999999"], ["2025"]),
]


@pytest.mark.parametrize(("vr", "raw", "yes", "no"), PARTIAL)
def test_partial_times_and_datetimes_match_the_instants_they_name(vr, raw, yes, no):
    match = parse_key(vr, raw)
    assert [v for v in yes if not match.matches(v)] == []
    assert [v for v in no if match.matches(v)] == []


_times = st.builds(
    lambda h, m, s, f: f"{h:02d}{m:02d}{s:02d}." + f,
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 59),
    st.text(alphabet="0123456789", min_size=1, max_size=6),
)


@given(stored=_times, cut=st.sampled_from([2, 4, 6, 8, 9, 10, 11, 12, 13]))
def test_any_truncation_of_a_stored_time_matches_it(stored, cut):
    """A key made by dropping trailing components (or fraction digits) of a stored time matches it,
    as a single value, as the low end of a range and as the high end."""
    key = stored[:cut].rstrip(".")
    assert parse_key("TM", key).matches(stored), key
    assert parse_key("TM", f"{key}-").matches(stored) and parse_key("TM", f"-{key}").matches(stored)


@given(stored=_times, cut=st.sampled_from([2, 4, 6]))
def test_a_truncated_time_matches_no_other_hour_or_minute(stored, cut):
    key = stored[:cut]
    other = f"{(int(stored[:2]) + 1) % 24:02d}" + stored[2:]
    assert not parse_key("TM", key).matches(other)


def test_datetime_ranges_ignore_utc_offsets_and_pad_partial_values():
    match = parse_key("DT", "2026-202602")
    assert match.matches("20260101000000") and match.matches("20260228235959+0100")
    assert not match.matches("20260301") and not match.matches("20251231235959")
    term = parse_key("DT", "20260101120000-0500").terms[0]  # an offset, not a range to -0500
    assert (term.low, term.high) == ("20260101120000.000000", "20260101120000.999999")


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
