"""What the commands show besides their output: progress on stderr (rich), never on stdout."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

PROGRESS_MIN_ITEMS = 20  # below this a bar only flickers

stderr = Console(stderr=True)


@contextmanager
def progress_bar(total: int, label: str, enabled: bool | None) -> Iterator[Callable[[int], None]]:
    """A bar on stderr for long runs: by default only on a terminal, ``enabled=True`` forces it."""
    if enabled is False or (enabled is None and not stderr.is_terminal) or total < PROGRESS_MIN_ITEMS:
        yield lambda _n: None
        return
    console = stderr if stderr.is_terminal else Console(stderr=True, force_terminal=True)
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)
