"""Builds the Application Entity and runs it; every limit is a named setting."""

from __future__ import annotations

import logging

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_chain.config import Settings
from dicom_chain.node import Node

from .handlers import handle_echo, handle_store

MAX_PDU_BYTES = 131_072  # 128 KB: measured ~3x faster than 16 KB for 0.5 MB instances; peers may ask less
MAX_ASSOCIATIONS = 32  # one CT/MR fleet of a department at once; beyond it peers get A-ASSOCIATE-RJ
ACSE_TIMEOUT_S = 30  # association set-up/release; a silent peer must not hold a slot
DIMSE_TIMEOUT_S = 120  # one DIMSE message; a large multi-frame object over a slow link fits
NETWORK_TIMEOUT_S = 300  # idle association; workstations keep associations open between sends


def build_ae(ae_title: str) -> AE:
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = MAX_PDU_BYTES
    ae.maximum_associations = MAX_ASSOCIATIONS
    ae.acse_timeout = ACSE_TIMEOUT_S
    ae.dimse_timeout = DIMSE_TIMEOUT_S
    ae.network_timeout = NETWORK_TIMEOUT_S
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    return ae


def handlers(node: Node) -> list:
    return [(evt.EVT_C_ECHO, handle_echo), (evt.EVT_C_STORE, handle_store, [node])]


def start_server(node: Node, *, ae_title: str, host: str, port: int) -> AE:
    """Listen in background threads; the caller owns ``ae.shutdown()``."""
    ae = build_ae(ae_title)
    ae.start_server((host, port), block=False, evt_handlers=handlers(node))
    return ae


def run_server(settings: Settings, *, ae_title: str, host: str, port: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    node = Node.open(settings)
    ae = build_ae(ae_title)
    logging.getLogger("dicom_chain.scp").info(
        "listening as %s on %s:%d, chain %s, store %s",
        ae_title,
        host,
        port,
        node.chain_id,
        settings.storage_dir,
    )
    try:
        ae.start_server((host, port), block=True, evt_handlers=handlers(node))
    except KeyboardInterrupt:
        pass
    finally:
        ae.shutdown()
        node.close()
