"""Event handlers: each translates one DIMSE request into one core call and back, and stays tiny."""

from __future__ import annotations

import logging

from pynetdicom import evt

from dicom_chain.errors import MalformedDatasetError
from dicom_chain.node import Node
from dicom_chain.splice import EncodedInstance

from .statuses import SUCCESS, store_status

log = logging.getLogger("dicom_chain.scp")


def handle_echo(event: evt.Event) -> int:
    return SUCCESS


def handle_store(event: evt.Event, node: Node) -> int:
    calling = event.assoc.requestor.ae_title
    try:
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            encoded = EncodedInstance.from_network(ds, event.request.DataSet.getvalue())
        except Exception as exc:  # pynetdicom decodes lazily; garbage surfaces here
            raise MalformedDatasetError(f"dataset does not decode: {exc}") from exc
        result = node.ingest(ds, actor=calling, encoded=encoded)
    except Exception as exc:
        status = store_status(exc)
        log.warning("C-STORE from %s refused with 0x%04X: %s", calling, status, exc)
        return status
    log.info(
        "C-STORE from %s: %s %s height %d",
        calling,
        result.outcome,
        result.block.header.sop_instance_uid,
        result.block.header.height,
    )
    return SUCCESS
