"""Attribute matching of C-FIND keys (PS3.4 C.2.2.2), pure: the rules the index's SQL follows.

A key value parses into terms; a stored value matches when any term does (a key without terms
is universal). Values are compared in a *key form*: person names folded to lower case with
trailing separators dropped (PN matching is case-insensitive here by default), times and
date-times padded to full precision so a lexical comparison is a chronological one.

A TM or DT key given to less than full precision names every instant its missing components
span (PS3.5 6.2 lets a TM or DT omit trailing components): ``12`` is 12:00:00-12:59:59.999999,
``2024`` the whole year. So a single value is the range of those instants (PS3.4 C.2.2.2.1
matches "the value"; a radiologist typing 12 means the hour), and a range's ends reach from the
first instant of its low end to the last of its high end (C.2.2.2.5.2). DA values have one
precision (YYYYMMDD) and match exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

# PS3.4 C.2.2.2.4: wildcards apply to these VRs only; elsewhere '*' and '?' are plain characters.
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
RANGE_VRS = frozenset({"DA", "TM", "DT"})  # PS3.4 C.2.2.2.5
# Padding that turns a partial time or date-time into the first / last instant it names.
_TM_LOW, _TM_HIGH = "000000.000000", "235959.999999"
_DT_LOW, _DT_HIGH = "00000101000000.000000", "99991231235959.999999"
_DT_OFFSET = re.compile(r"[+-]\d{4}$")  # a UTC offset is ignored: values are compared as written
# A negative UTC offset reads like a range's high end ("2024-1000"); PS3.5 offsets run from -1200
# to +1400, so four digits after the only '-' that form an offset no later than -1200 are one
# (a range ending in the year 1200 or earlier means nothing in an archive of images).
_NEGATIVE_OFFSET = re.compile(r"^[^-]+-(0\d|1[0-2])[0-5]\d$")


@dataclass(frozen=True)
class Term:
    kind: Literal["equal", "like", "range"]
    low: str  # equal: the value's key form; like: the pattern ('*', '?'); range: lower bound, '' = open
    high: str = ""  # range: upper bound's key form, '' = open


@dataclass(frozen=True)
class KeyMatch:
    vr: str
    terms: tuple[Term, ...]  # empty: universal matching

    @property
    def universal(self) -> bool:
        return not self.terms

    def matches(self, value: str) -> bool:
        """Whether a stored value (as received, not yet in key form) matches."""
        if not self.terms:
            return True
        key = key_form(self.vr, value)
        return any(_term_matches(term, key) for term in self.terms)


def _strip(value: str) -> str:
    return value.strip(" \x00")


def key_form(vr: str, value: str, *, upper: bool = False) -> str:
    """The form stored values and key values are compared in (``upper``: a range's top end)."""
    value = _strip(value)
    if vr == "PN":
        return value.rstrip("^= ").lower()
    if vr == "TM":
        value = value.replace(":", "")
        return value + (_TM_HIGH if upper else _TM_LOW)[len(value) :] if value else ""
    if vr == "DT":
        value = _DT_OFFSET.sub("", value)
        return value + (_DT_HIGH if upper else _DT_LOW)[len(value) :] if value else ""
    if vr == "DA":
        return value.replace(".", "")  # ACR-NEMA's YYYY.MM.DD
    return value


def parse_key(vr: str, raw: str) -> KeyMatch:
    """A key's value as sent in an identifier: empty or ``*`` is universal; ``\\`` separates a list."""
    raw = _strip(raw)
    if raw in ("", "*"):
        return KeyMatch(vr, ())
    terms = tuple(_parse_term(vr, part) for part in raw.split("\\"))
    if any(t.kind == "like" and t.low.strip("*") == "" for t in terms):
        return KeyMatch(vr, ())  # one alternative matches everything
    return KeyMatch(vr, terms)


def _parse_term(vr: str, part: str) -> Term:
    part = _strip(part)
    if vr in RANGE_VRS and "-" in part and not (vr == "DT" and _NEGATIVE_OFFSET.match(part)):
        low, _, high = part.partition("-")
        return Term("range", key_form(vr, low), key_form(vr, high, upper=True))
    if vr in ("TM", "DT") and part:  # a single value: every instant its given components name
        return Term("range", key_form(vr, part), key_form(vr, part, upper=True))
    if vr in WILDCARD_VRS and ("*" in part or "?" in part):
        if vr == "PN":
            part = part.lower()
        return Term("like", part)
    return Term("equal", key_form(vr, part))


def _term_matches(term: Term, key: str) -> bool:
    if term.kind == "equal":
        return key == term.low
    if term.kind == "like":
        return _like_regex(term.low).fullmatch(key) is not None
    if not key:
        return False  # an empty stored value is in no range
    return (not term.low or key >= term.low) and (not term.high or key <= term.high)


@lru_cache(maxsize=256)
def _like_regex(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.S)


SQL_LIKE_ESCAPE = "\\"


def sql_like(pattern: str) -> str:
    """The same wildcard pattern in SQL LIKE syntax, escaping LIKE's own specials."""
    out = []
    for c in pattern:
        if c in "%_\\":
            out.append(SQL_LIKE_ESCAPE + c)
        elif c == "*":
            out.append("%")
        elif c == "?":
            out.append("_")
        else:
            out.append(c)
    return "".join(out)
