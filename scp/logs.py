"""Log set-up shared by serve and forward: our key=value lines, pynetdicom's only when they matter."""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# pynetdicom logs several INFO lines per C-STORE; our own lines already say one per association
# and one per instance, and formatting theirs cost measurable time per instance.
PYNETDICOM_LEVEL = logging.WARNING


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("pynetdicom").setLevel(PYNETDICOM_LEVEL)
