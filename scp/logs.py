"""Log set-up shared by serve and forward: our key=value lines, the libraries' only when they matter.

Every field of a line may carry what a peer sent (an AE title, a UID, an error naming a value), so
one formatter escapes control characters in the whole line, and marks each line of a traceback:
a newline in a UID cannot start a line that reads as a record of its own. ``--log-format json``
writes one JSON object per record instead, whose encoding escapes them alike.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
from datetime import UTC, datetime
from typing import Any

from dicom_chain.config import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# pynetdicom logs several INFO lines per C-STORE; our own lines already say one per association
# and one per instance, and formatting theirs cost measurable time per instance.
PYNETDICOM_LEVEL = logging.WARNING
# Alembic logs a dozen INFO lines when a ledger is created or migrated (plugins, each revision);
# the schema version is the node's business, not the operator's. Shown with --log-level debug.
QUIET_LIBRARIES = {"pynetdicom": PYNETDICOM_LEVEL, "alembic": logging.WARNING}
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


# The attributes every LogRecord has; any other was given with ``extra=`` and is a field of its own.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# ``key=%s`` in a message's format (``status=0x%04X`` too): the argument it takes is the field ``key``.
_FIELD = re.compile(
    r"(?:(?P<key>\w+)=(?P<prefix>[^\s%=]*))?(?P<spec>%[-#0 +]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa%])"
)


def message_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``key=value`` pairs of a record, read from its format and arguments, not from the text
    (a value may hold spaces or an ``=``): ``"c-store calling_ae=%s sop=%s"`` -> calling_ae, sop.
    A number stays a number; ``%r`` gives the value itself, not its quoted form."""
    args = record.args if isinstance(record.args, tuple) else ()
    fields: dict[str, Any] = {}
    index = 0
    for match in _FIELD.finditer(str(record.msg)):
        key, prefix, spec = match.group("key", "prefix", "spec")
        if spec == "%%":
            continue
        if index >= len(args):
            break
        value = args[index]
        index += 1
        if not key:
            continue
        if prefix or spec not in ("%s", "%d", "%r"):
            try:
                fields[key] = prefix + spec % (value,)
            except (TypeError, ValueError):
                fields[key] = f"{prefix}{value}"
        elif isinstance(value, int | float) and not isinstance(value, bool):
            fields[key] = value
        else:
            fields[key] = str(value)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, message, then the record's
    fields: its ``key=%s`` pairs and whatever was passed with ``extra=``; a traceback as ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = message_fields(record)
        fields.update((k, v) for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES)
        for key, value in fields.items():
            entry.setdefault(key, value)  # a field never hides ts, level, logger or message
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)  # ensure_ascii: no control character stays raw


def configure_logging(settings: Settings | None = None) -> None:
    """Where, how and how much serve and its forward process log (the same settings reach both)."""
    settings = settings or Settings()
    level = getattr(logging, settings.log_level.upper())
    for name, quiet in QUIET_LIBRARIES.items():
        logging.getLogger(name).setLevel(logging.NOTSET if level <= logging.DEBUG else max(level, quiet))
    root = logging.getLogger()
    if root.handlers:  # set up already (a test runner's capture, or serve's own in-process use)
        return
    if settings.log_file is not None:
        settings.log_file.parent.mkdir(parents=True, exist_ok=True)
        # Watched: when logrotate moves the file away, the next line reopens the path, so no
        # copytruncate and no signal to the gateway are needed. Appends: several processes share it.
        handler: logging.Handler = logging.handlers.WatchedFileHandler(settings.log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else EscapingFormatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # a library's warning is a log line in the chosen format, not raw stderr
