"""Exit codes, and the one place a library error becomes a line on stderr and a code."""

from __future__ import annotations

from typing import Any

import click

from dicom_chain.errors import ConfigError, DicomChainError

EXIT_OK = 0  # everything holds
EXIT_BROKEN = 1  # something is broken, or the command failed at run time
EXIT_USAGE = 2  # the command line or the configuration is wrong (as click's own usage errors)
EXIT_UNCHECKED = 3  # verify: intact, but no signer key was pinned, so who signed was not checked


class CommandFailed(click.ClickException):
    """A library error as click shows it: ``Error: <one line>`` on stderr, then exit."""

    def __init__(self, error: DicomChainError) -> None:
        super().__init__(" ".join(str(error).split()) or type(error).__name__)
        self.exit_code = EXIT_USAGE if isinstance(error, ConfigError) else EXIT_BROKEN


class ChainGroup(click.Group):
    """The ``dicom-chain`` group: every command below it runs inside ``invoke``, so a
    DicomChainError from any of them is turned into one line and an exit code here, once."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DicomChainError as exc:
            raise CommandFailed(exc) from exc
