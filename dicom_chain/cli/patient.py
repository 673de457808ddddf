"""The ``patient`` command group: what concerns one patient. Its commands live with their topic
(``research`` in cli/research.py) and add themselves here."""

from __future__ import annotations

import click


@click.group()
def patient() -> None:
    """Commands about one patient (research opt-in, ...)."""
