"""Named exceptions for the whole core, so callers (CLI, SCP) can map each to one answer."""

from __future__ import annotations


class DicomChainError(Exception):
    """Base class: everything the core raises on purpose derives from this."""


class NotDicomError(DicomChainError):
    """The input could not be parsed as a DICOM dataset."""


class MalformedDatasetError(DicomChainError):
    """The input is DICOM but lacks or garbles something the chain needs (e.g. SOP Instance UID)."""


class NoBlockError(DicomChainError):
    """The dataset carries no DICOM_CHAIN private block."""


class MalformedBlockError(DicomChainError):
    """A DICOM_CHAIN block is present but cannot be decoded or is internally inconsistent."""


class SignatureError(DicomChainError):
    """A block or event signature does not verify against the key it names."""


class ContentHashError(DicomChainError):
    """The dataset's content no longer matches the content hash recorded in its block."""


class IdentifierError(DicomChainError):
    """A query or retrieve identifier asks what its information model does not allow (PS3.4 C.4.1)."""


class LedgerError(DicomChainError):
    """The ledger refused or failed an operation (constraint, lost race, unreachable database)."""


class StorageError(DicomChainError):
    """Writing or reading the instance store failed (disk full, permissions, missing file)."""


class KeyFileError(DicomChainError):
    """The node key file is missing, unreadable, malformed or too widely readable."""


class ConfigError(DicomChainError):
    """A setting is missing, malformed or contradicts another."""


class AuditExportError(DicomChainError):
    """An audit export cannot be read, or what it shows disagrees with the records it carries."""
