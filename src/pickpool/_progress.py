"""Progress for ``progress=``: a rich bar in a terminal, in a notebook tqdm's widget (where
tqdm and ipywidgets are installed) or a text bar, plain lines in a log, or the caller's own
hook (a tqdm bar, a callback). rich and tqdm are imported only when asked for. A finished bar
stays, as tqdm's does."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

# In a log (not a terminal), a line at most this often, and one at the end.
LINE_EVERY = 5.0
# A notebook's text bar is redrawn at most this often, and once at the end.
DRAW_EVERY = 0.2
BAR_WIDTH = 30


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
    elif mode == "bar" and _in_notebook():
        with _notebook(total, describe) as advance:
            yield advance
    elif mode == "bar":
        with _rich(total, describe) as advance:
            yield advance
    else:
        update = getattr(mode, "update", None)
        hook: Callable[[int], Any] = update if callable(update) else mode  # type: ignore[assignment]
        yield hook


def _status(done: int, total: int | None, elapsed: float) -> str:
    """``12/400 items (3%), 40 items/s, elapsed 0.3 s, ~9.7 s left``."""
    rate = done / elapsed if elapsed > 0 else 0.0
    text = f"{done:,}/{total:,} items ({done / total:.0%})" if total else f"{done:,} items"
    text += f", {rate:,.0f} items/s, elapsed {elapsed:.1f} s"
    if total and rate > 0 and done < total:
        text += f", ~{(total - done) / rate:.1f} s left"
    return text


class _Count:
    """Items done, and when to show them: at most every ``every`` seconds, and at the end."""

    def __init__(self, every: float, show: Callable[[int, float], None]) -> None:
        self.began = self._last = time.perf_counter()
        self.done = 0
        self._every, self._show = every, show

    def advance(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self._last >= self._every:
            self._last = now
            self.show()

    def show(self) -> None:
        self._show(self.done, time.perf_counter() - self.began)


@contextlib.contextmanager
def _lines(total: int | None, describe: Callable[[], str]) -> Iterator[Callable[[int], None]]:
    def line(done: int, elapsed: float) -> None:
        print(f"{describe()}: {_status(done, total, elapsed)}", file=sys.stderr, flush=True)

    count = _Count(LINE_EVERY, line)
    try:
        yield count.advance
    finally:
        count.show()


@contextlib.contextmanager
def _notebook(total: int | None, describe: Callable[[], str]) -> Iterator[Callable[[int], None]]:
    """tqdm's widget where it can draw one; a text bar otherwise (rich's needs ipywidgets)."""
    try:
        import ipywidgets  # noqa: F401  (tqdm's widget needs it: without, it raises)
        from tqdm.notebook import tqdm
    except ImportError:
        with _text(total, describe) as advance:
            yield advance
        return
    label = describe()
    with tqdm(total=total, desc=label, unit=" items") as widget:

        def advance(count: int) -> None:
            nonlocal label
            if (now := describe()) != label:
                label = now
                widget.set_description(label, refresh=False)
            widget.update(count)

        yield advance


@contextlib.contextmanager
def _text(total: int | None, describe: Callable[[], str]) -> Iterator[Callable[[int], None]]:
    """A bar of characters, redrawn in place (a carriage return): notebooks show it as it
    moves, and the finished one stays."""

    def draw(done: int, elapsed: float, end: str = "") -> None:
        shown = ""
        if total:
            filled = min(BAR_WIDTH, BAR_WIDTH * done // total)
            shown = f"|{'#' * filled}{' ' * (BAR_WIDTH - filled)}| "
        sys.stderr.write(f"\r{describe()} {shown}{_status(done, total, elapsed)}{end}")
        sys.stderr.flush()

    count = _Count(DRAW_EVERY, draw)
    count.show()
    try:
        yield count.advance
    finally:
        draw(count.done, time.perf_counter() - count.began, "\n")


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
