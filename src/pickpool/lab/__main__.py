"""``python -m pickpool.lab``: every built-in workload under every model, timed side by side.

A quick demo (about 15 s on 2 cores) that checks the seeds' advice on this machine: processes
for pure-Python CPU work, threads for C code that releases the GIL and for blocking waits,
asyncio for many waits.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import pickpool
from pickpool import _machine
from pickpool._advise import Advice
from pickpool._api import Model, _Run
from pickpool._backends import MODELS, ModelName
from pickpool.lab import async_wait, blocking_wait, crunch, digest

# (name, function, items, the model the seeds advise, why)
WORKLOADS: list[tuple[str, Callable[[int], Any], int, ModelName, str]] = [
    ("pure-Python CPU", crunch, 40, "processes", "the GIL lets one thread compute at a time"),
    ("hashlib (releases GIL)", digest, 40, "threads", "C code releases the GIL"),
    ("blocking wait 20 ms", blocking_wait, 200, "threads", "threads overlap blocking waits"),
    ("async wait 20 ms", async_wait, 200, "asyncio", "one loop overlaps many waits"),
]


def _time(fn: Callable[[int], Any], n: int, model: Model) -> float:
    start = time.perf_counter()
    pickpool.map(fn, range(n), model=model)
    return time.perf_counter() - start


def run_auto(fn: Callable[[Any], Any], items: Sequence[Any]) -> tuple[float, Advice | None]:
    """Seconds of ``map(fn, items, model="auto")``, probe included, and the advice it followed.

    (The advice is read off the run's private state: ``map`` itself returns only results.)
    """
    start = time.perf_counter()
    run = _Run(
        fn, items, model="auto", workers=None, chunksize=None, ordered=True, timeout=None,
        retries=0, on_error="raise", progress=False,
    )  # fmt: skip
    results = list(run.iterate())
    seconds = time.perf_counter() - start
    assert len(results) == len(items)
    return seconds, run.auto.advice if run.auto is not None else None


def main() -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)
    cores = _machine.cores()
    console.print(
        f"[bold]pickpool lab[/bold]: {cores} usable cores, Python {sys.version.split()[0]}"
    )
    table = Table(
        title="seconds per batch (speedup vs serial); auto measures the first items, then "
        "runs the rest on what it chose"
    )
    table.add_column("workload")
    for model in MODELS:
        table.add_column(model, justify="right")
    table.add_column("fastest")
    table.add_column("auto", justify="right")
    table.add_column("auto chose")
    verdicts = []
    for name, fn, n, advised, why in WORKLOADS:
        times = {model: _time(fn, n, model) for model in MODELS}
        best = min(times, key=lambda m: times[m])
        auto, advice = run_auto(fn, range(n))
        cells = [f"{times[m]:.2f} ({times['serial'] / times[m]:.1f}x)" for m in MODELS]
        chose = f"{advice.model} x{advice.workers}, {advice.kind}" if advice else "(all probed)"
        auto_cell = f"{auto:.2f} ({times['serial'] / auto:.1f}x)"
        table.add_row(f"{name} x{n}", *cells, best, auto_cell, chose)
        # The advice held if the advised model is within 15% of the fastest.
        held = times[advised] <= 1.15 * times[best]
        verdicts.append(
            f"{'held' if held else 'did NOT hold'}: {name}: seeds say {advised} ({why}); "
            f"{advised} took {times[advised]:.2f} s, fastest was {best} at {times[best]:.2f} s; "
            f"auto (its probe included) took {auto:.2f} s"
        )
    console.print(table)
    for line in verdicts:
        console.print(" - " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
