"""``python -m pickpool.lab`` (or ``pickpool demo``): the usual advice, measured here.

Each built-in workload runs under every model and under ``model="auto"``; a table shows the
seconds and speedups, one line per workload says whether the usual advice held on this
machine, and a plot shows the speedups. ``--quick`` takes well under a minute on 2 cores.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pickpool
from pickpool import _machine, lab
from pickpool._advise import Advice
from pickpool._api import Model
from pickpool._backends import MODELS, ModelName
from pickpool._timing import BUSY_SHARE, waiting_for_a_core

# The usual advice held where the model it names took at most this times the fastest one's
# time; on a busy machine, within CLOSE, a difference it cannot tell from the load.
HELD = 1.15
CLOSE = 1.5


@dataclass(frozen=True)
class Workload:
    name: str
    advice_says: ModelName
    why: str
    quick: int  # items in the quick demo
    full: int  # items in the full demo
    # Yields the function to run: a context, so that a workload can start a server.
    setup: Callable[[], contextlib.AbstractContextManager[Callable[[Any], Any]]]


@contextlib.contextmanager
def _plain(fn: Callable[[Any], Any]) -> Iterator[Callable[[Any], Any]]:
    yield fn


@contextlib.contextmanager
def _http(fetch: Callable[[str, int], Any]) -> Iterator[Callable[[Any], Any]]:
    with lab.http_server(lab.WAIT_SECONDS) as url:
        yield functools.partial(fetch, url)


WORKLOADS: list[Workload] = [
    Workload(
        "pure-Python CPU", "processes", "the GIL lets one thread compute at a time", 40, 160,
        lambda: _plain(lab.crunch),
    ),
    Workload(
        "hashlib (releases GIL)", "threads", "C code releases the GIL", 40, 200,
        lambda: _plain(lab.digest),
    ),
    Workload(
        "HTTP GET, blocking client", "threads", "threads overlap blocking waits", 200, 1000,
        lambda: _http(lab.http_get),
    ),
    Workload(
        "HTTP GET, async client", "asyncio", "one loop overlaps many waits", 200, 1000,
        lambda: _http(lab.ahttp_get),
    ),
]  # fmt: skip


def _time(fn: Callable[[Any], Any], n: int, model: Model) -> float:
    start = time.perf_counter()
    pickpool.map(fn, range(n), model=model)
    return time.perf_counter() - start


def run_auto(fn: Callable[[Any], Any], items: Sequence[Any]) -> tuple[float, Advice | None]:
    """Seconds of ``map(fn, items, model="auto")``, probe included, and the advice it followed
    (its latest decision, from the run's :class:`~pickpool.Report`)."""
    start = time.perf_counter()
    results, report = pickpool.map(fn, items, model="auto", report=True)
    seconds = time.perf_counter() - start
    assert len(results) == len(items)
    return seconds, report.decisions[-1] if report.decisions else None


def _start_workers(cores: int) -> None:
    """Start the worker processes before any timing. A program pays for its first worker
    processes once (a fork server and its workers: ~0.3 s on 2 cores); untimed here, every
    processes run and auto after it meet the same warm workers, as later calls in a program do."""
    pickpool.map(abs, range(4 * cores), model="processes", workers=cores)


def _measure(w: Workload, n: int) -> tuple[dict[str, float], Advice | None]:
    """Seconds of ``n`` items under each model and auto, and auto's advice. Where the usual
    advice missed, its model and the fastest are timed again, the better time of each kept
    (a busy moment, a cold cache)."""
    with w.setup() as fn:
        times: dict[str, float] = {model: _time(fn, n, model) for model in MODELS}
        times["auto"], advice = run_auto(fn, range(n))
        best = min(MODELS, key=lambda m: times[m])
        if times[w.advice_says] > HELD * times[best]:
            for model in {w.advice_says, best}:
                times[model] = min(times[model], _time(fn, n, model))
    return times, advice


def _verdict(w: Workload, times: dict[str, float], best: str, busy: float) -> str:
    """Whether the usual advice held: its model within 15% of the fastest (on a busy machine,
    a miss within 1.5x is too close to tell)."""
    held = times[w.advice_says] <= HELD * times[best]
    said = "held" if held else "did NOT hold"
    if not held and busy > BUSY_SHARE and times[w.advice_says] <= CLOSE * times[best]:
        said = "too close to tell on this busy machine"
    return (
        f"{said}: {w.name}: the usual advice says {w.advice_says} ({w.why}); "
        f"{w.advice_says} took {times[w.advice_says]:.2f} s, fastest was {best} at "
        f"{times[best]:.2f} s; auto (its probe included) took {times['auto']:.2f} s"
    )


def main(
    *, quick: bool = False, plot: str | Path | None = None, workloads: Sequence[Workload] = ()
) -> int:
    """Run the demo; print the table and verdicts to stdout; draw ``plot`` if given."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)
    cores = _machine.cores()
    console.print(
        f"[bold]pickpool demo[/bold]{' (quick)' if quick else ''}: {cores} usable cores, "
        f"Python {sys.version.split()[0]}, GIL {'on' if _machine.gil_enabled() else 'off'}"
    )
    table = Table(
        title="seconds per batch (speedup vs serial), worker processes started before timing; "
        "auto's probe of the first items included"
    )
    table.add_column("workload")
    for model in (*MODELS, "auto"):
        table.add_column(model, justify="right")
    table.add_column("fastest")
    table.add_column("auto chose")
    verdicts = []
    measured: list[tuple[str, dict[str, float]]] = []
    busy = waiting_for_a_core() or 0.0
    _start_workers(cores)
    for w in workloads or WORKLOADS:
        n = w.quick if quick else w.full
        times, advice = _measure(w, n)
        best = min(MODELS, key=lambda m: times[m])
        cells = [f"{times[m]:.2f} ({times['serial'] / times[m]:.1f}x)" for m in (*MODELS, "auto")]
        chose = f"{advice.model} x{advice.workers}, {advice.kind}" if advice else "(all probed)"
        table.add_row(f"{w.name} x{n}", *cells, best, chose)
        measured.append((f"{w.name}\nx{n}", times))
        verdicts.append(_verdict(w, times, best, busy))
    console.print(table)
    for line in verdicts:
        console.print(" - " + line)
    busy = max(busy, waiting_for_a_core() or 0.0)
    if busy > BUSY_SHARE:
        console.print(
            f"The machine was busy: a computing thread waited for a core {busy:.0%} of the "
            "time, so these timings include other programs' load. Run the demo on a quiet "
            "moment to judge the usual advice (pickpool doctor shows how busy it is)."
        )
    if plot is not None:
        from pickpool._show import plot_demo

        where = plot_demo(measured, Path(plot), subtitle=f" ({cores} cores)")
        console.print(f"plot: {where}")
    return 0


if __name__ == "__main__":
    quick = "--quick" in sys.argv[1:]
    raise SystemExit(main(quick=quick))
