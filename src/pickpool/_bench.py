"""``pickpool.bench``: the same items under several models and worker counts, side by side."""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _chunks
from ._backends import LOOP, MODELS, traits
from ._options import all_models, default_workers, positive_int
from ._task import is_async_callable


@dataclass(frozen=True, slots=True)
class BenchRow:
    """One timed run: ``model`` with ``workers`` and ``chunksize`` took ``seconds``."""

    model: str
    workers: int
    chunksize: int
    seconds: float
    speedup: float  # serial's seconds over these
    items: int  # how many items the run went through
    chose: str = ""  # under auto, what it ran on: "threads x32" (re-decisions: "a, then b")

    @property
    def label(self) -> str:
        """The model, and under auto what it chose: ``"auto (threads x32)"``."""
        return f"{self.model} ({self.chose})" if self.chose else self.model

    @property
    def throughput(self) -> float:
        """Items per second."""
        return self.items / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class BenchResult:
    """What :func:`pickpool.bench` measured: one row per model and worker count.

    Example::

        >>> result = pickpool.bench(lab.crunch, range(40))
        >>> result.best.model
        'processes'
        >>> print(result.to_markdown())
    """

    rows: tuple[BenchRow, ...]
    items: int

    @property
    def best(self) -> BenchRow:
        """The fastest row."""
        return min(self.rows, key=lambda r: r.seconds)

    def to_markdown(self) -> str:
        """The rows as a Markdown table, fastest marked."""
        best = self.best
        lines = [
            "| model | workers | chunksize | seconds | items/s | speedup vs serial |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            mark = " (fastest)" if r is best else ""
            lines.append(
                f"| {r.label}{mark} | {r.workers} | {r.chunksize} | {r.seconds:.3f} | "
                f"{r.throughput:,.0f} | {r.speedup:.2f}x |"
            )
        return "\n".join(lines)

    def plot(self, path: str | Path, *, title: str | None = None) -> Path:
        """Draw the result into a PNG: throughput against workers per model when several
        worker counts were run, else each model's speedup; returns the path.

        Needs matplotlib (``pip install 'pickpool[plot]'``).
        """
        from ._show import plot_bench

        return plot_bench(self, Path(path), title=title)


def bench(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    models: Sequence[str] | None = None,
    workers: Sequence[int] | None = None,
) -> BenchResult:
    """Run ``fn`` over the same ``items`` under each model (and each worker count); time each.

    ``fn`` is called on every item once per run (mind side effects); the items are read into a
    list first. ``models`` defaults to every fixed model; ``workers`` to each model's default
    count. Serial runs once, whatever ``workers`` says, and is the baseline of the speedups.

    Example::

        >>> result = pickpool.bench(lab.digest, range(40), workers=[1, 2, 4])
        >>> result.plot("digest.png")  # throughput vs workers: threads scale, GIL released
    """
    from . import _api

    data = builtins.list(items)
    if not data:
        raise ValueError("bench needs at least one item")
    chosen = builtins.list(models) if models is not None else builtins.list(MODELS)
    for model in chosen:
        if model not in all_models():
            raise ValueError(f"unknown model {model!r}; use some of {', '.join(all_models())}")
    counts = [positive_int("workers", w) for w in workers] if workers else [None]
    is_async = is_async_callable(fn)

    def timed(model: str, count: int | None) -> tuple[float, str]:
        start = time.perf_counter()
        _, report = _api.map(fn, data, model=model, workers=count, report=True)  # type: ignore[call-overload]
        seconds = time.perf_counter() - start
        chose = ", then ".join(f"{a.model} x{a.workers}" for a in report.decisions)
        return seconds, chose

    serial, _ = timed(LOOP, None)
    runs: list[tuple[str, int, int, float, str]] = []
    for model in chosen:
        if model == LOOP:
            runs.append((LOOP, 1, 1, serial, ""))
            continue
        for count in counts:
            n = count or (0 if model == "auto" else default_workers(model, is_async=is_async))
            chunk = (
                0
                if model == "auto"
                else _chunks.first(batched=traits(model).batched, workers=n, length=len(data))
            )
            runs.append((model, n, chunk, *timed(model, count)))
    rows = tuple(
        BenchRow(
            model, n, chunk, seconds, serial / seconds if seconds > 0 else 0.0, len(data), chose
        )
        for model, n, chunk, seconds, chose in runs
    )
    return BenchResult(rows, len(data))
