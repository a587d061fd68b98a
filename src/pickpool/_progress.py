"""Progress for ``progress=``: a rich bar in a terminal or a notebook, plain lines in a log,
or the caller's own hook (a tqdm bar, a callback). rich is imported only when asked for."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

# In a log (not a terminal), a line at most this often, and one at the end.
LINE_EVERY = 5.0


def wants_progress(progress: object) -> object:
    """What ``progress`` asks for: ``None`` (nothing), ``"bar"``, ``"lines"``, or a hook.

    ``True``: a bar when stderr is a terminal (or a notebook); ``"always"``: a bar there,
    plain lines elsewhere (a log, CI). A callable is called with how many more items are done;
    an object with ``update(n)`` (a ``tqdm`` bar) is updated.
    """
    if progress is False or progress is None:
        return None
    if progress is True or progress == "always":
        if sys.stderr.isatty() or _in_notebook():
            return "bar"
        return "lines" if progress == "always" else None
    if callable(getattr(progress, "update", None)) or callable(progress):
        return progress
    raise ValueError(
        f"progress must be True, False, 'always', a callable taking a count, or a tqdm bar "
        f"(anything with .update(n)), not {progress!r}"
    )


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None)
    return get is not None and type(get()).__name__ == "ZMQInteractiveShell"


@contextlib.contextmanager
def bar(
    mode: object, total: int | None, describe: Callable[[], str]
) -> Iterator[Callable[[int], None]]:
    """Yields the function that advances the progress by n. ``describe()``: the label (it
    names the model, which auto settles on after its probe)."""
    if mode == "lines":
        with _lines(total, describe) as advance:
            yield advance
    elif mode == "bar":
        with _rich(total, describe) as advance:
            yield advance
    else:
        update = getattr(mode, "update", None)
        hook: Callable[[int], Any] = update if callable(update) else mode  # type: ignore[assignment]
        yield hook


@contextlib.contextmanager
def _lines(total: int | None, describe: Callable[[], str]) -> Iterator[Callable[[int], None]]:
    began = last = time.perf_counter()
    done = 0

    def line() -> None:
        elapsed = time.perf_counter() - began
        rate = done / elapsed if elapsed > 0 else 0.0
        text = f"{describe()}: {done:,}"
        if total:
            text += f"/{total:,} items ({done / total:.0%})"
        else:
            text += " items"
        text += f", {rate:,.0f} items/s, elapsed {elapsed:.1f} s"
        if total and rate > 0 and done < total:
            text += f", ~{(total - done) / rate:.1f} s left"
        print(text, file=sys.stderr, flush=True)

    def advance(count: int) -> None:
        nonlocal done, last
        done += count
        now = time.perf_counter()
        if now - last >= LINE_EVERY:
            last = now
            line()

    try:
        yield advance
    finally:
        line()


@contextlib.contextmanager
def _rich(total: int | None, describe: Callable[[], str]) -> Iterator[Callable[[int], None]]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TaskProgressColumn,
        TextColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} items/s" if speed else "", style="progress.data.speed")

    class Elapsed(ProgressColumn):
        def render(self, task: Any) -> Text:
            elapsed = task.finished_time if task.finished else task.elapsed
            return Text(f"elapsed {elapsed or 0:.1f} s", style="progress.elapsed")

    class Remaining(ProgressColumn):
        def render(self, task: Any) -> Text:
            left = task.time_remaining
            return Text("" if left is None else f"~{left:.1f} s left", style="progress.remaining")

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        Rate(),
        Elapsed(),
        Remaining(),
        console=Console(stderr=True),
    ) as progress:
        label = describe()
        task = progress.add_task(label, total=total)

        def advance(count: int) -> None:
            nonlocal label
            now = describe()
            if now != label:
                label = now
                progress.update(task, description=label)
            progress.advance(task, count)

        yield advance
