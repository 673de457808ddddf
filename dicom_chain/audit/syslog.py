"""Syslog framing of audit messages (RFC 5424, as IHE ATNA sends them), pure: bytes in, bytes out.

Over UDP each message is one datagram (RFC 5426); over TCP and TLS each is prefixed by its
length in octets (RFC 6587 octet counting, as RFC 5425 requires for TLS).
"""

from __future__ import annotations

FACILITY_AUTHPRIV = 10  # security/authorization messages (RFC 5424 6.2.1)
SEVERITY_NOTICE = 5  # normal but significant
SEVERITY_WARNING = 4  # what we use for failures and security alerts
ATNA_MSGID = "IHE+RFC-3881"  # MSGID IHE ITI TF-2a 3.20.7.1 gives audit messages
APP_NAME = "dicom-chain"
BOM = b"\xef\xbb\xbf"  # RFC 5424 6.4: a UTF-8 MSG starts with the byte order mark
NILVALUE = "-"
HOSTNAME_MAX = 255  # RFC 5424 6.2.4


def _field(text: str, limit: int) -> str:
    """Header fields are printable US-ASCII without spaces (RFC 5424 6)."""
    clean = "".join(c for c in text if 33 <= ord(c) <= 126)[:limit]
    return clean or NILVALUE


def message(payload: bytes, *, timestamp: str, hostname: str, procid: str, warning: bool = False) -> bytes:
    """One RFC 5424 message: header, no structured data, the payload (an AuditMessage) as MSG."""
    pri = FACILITY_AUTHPRIV * 8 + (SEVERITY_WARNING if warning else SEVERITY_NOTICE)
    host, proc = _field(hostname, HOSTNAME_MAX), _field(procid, 128)
    header = f"<{pri}>1 {timestamp} {host} {APP_NAME} {proc} {ATNA_MSGID} -"
    return header.encode("ascii") + b" " + BOM + payload


def octet_counted(msg: bytes) -> bytes:
    return str(len(msg)).encode("ascii") + b" " + msg


def parse(msg: bytes) -> tuple[dict[str, str], bytes]:
    """(header fields, payload) of a message ``message`` made: for tests and for receivers."""
    head, _, rest = msg.partition(b" -" + b" " + BOM)
    pri_version, timestamp, hostname, app, procid, msgid = head.decode("ascii").split(" ")
    pri = int(pri_version[1 : pri_version.index(">")])
    fields = {
        "pri": str(pri),
        "timestamp": timestamp,
        "hostname": hostname,
        "app": app,
        "procid": procid,
        "msgid": msgid,
    }
    return fields, rest
