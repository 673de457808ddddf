"""A patient's access log: everything that touched their studies, in words they understand.

It is read from the same ledger, through the same filter, as ``audit export --patient``, and it
comes with that export's proof. How each format is tied to the proof:

- ``fhir``: the output IS the audit export of the patient's events as a FHIR R4 Bundle of
  AuditEvent, with ``OUTPUT.proof`` beside it; ``audit verify OUTPUT`` checks it directly.
- ``text``, ``json``, ``html``: the JSON Lines export of the patient's events is written first
  (``OUTPUT.events.jsonl`` and its ``OUTPUT.events.jsonl.proof``); the readable log is rendered
  from exactly the records of that file, names it with its SHA-256 and the proof's range, and
  lists each entry's event sequence numbers, so ``audit verify OUTPUT.events.jsonl`` proves that
  what the page tells is the whole, unaltered story from the ledger.

Rendering is pure (records and study facts in, text out); ``write`` is the I/O at the edge.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicom_chain.audit import jsonl, record
from dicom_chain.audit.export import AuditFilter, export, proof_path
from dicom_chain.vocab import EventType, Outcome

if TYPE_CHECKING:
    from dicom_chain.db.database import Database
    from dicom_chain.keys import NodeKey
    from dicom_chain.ledger import Ledger

FORMATS = ("text", "json", "fhir", "html")
EVENTS_SUFFIX = ".events.jsonl"  # the JSON Lines export a readable log is rendered from
STUDY_LOOKUP_BATCH = 100  # Study UIDs per index query: a UID list that keeps the statement small
# Per-instance events (one per image) of one study, kind, party and day read as one sentence
# with a count: a patient wants "your CT of ... was stored (120 images)", not 120 lines.
GROUPED = frozenset({EventType.INSTANCE_RECEIVED, EventType.INSTANCE_FORWARDED})

# Modalities in the words of a patient letter; others are shown by their DICOM code.
MODALITY_WORDS = {
    "CT": "CT scan",
    "MR": "MRI scan",
    "CR": "X-ray",
    "DX": "X-ray",
    "XA": "angiography",
    "US": "ultrasound",
    "MG": "mammogram",
    "PT": "PET scan",
    "NM": "nuclear medicine scan",
    "OT": "images",
}


@dataclass(frozen=True)
class StudyFacts:
    """What the query index says of a study, to name it: "your CT scan of 2026-11-02"."""

    modalities: tuple[str, ...] = ()
    date: str = ""  # ISO date, or "" when the study has none
    description: str = ""


@dataclass(frozen=True)
class Party:
    """A registered institution, from its ``institution.added`` event."""

    name: str
    ae_title: str


@dataclass
class Entry:
    """One line of the log: a sentence and the events (sequence numbers, hashes) it stands for."""

    time: str
    type: str
    outcome: str
    actor: str
    study_uid: str
    text: str
    events: list[dict[str, Any]] = field(default_factory=list)


def _day(iso: str) -> str:
    return iso[:10] if iso else "an unknown date"


def _study_words(uid: str, studies: dict[str, StudyFacts], *, your: bool = True) -> str:
    if not uid:
        return "your images" if your else "images"
    facts = studies.get(uid)
    owner = "your " if your else "a "
    if facts is None:
        return f"{owner}study {uid}"
    kinds = [MODALITY_WORDS.get(m, m) for m in facts.modalities if m] or ["study"]
    words = owner + " and ".join(dict.fromkeys(kinds))
    return f"{words} of {facts.date}" if facts.date else words


def _consent_words(consent: dict[str, Any] | None) -> str:
    if not consent:
        return ""
    return f", under your consent of {_day(consent.get('from', ''))} until {_day(consent.get('until', ''))}"


def _moment(iso: str) -> datetime:
    """An ISO 8601 time as an aware datetime (compared as text, "...00Z" and "...00.5Z" would not
    order); what does not parse is taken as the end of time, so it never makes a consent apply."""
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return datetime.max.replace(tzinfo=UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _ae(destination: str) -> str:
    """The AE title of a destination as events name it (``AE@host:port``)."""
    return destination.split("@", 1)[0]


def _cap(text: str) -> str:
    """The first letter up, the rest as written (``str.capitalize`` would lower "Hospital B")."""
    return text[:1].upper() + text[1:]


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def _failed(rec: dict[str, Any]) -> bool:
    return rec["outcome"] != Outcome.SUCCESS


class _Story:
    """Sentences for one patient's records; remembers their consents to cite them later."""

    def __init__(self, patient: str, studies: dict[str, StudyFacts], parties: dict[str, Party]) -> None:
        self.patient = patient
        self.studies = studies
        self.parties = parties  # by AE title
        self.consents: dict[str, dict[str, Any]] = {}
        self.revoked: dict[str, datetime] = {}  # consent id -> when it was revoked

    def _where(self, ae_title: str, role: str) -> str:
        party = self.parties.get(ae_title)
        return f"{party.name}'s {role} {ae_title}" if party else f"the {role} {ae_title}"

    def _consent_for(self, institution: str, study: str, time: str) -> dict[str, Any] | None:
        """The consent in force for ``institution`` at ``time`` covering ``study``, if one was recorded."""
        for cid, c in reversed(list(self.consents.items())):
            at = _moment(time)
            if c.get("institution") != institution or (cid in self.revoked and self.revoked[cid] <= at):
                continue
            if c.get("studies") and study and study not in c["studies"]:
                continue
            start, end = _moment(str(c.get("from", ""))), _moment(str(c.get("until", "")))
            if start <= at < end:
                return c
        return None

    def sentence(self, rec: dict[str, Any], count: int) -> str:
        d = record.details_of(rec)
        kind, when, actor = rec["type"], _day(rec["time"]), rec["actor"]
        study = _study_words(rec["study_uid"], self.studies)
        reason = f": {rec['reason']}" if rec["reason"] and _failed(rec) else ""
        if kind == EventType.INSTANCE_RECEIVED:
            source = self._where(actor, "device")
            return f"{_cap(study)} was received from {source} and stored on {when} ({_images(count)})."
        if kind == EventType.INSTANCE_FORWARDED:
            archive = _ae(str(d.get("destination") or actor))
            if _failed(rec):
                return (
                    f"{_cap(study)} could not be copied to the image archive {archive} "
                    f"on {when}{reason} ({_images(count)})."
                )
            return (
                f"{_cap(study)} was copied to the hospital's image archive {archive} "
                f"on {when} ({_images(count)})."
            )
        if kind == EventType.QUERY_FIND:
            others = len(d.get("patients") or [rec["patient_id"]]) - 1 + int(d.get("patients_beyond") or 0)
            among = (
                f", together with {others} other patient{'s' if others != 1 else ''}" if others > 0 else ""
            )
            who = _cap(self._where(actor, "workstation"))
            return f"{who} searched the records on {when} and was shown your details{among}."
        if kind in (EventType.RETRIEVE_MOVE, EventType.RETRIEVE_GET):
            dest = _ae(str(d.get("destination") or actor))
            party = self.parties.get(dest)
            consent = self._consent_for(party.name, rec["study_uid"], rec["time"]) if party else None
            who = self._where(dest, "workstation")
            asked = f" at the request of {actor}" if actor != dest else ""
            if _failed(rec):
                return f"{_cap(who)} asked for {study} on {when}{asked}; it was not completed{reason}."
            sent = int(d.get("completed") or 0) + int(d.get("warnings") or 0)
            under = _consent_words(consent)
            return f"{_cap(who)} retrieved {study} on {when}{asked} ({_images(sent)}){under}."
        if kind in (EventType.RELEASE_GRANTED, EventType.RELEASE_DENIED):
            to, purpose = d.get("to", "another institution"), d.get("purpose", "")
            consent = self.consents.get(str(d.get("consent_id") or ""))
            if kind == EventType.RELEASE_GRANTED:
                n = f" ({_images(int(d['instances']))})" if d.get("instances") else ""
                under = _consent_words(consent)
                return f"{_cap(study)} was released to {to} for {purpose} on {when}{n}{under}."
            why = "; ".join(d.get("reasons") or []) or rec["reason"]
            return f"{to} asked for {study} for {purpose} on {when}; it was refused: {why}."
        if kind == EventType.RELEASE_RECEIVED:
            return f"{_cap(study)} was received from another institution ({actor}) on {when}."
        if kind == EventType.RELEASE_REFUSED:
            return (
                f"Images of {study} sent by {actor} were refused on {when} "
                f"because they failed the integrity check{reason}."
            )
        if kind == EventType.CONSENT_GRANTED:
            self.consents[str(d.get("consent_id", ""))] = d
            scope = (
                "all your studies"
                if not d.get("studies")
                else " and ".join(_study_words(u, self.studies) for u in d["studies"])
            )
            return (
                f"You allowed {d.get('institution', 'an institution')} to see {scope} for "
                f"{d.get('purpose', 'treatment')} from {_day(d.get('from', ''))} until "
                f"{_day(d.get('until', ''))} (recorded on {when} by {actor})."
            )
        if kind == EventType.CONSENT_REVOKED:
            cid = str(d.get("consent_id", ""))
            self.revoked[cid] = _moment(rec["time"])
            given = self.consents.get(cid)
            since = f" of {_day(given.get('from', ''))}" if given else ""
            why = f": {d['reason']}" if d.get("reason") else ""
            whom = d.get("institution", "an institution")
            return f"Your consent{since} for {whom} was withdrawn on {when}{why}."
        if kind == EventType.PATIENT_RESEARCH_OPT_IN:
            return (
                f"You agreed on {when} that your images may be used for research, with your identity removed."
            )
        if kind == EventType.PATIENT_RESEARCH_OPT_OUT:
            return f"You withdrew on {when} your agreement to research use of your images."
        if kind == EventType.RESEARCH_EXPORT:
            n = f" ({_images(int(d['instances']))})" if d.get("instances") else ""
            return (
                f"A copy of {study} with your name, identifiers and dates removed "
                f"was made for research on {when}{n}."
            )
        if kind == EventType.IMAGES_EXPORTED:
            n = (
                f" ({int(d['pictures'])} picture{'s' if int(d['pictures']) != 1 else ''})"
                if d.get("pictures")
                else ""
            )
            what = str(d.get("format", "picture")).upper()
            return f"{_cap(study)} was exported as {what} pictures by {actor} on {when}{n}."
        if kind == EventType.PATIENT_IDENTITY_CONFLICT:  # never the values: they may be another person's
            what = {"PatientName": "name", "PatientSex": "sex", "PatientBirthDate": "birth date"}
            other = what.get(str(d.get("attribute")), "identity")
            return f"{_cap(study)} gave your patient ID another {other}; flagged for review on {when}."
        if kind == EventType.PATIENT_LINK_ISSUED:
            until = _day(str(d.get("expires_at", "")))
            return f"A link to this record was made for you by {actor} on {when}, valid until {until}."
        if kind == EventType.PATIENT_LINK_OPENED:
            opened = "opened" if not _failed(rec) else f"tried after it {rec['reason'] or 'stopped working'}"
            return f"Your link to this record was {opened} on {when}."
        if kind == EventType.AUDIT_EXPORT:
            return f"A record of who accessed your images was exported by {actor} on {when}."
        if kind == EventType.SCORE_CHANGED:
            moved = f"{float(d.get('from', 0)):g} to {float(d.get('to', 0)):g}"
            return (
                f"Your safeguard score went from {moved} on {when}: it falls when your images are "
                "asked for without your consent, and while it is low an institution needs a higher "
                "score of its own to receive them."
            )
        outcome = "" if not _failed(rec) else f" ({rec['outcome']}{reason})"
        return f"{kind} by {actor} on {when}{outcome}."


