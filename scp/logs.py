"""Log set-up shared by serve and forward: our key=value lines, pynetdicom's only when they matter.

Every field of a line may carry what a peer sent (an AE title, a UID, an error naming a value), so
one formatter escapes control characters in the whole line, and marks each line of a traceback:
a newline in a UID cannot start a line that reads as a record of its own.
"""

from __future__ import annotations

import logging
import re

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# pynetdicom logs several INFO lines per C-STORE; our own lines already say one per association
# and one per instance, and formatting theirs cost measurable time per instance.
PYNETDICOM_LEVEL = logging.WARNING
# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: what a terminal or a
# log shipper may take for a line break or an escape sequence.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
TRACEBACK_MARK = "  | "  # before each line of a traceback: no record line starts so


def escape_controls(text: str) -> str:
    """``text`` on one line: each control character as its Python escape (\\n, \\x1b, \\u2028)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class EscapingFormatter(logging.Formatter):
    """Escapes control characters in every field of a record's line; indents tracebacks, whose
    line breaks are their own, so that none of their lines (an exception message quoting a
    peer's value among them) can pass for a record."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        return _marked(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _marked(super().formatStack(stack_info))


def _marked(text: str) -> str:
    return "\n".join(TRACEBACK_MARK + escape_controls(line) for line in text.split("\n"))


def configure_logging() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter(LOG_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("pynetdicom").setLevel(PYNETDICOM_LEVEL)
