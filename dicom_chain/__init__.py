"""dicom-chain core: blocks, canonical hashing, embedding, ledger and verification. No networking."""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dicom_chain.block import FORMAT_VERSION, GENESIS_HASH, Block, BlockHeader
    from dicom_chain.carriers.dicom.canonical import CANONICAL_VERSION, content_hash
    from dicom_chain.carriers.dicom.embedding import embed_block, read_block
    from dicom_chain.carriers.dicom.privatetags import CHAIN_GROUP, PRIVATE_CREATOR
    from dicom_chain.config import Settings
    from dicom_chain.errors import (
        ConfigError,
        ContentHashError,
        DicomChainError,
        KeyFileError,
        LedgerError,
        MalformedBlockError,
        MalformedDatasetError,
        NoBlockError,
        NotDicomError,
        SignatureError,
        StorageError,
    )
    from dicom_chain.events import Event, EventDraft
    from dicom_chain.findings import Finding, Report
    from dicom_chain.keys import NodeKey, load_public_key
    from dicom_chain.ledger import Ledger
    from dicom_chain.node import IngestResult, Node
    from dicom_chain.storage import Storage
    from dicom_chain.verify import verify_files, verify_node

# The public API, imported on first use (PEP 562): a process that needs one corner of the core
# (an export's render worker, the CLI's --help) does not pay for loading pydicom and SQLAlchemy.
_LAZY = {
    "Block": "block",
    "BlockHeader": "block",
    "CANONICAL_VERSION": "carriers.dicom.canonical",
    "CHAIN_GROUP": "carriers.dicom.privatetags",
    "ConfigError": "errors",
    "ContentHashError": "errors",
    "DicomChainError": "errors",
    "Event": "events",
    "EventDraft": "events",
    "FORMAT_VERSION": "block",
    "Finding": "findings",
    "GENESIS_HASH": "block",
    "IngestResult": "node",
    "KeyFileError": "errors",
    "Ledger": "ledger",
    "LedgerError": "errors",
    "MalformedBlockError": "errors",
    "MalformedDatasetError": "errors",
    "NoBlockError": "errors",
    "Node": "node",
    "NodeKey": "keys",
    "NotDicomError": "errors",
    "PRIVATE_CREATOR": "carriers.dicom.privatetags",
    "Report": "findings",
    "Settings": "config",
    "SignatureError": "errors",
    "Storage": "storage",
    "StorageError": "errors",
    "content_hash": "carriers.dicom.canonical",
    "embed_block": "carriers.dicom.embedding",
    "load_public_key": "keys",
    "read_block": "carriers.dicom.embedding",
    "verify_files": "verify",
    "verify_node": "verify",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dicom_chain' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "CANONICAL_VERSION",
    "CHAIN_GROUP",
    "FORMAT_VERSION",
    "GENESIS_HASH",
    "PRIVATE_CREATOR",
    "Block",
    "BlockHeader",
    "ConfigError",
    "ContentHashError",
    "DicomChainError",
    "Event",
    "EventDraft",
    "Finding",
    "IngestResult",
    "KeyFileError",
    "Ledger",
    "LedgerError",
    "MalformedBlockError",
    "MalformedDatasetError",
    "NoBlockError",
    "Node",
    "NodeKey",
    "NotDicomError",
    "Report",
    "Settings",
    "SignatureError",
    "Storage",
    "StorageError",
    "content_hash",
    "embed_block",
    "load_public_key",
    "read_block",
    "verify_files",
    "verify_node",
]
