"""RFC 3161 trusted timestamps on checkpoints.

What is timestamped: a checkpoint's signed note (tlog/checkpoint.py) as UTF-8 bytes, signature
lines included, by a Time-Stamping Authority (TSA) outside the node. Why: the log's own signature
dates nothing, as the node can sign any history at any time. A token is a third party's word that
these exact bytes existed at its time; since a checkpoint commits to every entry up to its size, the
log cannot back-date a rewritten history to before a timestamped checkpoint: the rewritten tree has
another root, which no token of that time covers.

Pure: the request and response bytes travel elsewhere (web/tsa.py); anyone holding the token, the
note and the TSA's certificate checks it offline here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

import rfc3161ng
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import rsa
from pyasn1.codec.der import decoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import univ
from pyasn1_modules import rfc2315

from dicom_chain.errors import TimestampError

HASH = "sha256"
_GRANTED = (0, 1)  # PKIStatus granted, grantedWithMods: the only statuses that carry a token
# What pyasn1 raises on malformed input, and rfc3161ng on a token that does not hold (mostly ValueError).
_UNREADABLE = (PyAsn1Error, ValueError, TypeError, KeyError, IndexError, AttributeError)


@dataclass(frozen=True)
class Timestamp:
    time: datetime  # the TSA's genTime, in UTC
    serial: int  # unique among the tokens of one TSA
    tsa: str  # the subject of the TSA certificate that checked it (RFC 4514)


def request_for(data: bytes, nonce: int | None = None) -> bytes:
    """certReq set: the token then carries the TSA's certificate, so that standard tools
    (``openssl ts -verify -CAfile``) check a stored token without being handed the certificate."""
    # The digest, not the data: given data, make_timestamp_request hashes it with SHA-1 whatever
    # ``hashname`` says, and refuses empty data.
    request = rfc3161ng.make_timestamp_request(
        digest=hashlib.sha256(data).digest(), hashname=HASH, include_tsa_certificate=True, nonce=nonce
    )
    return rfc3161ng.encode_timestamp_request(request)


def token_from_response(response: bytes, nonce: int | None = None) -> bytes:
    """The token byte for byte as the TSA encoded it. ``nonce``: the request's; a token without
    it, or with another, answers some other request (a replay) and is refused."""
    try:
        decoded = rfc3161ng.decode_timestamp_response(response)
        # Not rfc3161ng's encoder.encode(decoded token) (as RemoteTimestamper does): re-encoding
        # DER-sorts the token's SET OFs, so a token carrying a certificate chain comes back with
        # its certificates in another order, no longer the bytes the TSA sent. Kept as sent.
        parts, _ = decoder.decode(response, asn1Spec=univ.SequenceOf(componentType=univ.Any()))
        status = decoded.status
        granted = int(status["status"]) in _GRANTED
    except _UNREADABLE as exc:
        raise TimestampError(f"not an RFC 3161 TimeStampResp: {_why(exc)}") from exc
    if not granted:
        raise TimestampError(f"the TSA refused the request: {_status_text(status)}")
    if len(parts) != 2:
        raise TimestampError("the TSA granted the request but sent no token")
    token = bytes(parts[1])
    _, info = _decoded(token)
    if nonce is not None and (not info["nonce"].isValue or int(info["nonce"]) != nonce):
        raise TimestampError("the token's nonce is not the request's: it answers another request")
    return token


def check_token(token: bytes, data: bytes, tsa_certificate_pem: bytes) -> Timestamp:
    """Offline: ``token`` is a timestamp of exactly ``data``, signed with the key of the TSA
    certificate the caller trusts (whatever certificate the token itself carries)."""
    try:
        certificate = x509.load_pem_x509_certificate(tsa_certificate_pem)
    except ValueError as exc:
        raise TimestampError(f"the TSA certificate is not a PEM certificate: {exc}") from exc
    tsa = certificate.subject.rfc4514_string()
    token_asn1, info = _decoded(token)
    imprint = info.message_imprint
    # Checked here as well as in check_timestamp, to say which of data and signature is wrong.
    if imprint.hash_algorithm["algorithm"] != rfc3161ng.id_sha256:
        raise TimestampError(f"the token's imprint is not SHA-256 but {imprint.hash_algorithm['algorithm']}")
    if bytes(imprint.hashed_message) != hashlib.sha256(data).digest():
        raise TimestampError("the token timestamps other bytes than these")
    # check_timestamp verifies RSA PKCS#1 v1.5 signatures only (on an EC key it raises TypeError),
    # and over signed attributes only (without them it fails on a name it never bound); RFC 5652
    # 5.3 requires them for a TSTInfo.
    if not isinstance(certificate.public_key(), rsa.RSAPublicKey):
        raise TimestampError(f"only RSA TSA keys are supported; {tsa} has another kind")
    signers = token_asn1.content["signerInfos"]
    if not len(signers) or not len(signers[0]["authenticatedAttributes"]):
        raise TimestampError("the token has no signer with signed attributes")
    try:
        rfc3161ng.check_timestamp(
            token_asn1, certificate=tsa_certificate_pem, digest=hashlib.sha256(data).digest(), hashname=HASH
        )
        time = rfc3161ng.get_timestamp(token_asn1, naive=True).replace(tzinfo=UTC)
        serial = int(info["serialNumber"])
    except InvalidSignature as exc:
        raise TimestampError(
            f"the token's signature does not verify with the certificate of {tsa}: another TSA's token, "
            "or an altered one"
        ) from exc
    except _UNREADABLE as exc:
        raise TimestampError(f"the token is malformed or was altered: {_why(exc)}") from exc
    return Timestamp(time=time, serial=serial, tsa=tsa)


def _decoded(token: bytes) -> tuple[rfc3161ng.TimeStampToken, rfc3161ng.TSTInfo]:
    """The token and its TSTInfo, decoded (rfc3161ng has no helper for a token alone)."""
    try:
        token_asn1, rest = decoder.decode(token, asn1Spec=rfc3161ng.TimeStampToken())
        info = token_asn1.tst_info
    except _UNREADABLE as exc:
        raise TimestampError(f"not an RFC 3161 TimeStampToken: {_why(exc)}") from exc
    if token_asn1["contentType"] != rfc2315.signedData:
        raise TimestampError(f"not an RFC 3161 TimeStampToken: content type {token_asn1['contentType']}")
    if rest:
        raise TimestampError(f"{len(rest)} bytes after the TimeStampToken")
    return token_asn1, info


def _status_text(status: rfc3161ng.PKIStatusInfo) -> str:
    """The status's name, with the TSA's own text and failure reasons when it gives them."""
    words = [status["status"].prettyPrint()]
    if status["statusString"].isValue:
        words += [str(text) for text in status["statusString"]]
    failure = status["failInfo"]
    if failure.isValue:
        words += [name for name, bit in failure.namedValues.items() if bit < len(failure) and failure[bit]]
    return "; ".join(words)


def _why(exc: Exception) -> str:
    return str(exc) or type(exc).__name__  # pyasn1 raises some errors without a message
