"""The project's fixed vocabularies, one StrEnum each, in one place.

A bare string typed wrong (``"instance.recieved"``) used to fall through to a default somewhere
far away; an enum member typed wrong fails at import, and a value read back from the ledger
that is not a member fails where it is read. Members are ``str``, so they go into JSON, SQL and
the signed canonical bytes exactly as the strings they replace: no hash changes.
"""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    """Every kind of event the ledger records (audit/codes.py maps each to DICOM audit codes)."""

    INSTANCE_RECEIVED = "instance.received"
    INSTANCE_FORWARDED = "instance.forwarded"
    # a C-STORE turned away for want of a permission (store; correct, for a new version): nothing kept
    INSTANCE_REFUSED = "instance.refused"
    FORWARD_REPLAYED = "forward.replayed"  # a dead-lettered instance queued again by an operator
    # a forward destination could not be reached (its cause), and when it could again (breaker.py)
    FORWARD_DOWN = "forward.down"
    FORWARD_UP = "forward.up"
    QUERY_FIND = "query.find"
    RETRIEVE_MOVE = "retrieve.move"
    RETRIEVE_GET = "retrieve.get"
    SERVICE_START = "service.start"
    SERVICE_STOP = "service.stop"
    ASSOCIATION_REJECTED = "association.rejected"
    STORAGE_RECOVERED = "storage.recovered"
    VERIFY_NODE = "verify.node"
    AUDIT_EXPORT = "audit.export"
    # sharing across institutions
    INSTITUTION_ADDED = "institution.added"
    INSTITUTION_REMOVED = "institution.removed"
    INSTITUTION_UPDATED = "institution.updated"  # its log address or certificate changed
    POLICY_CHANGED = "policy.changed"  # the sharing policy in force changed (its hash and text)
    RELEASE_GRANTED = "release.granted"
    RELEASE_DENIED = "release.denied"
    RELEASE_RECEIVED = "release.received"  # instances another institution released to us, accepted
    RELEASE_REFUSED = "release.refused"  # ... refused: their block did not verify (a security event)
    CONSENT_GRANTED = "consent.granted"
    CONSENT_REVOKED = "consent.revoked"
    SCORE_CHANGED = "score.changed"
    PATIENT_RESEARCH_OPT_IN = "patient.research-opt-in"
    PATIENT_RESEARCH_OPT_OUT = "patient.research-opt-out"
    RESEARCH_EXPORT = "research.export"  # a de-identified copy of a study left for research
    IMAGES_EXPORTED = "images.exported"  # a study rendered as chained pictures (PNG, JPEG, TIFF)
    # a received instance gave its Patient ID a name, birth date or sex it had not had beside others
    PATIENT_IDENTITY_CONFLICT = "patient.identity-conflict"
    # another institution's log showed two histories (a security event: both signed checkpoints kept)
    LOG_SPLIT_VIEW = "log.split-view"
    # the web console (web/console/): its users, their sessions, and patients' links
    USER_ADDED = "user.added"
    USER_DISABLED = "user.disabled"
    USER_LOGIN = "user.login"  # success, or a failure (the name tried, never the password)
    USER_LOGOUT = "user.logout"
    PATIENT_LINK_ISSUED = "patient.link-issued"
    PATIENT_LINK_OPENED = "patient.link-opened"


class Outcome(StrEnum):
    """Named after DICOM audit EventOutcomeIndicator (PS3.15 A.5.3): 0, 4, 8, 12."""

    SUCCESS = "success"
    MINOR_FAILURE = "minor-failure"
    SERIOUS_FAILURE = "serious-failure"
    MAJOR_FAILURE = "major-failure"


class IngestOutcome(StrEnum):
    """What receiving one instance did to the node."""

    STORED = "stored"  # a new instance, a new block
    NEW_VERSION = "new-version"  # the SOP Instance UID was known, the content differs: a new block
    DUPLICATE = "duplicate"  # same content again: an event, no block
    RESTORED = "restored"  # same content, and its lost file was put back from the ledger's block


class ForwardVerdict(StrEnum):
    """What a PACS's answer to one forwarded instance means for the queue."""

    DONE = "done"  # stored (success or a warning that still stores)
    RETRY = "retry"  # passing trouble (no answer, out of resources): try again, forever
    REFUSED = "refused"  # the PACS said no: a few more tries, then final


class OutboxState(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class VerificationState(StrEnum):
    """An instance's state as the query index keeps it and C-FIND returns it."""

    VERIFIED = "verified"
    ALTERED = "altered"
    MISSING = "missing"


class ServeAltered(StrEnum):
    """What C-MOVE and C-GET do with an instance the index says is ALTERED since receipt."""

    REFUSE = "refuse"  # a failed sub-operation, the reason in the retrieval's event
    WARN = "warn"  # sent, counted as a warning: final status B000 (PS3.4 C.4.2.1.5, C.4.3.1.4)


class RunStatus(StrEnum):
    """How a query or retrieval ended, as its event says."""

    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    REFUSED = "refused"
    PARTIAL = "partial"


class SubOperation(StrEnum):
    """One C-STORE sub-operation of a C-MOVE or C-GET, as the peer answered it."""

    SUCCESS = "success"
    WARNING = "warning"
    FAILURE = "failure"


class Severity(StrEnum):
    ERROR = "error"
    INFO = "info"


class FindingKind(StrEnum):
    """What verification can find, each named once: people read these, scripts match on them."""

    NOT_DICOM = "not-dicom"
    UNREADABLE = "unreadable"
    NO_BLOCK = "no-block"
    MALFORMED_BLOCK = "malformed-block"
    BAD_SIGNATURE = "bad-signature"
    UNTRUSTED_KEY = "untrusted-key"
    PARSER_WARNING = "parser-warning"
    UNCHECKED_LINK = "unchecked-link"
    ALTERED = "altered"
    LOSSY_REENCODED = "lossy-reencoded"  # only the pixels differ, re-encoded lossily on a hop (1.6)
    GAP = "gap"
    BROKEN_LINK = "broken-link"
    FORK = "fork"
    COPY = "copy"
    MISSING_INSTANCE = "missing-instance"
    BROKEN_STUDY_LINK = "broken-study-link"
    HEAD_MISMATCH = "head-mismatch"
    LEDGER_ALTERED = "ledger-altered"
    MISSING_FILE = "missing-file"
    RE_ORDERED = "re-ordered"
    VERSIONS = "versions"  # info: an instance has several versions; who sent each (design 5)
    REPLACED = "replaced"
    FOREIGN_FILE = "foreign-file"
    EVENT_GAP = "event-gap"
    EVENT_BROKEN_LINK = "event-broken-link"
    EVENT_ALTERED = "event-altered"
    EVENT_BAD_SIGNATURE = "event-bad-signature"
    EVENT_HEAD_MISMATCH = "event-head-mismatch"
    BROKEN_ORIGIN = "broken-origin"  # a received block's link to the sender's block does not hold (10.6)
    # audit exports checked against their proof (audit/verify.py)
    BAD_PROOF = "bad-proof"
    OUTSIDE_RANGE = "outside-range"
    MISSING_EVENT = "missing-event"
    FILE_ALTERED = "file-altered"
    COUNT_MISMATCH = "count-mismatch"
    KEY_NOT_PINNED = "key-not-pinned"
