"""Named exceptions for the whole library, each saying whose fault it is and whether to retry.

As h11 splits local from remote protocol errors, every error here carries ``fault`` (LOCAL: our
disk, database, configuration or key; REMOTE: the input a peer or a user handed us) and
``retryable`` (the same request may succeed later, unchanged). Whoever answers a peer (the SCP's
status mapping, the CLI's exit codes) reads these two attributes, not an isinstance chain.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class Fault(StrEnum):
    LOCAL = "local"  # ours: fix the node (disk, database, key, settings)
    REMOTE = "remote"  # theirs: the dataset, identifier or file given to us is at fault


class DicomChainError(Exception):
    """Base class: everything the library raises on purpose derives from this."""

    fault: ClassVar[Fault] = Fault.LOCAL
    retryable: ClassVar[bool] = False


class NotDicomError(DicomChainError):
    """The input could not be parsed as a DICOM dataset."""

    fault = Fault.REMOTE


class UnknownFormatError(NotDicomError):
    """No carrier recognises the input by its first bytes: not DICOM, nor any other format chained.

    A NotDicomError, so that whoever handled "not DICOM" before carriers existed still does."""


class MalformedPictureError(NotDicomError):
    """A PNG, JPEG or TIFF file that its carrier cannot parse (truncated, garbled structure)."""


class NothingToExportError(DicomChainError):
    """An export asked of something that is not there (a study not on this node, an output folder
    already in use, an unknown format): nothing was written."""

    fault = Fault.REMOTE


class NoteError(DicomChainError):
    """A signed note or checkpoint that is malformed, or whose signature does not verify."""

    fault = Fault.REMOTE


class ProofError(DicomChainError):
    """A Merkle proof that does not hold, or a proof document that is malformed."""

    fault = Fault.REMOTE


class MethodRefusedError(DicomChainError):
    """A picture cannot hold a block by the method asked for: a lossy format for a watermark, a
    picture too small for the block, a mode the method does not take."""

    fault = Fault.REMOTE


class MalformedDatasetError(DicomChainError):
    """The input is DICOM but lacks or garbles something the chain needs (e.g. SOP Instance UID)."""

    fault = Fault.REMOTE


class UnfaithfulFileError(MalformedDatasetError):
    """The item, written with its block, would not verify: it is refused rather than stored with
    a block that vouches for nothing (a malformed element the block's insertion disturbs)."""


class InstanceTooLargeError(DicomChainError):
    """An instance larger than the node accepts (``max_instance_bytes``); nothing of it is kept.

    The sender's to fix and not retryable, so a C-STORE gets C000 rather than A700 (PS3.4 B.2.3):
    "Out of Resources" tells a modality or PACS to send again later, and it would send the same
    gigabytes again and again, while this instance will never fit under this limit."""

    fault = Fault.REMOTE


class NoBlockError(DicomChainError):
    """The dataset carries no DICOM_CHAIN private block."""

    fault = Fault.REMOTE


class MalformedBlockError(DicomChainError):
    """A DICOM_CHAIN block is present but cannot be decoded or is internally inconsistent."""

    fault = Fault.REMOTE


class SignatureError(DicomChainError):
    """A block or event signature does not verify against the key it names."""

    fault = Fault.REMOTE


class ContentHashError(DicomChainError):
    """The dataset's content no longer matches the content hash recorded in its block."""

    fault = Fault.REMOTE


class LossyReencodingError(ContentHashError):
    """Only the pixels differ, and the file says they were re-encoded lossily: a hop's damage,
    told apart from tampering, yet still not the image that was chained."""


class IdentifierError(DicomChainError):
    """A query or retrieve identifier asks what its information model does not allow (PS3.4 C.4.1)."""

    fault = Fault.REMOTE


class LedgerError(DicomChainError):
    """The ledger refused or failed an operation."""


class LedgerUnavailable(LedgerError):
    """The database cannot be reached, is locked past its timeout, or its pool is exhausted."""

    retryable = True


class LedgerConflict(LedgerError):
    """A constraint refused a write (a lost race for a height, a duplicate row).

    Retryable: the writer that lost re-reads the head and tries again."""

    retryable = True


class StorageError(DicomChainError):
    """Writing or reading the instance store failed (disk full, permissions, missing file)."""

    retryable = True


class PathTakenError(StorageError):
    """A file is already where a new one was to be written: never replaced. Store names are
    injective, so this is a leftover no block names (removed by the caller, then retried) or a
    name an older naming rule gave; retrying the same item meets the same file."""

    retryable = False


class KeyFileError(DicomChainError):
    """The node key file is missing, unreadable, malformed or too widely readable."""


class ConfigError(DicomChainError):
    """A setting is missing, malformed or contradicts another."""


class KeyMismatchError(ConfigError):
    """The key found for a command is not the key of any chain in the ledger it was given."""


class StartupError(DicomChainError):
    """The gateway cannot start for a reason outside its settings (its port is taken, its folder
    cannot be written): the same command works once the machine is put right."""

    retryable = True


class AuditExportError(DicomChainError):
    """An audit export cannot be read, or what it shows disagrees with the records it carries."""

    fault = Fault.REMOTE


class SharingError(DicomChainError):
    """A sharing request names what is not there (an institution, a consent, a study) or
    contradicts what is (an institution registered twice, a consent that ends before it starts)."""

    fault = Fault.REMOTE


class ReleaseDenied(SharingError):
    """The sharing rules deny a release (a C-MOVE to another institution); the reasons are the
    recorded ``release.denied`` event's. The request is at fault, not the node: not retryable as is."""


class ResearchExportRefused(DicomChainError):
    """A research export is not allowed (the patient has not opted in, the study is not here, ...)."""

    fault = Fault.REMOTE  # the request is at fault; the same request succeeds once the patient opts in


class NotAuthorized(DicomChainError):
    """The caller lacks the permission this request needs (``permissions.Permission``): a store,
    query or retrieval by an AE not granted it. The request is at fault; the same one from the same
    caller will be refused again until someone grants the permission."""

    fault = Fault.REMOTE


class VersionRefused(NotAuthorized):
    """Different content under a known SOP Instance UID, from a caller who may not make a new version
    of it: neither the AE that sent the original nor one granted ``correct``. Nothing is stored."""


class Unwalkable(Exception):
    """A file's element headers hold something ``carriers/dicom/elementwalk.py`` does not read as
    pydicom would: not an error of anyone's, a signal to ask pydicom instead (never a status)."""


class NeedMore(Unwalkable):
    """A header lies past the bytes at hand (the whole file would tell)."""


class TimestampError(DicomChainError):
    """An RFC 3161 timestamp not obtained (TSA unreachable or refusing) or whose token does not hold."""

    fault = Fault.REMOTE


class AuthError(DicomChainError):
    """A login, a session or a patient link that does not hold: wrong password, unknown or
    disabled user, expired or revoked link. Said the same way whichever it was."""

    fault = Fault.REMOTE


class UserError(DicomChainError):
    """A user or role that cannot be made as asked: a name in use, an unknown role, a weak password."""
