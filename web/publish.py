"""One checkpoint round over HTTPS: sign, ask every witness, publish with a quorum.

The witness protocol's client side (c2sp.org/tlog-witness): a 409 with ``text/x.tlog.size`` says
the witness last cosigned another size of our log, and the request is made once more, proving
from that size. A witness that is down, slow or refusing costs its own cosignature only: the
round goes on with the others, and the checkpoint is published if enough answered.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from dataclasses import dataclass, field

import httpx

from dicom_chain.errors import DicomChainError
from dicom_chain.sharing.registry import Institution
from dicom_chain.tlog import note
from dicom_chain.tlog.checkpoint import DECIMAL, Checkpoint
from dicom_chain.tlog.publishing import Published, Publisher, keep_timestamp

from .tsa import request_timestamp

log = logging.getLogger("dicom_chain.web")
# A witness answers from one database transaction: seconds mean it is in trouble, and a round
# must not wait on it longer than a checkpoint interval's small part.
WITNESS_TIMEOUT_S = 10.0
SIZE_TYPE = "text/x.tlog.size"


@dataclass
class Round:
    size: int
    cosigned_by: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # witness -> why
    published: Published | None = None


def trust_for(institution: Institution) -> ssl.SSLContext | bool:
    """TLS trust for a witness's HTTPS: its registered certificate, or the system's when none."""
    if not institution.tls_cert:
        return True
    return ssl.create_default_context(cadata=institution.tls_cert)


def ask(publisher: Publisher, witness: Institution, cp: Checkpoint, signed: str) -> note.Signature:
    """The witness's cosignature of ``cp``; DicomChainError or httpx.HTTPError saying why not."""
    old = publisher.last_cosigned(witness)
    url = f"{witness.log_url}/witness/add-checkpoint"
    with httpx.Client(verify=trust_for(witness), timeout=WITNESS_TIMEOUT_S) as client:
        for _ in range(2):  # the second time from the size a 409 named
            response = client.post(url, content=publisher.request(cp, signed, old))
            if response.status_code == 200:
                return publisher.accept(witness, cp, signed, response.text)
            kind = response.headers.get("content-type", "").split(";")[0].strip()
            if response.status_code == 409 and kind == SIZE_TYPE and DECIMAL.fullmatch(response.text.strip()):
                old = int(response.text.strip())
                continue
            raise DicomChainError(f"{response.status_code}: {response.text.strip()[:200]}")
    raise DicomChainError("the witness's size changed twice during one request")


def publish_round(publisher: Publisher, tsa: str | None = None) -> Round:
    """Sign, gather, publish; with ``tsa``, the published checkpoint is timestamped (RFC 3161):
    a TSA that fails leaves it published without a token, and says so in the log."""
    cp, signed = publisher.checkpoint()
    result = Round(cp.size)
    lines = []
    for witness in publisher.witnesses():
        try:
            lines.append(ask(publisher, witness, cp, signed))
            result.cosigned_by.append(witness.name)
        except Exception as exc:  # a witness's failure costs its cosignature only, whatever it is
            result.failed[witness.name] = str(exc) or type(exc).__name__
            log.warning(
                "witness %s did not cosign size %d: %s", witness.name, cp.size, result.failed[witness.name]
            )
    result.published = publisher.publish(cp, signed, lines)
    if result.published is not None and tsa:
        try:
            token = request_timestamp(tsa, result.published.signed.encode("utf-8"))
            keep_timestamp(publisher.host, cp.size, token)
            result.published = dataclasses.replace(result.published, timestamp=token)
        except DicomChainError as exc:
            log.warning("checkpoint %d not timestamped: %s", cp.size, exc)
    return result


def fetch_checkpoint(institution: Institution, size: int) -> str | None:
    """The log's own signed checkpoint at ``size`` (``GET /log/checkpoint?size=``), or None when
    it cannot be had: what a witness asks before calling a failed proof a split view."""
    if not institution.log_url:
        return None
    try:
        with httpx.Client(verify=trust_for(institution), timeout=WITNESS_TIMEOUT_S) as client:
            response = client.get(f"{institution.log_url}/log/checkpoint", params={"size": size})
    except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
        log.warning("checkpoint of %s at %d not fetched: %s", institution.name, size, exc)
        return None
    return response.text if response.status_code == 200 else None
