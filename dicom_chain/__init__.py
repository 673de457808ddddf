"""dicom-chain core: blocks, canonical hashing, embedding, ledger and verification. No networking."""

from .block import FORMAT_VERSION, GENESIS_HASH, Block, BlockHeader
from .canonical import CANONICAL_VERSION, content_hash
from .config import Settings
from .embedding import embed_block, read_block
from .errors import (
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
from .events import Event, EventDraft
from .findings import Finding, Report
from .keys import NodeKey, load_public_key
from .ledger import Ledger
from .node import IngestResult, Node
from .privatetags import CHAIN_GROUP, PRIVATE_CREATOR
from .storage import Storage
from .verify import verify_files, verify_node

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
