"""``python -m pickpool.lab``: every built-in workload under every model, timed side by side.

A quick demo (about 15 s on 2 cores) that checks the seeds' advice on this machine: processes
for pure-Python CPU work, threads for C code that releases the GIL and for blocking waits,
asyncio for many waits.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import pickpool
from pickpool import _machine
from pickpool._api import Model
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


def main() -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 120)
    cores = _machine.cores()
    console.print(
        f"[bold]pickpool lab[/bold]: {cores} usable cores, Python {sys.version.split()[0]}"
    )
    table = Table(title="seconds per batch (speedup vs serial)")
    table.add_column("workload")
    for model in MODELS:
        table.add_column(model, justify="right")
    table.add_column("fastest")
    verdicts = []
    for name, fn, n, advised, why in WORKLOADS:
        times = {model: _time(fn, n, model) for model in MODELS}
        best = min(times, key=lambda m: times[m])
        cells = [f"{times[m]:.2f} ({times['serial'] / times[m]:.1f}x)" for m in MODELS]
        table.add_row(f"{name} x{n}", *cells, best)
        # The advice held if the advised model is within 15% of the fastest.
        held = times[advised] <= 1.15 * times[best]
        verdicts.append(
            f"{'held' if held else 'did NOT hold'}: {name}: seeds say {advised} ({why}); "
            f"{advised} took {times[advised]:.2f} s, fastest was {best} at {times[best]:.2f} s"
        )
    console.print(table)
    for line in verdicts:
        console.print(" - " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
