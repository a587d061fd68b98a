"""A progress bar on stderr for ``progress=True`` (rich, imported only when asked for)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any


def wants_progress(progress: object) -> bool:
    """``True``: a bar when stderr is a terminal; ``"always"``: a bar even when it is not."""
    if progress is False or progress is None:
        return False
    if progress is True:
        return sys.stderr.isatty()
    if progress == "always":
        return True
    raise ValueError(f"progress must be True, False or 'always', not {progress!r}")


@contextlib.contextmanager
def bar(total: int | None, description: str) -> Iterator[Callable[[int], None]]:
    """A bar (items done, rate, elapsed, ETA); yields the function that advances it by n."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} items/s" if speed else "", style="progress.data.speed")

    console = Console(stderr=True, force_terminal=True if not sys.stderr.isatty() else None)
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda count: progress.advance(task, count)