def entries(
    records: Iterable[dict[str, Any]],
    patient: str,
    studies: dict[str, StudyFacts],
    parties: dict[str, Party] | None = None,
) -> list[Entry]:
    """The log's lines, in ledger order, from the patient's exported records (pure)."""
    story = _Story(patient, studies, parties or {})
    out: list[Entry] = []
    groups: dict[tuple[str, ...], tuple[Entry, dict[str, Any]]] = {}
    for rec in records:
        ref = {"seq": rec["seq"], "hash": rec["hash"]}
        if rec["type"] in GROUPED:
            key = (rec["type"], rec["study_uid"], rec["actor"], rec["outcome"], rec["time"][:10])
            if key in groups:
                entry, first = groups[key]
                entry.events.append(ref)
                entry.text = story.sentence(first, len(entry.events))
                continue
        entry = Entry(
            time=rec["time"],
            type=rec["type"],
            outcome=rec["outcome"],
            actor=rec["actor"],
            study_uid=rec["study_uid"],
            text=story.sentence(rec, 1),
            events=[ref],
        )
        if rec["type"] in GROUPED:
            groups[key] = (entry, rec)
        out.append(entry)
    return out


@dataclass(frozen=True)
class ProofRef:
    """The export a readable log was rendered from, and what its signed proof states."""

    export_file: str
    export_sha256: str
    proof_file: str
    count: int
    first_seq: int | None
    last_seq: int | None
    ledger_head: int
    key_id: str

    @classmethod
    def of(cls, export_path: Path, signed: dict[str, Any]) -> ProofRef:
        st = signed["statement"]
        return cls(
            export_file=export_path.name,
            export_sha256=st["file_sha256"],
            proof_file=proof_path(export_path).name,
            count=st["count"],
            first_seq=st["first_seq"],
            last_seq=st["last_seq"],
            ledger_head=st["ledger_head"]["seq"],
            key_id=st["key_id"],
        )

    def how_to_check(self) -> str:
        return (
            f"This log was made from {self.export_file} (SHA-256 {self.export_sha256}), an audit export "
            f"of {self.count} events signed by node key {self.key_id} in {self.proof_file}. To check that "
            f"it is complete and unaltered: dicom-chain audit verify {self.export_file} --public-key node.pub"
        )


