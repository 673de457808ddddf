"""Log lines of serve and forward: what a peer sends cannot forge a line."""

from __future__ import annotations

import subprocess
import sys

FORGED = "1.2.3\n2026-01-01 00:00:00,000 ERROR scp.handlers forged line\x1b[2J\u2028x"
SCRIPT = """
import logging, sys
from scp.logs import configure_logging
configure_logging()
log = logging.getLogger("scp.handlers")
log.info("c-store calling_ae=%s sop=%s", "MOD\\r\\nX", sys.argv[1])
try:
    raise ValueError(sys.argv[1])
except ValueError:
    log.exception("failed sop=%s", sys.argv[1])
"""


def test_control_characters_in_any_field_stay_on_their_line():
    """A UID with a newline (and an escape sequence) logged as serve logs it: two records, two
    record lines; the traceback's lines are marked, the forged text is escaped everywhere."""
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, FORGED], capture_output=True, text=True, check=True, timeout=60
    )
    lines = result.stderr.splitlines()
    records = [line for line in lines if not line.startswith("  | ")]
    assert len(records) == 2, lines
    assert records[0].endswith("c-store calling_ae=MOD\\r\\nX sop=1.2.3\\n2026-01-01 00:00:00,000 ERROR "
                               "scp.handlers forged line\\x1b[2J\\u2028x")  # fmt: skip
    assert all("\x1b" not in line and "\u2028" not in line for line in lines)
    assert "  | ValueError: 1.2.3" in lines  # a traceback's line breaks are its own, each marked
    assert "  | 2026-01-01 00:00:00,000 ERROR scp.handlers forged line\\x1b[2J\\u2028x" in lines
