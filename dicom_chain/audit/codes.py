"""The DICOM audit vocabulary (PS3.15 A.5, codes from PS3.16 CID 400-405) for our event types.

One table says, for every event type the ledger holds, which EventID, EventTypeCode and action
code it is reported as, in both the ATNA and the FHIR AuditEvent exports. Every member of
``vocab.EventType`` has its entry.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicom_chain.vocab import EventType, Outcome

DCM = "DCM"  # coding scheme designator of DICOM's own codes (PS3.16)
DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"  # the same scheme as a FHIR system URI
LOCAL_SCHEME = "99DICOMCHAIN"  # PS3.16 8.2: a private coding scheme designator starts with 99


@dataclass(frozen=True)
class Code:
    code: str
    meaning: str
    scheme: str = DCM


@dataclass(frozen=True)
class AuditKind:
    event_id: Code
    action: str  # EventActionCode: C create, R read, U update, D delete, E execute
    subtype: Code | None = None


APPLICATION_ACTIVITY = Code("110100", "Application Activity")
INSTANCES_ACCESSED = Code("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = Code("110104", "DICOM Instances Transferred")
EXPORT = Code("110106", "Export")
IMPORT = Code("110107", "Import")
PATIENT_RECORD = Code("110110", "Patient Record")
QUERY = Code("110112", "Query")
SECURITY_ALERT = Code("110113", "Security Alert")
APPLICATION_START = Code("110120", "Application Start")
APPLICATION_STOP = Code("110121", "Application Stop")
NODE_AUTHENTICATION = Code("110126", "Node Authentication")
SECURITY_CONFIGURATION = Code("110129", "Security Configuration")
RESTRICTED_FUNCTION = Code("110132", "Use of Restricted Function")
OBJECT_SECURITY_CHANGED = Code("110135", "Object Security Attributes Changed")
USER_AUTHENTICATION = Code("110114", "User Authentication")
LOGIN = Code("110122", "Login")
LOGOUT = Code("110123", "Logout")
SECURITY_ROLES_CHANGED = Code("110136", "Security Roles Changed")
USER_SECURITY_CHANGED = Code("110137", "User security Attributes Changed")

KINDS: dict[EventType, AuditKind] = {
    EventType.INSTANCE_RECEIVED: AuditKind(INSTANCES_TRANSFERRED, "C"),
    EventType.INSTANCE_FORWARDED: AuditKind(INSTANCES_TRANSFERRED, "R"),
    EventType.FORWARD_REPLAYED: AuditKind(APPLICATION_ACTIVITY, "E"),
    EventType.FORWARD_DOWN: AuditKind(APPLICATION_ACTIVITY, "E"),
    EventType.FORWARD_UP: AuditKind(APPLICATION_ACTIVITY, "E"),
    EventType.RETRIEVE_MOVE: AuditKind(INSTANCES_TRANSFERRED, "R"),
    EventType.RETRIEVE_GET: AuditKind(INSTANCES_TRANSFERRED, "R"),
    EventType.QUERY_FIND: AuditKind(QUERY, "E"),
    EventType.SERVICE_START: AuditKind(APPLICATION_ACTIVITY, "E", APPLICATION_START),
    EventType.SERVICE_STOP: AuditKind(APPLICATION_ACTIVITY, "E", APPLICATION_STOP),
    EventType.ASSOCIATION_REJECTED: AuditKind(SECURITY_ALERT, "E", NODE_AUTHENTICATION),
    EventType.INSTANCE_REFUSED: AuditKind(SECURITY_ALERT, "E", RESTRICTED_FUNCTION),
    EventType.STORAGE_RECOVERED: AuditKind(INSTANCES_ACCESSED, "D"),
    EventType.VERIFY_NODE: AuditKind(SECURITY_ALERT, "E", OBJECT_SECURITY_CHANGED),
    EventType.AUDIT_EXPORT: AuditKind(EXPORT, "R"),
    EventType.INSTITUTION_ADDED: AuditKind(SECURITY_ALERT, "C", SECURITY_CONFIGURATION),
    EventType.INSTITUTION_REMOVED: AuditKind(SECURITY_ALERT, "D", SECURITY_CONFIGURATION),
    EventType.INSTITUTION_UPDATED: AuditKind(SECURITY_ALERT, "U", SECURITY_CONFIGURATION),
    EventType.POLICY_CHANGED: AuditKind(SECURITY_ALERT, "U", SECURITY_CONFIGURATION),
    EventType.RELEASE_GRANTED: AuditKind(EXPORT, "R"),
    EventType.RELEASE_DENIED: AuditKind(SECURITY_ALERT, "E", RESTRICTED_FUNCTION),
    EventType.RELEASE_RECEIVED: AuditKind(IMPORT, "C"),
    EventType.RELEASE_REFUSED: AuditKind(SECURITY_ALERT, "E", NODE_AUTHENTICATION),
    EventType.LOG_SPLIT_VIEW: AuditKind(SECURITY_ALERT, "E", NODE_AUTHENTICATION),
    EventType.CONSENT_GRANTED: AuditKind(SECURITY_ALERT, "U", OBJECT_SECURITY_CHANGED),
    EventType.CONSENT_REVOKED: AuditKind(SECURITY_ALERT, "U", OBJECT_SECURITY_CHANGED),
    EventType.SCORE_CHANGED: AuditKind(SECURITY_ALERT, "U", OBJECT_SECURITY_CHANGED),
    EventType.PATIENT_RESEARCH_OPT_IN: AuditKind(SECURITY_ALERT, "U", OBJECT_SECURITY_CHANGED),
    EventType.PATIENT_RESEARCH_OPT_OUT: AuditKind(SECURITY_ALERT, "U", OBJECT_SECURITY_CHANGED),
    EventType.RESEARCH_EXPORT: AuditKind(EXPORT, "R"),
    EventType.IMAGES_EXPORTED: AuditKind(EXPORT, "R"),
    EventType.PATIENT_IDENTITY_CONFLICT: AuditKind(PATIENT_RECORD, "U"),
    EventType.USER_ADDED: AuditKind(SECURITY_ALERT, "C", SECURITY_ROLES_CHANGED),
    EventType.USER_DISABLED: AuditKind(SECURITY_ALERT, "D", SECURITY_ROLES_CHANGED),
    EventType.USER_LOGIN: AuditKind(USER_AUTHENTICATION, "E", LOGIN),
    EventType.USER_LOGOUT: AuditKind(USER_AUTHENTICATION, "E", LOGOUT),
    EventType.PATIENT_LINK_ISSUED: AuditKind(SECURITY_ALERT, "C", USER_SECURITY_CHANGED),
    EventType.PATIENT_LINK_OPENED: AuditKind(USER_AUTHENTICATION, "E", LOGIN),
}
# Only for a type this version does not know (an export from a newer node read here): every
# member of EventType has its own entry above (a test holds the two equal).
FALLBACK = AuditKind(APPLICATION_ACTIVITY, "E")


def kind_of(event_type: str) -> AuditKind:
    return KINDS.get(event_type, FALLBACK)  # type: ignore[call-overload]  # members hash as their str


# EventOutcomeIndicator (PS3.15 A.5.3): our outcome words are named after it (events.py).
OUTCOME_CODES = {
    Outcome.SUCCESS: "0",
    Outcome.MINOR_FAILURE: "4",
    Outcome.SERIOUS_FAILURE: "8",
    Outcome.MAJOR_FAILURE: "12",
}

# RoleIDCode of active participants (CID 402)
ROLE_SOURCE = Code("110153", "Source Role ID")
ROLE_DESTINATION = Code("110152", "Destination Role ID")
ROLE_APPLICATION = Code("110150", "Application")
ROLE_LAUNCHER = Code("110151", "Application Launcher")
# ParticipantObjectIDTypeCode (RFC 3881 / CID 404)
ID_PATIENT = Code("2", "Patient Number", "RFC-3881")
ID_STUDY = Code("110180", "Study Instance UID")
ID_SOP = Code("110181", "SOP Class UID")
ID_EVENT = Code("EVENT", "dicom-chain ledger event", LOCAL_SCHEME)
