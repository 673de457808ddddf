"""Client of an RFC 3161 Time-Stamping Authority: a checkpoint's bytes in, the TSA's token out.

The request carries only a digest of the bytes; what the token means, and how it is checked
offline, is dicom_chain/tlog/timestamps.py's.
"""

from __future__ import annotations

import os
import secrets
import ssl

import httpx

from dicom_chain.errors import TimestampError
from dicom_chain.tlog.timestamps import request_for, token_from_response

# A TSA signs one digest and answers in well under a second; public ones slow down under load.
# Past 10 s it is in trouble, and a checkpoint round should not wait on it any longer.
TSA_TIMEOUT_S = 10.0
QUERY_TYPE = "application/timestamp-query"  # RFC 3161 section 3.4


def request_timestamp(
    url: str, data: bytes, *, timeout_s: float = TSA_TIMEOUT_S, verify: bool | str = True
) -> bytes:
    """The TSA's token for ``data``, checked to answer this very request (a fresh random nonce):
    a replayed or cached response is refused. ``verify``: as httpx's, a string being a CA file
    or folder for a TSA whose certificate no public CA signs."""
    nonce = secrets.randbits(64)
    try:
        with httpx.Client(timeout=timeout_s, verify=_trust(verify)) as client:
            reply = client.post(url, content=request_for(data, nonce), headers={"Content-Type": QUERY_TYPE})
            reply.raise_for_status()
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:  # OSError: an unreadable CA file
        raise TimestampError(f"TSA {url}: {exc}") from exc
    try:
        return token_from_response(reply.content, nonce)
    except TimestampError as exc:
        raise TimestampError(f"TSA {url}: {exc}") from exc


def _trust(verify: bool | str) -> bool | ssl.SSLContext:
    """httpx 0.28 deprecates ``verify=<path>``: the CA file or folder becomes a context here."""
    if not isinstance(verify, str):
        return verify
    if os.path.isdir(verify):
        return ssl.create_default_context(capath=verify)
    return ssl.create_default_context(cafile=verify)
