"""Who did something, as the audit trail names them: here, the person running a command."""

from __future__ import annotations

import getpass
import os
import socket


def local_user() -> str:
    """``user@host`` of this process: the actor of ingest, export and verify runs.

    A container may run as a uid with no passwd entry; the uid then stands for the user."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"
