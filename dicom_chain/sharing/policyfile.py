"""The sharing policy file (TOML) read into a pure ``Policy``; its SHA-256 is its identity.

The file is parsed strictly: an unknown key is an error, not a silently ignored rule, since a
misspelt threshold would otherwise release what the author meant to hold back.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from dicom_chain.errors import ConfigError

POLICY_FORMAT = 1  # the `version` this reader understands
DEFAULT_POLICY_RESOURCE = "default_policy.toml"
PURPOSES = ("treatment", "research", "second-opinion")  # what a consent or a release may be for
PARTIES = ("institution", "patient")  # who has a score


@dataclass(frozen=True)
class PurposeRule:
    consent: bool  # a consent must cover the request
    research_opt_in: bool  # the patient must have opted in to research


@dataclass(frozen=True)
class Requirement:
    min_institution_score: float
    min_patient_score: float  # below this the patient is guarded ...
    guarded_institution_score: float  # ... and the institution must reach this instead


@dataclass(frozen=True)
class ScoreRule:
    initial: float
    low: float
    high: float
    recovery_per_day: float
    effects: tuple[tuple[str, float], ...]  # (event key, points)

    def effect(self, key: str) -> float | None:
        return dict(self.effects).get(key)


@dataclass(frozen=True)
class Policy:
    """Everything the engine knows of the rules; ``hash`` names the text it came from."""

    hash: str
    text: str
    purposes: tuple[tuple[str, PurposeRule], ...]
    default_class: str
    class_order: tuple[str, ...]
    modality_classes: tuple[tuple[str, str], ...]
    requirements: tuple[tuple[str, Requirement], ...]  # by class or modality
    scores: tuple[tuple[str, ScoreRule], ...]  # by party

    def purpose(self, name: str) -> PurposeRule | None:
        return dict(self.purposes).get(name)

    def score_rule(self, party: str) -> ScoreRule:
        return dict(self.scores)[party]

    def class_of(self, modality: str) -> str:
        return dict(self.modality_classes).get(modality, self.default_class)

    def requirement_for(self, modalities: tuple[str, ...]) -> tuple[str, Requirement]:
        """The most demanding requirement among the study's modalities, with what it is named for
        (a modality with its own table, else its class). No modality known: the default class."""
        reqs = dict(self.requirements)
        found: list[tuple[str, Requirement]] = []
        for modality in sorted(set(modalities)) or [""]:
            cls = self.class_of(modality) if modality else self.default_class
            if modality in reqs:
                found.append((modality, reqs[modality]))
            found.append((cls, reqs[cls]))
        return max(found, key=lambda f: (f[1].min_institution_score, f[1].guarded_institution_score))


def default_text() -> str:
    return resources.files("dicom_chain.sharing").joinpath(DEFAULT_POLICY_RESOURCE).read_text("utf-8")


def load(path: Path | None) -> Policy:
    """The policy at ``path``, or the shipped default for None."""
    if path is None:
        return parse(default_text())
    try:
        return parse(path.read_text(encoding="utf-8"), source=str(path))
    except OSError as exc:
        raise ConfigError(f"cannot read policy {path}: {exc.strerror}") from exc


def policy_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse(text: str, source: str = "policy") -> Policy:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from exc
    r = _Reader(source)
    r.keys(data, "", {"version", "purposes", "sensitivity", "requirements", "scores"})
    if data.get("version") != POLICY_FORMAT:
        raise ConfigError(f"{source}: version must be {POLICY_FORMAT}")
    purposes = []
    for name, rule in r.table(data, "purposes").items():
        if name not in PURPOSES:
            raise ConfigError(f"{source}: unknown purpose {name!r} (one of {', '.join(PURPOSES)})")
        r.keys(rule, f"purposes.{name}", {"consent", "research_opt_in"})
        purposes.append(
            (name, PurposeRule(r.flag(rule, "consent", True), r.flag(rule, "research_opt_in", False)))
        )
    sens = r.table(data, "sensitivity")
    r.keys(sens, "sensitivity", {"default", "order", "modalities"})
    order = tuple(sens.get("order", [])) or (str(sens.get("default", "")),)
    default_class = str(sens.get("default", order[0]))
    modality_classes = tuple(sorted((str(m), str(c)) for m, c in r.table(sens, "modalities").items()))
    for _modality, cls in (*modality_classes, ("", default_class)):
        if cls not in order:
            raise ConfigError(f"{source}: class {cls!r} is not in sensitivity.order")
    requirements = []
    for name, req in r.table(data, "requirements").items():
        r.keys(req, f"requirements.{name}", {"min_institution_score", "min_patient_score",
                                            "guarded_institution_score"})  # fmt: skip
        low = r.number(req, "min_institution_score")
        requirements.append((name, Requirement(
            low, r.number(req, "min_patient_score", 0.0), r.number(req, "guarded_institution_score", low)
        )))  # fmt: skip
    for cls in order:
        if cls not in dict(requirements):
            raise ConfigError(f"{source}: no [requirements.{cls}] for the class {cls!r}")
    scores = []
    for party in PARTIES:
        rule = r.table(r.table(data, "scores"), party)
        r.keys(rule, f"scores.{party}", {"initial", "min", "max", "recovery_per_day", "effects"})
        effects = tuple(sorted((str(k), r.number(rule["effects"], k)) for k in r.table(rule, "effects")))
        low, high = r.number(rule, "min"), r.number(rule, "max")
        initial = r.number(rule, "initial")
        if not low <= initial <= high:
            raise ConfigError(f"{source}: scores.{party}: initial must lie within min and max")
        recovery = r.number(rule, "recovery_per_day", 0.0)
        scores.append((party, ScoreRule(initial, low, high, recovery, effects)))
    return Policy(
        hash=policy_hash(text),
        text=text,
        purposes=tuple(purposes),
        default_class=default_class,
        class_order=order,
        modality_classes=modality_classes,
        requirements=tuple(requirements),
        scores=tuple(scores),
    )


@dataclass(frozen=True)
class _Reader:
    source: str

    def keys(self, table: dict[str, Any], where: str, allowed: set[str]) -> None:
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ConfigError(f"{self.source}: unknown key {where + '.' if where else ''}{unknown[0]}")

    def table(self, data: dict[str, Any], key: str) -> dict[str, Any]:
        value = data.get(key)
        if not isinstance(value, dict):
            raise ConfigError(f"{self.source}: [{key}] must be a table")
        return value

    def flag(self, data: dict[str, Any], key: str, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.source}: {key} must be true or false")
        return value

    def number(self, data: dict[str, Any], key: str, default: float | None = None) -> float:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self.source}: {key} must be a number")
        return float(value)