def render_text(patient: str, lines: list[Entry], proof: ProofRef, generated_at: str) -> str:
    out = [f"Access log for patient {patient}", f"made {generated_at}", ""]
    out += [f"{e.time[:10]}  {e.text}" for e in lines] or ["Nothing has touched your images."]
    out += ["", proof.how_to_check(), ""]
    return "\n".join(out)


def render_json(patient: str, lines: list[Entry], proof: ProofRef, generated_at: str) -> str:
    doc = {
        "patient_id": patient,
        "generated_at": generated_at,
        "export": asdict(proof),
        "entries": [asdict(e) for e in lines],
    }
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:60rem;margin:2rem auto;
padding:0 1rem;color:#1b1b1b;background:#fff;line-height:1.5}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem}
table{border-collapse:collapse;width:100%}caption{text-align:left;font-weight:600;padding:.5rem 0}
th,td{border-bottom:1px solid #ccc;padding:.5rem;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.when{white-space:nowrap}td.ref{font-size:.85rem;color:#555}
.failed{color:#8a1c1c}code{word-break:break-all}
"""


def render_html(patient: str, lines: list[Entry], proof: ProofRef, generated_at: str) -> str:
    """One self-contained page: inline CSS, no scripts, nothing fetched from elsewhere."""
    e = html.escape
    rows = "\n".join(
        ("<tr>" if x.outcome == Outcome.SUCCESS else '<tr class="failed">')
        + f'<td class="when"><time datetime="{e(x.time)}">{e(x.time[:10])}</time></td>'
        f"<td>{e(x.text)}</td>"
        f'<td class="ref">{e(", ".join(str(r["seq"]) for r in x.events))}</td></tr>'
        for x in lines
    )
    body = (
        "<table>\n<caption>Everything that touched your images, oldest first "
        f"({len(lines)} entries)</caption>\n"
        '<thead><tr><th scope="col">Date</th><th scope="col">What happened</th>'
        '<th scope="col">Ledger events</th></tr></thead>\n'
        f"<tbody>\n{rows}\n</tbody>\n</table>"
        if lines
        else "<p>Nothing has touched your images.</p>"
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Access log for patient {e(patient)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<h1>Access log for patient {e(patient)}</h1>
<p>Made {e(generated_at)}. Each line is one or more events of this node's signed, hash-linked ledger.</p>
{body}
<h2>How to check this log</h2>
<p>{e(proof.how_to_check())}</p>
<dl>
<dt>Export file</dt><dd><code>{e(proof.export_file)}</code></dd>
<dt>Its SHA-256</dt><dd><code>{e(proof.export_sha256)}</code></dd>
<dt>Proof</dt><dd><code>{e(proof.proof_file)}</code>: events {proof.first_seq} to {proof.last_seq},
ledger head {proof.ledger_head}</dd>
</dl>
</main>
</body>
</html>
"""


RENDERERS = {"text": render_text, "json": render_json, "html": render_html}


def events_path(output: Path) -> Path:
    """Where a readable log's underlying JSON Lines export goes (its proof beside it)."""
    return output.with_name(output.name + EVENTS_SUFFIX)


# -- I/O at the edge ----------------------------------------------------------------------------


def study_facts(db: Database, uids: Iterable[str]) -> dict[str, StudyFacts]:
    """Modality, date and description of each study the query index knows, by Study UID."""
    from pydicom.dataset import Dataset

    from dicom_chain.qr import index
    from dicom_chain.qr.query import parse_query

    wanted = sorted({u for u in uids if u})
    facts: dict[str, StudyFacts] = {}
    for start in range(0, len(wanted), STUDY_LOOKUP_BATCH):
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = wanted[start : start + STUDY_LOOKUP_BATCH]
        ds.StudyDate = ds.ModalitiesInStudy = ds.StudyDescription = ""
        for values in index.find(db, parse_query(ds, "STUDY")):
            date = str(values.get("StudyDate") or "")
            modalities = values.get("ModalitiesInStudy") or ()
            if isinstance(modalities, str):
                modalities = modalities.split("\\")
            facts[values["StudyInstanceUID"]] = StudyFacts(
                modalities=tuple(str(m) for m in modalities),
                date=f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 else date,
                description=str(values.get("StudyDescription") or ""),
            )
    return facts


def parties(ledger: Ledger, max_seq: int) -> dict[str, Party]:
    """Registered institutions by AE title, from their added/removed events (latest wins); read
    by type through the ledger's index, not by walking the whole log."""
    found: dict[str, Party] = {}
    names = (EventType.INSTITUTION_ADDED, EventType.INSTITUTION_REMOVED)
    for event in ledger.events_of_types(names, before_seq=max_seq + 1):
        d = event.details
        ae = str(d.get("ae_title", ""))
        if event.type == EventType.INSTITUTION_ADDED and ae:
            found[ae] = Party(name=str(d.get("name", ae)), ae_title=ae)
        else:
            found = {k: v for k, v in found.items() if v.name != d.get("name") and k != ae}
    return found


def _read(path: Path) -> Iterator[dict[str, Any]]:
    for rec in jsonl.read(path):
        yield {**rec, "details": record.details_of(rec)}


def write(
    ledger: Ledger,
    key: NodeKey,
    patient: str,
    output: Path,
    fmt: str,
    *,
    actor: str,
    source_id: str,
    now: str,
) -> dict[str, Any]:
    """Write the patient's access log to ``output`` with its proof; return the signed statement.

    The export (and its ``audit.export`` event, naming the patient) comes first; the readable
    forms are rendered from what was written to it, never from a second read of the ledger.
    """
    from dicom_chain.errors import ConfigError

    if fmt not in FORMATS:
        raise ConfigError(f"unknown access-log format {fmt!r} (one of {', '.join(FORMATS)})")
    selection = AuditFilter(patient=patient)
    if fmt == "fhir":
        return export(ledger, key, "fhir", output, selection, actor=actor, source_id=source_id)
    source = events_path(output)
    signed = export(ledger, key, "json", source, selection, actor=actor, source_id=source_id)
    records = list(_read(source))
    named = [r["study_uid"] for r in records]
    for rec in records:  # a consent names its studies by UID in its details
        if rec["type"] == EventType.CONSENT_GRANTED:
            named += [str(u) for u in rec["details"].get("studies") or ()]
    studies = study_facts(ledger.db, named)
    lines = entries(records, patient, studies, parties(ledger, signed["statement"]["ledger_head"]["seq"]))
    text = RENDERERS[fmt](patient, lines, ProofRef.of(source, signed), now)
    partial = output.with_name(f".{output.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(output)
    return signed
